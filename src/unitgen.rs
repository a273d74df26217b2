//! `sockherd unit`: a `.socket` + `.service` pair for one app, made from the templates in
//! `units/` (compiled in with `include_str!`, so the generator and the shipped units cannot
//! drift apart: every line of a template is kept except the few this module substitutes).
//!
//! - one socket unit per `--listen`, each with its own `FileDescriptorName=` (the spec's
//!   `name=`, else `http` for the first TCP socket, `unix` for the first unix socket, `sockN`);
//!   a single socket is `NAME.socket`, several are `NAME-<fdname>.socket`;
//! - the flavor's service template (gunicorn, unicorn, puma; generic for the others) with
//!   `ExecStart=<sockherd> run --flavor F [--ready R] [--chdir DIR] -- COMMAND`;
//! - the reload style from the target systemd's version: `Type=notify-reload` and
//!   `ExecReload=<sockherd> reload --join` (from `units/notify-reload.conf`) on systemd >= 253,
//!   else `Type=notify` and `ExecReload=<sockherd> reload`.
//!
//! With `--no-socket-units`: the service alone, whose `sockherd run --listen ...` binds the
//! sockets itself and keeps them in systemd's fd store across restarts (`FileDescriptorStoreMax=`
//! one per socket; from systemd 254 also `FileDescriptorStorePreserve=yes`, across a stop too).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::flavor::Flavor;
use crate::listen::{ListenAddr, ListenSpec};
use crate::readiness::Readiness;

const HTTP_SOCKET: &str = include_str!("../units/app-http.socket");
const UNIX_SOCKET: &str = include_str!("../units/app-unix.socket");
const NOTIFY_RELOAD: &str = include_str!("../units/notify-reload.conf");
const DELEGATE_SUBGROUP: &str = include_str!("../units/delegate-subgroup.conf");
const GENERIC_SERVICE: &str = include_str!("../units/generic/app.service");
const GUNICORN_SERVICE: &str = include_str!("../units/gunicorn/app.service");
const UNICORN_SERVICE: &str = include_str!("../units/unicorn/app.service");
const PUMA_SERVICE: &str = include_str!("../units/puma/app.service");

/// The first systemd with `Type=notify-reload`.
pub const NOTIFY_RELOAD_SINCE: u32 = 253;
/// The first systemd with `DelegateSubgroup=` (sockherd's own leaf in its delegated cgroup).
pub const DELEGATE_SUBGROUP_SINCE: u32 = 254;
/// The first systemd with `FileDescriptorStorePreserve=` (and `$FDSTORE`).
pub const FD_STORE_PRESERVE_SINCE: u32 = 254;

/// Paths the hardened sandbox hides from the service: a binary, command or directory there
/// cannot be reached by it.
const HIDDEN: [(&str, &str); 5] = [
    ("/home", "ProtectHome=yes"),
    ("/root", "ProtectHome=yes"),
    ("/run/user", "ProtectHome=yes"),
    ("/tmp", "PrivateTmp=yes (the service gets an empty /tmp of its own)"),
    ("/var/tmp", "PrivateTmp=yes (the service gets an empty /var/tmp of its own)"),
];

#[derive(Debug, Clone)]
pub struct UnitSpec {
    /// The service's name without `.service`.
    pub name: String,
    pub flavor: Flavor,
    pub listen: Vec<ListenSpec>,
    pub user: String,
    pub group: String,
    pub chdir: Option<PathBuf>,
    /// `--ready` for `sockherd run`, as given (already validated).
    pub ready: Option<String>,
    /// Paths the service may write (ReadWritePaths=).
    pub writable: Vec<PathBuf>,
    /// The sockherd binary the units run (absolute).
    pub sockherd: PathBuf,
    pub systemd_version: u32,
    pub command: Vec<String>,
    /// No socket units: `sockherd run --listen` binds the sockets and keeps them in the fd store.
    pub no_socket_units: bool,
}

/// One generated file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitFile {
    pub name: String,
    pub text: String,
}

/// Checks a service name the way systemd checks unit names, minus the suffix.
pub fn validate_name(name: &str) -> Result<String, String> {
    let name = name.strip_suffix(".service").unwrap_or(name);
    if name.is_empty() {
        return Err("empty unit name (expected e.g. app, for app.service)".into());
    }
    if name.len() > 200 {
        return Err(format!("unit name '{name}' is {} bytes long; keep it under 200", name.len()));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || "_.-".contains(*c))) {
        let hint = if c == '@' { " (template units are not generated; name one instance)" } else { "" };
        return Err(format!("'{name}' is not a unit name: {c:?} is not allowed (letters, digits, _ . - only){hint}"));
    }
    Ok(name.to_string())
}

