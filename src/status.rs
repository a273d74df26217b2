//! `sockherd status`: what a running supervisor says about itself (its `status` answer over the
//! control socket, JSON), rendered as a short table for people; and, for a unit name, what
//! systemd knows of the unit (`systemctl show`), followed by the supervisor at its MainPID.
//!
//! systemd is asked with `systemctl show`, not over D-Bus: it is on every machine that has the
//! unit, speaks to the manager the way the operator's own `systemctl` does (same permissions,
//! same errors), and keeps zbus and its runtime thread out of the binary. The supervisor itself
//! never asks systemd anything for this.

use std::fmt::Write as _;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The properties `sockherd status UNIT` reads, in the order shown.
pub const UNIT_PROPERTIES: [&str; 6] =
    ["LoadState", "ActiveState", "SubState", "MainPID", "StatusText", "NotifyAccess"];

/// Exit codes of `sockherd status`, as `systemctl status` uses them where they overlap.
pub const EXIT_OK: u8 = 0;
/// The supervisor (or systemd) could not be reached.
pub const EXIT_UNREACHABLE: u8 = 1;
/// The unit is not active (inactive, failed, activating, deactivating).
pub const EXIT_NOT_ACTIVE: u8 = 3;
/// No such unit.
pub const EXIT_NO_UNIT: u8 = 4;

// ----- the unit, from systemd ------------------------------------------------------------------

/// `app` → `app.service`; `app.service` stays; other unit types are refused with the likely
/// service named.
pub fn service_name(arg: &str) -> Result<String, String> {
    let name = arg.trim();
    if name.is_empty() {
        return Err("empty unit name (expected NAME or NAME.service, e.g. app)".into());
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || ":_.-@\\".contains(*c))) {
        return Err(format!(
            "'{name}' is not a unit name: {c:?} is not allowed (letters, digits and : _ . - @ \\ only)"
        ));
    }
    const OTHER_TYPES: [&str; 10] =
        ["socket", "target", "timer", "mount", "path", "slice", "scope", "swap", "device", "automount"];
    if name.ends_with(".service") {
        return Ok(name.to_string());
    }
    if let Some((stem, kind)) = name.rsplit_once('.')
        && OTHER_TYPES.contains(&kind)
    {
        return Err(format!(
            "'{name}' is a {kind} unit; sockherd status takes the service that runs sockherd \
             (for a socket unit usually {stem}.service, or the one its Service= names)"
        ));
    }
    Ok(format!("{name}.service"))
}

/// What systemd says about a service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitState {
    pub unit: String,
    pub load_state: String,
    pub active_state: String,
    pub sub_state: String,
    pub main_pid: i32,
    pub status_text: String,
    pub notify_access: String,
}

impl UnitState {
    /// Parses `systemctl show -p ...` output (`Key=value` lines; the order systemd prints them
    /// in is its own, so no `--value`).
    pub fn parse(unit: &str, text: &str) -> UnitState {
        let mut state = UnitState { unit: unit.to_string(), ..UnitState::default() };
        for line in text.lines() {
            let Some((key, value)) = line.split_once('=') else { continue };
            let value = value.to_string();
            match key {
                "LoadState" => state.load_state = value,
                "ActiveState" => state.active_state = value,
                "SubState" => state.sub_state = value,
                "MainPID" => state.main_pid = value.trim().parse().unwrap_or(0),
                "StatusText" => state.status_text = value,
                "NotifyAccess" => state.notify_access = value,
                _ => {}
            }
        }
        state
    }

    pub fn exists(&self) -> bool {
        self.load_state != "not-found"
    }

    /// Active, or active and reloading: what `systemctl status` answers 0 for.
    pub fn is_active(&self) -> bool {
        matches!(self.active_state.as_str(), "active" | "reloading")
    }

    pub fn render(&self) -> String {
        let mut out = format!("{}: {} ({})", self.unit, self.active_state, self.sub_state);
        if self.main_pid > 0 {
            let _ = write!(out, ", main pid {}", self.main_pid);
        }
        if !self.notify_access.is_empty() && self.notify_access != "none" {
            let _ = write!(out, ", NotifyAccess={}", self.notify_access);
        }
        out.push('\n');
        if !self.status_text.is_empty() {
            let _ = writeln!(out, "  status: {}", self.status_text);
        }
        out
    }

