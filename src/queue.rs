//! The listen queues of the public sockets: read from the kernel on demand (`sockherd status`),
//! and sampled during every handoff — and only then, so an idle supervisor never wakes for them
//! — to tell whether a deploy made clients wait: the peak of the connections waiting in all
//! queues at once, and how long any waited.
//!
//! A sample costs one `TCP_INFO` getsockopt per TCP listener (our own descriptors); only unix
//! listeners need a sock_diag dump. While the new generation boots and settles, the
//! supervisor's timer wakes for samples: every [`SAMPLE_EVERY`] while anything waits, and,
//! while the queues stay empty, at twice the last interval up to [`SAMPLE_EMPTY_MAX`] (a boot
//! with empty queues costs a handful of wakeups, not one per 10 ms; a pile-up is seen within
//! that much, and its time above zero is short by as much at most). Once the old generation
//! drains, a sample is taken on each wakeup the drain has anyway (its processes exiting, its
//! cgroup emptying, and in process-group mode the `/proc` polls), at most one per
//! [`SAMPLE_EVERY`], and a last one when the handoff ends: a drain in cgroup mode wakes no
//! timer, and what the queues did during it is a lower bound.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use crate::log;
use crate::sockdiag::{Diag, Queue, Target};
use crate::socket::Socket;
use crate::sys::{self, LocalAddr};

/// How often the queues are read while a handoff is in flight and connections wait.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(10);
/// The longest interval between samples while the queues stay empty.
pub const SAMPLE_EMPTY_MAX: Duration = Duration::from_millis(80);

/// How a handoff's peak reads in its event's message (and is taken out of a reason again).
pub const NOTE_PREFIX: &str = " (listen queue peak ";

/// The note a reload's event gets: ` (listen queue peak 3, 120 ms above zero)`.
pub fn note(peak: &Peak) -> String {
    format!("{NOTE_PREFIX}{}, {} ms above zero)", peak.peak, peak.above_zero.as_millis())
}

/// What one handoff did to the queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peak {
    /// The most connections waiting at once, over all public sockets.
    pub peak: u32,
    /// How long at least one connection waited.
    pub above_zero: Duration,
}

#[derive(Debug)]
struct Sampling {
    next: Instant,
    /// The interval the last sample chose (see [`next_interval`]).
    interval: Duration,
    last: Option<(Instant, u32)>,
    peak: u32,
    above_zero: Duration,
    /// Whether any reading found a queue (else there is nothing to report).
    seen: bool,
}

pub struct Queues {
    /// Open only while a handoff is sampled: an idle supervisor keeps no netlink socket.
    diag: Option<Diag>,
    /// How a netlink socket is opened (a stand-in in tests).
    open: fn() -> std::io::Result<Diag>,
    /// The last attempt to open one failed and said so: the next failure is not said again.
    failing: bool,
    /// One per public socket, in order; None for what has no listen queue to read.
    targets: Vec<Option<Target>>,
    sampling: Option<Sampling>,
    last: Option<Peak>,
}

impl Queues {
    pub fn new(sockets: &[Socket]) -> Queues {
        let targets = sockets
            .iter()
            .map(|s| {
                let inode = s.inode()?;
                if s.kind != libc::SOCK_STREAM {
                    return None;
                }
                match &s.addr {
                    LocalAddr::Inet(addr) => Some(Target::Tcp { addr: *addr, inode }),
                    LocalAddr::Unix(_) | LocalAddr::UnixAbstract(_) => Some(Target::Unix { inode }),
                    _ => None,
                }
            })
            .collect();
        Queues { diag: None, open: Diag::open, failing: false, targets, sampling: None, last: None }
    }