/// `systemd 252 (252.39-1~deb12u2)` → 252.
pub fn parse_systemd_version(first_line: &str) -> Option<u32> {
    let mut words = first_line.split_whitespace();
    if words.next() != Some("systemd") {
        return None;
    }
    let digits: String = words.next()?.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The installed systemd's version, from `systemctl --version`.
pub fn installed_systemd_version() -> Result<u32> {
    let output = Command::new("systemctl").arg("--version").output().context(
        "failed to run `systemctl --version` to pick the reload style; pass --systemd-version N \
         (the version of systemd on the machine the units are for)",
    )?;
    let text = String::from_utf8_lossy(&output.stdout);
    let first = text.lines().next().unwrap_or("");
    match parse_systemd_version(first) {
        Some(version) if output.status.success() => Ok(version),
        _ => bail!(
            "cannot tell the systemd version from `systemctl --version` (it printed {first:?}); \
             pass --systemd-version N"
        ),
    }
}

/// Whether `path` is `dir` or below it.
fn under(path: &Path, dir: &str) -> bool {
    path.starts_with(dir)
}

/// Whether the units' sandbox hides `path` from the service (ProtectHome=, PrivateTmp=).
pub fn hidden(path: &Path) -> bool {
    HIDDEN.iter().any(|(dir, _)| under(path, dir))
}

/// Things that would make the units fail once installed, worth saying before they are.
pub fn warnings(spec: &UnitSpec) -> Vec<String> {
    let mut out = Vec::new();
    let mut paths: Vec<(&str, PathBuf)> = vec![("the sockherd binary", spec.sockherd.clone())];
    if let Some(dir) = &spec.chdir {
        paths.push(("--chdir", dir.clone()));
    }
    if let Some(first) = spec.command.first().filter(|c| c.starts_with('/')) {
        paths.push(("the command", PathBuf::from(first)));
    }
    for (what, path) in paths {
        if let Some((dir, why)) = HIDDEN.iter().find(|(dir, _)| under(&path, dir)) {
            let fix = if what == "the sockherd binary" {
                "install it system-wide (e.g. `install -m 0755 target/release/sockherd /usr/local/bin/`) and pass --sockherd /usr/local/bin/sockherd".to_string()
            } else {
                format!(
                    "move it (e.g. to /srv/{}), or relax {} in a drop-in",
                    spec.name,
                    why.split(' ').next().unwrap_or(why)
                )
            };
            out.push(format!(
                "{what} {} is under {dir}, which the unit's sandbox hides ({why}): the service could not reach it; {fix}",
                path.display()
            ));
        }
    }
    if spec.command.first().is_some_and(|c| !c.starts_with('/') && c.contains('/')) && spec.chdir.is_none() {
        out.push(format!(
            "the command {} is a relative path and no --chdir is given: it would be looked for in / \
             (give --chdir /srv/{}/current, or an absolute path)",
            spec.command[0], spec.name
        ));
    }
    if spec.no_socket_units {
        let runtime = format!("/run/{}", spec.name);
        for listen in &spec.listen {
            match &listen.addr {
                ListenAddr::Unix(path)
                    if !path.starts_with(&runtime) && !spec.writable.iter().any(|w| path.starts_with(w)) =>
                {
                    out.push(format!(
                        "--listen {}: without a socket unit sockherd creates the socket file itself, and the \
                         unit's sandbox (ProtectSystem=strict) lets it write only under {runtime}/ \
                         (RuntimeDirectory=) and the --writable paths: use e.g. --listen {runtime}/{}.sock",
                        path.display(),
                        spec.name
                    ));
                }
                ListenAddr::Tcp(addr) if addr.port() != 0 && addr.port() < 1024 => out.push(format!(
                    "--listen {addr}: without a socket unit sockherd binds the port itself, as user {}, and \
                     a port below 1024 needs CAP_NET_BIND_SERVICE, which the unit does not give: use a port \
                     of 1024 or more, or socket units",
                    spec.user
                )),
                _ => {}
            }
        }
    }
    if !user_exists(&spec.user) {
        out.push(format!(
            "user {} does not exist on this machine: create it before starting the service \
             (`useradd --system --user-group --no-create-home {}`), or pass --user",
            spec.user, spec.user
        ));
    }
    out
}

fn user_exists(user: &str) -> bool {
    std::fs::read_to_string("/etc/passwd")
        .map(|passwd| passwd.lines().any(|l| l.split(':').next() == Some(user)))
        .unwrap_or(true)
}

/// The socket units' FileDescriptorName=s: the spec's `name=`, else `http`/`unix`/`sockN`.
fn fd_names(listen: &[ListenSpec]) -> Result<Vec<String>> {
    let mut names: Vec<String> = Vec::new();
    let explicit: Vec<&str> = listen.iter().filter_map(|s| s.name.as_deref()).collect();
    for (i, spec) in listen.iter().enumerate() {
        let name = match &spec.name {
            Some(name) => name.clone(),
            None => {
                let preferred = match spec.addr {
                    ListenAddr::Tcp(_) => "http",
                    ListenAddr::Unix(_) | ListenAddr::Abstract(_) => "unix",
                };
                if names.iter().any(|n| n == preferred) || explicit.contains(&preferred) {
                    format!("sock{}", i + 1)
                } else {
                    preferred.to_string()
                }
            }
        };
        if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || "_.-".contains(*c))) {
            bail!(
                "invalid --listen '{}': name={name} becomes part of a socket unit's file name, where {c:?} \
                 is not allowed; use letters, digits, _ . - (e.g. name=http)",
                spec.addr
            );
        }
        if names.contains(&name) {
            bail!(
                "two --listen sockets are named '{name}': each socket unit needs its own FileDescriptorName=; \
                 give one of them another name=, e.g. '{},name=admin'",
                spec.addr
            );
        }
        names.push(name);
    }
    Ok(names)
}

/// systemd's quoting for one word of ExecStart=: `%` and `$` doubled (specifiers and variable
/// expansion), double quotes around words with blanks, quotes or backslashes.
pub fn exec_quote(word: &str) -> String {
    let escaped = word.replace('%', "%%").replace('$', "$$");
    if escaped.is_empty() {
        return "\"\"".to_string();
    }
    if escaped == ";" {
        return "\\;".to_string();
    }
    if !escaped.chars().any(|c| c.is_whitespace() || c.is_control() || "\"'\\".contains(c)) {
        return escaped;
    }
    let mut out = String::from("\"");
    for c in escaped.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A path in a unit setting (no quoting there; `%` is still a specifier).
fn unit_path(path: &Path) -> Result<String> {
    Ok(path_text(path)?.replace('%', "%%"))
}

/// A path as a unit can name it: UTF-8, without blanks or control characters; not escaped
/// (exec_quote escapes a word of a command line, unit_path a setting's value).
fn path_text(path: &Path) -> Result<&str> {
    let text = path.to_str().with_context(|| format!("{} is not UTF-8; a unit file cannot name it", path.display()))?;
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("'{text}' contains blanks or control characters; a unit setting cannot name it (rename the path)");
    }
    Ok(text)
}

