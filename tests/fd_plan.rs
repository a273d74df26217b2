//! A property of the fd plan (`sys::ExecImage`): for any set of source descriptors (anywhere,
//! the targets 3..3+N among them, close-on-exec or not, with unrelated descriptors open around
//! them), a real fork/exec child finds exactly the right sockets at 3..3+N, none of them
//! close-on-exec, and nothing else open above 2.
//!
//! Each case runs in a fresh process (this test binary, re-executed with the case in
//! SOCKHERD_FD_PLAN_CASE), which may then put descriptors at any number without disturbing a
//! test harness. No harness: `main` drives proptest itself.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::process::Command;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

const PYTHON: &str = "/usr/bin/python3";
/// Lists every descriptor from 3 up as `fd inode cloexec`, into argv[1].
const REPORTER: &str = "import os, sys, fcntl
lines = []
for n in sorted(int(x) for x in os.listdir('/proc/self/fd')):
    if n < 3:
        continue
    try:
        st = os.fstat(n)
        flags = fcntl.fcntl(n, fcntl.F_GETFD)
    except OSError:
        continue  # the descriptor listdir used
    lines.append('%d %d %d' % (n, st.st_ino, flags & fcntl.FD_CLOEXEC))
open(sys.argv[1], 'w').write('\\n'.join(lines) + '\\n')";

/// One case: where each socket starts (and whether it is close-on-exec there), and unrelated
/// descriptors (some not close-on-exec) that must not reach the child.
#[derive(Debug, Clone)]
struct Case {
    sources: Vec<(i32, bool)>,
    others: Vec<(i32, bool)>,
}

impl Case {
    fn encode(&self) -> String {
        let part =
            |v: &[(i32, bool)]| v.iter().map(|(fd, c)| format!("{fd}:{}", u8::from(*c))).collect::<Vec<_>>().join(",");
        format!("{};{}", part(&self.sources), part(&self.others))
    }

    fn decode(text: &str) -> Case {
        let part = |s: &str| -> Vec<(i32, bool)> {
            s.split(',')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (fd, c) = p.split_once(':').unwrap();
                    (fd.parse().unwrap(), c == "1")
                })
                .collect()
        };
        let (sources, others) = text.split_once(';').unwrap();
        Case { sources: part(sources), others: part(others) }
    }
}

fn case() -> impl Strategy<Value = Case> {
    // Up to 6 sockets, from anywhere in 3..40 (so the targets 3..3+N are often sources too),
    // and up to 6 other descriptors elsewhere in that range.
    (1usize..=6)
        .prop_flat_map(|n| {
            (
                proptest::sample::subsequence((3..40).collect::<Vec<i32>>(), n).prop_shuffle(),
                proptest::collection::vec(any::<bool>(), n),
                proptest::sample::subsequence((3..40).collect::<Vec<i32>>(), 0..=6),
                proptest::collection::vec(any::<bool>(), 6),
            )
        })
        .prop_map(|(fds, cloexec, others, other_cloexec)| {
            let sources: Vec<(i32, bool)> = fds.into_iter().zip(cloexec).collect();
            let taken: BTreeSet<i32> = sources.iter().map(|(fd, _)| *fd).collect();
            let others = others.into_iter().filter(|fd| !taken.contains(fd)).zip(other_cloexec).collect();
            Case { sources, others }
        })
}

/// In the re-executed process: set the descriptors up, spawn the reporter with the plan, and
/// print what it saw after the expected inodes.
fn helper(case: &Case, out: &str) {
    // Create everything far above the range first, then move it into place.
    let park = |fd: OwnedFd| -> OwnedFd { fds::dup_above(&fd, 500) };
    let sockets: Vec<OwnedFd> =
        case.sources.iter().map(|_| park(std::net::TcpListener::bind("127.0.0.1:0").unwrap().into())).collect();
    let others: Vec<OwnedFd> =
        case.others.iter().map(|_| park(std::fs::File::open("/dev/null").unwrap().into())).collect();
    let mut expected = Vec::new();
    let mut placed = Vec::new();
    for ((fd, cloexec), socket) in case.sources.iter().zip(&sockets) {
        placed.push(fds::dup_to(socket, *fd, *cloexec));
        expected.push(sockherd::sys::fstat(socket.as_fd()).unwrap().2);
    }
    for ((fd, cloexec), file) in case.others.iter().zip(&others) {
        placed.push(fds::dup_to(file, *fd, *cloexec));
    }
    drop(sockets);
    drop(others);
    let source_fds: Vec<i32> = case.sources.iter().map(|(fd, _)| *fd).collect();
    if std::env::var_os("SOCKHERD_FD_PLAN_MISSING").is_some() {
        // A program that cannot be executed: the error must come back from spawn, whatever
        // descriptors the plan moves in the child.
        let missing = OsStr::new("/nonexistent/program");
        let image = sockherd::sys::ExecImage::new(missing, &[missing], &[], false, source_fds).unwrap();
        match sockherd::sys::spawn(image, None) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => println!("expected "),
            other => panic!("spawn of a missing program returned {other:?}"),
        }
        drop(placed);
        return;
    }
    let argv = [OsStr::new(PYTHON), OsStr::new("-c"), OsStr::new(REPORTER), OsStr::new(out)];
    let image =
        sockherd::sys::ExecImage::new(OsStr::new(PYTHON), &argv, &[b"PATH=/usr/bin:/bin".to_vec()], false, source_fds)
            .unwrap();
    let pid = sockherd::sys::spawn(image, None).unwrap();
    let status = loop {
        match sockherd::sys::reap_any().unwrap() {
            Some((p, status)) if p == pid => break status,
            _ => std::thread::sleep(std::time::Duration::from_millis(5)),
        }
    };
    assert!(status.success(), "the reporter failed: {status:?}");
    println!("expected {}", expected.iter().map(u64::to_string).collect::<Vec<_>>().join(","));
    drop(placed);
}