    pub fn to_json(&self, supervisor: Option<&str>) -> String {
        format!(
            "{{\"unit\":{},\"load_state\":{},\"active_state\":{},\"sub_state\":{},\"main_pid\":{},\"status_text\":{},\"notify_access\":{},\"supervisor\":{}}}",
            json_str(&self.unit),
            json_str(&self.load_state),
            json_str(&self.active_state),
            json_str(&self.sub_state),
            self.main_pid,
            json_str(&self.status_text),
            json_str(&self.notify_access),
            supervisor.unwrap_or("null")
        )
    }
}

/// Asks systemd about `unit` with `systemctl show`.
pub fn query_unit(unit: &str) -> Result<UnitState> {
    let output = Command::new("systemctl")
        .arg("show")
        .arg(format!("--property={}", UNIT_PROPERTIES.join(",")))
        .arg("--")
        .arg(unit)
        .output()
        .with_context(|| {
            format!(
                "failed to run `systemctl show {unit}` to ask systemd about the unit (is this a systemd \
                 machine?); to ask a supervisor directly, use `sockherd status --pid PID`"
            )
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        bail!(
            "`systemctl show {unit}` failed ({}): {}; to ask a supervisor directly, use `sockherd status --pid PID`",
            output.status,
            stderr.trim()
        );
    }
    Ok(UnitState::parse(unit, &String::from_utf8_lossy(&output.stdout)))
}

// ----- the supervisor's answer, for people ---------------------------------------------------------

/// Renders the supervisor's `status` JSON as a few lines and two small tables.
pub fn render(json_text: &str) -> Result<String> {
    let json = Json::parse(json_text.trim())
        .map_err(|e| anyhow::anyhow!("the supervisor's status is not valid JSON ({e}): {json_text:?}"))?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "sockherd supervisor pid {}: {} (flavor {}, readiness {})",
        num(json.get("pid")),
        json.get("state").str().unwrap_or("?"),
        json.get("flavor").str().unwrap_or("?"),
        json.get("ready").str().unwrap_or("?"),
    );
    if let Some(line) = json.get("status").str() {
        let _ = writeln!(out, "  {line}");
    }
    // Older supervisors do not say their version.
    if let Some(version) = json.get("version").str() {
        let reexecs = json.get("reexecs").num().unwrap_or(0.0) as u64;
        let times = match reexecs {
            0 => String::new(),
            1 => ", re-executed once".to_string(),
            n => format!(", re-executed {n} times"),
        };
        let _ = writeln!(out, "  version: {version}{times}");
    }
    // Cgroups or process groups, and what that means (older supervisors do not say).
    if let Some(line) = json.get("membership").get("describe").str() {
        let _ = writeln!(out, "{line}");
    }

    let generations = json.get("generations").arr();
    out.push('\n');
    if generations.is_empty() {
        out.push_str("no generations\n");
    } else {
        let mut rows =
            vec![["GEN", "PID", "STATE", "WORKERS", "CPU", "MEMORY", "AGE", "RELEASE"].map(String::from).to_vec()];
        for g in generations {
            rows.push(vec![
                num(g.get("number")),
                num(g.get("pid")),
                g.get("state").str().unwrap_or("?").to_string(),
                // Older supervisors only told the group's size (master included).
                match g.get("workers").num() {
                    Some(w) => format!("{w}"),
                    None => g.get("processes").num().map(|p| format!("{}", (p - 1.0).max(0.0))).unwrap_or_default(),
                },
                // Older supervisors did not tell resources.
                g.get("cpu_ms").num().map(|ms| format!("{:.1}s", ms / 1000.0)).unwrap_or_else(|| "-".to_string()),
                memory(g),
                g.get("age_s").num().map(age).unwrap_or_default(),
                g.get("release").str().unwrap_or("-").to_string(),
            ]);
        }
        table(&mut out, &rows);
        for g in generations {
            if let Some(app) = g.get("app_status").str() {
                let _ = writeln!(out, "  generation {} says: {app}", num(g.get("number")));
            }
            if g.get("boot_priority").bool() == Some(true) {
                let _ =
                    writeln!(out, "  generation {} boots at a lower CPU priority until ready", num(g.get("number")));
            }
        }
    }

    let sockets = json.get("sockets").arr();
    out.push('\n');
    if sockets.is_empty() {
        out.push_str("no sockets\n");
    } else {
        // Supervisors that read the listen queues say so with a `queue` field (null when the
        // kernel would not tell).
        let queues = sockets.iter().any(|s| matches!(s, Json::Obj(f) if f.iter().any(|(k, _)| k == "queue")));
        let mut header = vec!["FD", "NAME", "ADDRESS"];
        if queues {
            header.extend(["QUEUED", "BACKLOG", "ACTIVE"]);
        }
        let mut rows = vec![header.into_iter().map(String::from).collect::<Vec<_>>()];
        for s in sockets {
            let mut row = vec![
                num(s.get("fd")),
                s.get("name").str().unwrap_or("?").to_string(),
                s.get("address").str().unwrap_or("?").to_string(),
            ];
            if queues {
                let q = s.get("queue");
                let field = |key: &str| q.get(key).num().map(|n| format!("{n}")).unwrap_or_else(|| "-".to_string());
                row.extend([field("queued"), field("backlog"), field("active")]);
            }
            rows.push(row);
        }
        table(&mut out, &rows);
    }

    out.push('\n');
    let last = json.get("last_reload");
    match last.get("ok").bool() {
        None => out.push_str("last reload: none since start\n"),
        Some(ok) => {
            let queue = match (last.get("queue_peak").num(), last.get("queue_ms").num()) {
                (Some(peak), Some(ms)) => format!(", listen queue peak {peak} ({ms} ms above zero)"),
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "last reload: {} at {}, took {} ms{queue}: {}",
                if ok { "ok" } else { "FAILED" },
                last.get("at").str().unwrap_or("?"),
                num(last.get("took_ms")),
                last.get("message").str().unwrap_or("")
            );
        }
    }
    Ok(out)
}

