#![no_main]
//! sd_listen_fds(3) variables as systemd (or anyone starting sockherd) sets them: LISTEN_PID,
//! LISTEN_FDS and LISTEN_FDNAMES, any bytes. Never a panic; names match the count.
use libfuzzer_sys::fuzz_target;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

fuzz_target!(|data: &[u8]| {
    // Three values separated by NUL (absent when fewer), and our pid in the first byte.
    let mut parts = data.splitn(4, |&b| b == 0);
    let pid = i32::from(*parts.next().and_then(|p| p.first()).unwrap_or(&1));
    let values: Vec<Option<OsString>> = (0..3).map(|_| parts.next().map(|v| OsString::from_vec(v.to_vec()))).collect();
    let get = |name: &str| match name {
        "LISTEN_PID" => values[0].clone(),
        "LISTEN_FDS" => values[1].clone(),
        "LISTEN_FDNAMES" => values[2].clone(),
        _ => None,
    };
    if let Ok(sockherd::activation::Activation::Fds { names }) = sockherd::activation::parse(get, pid) {
        // As sd_listen_fds(3) reads it: a decimal number ("-0" and "+2" included).
        let count: i64 = values[1].as_ref().and_then(|v| v.to_str()).and_then(|v| v.trim().parse().ok()).unwrap();
        assert_eq!(names.len() as i64, count);
    }
});