/// Splits a template into its leading comment block and the rest.
fn body(template: &str) -> &str {
    let start = template.find("\n[").map(|i| i + 1).unwrap_or(0);
    &template[start..]
}

/// The `Key=` lines of a drop-in section, in order.
fn settings<'a>(text: &'a str, key: &str) -> Vec<&'a str> {
    text.lines().filter_map(|l| l.strip_prefix(key)?.strip_prefix('=')).collect()
}

pub fn generate(spec: &UnitSpec) -> Result<Vec<UnitFile>> {
    // Every value lands in a `Key=value` line: check what the command line checks, here too.
    if validate_name(&spec.name).ok().as_deref() != Some(spec.name.as_str()) {
        bail!("invalid NAME '{}': expected letters, digits, _ . - (e.g. app)", spec.name);
    }
    for (what, value) in [("--user", &spec.user), ("--group", &spec.group)] {
        if value.is_empty() || value.chars().any(|c| !(c.is_ascii_alphanumeric() || "_.-".contains(c))) {
            bail!("invalid {what} '{value}': expected a user or group name (letters, digits, _ . -)");
        }
    }
    if spec.listen.is_empty() {
        bail!(
            "no --listen given: a socket unit needs an address (e.g. --listen 127.0.0.1:8080 or --listen /run/{}.sock)",
            spec.name
        );
    }
    if spec.command.is_empty() {
        bail!("no command given after `--` (e.g. -- /srv/{}/shared/venv/bin/python -m gunicorn app:app)", spec.name);
    }
    if !spec.sockherd.is_absolute() {
        bail!(
            "--sockherd {} is not an absolute path; systemd needs one (e.g. /usr/bin/sockherd)",
            spec.sockherd.display()
        );
    }
    if spec.no_socket_units {
        return Ok(vec![UnitFile { name: format!("{}.service", spec.name), text: service_unit(spec, &[])? }]);
    }
    let names = fd_names(&spec.listen)?;
    let socket_units: Vec<String> = if spec.listen.len() == 1 {
        vec![format!("{}.socket", spec.name)]
    } else {
        names.iter().map(|n| format!("{}-{n}.socket", spec.name)).collect()
    };
    let mut files = Vec::new();
    for ((listen, fd_name), unit) in spec.listen.iter().zip(&names).zip(&socket_units) {
        files.push(UnitFile { name: unit.clone(), text: socket_unit(spec, listen, fd_name)? });
    }
    files.push(UnitFile { name: format!("{}.service", spec.name), text: service_unit(spec, &socket_units)? });
    Ok(files)
}

fn socket_unit(spec: &UnitSpec, listen: &ListenSpec, fd_name: &str) -> Result<String> {
    let (template, template_name) = match listen.addr {
        ListenAddr::Tcp(_) => (HTTP_SOCKET, "units/app-http.socket"),
        ListenAddr::Unix(_) | ListenAddr::Abstract(_) => (UNIX_SOCKET, "units/app-unix.socket"),
    };
    let address = match &listen.addr {
        ListenAddr::Tcp(addr) => addr.to_string(),
        ListenAddr::Unix(path) => unit_path(path)?,
        ListenAddr::Abstract(name) => format!("@{}", name.replace('%', "%%")),
    };
    let mut out = format!(
        "# {name}: listening socket '{fd_name}' ({address}). systemd holds it from boot to shutdown:\n\
         # while {name}.service restarts or reloads, connections queue in its backlog.\n\
         # Generated by `sockherd unit` from {template_name}.\n",
        name = spec.name
    );
    let file = matches!(listen.addr, ListenAddr::Unix(_));
    for line in body(template).lines() {
        let (key, _) = line.split_once('=').unwrap_or((line, ""));
        let line = match key {
            "Description" => format!("Description={}: {fd_name} listening socket", spec.name),
            "ListenStream" => format!("ListenStream={address}"),
            "FileDescriptorName" => format!("FileDescriptorName={fd_name}"),
            "Service" => format!("Service={}.service", spec.name),
            "Backlog" => format!("Backlog={}", listen.backlog),
            // An abstract socket has no file to own.
            "SocketGroup" if !file => continue,
            "SocketMode" if !file => continue,
            "SocketGroup" => format!("SocketGroup={}", spec.group),
            "SocketMode" => format!("SocketMode={:04o}", listen.mode.unwrap_or(0o660)),
            _ => line.to_string(),
        };
        out.push_str(&line);
        out.push('\n');
    }
    Ok(out)
}

