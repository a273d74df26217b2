//! What `sockherd run --listen` does with sockets systemd passes back from its fd store (names
//! `sockherd/<name>`), outside systemd: tests/support/fake_activate.py passes them as systemd
//! would. Taken back when name and address match a spec, closed when no spec is theirs, and a
//! socket-unit socket beside them is refused unless --fallback says the --listen ones are spare.
//! (Storing itself needs systemd: tests/systemd_fdstore.rs.)
mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const PATIENCE: Duration = Duration::from_secs(20);

fn python_script(name: &str) -> PathBuf {
    repo().join("tests/support").join(name)
}

/// `fake_activate.py FDS... --set LISTEN_FDNAMES=NAMES -- sockherd run ARGS -- probe_env.py
/// REPORT serve`, without a NOTIFY_SOCKET (no store to reach: only what it is passed).
fn activated(dir: &TempDir, fds: &[&str], names: &str, args: &[&str]) -> Proc {
    let mut cmd = Command::new("python3");
    cmd.arg(python_script("fake_activate.py"));
    for fd in fds {
        cmd.args(["--fd", fd]);
    }
    cmd.args(["--set", &format!("LISTEN_FDNAMES={names}"), "--"]).arg(sockherd()).arg("run");
    cmd.args(["--ready", "exec"]).args(args).arg("--");
    cmd.arg("python3").arg(python_script("probe_env.py")).arg(dir.join("report")).arg("serve");
    for var in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "FDSTORE"] {
        cmd.env_remove(var);
    }
    Proc::spawn(cmd, dir.path(), "sockherd")
}

/// The probe's `key=value` report, once written.
fn report(proc: &mut Proc, path: &Path) -> String {
    wait_until(PATIENCE, || path.exists() || proc.try_status().is_some());
    std::fs::read_to_string(path).unwrap_or_else(|_| proc.fail("the server wrote no report"))
}

fn value<'a>(report: &'a str, key: &str) -> Option<&'a str> {
    report.lines().find_map(|l| l.strip_prefix(&format!("{key}=")))
}

/// The inode of the listening unix socket bound to `path` (from /proc/net/unix).
fn unix_inode(path: &Path) -> Option<String> {
    let path = path.to_str()?;
    std::fs::read_to_string("/proc/net/unix").ok()?.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        (cols.len() > 7 && cols[3] == "00010000" && cols[7] == path).then(|| cols[6].to_string())
    })
}

/// A stored socket whose name and address are a spec's is that spec's socket: the server gets
/// that very socket (same inode), under the spec's name, and nothing is bound anew.
#[test]
fn a_stored_socket_is_taken_back_under_its_specs_name() {
    require!("python3");
    let dir = TempDir::new("fdstore-take");
    let sock = dir.join("web.sock");
    let spec = format!("{},name=web", sock.display());
    let mut proc = activated(&dir, &[&format!("unix:{}", sock.display())], "sockherd/web", &["--listen", &spec]);
    let report = report(&mut proc, &dir.join("report"));
    // The only listening socket at that path: the one fake_activate.py made and passed.
    let inode = unix_inode(&sock);
    let stderr = proc.stderr();
    let problems: Vec<String> = [
        (value(&report, "env.LISTEN_FDNAMES") == Some("web"), "the server's LISTEN_FDNAMES should be web"),
        (value(&report, "fds") == Some("3"), "the server should get exactly fd 3"),
        (inode.is_some() && value(&report, "fd.3.inode") == inode.as_deref(), "fd 3 should be the passed socket"),
        (stderr.contains("taken back from systemd's fd store"), "sockherd should say it took it back"),
    ]
    .into_iter()
    .filter(|(ok, _)| !ok)
    .map(|(_, what)| what.to_string())
    .collect();
    if !problems.is_empty() {
        proc.fail(&format!("{} (inode {inode:?})\n--- report:\n{report}", problems.join("; ")));
    }
}

/// A stored socket at an address no spec has any more is closed, and the spec's own address is
/// bound: the server gets only the new socket.
#[test]
fn a_stored_socket_whose_spec_is_gone_is_closed_and_the_spec_bound() {
    require!("python3");
    let dir = TempDir::new("fdstore-stale");
    let old = dir.join("old.sock");
    let new = dir.join("new.sock");
    let spec = format!("{},name=web", new.display());
    let mut proc = activated(&dir, &[&format!("unix:{}", old.display())], "sockherd/web", &["--listen", &spec]);
    let report = report(&mut proc, &dir.join("report"));
    let stderr = proc.stderr();
    let ok = value(&report, "fds") == Some("3")
        && value(&report, "fd.3.address") == new.to_str()
        && stderr.contains(&format!("closing {} (stream, name sockherd/web) from systemd's fd store", old.display()))
        && stderr.contains(&format!("listening on {} (stream, name web)\n", new.display()))
        && unix_inode(&old).is_none();
    if !ok {
        proc.fail(&format!(
            "the stale {} should be closed and {} bound\n--- report:\n{report}",
            old.display(),
            new.display()
        ));
    }
}

