#![no_main]
//! What `sockherd status` reads: the supervisor's JSON answer (parsed, checked, rendered) and
//! `systemctl show` output (parsed, rendered, and turned into JSON that must be valid).
use libfuzzer_sys::fuzz_target;
use sockherd::status::{Json, UnitState, check_answer, render};

fuzz_target!(|text: &str| {
    let _ = Json::parse(text);
    let _ = render(text);
    if let Ok(checked) = check_answer(text, 42) {
        assert!(serde_json::from_str::<serde_json::Value>(&checked).is_ok());
    }
    let state = UnitState::parse("app.service", text);
    let _ = state.render();
    let json = state.to_json(check_answer(text, state.main_pid).ok().as_deref());
    serde_json::from_str::<serde_json::Value>(&json).unwrap_or_else(|e| panic!("{json:?}: {e}"));
});
