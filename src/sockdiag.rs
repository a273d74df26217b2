//! The kernel's count of connections waiting in a listening socket's accept queue, read over
//! sock_diag netlink (`NETLINK_SOCK_DIAG`, sock_diag(7)), the way raindrops reads it for unicorn:
//!
//! - TCP (inet_diag): a listener's `idiag_rqueue` is its accept queue now, `idiag_wqueue` the
//!   backlog it was given (`sk_max_ack_backlog`). Connections a worker has accepted are the
//!   established sockets on the listener's address that have an inode (a socket still in the
//!   accept queue has none): `active`.
//! - unix (unix_diag with `UDIAG_SHOW_RQLEN`): for a listener, `UNIX_DIAG_RQLEN` is the
//!   connections waiting and its backlog. The kernel ties no accepted unix socket to its
//!   listener, so there is no `active` count.
//!
//! Listeners are found by inode (the one `fstat` gives our descriptor), never by address alone.
//! What the kernel answers is parsed with bounds checks only: a short, long or odd message is an
//! error or skipped, never a panic (fuzzed: `tests/fuzz`, target `sock_diag`).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use crate::sys;

// Protocol numbers (linux/netlink.h, linux/sock_diag.h, linux/inet_diag.h, linux/unix_diag.h).
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x01;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_DUMP_INTR: u16 = 0x10;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_HDRLEN: usize = 16;
const INET_DIAG_REQ_LEN: usize = 56;
const INET_DIAG_MSG_LEN: usize = 72;
const UNIX_DIAG_REQ_LEN: usize = 24;
const UNIX_DIAG_MSG_LEN: usize = 16;
const UDIAG_SHOW_VFS: u32 = 0x02;
const UDIAG_SHOW_RQLEN: u32 = 0x10;
const UNIX_DIAG_VFS: u16 = 1;
const UNIX_DIAG_RQLEN: u16 = 4;
const IPPROTO_TCP: u8 = 6;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const AF_UNIX: u8 = 1;
/// TCP states (also a unix socket's state numbers).
pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_LISTEN: u8 = 10;
/// The receive buffer: the kernel sizes a dump's datagrams to the largest buffer the reader
/// used, and at least NLMSG_GOODSIZE (a page, at most 8 KiB, minus overhead), so 8 KiB holds
/// every one it sends us.
const RECV_BUFFER: usize = 8 * 1024;
/// How often an interrupted dump is asked for at most.
const DUMP_ATTEMPTS: usize = 3;

/// One listening socket's queue, as the kernel counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queue {
    /// Connections waiting to be accepted.
    pub queued: u32,
    /// The backlog the socket listens with.
    pub backlog: u32,
    /// Connections accepted and still open (TCP only).
    pub active: Option<u32>,
}

/// A listening socket to look up: its address family and local address, and its inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Tcp { addr: SocketAddr, inode: u64 },
    Unix { inode: u64 },
}

/// One socket of a dump answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Inet {
        state: u8,
        local: IpAddr,
        port: u16,
        inode: u32,
        rqueue: u32,
        wqueue: u32,
    },
    /// `file`: the inode of the file the socket is bound to (`UNIX_DIAG_VFS`), if any.
    Unix {
        state: u8,
        inode: u32,
        rqlen: Option<(u32, u32)>,
        file: Option<u32>,
    },
}

/// The request for a dump of the inet sockets of `family` (AF_INET or AF_INET6) in `states`
/// (a bit mask of `1 << state`) whose local port is `port` (the kernel filters by it; 0: any).
pub fn inet_request(family: u8, port: u16, states: u32, seq: u32) -> Vec<u8> {
    let mut req = header(NLMSG_HDRLEN + INET_DIAG_REQ_LEN, seq);
    req.push(family);
    req.push(IPPROTO_TCP);
    req.push(0); // idiag_ext: no extensions
    req.push(0);
    req.extend_from_slice(&states.to_ne_bytes());
    // inet_diag_sockid: sport, dport (big-endian), src, dst, if, cookie.
    req.extend_from_slice(&port.to_be_bytes());
    req.extend_from_slice(&[0; 2 + 16 + 16 + 4]);
    req.extend_from_slice(&[0xff; 8]); // INET_DIAG_NOCOOKIE
    req
}

