//! `--metrics-file PATH`: the supervisor's numbers for scrapers, in the textfile convention of
//! node_exporter's textfile collector (Prometheus' text format). The file is rewritten on each
//! event sockherd logs — never on a timer — and atomically: written beside PATH under a
//! temporary name, then renamed over it, so a scraper never reads half a file.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::handoff::Phase;
use crate::log;
use crate::queue::Peak;

/// The states `sockherd_generations` counts. Unlike `status`, which calls both "starting", a
/// generation that reported ready but has not settled yet is `settling`.
pub const STATES: [&str; 5] = ["starting", "settling", "serving", "draining", "failed"];

/// A generation's state in the metrics, one of [`STATES`].
pub fn state(phase: &Phase) -> &'static str {
    match phase {
        Phase::Settling { .. } => "settling",
        other => other.name(),
    }
}

/// A generation as the metrics show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationInfo {
    pub number: u64,
    pub state: &'static str,
    /// Processes of its group (master included), where known.
    pub processes: Option<usize>,
}

/// How the last reload ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LastReload {
    pub at: SystemTime,
    pub ok: bool,
    pub took: Duration,
    pub ready: Option<Duration>,
    pub queue: Option<Peak>,
}

/// The counters kept from the events, and where they go.
#[derive(Debug)]
pub struct Metrics {
    path: PathBuf,
    reloads_ok: u64,
    reloads_failed: u64,
    /// READY_MS of each generation's `ready` event, until its reload ends.
    ready: Vec<(u64, Duration)>,
    last: Option<LastReload>,
    /// The highest queue peak of any handoff since start.
    queue_peak_max: Option<u32>,
    /// False once sockherd is about to exit: the last write says it is down.
    up: bool,
    failed_write: bool,
}

impl Metrics {
    pub fn new(path: PathBuf) -> Metrics {
        Metrics {
            path,
            reloads_ok: 0,
            reloads_failed: 0,
            ready: Vec::new(),
            last: None,
            queue_peak_max: None,
            up: true,
            failed_write: false,
        }
    }

    /// The counters a re-executed supervisor keeps.
    pub fn counters(&self) -> crate::reexec::MetricsState {
        crate::reexec::MetricsState {
            reloads_ok: self.reloads_ok,
            reloads_failed: self.reloads_failed,
            queue_peak_max: self.queue_peak_max,
        }
    }

    /// Counters handed over by the image before a re-exec.
    pub fn restore(&mut self, counters: &crate::reexec::MetricsState) {
        self.reloads_ok = counters.reloads_ok;
        self.reloads_failed = counters.reloads_failed;
        self.queue_peak_max = counters.queue_peak_max;
    }

    /// Takes what `event` tells (a reload's outcome, a generation's time to ready).
    pub fn observe(&mut self, event: &log::Event, at: SystemTime, queue: Option<Peak>) {
        let number = event.value("GENERATION").and_then(|n| n.parse::<u64>().ok());
        match event.event_kind() {
            Some("ready") => {
                if let (Some(number), Some(ms)) = (number, event.value("READY_MS").and_then(|v| v.parse().ok())) {
                    self.ready.retain(|(n, _)| *n != number);
                    self.ready.push((number, Duration::from_millis(ms)));
                }
            }
            Some(kind @ ("reload_done" | "reload_failed")) => {
                let ok = kind == "reload_done";
                if ok {
                    self.reloads_ok += 1;
                } else {
                    self.reloads_failed += 1;
                }
                let took = event.value("HANDOFF_MS").and_then(|v| v.parse().ok()).map(Duration::from_millis);
                let ready = self.ready.iter().find(|(n, _)| Some(*n) == number).map(|(_, d)| *d);
                self.ready.retain(|(n, _)| Some(*n) != number);
                self.last = Some(LastReload { at, ok, took: took.unwrap_or_default(), ready, queue });
                if let Some(q) = queue {
                    self.queue_peak_max = Some(self.queue_peak_max.unwrap_or(0).max(q.peak));
                }
            }
            _ => {}
        }
    }

    /// Rewrites the file; a failure is logged once (until a write succeeds again).
    pub fn write(&mut self, generations: &[GenerationInfo]) {
        match write_atomically(&self.path, self.render(generations).as_bytes()) {
            Ok(()) => self.failed_write = false,
            Err(e) if !self.failed_write => {
                self.failed_write = true;
                log::warn(format!("failed to write the metrics file {}: {e}", self.path.display())).emit();
            }
            Err(_) => {}
        }
    }

