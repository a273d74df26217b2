//! `--metrics-file PATH`: the supervisor's numbers for scrapers, in the textfile convention of
//! node_exporter's textfile collector (Prometheus' text format). The file is rewritten on each
//! event sockherd logs — never on a timer — and atomically: written beside PATH under a
//! temporary name, then renamed over it, so a scraper never reads half a file.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::log;
use crate::queue::Peak;

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
            failed_write: false,
        }
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

    pub fn render(&self, generations: &[GenerationInfo]) -> String {
        let mut out = String::new();
        let head = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        head(&mut out, "sockherd_generations", "gauge", "Generations of the server, by state.");
        for state in ["starting", "settling", "serving", "draining", "failed"] {
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

/// Writes `PATH.tmp.PID` beside PATH, then renames it over PATH.
fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(data)?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

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