/// The request for a dump of the unix sockets in `states`, with their receive queues and the
/// inodes of their files.
pub fn unix_request(states: u32, seq: u32) -> Vec<u8> {
    let mut req = header(NLMSG_HDRLEN + UNIX_DIAG_REQ_LEN, seq);
    req.push(AF_UNIX);
    req.push(0);
    req.extend_from_slice(&[0; 2]);
    req.extend_from_slice(&states.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes()); // udiag_ino: any
    req.extend_from_slice(&(UDIAG_SHOW_RQLEN | UDIAG_SHOW_VFS).to_ne_bytes());
    req.extend_from_slice(&[0xff; 8]);
    req
}

fn header(len: usize, seq: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(len);
    h.extend_from_slice(&(len as u32).to_ne_bytes());
    h.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    h.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    h.extend_from_slice(&seq.to_ne_bytes());
    h.extend_from_slice(&0u32.to_ne_bytes());
    h
}

/// What one answer datagram holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Answer {
    pub records: Vec<Record>,
    /// The dump ended (NLMSG_DONE).
    pub done: bool,
    /// The kernel's table changed during the dump (`NLM_F_DUMP_INTR`): sockets may be missing.
    pub interrupted: bool,
}

/// Parses one datagram of the kernel's answer to the request numbered `seq`: the sockets in
/// it, and whether the dump ended. Messages of other requests are skipped; a message that does
/// not fit the datagram, or an error from the kernel, is an error.
pub fn parse(datagram: &[u8], seq: u32) -> Result<Answer, String> {
    let mut answer = Answer::default();
    let mut rest = datagram;
    while rest.len() >= NLMSG_HDRLEN {
        let len = u32_at(rest, 0).unwrap_or(0) as usize;
        let kind = u16_at(rest, 4).unwrap_or(0);
        let flags = u16_at(rest, 6).unwrap_or(0);
        let msg_seq = u32_at(rest, 8).unwrap_or(0);
        if len < NLMSG_HDRLEN || len > rest.len() {
            return Err(format!("a netlink message of {len} bytes in {} bytes left", rest.len()));
        }
        let payload = &rest[NLMSG_HDRLEN..len];
        if msg_seq == seq {
            answer.interrupted |= flags & NLM_F_DUMP_INTR != 0;
            match kind {
                // A dump the kernel could not finish ends with -errno here.
                NLMSG_DONE => match u32_at(payload, 0).map(|c| c as i32) {
                    Some(code) if code < 0 => {
                        return Err(format!(
                            "the dump ended early: {}",
                            io::Error::from_raw_os_error(code.saturating_neg())
                        ));
                    }
                    _ => answer.done = true,
                },
                NLMSG_ERROR => {
                    let code = u32_at(payload, 0).ok_or("a truncated netlink error")? as i32;
                    if code != 0 {
                        return Err(io::Error::from_raw_os_error(code.saturating_neg()).to_string());
                    }
                }
                SOCK_DIAG_BY_FAMILY => answer.records.extend(record(payload)),
                _ => {}
            }
        }
        // Messages are aligned to 4 bytes.
        let next = len.checked_add(3).map(|n| n & !3).unwrap_or(usize::MAX);
        rest = rest.get(next..).unwrap_or(&[]);
        if answer.done {
            break;
        }
    }
    Ok(answer)
}