    /// The last write, as sockherd exits: `sockherd_up 0` and no generation left (whatever
    /// still ran is gone with it), the counters and the last reload as they were. A file that
    /// kept the last gauges would tell a scraper a dead service still serves.
    pub fn write_stopped(&mut self) {
        self.up = false;
        self.write(&[]);
    }

    pub fn render(&self, generations: &[GenerationInfo]) -> String {
        let mut out = String::new();
        let head = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        head(&mut out, "sockherd_up", "gauge", "1 while sockherd runs, 0 once it exited.");
        let _ = writeln!(out, "sockherd_up {}", u8::from(self.up));
        head(&mut out, "sockherd_generations", "gauge", "Generations of the server, by state.");
        for state in STATES {
            let n = generations.iter().filter(|g| g.state == state).count();
            let _ = writeln!(out, "sockherd_generations{{state=\"{state}\"}} {n}");
        }
        head(&mut out, "sockherd_generation_processes", "gauge", "Processes of each generation's group.");
        for g in generations {
            if let Some(p) = g.processes {
                let _ = writeln!(
                    out,
                    "sockherd_generation_processes{{generation=\"{}\",state=\"{}\"}} {p}",
                    g.number, g.state
                );
            }
        }
        head(&mut out, "sockherd_reloads_total", "counter", "Reloads since sockherd started, by outcome.");
        let _ = writeln!(out, "sockherd_reloads_total{{outcome=\"ok\"}} {}", self.reloads_ok);
        let _ = writeln!(out, "sockherd_reloads_total{{outcome=\"failed\"}} {}", self.reloads_failed);
        if let Some(last) = &self.last {
            let at = last.at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
            head(&mut out, "sockherd_last_reload_timestamp_seconds", "gauge", "When the last reload ended.");
            let _ = writeln!(out, "sockherd_last_reload_timestamp_seconds {at:.3}");
            head(&mut out, "sockherd_last_reload_success", "gauge", "Whether the last reload succeeded.");
            let _ = writeln!(out, "sockherd_last_reload_success {}", u8::from(last.ok));
            head(&mut out, "sockherd_last_reload_duration_seconds", "gauge", "How long the last handoff took.");
            let _ = writeln!(out, "sockherd_last_reload_duration_seconds {:.3}", last.took.as_secs_f64());
            if let Some(ready) = last.ready {
                head(
                    &mut out,
                    "sockherd_last_reload_ready_seconds",
                    "gauge",
                    "How long the last new generation took to be ready.",
                );
                let _ = writeln!(out, "sockherd_last_reload_ready_seconds {:.3}", ready.as_secs_f64());
            }
            if let Some(q) = last.queue {
                head(
                    &mut out,
                    "sockherd_last_reload_queue_peak",
                    "gauge",
                    "Most connections waiting at once during the last handoff.",
                );
                let _ = writeln!(out, "sockherd_last_reload_queue_peak {}", q.peak);
                head(
                    &mut out,
                    "sockherd_last_reload_queue_seconds",
                    "gauge",
                    "How long connections waited during the last handoff.",
                );
                let _ = writeln!(out, "sockherd_last_reload_queue_seconds {:.3}", q.above_zero.as_secs_f64());
            }
        }
        if let Some(max) = self.queue_peak_max {
            head(
                &mut out,
                "sockherd_reload_queue_peak_max",
                "gauge",
                "The highest queue peak of any handoff since start.",
            );
            let _ = writeln!(out, "sockherd_reload_queue_peak_max {max}");
        }
        out
    }
}

/// Refuses a path that can never be written the way the file is (a temporary file beside it,
/// renamed over it): a directory, or one in a directory that does not exist.
pub fn check_path(path: &Path) -> Result<(), String> {
    if path.is_dir() {
        return Err("it is a directory".into());
    }
    if path.file_name().is_none() {
        return Err("it names no file".into());
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(format!("no directory {}", dir.display()));
    }
    Ok(())
}

/// Temporary names tried before giving up: each one taken means another file sits at a name
/// that, unpredictable as it is, only a hostile or broken writer of the directory would create.
const TEMP_ATTEMPTS: usize = 16;

/// Writes a new file beside PATH, then renames it over PATH.
fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    write_atomically_with(path, data, temp_names(path))
}