/// A socket unit's socket and a stored one at once, without --fallback: refused with a message
/// that says what the reserved name is and both ways out; nothing is started.
#[test]
fn a_socket_unit_beside_stored_sockets_is_refused() {
    require!("python3");
    let dir = TempDir::new("fdstore-collide");
    let unit = dir.join("unit.sock");
    let mut proc = activated(&dir, &[&format!("unix:{}", unit.display()), "tcp"], "http:sockherd/web", &[]);
    let status = proc.wait_exit(PATIENCE);
    let stderr = proc.stderr();
    if status.code() != Some(1)
        || !stderr.contains("systemd passed socket-unit sockets (http) and a socket named 'sockherd/web'")
        || !stderr.contains("FileDescriptorName= begins with 'sockherd/' (rename it)")
        || !stderr.contains("systemctl clean --what=fdstore")
        || dir.join("report").exists()
    {
        proc.fail("sockherd should exit 1 naming the reserved name, and start nothing");
    }
}

/// With --fallback the socket units win as before; the stored --listen socket is closed.
#[test]
fn fallback_under_socket_units_closes_the_stored_sockets() {
    require!("python3");
    let dir = TempDir::new("fdstore-fallback");
    let unit = dir.join("unit.sock");
    let stored = dir.join("stored.sock");
    let spec = format!("{},name=web", stored.display());
    let fds = [format!("unix:{}", unit.display()), format!("unix:{}", stored.display())];
    let mut proc = activated(&dir, &[&fds[0], &fds[1]], "http:sockherd/web", &["--fallback", "--listen", &spec]);
    let report = report(&mut proc, &dir.join("report"));
    let ok = value(&report, "fds") == Some("3")
        && value(&report, "fd.3.address") == unit.to_str()
        && value(&report, "env.LISTEN_FDNAMES") == Some("http")
        && unix_inode(&stored).is_none();
    if !ok {
        proc.fail(&format!("the server should get the socket unit's socket alone\n--- report:\n{report}"));
    }
}

/// A `name=` too long to be stored under `sockherd/` (246 characters at most) is refused when
/// the fd store is in play, with the limit; without a store (no systemd here) it is bound as
/// before.
#[test]
fn a_name_too_long_for_the_store_is_refused_only_with_a_store() {
    require!("python3");
    let dir = TempDir::new("fdstore-long");
    let sock = dir.join("long.sock");
    let spec = format!("{},name={}", sock.display(), "n".repeat(247));
    let mut proc =
        activated(&dir, &[&format!("unix:{}", dir.join("stored.sock").display())], "sockherd/x", &["--listen", &spec]);
    let status = proc.wait_exit(PATIENCE);
    if status.code() != Some(1)
        || !proc.stderr().contains("name= is 247 characters long")
        || !proc.stderr().contains("at most 246")
    {
        proc.fail("a stored socket and a name too long to store: sockherd should exit 1 saying the limit");
    }
    let plain = TempDir::new("fdstore-long-plain");
    let mut cmd = sockherd_cmd(&["run", "--ready", "exec", "--listen", &spec, "--"]);
    cmd.arg("python3").arg(python_script("probe_env.py")).arg(plain.join("report")).arg("serve");
    cmd.env_remove("NOTIFY_SOCKET");
    let mut proc = Proc::spawn(cmd, plain.path(), "sockherd");
    let report = report(&mut proc, &plain.join("report"));
    if value(&report, "fd.3.address") != sock.to_str() {
        proc.fail(&format!("without a store the long name should not matter\n--- report:\n{report}"));
    }
}

/// `fake_fdstore.py --stored KIND=NAME... OPTIONS --log LOG -- sockherd run --ready exec ARGS --
/// probe_env.py REPORT serve`: systemd's fd store and notify socket played by the script, which
/// handles each message `DELAY` seconds late (systemd busy elsewhere), as systemd may.
fn with_store(dir: &TempDir, stored: &[&str], options: &[&str], args: &[&str]) -> Proc {
    let args: Vec<&str> = ["run", "--ready", "exec"].iter().chain(args).copied().collect();
    with_store_as(dir, stored, options, &args)
}

