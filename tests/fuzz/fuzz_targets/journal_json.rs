#![no_main]
//! `journalctl -o json` output as `sockherd history` reads it (any bytes: journal fields are
//! whatever the service logged). Never a panic; what it prints is valid JSON with one object per
//! reload, and the table has a line for each.
use libfuzzer_sys::fuzz_target;
use sockherd::history::{parse, render, to_json};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let reloads = parse(&text);
    let json: serde_json::Value = serde_json::from_str(&to_json(&reloads)).expect("history --json is JSON");
    assert_eq!(json.as_array().map(Vec::len), Some(reloads.len()));
    let table = render(&reloads);
    let rows = table.lines().filter(|l| !l.starts_with("  reason: ")).count();
    assert_eq!(rows, reloads.len() + 1, "{table}");
});
