//! `sockherd history UNIT`: the deploy history, from the journal. Every reload leaves a
//! `reload_done` or `reload_failed` entry (`SOCKHERD_EVENT`), its new generation a `spawn` (the
//! release) and, if it got that far, a `ready` entry (the time to ready); `journalctl -o json`
//! gives them, one JSON object a line, without libsystemd. Lines are outside input: one that is
//! not an object, or a field of an odd type, is skipped, never a panic (fuzzed: `tests/fuzz`,
//! target `journal_json`).

use std::fmt::Write as _;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::queue;
use crate::status::json_str;
use crate::supervisor::utc;

/// The events `history` reads.
pub const EVENTS: [&str; 4] = ["spawn", "ready", "reload_done", "reload_failed"];

/// One reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reload {
    /// When it ended (microseconds since the epoch).
    pub at_us: u64,
    pub generation: Option<u64>,
    pub release: Option<String>,
    pub ok: bool,
    pub ready_ms: Option<u64>,
    pub handoff_ms: Option<u64>,
    pub queue_peak: Option<u64>,
    pub queue_ms: Option<u64>,
    /// Why it failed.
    pub reason: Option<String>,
}

/// A journal field as text. `journalctl -o json` prints a value as a string, or, when it is not
/// printable UTF-8, as an array of its bytes (taken as UTF-8, a bad byte becoming U+FFFD); a field
/// an entry has more than once as an array of those, of which the last counts. A number is taken
/// too; anything else is no value.
fn text(entry: &Value, field: &str) -> Option<String> {
    match entry.get(field)? {
        Value::Array(items) if !items.is_empty() && items.iter().all(|v| v.is_string() || v.is_array()) => {
            value(items.last()?)
        }
        other => value(other),
    }
}

/// One value of a field: a string, a number, or an array of bytes.
fn value(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Array(items) => {
            let bytes: Option<Vec<u8>> = items.iter().map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok())).collect();
            Some(String::from_utf8_lossy(&bytes?).into_owned())
        }
        _ => None,
    }
}

fn number(entry: &Value, field: &str) -> Option<u64> {
    text(entry, field)?.trim().parse().ok()
}

/// What the journal told of one generation of one service invocation (invocation id, number):
/// its release and its time to ready.
type Seen = ((String, u64), (Option<String>, Option<u64>));

/// The reloads in `journalctl -o json` output, oldest first. A generation's release and time to
/// ready come from its `spawn` and `ready` entries of the same service invocation.
pub fn parse(json_lines: &str) -> Vec<Reload> {
    let mut seen: Vec<Seen> = Vec::new();
    let mut reloads = Vec::new();
    for line in json_lines.lines() {
        let Ok(entry) = serde_json::from_str::<Value>(line) else { continue };
        if !entry.is_object() {
            continue;
        }
        let Some(event) = text(&entry, "SOCKHERD_EVENT") else { continue };
        let invocation = text(&entry, "_SYSTEMD_INVOCATION_ID").or_else(|| text(&entry, "_PID")).unwrap_or_default();
        let generation = number(&entry, "SOCKHERD_GENERATION");
        let key = generation.map(|g| (invocation, g));
        let slot = |seen: &mut Vec<_>, key: (String, u64)| -> usize {
            match seen.iter().position(|(k, _)| *k == key) {
                Some(i) => i,
                None => {
                    seen.push((key, (None, None)));
                    seen.len() - 1
                }
            }
        };
        match event.as_str() {
            "spawn" => {
                if let Some(key) = key {
                    let i = slot(&mut seen, key);
                    seen[i].1 = (text(&entry, "SOCKHERD_RELEASE").filter(|r| !r.is_empty()), None);
                }
            }
            "ready" => {
                if let Some(key) = key {
                    let i = slot(&mut seen, key);
                    seen[i].1.1 = number(&entry, "SOCKHERD_READY_MS");
                }
            }
            "reload_done" | "reload_failed" => {
                let ok = event == "reload_done";
                let (release, ready_ms) =
                    key.and_then(|k| seen.iter().find(|(s, _)| *s == k).map(|(_, v)| v.clone())).unwrap_or_default();
                let reason = (!ok).then(|| {
                    let message = text(&entry, "MESSAGE").unwrap_or_default();
                    let mut reason = message.strip_prefix("reload failed: ").unwrap_or(&message);
                    // The queue peak has columns of its own.
                    if let Some(at) = reason.rfind(queue::NOTE_PREFIX).filter(|_| reason.ends_with(" ms above zero)")) {
                        reason = &reason[..at];
                    }
                    reason.to_string()
                });
                reloads.push(Reload {
                    at_us: number(&entry, "__REALTIME_TIMESTAMP").unwrap_or(0),
                    generation,
                    release,
                    ok,
                    ready_ms,
                    handoff_ms: number(&entry, "SOCKHERD_HANDOFF_MS"),
                    queue_peak: number(&entry, "SOCKHERD_QUEUE_PEAK"),
                    queue_ms: number(&entry, "SOCKHERD_QUEUE_MS"),
                    reason,
                });
            }
            _ => {}
        }
    }
    reloads
}