/// One inet_diag_msg or unix_diag_msg (with its attributes); None if it is neither.
fn record(payload: &[u8]) -> Option<Record> {
    match *payload.first()? {
        family @ (AF_INET | AF_INET6) => {
            if payload.len() < INET_DIAG_MSG_LEN {
                return None;
            }
            let state = payload[1];
            // inet_diag_sockid at 4: sport (big-endian) at 4, src at 8.
            let port = u16::from_be_bytes([payload[4], payload[5]]);
            let src = &payload[8..24];
            let local = if family == AF_INET {
                IpAddr::V4(Ipv4Addr::new(src[0], src[1], src[2], src[3]))
            } else {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(src);
                IpAddr::V6(Ipv6Addr::from(octets))
            };
            Some(Record::Inet {
                state,
                local,
                port,
                rqueue: u32_at(payload, 56)?,
                wqueue: u32_at(payload, 60)?,
                inode: u32_at(payload, 68)?,
            })
        }
        AF_UNIX => {
            if payload.len() < UNIX_DIAG_MSG_LEN {
                return None;
            }
            let state = payload[2];
            let inode = u32_at(payload, 4)?;
            let mut rqlen = None;
            let mut file = None;
            let mut attrs = &payload[UNIX_DIAG_MSG_LEN..];
            while attrs.len() >= 4 {
                let len = usize::from(u16_at(attrs, 0)?);
                let kind = u16_at(attrs, 2)?;
                if len < 4 || len > attrs.len() {
                    break;
                }
                if kind == UNIX_DIAG_RQLEN && len >= 12 {
                    rqlen = Some((u32_at(attrs, 4)?, u32_at(attrs, 8)?));
                }
                // unix_diag_vfs: the file's inode, then its device (the kernel's own encoding).
                if kind == UNIX_DIAG_VFS && len >= 12 {
                    file = Some(u32_at(attrs, 4)?);
                }
                attrs = attrs.get((len + 3) & !3..).unwrap_or(&[]);
            }
            Some(Record::Unix { state, inode, rqlen, file })
        }
        _ => None,
    }
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(bytes.get(at..at.checked_add(2)?)?.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

/// Folds the records of a dump into `target`'s queue, if its listener is among them.
pub fn queue_of(target: &Target, records: &[Record], with_active: bool) -> Option<Queue> {
    match target {
        Target::Tcp { addr, inode } => {
            let mut queue = None;
            let mut active = 0u32;
            for r in records {
                if let Record::Inet { state, local, port, inode: ino, rqueue, wqueue } = *r {
                    if state == TCP_LISTEN && u64::from(ino) == *inode {
                        queue = Some(Queue { queued: rqueue, backlog: wqueue, active: None });
                    } else if state == TCP_ESTABLISHED
                        && ino != 0
                        && port == addr.port()
                        && (addr.ip().is_unspecified() || same_ip(local, addr.ip()))
                    {
                        active = active.saturating_add(1);
                    }
                }
            }
            queue.map(|q| Queue { active: with_active.then_some(active), ..q })
        }
        Target::Unix { inode } => records.iter().find_map(|r| match *r {
            Record::Unix { state: TCP_LISTEN, inode: ino, rqlen: Some((queued, backlog)), .. }
                if u64::from(ino) == *inode =>
            {
                Some(Queue { queued, backlog, active: None })
            }
            _ => None,
        }),
    }
}

/// Equal addresses, an IPv4 one and its IPv4-mapped IPv6 form included.
fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    let canonical = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    canonical(a) == canonical(b)
}

/// The file inode of the unix socket with inode `socket` among `records`.
pub fn file_of(socket: u64, records: &[Record]) -> Option<u64> {
    records.iter().find_map(|r| match *r {
        Record::Unix { inode, file, .. } if u64::from(inode) == socket => file.map(u64::from),
        _ => None,
    })
}

/// A sock_diag netlink socket, opened once and reused for every reading.
#[derive(Debug)]
pub struct Diag {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl Diag {
    pub fn open() -> io::Result<Diag> {
        Ok(Diag { fd: sys::sock_diag_socket(Duration::from_millis(500))?, seq: 0, buf: vec![0; RECV_BUFFER] })
    }

    /// Every target's queue (None where the kernel did not show its listener: another network
    /// namespace, a kernel without the diag module). `with_active` also counts accepted TCP
    /// connections, which lists the established sockets on the listener's port.
    ///
    /// Without `with_active` (the samples of a handoff) it costs one dump per address family
    /// however many sockets there are: every TCP listener of the family at once (the kernel
    /// walks only its listening table), matched by inode here.
    pub fn queues(&mut self, targets: &[Target], with_active: bool) -> Vec<Option<Queue>> {
        let mut unix: Option<Vec<Record>> = None;
        let mut listeners: Vec<(u8, Vec<Record>)> = Vec::new();
        targets
            .iter()
            .map(|target| {
                let records = match target {
                    Target::Tcp { addr, .. } => {
                        let family = if addr.is_ipv4() { AF_INET } else { AF_INET6 };
                        if with_active {
                            let states = (1 << TCP_LISTEN) | (1 << TCP_ESTABLISHED);
                            self.dump(|seq| inet_request(family, addr.port(), states, seq)).ok()?
                        } else {
                            if !listeners.iter().any(|(f, _)| *f == family) {
                                let all = self.dump(|seq| inet_request(family, 0, 1 << TCP_LISTEN, seq)).ok()?;
                                listeners.push((family, all));
                            }
                            listeners.iter().find(|(f, _)| *f == family)?.1.clone()
                        }
                    }
                    Target::Unix { .. } => {
                        if unix.is_none() {
                            unix = Some(self.dump(|seq| unix_request(1 << TCP_LISTEN, seq)).ok()?);
                        }
                        unix.clone()?
                    }
                };
                queue_of(target, &records, with_active)
            })
            .collect()
    }

    /// The inode of the file the listening unix socket with inode `socket` is bound to: None
    /// when the kernel shows no such listener or no file for it.
    pub fn unix_file_inode(&mut self, socket: u64) -> io::Result<Option<u64>> {
        let records = self.dump(|seq| unix_request(1 << TCP_LISTEN, seq))?;
        Ok(file_of(socket, &records))
    }

    /// One dump's records. A dump the kernel marks interrupted (its table changed meanwhile,
    /// so a listener may be missing) is asked again, a few times at most.
    fn dump(&mut self, request: impl Fn(u32) -> Vec<u8>) -> io::Result<Vec<Record>> {
        for _ in 0..DUMP_ATTEMPTS {
            let (records, interrupted) = self.dump_once(&request)?;
            if !interrupted {
                return Ok(records);
            }
        }
        Err(io::Error::other(format!("each of {DUMP_ATTEMPTS} dumps was interrupted by a change of the socket table")))
    }

    /// One dump's records, and whether the kernel marked it interrupted.
    fn dump_once(&mut self, request: &impl Fn(u32) -> Vec<u8>) -> io::Result<(Vec<Record>, bool)> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        sys::send(self.fd.as_fd(), &request(seq))?;
        let mut records = Vec::new();
        let mut interrupted = false;
        loop {
            let n = sys::recv(self.fd.as_fd(), &mut self.buf)?;
            let answer = parse(&self.buf[..n], seq).map_err(io::Error::other)?;
            records.extend(answer.records);
            interrupted |= answer.interrupted;
            if answer.done {
                return Ok((records, interrupted));
            }
            if n == 0 {
                return Err(io::Error::other("the sock_diag answer ended without NLMSG_DONE"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = NLMSG_HDRLEN + payload.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(payload);
        while m.len() % 4 != 0 {
            m.push(0);
        }
        m
    }

    fn inet_msg(state: u8, ip: [u8; 4], port: u16, rq: u32, wq: u32, inode: u32) -> Vec<u8> {
        let mut p = vec![AF_INET, state, 0, 0];
        p.extend_from_slice(&port.to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(&ip);
        p.extend_from_slice(&[0; 12 + 16 + 4 + 8]);
        p.extend_from_slice(&0u32.to_ne_bytes()); // expires
        p.extend_from_slice(&rq.to_ne_bytes());
        p.extend_from_slice(&wq.to_ne_bytes());
        p.extend_from_slice(&0u32.to_ne_bytes()); // uid
        p.extend_from_slice(&inode.to_ne_bytes());
        assert_eq!(p.len(), INET_DIAG_MSG_LEN);
        p
    }

    #[test]
    fn requests_have_the_kernels_sizes() {
        assert_eq!(inet_request(AF_INET, 8080, 1 << TCP_LISTEN, 7).len(), 72);
        assert_eq!(unix_request(1 << TCP_LISTEN, 7).len(), 40);
        let req = inet_request(AF_INET, 8080, 1 << TCP_LISTEN, 7);
        assert_eq!(&req[24..26], &8080u16.to_be_bytes());
    }

    #[test]
    fn finds_a_listener_by_inode_and_counts_accepted_connections() {
        let mut dgram = message(SOCK_DIAG_BY_FAMILY, 5, &inet_msg(TCP_LISTEN, [127, 0, 0, 1], 8080, 3, 1024, 77));
        dgram.extend(message(SOCK_DIAG_BY_FAMILY, 5, &inet_msg(TCP_ESTABLISHED, [127, 0, 0, 1], 8080, 0, 0, 90)));
        // Still in the accept queue: no inode yet.
        dgram.extend(message(SOCK_DIAG_BY_FAMILY, 5, &inet_msg(TCP_ESTABLISHED, [127, 0, 0, 1], 8080, 0, 0, 0)));
        // Another address on the same port.
        dgram.extend(message(SOCK_DIAG_BY_FAMILY, 5, &inet_msg(TCP_ESTABLISHED, [127, 0, 0, 2], 8080, 0, 0, 91)));
        dgram.extend(message(NLMSG_DONE, 5, &[0; 4]));
        let answer = parse(&dgram, 5).unwrap();
        assert!(answer.done);
        assert_eq!(answer.records.len(), 4);
        let target = Target::Tcp { addr: "127.0.0.1:8080".parse().unwrap(), inode: 77 };
        assert_eq!(queue_of(&target, &answer.records, true), Some(Queue { queued: 3, backlog: 1024, active: Some(1) }));
        let other = Target::Tcp { addr: "127.0.0.1:8080".parse().unwrap(), inode: 78 };
        assert_eq!(queue_of(&other, &answer.records, true), None);
    }

    #[test]
    fn reads_a_unix_listeners_rqlen() {
        let mut p = vec![AF_UNIX, 1, TCP_LISTEN, 0];
        p.extend_from_slice(&42u32.to_ne_bytes());
        p.extend_from_slice(&[0xff; 8]);
        p.extend_from_slice(&12u16.to_ne_bytes());
        p.extend_from_slice(&UNIX_DIAG_RQLEN.to_ne_bytes());
        p.extend_from_slice(&2u32.to_ne_bytes());
        p.extend_from_slice(&128u32.to_ne_bytes());
        let answer = parse(&message(SOCK_DIAG_BY_FAMILY, 1, &p), 1).unwrap();
        assert_eq!(
            queue_of(&Target::Unix { inode: 42 }, &answer.records, false),
            Some(Queue { queued: 2, backlog: 128, active: None })
        );
        assert_eq!(file_of(42, &answer.records), None, "no UNIX_DIAG_VFS: no file");
    }

    #[test]
    fn reads_a_unix_sockets_file_inode() {
        let mut p = vec![AF_UNIX, 1, TCP_LISTEN, 0];
        p.extend_from_slice(&42u32.to_ne_bytes());
        p.extend_from_slice(&[0xff; 8]);
        p.extend_from_slice(&12u16.to_ne_bytes());
        p.extend_from_slice(&UNIX_DIAG_VFS.to_ne_bytes());
        p.extend_from_slice(&9001u32.to_ne_bytes());
        p.extend_from_slice(&5u32.to_ne_bytes());
        let answer = parse(&message(SOCK_DIAG_BY_FAMILY, 1, &p), 1).unwrap();
        assert_eq!(file_of(42, &answer.records), Some(9001));
        assert_eq!(file_of(43, &answer.records), None);
        // A truncated attribute is no file.
        p.truncate(p.len() - 4);
        p[16] = 8;
        let answer = parse(&message(SOCK_DIAG_BY_FAMILY, 1, &p), 1).unwrap();
        assert_eq!(file_of(42, &answer.records), None);
    }

    #[test]
    fn odd_answers_are_errors_not_panics() {
        assert!(parse(&message(NLMSG_ERROR, 1, &(-13i32).to_ne_bytes()), 1).unwrap_err().contains("denied"));
        let mut bad = message(NLMSG_DONE, 1, &[0; 4]);
        bad[0] = 200;
        assert!(parse(&bad, 1).is_err());
        assert_eq!(parse(&[1, 2, 3], 1), Ok(Answer::default()));
        // Another request's answer is skipped; a short record is ignored.
        let other = parse(&message(SOCK_DIAG_BY_FAMILY, 2, &inet_msg(TCP_LISTEN, [0; 4], 1, 1, 1, 1)), 1).unwrap();
        assert!(other.records.is_empty());
        assert!(parse(&message(SOCK_DIAG_BY_FAMILY, 1, &[AF_INET, 10, 0]), 1).unwrap().records.is_empty());
    }

    #[test]
    fn a_dump_that_ends_in_an_error_is_an_error() {
        // The kernel ends a dump it could not finish with NLMSG_DONE carrying -errno.
        let mut dgram = message(SOCK_DIAG_BY_FAMILY, 3, &inet_msg(TCP_LISTEN, [127, 0, 0, 1], 80, 0, 8, 9));
        dgram.extend(message(NLMSG_DONE, 3, &(-libc::ENOBUFS).to_ne_bytes()));
        assert!(parse(&dgram, 3).is_err(), "{:?}", parse(&dgram, 3));
        assert!(parse(&message(NLMSG_DONE, 3, &0i32.to_ne_bytes()), 3).unwrap().done);
    }

    #[test]
    fn an_interrupted_dump_is_marked() {
        // NLM_F_DUMP_INTR: the table changed under the dump, which may have missed sockets.
        let mut m = message(SOCK_DIAG_BY_FAMILY, 4, &inet_msg(TCP_LISTEN, [127, 0, 0, 1], 80, 0, 8, 9));
        m[6..8].copy_from_slice(&NLM_F_DUMP_INTR.to_ne_bytes());
        m.extend(message(NLMSG_DONE, 4, &0i32.to_ne_bytes()));
        let answer = parse(&m, 4).unwrap();
        assert!(answer.interrupted && answer.done);
        assert!(!parse(&message(NLMSG_DONE, 4, &0i32.to_ne_bytes()), 4).unwrap().interrupted);
    }

    #[test]
    fn reads_a_real_listeners_queue() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let inode = sys::fstat(listener.as_fd()).unwrap().2;
        let _waiting: Vec<_> = (0..3).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
        let Ok(mut diag) = Diag::open() else {
            eprintln!("SKIPPED: no sock_diag netlink here");
            return;
        };
        let q = diag.queues(&[Target::Tcp { addr, inode }], true);
        let [Some(q)] = q[..] else { panic!("listener not found: {q:?}") };
        assert_eq!((q.queued, q.active), (3, Some(0)), "{q:?}");
        assert!(q.backlog >= 3, "{q:?}");
    }
}