fn service_unit(spec: &UnitSpec, socket_units: &[String]) -> Result<String> {
    let (template, template_name) = match spec.flavor {
        Flavor::Gunicorn => (GUNICORN_SERVICE, "units/gunicorn/app.service"),
        Flavor::Unicorn => (UNICORN_SERVICE, "units/unicorn/app.service"),
        Flavor::Puma => (PUMA_SERVICE, "units/puma/app.service"),
        _ => (GENERIC_SERVICE, "units/generic/app.service"),
    };
    // A word of ExecStart=/ExecReload=: exec_quote escapes `%` and `$` itself.
    let bin = exec_quote(path_text(&spec.sockherd)?);
    let notify_reload = spec.systemd_version >= NOTIFY_RELOAD_SINCE;

    let mut exec = vec![bin.clone(), "run".into(), "--flavor".into(), spec.flavor.name().into()];
    if let Some(ready) = &spec.ready {
        exec.extend(["--ready".into(), exec_quote(ready)]);
    }
    if let Some(dir) = &spec.chdir {
        exec.extend(["--chdir".into(), exec_quote(path_text(dir)?)]);
    }
    if spec.no_socket_units {
        for listen in &spec.listen {
            exec.extend(["--listen".into(), exec_quote(&listen.to_string())]);
        }
    }
    exec.push("--".into());
    exec.extend(spec.command.iter().map(|w| exec_quote(w)));

    // The reload style: the notify-reload drop-in's settings, or the template's own.
    let (service_type, exec_reload) = if notify_reload {
        let service_type = settings(NOTIFY_RELOAD, "Type").last().copied().unwrap_or("notify-reload").to_string();
        let reload = settings(NOTIFY_RELOAD, "ExecReload").into_iter().rfind(|v| !v.is_empty()).unwrap_or_default();
        (service_type, reload.replacen("/usr/bin/sockherd", &bin, 1))
    } else {
        let reload = settings(template, "ExecReload").first().copied().unwrap_or("/usr/bin/sockherd reload");
        ("notify".to_string(), reload.replacen("/usr/bin/sockherd", &bin, 1))
    };

    let mut out = format!(
        "# {name}.service: {flavor} under sockherd, with zero-downtime reloads.\n\
         #\n\
         # sockherd is the main process for the life of the service. `systemctl reload {name}` starts\n\
         # a new generation of the server{from}, waits until it serves, then drains\n\
         # the old one; if the new one fails, the reload fails and the old one keeps serving.\n\
         # Reload style for systemd {version}: {style}.\n\
         # Generated by `sockherd unit` from {template_name}.\n\
         {sockets_comment}\
         # Install: systemctl daemon-reload && systemctl enable --now {sockets}\n",
        name = spec.name,
        flavor = spec.flavor.name(),
        from = match &spec.chdir {
            Some(dir) => format!(" from what {} points to now", dir.display()),
            None => String::new(),
        },
        version = spec.systemd_version,
        style = if notify_reload {
            "Type=notify-reload, ExecReload=sockherd reload --join"
        } else {
            "Type=notify, ExecReload=sockherd reload (blocks)"
        },
        sockets_comment = if spec.no_socket_units {
            format!(
                "# No socket units: sockherd binds --listen itself and keeps the sockets in systemd's fd store,\n\
                 # so that connections queue while the service restarts ({}).\n",
                if spec.systemd_version >= FD_STORE_PRESERVE_SINCE {
                    "and, with FileDescriptorStorePreserve=yes, while it is stopped"
                } else {
                    "systemd 252 empties the store when the service stops"
                }
            )
        } else {
            String::new()
        },
        sockets = if spec.no_socket_units { format!("{}.service", spec.name) } else { socket_units.join(" ") },
    );
    let writable: Vec<String> = spec.writable.iter().map(|p| unit_path(p)).collect::<Result<_>>()?;
    let mut seen_type = false;
    for line in body(template).lines() {
        let (key, value) = line.split_once('=').unwrap_or((line, ""));
        let line = match key {
            "Description" => format!("Description={} ({}, reloads by sockherd)", spec.name, spec.flavor.name()),
            "Requires" if spec.no_socket_units => continue,
            "Requires" => format!("Requires={}", socket_units.join(" ")),
            "After" if spec.no_socket_units => "After=network.target".into(),
            "After" => format!("After={} network.target", socket_units.join(" ")),
            // The sockets sockherd binds stay in systemd's fd store across restarts.
            "Sockets" if spec.no_socket_units => {
                let mut lines = format!(
                    "# One fd store slot per --listen socket: they survive `systemctl restart`.\n\
                     FileDescriptorStoreMax={}",
                    spec.listen.len()
                );
                if spec.systemd_version >= FD_STORE_PRESERVE_SINCE {
                    lines.push_str("\nFileDescriptorStorePreserve=yes");
                }
                lines
            }
            "Sockets" => format!("Sockets={}", socket_units.join(" ")),
            "Type" => {
                seen_type = true;
                format!("Type={service_type}")
            }
            "ExecStart" => format!("ExecStart={}", exec.join(" ")),
            "ExecReload" => format!("ExecReload={exec_reload}"),
            // systemd starts sockherd in its leaf where it can (units/delegate-subgroup.conf).
            "Delegate" if spec.systemd_version >= DELEGATE_SUBGROUP_SINCE => {
                let subgroup = settings(DELEGATE_SUBGROUP, "DelegateSubgroup").last().copied().unwrap_or("supervisor");
                format!("{line}\nDelegateSubgroup={subgroup}")
            }
            "User" => format!("User={}", spec.user),
            "Group" => format!("Group={}", spec.group),
            // A unix socket file in it must outlive a restart as its socket does in the store.
            "RuntimeDirectory" if spec.no_socket_units => format!(
                "RuntimeDirectory={}\nRuntimeDirectoryPreserve={}",
                spec.name,
                if spec.systemd_version >= FD_STORE_PRESERVE_SINCE { "yes" } else { "restart" }
            ),
            "RuntimeDirectory" => format!("RuntimeDirectory={}", spec.name),
            // Where sockherd itself runs: the parent of --chdir, never inside a release (a
            // release is deleted some day; sockherd lives longer).
            "WorkingDirectory" => match spec.chdir.as_deref().and_then(Path::parent) {
                Some(parent) => format!("WorkingDirectory={}", unit_path(parent)?),
                None => continue,
            },
            // The service's own cgroup (`%n` names the unit), whatever --writable says.
            "ReadWritePaths" if value.starts_with("-/sys/fs/cgroup/") => line.to_string(),
            "ReadWritePaths" if writable.is_empty() => continue,
            "ReadWritePaths" => format!("ReadWritePaths={}", writable.join(" ")),
            // The generic template describes the systemd dialect with its own socket names.
            _ if line.starts_with("# The server gets LISTEN_FDS") => format!(
                "# The server gets the sockets at fds 3.. in the {} dialect; readiness: {}.",
                spec.flavor.name(),
                comment_text(&spec.ready.clone().unwrap_or_else(|| Readiness::default_for(spec.flavor).to_string()))
            ),
            _ if line.starts_with("# ready when it sends READY=1") => continue,
            _ if line.starts_with("# Blocks until the new generation serves") && notify_reload => {
                "# systemd sends SIGHUP; this waits for the handoff it started: non-zero if it rolled back.".into()
            }
            _ if line.starts_with("# Sandbox.") => {
                if writable.is_empty() {
                    "# Sandbox. The server may write only to its private /tmp (sockherd unit --writable DIR adds more)."
                        .into()
                } else {
                    format!("# Sandbox. The server may write only under {} and its private /tmp.", writable.join(" "))
                }
            }
            _ => line.to_string(),
        };
        out.push_str(&line);
        out.push('\n');
    }
    if !seen_type {
        bail!("internal error: {template_name} has no Type= line");
    }
    Ok(out)
}