    /// Each public socket's queue now, in order (None where the kernel does not say);
    /// `sockets` are the ones given to [`Queues::new`].
    ///
    /// A TCP listener's queue is read from its own descriptor (`TCP_INFO`, one syscall); only a
    /// unix listener's queue and the `active` count of `status` need a sock_diag dump. Where
    /// netlink cannot be had (a unit without `AF_NETLINK`), TCP queues are still read.
    pub fn read(&mut self, sockets: &[Socket], with_active: bool) -> Vec<Option<Queue>> {
        let mut found: Vec<Option<Queue>> = vec![None; self.targets.len()];
        let asked = netlink_asked(&self.targets, with_active);
        let wanted: Vec<Target> =
            self.targets.iter().zip(&asked).filter(|(_, a)| **a).filter_map(|(t, _)| t.clone()).collect();
        if !wanted.is_empty()
            && let Some(diag) = self.diag()
        {
            let mut answers = diag.queues(&wanted, with_active).into_iter();
            for (slot, asked) in found.iter_mut().zip(&asked) {
                if *asked {
                    *slot = answers.next().flatten();
                }
            }
        }
        let queues = found
            .into_iter()
            .zip(&self.targets)
            .zip(sockets)
            .map(|((diag, target), socket)| match target {
                Some(Target::Tcp { .. }) => {
                    let own = sys::tcp_listen_queue(socket.as_fd()).ok().map(|(queued, backlog)| Queue {
                        queued,
                        backlog,
                        active: None,
                    });
                    match (own, diag) {
                        (Some(own), Some(d)) => Some(Queue { active: d.active, ..own }),
                        (own, d) => own.or(d),
                    }
                }
                _ => diag,
            })
            .collect();
        if self.sampling.is_none() {
            self.diag = None;
        }
        queues
    }

    /// The sock_diag socket, opened if need be. A failure is said once, and tried again at the
    /// next reading (a full descriptor table now is no reason to give up for good).
    fn diag(&mut self) -> Option<&mut Diag> {
        if self.diag.is_none() {
            match (self.open)() {
                Ok(diag) => {
                    self.failing = false;
                    self.diag = Some(diag);
                }
                Err(e) => {
                    if !self.failing {
                        log::warn(format!("cannot read the unix listen queues (sock_diag netlink): {e}")).emit();
                    }
                    self.failing = true;
                }
            }
        }
        self.diag.as_mut()
    }

    /// A handoff began: sample from now on.
    pub fn begin(&mut self, now: Instant, sockets: &[Socket]) {
        self.sampling = Some(Sampling {
            next: now,
            interval: Duration::ZERO,
            last: None,
            peak: 0,
            above_zero: Duration::ZERO,
            seen: false,
        });
        self.sample(now, sockets);
    }

    /// When the next sample is due; None unless a handoff is in flight.
    pub fn next_sample(&self) -> Option<Instant> {
        self.sampling.as_ref().map(|s| s.next)
    }

    /// Samples if one is due.
    pub fn on_timer(&mut self, now: Instant, sockets: &[Socket]) {
        if self.sampling.as_ref().is_some_and(|s| now >= s.next) {
            self.sample(now, sockets);
        }
    }

    /// The handoff ended: a last sample, and what it did to the queues (None if they could not
    /// be read).
    pub fn finish(&mut self, now: Instant, sockets: &[Socket]) -> Option<Peak> {
        self.sample(now, sockets);
        self.diag = None;
        let s = self.sampling.take()?;
        let peak = s.seen.then_some(Peak { peak: s.peak, above_zero: s.above_zero });
        self.last = peak;
        peak
    }

    /// A handoff that ended without an outcome (sockherd stopped): no more samples.
    pub fn abandon(&mut self) {
        if self.sampling.take().is_some() {
            self.diag = None;
        }
    }

    /// The last finished handoff's peak.
    pub fn last(&self) -> Option<Peak> {
        self.last
    }

    fn sample(&mut self, now: Instant, sockets: &[Socket]) {
        if self.sampling.is_none() {
            return;
        }
        let queues = self.read(sockets, false);
        let Some(s) = self.sampling.as_mut() else { return };
        let known: Vec<u32> = queues.iter().flatten().map(|q| q.queued).collect();
        let waiting = known.iter().fold(0u32, |a, b| a.saturating_add(*b));
        s.interval = next_interval(s.interval, waiting);
        s.next = now + s.interval;
        if known.is_empty() {
            return;
        }
        s.seen = true;
        s.record(now, waiting);
    }
}

/// Which targets sock_diag must be asked about: unix listeners (no other way to their queue),
/// and TCP ones only for `status`'s ACTIVE count (their queue is a `TCP_INFO` away).
fn netlink_asked(targets: &[Option<Target>], with_active: bool) -> Vec<bool> {
    targets
        .iter()
        .map(|t| match t {
            Some(Target::Unix { .. }) => true,
            Some(Target::Tcp { .. }) => with_active,
            None => false,
        })
        .collect()
}

