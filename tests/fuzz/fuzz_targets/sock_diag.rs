#![no_main]
//! What the kernel answers over sock_diag netlink (inet_diag and unix_diag messages, their
//! attributes), as sockherd reads it for the listen queues. Never a panic; a listener is found
//! only by its inode, and the queue found is one the datagram holds.
use libfuzzer_sys::fuzz_target;
use sockherd::sockdiag::{Record, Target, parse, queue_of};

fuzz_target!(|data: &[u8]| {
    let Some((&seq, datagram)) = data.split_first() else { return };
    let Ok(answer) = parse(datagram, u32::from(seq)) else { return };
    for record in &answer.records {
        let (target, inode) = match *record {
            Record::Inet { local, port, inode, .. } => {
                (Target::Tcp { addr: std::net::SocketAddr::new(local, port), inode: u64::from(inode) }, inode)
            }
            Record::Unix { inode, .. } => (Target::Unix { inode: u64::from(inode) }, inode),
        };
        if let Some(q) = queue_of(&target, &answer.records, true) {
            let listed = answer.records.iter().any(|r| match *r {
                Record::Inet { inode: i, rqueue, wqueue, .. } => i == inode && (rqueue, wqueue) == (q.queued, q.backlog),
                Record::Unix { inode: i, rqlen, .. } => i == inode && rqlen == Some((q.queued, q.backlog)),
            });
            assert!(listed, "{q:?} is no record of inode {inode}");
        }
    }
});
