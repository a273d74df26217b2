//! The supervisor's private runtime directory: its control socket, the generations' notify
//! sockets and probe sockets live there, where only the service's user (and root) can reach
//! them. Mode 0700, created with mkdir(2):
//!
//! 1. `<base>/sockherd-<pid>` when a base only our user may write to exists: `$RUNTIME_DIRECTORY`
//!    (systemd's `RuntimeDirectory=`, removed by systemd when the service stops), else
//!    `$XDG_RUNTIME_DIR`. Nobody else can take that name first, so it may be predictable: a
//!    process of the unit (`ExecReload=`) finds the control socket from `$MAINPID` alone, even
//!    where /proc hides the supervisor from it (`PrivateUsers=` gives each process its own user
//!    namespace, and `ProtectProc=invisible` then hides them from each other). A leftover of our
//!    own under that name is replaced.
//! 2. Else `/tmp/sockherd-<pid>-<random>`: in a shared directory the name must be unpredictable
//!    (another user could create it first, making us fail or serve from a directory they own),
//!    and an existing name is skipped, never fatal. Clients find it through /proc.
//!
//! See [`crate::control::connect`] for how a client finds the control socket.

use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::sys;

/// The prefix of the directory's name, which the control client also checks.
pub const DIR_PREFIX: &str = "sockherd-";

/// A directory only we can use, removed with everything in it when dropped.
#[derive(Debug)]
pub struct RuntimeDir {
    path: PathBuf,
}

impl RuntimeDir {
    /// Creates the directory (see the module's doc).
    pub fn create() -> Result<RuntimeDir> {
        match private_base() {
            Some(base) => RuntimeDir::create_known(&base),
            None => {
                let tmp =
                    Some(std::env::temp_dir()).filter(|p| p.is_absolute()).unwrap_or_else(|| PathBuf::from("/tmp"));
                RuntimeDir::create_in(&tmp)
            }
        }
    }

    /// Creates `sockherd-<pid>` in `base`, a directory only our user may write to, replacing a
    /// leftover of ours; falls back to an unpredictable name if the name is somebody else's.
    pub fn create_known(base: &Path) -> Result<RuntimeDir> {
        let path = known_dir(base, sys::getpid());
        if let Ok(meta) = std::fs::symlink_metadata(&path)
            && meta.uid() == sys::geteuid()
        {
            let _ = if meta.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        }
        match std::fs::DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => {
                let dir = RuntimeDir { path };
                dir.check()?;
                Ok(dir)
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => RuntimeDir::create_in(base),
            Err(e) => Err(e).with_context(|| format!("failed to create runtime directory {}", path.display())),
        }
    }

    /// Creates `sockherd-<pid>-<random>` with mode 0700 in `base`.
    pub fn create_in(base: &Path) -> Result<RuntimeDir> {
        let pid = sys::getpid();
        for _ in 0..16 {
            let mut random = [0u8; 8];
            sys::random_bytes(&mut random).context("failed to get random bytes for the runtime directory's name")?;
            let suffix: String = random.iter().map(|b| format!("{b:02x}")).collect();
            let path = base.join(format!("{DIR_PREFIX}{pid}-{suffix}"));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => {
                    let dir = RuntimeDir { path };
                    dir.check()?;
                    return Ok(dir);
                }
                // Somebody's file: not ours to touch. Another name.
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("failed to create runtime directory {}", path.display()));
                }
            }
        }
        bail!("failed to create a runtime directory in {}: every name tried exists", base.display())
    }

    /// The directory a supervisor made before it re-executed itself: checked like a new one.
    /// A failed check leaves the directory alone (it is still the old image's).
    pub fn adopt(path: PathBuf) -> Result<RuntimeDir> {
        check_private(&path)?;
        Ok(RuntimeDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What mkdir made: a directory (not a symlink), ours, 0700 (a umask can only take bits
    /// away; a default ACL could add some: refuse that).
    fn check(&self) -> Result<()> {
        check_private(&self.path)
    }
}

/// Whether `path` is a private directory of ours: a directory, not a symlink, ours, no access
/// for anyone else.
pub fn check_private(path: &Path) -> Result<()> {
    let meta = std::fs::symlink_metadata(path)
        .with_context(|| format!("failed to inspect runtime directory {}", path.display()))?;
    let mode = meta.permissions().mode() & 0o7777;
    if !meta.is_dir() || meta.uid() != sys::geteuid() || mode & 0o077 != 0 {
        bail!(
            "runtime directory {} is not a private directory of ours (mode {mode:04o}, owner {})",
            path.display(),
            meta.uid()
        );
    }
    Ok(())
}

/// `$RUNTIME_DIRECTORY` (its first entry), else `$XDG_RUNTIME_DIR`, when it is a directory of
/// our own that no other user may write to.
pub fn private_base() -> Option<PathBuf> {
    ["RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR"].iter().find_map(|name| {
        // RuntimeDirectory= may list several directories, colon-separated.
        let base = PathBuf::from(std::env::var_os(name)?.to_str()?.split(':').next()?);
        let meta = std::fs::metadata(&base).ok()?;
        let private = base.is_absolute()
            && meta.is_dir()
            && meta.uid() == sys::geteuid()
            && meta.permissions().mode() & 0o022 == 0;
        private.then_some(base)
    })
}

/// Where a client looks for a supervisor of its own unit: `$RUNTIME_DIRECTORY` (its first
/// entry), else `$XDG_RUNTIME_DIR`. Unlike [`private_base`], whoever owns it: the client trusts
/// what answers there only after SO_PEERCRED says it is the supervisor.
pub fn private_base_of_client() -> Option<PathBuf> {
    ["RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR"].iter().find_map(|name| {
        let base = PathBuf::from(std::env::var_os(name)?.to_str()?.split(':').next()?);
        base.is_absolute().then_some(base)
    })
}

/// The directory a supervisor with pid `pid` makes in a private base: `<base>/sockherd-<pid>`.
pub fn known_dir(base: &Path, pid: sys::Pid) -> PathBuf {
    base.join(format!("{DIR_PREFIX}{pid}"))
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_name_in_a_private_base_replaces_a_leftover() {
        let base = RuntimeDir::create_in(&std::env::temp_dir()).unwrap();
        let leftover = known_dir(base.path(), sys::getpid());
        std::fs::create_dir(&leftover).unwrap();
        std::fs::write(leftover.join("control"), "stale").unwrap();
        let dir = RuntimeDir::create_known(base.path()).unwrap();
        assert_eq!(dir.path(), leftover);
        assert!(!dir.path().join("control").exists());
    }

    #[test]
    fn private_unpredictable_and_removed() {
        let base = std::env::temp_dir();
        let a = RuntimeDir::create_in(&base).unwrap();
        let b = RuntimeDir::create_in(&base).unwrap();
        assert_ne!(a.path(), b.path());
        let name = a.path().file_name().unwrap().to_str().unwrap().to_string();
        assert!(name.starts_with(&format!("{DIR_PREFIX}{}-", sys::getpid())), "{name}");
        assert_eq!(name.len(), DIR_PREFIX.len() + sys::getpid().to_string().len() + 1 + 16);
        let meta = std::fs::metadata(a.path()).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        std::fs::write(a.path().join("file"), "x").unwrap();
        let path = a.path().to_path_buf();
        drop(a);
        assert!(!path.exists());
    }
}