/// [`with_store`] with the whole sockherd command line before `--` in `args`.
fn with_store_as(dir: &TempDir, stored: &[&str], options: &[&str], args: &[&str]) -> Proc {
    let mut cmd = Command::new("python3");
    cmd.arg(python_script("fake_fdstore.py"));
    for s in stored {
        cmd.args(["--stored", s]);
    }
    cmd.args(options).arg("--log").arg(dir.join("store.log")).arg("--").arg(sockherd());
    cmd.args(args).arg("--");
    cmd.arg("python3").arg(python_script("probe_env.py")).arg(dir.join("report")).arg("serve");
    for var in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "FDSTORE"] {
        cmd.env_remove(var);
    }
    let mut proc = Proc::spawn(cmd, dir.path(), "sockherd");
    proc.logs.push(dir.join("store.log"));
    proc
}

/// Whether `lines` are all lines of `log`, in that order (others may come between).
fn in_order(log: &str, lines: &[&str]) -> bool {
    let mut rest = log.lines();
    lines.iter().all(|want| rest.any(|line| line == *want))
}

fn store_log(dir: &TempDir) -> String {
    std::fs::read_to_string(dir.join("store.log")).unwrap_or_default()
}

/// A stored socket renamed (same address, another name=) is removed from the store, and the
/// spec's address bound only once systemd has closed its copy: the start succeeds, and the new
/// socket is stored under the new name. Systemd handles each message 0.3 s late here.
#[test]
fn a_renamed_socket_is_bound_once_the_store_has_let_go_of_the_old_one() {
    require!("python3");
    let dir = TempDir::new("fdstore-rename");
    let addr = format!("127.0.0.1:{}", free_port());
    let stored = format!("tcp:{addr}=sockherd/http");
    let spec = format!("{addr},name=web");
    let mut proc = with_store(&dir, &[&stored], &["--delay", "0.3"], &["--listen", &spec]);
    let report = report(&mut proc, &dir.join("report"));
    let log = store_log(&dir);
    let ok = value(&report, "fd.3.address") == Some(addr.as_str())
        && value(&report, "env.LISTEN_FDNAMES") == Some("web")
        && in_order(&log, &["remove sockherd/http", "add sockherd/web"]);
    if !ok {
        proc.fail(&format!("{addr} should be bound anew under web and stored as sockherd/web\n--- report:\n{report}"));
    }
}

/// When the address is still taken after the store was asked to let go (a store that keeps what
/// it was told to remove), the error names the fd store as the likely holder and the way out.
#[test]
fn an_address_the_store_still_holds_is_named_in_the_error() {
    require!("python3");
    let dir = TempDir::new("fdstore-held");
    let addr = format!("127.0.0.1:{}", free_port());
    let stored = format!("tcp:{addr}=sockherd/http");
    let spec = format!("{addr},name=web");
    let mut proc = with_store(&dir, &[&stored], &["--keep-removed"], &["--listen", &spec]);
    let status = proc.wait_exit(PATIENCE);
    let stderr = proc.stderr();
    if status.code() != Some(1)
        || !stderr.contains(&format!("failed to bind {addr}: address in use"))
        || !stderr.contains("systemd's fd store")
        || !stderr.contains("sockherd/http")
        || !stderr.contains("systemctl clean --what=fdstore")
    {
        proc.fail("sockherd should exit 1 naming the fd store as the likely holder of the address");
    }
}

/// A stored unix socket whose file is gone (a RuntimeDirectory= emptied at the stop, the file
/// deleted) or replaced no longer answers at its path: it is removed from the store and the spec
/// bound anew, `mode=` applied to the new file, which the server listens on.
#[test]
fn a_stored_unix_socket_whose_file_is_gone_or_replaced_is_bound_anew() {
    require!("python3");
    for (tag, why, before) in [
        ("gone", "its file is gone", "rm {}"),
        (
            "replaced",
            "its path is another socket's file now",
            "rm {0} && python3 -c 'import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' {0}",
        ),
    ] {
        let dir = TempDir::new(&format!("fdstore-{tag}"));
        let sock = dir.join("web.sock");
        let stored = format!("unix:{}=sockherd/web", sock.display());
        let spec = format!("{},name=web,mode=0666", sock.display());
        let before = before.replace("{}", &sock.display().to_string()).replace("{0}", &sock.display().to_string());
        let mut proc = with_store(&dir, &[&stored], &["--before", &before], &["--listen", &spec]);
        let report = report(&mut proc, &dir.join("report"));
        let log = store_log(&dir);
        let mode = std::fs::metadata(&sock).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777);
        let inode = unix_inode(&sock);
        let ok = value(&report, "fd.3.address") == sock.to_str()
            && inode.is_some()
            && value(&report, "fd.3.inode") == inode.as_deref()
            && mode.as_ref().ok() == Some(&0o666)
            && in_order(&log, &["remove sockherd/web", "add sockherd/web"])
            && proc.stderr().contains(&format!("from systemd's fd store: {why}\n"));
        if !ok {
            proc.fail(&format!("{tag}: {} should be bound anew with mode 0666 (mode {mode:?}, inodes {inode:?})\n--- report:\n{report}", sock.display()));
        }
    }
}

