//! Helpers for tests of `sockherd run` with the small support servers of tests/support: the
//! supervisor's generations as `sockherd status --json` reports them, files written by support
//! servers, and their logs.

use super::*;
use sockherd::status::Json;

/// A script of tests/support.
pub fn support(script: &str) -> PathBuf {
    repo().join("tests/support").join(script)
}

/// One generation in `sockherd status --json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gen {
    pub number: u64,
    pub pid: i32,
    pub state: String,
}

/// The supervisor's status JSON, or None when it does not answer.
pub fn status_json(pid: i32) -> Option<Json> {
    let out = sockherd_cmd(&["status", "--json", "--pid", &pid.to_string()]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    Json::parse(String::from_utf8_lossy(&out.stdout).trim()).ok()
}

/// The generations the supervisor reports (empty when it does not answer).
pub fn generations(pid: i32) -> Vec<Gen> {
    let Some(json) = status_json(pid) else { return Vec::new() };
    json.get("generations")
        .arr()
        .iter()
        .map(|g| Gen {
            number: g.get("number").num().unwrap_or(0.0) as u64,
            pid: g.get("pid").num().unwrap_or(0.0) as i32,
            state: g.get("state").str().unwrap_or("").to_string(),
        })
        .collect()
}

/// Polls the generations until `check` holds; fails through `proc` after `timeout`.
pub fn wait_generations(proc: &mut Proc, what: &str, timeout: Duration, check: impl Fn(&[Gen]) -> bool) -> Vec<Gen> {
    let mut last = Vec::new();
    let pid = proc.pid();
    let ok = wait_until(timeout, || {
        last = generations(pid);
        check(&last) || proc.try_status().is_some()
    });
    if !ok || !check(&last) {
        proc.fail(&format!("status never showed {what} within {timeout:?}; last: {last:?}"));
    }
    last
}

/// Waits until a support server wrote `path`, and returns its content.
pub fn wait_file(proc: &mut Proc, path: &Path, timeout: Duration) -> String {
    if !wait_until(timeout, || path.exists() || proc.try_status().is_some()) || !path.exists() {
        proc.fail(&format!("{} never appeared", path.display()));
    }
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The lines of a file (none when it does not exist yet).
pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).map(|t| t.lines().map(String::from).collect()).unwrap_or_default()
}

/// The index of the first line of `text` containing every one of `needles`.
pub fn line_with(text: &str, needles: &[&str]) -> Option<usize> {
    text.lines().position(|l| needles.iter().all(|n| l.contains(n)))
}