fn time(at_us: u64) -> String {
    utc(std::time::UNIX_EPOCH + std::time::Duration::from_micros(at_us))
}

fn opt(n: Option<u64>) -> String {
    n.map(|n| n.to_string()).unwrap_or_else(|| "null".to_string())
}

/// A JSON array, one object per reload.
pub fn to_json(reloads: &[Reload]) -> String {
    let items: Vec<String> = reloads
        .iter()
        .map(|r| {
            format!(
                "{{\"time\":{},\"timestamp_us\":{},\"generation\":{},\"release\":{},\"outcome\":\"{}\",\"ready_ms\":{},\"handoff_ms\":{},\"queue_peak\":{},\"queue_ms\":{},\"reason\":{}}}",
                json_str(&time(r.at_us)),
                r.at_us,
                opt(r.generation),
                r.release.as_deref().map(json_str).unwrap_or_else(|| "null".into()),
                if r.ok { "ok" } else { "failed" },
                opt(r.ready_ms),
                opt(r.handoff_ms),
                opt(r.queue_peak),
                opt(r.queue_ms),
                r.reason.as_deref().map(json_str).unwrap_or_else(|| "null".into()),
            )
        })
        .collect();
    format!("[{}]\n", items.join(","))
}

/// A table, one line per reload; each failure's reason on the line below it.
pub fn render(reloads: &[Reload]) -> String {
    let ms = |n: Option<u64>| n.map(|n| format!("{n} ms")).unwrap_or_else(|| "-".into());
    let mut rows =
        vec![["TIME", "GEN", "RELEASE", "OUTCOME", "READY", "HANDOFF", "QUEUE PEAK"].map(String::from).to_vec()];
    for r in reloads {
        rows.push(vec![
            time(r.at_us),
            r.generation.map(|g| g.to_string()).unwrap_or_else(|| "?".into()),
            r.release.as_deref().map(one_line).unwrap_or_else(|| "-".into()),
            if r.ok { "ok" } else { "FAILED" }.to_string(),
            ms(r.ready_ms),
            ms(r.handoff_ms),
            match (r.queue_peak, r.queue_ms) {
                (Some(p), Some(m)) => format!("{p} ({m} ms)"),
                (Some(p), None) => p.to_string(),
                _ => "-".into(),
            },
        ]);
    }
    let widths: Vec<usize> =
        (0..rows[0].len()).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
        if let Some(reason) = i.checked_sub(1).and_then(|i| reloads[i].reason.as_deref()) {
            let _ = writeln!(out, "  reason: {}", one_line(reason));
        }
    }
    out
}

