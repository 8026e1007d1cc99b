//! Real parts for the tests: a Mosquitto process started on a free port from the project's
//! `mosquitto/mosquitto.conf`, a subscriber that decodes and counts every point it receives,
//! and paths to the workspace's binaries.

use std::collections::HashMap;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use point_format::Point;
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// A port on 127.0.0.1 that nothing listened on a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts connections on 127.0.0.1:`port`.
pub fn wait_for_port(port: u16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Waits until a socket listens on 127.0.0.1:`port`, without connecting to it: a probe
/// connection would count against a broker's connection limit (and Mosquitto 2.0 lowers its
/// count of clients for every socket closed before CONNECT, so it would skew it).
pub fn wait_for_listener(port: u16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let want = format!("0100007F:{port:04X}");
    while Instant::now() < deadline {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
        let listening = table.lines().skip(1).any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1] == want && f[3] == "0A"
        });
        if listening {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A private directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("loadgen-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A mosquitto process on 127.0.0.1 and a free port, killed on drop.
pub struct Mosquitto {
    pub port: u16,
    child: Child,
    _dir: TempDir,
}

impl Mosquitto {
    /// Starts mosquitto with the project's config.
    pub fn start() -> Mosquitto {
        Self::start_with(&[])
    }

    /// Starts mosquitto with the project's config plus `extra` lines (which replace
    /// settings of the same name).
    pub fn start_with(extra: &[String]) -> Mosquitto {
        // Mosquitto keeps the open-file limit it inherits: a fleet test needs more than the
        // usual soft limit of 1024.
        raise_nofile_limit();
        for _attempt in 0..5 {
            let dir = TempDir::new("mosquitto");
            let port = free_port();
            let base = std::fs::read_to_string(workspace_root().join("mosquitto/mosquitto.conf"))
                .expect("mosquitto/mosquitto.conf");
            let overridden: Vec<&str> = extra
                .iter()
                .filter_map(|l| l.split_whitespace().next())
                .collect();
            let mut conf = String::new();
            for line in base.lines() {
                let key = line.split_whitespace().next().unwrap_or("");
                if key == "listener" {
                    conf.push_str(&format!("listener {port} 127.0.0.1\n"));
                } else if !overridden.contains(&key) {
                    conf.push_str(line);
                    conf.push('\n');
                }
            }
            for l in extra {
                conf.push_str(l);
                conf.push('\n');
            }
            let conf_path = dir.path("mosquitto.conf");
            std::fs::write(&conf_path, conf).unwrap();
            let log = std::fs::File::create(dir.path("mosquitto.log")).unwrap();
            let child = Command::new(mosquitto_binary())
                .arg("-c")
                .arg(&conf_path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn mosquitto");
            let mut m = Mosquitto {
                port,
                child,
                _dir: dir,
            };
            if wait_for_listener(port, Duration::from_secs(5)) {
                return m;
            }
            // Lost the port to someone else, or mosquitto failed: try another port.
            let _ = m.child.kill();
            let _ = m.child.wait();
            let log = std::fs::read_to_string(m._dir.path("mosquitto.log")).unwrap_or_default();
            eprintln!("mosquitto did not come up on port {port}: {log}");
        }
        panic!("mosquitto did not start in 5 attempts")
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// What the broker logged so far (its stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path("mosquitto.log")).unwrap_or_default()
    }

    /// Waits until the broker's log holds `needle`, for up to `within`; whether it did.
    pub fn wait_for_log(&self, needle: &str, within: Duration) -> bool {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// CPU seconds (user + system) the broker process has used so far.
    pub fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let ticks: f64 = after
            .split_whitespace()
            .skip(11)
            .take(2)
            .filter_map(|f| f.parse::<f64>().ok())
            .sum();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        ticks / hz.max(1.0)
    }

    /// Kills the broker process (SIGKILL) and waits for it: every connection drops.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the broker as an operator does (SIGTERM) and waits for it to exit: with
    /// `persistence true` it writes its database first, so that [`Mosquitto::restart`]
    /// brings back its sessions, their queues and their QoS 1 and 2 state.
    pub fn stop(&mut self) {
        self.signal("TERM");
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "mosquitto did not stop within 10 s of SIGTERM: {}",
            self.log()
        );
    }

    /// Starts the broker again, after [`Mosquitto::kill`], on the same port with the same
    /// config; returns once it listens.
    pub fn restart(&mut self) {
        self.kill();
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self._dir.path("mosquitto.log"))
            .unwrap();
        self.child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(self._dir.path("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn mosquitto");
        assert!(
            wait_for_listener(self.port, Duration::from_secs(10)),
            "mosquitto did not come back on port {}: {}",
            self.port,
            self.log()
        );
    }

    /// Stops (SIGSTOP) or resumes (SIGCONT) the broker process.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Raises this process's soft open-file limit to its hard limit (children inherit it);
/// returns the hard limit.
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct of ours.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            libc::setrlimit(libc::RLIMIT_NOFILE, &want);
        }
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 everywhere
    let hard = lim.rlim_max as u64;
    hard
}

fn mosquitto_binary() -> PathBuf {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/usr/local/sbin"])
    {
        let p = Path::new(dir).join("mosquitto");
        if p.is_file() {
            return p;
        }
    }
    panic!("mosquitto is not installed: run the README's test command, which installs it")
}

/// Writes a mosquitto password file with one user, using mosquitto_passwd.
pub fn mosquitto_password_file(dir: &TempDir, user: &str, password: &str) -> PathBuf {
    let path = dir.path("passwd");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(b"")
        .unwrap();
    let tool = mosquitto_binary().with_file_name("mosquitto_passwd");
    let tool = if tool.is_file() {
        tool
    } else {
        PathBuf::from("mosquitto_passwd")
    };
    let st = Command::new(tool)
        .arg("-b")
        .arg(&path)
        .arg(user)
        .arg(password)
        .status()
        .expect("mosquitto_passwd");
    assert!(st.success());
    path
}

/// What a subscriber received.
#[derive(Debug, Default, Clone)]
pub struct Received {
    pub messages: u64,
    /// Messages that were a single JSON object.
    pub legacy_messages: u64,
    /// Messages that were a JSON array.
    pub batch_messages: u64,
    /// Messages that were not valid points.
    pub invalid_messages: u64,
    pub points: u64,
    /// Device id -> every seq received, in arrival order.
    pub seqs: HashMap<String, Vec<u64>>,
    /// Topic -> messages.
    pub topics: HashMap<String, u64>,
}

impl Received {
    fn take(&mut self, topic: &str, payload: &[u8]) {
        self.messages += 1;
        *self.topics.entry(topic.to_string()).or_default() += 1;
        let first = payload.iter().find(|b| !b.is_ascii_whitespace()).copied();
        let points: Result<Vec<Point>, _> = match first {
            Some(b'[') => serde_json::from_slice(payload),
            _ => serde_json::from_slice::<Point>(payload).map(|p| vec![p]),
        };
        match points {
            Ok(points) => {
                if first == Some(b'[') {
                    self.batch_messages += 1;
                } else {
                    self.legacy_messages += 1;
                }
                for p in points {
                    self.points += 1;
                    self.seqs
                        .entry(p.device_id.into_owned())
                        .or_default()
                        .push(p.seq);
                }
            }
            Err(_) => self.invalid_messages += 1,
        }
    }

    /// What `device` delivered of seq 0..n: (seqs missing, extra copies of seqs seen twice
    /// or more, seqs outside 0..n).
    pub fn delivery(&self, device: &str, n: u64) -> (u64, u64, u64) {
        let mut seen = vec![0u32; n as usize];
        let mut outside = 0;
        for &s in self.seqs.get(device).map_or(&[][..], |v| &v[..]) {
            match seen.get_mut(s as usize) {
                Some(c) => *c += 1,
                None => outside += 1,
            }
        }
        let missing = seen.iter().filter(|c| **c == 0).count() as u64;
        let extra = seen.iter().map(|c| c.saturating_sub(1) as u64).sum();
        (missing, extra, outside)
    }

    /// Asserts that `device` delivered seq 0..n exactly once each, and nothing else arrived.
    pub fn assert_exactly_once(&self, device: &str, n: u64) {
        assert_eq!(self.invalid_messages, 0, "invalid payloads arrived");
        let seqs = self
            .seqs
            .get(device)
            .unwrap_or_else(|| panic!("no points from {device}: {:?}", self.seqs.keys()));
        let mut seen = vec![0u32; n as usize];
        for &s in seqs {
            assert!(s < n, "{device}: seq {s} is outside 0..{n}");
            seen[s as usize] += 1;
        }
        let missing = seen.iter().filter(|c| **c == 0).count();
        let dup = seen.iter().filter(|c| **c > 1).count();
        assert_eq!(
            (missing, dup),
            (0, 0),
            "{device}: {missing} seqs missing, {dup} duplicated"
        );
        assert_eq!(seqs.len() as u64, n);
        assert_eq!(self.points, n, "points from other devices arrived");
    }
}

/// A subscriber on its own thread, counting what arrives.
pub struct Subscriber {
    received: Arc<Mutex<Received>>,
    /// SUBACKs so far: one more after each reconnect.
    subacks: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<AtomicBool>,
    last_arrival: Arc<Mutex<Instant>>,
    thread: Option<JoinHandle<()>>,
}

impl Subscriber {
    /// Connects to 127.0.0.1:`port` (retrying for up to 10 s, for a broker that is still
    /// starting) and subscribes to `filter` at QoS 1; returns once the broker confirmed.
    pub fn start(port: u16, filter: &str) -> Subscriber {
        let received = Arc::new(Mutex::new(Received::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let last_arrival = Arc::new(Mutex::new(Instant::now()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let subacks = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (r, s, l, n) = (
            received.clone(),
            stop.clone(),
            last_arrival.clone(),
            subacks.clone(),
        );
        let filter = filter.to_string();
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            let id = format!("test-sub-{}-{}", std::process::id(), free_port());
            let mut opts = MqttOptions::new(id, "127.0.0.1", port);
            opts.set_max_packet_size(256 << 20, 256 << 20)
                .set_keep_alive(Duration::from_secs(30));
            let (client, mut conn) = Client::new(opts, 64);
            client.subscribe(&filter, QoS::AtLeastOnce).unwrap();
            let mut ready = Some(ready_tx);
            let mut lost = false;
            while !s.load(Ordering::Relaxed) {
                match conn.recv_timeout(Duration::from_millis(50)) {
                    Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                        n.fetch_add(1, Ordering::SeqCst);
                        if let Some(tx) = ready.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) if lost => {
                        // A clean session after a broker restart: subscribe again.
                        lost = false;
                        let _ = client.try_subscribe(&filter, QoS::AtLeastOnce);
                    }
                    Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                        r.lock().unwrap().take(&p.topic, &p.payload);
                        *l.lock().unwrap() = Instant::now();
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) => {
                        if ready.is_some() && Instant::now() < deadline {
                            std::thread::sleep(Duration::from_millis(50));
                            continue; // broker not up yet: rumqttc reconnects on the next poll
                        }
                        if ready.is_some() {
                            panic!("subscriber could not connect to 127.0.0.1:{port}");
                        }
                        lost = true;
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(_) => {}
                }
            }
            let _ = client.disconnect();
        });
        ready_rx
            .recv_timeout(Duration::from_secs(15))
            .expect("subscriber never got its SUBACK");
        Subscriber {
            received,
            subacks,
            stop,
            last_arrival,
            thread: Some(thread),
        }
    }

    /// Waits until the subscriber has subscribed `n` times in all (the first, and once
    /// after each reconnect), for up to `within`; whether it did.
    pub fn wait_subscribed(&self, n: u64, within: Duration) -> bool {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if self.subacks.load(Ordering::SeqCst) >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    pub fn snapshot(&self) -> Received {
        self.received.lock().unwrap().clone()
    }

    /// Waits until at least `points` points arrived, for up to `within`; whether they did.
    /// What a test waits for before a fault: the run is under way, not a guess in ms.
    pub fn wait_points(&self, points: u64, within: Duration) -> bool {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if self.received.lock().unwrap().points >= points {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// Waits until nothing arrived for `quiet` (for up to `within`): after the publisher's
    /// traffic is held back, the broker has handed on everything it took.
    pub fn wait_quiet(&self, quiet: Duration, within: Duration) -> bool {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if self.last_arrival.lock().unwrap().elapsed() >= quiet {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// Waits until `points` points arrived (then a little longer, to catch duplicates) or
    /// nothing arrived for `idle`; stops and returns what arrived.
    pub fn finish(mut self, points: u64, idle: Duration) -> Received {
        loop {
            let got = self.received.lock().unwrap().points;
            let quiet_for = self.last_arrival.lock().unwrap().elapsed();
            if got >= points || quiet_for >= idle {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.snapshot()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A binary of the workspace, built beside the running test (`cargo nextest run --workspace`
/// or `cargo test --workspace` build them all).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join(name);
    assert!(
        path.is_file(),
        "{} is not built: run the tests with --workspace",
        path.display()
    );
    path
}

/// A payload of `seqs` for `device` in the project's format: one object for one seq, else an array.
pub fn payload(device: &str, seqs: &[u64]) -> Vec<u8> {
    let enc = point_format::Encoder::new(device);
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let samples: Vec<point_format::Sample> = seqs
        .iter()
        .map(|&seq| point_format::Sample {
            seq,
            timestamp_us: now_us,
            value_centi: 4200,
            temperature_centi: Some(2150),
            humidity_deci: None,
        })
        .collect();
    let mut buf = Vec::new();
    enc.write_message(&mut buf, &samples);
    buf
}

/// Publishes `payloads` in order to `topic` at QoS 1 and waits for every PUBACK.
pub fn publish_payloads(port: u16, topic: &str, payloads: &[Vec<u8>]) {
    publish_payloads_at(port, topic, payloads, 1)
}

/// Publishes `payloads` in order to `topic` at `qos` (1 or 2) and waits for every PUBACK
/// (QoS 1) or PUBCOMP (QoS 2).
pub fn publish_payloads_at(port: u16, topic: &str, payloads: &[Vec<u8>], qos: u8) {
    let qos = if qos == 2 {
        QoS::ExactlyOnce
    } else {
        QoS::AtLeastOnce
    };
    let id = format!("test-pub-{}-{}", std::process::id(), free_port());
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_max_packet_size(256 << 20, 256 << 20);
    let (client, mut conn) = Client::new(opts, payloads.len().max(1) + 1);
    for p in payloads {
        client.publish(topic, qos, false, p.clone()).unwrap();
    }
    let mut acked = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while acked < payloads.len() {
        assert!(
            Instant::now() < deadline,
            "only {acked} of {} payloads acknowledged",
            payloads.len()
        );
        match conn.recv_timeout(Duration::from_millis(100)) {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) if qos == QoS::AtLeastOnce => acked += 1,
            Ok(Ok(Event::Incoming(Packet::PubComp(_)))) if qos == QoS::ExactlyOnce => acked += 1,
            Ok(Err(e)) => panic!("test publisher lost its connection: {e}"),
            _ => {}
        }
    }
    let _ = client.disconnect();
    let _ = conn.recv_timeout(Duration::from_millis(200));
}

/// Asserts that `value` validates against the committed JSON schema at `schema` (a path
/// relative to the workspace root).
pub fn assert_matches_schema(schema: &str, value: &serde_json::Value) {
    let text = std::fs::read_to_string(workspace_root().join(schema))
        .unwrap_or_else(|e| panic!("{schema}: {e}"));
    let schema_json: serde_json::Value = serde_json::from_str(&text).expect("schema is JSON");
    let validator = jsonschema::validator_for(&schema_json).expect("schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(value)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "does not match {schema}: {errors:#?}\n{value:#}"
    );
}

/// Scripted brokers, for faults a real one cannot produce on demand.
pub mod fake {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::thread::JoinHandle;
    use std::time::Duration;

    /// What the fake broker does.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Behaviour {
        /// Accepts TCP connections and never answers.
        Silent,
        /// Answers CONNECT with a CONNACK, then never reads again.
        Deaf,
        /// Acknowledges every QoS 1 PUBLISH with two identical PUBACKs.
        DuplicateAcks,
        /// Accepts SUBSCRIBE and never answers it.
        NoSuback,
        /// Answers SUBSCRIBE with one return code more than it has filters, a failure.
        ExtraSubackCode,
        /// Closes the first N connections as soon as they are accepted, then acknowledges
        /// like a broker (one PUBACK per QoS 1 PUBLISH).
        CloseFirst(u32),
        /// After a SUBSCRIBE, sends QoS 0 PUBLISHes of device `flood` (seqs from 0) on
        /// `device_data/flood` as fast as the subscriber takes them, for 3 s; and, like a
        /// strict broker, closes a client that sent nothing for 1.5 s (1.5 keep-alives of 1 s).
        Flood,
        /// Answers CONNECT with a CONNACK refusing with this 3.1.1 return code (to an MQTT
        /// 5 CONNECT as well, as a 3.1.1-only broker does).
        Refuse(u8),
        /// Speaks MQTT 5: answers CONNECT with a CONNACK carrying these property bytes
        /// (without their length), acknowledges every QoS 1 PUBLISH, answers PINGREQ,
        /// closes a client silent for `close_silent_ms` (0: never), and answers a PUBLISH
        /// longer than `disconnect_over` bytes (0: never) with DISCONNECT 0x95 (packet too
        /// large) without announcing its limit.
        Mqtt5 {
            props: &'static [u8],
            close_silent_ms: u64,
            disconnect_over: usize,
        },
        /// Closes its first connection after reading the first QoS 1 PUBLISH, unacknowledged;
        /// later connections get a CONNACK with Session Present `session_present` and every
        /// PUBLISH acknowledged. Every PUBLISH is in [`FakeBroker::published`].
        DropFirstUnacked { session_present: bool },
        /// Answers CONNECT with Session Present set (a session kept from before), then a
        /// PUBACK for packet id 0xBEEF, which the client never used; acknowledges the rest.
        StaleSession,
        /// Answers its first N connections like a broker and never answers the rest (a
        /// broker out of descriptors or stuck behaves so).
        AnswerFirst(u32),
        /// Answers each CONNECT `ms` milliseconds late, then acknowledges like a broker; the
        /// most connections it held waiting at once is [`FakeBroker::most_waiting`].
        SlowConnack { ms: u64 },
        /// Speaks MQTT 5 and acknowledges like a broker, and `after_ms` into every connection
        /// sends DISCONNECT 0x8E (session taken over) and closes it, as an MQTT 5 broker
        /// does when another client connects with the same client id (Mosquitto 2.0 only
        /// closes).
        TakenOver { after_ms: u64 },
    }

    /// A PUBLISH the fake broker read: on its `conn`th connection (from 1), its first byte
    /// (DUP is 0x08) and packet id.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Published {
        pub conn: u32,
        pub first: u8,
        pub pkid: Option<u16>,
    }

    impl Published {
        pub fn dup(&self) -> bool {
            self.first & 0x08 != 0
        }
    }

    /// How long [`Behaviour::Flood`] floods, and the silence after which it closes a client.
    pub const FLOOD_FOR: Duration = Duration::from_secs(3);
    pub const FLOOD_SILENCE: Duration = Duration::from_millis(1500);

    /// Closes `sock` once nothing was read for 1.5 x `keep_alive_ms` (`last_in`: ms since
    /// `t0`); true when it is closed or gone.
    fn stop_after(
        sock: &TcpStream,
        t0: std::time::Instant,
        last_in: &std::sync::atomic::AtomicU64,
        keep_alive_ms: u64,
    ) -> bool {
        if sock.peer_addr().is_err() {
            return true;
        }
        let silent =
            (t0.elapsed().as_millis() as u64).saturating_sub(last_in.load(Ordering::Relaxed));
        if silent > keep_alive_ms * 3 / 2 {
            let _ = sock.shutdown(std::net::Shutdown::Both);
            return true;
        }
        false
    }

    /// Writes QoS 0 PUBLISHes to `sock` for [`FLOOD_FOR`]; closes it once the reader saw
    /// nothing for [`FLOOD_SILENCE`] (`last_in`: milliseconds since `t0`).
    fn flood(mut sock: TcpStream, t0: std::time::Instant, last_in: &std::sync::atomic::AtomicU64) {
        let topic = b"device_data/flood";
        let mut seq = 0u64;
        let mut batch = Vec::new();
        while t0.elapsed() < FLOOD_FOR {
            let silent =
                (t0.elapsed().as_millis() as u64).saturating_sub(last_in.load(Ordering::Relaxed));
            if silent > FLOOD_SILENCE.as_millis() as u64 {
                let _ = sock.shutdown(std::net::Shutdown::Both);
                return;
            }
            batch.clear();
            for _ in 0..100 {
                let payload = crate::payload("flood", &[seq]);
                seq += 1;
                let len = 2 + topic.len() + payload.len();
                batch.push(0x30);
                let mut l = len;
                loop {
                    let b = (l & 0x7f) as u8;
                    l >>= 7;
                    batch.push(if l > 0 { b | 0x80 } else { b });
                    if l == 0 {
                        break;
                    }
                }
                batch.extend_from_slice(&(topic.len() as u16).to_be_bytes());
                batch.extend_from_slice(topic);
                batch.extend_from_slice(&payload);
            }
            if sock.write_all(&batch).is_err() {
                return;
            }
        }
    }

    /// A scripted MQTT 3.1.1 server on 127.0.0.1 and a free port; stops on drop.
    pub struct FakeBroker {
        pub port: u16,
        stop: Arc<AtomicBool>,
        thread: Option<JoinHandle<()>>,
        published: Arc<std::sync::Mutex<Vec<Published>>>,
        accepted: Arc<std::sync::atomic::AtomicU64>,
        waiting: Arc<Waiting>,
    }

    /// Connections a [`Behaviour::SlowConnack`] broker holds before their CONNACK: now, and
    /// the most at once.
    #[derive(Default)]
    struct Waiting {
        now: std::sync::atomic::AtomicU64,
        most: std::sync::atomic::AtomicU64,
    }

    impl FakeBroker {
        pub fn start(behaviour: Behaviour) -> FakeBroker {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            listener.set_nonblocking(true).unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let s = stop.clone();
            let published = Arc::new(std::sync::Mutex::new(Vec::new()));
            let log = published.clone();
            let accepted_count = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let counter = accepted_count.clone();
            let waiting = Arc::new(Waiting::default());
            let waits = waiting.clone();
            let thread = std::thread::spawn(move || {
                let mut conns = Vec::new();
                let mut accepted = 0u32;
                while !s.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((sock, _)) => {
                            accepted += 1;
                            counter.fetch_add(1, Ordering::SeqCst);
                            if let Behaviour::CloseFirst(n) = behaviour {
                                if accepted <= n {
                                    drop(sock);
                                    continue;
                                }
                            }
                            let (s, log, waits) = (s.clone(), log.clone(), waits.clone());
                            conns.push(std::thread::spawn(move || {
                                serve(sock, behaviour, &s, accepted, &log, &waits)
                            }));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
                for c in conns {
                    let _ = c.join();
                }
            });
            FakeBroker {
                port,
                stop,
                thread: Some(thread),
                published,
                accepted: accepted_count,
                waiting,
            }
        }

        /// The most connections held waiting for their CONNACK at once.
        pub fn most_waiting(&self) -> u64 {
            self.waiting.most.load(Ordering::SeqCst)
        }

        /// Waits until `n` connections were accepted in all, for up to `within`.
        pub fn wait_accepted(&self, n: u64, within: Duration) -> bool {
            let end = std::time::Instant::now() + within;
            while std::time::Instant::now() < end {
                if self.accepted.load(Ordering::SeqCst) >= n {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            false
        }

        pub fn url(&self) -> String {
            format!("mqtt://127.0.0.1:{}", self.port)
        }

        /// Every PUBLISH read so far, in order.
        pub fn published(&self) -> Vec<Published> {
            self.published
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
        }
    }

    impl Drop for FakeBroker {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    /// Reads one packet: (first byte, body); None when the peer is gone or we are stopping.
    /// Scripted servers of the tests use it too.
    pub fn read_packet(sock: &mut TcpStream, stop: &AtomicBool) -> Option<(u8, Vec<u8>)> {
        let mut first = [0u8; 1];
        loop {
            match sock.read(&mut first) {
                Ok(0) => return None,
                Ok(_) => break,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    if stop.load(Ordering::Relaxed) {
                        return None;
                    }
                }
                Err(_) => return None,
            }
        }
        let (mut len, mut shift) = (0usize, 0);
        loop {
            let mut b = [0u8; 1];
            sock.read_exact(&mut b).ok()?;
            len |= ((b[0] & 0x7f) as usize) << shift;
            shift += 7;
            if b[0] & 0x80 == 0 || shift > 21 {
                break;
            }
        }
        let mut body = vec![0u8; len];
        sock.read_exact(&mut body).ok()?;
        Some((first[0], body))
    }

    fn serve(
        mut sock: TcpStream,
        behaviour: Behaviour,
        stop: &AtomicBool,
        conn: u32,
        log: &std::sync::Mutex<Vec<Published>>,
        waiting: &Waiting,
    ) {
        let idle = |stop: &AtomicBool| {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        if behaviour == Behaviour::Silent
            || matches!(behaviour, Behaviour::AnswerFirst(n) if conn > n)
        {
            return idle(stop);
        }
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let t0 = std::time::Instant::now();
        let last_in = Arc::new(std::sync::atomic::AtomicU64::new(0));
        if let Behaviour::TakenOver { after_ms } = behaviour {
            let w = sock.try_clone().unwrap();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(after_ms));
                let mut w = w;
                let _ = w.write_all(&[0xe0, 0x01, 0x8e]);
                let _ = w.shutdown(std::net::Shutdown::Write);
            });
        }
        if let Behaviour::Mqtt5 {
            close_silent_ms, ..
        } = behaviour
        {
            if close_silent_ms > 0 {
                // Like a broker enforcing its Server Keep Alive: a client silent for
                // 1.5 keep-alives is closed.
                let (w, last_in) = (sock.try_clone().unwrap(), last_in.clone());
                std::thread::spawn(move || {
                    while !stop_after(&w, t0, &last_in, close_silent_ms) {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                });
            }
        }
        while let Some((first, body)) = read_packet(&mut sock, stop) {
            last_in.store(t0.elapsed().as_millis() as u64, Ordering::Relaxed);
            let reply: Vec<u8> = match first >> 4 {
                1 => match behaviour {
                    Behaviour::Refuse(code) => vec![0x20, 0x02, 0x00, code],
                    Behaviour::Mqtt5 { props, .. } => {
                        let mut c = vec![0x20, (3 + props.len()) as u8, 0x00, 0x00];
                        c.push(props.len() as u8);
                        c.extend_from_slice(props);
                        c
                    }
                    Behaviour::DropFirstUnacked { session_present } if conn > 1 => {
                        vec![0x20, 0x02, u8::from(session_present), 0x00]
                    }
                    Behaviour::SlowConnack { ms } => {
                        let now = waiting.now.fetch_add(1, Ordering::SeqCst) + 1;
                        waiting.most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(ms));
                        waiting.now.fetch_sub(1, Ordering::SeqCst);
                        vec![0x20, 0x02, 0x00, 0x00]
                    }
                    // Session Present, then a PUBACK for an id never used.
                    Behaviour::StaleSession => vec![0x20, 0x02, 0x01, 0x00, 0x40, 0x02, 0xBE, 0xEF],
                    Behaviour::TakenOver { .. } => vec![0x20, 0x03, 0x00, 0x00, 0x00],
                    _ => vec![0x20, 0x02, 0x00, 0x00], // CONNECT -> CONNACK, accepted
                },
                3 => {
                    let qos = (first >> 1) & 0x03;
                    let topic_len = body
                        .get(..2)
                        .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]) as usize);
                    let id = body.get(2 + topic_len..4 + topic_len);
                    log.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(Published {
                            conn,
                            first,
                            pkid: id
                                .filter(|_| qos > 0)
                                .map(|i| u16::from_be_bytes([i[0], i[1]])),
                        });
                    if let Behaviour::Mqtt5 {
                        disconnect_over, ..
                    } = behaviour
                    {
                        if disconnect_over > 0 && body.len() > disconnect_over {
                            // DISCONNECT, then a graceful close: what the client still
                            // sends is read and dropped, so that no reset overtakes the
                            // DISCONNECT.
                            let _ = sock.write_all(&[0xe0, 0x01, 0x95]);
                            let _ = sock.shutdown(std::net::Shutdown::Write);
                            let mut sink = [0u8; 4096];
                            let end = std::time::Instant::now() + Duration::from_secs(2);
                            while std::time::Instant::now() < end {
                                match sock.read(&mut sink) {
                                    Ok(0) => break,
                                    Ok(_) => {}
                                    Err(e)
                                        if e.kind() == std::io::ErrorKind::WouldBlock
                                            || e.kind() == std::io::ErrorKind::TimedOut => {}
                                    Err(_) => break,
                                }
                            }
                            return;
                        }
                    }
                    if qos == 0 || body.len() < 2 {
                        continue;
                    }
                    let Some(id) = id else {
                        return;
                    };
                    if matches!(behaviour, Behaviour::DropFirstUnacked { .. }) && conn == 1 {
                        return; // closed, unacknowledged
                    }
                    let ack = [0x40, 0x02, id[0], id[1]];
                    if behaviour == Behaviour::DuplicateAcks {
                        [ack, ack].concat() // the second is the repeat
                    } else {
                        ack.to_vec()
                    }
                }
                8 => {
                    // SUBSCRIBE: NoSuback never answers; others grant QoS 0 to every filter.
                    if behaviour == Behaviour::NoSuback || body.len() < 2 {
                        continue;
                    }
                    let mut filters = 0usize;
                    let mut i = 2;
                    while i + 2 <= body.len() {
                        let n = u16::from_be_bytes([body[i], body[i + 1]]) as usize;
                        i += 2 + n + 1;
                        filters += 1;
                    }
                    let codes = filters + usize::from(behaviour == Behaviour::ExtraSubackCode);
                    let mut suback = vec![0x90, (2 + codes) as u8, body[0], body[1]];
                    suback.resize(4 + filters, 0u8);
                    if behaviour == Behaviour::ExtraSubackCode {
                        suback.push(0x80);
                    }
                    suback
                }
                // Flood: the flood writes the socket, and a reply could land inside one of
                // its packets; the PINGREQ counts by arriving.
                12 if behaviour == Behaviour::Flood => continue,
                12 => vec![0xd0, 0x00], // PINGREQ -> PINGRESP
                14 => return,           // DISCONNECT
                _ => continue,
            };
            if sock.write_all(&reply).is_err() {
                return;
            }
            if behaviour == Behaviour::Flood && first >> 4 == 8 {
                let (w, last_in) = (sock.try_clone().unwrap(), last_in.clone());
                std::thread::spawn(move || flood(w, t0, &last_in));
            }
            if behaviour == Behaviour::Deaf && first >> 4 == 1 {
                return idle(stop); // never reads again: the socket buffers fill up
            }
        }
    }
}

/// A TCP proxy on 127.0.0.1 in front of a broker, for faults a broker cannot produce on
/// demand: connections cut (FIN, then a reset), half-closed, stalled, or refused for a
/// while. One thread per direction per connection; stops on drop.
pub mod proxy {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    #[derive(Default)]
    struct State {
        stop: AtomicBool,
        /// New connections are closed at once while false.
        accepting: AtomicBool,
        /// Bytes are not moved while true.
        stalled: AtomicBool,
        accepted: AtomicU64,
        /// The client side of every open connection.
        clients: Mutex<Vec<TcpStream>>,
    }

    pub struct Proxy {
        pub port: u16,
        state: Arc<State>,
    }

    impl Proxy {
        /// A proxy to 127.0.0.1:`upstream`, accepting.
        pub fn start(upstream: u16) -> Proxy {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            listener.set_nonblocking(true).unwrap();
            let state = Arc::new(State::default());
            state.accepting.store(true, Ordering::SeqCst);
            let st = state.clone();
            std::thread::spawn(move || {
                while !st.stop.load(Ordering::Relaxed) {
                    let Ok((client, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    st.accepted.fetch_add(1, Ordering::SeqCst);
                    if !st.accepting.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)) else {
                        drop(client);
                        continue;
                    };
                    let _ = client.set_nonblocking(false);
                    let _ = client.set_nodelay(true);
                    let _ = up.set_nodelay(true);
                    st.clients.lock().unwrap().push(client.try_clone().unwrap());
                    for (from, to) in [
                        (client.try_clone().unwrap(), up.try_clone().unwrap()),
                        (up, client),
                    ] {
                        let st = st.clone();
                        std::thread::spawn(move || pump(from, to, &st));
                    }
                }
            });
            Proxy { port, state }
        }

        pub fn url(&self) -> String {
            format!("mqtt://127.0.0.1:{}", self.port)
        }

        /// Connections accepted so far (refused ones included).
        pub fn accepted(&self) -> u64 {
            self.state.accepted.load(Ordering::SeqCst)
        }

        /// While false, new connections are closed as soon as they are accepted.
        pub fn set_accepting(&self, on: bool) {
            self.state.accepting.store(on, Ordering::SeqCst);
        }

        /// While true, no byte moves either way (a network that stalls).
        pub fn set_stalled(&self, on: bool) {
            self.state.stalled.store(on, Ordering::SeqCst);
        }

        /// Cuts every open connection: the client gets a FIN and then a reset.
        pub fn cut_all(&self) {
            for c in self.state.clients.lock().unwrap().drain(..) {
                set_linger_zero(&c);
                let _ = c.shutdown(Shutdown::Both);
            }
        }

        /// Half-closes every open connection towards the client (it reads an end of
        /// stream while its writes still go through).
        pub fn half_close_all(&self) {
            for c in self.state.clients.lock().unwrap().iter() {
                let _ = c.shutdown(Shutdown::Write);
            }
        }
    }

    impl Drop for Proxy {
        fn drop(&mut self) {
            self.state.stop.store(true, Ordering::SeqCst);
            self.cut_all();
        }
    }

    fn set_linger_zero(s: &TcpStream) {
        use std::os::fd::AsRawFd;
        let l = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt reads a linger struct of ours for a socket we hold.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&l as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
        }
    }

    fn pump(mut from: TcpStream, mut to: TcpStream, st: &State) {
        let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
        let mut buf = vec![0u8; 64 << 10];
        while !st.stop.load(Ordering::Relaxed) {
            if st.stalled.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break,
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    }
}

/// Certificates for TLS tests, made with the openssl command line: a CA, a server
/// certificate for 127.0.0.1 signed by it, a client certificate (CN `loader`), and a second
/// CA that signed nothing here.
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub other_ca: PathBuf,
}

impl TlsFiles {
    /// A CA, a server and a client certificate, all on the P-256 curve.
    pub fn new(dir: &TempDir) -> TlsFiles {
        TlsFiles::with_ca_curve(dir, "prime256v1")
    }

    /// The same with the CAs' keys on `curve` (an OpenSSL name: `secp521r1` signs the
    /// certificates with an algorithm the client cannot verify).
    pub fn with_ca_curve(dir: &TempDir, ca_curve: &str) -> TlsFiles {
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&dir.0)
                .output()
                .expect("openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let ca_curve = format!("ec_paramgen_curve:{ca_curve}");
        for ca in ["ca", "other-ca"] {
            let mut a = vec!["req", "-x509", "-days", "2"];
            a.extend(["-newkey", "ec", "-pkeyopt", ca_curve.as_str(), "-nodes"]);
            let (key, crt, subj) = (
                format!("{ca}.key"),
                format!("{ca}.crt"),
                format!("/CN=loadgen test {ca}"),
            );
            a.extend(["-keyout", &key, "-out", &crt, "-subj", &subj]);
            a.extend(["-addext", "basicConstraints=critical,CA:TRUE"]);
            a.extend(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
            run(&a);
        }
        for (name, cn, ext) in [
            (
                "server",
                "127.0.0.1",
                "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
            ),
            ("client", "loader", "extendedKeyUsage=clientAuth\n"),
        ] {
            let (key, csr, crt, extf) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.crt"),
                format!("{name}.ext"),
            );
            std::fs::write(dir.path(&extf), format!("basicConstraints=CA:FALSE\n{ext}")).unwrap();
            let mut a = vec!["req"];
            a.extend(ec);
            let subj = format!("/CN={cn}");
            a.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
            run(&a);
            run(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "2",
                "-extfile",
                &extf,
            ]);
        }
        // Mosquitto started as root reads them after it drops to its own user.
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755));
        for f in std::fs::read_dir(&dir.0).unwrap().flatten() {
            let _ = std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(0o644));
        }
        TlsFiles {
            ca: dir.path("ca.crt"),
            server_cert: dir.path("server.crt"),
            server_key: dir.path("server.key"),
            client_cert: dir.path("client.crt"),
            client_key: dir.path("client.key"),
            other_ca: dir.path("other-ca.crt"),
        }
    }

    /// Mosquitto config lines for a TLS listener on `port` (after the plain one), asking for
    /// a client certificate when `require_client` (its CN then is the user name).
    pub fn listener(&self, port: u16, require_client: bool) -> Vec<String> {
        let mut l = vec![
            format!("listener {port} 127.0.0.1"),
            format!("cafile {}", self.ca.display()),
            format!("certfile {}", self.server_cert.display()),
            format!("keyfile {}", self.server_key.display()),
        ];
        if require_client {
            l.push("require_certificate true".into());
            l.push("use_identity_as_username true".into());
        }
        l
    }
}

/// A GET over plain HTTP/1.1 to `addr` (`127.0.0.1:9464`): (status, body).
pub fn http_get(addr: &str, path: &str) -> Result<(u16, String), String> {
    use std::io::Read;
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP head")?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("no status")?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// `s` for a URL's query string.
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A real Prometheus (Debian's `prometheus` package), started on a free port with its own
/// storage, scraping `targets` every second.
pub struct Prometheus {
    child: Child,
    pub port: u16,
    _dir: TempDir,
}

impl Prometheus {
    pub fn start(targets: &[String]) -> Prometheus {
        let dir = TempDir::new("prometheus");
        let config = dir.path("prometheus.yml");
        let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n  - job_name: loadgen\n    static_configs:\n      - targets: [{}]\n",
                list.join(", ")
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new(which("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path("prometheus.log")).unwrap())
            .spawn()
            .expect("start prometheus");
        let p = Prometheus {
            child,
            port,
            _dir: dir,
        };
        let end = Instant::now() + Duration::from_secs(60);
        while Instant::now() < end {
            // Ready, and scraping: targets reach the scrape loops up to 5 s after the start
            // (discovery updates are throttled), and a target scraped once has a health.
            if http_get(&p.addr(), "/-/ready").is_ok_and(|(s, _)| s == 200)
                && p.scraping(targets.len())
            {
                return p;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("prometheus never became ready on port {port}");
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Whether all `n` targets have been scraped at least once (up or down).
    fn scraping(&self, n: usize) -> bool {
        let Ok((200, body)) = http_get(&self.addr(), "/api/v1/targets") else {
            return false;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else {
            return false;
        };
        let active = v["data"]["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        active.len() == n && active.iter().all(|t| t["health"] != "unknown")
    }

    /// An instant query through the HTTP API: the first sample's value, if any.
    pub fn query(&self, q: &str) -> Option<f64> {
        let (status, body) = http_get(
            &self.addr(),
            &format!("/api/v1/query?query={}", url_encode(q)),
        )
        .expect("query prometheus");
        assert_eq!(status, 200, "{q}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON from prometheus");
        assert_eq!(v["status"], "success", "{q}: {body}");
        let value = &v["data"]["result"][0]["value"][1];
        value.as_str().and_then(|s| s.parse().ok())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real Prometheus Pushgateway (Debian's `prometheus-pushgateway` package), started on a
/// free port, keeping what is pushed in memory.
pub struct Pushgateway {
    child: Child,
    pub port: u16,
    _dir: TempDir,
}

impl Pushgateway {
    pub fn start() -> Pushgateway {
        let dir = TempDir::new("pushgateway");
        let port = free_port();
        let child = Command::new(which("prometheus-pushgateway"))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path("pushgateway.log")).unwrap())
            .spawn()
            .expect("start prometheus-pushgateway");
        let p = Pushgateway {
            child,
            port,
            _dir: dir,
        };
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            if http_get(&p.addr(), "/-/ready").is_ok_and(|(s, _)| s == 200) {
                return p;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the pushgateway never became ready on port {port}");
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// What a Prometheus scraping the gateway would read.
    pub fn metrics(&self) -> String {
        let (status, body) = http_get(&self.addr(), "/metrics").expect("scrape the pushgateway");
        assert_eq!(status, 200, "{body}");
        body
    }
}

impl Drop for Pushgateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of the first sample of `name` in an exposition whose labels contain every one
/// of `labels` (`k="v"`), if any.
pub fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let (ls, value) = match rest.strip_prefix('{') {
            Some(r) => r.split_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        labels
            .iter()
            .all(|want| ls.split(',').any(|have| have == *want))
            .then(|| value.trim().parse().ok())?
    })
}

/// A tool from the OS packages: on PATH or in /usr/bin.
pub fn which(name: &str) -> PathBuf {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/bin", "/usr/sbin"])
    {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("{name} is not installed: scripts/test installs it (apt-get install prometheus)");
}

/// `promtool check metrics` on an exposition: (passed, what it said).
pub fn promtool_check_metrics(text: &str) -> (bool, String) {
    let mut child = Command::new(which("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A real PostgreSQL (Debian's packages) in a temporary directory on a free port of
/// 127.0.0.1, made with `initdb` for the test and killed on drop. The superuser `loadgen`
/// has a password (given to initdb in a file, never on a command line), so the tools'
/// password handling is exercised; `url()` is what `DATABASE_URL` takes (without the
/// password, which `password()` gives).
pub struct Postgres {
    pub port: u16,
    child: Option<Child>,
    dir: TempDir,
    /// As whom the server runs: PostgreSQL refuses to run as root.
    ids: Option<(u32, u32)>,
}

/// The password of the tests' database superuser.
pub const POSTGRES_PASSWORD: &str = "loadgen-test-secret";

/// The directory of the newest PostgreSQL server binaries installed.
pub fn postgres_bindir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
                    Some((v, e.path().join("bin")))
                })
                .filter(|(_, p)| p.join("postgres").is_file())
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions.pop().map(|(_, p)| p).expect(
        "PostgreSQL is not installed: scripts/test installs it (apt-get install postgresql)",
    )
}

/// The uid and gid of `user`.
fn user_ids(user: &str) -> Option<(u32, u32)> {
    let name = std::ffi::CString::new(user).ok()?;
    // SAFETY: getpwnam takes a NUL-terminated name and returns a pointer into static
    // storage or null; the fields are read before any other call.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return None;
    }
    // SAFETY: pw is non-null and points at a valid passwd record.
    Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

fn chown_tree(p: &Path, (uid, gid): (u32, u32)) {
    let _ = std::os::unix::fs::chown(p, Some(uid), Some(gid));
    if let Ok(entries) = std::fs::read_dir(p) {
        for e in entries.flatten() {
            chown_tree(&e.path(), (uid, gid));
        }
    }
}

impl Postgres {
    pub fn start() -> Postgres {
        let dir = TempDir::new("postgres");
        // SAFETY: geteuid has no preconditions.
        let ids = if unsafe { libc::geteuid() } == 0 {
            Some(user_ids("postgres").expect("the postgres user (from the postgresql package)"))
        } else {
            None
        };
        std::fs::write(dir.path("pwfile"), POSTGRES_PASSWORD).unwrap();
        if let Some(ids) = ids {
            chown_tree(&dir.0, ids);
        }
        let bin = postgres_bindir();
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(dir.path("data"))
            .args([
                "-U",
                "loadgen",
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", dir.path("pwfile").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some((uid, gid)) = ids {
            use std::os::unix::process::CommandExt;
            initdb.uid(uid).gid(gid);
        }
        let out = initdb.output().expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = Postgres {
            port: 0,
            child: None,
            dir,
            ids,
        };
        for _attempt in 0..5 {
            pg.port = free_port();
            pg.spawn();
            if pg.wait_ready(Duration::from_secs(20)) {
                return pg;
            }
            pg.kill();
            eprintln!("postgres did not come up on port {}: {}", pg.port, pg.log());
        }
        panic!("postgres did not start in 5 attempts")
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path("postgres.log"))
            .unwrap();
        if let Some(ids) = self.ids {
            let _ =
                std::os::unix::fs::chown(self.dir.path("postgres.log"), Some(ids.0), Some(ids.1));
        }
        let mut cmd = Command::new(postgres_bindir().join("postgres"));
        cmd.arg("-D")
            .arg(self.dir.path("data"))
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
            ])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", self.dir.0.display()))
            // A test database: durability is not what is tested.
            .args([
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ])
            .args(["-c", "max_connections=200"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some((uid, gid)) = self.ids {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(gid);
        }
        self.child = Some(cmd.spawn().expect("spawn postgres"));
    }

    fn wait_ready(&self, within: Duration) -> bool {
        let end = Instant::now() + within;
        while Instant::now() < end {
            let ok = Command::new(postgres_bindir().join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// `postgres://loadgen@127.0.0.1:PORT/postgres`: the password goes by `PGPASSWORD` or
    /// the tool's own environment variable.
    pub fn url(&self) -> String {
        format!("postgres://loadgen@127.0.0.1:{}/postgres", self.port)
    }

    pub fn password(&self) -> &'static str {
        POSTGRES_PASSWORD
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path("postgres.log")).unwrap_or_default()
    }

    /// Runs `sql` with psql; returns its unaligned, tuples-only output.
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(postgres_bindir().join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "loadgen",
                "-d",
                "postgres",
            ])
            .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .env("PGPASSWORD", POSTGRES_PASSWORD)
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Kills the server (SIGKILL): every connection drops.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Its children (backends, the checkpointer) go with the postmaster; wait for them to
        // release the data directory before a restart.
        let pid_file = self.dir.path("data/postmaster.pid");
        let end = Instant::now() + Duration::from_secs(10);
        while pid_file.exists() && Instant::now() < end {
            let pid: Option<i32> = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()));
            // SAFETY: kill with signal 0 only checks that the process exists.
            let alive = pid.is_some_and(|p| unsafe { libc::kill(p, 0) } == 0);
            if !alive {
                let _ = std::fs::remove_file(&pid_file);
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Restarts the server as `pg_ctl restart -m fast` does: SIGINT (every session is ended,
    /// what was committed stays), then a start on the same port.
    pub fn restart_fast(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill has no memory preconditions.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGINT);
            }
            let end = Instant::now() + Duration::from_secs(20);
            while Instant::now() < end && c.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        self.kill();
        self.spawn();
        assert!(
            self.wait_ready(Duration::from_secs(30)),
            "postgres did not come back: {}",
            self.log()
        );
    }

    /// Starts the server again on the same port after [`Postgres::kill`].
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
        assert!(
            self.wait_ready(Duration::from_secs(30)),
            "postgres did not come back: {}",
            self.log()
        );
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // SIGQUIT: the postmaster ends its backends at once.
            // SAFETY: kill has no memory preconditions.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGQUIT);
            }
        }
        if let Some(mut c) = self.child.take() {
            let end = Instant::now() + Duration::from_secs(5);
            while Instant::now() < end {
                if c.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Limits the address space of the process `cmd` starts (RLIMIT_AS) to `bytes`: a test of a
/// memory bound runs under it, so that a regression fails an allocation (and the test)
/// instead of taking the machine's memory.
pub fn limit_memory(cmd: &mut std::process::Command, bytes: u64) -> &mut std::process::Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: bytes as libc::rlim_t,
                rlim_max: bytes as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// Splits a shell command line into words as `sh` would for the simple commands of our help
/// texts and docs: blanks separate words, `'...'` and `"..."` quote (in `"..."` a backslash
/// escapes `"`, `\`, `$`), a backslash outside quotes escapes the next character, `\` at a
/// line's end continues it. No expansion: `$VAR` stays as written.
pub fn shell_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(ch) => word.push(ch),
                        None => return Err(format!("unclosed ' in: {line}")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(ch @ ('"' | '\\' | '$' | '`')) => word.push(ch),
                            Some(ch) => {
                                word.push('\\');
                                word.push(ch);
                            }
                            None => return Err(format!("unclosed \" in: {line}")),
                        },
                        Some(ch) => word.push(ch),
                        None => return Err(format!("unclosed \" in: {line}")),
                    }
                }
            }
            '\\' => match chars.next() {
                Some('\n') => {}
                Some(ch) => {
                    in_word = true;
                    word.push(ch);
                }
                None => {}
            },
            _ => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}
