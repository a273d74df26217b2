#![no_main]
//! The control channel's lines: requests as the supervisor reads them, answers as the client
//! reads them. Never a panic; an error message quotes nothing that could break a line.
use libfuzzer_sys::fuzz_target;
use sockherd::control::{Answer, parse_answer, parse_request};

fuzz_target!(|data: &[u8]| {
    match parse_request(data) {
        Ok(request) => assert_eq!(parse_request(request.line().as_bytes()), Ok(request)),
        Err(message) => assert!(!message.contains(['\n', '\r', '\0']), "{message:?}"),
    }
    if let Ok(text) = std::str::from_utf8(data) {
        match parse_answer(text) {
            Ok(Answer::Ok(m) | Answer::Error(m) | Answer::Busy(m)) => assert!(!m.contains('\n')),
            Err(_) => {}
        }
    }
});