/// Descriptor moves for the helper process (raw calls: it owns its whole descriptor table).
mod fds {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    /// A close-on-exec copy of `fd` at `min` or above.
    pub fn dup_above(fd: &OwnedFd, min: i32) -> OwnedFd {
        // SAFETY: F_DUPFD_CLOEXEC on a live descriptor returns a new one that we then own.
        let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) };
        assert!(new >= min, "F_DUPFD_CLOEXEC failed: {}", std::io::Error::last_os_error());
        // SAFETY: just created, owned by nobody else.
        unsafe { OwnedFd::from_raw_fd(new) }
    }

    /// A copy of `fd` at exactly `target` (whatever was there is replaced), close-on-exec or not.
    pub fn dup_to(fd: &OwnedFd, target: i32, cloexec: bool) -> OwnedFd {
        let flags = if cloexec { libc::O_CLOEXEC } else { 0 };
        // SAFETY: dup3 onto a number in this helper process's own table, which nothing else
        // in the process uses (the helper runs nothing else); we own the result.
        let new = unsafe { libc::dup3(fd.as_raw_fd(), target, flags) };
        assert_eq!(new, target, "dup3 failed: {}", std::io::Error::last_os_error());
        // SAFETY: as above.
        unsafe { OwnedFd::from_raw_fd(new) }
    }
}

/// The same plans with a program that does not exist: spawn reports ENOENT.
fn run_missing_case(case: &Case) -> Result<(), TestCaseError> {
    let out = Command::new(std::env::current_exe().unwrap())
        .env("SOCKHERD_FD_PLAN_CASE", case.encode())
        .env("SOCKHERD_FD_PLAN_OUT", "/dev/null")
        .env("SOCKHERD_FD_PLAN_MISSING", "1")
        .output()
        .unwrap();
    prop_assert!(
        out.status.success(),
        "case {:?}: {}{}",
        case,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn run_case(case: &Case) -> Result<(), TestCaseError> {
    let dir = std::env::temp_dir().join(format!("sockherd-fd-plan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let report = dir.join("report");
    let _ = std::fs::remove_file(&report);
    let out = Command::new(std::env::current_exe().unwrap())
        .env("SOCKHERD_FD_PLAN_CASE", case.encode())
        .env("SOCKHERD_FD_PLAN_OUT", &report)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    prop_assert!(out.status.success(), "helper failed for {case:?}: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    let expected: Vec<u64> = stdout
        .lines()
        .find_map(|l| l.strip_prefix("expected "))
        .unwrap_or("")
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect();
    let seen: Vec<(i32, u64, u8)> = std::fs::read_to_string(&report)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?, f.next()?.parse().ok()?))
        })
        .collect();
    let wanted: Vec<(i32, u64, u8)> = expected.iter().enumerate().map(|(i, ino)| (3 + i as i32, *ino, 0)).collect();
    prop_assert_eq!(seen, wanted, "case {:?}", case);
    Ok(())
}

fn main() {
    if let (Ok(case), Ok(out)) = (std::env::var("SOCKHERD_FD_PLAN_CASE"), std::env::var("SOCKHERD_FD_PLAN_OUT")) {
        helper(&Case::decode(&case), &out);
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        println!("fd_plan_places_exactly_the_sockets: test");
        println!("fd_plan_reports_exec_errors: test");
        return;
    }
    if !std::path::Path::new(PYTHON).exists() {
        if std::env::var("SOCKHERD_TEST_REQUIRE").as_deref() == Ok("1") {
            panic!("prerequisite missing: {PYTHON} (SOCKHERD_TEST_REQUIRE=1 turns this skip into a failure)");
        }
        eprintln!("SKIPPED: prerequisite missing: {PYTHON}");
        return;
    }
    let mut runner = TestRunner::new(Config { cases: 48, failure_persistence: None, ..Config::default() });
    let result = runner.run(&case(), |case| run_case(&case));
    let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("sockherd-fd-plan-{}", std::process::id())));
    if let Err(e) = result {
        panic!("fd plan property failed: {e}");
    }
    println!("fd_plan_places_exactly_the_sockets: 48 cases ok");
    let mut runner = TestRunner::new(Config { cases: 24, failure_persistence: None, ..Config::default() });
    if let Err(e) = runner.run(&case(), |case| run_missing_case(&case)) {
        panic!("fd plan property (exec errors) failed: {e}");
    }
    println!("fd_plan_reports_exec_errors: 24 cases ok");
}
