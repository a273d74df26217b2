#![no_main]
//! `--ready` strategies: never a panic; an accepted one prints as a strategy that parses back.
use libfuzzer_sys::fuzz_target;
use sockherd::readiness::Readiness;

fuzz_target!(|text: &str| {
    if let Ok(ready) = text.parse::<Readiness>() {
        let printed = ready.to_string();
        let again: Readiness = printed.parse().unwrap_or_else(|e| panic!("{text:?} -> {printed:?}: {e}"));
        match (&ready, &again) {
            // A delay prints in seconds as f64: equal to within a nanosecond.
            (Readiness::Delay(a), Readiness::Delay(b)) => assert!(a.abs_diff(*b).as_nanos() <= 1, "{text:?}"),
            _ => assert_eq!(ready, again, "{text:?}"),
        }
    }
});
