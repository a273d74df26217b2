#![no_main]
//! Small values from the command line and from systemctl: durations (30, 1.5s, 500ms, 2m),
//! signal names and numbers, flavor names, unit names, systemd versions. Never a panic; what
//! parses is in range.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(d) = text.parse::<sockherd::cli::Seconds>() {
        assert!(d.0.as_secs_f64() < 1e9);
    }
    if let Ok(s) = text.parse::<sockherd::signal::Signal>() {
        assert!((1..=64).contains(&s.0), "{text:?} -> {}", s.0);
        let _ = s.to_string();
    }
    if let Ok(f) = text.parse::<sockherd::flavor::Flavor>() {
        assert_eq!(f.name().parse::<sockherd::flavor::Flavor>(), Ok(f));
    }
    let _ = sockherd::status::service_name(text);
    let _ = sockherd::unitgen::validate_name(text);
    let _ = sockherd::unitgen::parse_systemd_version(text);
    // Native mode's reading of `systemctl show -P Version`.
    let _ = sockherd::native::parse_version(text);
});