/// `45 MiB pss`, `70 MiB (peak 100 MiB)`: what a generation's memory figure is.
fn memory(g: &Json) -> String {
    let Some(bytes) = g.get("memory_bytes").num() else { return "-".to_string() };
    let mib = |b: f64| (b / 1048576.0).ceil();
    let mut text = format!("{} MiB", mib(bytes));
    if g.get("memory_source").str() == Some("pss") {
        text.push_str(" pss");
    }
    if let Some(peak) = g.get("memory_peak_bytes").num() {
        text.push_str(&format!(" (peak {} MiB)", mib(peak)));
    }
    text
}

fn num(value: &Json) -> String {
    value.num().map(|n| format!("{n}")).unwrap_or_else(|| "?".to_string())
}

/// `42s`, `5m07s`, `3h02m`, `2d04h`.
pub fn age(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// Left-aligned columns, two spaces apart; the last column is not padded.
fn table(out: &mut String, rows: &[Vec<String>]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|v| v.chars().count()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let mut line = String::new();
        for (c, value) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(value);
            } else {
                let _ = write!(line, "{value:<width$}  ", width = widths[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

/// Checks the supervisor's answer to `status`: one JSON object, about the process asked (its
/// `pid`). Returns it trimmed, to be printed or embedded as it is.
pub fn check_answer(answer: &str, pid: i32) -> Result<String, String> {
    let text = answer.trim();
    let json = Json::parse(text).map_err(|e| format!("something that is not JSON ({e}): {:?}", clip(text)))?;
    if !matches!(json, Json::Obj(_)) {
        return Err(format!("JSON that is not an object: {:?}", clip(text)));
    }
    if json.get("pid").num() != Some(f64::from(pid)) {
        return Err(format!("a status of pid {}, not of pid {pid}", num(json.get("pid"))));
    }
    Ok(text.to_string())
}

/// The first 200 characters, for an error message.
fn clip(text: &str) -> String {
    text.chars().take(200).collect()
}

/// `s` as a JSON string literal.
pub fn json_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

// ----- JSON read with serde_json, as the few shapes `render` and the tests look at -----------------

/// A JSON value: what serde_json read, with accessors that treat a missing field or another
/// type as null. serde_json refuses what is not JSON (leading zeros, `1.`, raw control
/// characters in strings, form feeds as blanks: all accepted by the reader it replaced, as
/// fuzzing against serde_json showed), so text that parsed may be embedded as it is.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

static NULL: Json = Json::Null;

impl Json {
    pub fn parse(text: &str) -> Result<Json, String> {
        serde_json::from_str::<serde_json::Value>(text).map(Json::from).map_err(|e| e.to_string())
    }

    /// The field `key` of an object, or null.
    pub fn get(&self, key: &str) -> &Json {
        match self {
            Json::Obj(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v).unwrap_or(&NULL),
            _ => &NULL,
        }
    }

    pub fn str(&self) -> Option<&str> {
        if let Json::Str(s) = self { Some(s) } else { None }
    }

    pub fn num(&self) -> Option<f64> {
        if let Json::Num(n) = self { Some(*n) } else { None }
    }

    pub fn bool(&self) -> Option<bool> {
        if let Json::Bool(b) = self { Some(*b) } else { None }
    }

    pub fn arr(&self) -> &[Json] {
        if let Json::Arr(a) = self { a } else { &[] }
    }
}

impl From<serde_json::Value> for Json {
    fn from(value: serde_json::Value) -> Json {
        match value {
            serde_json::Value::Null => Json::Null,
            serde_json::Value::Bool(b) => Json::Bool(b),
            serde_json::Value::Number(n) => Json::Num(n.as_f64().unwrap_or(f64::NAN)),
            serde_json::Value::String(s) => Json::Str(s),
            serde_json::Value::Array(items) => Json::Arr(items.into_iter().map(Json::from).collect()),
            serde_json::Value::Object(fields) => {
                Json::Obj(fields.into_iter().map(|(k, v)| (k, Json::from(v))).collect())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{"pid":100,"version":"sockherd 0.2.0 (build deb1)","reexecs":2,"state":"reloading","flavor":"gunicorn","ready":"probe","status":"serving generation 1 (pid 101, /srv/app/releases/r1); starting generation 2 (pid 202)","membership":{"mode":"cgroup","path":"/sys/fs/cgroup/system.slice/app.service","describe":"generations are cgroups: gen-N under /sys/fs/cgroup/system.slice/app.service"},"sockets":[{"fd":3,"name":"http","address":"127.0.0.1:8080"},{"fd":4,"name":"unix","address":"/run/app.sock"}],"generations":[{"number":1,"pid":101,"state":"serving","release":"/srv/app/releases/r1","started":"2026-11-22 05:20:01 UTC","age_s":3725.2,"processes":3,"workers":2,"cpu_ms":12345,"memory_bytes":94371840,"memory_peak_bytes":null,"memory_source":"pss","boot_priority":false,"app_status":null},{"number":2,"pid":202,"state":"starting","release":"/srv/app/releases/r2","started":"2026-11-22 06:22:04 UTC","age_s":2.0,"processes":1,"workers":0,"boot_priority":true,"app_status":"booting \"x\""}],"last_reload":{"at":"2026-11-22 06:00:00 UTC","ok":false,"took_ms":1234,"message":"generation 2 exited"}}"#;

    #[test]
    fn renders_generations_sockets_and_last_reload() {
        let text = render(SAMPLE).unwrap();
        assert!(
            text.starts_with("sockherd supervisor pid 100: reloading (flavor gunicorn, readiness probe)\n"),
            "{text}"
        );
        assert!(text.contains("\n  version: sockherd 0.2.0 (build deb1), re-executed 2 times\n"), "{text}");
        assert!(
            text.contains("\ngenerations are cgroups: gen-N under /sys/fs/cgroup/system.slice/app.service\n"),
            "{text}"
        );
        assert!(text.contains("GEN  PID  STATE     WORKERS  CPU    MEMORY      AGE    RELEASE\n"), "{text}");
        assert!(
            text.contains("1    101  serving   2        12.3s  90 MiB pss  1h02m  /srv/app/releases/r1\n"),
            "{text}"
        );
        // An older supervisor's answer has no resources.
        assert!(
            text.contains("2    202  starting  0        -      -           2s     /srv/app/releases/r2\n"),
            "{text}"
        );
        assert!(text.contains("  generation 2 boots at a lower CPU priority until ready\n"), "{text}");
        assert!(text.contains("generation 2 says: booting \"x\""), "{text}");
        assert!(text.contains("FD  NAME  ADDRESS\n3   http  127.0.0.1:8080\n4   unix  /run/app.sock\n"), "{text}");
        assert!(text.contains("last reload: FAILED at 2026-11-22 06:00:00 UTC, took 1234 ms: generation 2 exited"));
    }

    #[test]
    fn no_reload_yet() {
        let text = render(r#"{"pid":1,"state":"running","generations":[],"sockets":[],"last_reload":null}"#).unwrap();
        assert!(text.contains("last reload: none since start"), "{text}");
    }

    #[test]
    fn refuses_garbage() {
        assert!(render("ok fine").is_err());
        assert!(Json::parse(r#"{"a":1"#).is_err());
        assert!(Json::parse(r#"[1,2]x"#).is_err());
        // What fuzzing against serde_json found the hand-written reader accepted.
        for bad in ["00", "-02", "1.", "\u{c}5", "\"a\nb\"", "\"\u{0}\""] {
            assert!(Json::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn checks_the_answer_is_the_status_of_the_pid_asked() {
        assert_eq!(
            check_answer(" {\"pid\":42,\"state\":\"running\"}\n", 42).unwrap(),
            "{\"pid\":42,\"state\":\"running\"}"
        );
        assert!(check_answer("{\"pid\":43}", 42).unwrap_err().contains("not of pid 42"));
        assert!(check_answer("[1]", 42).unwrap_err().contains("not an object"));
        assert!(check_answer("{\"pid\":42} trailing", 42).unwrap_err().contains("not JSON"));
        assert!(check_answer("ok reloaded", 42).unwrap_err().contains("not JSON"));
    }

    #[test]
    fn ages() {
        assert_eq!(age(0.4), "0s");
        assert_eq!(age(59.9), "59s");
        assert_eq!(age(61.0), "1m01s");
        assert_eq!(age(7322.0), "2h02m");
        assert_eq!(age(190_000.0), "2d04h");
    }

    #[test]
    fn unit_names() {
        assert_eq!(service_name("app").unwrap(), "app.service");
        assert_eq!(service_name("app.service").unwrap(), "app.service");
        assert_eq!(service_name("app@blue").unwrap(), "app@blue.service");
        assert_eq!(service_name("my.app").unwrap(), "my.app.service");
        assert!(service_name("app.socket").unwrap_err().contains("app.service"));
        assert!(service_name("a b").unwrap_err().contains("not a unit name"));
        assert!(service_name("").is_err());
    }

    #[test]
    fn parses_systemctl_show() {
        let state = UnitState::parse(
            "app.service",
            "MainPID=42\nNotifyAccess=main\nStatusText=serving generation 3 (pid 9)\nLoadState=loaded\nActiveState=active\nSubState=running\n",
        );
        assert_eq!(state.main_pid, 42);
        assert!(state.is_active() && state.exists());
        assert_eq!(state.status_text, "serving generation 3 (pid 9)");
        let json = Json::parse(&state.to_json(Some(r#"{"pid":42}"#))).unwrap();
        assert_eq!(json.get("supervisor").get("pid").num(), Some(42.0));
        assert_eq!(json.get("active_state").str(), Some("active"));
        assert_eq!(json.get("unit").str(), Some("app.service"));
        assert!(state.render().starts_with("app.service: active (running)"), "{}", state.render());
    }
}