/// `PATH.tmp.PID.RANDOM`, a new random part each time: in the target's directory (a rename
/// cannot cross file systems) and not guessable by other users who can write that directory.
fn temp_names(path: &Path) -> impl Iterator<Item = PathBuf> {
    use std::hash::BuildHasher as _;
    let keys = std::collections::hash_map::RandomState::new();
    let pid = std::process::id();
    let path = path.to_path_buf();
    (0u64..).map(move |n| {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".tmp.{pid}.{:016x}", keys.hash_one(n)));
        PathBuf::from(name)
    })
}

/// Creates the temporary file under the first of `names` that is free — exclusively, so a file
/// or symlink someone else put at that name is never opened, followed or removed — writes
/// `data`, makes it readable by the scraper (0644 whatever the umask) and renames it over PATH.
fn write_atomically_with(path: &Path, data: &[u8], names: impl IntoIterator<Item = PathBuf>) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let mut taken = None;
    for tmp in names.into_iter().take(TEMP_ATTEMPTS) {
        // O_CREAT|O_EXCL fails on any existing entry, a symlink included; O_NOFOLLOW says so twice.
        let mut file = match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
        {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                taken = Some(e);
                continue;
            }
            Err(e) => return Err(e),
        };
        let result = file
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .and_then(|()| file.write_all(data))
            .and_then(|()| std::fs::rename(&tmp, path));
        if result.is_err() {
            // Ours: created by this call.
            let _ = std::fs::remove_file(&tmp);
        }
        return result;
    }
    Err(taken.unwrap_or_else(|| std::io::Error::other("no temporary name to try")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    /// An empty directory of its own under the system's temporary directory.
    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sockherd-metrics-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Every phase has its own state, a settling generation included, and the file counts it.
    #[test]
    fn each_phase_is_counted_under_its_own_state() {
        let at = std::time::Instant::now();
        let phases = [
            (Phase::Starting { deadline: at }, "starting"),
            (Phase::Settling { ready_after: Duration::ZERO, until: at }, "settling"),
            (Phase::Serving, "serving"),
            (Phase::Draining { since: at, kill_at: at }, "draining"),
            (Phase::Failed { kill_at: at }, "failed"),
        ];
        let m = Metrics::new(PathBuf::from("/nonexistent/metrics.prom"));
        for (number, (phase, name)) in (1..).zip(phases) {
            assert_eq!(state(&phase), name, "{phase:?}");
            let text = m.render(&[GenerationInfo { number, state: state(&phase), processes: None }]);
            for other in STATES {
                let line = format!("sockherd_generations{{state=\"{other}\"}} {}\n", u8::from(other == name));
                assert!(text.contains(&line), "{line:?} missing in:\n{text}");
            }
        }
    }

    /// Once stopped: down, no generation, no processes; the counters kept.
    #[test]
    fn the_stopped_file_says_down_and_keeps_the_counters() {
        let dir = scratch("stopped");
        let path = dir.join("metrics.prom");
        let mut m = Metrics::new(path.clone());
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        m.observe(&log::info("done").kind("reload_done").field("GENERATION", 2).field("HANDOFF_MS", 100), at, None);
        m.write(&[GenerationInfo { number: 2, state: "serving", processes: Some(3) }]);
        let running = std::fs::read_to_string(&path).unwrap();
        assert!(running.contains("\nsockherd_up 1\n") && running.contains("state=\"serving\"} 1\n"), "{running}");
        m.write_stopped();
        let text = std::fs::read_to_string(&path).unwrap();
        for line in ["\nsockherd_up 0\n", "state=\"serving\"} 0\n", "sockherd_reloads_total{outcome=\"ok\"} 1\n"] {
            assert!(text.contains(line), "{line:?} missing in:\n{text}");
        }
        assert!(!text.contains("sockherd_generation_processes{"), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Another user who can write the file's directory plants a symlink at the name the temporary
    /// file would get from sockherd's pid: the file it points to is neither written nor moved in
    /// place of the metrics file.
    #[test]
    fn a_symlink_at_the_pid_qualified_temporary_name_is_not_followed() {
        let dir = scratch("symlink");
        let path = dir.join("metrics.prom");
        let victim = dir.join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let planted = dir.join(format!("metrics.prom.tmp.{}", std::process::id()));
        symlink(&victim, &planted).unwrap();
        write_atomically(&path, b"sockherd_up 1\n").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(!std::fs::symlink_metadata(&path).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "sockherd_up 1\n");
        assert_eq!(std::fs::read_link(&planted).unwrap(), victim);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Whatever sits at a temporary name (a symlink to a file of someone else's, a file) is
    /// skipped: neither written through, nor replaced, nor removed; the next free name is used,
    /// and the file is 0644 whatever the umask, for a scraper running as another user.
    #[test]
    fn a_taken_temporary_name_is_skipped_untouched() {
        let dir = scratch("taken");
        let path = dir.join("metrics.prom");
        let victim = dir.join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let names: Vec<PathBuf> = ["t1", "t2", "t3"].iter().map(|n| dir.join(n)).collect();
        symlink(&victim, &names[0]).unwrap();
        std::fs::write(&names[1], "someone's").unwrap();
        write_atomically_with(&path, b"one\n", names.clone()).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(std::fs::read_link(&names[0]).unwrap(), victim);
        assert_eq!(std::fs::read_to_string(&names[1]).unwrap(), "someone's");
        assert!(!names[2].exists(), "the file written was renamed over the target");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\n");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777, 0o644);

        // Every name taken: an error, and still nothing touched.
        let err = write_atomically_with(&path, b"two\n", names[..2].to_vec()).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\n");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(std::fs::read_to_string(&names[1]).unwrap(), "someone's");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A failure other than a taken name (here: no such directory) is the write's error at
    /// once: another name would fail the same way, or hide the cause.
    #[test]
    fn a_failure_other_than_a_taken_name_is_not_tried_around() {
        let dir = scratch("enoent");
        let path = dir.join("metrics.prom");
        let names = vec![dir.join("missing/t1"), dir.join("t2")];
        let err = write_atomically_with(&path, b"x\n", names).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
        assert!(!dir.join("t2").exists() && !path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A rename that fails (the target is a non-empty directory, made after the start-up check)
    /// removes the temporary file it created, and only it.
    #[test]
    fn a_failed_rename_leaves_no_temporary_file() {
        let dir = scratch("rename");
        let path = dir.join("metrics.prom");
        std::fs::create_dir_all(path.join("full")).unwrap();
        assert!(write_atomically(&path, b"x\n").is_err());
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left, ["metrics.prom"], "{left:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Temporary names are beside the target, carry the pid, and differ each time.
    #[test]
    fn temporary_names_are_beside_the_target_and_differ() {
        let path = Path::new("/var/lib/node_exporter/sockherd.prom");
        let names: Vec<PathBuf> = temp_names(path).take(3).chain(temp_names(path).take(1)).collect();
        let prefix = format!("sockherd.prom.tmp.{}.", std::process::id());
        for name in &names {
            assert_eq!(name.parent(), path.parent());
            let file = name.file_name().unwrap().to_str().unwrap();
            assert!(file.starts_with(&prefix) && file.len() == prefix.len() + 16, "{file}");
        }
        for (i, a) in names.iter().enumerate() {
            assert!(names[i + 1..].iter().all(|b| a != b), "{names:?}");
        }
    }

    #[test]
    fn counts_reloads_and_keeps_the_last_ones_times() {
        let mut m = Metrics::new(PathBuf::from("/nonexistent/metrics.prom"));
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        m.observe(&log::info("ready").kind("ready").field("GENERATION", 2).field("READY_MS", 1500), at, None);
        let peak = Some(Peak { peak: 4, above_zero: Duration::from_millis(250) });
        m.observe(&log::info("done").kind("reload_done").field("GENERATION", 2).field("HANDOFF_MS", 2600), at, peak);
        m.observe(&log::info("no").kind("reload_failed").field("GENERATION", 3).field("HANDOFF_MS", 900), at, None);
        let gens = [GenerationInfo { number: 2, state: "serving", processes: Some(3) }];
        let text = m.render(&gens);
        for line in [
            "sockherd_generations{state=\"serving\"} 1\n",
            "sockherd_generation_processes{generation=\"2\",state=\"serving\"} 3\n",
            "sockherd_reloads_total{outcome=\"ok\"} 1\n",
            "sockherd_reloads_total{outcome=\"failed\"} 1\n",
            "sockherd_last_reload_success 0\n",
            "sockherd_last_reload_duration_seconds 0.900\n",
            "sockherd_last_reload_timestamp_seconds 1800000000.000\n",
            "sockherd_reload_queue_peak_max 4\n",
        ] {
            assert!(text.contains(line), "{line:?} missing in:\n{text}");
        }
        assert!(!text.contains("sockherd_last_reload_queue_peak "), "{text}");
    }
}
