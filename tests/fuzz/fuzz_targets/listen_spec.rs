#![no_main]
//! `--listen` specs: never a panic; an accepted address prints as a spec that parses back to it.
use libfuzzer_sys::fuzz_target;
use sockherd::listen::{ListenAddr, ListenSpec};

fuzz_target!(|text: &str| {
    if let Ok(spec) = text.parse::<ListenSpec>() {
        let printed = match &spec.addr {
            ListenAddr::Unix(path) => format!("unix:{}", path.display()),
            other => other.to_string(),
        };
        let again: ListenSpec = printed.parse().unwrap_or_else(|e| panic!("{text:?} -> {printed:?}: {e}"));
        assert_eq!(again.addr, spec.addr, "{text:?}");
        if let Some(name) = &spec.name {
            assert!(sockherd::listen::validate_fd_name(name).is_ok());
        }
        assert!(spec.mode.is_none_or(|m| m <= 0o777) && spec.backlog > 0);
    }
});