/// `mode=` never reaches through a symlink put at a stored socket's path: the socket is not
/// taken back (its path is no longer a socket), the file the link points to keeps its mode, and
/// the start fails on the path that is not a socket, as a bind does.
#[test]
fn mode_never_follows_a_symlink_at_a_stored_sockets_path() {
    require!("python3");
    let dir = TempDir::new("fdstore-symlink");
    let sock = dir.join("web.sock");
    let target = dir.join("secret");
    std::fs::write(&target, "x").unwrap();
    std::fs::set_permissions(&target, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let stored = format!("unix:{}=sockherd/web", sock.display());
    let spec = format!("{},name=web,mode=0666", sock.display());
    let before = format!("rm {0} && ln -s {1} {0}", sock.display(), target.display());
    let mut proc = with_store(&dir, &[&stored], &["--before", &before], &["--listen", &spec]);
    let status = proc.wait_exit(PATIENCE);
    let mode = std::fs::metadata(&target).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777);
    if mode.as_ref().ok() != Some(&0o600)
        || status.code() != Some(1)
        || !proc.stderr().contains("from systemd's fd store: its path is no longer a socket")
        || !proc.stderr().contains("the path exists and is not a socket")
    {
        proc.fail(&format!("{} should keep mode 0600 (now {mode:?}) and sockherd exit 1", target.display()));
    }
}

/// What is stored under a `sockherd/` name but is no listening socket (the probe's pipe left by
/// a start killed during its wait, a socket that does not listen) never blocks a start: it is
/// removed from the store and closed with a warning, and the real stored socket taken back.
#[test]
fn a_stored_fd_that_is_no_listening_socket_is_dropped_not_fatal() {
    require!("python3");
    let dir = TempDir::new("fdstore-junk");
    let addr = format!("127.0.0.1:{}", free_port());
    let stored =
        ["pipe=sockherd/probe".to_string(), format!("tcp:{addr}=sockherd/http"), "unbound=sockherd/old".into()];
    let stored: Vec<&str> = stored.iter().map(String::as_str).collect();
    let spec = format!("{addr},name=http");
    let mut proc = with_store(&dir, &stored, &[], &["--listen", &spec]);
    let report = report(&mut proc, &dir.join("report"));
    let log = store_log(&dir);
    let stderr = proc.stderr();
    let ok = value(&report, "fds") == Some("3")
        && value(&report, "fd.3.address") == Some(addr.as_str())
        && stderr.contains("closing fd 3 (sockherd/probe) from systemd's fd store: a pipe, not a listening socket")
        && stderr.contains("closing fd 5 (sockherd/old) from systemd's fd store: a socket that does not listen")
        && stderr.contains("taken back from systemd's fd store")
        && log.lines().any(|l| l == "remove sockherd/probe")
        && log.lines().any(|l| l == "remove sockherd/old")
        && !log.lines().any(|l| l == "remove sockherd/http");
    if !ok {
        proc.fail(&format!(
            "the pipe and the unbound socket should be dropped, {addr} taken back\n--- report:\n{report}"
        ));
    }
}

/// `sockherd exec --listen` after a switch from `run` with the store kept: the stored socket is
/// taken back as `run` takes it (the server sees the spec's name, never the prefix) instead of
/// being mistaken for a socket unit's; without --listen nothing of the store is passed on.
#[test]
fn exec_takes_stored_sockets_back_as_run_does() {
    require!("python3");
    let dir = TempDir::new("fdstore-exec");
    let addr = format!("127.0.0.1:{}", free_port());
    let stored = format!("tcp:{addr}=sockherd/http");
    let spec = format!("{addr},name=http");
    let mut proc = with_store_as(&dir, &[&stored], &[], &["exec", "--listen", &spec]);
    let report = report(&mut proc, &dir.join("report"));
    if value(&report, "env.LISTEN_FDNAMES") != Some("http")
        || value(&report, "fd.3.address") != Some(addr.as_str())
        || !proc.stderr().contains("taken back from systemd's fd store")
    {
        proc.fail(&format!("exec should take {addr} back under the name http\n--- report:\n{report}"));
    }
    drop(proc);
    let bare = TempDir::new("fdstore-exec-bare");
    let stored = format!("tcp:127.0.0.1:{}=sockherd/http", free_port());
    let mut proc = with_store_as(&bare, &[&stored], &[], &["exec"]);
    let status = proc.wait_exit(PATIENCE);
    let stderr = proc.stderr();
    if status.code() != Some(1)
        || !stderr.contains("only sockets of the fd store were passed")
        || !stderr.contains("closing")
        || bare.join("report").exists()
        || !store_log(&bare).lines().any(|l| l == "remove sockherd/http")
    {
        proc.fail("exec without --listen should refuse the fd store's sockets, remove them, and start nothing");
    }
}