/// Writes the files into `dir`, refusing to replace any unless `force`.
pub fn write(files: &[UnitFile], dir: &Path, force: bool) -> Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(dir).with_context(|| {
        format!("--output {}: no such directory (create it, or use /etc/systemd/system)", dir.display())
    })?;
    if !meta.is_dir() {
        bail!(
            "--output {} is not a directory (give the directory for the unit files, e.g. /etc/systemd/system)",
            dir.display()
        );
    }
    let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(&f.name)).collect();
    let existing: Vec<String> = paths.iter().filter(|p| p.exists()).map(|p| p.display().to_string()).collect();
    if !existing.is_empty() && !force {
        bail!(
            "refusing to overwrite {}: pass --force to replace {}, or choose another --output directory",
            existing.join(", "),
            if existing.len() == 1 { "it" } else { "them" }
        );
    }
    for (file, path) in files.iter().zip(&paths) {
        // Write beside it, then rename: systemd never reads half a unit.
        let tmp = dir.join(format!(".{}.sockherd-tmp", file.name));
        std::fs::write(&tmp, &file.text).with_context(|| format!("failed to write {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("failed to rename {} to {}", tmp.display(), path.display()))?;
    }
    Ok(paths)
}

/// All files as one text: each preceded by `# FILE: <name>`.
pub fn render(files: &[UnitFile]) -> String {
    let mut out = String::new();
    for (i, file) in files.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let _ = writeln!(out, "# FILE: {}", file.name);
        out.push_str(&file.text);
    }
    out
}

