#![no_main]
//! /proc text other users shape (a process's comm, a socket's path, with newlines in it):
//! /proc/PID/stat, /proc/PID/net/unix, /proc/PID/fd link targets. Never a panic.
use libfuzzer_sys::fuzz_target;
use sockherd::procfs::{parse_net_unix, parse_socket_link, parse_stat};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Some(process) = parse_stat(4242, text)
    {
        assert_eq!(process.pid, 4242);
    }
    for socket in parse_net_unix(data) {
        if let Some(path) = socket.path {
            assert!(path.is_absolute());
        }
    }
    let _ = parse_socket_link(data);
});
