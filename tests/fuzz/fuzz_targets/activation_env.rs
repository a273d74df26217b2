#![no_main]
//! sd_listen_fds(3) variables as systemd (or anyone starting sockherd) sets them: LISTEN_PID,
//! LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PIDFDID, any bytes. Never a panic; names match the
//! count; a LISTEN_PIDFDID naming another process than ours never hands us the sockets.
use libfuzzer_sys::fuzz_target;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

fuzz_target!(|data: &[u8]| {
    // Our pid in the first byte, our pidfd id (none when 0) in the second, then four values
    // separated by NUL (absent when fewer).
    let (pid, our_id, rest) = match data {
        [p, i, rest @ ..] => (i32::from(*p), (*i != 0).then_some(u64::from(*i)), rest),
        [p] => (i32::from(*p), None, &[][..]),
        [] => (1, None, &[][..]),
    };
    let mut parts = rest.splitn(4, |&b| b == 0);
    let values: Vec<Option<OsString>> = (0..4).map(|_| parts.next().map(|v| OsString::from_vec(v.to_vec()))).collect();
    let get = |name: &str| match name {
        "LISTEN_PID" => values[0].clone(),
        "LISTEN_FDS" => values[1].clone(),
        "LISTEN_FDNAMES" => values[2].clone(),
        "LISTEN_PIDFDID" => values[3].clone(),
        _ => None,
    };
    if let Ok(sockherd::activation::Activation::Fds { names }) = sockherd::activation::parse(get, pid, our_id) {
        // As sd_listen_fds(3) reads it: a decimal number ("-0" and "+2" included).
        let count: i64 = values[1].as_ref().and_then(|v| v.to_str()).and_then(|v| v.trim().parse().ok()).unwrap();
        assert_eq!(names.len() as i64, count);
        // Handed over only when LISTEN_PIDFDID, if given and comparable, is ours.
        let given = values[3].as_ref().and_then(|v| v.to_str()).and_then(|v| v.trim().parse::<u64>().ok());
        if let (Some(given), Some(ours)) = (given, our_id) {
            assert_eq!(given, ours);
        }
    }
});