/// Text from the journal on one line of the table: control characters become blanks.
fn one_line(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// Reads the unit's entries with `journalctl --all -o json`.
pub fn query(unit: &str, since: Option<&str>) -> Result<String> {
    let mut cmd = Command::new("journalctl");
    // --all: without it, journalctl prints a field of 4096 bytes or more as null (a long
    // failure's MESSAGE, its reason, would be lost).
    cmd.args(["--no-pager", "--all", "-o", "json", "-u", unit]);
    if let Some(since) = since {
        cmd.arg(format!("--since={since}"));
    }
    cmd.args(EVENTS.iter().map(|e| format!("SOCKHERD_EVENT={e}")));
    let output = cmd.output().with_context(|| {
        format!("failed to run `journalctl -u {unit}` to read the unit's journal (is this a systemd machine?)")
    })?;
    if !output.status.success() {
        bail!("`journalctl -u {unit}` failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const JOURNAL: &str = r#"{"__REALTIME_TIMESTAMP":"1800000000000000","_SYSTEMD_INVOCATION_ID":"a","SOCKHERD_EVENT":"spawn","SOCKHERD_GENERATION":"2","SOCKHERD_RELEASE":"/srv/app/releases/r2"}
{"__REALTIME_TIMESTAMP":"1800000001000000","_SYSTEMD_INVOCATION_ID":"a","SOCKHERD_EVENT":"ready","SOCKHERD_GENERATION":"2","SOCKHERD_READY_MS":"812"}
not json at all
[1,2,3]
{"SOCKHERD_EVENT":{"odd":true}}
{"__REALTIME_TIMESTAMP":"1800000002000000","_SYSTEMD_INVOCATION_ID":"a","SOCKHERD_EVENT":"reload_done","SOCKHERD_GENERATION":"2","SOCKHERD_HANDOFF_MS":"2050","SOCKHERD_QUEUE_PEAK":"3","SOCKHERD_QUEUE_MS":[52,48],"MESSAGE":"reload done: generation 2"}
{"__REALTIME_TIMESTAMP":"1800000003000000","_SYSTEMD_INVOCATION_ID":"a","SOCKHERD_EVENT":"spawn","SOCKHERD_GENERATION":"3","SOCKHERD_RELEASE":"/srv/app/releases/r3"}
{"__REALTIME_TIMESTAMP":"1800000004000000","_SYSTEMD_INVOCATION_ID":"a","SOCKHERD_EVENT":"reload_failed","SOCKHERD_GENERATION":"3","SOCKHERD_HANDOFF_MS":"400","MESSAGE":"reload failed: generation 3 (pid 9) exited with status 1 before it was ready; generation 2 (pid 7) still serving (listen queue peak 0, 0 ms above zero)"}
"#;

    #[test]
    fn one_line_per_reload_with_release_ready_time_and_reason() {
        let reloads = parse(JOURNAL);
        assert_eq!(reloads.len(), 2, "{reloads:?}");
        assert_eq!(
            reloads[0],
            Reload {
                at_us: 1_800_000_002_000_000,
                generation: Some(2),
                release: Some("/srv/app/releases/r2".into()),
                ok: true,
                ready_ms: Some(812),
                handoff_ms: Some(2050),
                queue_peak: Some(3),
                queue_ms: Some(40),
                reason: None,
            }
        );
        assert!(!reloads[1].ok);
        assert_eq!(reloads[1].release.as_deref(), Some("/srv/app/releases/r3"));
        assert_eq!(
            reloads[1].reason.as_deref(),
            Some("generation 3 (pid 9) exited with status 1 before it was ready; generation 2 (pid 7) still serving")
        );
        let text = render(&reloads);
        assert!(text.contains("FAILED"), "{text}");
        assert!(text.contains("  reason: generation 3"), "{text}");
        let json: Value = serde_json::from_str(&to_json(&reloads)).unwrap();
        assert_eq!(json[1]["outcome"], "failed");
        assert_eq!(json[0]["queue_peak"], 3);
    }

    /// journalctl prints a value that is not printable UTF-8 as an array of its bytes, and a
    /// field an entry has more than once as an array of its values, each a string or bytes.
    #[test]
    fn binary_and_repeated_fields_are_read_as_journalctl_prints_them() {
        let bytes = |s: &[u8]| format!("[{}]", s.iter().map(u8::to_string).collect::<Vec<_>>().join(","));
        let lines = [
            // The event name and the message as bytes, the latter with a byte that is not UTF-8.
            format!(
                r#"{{"__REALTIME_TIMESTAMP":"1800000000000000","SOCKHERD_EVENT":{},"SOCKHERD_GENERATION":"2","MESSAGE":{}}}"#,
                bytes(b"reload_failed"),
                bytes(b"reload failed: generation 2 \x1b[31m\xff\n")
            ),
            // Repeated: the last value counts, bytes or string.
            format!(
                r#"{{"__REALTIME_TIMESTAMP":"1800000001000000","SOCKHERD_EVENT":"reload_done","SOCKHERD_GENERATION":["2",{}],"SOCKHERD_HANDOFF_MS":[{},"70"]}}"#,
                bytes(b"3"),
                bytes(b"60")
            ),
            // Neither bytes nor strings: no value; a number is taken as it is.
            r#"{"__REALTIME_TIMESTAMP":"1800000002000000","SOCKHERD_EVENT":"reload_done","SOCKHERD_GENERATION":[[300],{"a":1}],"SOCKHERD_HANDOFF_MS":80}"#
                .to_string(),
        ];
        let reloads = parse(&lines.join("\n"));
        assert_eq!(reloads.len(), 3, "{reloads:?}");
        assert_eq!(reloads[0].generation, Some(2));
        assert_eq!(reloads[0].reason.as_deref(), Some("generation 2 \x1b[31m\u{fffd}\n"));
        assert_eq!((reloads[1].generation, reloads[1].handoff_ms), (Some(3), Some(70)));
        assert_eq!((reloads[2].generation, reloads[2].handoff_ms), (None, Some(80)));
        let table = render(&reloads);
        assert!(table.contains("  reason: generation 2  [31m\u{fffd} \n"), "{table}");
    }

    #[test]
    fn nothing_is_no_reloads() {
        assert!(parse("").is_empty());
        assert_eq!(to_json(&[]), "[]\n");
    }
}
