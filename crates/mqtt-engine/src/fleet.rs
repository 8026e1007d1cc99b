//! Running a fleet: one thread per worker, each owning its share of the connections, their
//! figures merged with `+=` at the end. [`Fleet::start`] returns at once; the caller watches
//! [`FleetHandle::live`] for progress, asks [`FleetHandle::stop`] / [`FleetHandle::abort`]
//! on signals, and [`Fleet::join`]s for the merged result.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crate::settings::{FleetSettings, SubscribeSettings};
use crate::stats::{LiveTotals, Stats};
use crate::worker::{Consumer, Producer, Shared, Worker};

/// A running fleet.
pub struct Fleet {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<Stats>>,
}

/// What a fleet did, merged over its workers, and each worker's own figures.
#[derive(Debug)]
pub struct FleetResult {
    pub stats: Stats,
    pub per_worker: Vec<Stats>,
    /// Generation's anchor (the end of the connect ramp + `--start-delay`), if the ramp ended.
    pub anchor: Option<Instant>,
    /// When every connection was up or given up, if that happened.
    pub settled_at: Option<Instant>,
    /// When the fleet started.
    pub started: Instant,
    /// The wall clock at `started`, µs since the epoch.
    pub wall_started_us: u64,
}

impl FleetResult {
    /// The wall-clock time of `t`, an instant of this run.
    pub fn wall(&self, t: Instant) -> std::time::SystemTime {
        let after = t.saturating_duration_since(self.started);
        std::time::UNIX_EPOCH + std::time::Duration::from_micros(self.wall_started_us) + after
    }
}

/// A handle on a running fleet, for the thread that watches it while another joins it.
#[derive(Debug, Clone)]
pub struct FleetHandle(Arc<Shared>);

impl FleetHandle {
    /// Ends generation; the workers drain within the drain timeout.
    pub fn stop(&self) {
        self.0.control.stop();
    }

    /// Abandons what is left of the drain.
    pub fn abort(&self) {
        self.0.control.abort();
    }

    /// The live figures, summed over workers.
    pub fn live(&self) -> LiveTotals {
        let mut t = LiveTotals::default();
        for l in &self.0.live {
            t += l.read();
        }
        t
    }

    /// The histograms of every worker as of its last hand-over (with `live_histograms`; else
    /// empty until the end).
    pub fn live_histos(&self) -> crate::stats::Histos {
        let mut h = crate::stats::Histos::default();
        for w in &self.0.live_histos {
            if let Ok(w) = w.lock() {
                h += &*w;
            }
        }
        h
    }

    /// The first connection taken over by another client with its client id, and the
    /// first whose client id was found in use (see [`crate::stats::Conns::client_id_in_use`]),
    /// as fleet indexes, once they happened.
    pub fn collisions(&self) -> (Option<(u64, crate::error::Takeover)>, Option<u64>) {
        let c = &self.0.collisions;
        (c.first_takeover(), c.first_in_use())
    }

    /// When every connection was up or given up, once that happened.
    pub fn settled_at(&self) -> Option<Instant> {
        self.0.settled_at()
    }

    /// Generation's anchor, once the connect ramp is over.
    pub fn anchor(&self) -> Option<Instant> {
        self.0.anchor()
    }

    /// Subscribers whose subscription was granted at least once (a subscriber fleet).
    pub fn subscribed(&self) -> u64 {
        self.0.subscribed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Subscribers whose subscription was refused (a subscriber fleet).
    pub fn refused(&self) -> u64 {
        self.0.refused.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// A subscriber fleet publishes nothing.
struct NoDevices;

impl Producer for NoDevices {
    fn topic(&mut self, _: u64, _: &mut Vec<u8>) {}
    fn payload(&mut self, _: u64, _: u64, _: u32, _: u64, _: &mut bytes::BytesMut) {}
}

impl Fleet {
    pub fn handle(&self) -> FleetHandle {
        FleetHandle(self.shared.clone())
    }

    /// Starts the workers; `make_producer(worker, devices)` gives each its producer for its
    /// devices (fleet indexes).
    pub fn start<P, F>(settings: FleetSettings, make_producer: F) -> std::io::Result<Fleet>
    where
        P: Producer + 'static,
        F: Fn(usize, std::ops::Range<u64>) -> P,
    {
        let workers = settings.workers.max(1);
        let s = Arc::new(settings);
        let shared = Arc::new(Shared::new(workers));
        let mut threads = Vec::with_capacity(workers);
        for w in 0..workers {
            let conns = s.worker_conns(w);
            let devices = if conns.is_empty() {
                0..0
            } else {
                s.conn_devices(conns.start).start..s.conn_devices(conns.end - 1).end
            };
            let worker = Worker::new(w, s.clone(), shared.clone(), make_producer(w, devices))?;
            let t = std::thread::Builder::new()
                .name(format!("worker-{w}"))
                .spawn(move || worker.run())?;
            threads.push(t);
        }
        Ok(Fleet { shared, threads })
    }

    /// Starts a subscriber fleet: `settings.connections` connections (its devices are not
    /// used: set none), each subscribing as `sub` says once its CONNACK accepts it;
    /// `make_consumer(worker, subscribers)` gives each worker the consumer of its
    /// subscribers (their indexes, `sub.first_index` on). It receives until
    /// [`FleetHandle::stop`], then says DISCONNECT.
    pub fn start_subscribers<C, F>(
        settings: FleetSettings,
        sub: SubscribeSettings,
        make_consumer: F,
    ) -> std::io::Result<Fleet>
    where
        C: Consumer + 'static,
        F: Fn(usize, std::ops::Range<u64>) -> C,
    {
        if sub.filters.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a subscriber fleet needs at least one topic filter (--topic)",
            ));
        }
        let settings = FleetSettings {
            devices: 0,
            ..settings
        };
        let workers = settings.workers.max(1);
        let s = Arc::new(settings);
        let sub = Arc::new(sub);
        let shared = Arc::new(Shared::new(workers));
        let mut threads = Vec::with_capacity(workers);
        for w in 0..workers {
            let conns = s.worker_conns(w);
            let subs = sub.first_index + conns.start..sub.first_index + conns.end;
            let consumer: Box<dyn Consumer> = Box::new(make_consumer(w, subs));
            let worker = Worker::new(w, s.clone(), shared.clone(), NoDevices)?
                .subscribing(sub.clone(), consumer);
            let t = std::thread::Builder::new()
                .name(format!("worker-{w}"))
                .spawn(move || worker.run())?;
            threads.push(t);
        }
        Ok(Fleet { shared, threads })
    }

    pub fn is_finished(&self) -> bool {
        self.threads.iter().all(JoinHandle::is_finished)
    }

    /// Waits for every worker and merges their figures.
    pub fn join(self) -> FleetResult {
        let mut stats = Stats::default();
        let mut per_worker = Vec::with_capacity(self.threads.len());
        for t in self.threads {
            match t.join() {
                Ok(s) => {
                    stats += &s;
                    per_worker.push(s);
                }
                Err(_) => tracing::error!("a worker panicked; its figures are lost"),
            }
        }
        FleetResult {
            stats,
            per_worker,
            anchor: self.shared.anchor(),
            settled_at: self.shared.settled_at(),
            started: self.shared.epoch,
            wall_started_us: self.shared.wall_epoch_us,
        }
    }
}