/// Text for a `#` comment line: a control character (a newline would end the comment and start
/// a line systemd reads) is written as its escape, `\n`.
fn comment_text(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The template line that keeps the service's delegated cgroup writable under
    /// ProtectControlGroups=yes; `%n` makes it the generated unit's own.
    const CGROUP_WRITABLE: &str =
        "ReadWritePaths=-/sys/fs/cgroup/system.slice/%n -/sys/fs/cgroup/unified/system.slice/%n";

    fn spec(listen: &[&str], version: u32) -> UnitSpec {
        UnitSpec {
            name: "shop".into(),
            flavor: Flavor::Gunicorn,
            listen: listen.iter().map(|s| s.parse().unwrap()).collect(),
            user: "shop".into(),
            group: "shop".into(),
            chdir: Some("/srv/shop/current".into()),
            ready: None,
            writable: vec![],
            sockherd: "/usr/bin/sockherd".into(),
            systemd_version: version,
            command: vec!["/srv/shop/venv/bin/python".into(), "-m".into(), "gunicorn".into(), "app:app".into()],
            no_socket_units: false,
        }
    }

    /// A `--ready` with a newline (a cmd: check may hold one) stays inside its comment line.
    #[test]
    fn control_characters_in_the_readiness_comment_are_escaped() {
        let mut s = spec(&["127.0.0.1:8000"], 252);
        s.flavor = Flavor::Systemd;
        s.ready = Some("cmd:é\n\"x".into());
        let files = generate(&s).unwrap();
        let service = file(&files, "shop.service");
        assert!(
            service.contains(
                "\n# The server gets the sockets at fds 3.. in the systemd dialect; readiness: cmd:é\\n\"x.\n"
            ),
            "{service}"
        );
    }

    fn file<'a>(files: &'a [UnitFile], name: &str) -> &'a str {
        &files.iter().find(|f| f.name == name).unwrap_or_else(|| panic!("no {name} in {files:?}")).text
    }

    #[test]
    fn every_template_has_the_lines_we_substitute() {
        for template in [GENERIC_SERVICE, GUNICORN_SERVICE, UNICORN_SERVICE, PUMA_SERVICE] {
            for key in
                ["Description", "Requires", "After", "Type", "ExecStart", "ExecReload", "Sockets", "User", "Group"]
            {
                assert_eq!(settings(template, key).len(), 1, "{key} in {template}");
            }
        }
        for template in [HTTP_SOCKET, UNIX_SOCKET] {
            for key in ["ListenStream", "FileDescriptorName", "Service"] {
                assert_eq!(settings(template, key).len(), 1, "{key} in {template}");
            }
        }
        assert_eq!(settings(NOTIFY_RELOAD, "Type"), ["notify-reload"]);
    }

    /// A `%` in a path of ExecStart= or ExecReload= is doubled once (systemd reads `%%` as `%`),
    /// not twice (the fuzz target unit_inputs checks every ExecStart= the same way).
    #[test]
    fn percent_in_exec_paths_is_escaped_once() {
        for version in [252, 254] {
            let mut s = spec(&["127.0.0.1:8000"], version);
            s.sockherd = "/opt/100%/sockherd".into();
            s.chdir = Some("/srv/a%b/current".into());
            let files = generate(&s).unwrap();
            let service = file(&files, "shop.service");
            let exec = settings(service, "ExecStart")[0];
            assert!(exec.starts_with("/opt/100%%/sockherd run "), "{exec}");
            assert!(exec.contains(" --chdir /srv/a%%b/current "), "{exec}");
            let reload = settings(service, "ExecReload").into_iter().rfind(|v| !v.is_empty()).unwrap();
            assert!(reload.starts_with("/opt/100%%/sockherd reload"), "{reload}");
            assert!(service.contains("\nWorkingDirectory=/srv/a%%b\n"), "{service}");
        }
    }

    /// generate() itself refuses what a unit cannot carry, whoever calls it.
    #[test]
    fn generate_refuses_names_users_and_groups_a_unit_cannot_carry() {
        for (what, edit) in [
            ("NAME", (|s: &mut UnitSpec| s.name = "a b".into()) as fn(&mut UnitSpec)),
            ("NAME", |s| s.name = "shop\nExecStartPre=/bin/evil".into()),
            ("--user", |s| s.user = String::new()),
            ("--user", |s| s.user = "a b".into()),
            ("--group", |s| s.group = "x\ny".into()),
        ] {
            let mut s = spec(&["127.0.0.1:8000"], 252);
            edit(&mut s);
            let err = generate(&s).unwrap_err().to_string();
            assert!(err.starts_with(&format!("invalid {what} ")), "{err}");
        }
    }

    #[test]
    fn one_socket_is_name_dot_socket() {
        let files = generate(&spec(&["127.0.0.1:8000"], 252)).unwrap();
        let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["shop.socket", "shop.service"]);
        let socket = file(&files, "shop.socket");
        assert!(socket.contains("\nListenStream=127.0.0.1:8000\n"), "{socket}");
        assert!(socket.contains("\nDescription=shop: http listening socket\n"), "{socket}");
        let backlog = generate(&spec(&["127.0.0.1:8000,backlog=64"], 252)).unwrap();
        assert!(file(&backlog, "shop.socket").contains("\nBacklog=64\n"));
        assert!(socket.contains("\nFileDescriptorName=http\n"));
        assert!(socket.contains("\nService=shop.service\n"));
        assert!(socket.contains("\nWantedBy=sockets.target\n"));
        let service = file(&files, "shop.service");
        assert!(service.contains("\nSockets=shop.socket\n"), "{service}");
        assert!(service.contains("\nRequires=shop.socket\n"));
        assert!(service.contains("\nAfter=shop.socket network.target\n"), "{service}");
        assert!(service.contains("\nDescription=shop (gunicorn, reloads by sockherd)\n"), "{service}");
        assert!(service.contains("\nType=notify\n"));
        assert!(service.contains("\nExecReload=/usr/bin/sockherd reload\n"));
        assert!(service.contains(
            "\nExecStart=/usr/bin/sockherd run --flavor gunicorn --chdir /srv/shop/current -- /srv/shop/venv/bin/python -m gunicorn app:app\n"
        ));
        assert!(service.contains("\nWorkingDirectory=/srv/shop\n"));
        assert!(service.contains("\nRuntimeDirectory=shop\n"));
        // No --writable: only the service's own cgroup is writable.
        assert_eq!(service.matches("ReadWritePaths=").count(), 1, "{service}");
        assert!(service.contains(&format!("\n{CGROUP_WRITABLE}\n")), "{service}");
        assert!(!service.contains("/srv/app"), "{service}");
        // The hardening block is kept verbatim.
        for line in GUNICORN_SERVICE.lines().filter(|l| l.starts_with("Protect") || l.starts_with("SystemCall")) {
            assert!(service.contains(&format!("\n{line}\n")), "{line}");
        }
    }

    #[test]
    fn each_flavor_gets_its_template() {
        for (flavor, template, kept) in [
            (Flavor::Gunicorn, "units/gunicorn/app.service", "# gunicorn's own READY=1 comes before"),
            (Flavor::Unicorn, "units/unicorn/app.service", "# unicorn has no sd_notify"),
            (Flavor::Puma, "units/puma/app.service", "# puma (with ruby-sd-notify) sends READY=1"),
            (Flavor::Systemd, "units/generic/app.service", "in the systemd dialect; readiness: notify."),
            (Flavor::Nginx, "units/generic/app.service", "in the nginx dialect; readiness: workers."),
        ] {
            let mut s = spec(&["127.0.0.1:8000"], 252);
            s.flavor = flavor;
            let service = generate(&s).unwrap().pop().unwrap().text;
            assert!(service.contains(&format!("# Generated by `sockherd unit` from {template}.\n")), "{flavor}");
            assert!(service.contains(kept), "{flavor}: {kept:?} in\n{service}");
            assert!(service.contains(&format!("\nExecStart=/usr/bin/sockherd run --flavor {flavor} ")), "{flavor}");
        }
    }

    #[test]
    fn writable_paths_and_the_comments_that_follow_the_spec() {
        let mut s = spec(&["127.0.0.1:8000"], 252);
        s.writable = vec!["/srv/shop/shared".into(), "/var/lib/shop".into()];
        let service = generate(&s).unwrap().pop().unwrap().text;
        assert!(service.contains("\nReadWritePaths=/srv/shop/shared /var/lib/shop\n"), "{service}");
        assert!(service.contains(&format!("\n{CGROUP_WRITABLE}\n")), "{service}");
        assert_eq!(service.matches("ReadWritePaths=").count(), 2, "{service}");
        assert!(service.contains(
            "# Sandbox. The server may write only under /srv/shop/shared /var/lib/shop and its private /tmp."
        ));
        assert!(service.contains("# Blocks until the new generation serves"), "252 keeps the ExecReload= comment");
        let service = generate(&spec(&["127.0.0.1:8000"], 253)).unwrap().pop().unwrap().text;
        assert!(!service.contains("# Blocks until the new generation serves"), "{service}");
        assert!(
            service
                .contains("# systemd sends SIGHUP; this waits for the handoff it started: non-zero if it rolled back.")
        );
        assert!(service.contains(
            "# Sandbox. The server may write only to its private /tmp (sockherd unit --writable DIR adds more)."
        ));
        let mut generic = spec(&["127.0.0.1:8000"], 252);
        generic.flavor = Flavor::Systemd;
        let service = generate(&generic).unwrap().pop().unwrap().text;
        assert!(!service.contains("ready when it sends READY=1"), "{service}");
        assert!(!service.contains("# The server gets LISTEN_FDS"), "{service}");
    }

    #[test]
    fn notify_reload_from_253() {
        let service = generate(&spec(&["127.0.0.1:8000"], 253)).unwrap().pop().unwrap().text;
        assert!(service.contains("\nType=notify-reload\n"), "{service}");
        assert!(service.contains("\nExecReload=/usr/bin/sockherd reload --join\n"));
        assert!(!service.contains("\nType=notify\n"));
    }

    #[test]
    fn delegate_subgroup_from_254() {
        for (version, subgroup) in [(252, false), (253, false), (254, true), (262, true)] {
            let service = generate(&spec(&["127.0.0.1:8000"], version)).unwrap().pop().unwrap().text;
            assert!(service.contains("\nDelegate=yes\n"), "{version}: {service}");
            assert_eq!(
                service.contains("\nDelegate=yes\nDelegateSubgroup=supervisor\n"),
                subgroup,
                "{version}: {service}"
            );
            assert_eq!(service.matches("DelegateSubgroup=").count(), usize::from(subgroup), "{version}: {service}");
        }
    }

    #[test]
    fn no_socket_units_is_one_service_that_keeps_its_sockets_in_the_fd_store() {
        for (version, preserve) in [(252, false), (253, false), (254, true), (262, true)] {
            let mut s =
                spec(&["127.0.0.1:8000,name=http", "/run/shop/shop.sock,mode=0660", "[::1]:8001,backlog=64"], version);
            s.no_socket_units = true;
            let files = generate(&s).unwrap();
            let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
            assert_eq!(names, ["shop.service"], "{version}");
            let service = file(&files, "shop.service");
            assert!(
                service.contains(
                    "\nExecStart=/usr/bin/sockherd run --flavor gunicorn --chdir /srv/shop/current \
                 --listen 127.0.0.1:8000,name=http --listen /run/shop/shop.sock,mode=0660 \
                 --listen [::1]:8001,backlog=64 -- /srv/shop/venv/bin/python -m gunicorn app:app\n"
                ),
                "{version}: {service}"
            );
            assert!(service.contains("\nFileDescriptorStoreMax=3\n"), "{version}: {service}");
            assert_eq!(service.contains("\nFileDescriptorStorePreserve=yes\n"), preserve, "{version}: {service}");
            assert_eq!(service.matches("\nFileDescriptorStorePreserve=").count(), usize::from(preserve), "{version}");
            let runtime = if preserve { "yes" } else { "restart" };
            assert!(
                service.contains(&format!("\nRuntimeDirectory=shop\nRuntimeDirectoryPreserve={runtime}\n")),
                "{version}: {service}"
            );
            assert!(service.contains("\nAfter=network.target\n"), "{version}: {service}");
            for gone in ["Requires=", "Sockets=", ".socket"] {
                assert!(!service.contains(gone), "{version}: {gone} in {service}");
            }
            assert!(service.contains("# Install: systemctl daemon-reload && systemctl enable --now shop.service\n"));
            // The rest of the template is kept, in its order.
            assert!(service.contains("\nDelegate=yes\n") && service.contains("\nProtectSystem=strict\n"));
        }
        // With socket units (the default), none of it.
        let service = generate(&spec(&["127.0.0.1:8000"], 254)).unwrap().pop().unwrap().text;
        for absent in ["FileDescriptorStore", "RuntimeDirectoryPreserve", "--listen"] {
            assert!(!service.contains(absent), "{absent} in {service}");
        }
    }

    #[test]
    fn no_socket_units_warns_about_sockets_the_sandbox_cannot_bind() {
        let warned = |listen: &[&str], writable: &[&str], no_socket_units: bool| {
            let mut s = spec(listen, 254);
            s.user = "root".into();
            s.no_socket_units = no_socket_units;
            s.writable = writable.iter().map(PathBuf::from).collect();
            warnings(&s).join("\n")
        };
        let outside = warned(&["/run/shop.sock"], &[], true);
        assert!(
            outside
                .starts_with("--listen /run/shop.sock: without a socket unit sockherd creates the socket file itself"),
            "{outside}"
        );
        assert!(outside.contains("use e.g. --listen /run/shop/shop.sock"), "{outside}");
        let low = warned(&["127.0.0.1:80"], &[], true);
        assert!(
            low.starts_with(
                "--listen 127.0.0.1:80: without a socket unit sockherd binds the port itself, as user root"
            ),
            "{low}"
        );
        assert_eq!(warned(&["/run/shop/a.sock", "127.0.0.1:1024", "127.0.0.1:0", "@abs"], &[], true), "");
        assert_eq!(warned(&["/srv/shop/shared/a.sock"], &["/srv/shop/shared"], true), "");
        // Socket units bind them as root, wherever they are.
        assert_eq!(warned(&["/run/shop.sock", "127.0.0.1:80"], &[], false), "");
    }

    #[test]
    fn several_sockets_are_named_by_fd_name() {
        let files =
            generate(&spec(&["127.0.0.1:8000", "/run/shop.sock,mode=0600", "[::1]:8001", "@shop,name=abs"], 252))
                .unwrap();
        let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            ["shop-http.socket", "shop-unix.socket", "shop-sock3.socket", "shop-abs.socket", "shop.service"]
        );
        let unix = file(&files, "shop-unix.socket");
        assert!(unix.contains("\nListenStream=/run/shop.sock\n") && unix.contains("\nSocketMode=0600\n"), "{unix}");
        assert!(unix.contains("\nSocketGroup=shop\n"));
        assert!(file(&files, "shop-sock3.socket").contains("\nListenStream=[::1]:8001\n"));
        assert!(file(&files, "shop-sock3.socket").contains("\nFileDescriptorName=sock3\n"));
        assert!(file(&files, "shop-abs.socket").contains("\nFileDescriptorName=abs\n"));
        let abs = file(&files, "shop-abs.socket");
        assert!(abs.contains("\nListenStream=@shop\n") && !abs.contains("SocketMode") && !abs.contains("SocketGroup"));
        let service = file(&files, "shop.service");
        assert!(service.contains("\nSockets=shop-http.socket shop-unix.socket shop-sock3.socket shop-abs.socket\n"));
    }

    #[test]
    fn refuses_duplicate_and_unusable_names() {
        let err = generate(&spec(&["127.0.0.1:1,name=a", "127.0.0.1:2,name=a"], 252)).unwrap_err();
        assert!(err.to_string().contains("two --listen sockets are named 'a'"), "{err}");
        let err = generate(&spec(&["127.0.0.1:1,name=a/b"], 252)).unwrap_err();
        assert!(err.to_string().contains("file name"), "{err}");
    }

    #[test]
    fn quotes_exec_words() {
        assert_eq!(exec_quote("plain"), "plain");
        assert_eq!(exec_quote("two words"), "\"two words\"");
        assert_eq!(exec_quote("100%"), "100%%");
        assert_eq!(exec_quote("$HOME"), "$$HOME");
        assert_eq!(exec_quote("say \"hi\"\\"), "\"say \\\"hi\\\"\\\\\"");
        assert_eq!(exec_quote(""), "\"\"");
        assert_eq!(exec_quote(";"), "\\;");
        assert_eq!(exec_quote("it's"), "\"it's\"");
        assert_eq!(exec_quote("a\tb"), "\"a\\tb\"");
        assert_eq!(exec_quote("a\nb"), "\"a\\nb\"");
        assert_eq!(exec_quote("a\u{1}b"), "\"a\\x01b\"");
    }

    #[test]
    fn unit_paths() {
        assert_eq!(unit_path(Path::new("/srv/100%")).unwrap(), "/srv/100%%");
        for bad in ["/srv/my app", "/srv/a\tb", "/srv/a\u{1}b"] {
            let err = unit_path(Path::new(bad)).unwrap_err().to_string();
            assert!(err.contains("contains blanks or control characters"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn printed_files_are_separated_by_a_blank_line() {
        let files = [
            UnitFile { name: "a.socket".into(), text: "A\n".into() },
            UnitFile { name: "a.service".into(), text: "B\n".into() },
        ];
        assert_eq!(render(&files), "# FILE: a.socket\nA\n\n# FILE: a.service\nB\n");
    }

    #[test]
    fn template_body_starts_at_the_first_section() {
        assert_eq!(body("# comment\n# more\n[Unit]\nA=1\n"), "[Unit]\nA=1\n");
        assert_eq!(body("[Unit]\nA=1\n"), "[Unit]\nA=1\n");
    }

    #[test]
    fn versions() {
        assert_eq!(parse_systemd_version("systemd 252 (252.39-1~deb12u2)"), Some(252));
        assert_eq!(parse_systemd_version("systemd 254 (254.5-1~bpo12+3)"), Some(254));
        assert_eq!(parse_systemd_version("something else"), None);
    }

    #[test]
    fn names() {
        assert_eq!(validate_name("shop.service").unwrap(), "shop");
        assert!(validate_name("shop@1").unwrap_err().contains("template"));
        assert!(validate_name("a b").is_err());
        let longest = "a".repeat(200);
        assert_eq!(validate_name(&longest).unwrap(), longest);
        assert_eq!(
            validate_name(&"a".repeat(201)).unwrap_err(),
            format!("unit name '{}' is 201 bytes long; keep it under 200", "a".repeat(201))
        );
        assert!(validate_name(".service").unwrap_err().starts_with("empty unit name"));
    }

    #[test]
    fn warns_about_hidden_paths() {
        let mut s = spec(&["127.0.0.1:8000"], 252);
        s.sockherd = "/root/.cargo/bin/sockherd".into();
        s.chdir = Some("/home/me/app".into());
        let warnings = warnings(&s).join("\n");
        assert!(
            warnings.contains("/root/.cargo/bin/sockherd is under /root") && warnings.contains("--sockherd"),
            "{warnings}"
        );
        assert!(warnings.contains("--chdir /home/me/app is under /home"), "{warnings}");
    }

    #[test]
    fn warns_about_a_relative_command_only_without_chdir() {
        let relative = |command: &str, chdir: Option<&str>| {
            let mut s = spec(&["127.0.0.1:8000"], 252);
            s.user = "root".into();
            s.command = vec![command.into()];
            s.chdir = chdir.map(PathBuf::from);
            warnings(&s).join("\n")
        };
        assert!(relative("bin/server", None).contains("the command bin/server is a relative path"));
        assert_eq!(relative("bin/server", Some("/srv/shop/current")), "");
        assert_eq!(relative("/usr/bin/server", None), "");
        assert_eq!(relative("gunicorn", None), "");
    }

    #[test]
    fn warns_about_each_hidden_place() {
        for (path, place, setting) in [
            ("/home/a/bin/x", "/home", "ProtectHome=yes"),
            ("/root/x", "/root", "ProtectHome=yes"),
            ("/run/user/0/x", "/run/user", "ProtectHome=yes"),
            ("/tmp/x", "/tmp", "PrivateTmp=yes"),
            ("/var/tmp/x", "/var/tmp", "PrivateTmp=yes"),
        ] {
            let mut s = spec(&["127.0.0.1:8000"], 252);
            s.user = "root".into();
            s.command = vec![path.into()];
            let all = warnings(&s).join("\n");
            assert!(
                all.contains(&format!(
                    "the command {path} is under {place}, which the unit's sandbox hides ({setting}"
                )),
                "{path}: {all}"
            );
        }
        let mut s = spec(&["127.0.0.1:8000"], 252);
        s.user = "root".into();
        s.command = vec!["/srv/homework/x".into()];
        s.chdir = Some("/srv/tmp".into());
        assert_eq!(warnings(&s), Vec::<String>::new());
    }
}
