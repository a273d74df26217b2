#![no_main]
//! A generation's sd_notify datagrams, any bytes: parsed as systemd does (split on \n and \r,
//! refused with a NUL or at 4,096 bytes), and the app's text cleaned before it goes further.
use libfuzzer_sys::fuzz_target;
use sockherd::notify::{DATAGRAM_LIMIT, MAX_APP_TEXT, clean_text, parse_datagram};

fuzz_target!(|data: &[u8]| {
    match parse_datagram(data, data.len()) {
        Ok(assignments) => {
            assert!(data.len() < DATAGRAM_LIMIT && !data.contains(&0));
            for (key, value) in assignments {
                assert!(!key.contains(['\n', '\r', '=']) && !value.contains(['\n', '\r']));
                let cleaned = clean_text(value, MAX_APP_TEXT);
                assert!(cleaned.len() <= MAX_APP_TEXT);
                assert!(!cleaned.chars().any(char::is_control), "{cleaned:?}");
                assert!(value.starts_with(cleaned.as_str()) || value.chars().any(char::is_control));
            }
        }
        Err(_) => assert!(data.len() >= DATAGRAM_LIMIT || data.contains(&0)),
    }
});
