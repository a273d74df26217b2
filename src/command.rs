//! The app server's command line, resolved to a program and turned into an exec image: argv, the
//! environment its flavor wants, and its sockets at fds 3...

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::flavor::Flavor;
use crate::protocol::{self, FDSTORE, NOTIFY_SOCKET, WATCHDOG_PID, WATCHDOG_USEC};
use crate::socket::Socket;
use crate::sys::{self, ExecImage, Pid};

/// Why a command could not start; the binary maps these to the shell's 127 and 126.
#[derive(Debug)]
pub enum CommandError {
    NotFound(String),
    NotExecutable(String),
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandError::NotFound(m) | CommandError::NotExecutable(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for CommandError {}

/// What one start of the server needs besides the command line.
pub struct Launch<'a> {
    pub flavor: Flavor,
    pub sockets: Vec<&'a Socket>,
    pub generation: u64,
    /// The resolved working directory (a release path), if `--chdir` was given.
    pub dir: Option<PathBuf>,
    /// Whether NOTIFY_SOCKET, WATCHDOG_* and FDSTORE pass through (exec mode: the server is the
    /// service's main process) or are withheld (run mode: they are ours; a generation has no
    /// way to systemd's fd store).
    pub pass_notify: bool,
    /// Variables set on top of everything (e.g. a generation's private NOTIFY_SOCKET).
    pub extra_env: Vec<(String, OsString)>,
    /// The lower CPU priority the server starts at (a booting generation, `run` only).
    pub boot_priority: Option<sys::BootPriority>,
    /// The generation's cgroup (its `cgroup.procs`, open for writing), which the child enters
    /// before it execs ([`crate::cgroup`]); None where generations are process groups.
    pub cgroup_procs: Option<std::os::fd::BorrowedFd<'a>>,
}

/// Resolves `--chdir`: symlinks are followed now, so a generation stays pinned to the release
/// it started from even after `current` is flipped.
pub fn resolve_dir(dir: &Path) -> Result<PathBuf> {
    let resolved =
        std::fs::canonicalize(dir).with_context(|| format!("failed to resolve --chdir {}", dir.display()))?;
    if !resolved.is_dir() {
        anyhow::bail!("--chdir {} is not a directory", dir.display());
    }
    Ok(resolved)
}

/// Finds the program like execvp(3) would, but before fork: a name with a slash is a path
/// (relative to the working directory the server will have), any other name is searched in PATH.
pub fn resolve_program(program: &OsStr, dir: Option<&Path>) -> Result<PathBuf, CommandError> {
    let shown = program.to_string_lossy();
    let within = |p: &Path| match dir {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p.to_path_buf(),
    };
    if program.as_bytes().contains(&b'/') {
        let path = within(Path::new(program));
        return match check_executable(&path) {
            Ok(()) => Ok(path),
            Err(Found::Missing) => {
                Err(CommandError::NotFound(format!("command not found: {shown} ({} does not exist)", path.display())))
            }
            Err(Found::NotExecutable(why)) => {
                Err(CommandError::NotExecutable(format!("cannot execute {}: {why}", path.display())))
            }
        };
    }
    let search = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/local/bin:/usr/bin:/bin"));
    let mut not_executable = None;
    for entry in std::env::split_paths(&search) {
        let entry = if entry.as_os_str().is_empty() { PathBuf::from(".") } else { entry };
        let path = within(&entry).join(program);
        match check_executable(&path) {
            Ok(()) => return Ok(path),
            Err(Found::NotExecutable(why)) if not_executable.is_none() => not_executable = Some((path, why)),
            Err(_) => {}
        }
    }
    match not_executable {
        Some((path, why)) => Err(CommandError::NotExecutable(format!("cannot execute {}: {why}", path.display()))),
        None => Err(CommandError::NotFound(format!(
            "command not found: {shown} (searched PATH={})",
            search.to_string_lossy()
        ))),
    }
}

enum Found {
    Missing,
    NotExecutable(&'static str),
}

fn check_executable(path: &Path) -> Result<(), Found> {
    let meta = std::fs::metadata(path).map_err(|_| Found::Missing)?;
    if meta.is_dir() {
        return Err(Found::NotExecutable("it is a directory"));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(Found::NotExecutable("permission denied (not executable)"));
    }
    Ok(())
}

/// The environment of a generation: ours, minus every variable that describes sockets (and,
/// unless passed through, systemd's notify/watchdog/fd store variables), plus the flavor's
/// variables. LISTEN_PID and LISTEN_PIDFDID are written by the child itself (`ExecImage`).
pub fn environment(launch: &Launch<'_>) -> (Vec<Vec<u8>>, bool) {
    let socket_env = launch.flavor.socket_env(&launch.sockets, launch.generation);
    let mut env: Vec<Vec<u8>> = Vec::new();
    let overridden = |name: &str| {
        socket_env.vars.iter().any(|(k, _)| k == name)
            || launch.extra_env.iter().any(|(k, _)| k == name)
            || (name == "PWD" && launch.dir.is_some())
    };
    for (name, value) in std::env::vars_os() {
        // A name that is not UTF-8 is none of ours: it passes through, byte for byte.
        if let Some(name_str) = name.to_str() {
            if protocol::is_socket_convention_var(name_str) || overridden(name_str) {
                continue;
            }
            // What a re-executed supervisor was handed is its own.
            if crate::reexec::is_handover_var(name_str) {
                continue;
            }
            if !launch.pass_notify && matches!(name_str, NOTIFY_SOCKET | WATCHDOG_USEC | WATCHDOG_PID | FDSTORE) {
                continue;
            }
        }
        env.push(entry(name.as_bytes(), value.as_bytes()));
    }
    if let Some(dir) = &launch.dir {
        env.push(entry(b"PWD", dir.as_os_str().as_bytes()));
    }
    for (name, value) in &socket_env.vars {
        env.push(entry(name.as_bytes(), value.as_bytes()));
    }
    for (name, value) in &launch.extra_env {
        env.push(entry(name.as_bytes(), value.as_bytes()));
    }
    (env, socket_env.listen_pid)
}

fn entry(name: &[u8], value: &[u8]) -> Vec<u8> {
    let mut e = Vec::with_capacity(name.len() + value.len() + 1);
    e.extend_from_slice(name);
    e.push(b'=');
    e.extend_from_slice(value);
    e
}

fn image(program: &Path, argv: &[OsString], launch: &Launch<'_>) -> Result<ExecImage> {
    use std::os::fd::{AsFd, AsRawFd};
    let (env, listen_pid) = environment(launch);
    let args: Vec<&OsStr> = argv.iter().map(OsString::as_os_str).collect();
    let fds = launch.sockets.iter().map(|s| s.as_fd().as_raw_fd()).collect();
    ExecImage::new(program.as_os_str(), &args, &env, listen_pid, fds).context("failed to prepare the command line")
}

/// Puts the sockets in the mode the flavor needs ([`Flavor::needs_nonblocking_sockets`]); for
/// every other flavor they stay as they are. The mode belongs to each socket, not to a
/// descriptor: a generation still serving on it sees the change at once.
fn prepare_sockets(launch: &Launch<'_>) -> Result<()> {
    use std::os::fd::AsFd;
    if launch.flavor.needs_nonblocking_sockets() {
        for socket in &launch.sockets {
            sys::set_nonblocking(socket.as_fd())
                .with_context(|| format!("failed to make {socket} non-blocking for {}", launch.flavor))?;
        }
    }
    Ok(())
}

/// Starts the server as a child in its own process group (and its cgroup, if it has one).
/// Returns its pid.
pub fn spawn(argv: &[OsString], launch: &Launch<'_>) -> Result<Pid> {
    let program = resolve_program(&argv[0], launch.dir.as_deref())?;
    prepare_sockets(launch)?;
    let mut image = image(&program, argv, launch)?;
    if let Some(priority) = launch.boot_priority {
        image.set_boot_priority(priority);
    }
    if let Some(procs) = launch.cgroup_procs {
        image.enter_cgroup(procs);
    }
    sys::spawn(image, launch.dir.as_deref()).map_err(|e| exec_error(&program, e))
}

/// Replaces this process with the server (same pid). Returns only on failure.
pub fn exec(argv: &[OsString], launch: &Launch<'_>) -> anyhow::Error {
    let program = match resolve_program(&argv[0], launch.dir.as_deref()) {
        Ok(p) => p,
        Err(e) => return e.into(),
    };
    if let Err(e) = prepare_sockets(launch) {
        return e;
    }
    let mut image = match image(&program, argv, launch) {
        Ok(i) => i,
        Err(e) => return e,
    };
    if let Some(dir) = &launch.dir
        && let Err(e) = std::env::set_current_dir(dir)
    {
        return anyhow::Error::new(e).context(format!("failed to change directory to {}", dir.display()));
    }
    exec_error(&program, image.exec())
}

/// The interpreter named on a script's `#!` line.
fn interpreter(program: &Path) -> Option<String> {
    use std::io::Read;
    let mut head = [0u8; 256];
    let n = std::fs::File::open(program).ok()?.read(&mut head).ok()?;
    let line = head[..n].strip_prefix(b"#!")?.split(|&b| b == b'\n').next()?;
    let line = String::from_utf8_lossy(line);
    line.split_whitespace().next().map(str::to_string)
}

fn exec_error(program: &Path, err: std::io::Error) -> anyhow::Error {
    match err.raw_os_error() {
        // The file exists (checked), so ENOENT means its interpreter (#! line) does not.
        Some(libc::ENOENT) => CommandError::NotFound(match interpreter(program) {
            Some(interpreter) => format!(
                "failed to execute {}: its interpreter {interpreter} (from the #! line) does not exist",
                program.display()
            ),
            None => format!(
                "failed to execute {}: the program loader or a library it needs does not exist",
                program.display()
            ),
        })
        .into(),
        Some(libc::EACCES) | Some(libc::ENOEXEC) => {
            CommandError::NotExecutable(format!("failed to execute {}: {err}", program.display())).into()
        }
        _ => anyhow::Error::new(err).context(format!("failed to execute {}", program.display())),
    }
}
