//! The listen queues of the public sockets: read from the kernel on demand (`sockherd status`),
//! and sampled during every handoff — and only then, so an idle supervisor never wakes for them
//! — to tell whether a deploy made clients wait: the peak of the connections waiting in all
//! queues at once, and how long any waited.

use std::time::{Duration, Instant};

use crate::log;
use crate::sockdiag::{Diag, Queue, Target};
use crate::socket::Socket;
use crate::sys::LocalAddr;

/// How often the queues are read while a handoff is in flight.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(10);

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
    last: Option<(Instant, u32)>,
    peak: u32,
    above_zero: Duration,
    /// Whether any reading found a queue (else there is nothing to report).
    seen: bool,
}

#[derive(Debug)]
pub struct Queues {
    /// Open only while a handoff is sampled: an idle supervisor keeps no netlink socket.
    diag: Option<Diag>,
    /// Opening it failed once (said once, then not tried again).
    failed: bool,
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
        Queues { diag: None, failed: false, targets, sampling: None, last: None }
    }

    /// Each public socket's queue now, in order (None where the kernel does not say).
    pub fn read(&mut self, with_active: bool) -> Vec<Option<Queue>> {
        if self.diag.is_none() && !self.failed {
            match Diag::open() {
                Ok(diag) => self.diag = Some(diag),
                Err(e) => {
                    self.failed = true;
                    log::warn(format!("cannot read the listen queues (sock_diag netlink): {e}")).emit();
                }
            }
        }
        let Some(diag) = self.diag.as_mut() else { return vec![None; self.targets.len()] };
        let wanted: Vec<Target> = self.targets.iter().flatten().cloned().collect();
        let mut found = diag.queues(&wanted, with_active).into_iter();
        let queues = self.targets.iter().map(|t| t.as_ref().and_then(|_| found.next().flatten())).collect();
        if self.sampling.is_none() {
            self.diag = None;
        }
        queues
    }

    /// A handoff began: sample from now on.
    pub fn begin(&mut self, now: Instant) {
        self.sampling = Some(Sampling { next: now, last: None, peak: 0, above_zero: Duration::ZERO, seen: false });
        self.sample(now);
    }

    /// When the next sample is due; None unless a handoff is in flight.
    pub fn next_sample(&self) -> Option<Instant> {
        self.sampling.as_ref().map(|s| s.next)
    }

    /// Samples if one is due.
    pub fn on_timer(&mut self, now: Instant) {
        if self.sampling.as_ref().is_some_and(|s| now >= s.next) {
            self.sample(now);
        }
    }

    /// The handoff ended: a last sample, and what it did to the queues (None if they could not
    /// be read).
    pub fn finish(&mut self, now: Instant) -> Option<Peak> {
        self.sample(now);
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

    fn sample(&mut self, now: Instant) {
        if self.sampling.is_none() {
            return;
        }
        let queues = self.read(false);
        let Some(s) = self.sampling.as_mut() else { return };
        let known: Vec<u32> = queues.iter().flatten().map(|q| q.queued).collect();
        s.next = now + SAMPLE_EVERY;
        if known.is_empty() {
            return;
        }
        s.seen = true;
        s.record(now, known.iter().fold(0u32, |a, b| a.saturating_add(*b)));
    }
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

    #[test]
    fn time_above_zero_counts_from_each_sample_that_saw_a_queue() {
        let t = Instant::now();
        let mut s = Sampling { next: t, last: None, peak: 0, above_zero: Duration::ZERO, seen: true };
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