/// The interval to the next sample after one that found `waiting` connections: the shortest
/// while any wait, doubling up to [`SAMPLE_EMPTY_MAX`] while none do.
fn next_interval(last: Duration, waiting: u32) -> Duration {
    if waiting > 0 { SAMPLE_EVERY } else { (last * 2).clamp(SAMPLE_EVERY, SAMPLE_EMPTY_MAX) }
}

impl Sampling {
    fn record(&mut self, now: Instant, waiting: u32) {
        if let Some((at, before)) = self.last
            && before > 0
        {
            self.above_zero += now.saturating_duration_since(at);
        }
        self.peak = self.peak.max(waiting);
        self.last = Some((now, waiting));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::socket::Origin;
    use std::os::fd::OwnedFd;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn socket(fd: impl Into<OwnedFd>) -> Socket {
        Socket::new(fd.into(), "test".into(), Origin::Bound { created: None }).unwrap()
    }

    fn no_netlink() -> std::io::Result<Diag> {
        Err(std::io::Error::from_raw_os_error(libc::EAFNOSUPPORT))
    }

    #[test]
    fn a_tcp_listeners_queue_is_read_without_netlink() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let _waiting: Vec<_> = (0..3).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
        let sockets = vec![socket(listener)];
        let mut queues = Queues::new(&sockets);
        queues.open = no_netlink;
        let [Some(q)] = queues.read(&sockets, false)[..] else { panic!("no queue read") };
        assert_eq!(q.queued, 3, "{q:?}");
        assert!(q.backlog >= 3, "{q:?}");
        // `status` asks for the accepted connections too: without netlink, the queue still.
        assert_eq!(queues.read(&sockets, true)[0].map(|q| (q.queued, q.active)), Some((3, None)));
    }

    #[test]
    fn samples_slow_down_while_the_queues_stay_empty_and_speed_up_when_one_waits() {
        let ms = Duration::from_millis;
        let mut interval = Duration::ZERO;
        let mut seen = Vec::new();
        for waiting in [0, 0, 0, 0, 0, 0, 2, 1, 0, 0] {
            interval = next_interval(interval, waiting);
            seen.push(interval.as_millis());
        }
        assert_eq!(seen, [10, 20, 40, 80, 80, 80, 10, 10, 20, 40]);
        assert_eq!(next_interval(ms(80), 0), SAMPLE_EMPTY_MAX);
    }

    #[test]
    fn a_sample_asks_netlink_only_for_unix_listeners() {
        let tcp = Some(Target::Tcp { addr: "127.0.0.1:80".parse().unwrap(), inode: 1 });
        let unix = Some(Target::Unix { inode: 2 });
        let targets = [tcp, unix, None];
        assert_eq!(netlink_asked(&targets, false), [false, true, false]);
        assert_eq!(netlink_asked(&targets, true), [true, true, false]);
    }

    static OPENS: AtomicUsize = AtomicUsize::new(0);

    /// Fails the first time, opens a real socket after.
    fn fails_once() -> std::io::Result<Diag> {
        match OPENS.fetch_add(1, Ordering::SeqCst) {
            0 => Err(std::io::Error::from_raw_os_error(libc::EMFILE)),
            _ => Diag::open(),
        }
    }

    #[test]
    fn a_failed_netlink_open_is_tried_again_at_the_next_reading() {
        let dir = std::env::temp_dir().join(format!("sockherd-queue-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let _waiting = std::os::unix::net::UnixStream::connect(&path).unwrap();
        if Diag::open().is_err() {
            eprintln!("SKIPPED: no sock_diag netlink here");
            return;
        }
        let sockets = vec![socket(listener)];
        let mut queues = Queues::new(&sockets);
        queues.open = fails_once;
        assert_eq!(queues.read(&sockets, false), vec![None]);
        let again = queues.read(&sockets, false);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(again[0].map(|q| q.queued), Some(1), "{again:?}");
    }

    #[test]
    fn time_above_zero_counts_from_each_sample_that_saw_a_queue() {
        let t = Instant::now();
        let mut s =
            Sampling { next: t, interval: Duration::ZERO, last: None, peak: 0, above_zero: Duration::ZERO, seen: true };
        let ms = Duration::from_millis;
        s.record(t, 0);
        s.record(t + ms(10), 2);
        s.record(t + ms(20), 5);
        s.record(t + ms(30), 1);
        s.record(t + ms(40), 0);
        s.record(t + ms(50), 0);
        assert_eq!((s.peak, s.above_zero), (5, ms(30)));
    }
}
