//! What the engine asks of the operating system (Linux): sockets bound to a source address
//! before a non-blocking connect, a high-resolution timer for the event loop, the open-file
//! limit, and CPU clocks.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use mio::event::Source;
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Opens a non-blocking TCP connection to `addr`, from `source` when given. The connect is
/// in progress when this returns: the socket turns writable once it completes or fails.
pub fn connect(
    addr: SocketAddr,
    source: Option<IpAddr>,
    nodelay: bool,
) -> io::Result<mio::net::TcpStream> {
    // Non-blocking (and close-on-exec) from the start: one syscall, not three.
    #[cfg(target_os = "linux")]
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    #[cfg(not(target_os = "linux"))]
    let socket = {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        s.set_nonblocking(true)?;
        s
    };
    socket.set_tcp_nodelay(nodelay)?;
    if let Some(ip) = source {
        // Let connect() pick the port: with bind() picking it, every source address would
        // run out of ports at ~28,000 however many brokers it talks to.
        set_bind_address_no_port(socket.as_raw_fd());
        socket.bind(&SockAddr::from(SocketAddr::new(ip, 0)))?;
    }
    match socket.connect(&SockAddr::from(addr)) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(e),
    }
    let std: std::net::TcpStream = socket.into();
    Ok(mio::net::TcpStream::from_std(std))
}

fn set_bind_address_no_port(fd: RawFd) {
    #[cfg(target_os = "linux")]
    {
        let on: libc::c_int = 1;
        // SAFETY: a plain setsockopt on our own socket with a valid int option; failure only
        // means the kernel picks the port at bind time, as without it.
        unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = fd;
}

/// Raises the soft open-file limit to the hard one; returns the limit now in force.
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit with a valid rlimit struct of ours.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 everywhere
    let limit = lim.rlim_cur as u64;
    limit
}

/// Grows the process's descriptor table to hold `n` descriptors now, before connections
/// open. Linux grows the table by doubling, and in a process with more than one thread each
/// growth waits for an RCU grace period (`synchronize_rcu` in `expand_fdtable`): measured
/// here, 10-20 ms each, eight times over a ramp to 10,000 connections, with the ramp standing
/// still meanwhile. One growth up front costs at most one such wait, outside the ramp. The
/// table never shrinks, so the descriptor is closed at once. Best effort: a failure only
/// means the table grows as connections open.
pub fn reserve_descriptors(n: u64) {
    #[cfg(target_os = "linux")]
    {
        let Ok(null) = std::fs::File::open("/dev/null") else {
            return;
        };
        let limit = raise_nofile_limit();
        let target = n.min(limit.saturating_sub(1)).min(libc::c_int::MAX as u64) as libc::c_int;
        if target <= null.as_raw_fd() {
            return;
        }
        // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own returns a new descriptor (or -1),
        // which we close at once.
        unsafe {
            let fd = libc::fcntl(null.as_raw_fd(), libc::F_DUPFD_CLOEXEC, target);
            if fd >= 0 {
                libc::close(fd);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = n;
}

fn clock(id: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime with a valid clock id and timespec of ours.
    unsafe { libc::clock_gettime(id, &mut ts) };
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// CPU time (user + system) the calling thread has used.
pub fn thread_cpu_time() -> Duration {
    clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// CPU time (user + system) the whole process has used.
pub fn process_cpu_time() -> Duration {
    clock(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// Peak resident memory of the process so far, in bytes.
pub fn peak_rss_bytes() -> u64 {
    // SAFETY: getrusage with a zeroed rusage of ours.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru.ru_maxrss.max(0) as u64 * 1024
}

/// A timerfd on CLOCK_MONOTONIC (the clock of `Instant`) in the event loop's poll set: it
/// wakes the loop to the microsecond, where epoll's own timeout has millisecond ticks.
#[derive(Debug)]
pub struct Timer(OwnedFd);

impl Timer {
    pub fn new() -> io::Result<Timer> {
        // SAFETY: plain syscall; the result is checked before use.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        Ok(Timer(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Fires once, `after` from now (a zero `after` fires at once); replaces any earlier
    /// setting.
    pub fn arm(&self, after: Duration) -> io::Result<()> {
        let after = after.max(Duration::from_nanos(1)); // a zero it_value would disarm it
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                tv_nsec: after.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: our open timerfd and a valid itimerspec.
        if unsafe { libc::timerfd_settime(self.0.as_raw_fd(), 0, &spec, std::ptr::null_mut()) } < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Consumes an expiry, so that the next one is an event again (edge-triggered poll).
    pub fn clear(&self) {
        let mut buf = [0u8; 8];
        // SAFETY: reads at most 8 bytes into an 8-byte buffer from our timerfd; EAGAIN
        // (nothing expired) is fine.
        unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
    }
}

impl Source for Timer {
    fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        SourceFd(&self.0.as_raw_fd()).register(r, t, i)
    }
    fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        SourceFd(&self.0.as_raw_fd()).reregister(r, t, i)
    }
    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        SourceFd(&self.0.as_raw_fd()).deregister(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timer_wakes_a_poll_to_the_sub_millisecond() {
        let mut poll = mio::Poll::new().unwrap();
        let mut timer = Timer::new().unwrap();
        poll.registry()
            .register(&mut timer, Token(1), Interest::READABLE)
            .unwrap();
        let mut events = mio::Events::with_capacity(4);
        let start = std::time::Instant::now();
        timer.arm(Duration::from_micros(300)).unwrap();
        poll.poll(&mut events, Some(Duration::from_secs(5)))
            .unwrap();
        assert!(events.iter().any(|e| e.token() == Token(1)));
        let waited = start.elapsed();
        assert!(waited >= Duration::from_micros(300), "{waited:?}");
        // Functional check only: a loaded machine may delay the wake.
        assert!(waited < Duration::from_secs(1), "{waited:?}");
        timer.clear();
    }

    #[test]
    fn cpu_clocks_move_and_the_file_limit_is_raised() {
        let a = thread_cpu_time();
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(thread_cpu_time() > a);
        assert!(process_cpu_time() >= thread_cpu_time());
        assert!(raise_nofile_limit() >= 1024);
        assert!(peak_rss_bytes() > 0);
    }
}
