//! The supervisor's private runtime directory: its control socket, the generations' notify
//! sockets and probe sockets live there, where only the service's user (and root) can reach
//! them.
//!
//! `sockherd.<pid>.<random>`, mode 0700, created with mkdir(2) (which fails rather than reuse
//! anything that exists), under:
//!
//! 1. `$RUNTIME_DIRECTORY` (systemd's `RuntimeDirectory=`: only the service's user may write
//!    there, and systemd removes it when the service stops);
//! 2. else `$XDG_RUNTIME_DIR` (the user's own, 0700);
//! 3. else the temp directory. There the random part matters: another user cannot create the
//!    name first (making us fail, or serve from a directory they own), and a name that exists
//!    is skipped, never fatal.
//!
//! `sockherd reload` and `sockherd status` find the control socket from the pid alone, without
//! knowing this name: see [`crate::control::connect`].

use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::sys;

/// The prefix of the directory's name, which the control client also checks.
pub const DIR_PREFIX: &str = "sockherd.";

/// A directory only we can use, removed with everything in it when dropped.
#[derive(Debug)]
pub struct RuntimeDir {
    path: PathBuf,
}

impl RuntimeDir {
    /// Creates the directory under the first base that exists (see the module's doc).
    pub fn create() -> Result<RuntimeDir> {
        let env_base = |name: &str| {
            std::env::var_os(name)
                // RuntimeDirectory= may list several directories, colon-separated.
                .and_then(|v| v.to_str().and_then(|s| s.split(':').next()).map(PathBuf::from))
                .filter(|p| p.is_absolute())
        };
        let base = env_base("RUNTIME_DIRECTORY")
            .or_else(|| env_base("XDG_RUNTIME_DIR"))
            .or_else(|| Some(std::env::temp_dir()).filter(|p| p.is_absolute()))
            .unwrap_or_else(|| PathBuf::from("/tmp"));
        RuntimeDir::create_in(&base)
    }

    /// Creates `sockherd.<pid>.<random>` with mode 0700 in `base`.
    pub fn create_in(base: &Path) -> Result<RuntimeDir> {
        let pid = sys::getpid();
        for _ in 0..16 {
            let mut random = [0u8; 8];
            sys::random_bytes(&mut random).context("failed to get random bytes for the runtime directory's name")?;
            let suffix: String = random.iter().map(|b| format!("{b:02x}")).collect();
            let path = base.join(format!("{DIR_PREFIX}{pid}.{suffix}"));
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

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What mkdir made: a directory (not a symlink), ours, 0700 (a umask can only take bits
    /// away; a default ACL could add some: refuse that).
    fn check(&self) -> Result<()> {
        let meta = std::fs::symlink_metadata(&self.path)
            .with_context(|| format!("failed to inspect runtime directory {}", self.path.display()))?;
        let mode = meta.permissions().mode() & 0o7777;
        if !meta.is_dir() || meta.uid() != sys::geteuid() || mode & 0o077 != 0 {
            bail!(
                "runtime directory {} is not a private directory of ours (mode {mode:04o}, owner {})",
                self.path.display(),
                meta.uid()
            );
        }
        Ok(())
    }
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
    fn private_unpredictable_and_removed() {
        let base = std::env::temp_dir();
        let a = RuntimeDir::create_in(&base).unwrap();
        let b = RuntimeDir::create_in(&base).unwrap();
        assert_ne!(a.path(), b.path());
        let name = a.path().file_name().unwrap().to_str().unwrap().to_string();
        assert!(name.starts_with(&format!("{DIR_PREFIX}{}.", sys::getpid())), "{name}");
        assert_eq!(name.len(), DIR_PREFIX.len() + sys::getpid().to_string().len() + 1 + 16);
        let meta = std::fs::metadata(a.path()).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        std::fs::write(a.path().join("file"), "x").unwrap();
        let path = a.path().to_path_buf();
        drop(a);
        assert!(!path.exists());
    }
}
