#![no_main]
//! `sockherd unit` inputs: a name, a user and group, paths and a command with spaces, quotes,
//! %, $, unicode, control characters. Whatever generate() accepts must be a well-formed unit
//! file whose ExecStart=, read the way systemd reads it (quotes, C escapes, %% and $$), is
//! exactly the command line asked for. (tests/unit_property.rs runs systemd-analyze verify on
//! generated units; this checks what verify cannot see: the words.)
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use sockherd::flavor::Flavor;
use sockherd::listen::ListenSpec;
use sockherd::unitgen::{UnitSpec, generate};
use std::path::PathBuf;

#[derive(Debug, Arbitrary)]
struct Input {
    name: String,
    flavor: u8,
    listen: Vec<String>,
    user: String,
    group: String,
    chdir: Option<String>,
    ready: Option<String>,
    writable: Vec<String>,
    sockherd: String,
    systemd_version: u16,
    command: Vec<String>,
    no_socket_units: bool,
}

/// ExecStart= split into words as systemd does: blanks separate words, '…' and "…" quote, C
/// escapes (\n \t \\ \" \' \xNN \uNNNN \UNNNNNNNN \; and friends) unescape, then %% is % and
/// $$ is $. None when systemd would refuse the line.
fn systemd_words(line: &str) -> Option<Vec<Vec<u8>>> {
    let mut words = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ' ' || *c == '\t') {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(words);
        }
        let mut word: Vec<u8> = Vec::new();
        let mut quote: Option<char> = None;
        loop {
            let Some(c) = chars.next() else {
                if quote.is_some() {
                    return None;
                }
                break;
            };
            match (c, quote) {
                (' ' | '\t', None) => break,
                ('"' | '\'', None) => quote = Some(c),
                (q, Some(open)) if q == open => quote = None,
                ('\\', _) => {
                    let e = chars.next()?;
                    let mut hex = |n: usize, radix: u32| -> Option<u32> {
                        let digits: String = (0..n).map(|_| chars.next()).collect::<Option<String>>()?;
                        u32::from_str_radix(&digits, radix).ok()
                    };
                    match e {
                        'n' => word.push(b'\n'),
                        't' => word.push(b'\t'),
                        'r' => word.push(b'\r'),
                        'a' => word.push(7),
                        'b' => word.push(8),
                        'f' => word.push(12),
                        'v' => word.push(11),
                        's' => word.push(b' '),
                        '\\' | '"' | '\'' | ';' | ' ' => word.push(e as u8),
                        'x' => {
                            let b = hex(2, 16)?;
                            if b == 0 {
                                return None;
                            }
                            word.push(b as u8);
                        }
                        'u' | 'U' => {
                            let c = char::from_u32(hex(if e == 'u' { 4 } else { 8 }, 16)?)?;
                            if c == '\0' {
                                return None;
                            }
                            word.extend_from_slice(c.to_string().as_bytes());
                        }
                        _ => return None,
                    }
                }
                (c, _) => word.extend_from_slice(c.to_string().as_bytes()),
            }
        }
        words.push(word);
    }
}

fn undouble(word: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(word.len());
    let mut i = 0;
    while i < word.len() {
        if (word[i] == b'%' || word[i] == b'$') && word.get(i + 1) == Some(&word[i]) {
            i += 1;
        }
        out.push(word[i]);
        i += 1;
    }
    out
}

fuzz_target!(|input: Input| {
    // What the command line can carry: no NUL in an argument.
    if input.command.iter().any(|w| w.contains('\0')) || input.command.is_empty() {
        return;
    }
    let Ok(listen) = input.listen.iter().map(|s| s.parse::<ListenSpec>()).collect::<Result<Vec<_>, _>>() else {
        return;
    };
    let spec = UnitSpec {
        name: input.name,
        flavor: Flavor::ALL[usize::from(input.flavor) % Flavor::ALL.len()],
        listen,
        user: input.user,
        group: input.group,
        chdir: input.chdir.map(PathBuf::from),
        ready: input.ready.and_then(|r| r.parse::<sockherd::readiness::Readiness>().ok()).map(|r| r.to_string()),
        writable: input.writable.into_iter().map(PathBuf::from).collect(),
        sockherd: PathBuf::from(input.sockherd),
        systemd_version: u32::from(input.systemd_version),
        command: input.command,
        no_socket_units: input.no_socket_units,
    };
    let Ok(files) = generate(&spec) else { return };
    for file in &files {
        assert!(!file.name.contains(['/', '\n', '\0']) && !file.name.starts_with('.'), "{:?}", file.name);
        for line in file.text.lines() {
            assert!(!line.chars().any(|c| c.is_control() && c != '\t'), "{}: {line:?}", file.name);
            let plain = line.is_empty() || line.starts_with('#') || line.starts_with('[');
            assert!(plain || line.split_once('=').is_some_and(|(k, _)| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric())), "{}: {line:?}", file.name);
        }
    }
    let service = files.iter().find(|f| f.name.ends_with(".service")).expect("a service");
    let exec = service.text.lines().find_map(|l| l.strip_prefix("ExecStart=")).expect("ExecStart=");
    let words = systemd_words(exec).unwrap_or_else(|| panic!("systemd would refuse ExecStart={exec}"));
    let words: Vec<Vec<u8>> = words.iter().map(|w| undouble(w)).collect();
    // The whole command line, as sockherd will get it.
    let mut expected: Vec<Vec<u8>> = vec![
        spec.sockherd.to_str().unwrap().as_bytes().to_vec(),
        b"run".to_vec(),
        b"--flavor".to_vec(),
        spec.flavor.name().as_bytes().to_vec(),
    ];
    if let Some(ready) = &spec.ready {
        expected.extend([b"--ready".to_vec(), ready.as_bytes().to_vec()]);
    }
    if let Some(dir) = &spec.chdir {
        expected.extend([b"--chdir".to_vec(), dir.to_str().unwrap().as_bytes().to_vec()]);
    }
    if spec.no_socket_units {
        for listen in &spec.listen {
            // Each spec as `run --listen` will parse it again: the same socket.
            let word = listen.to_string();
            assert_eq!(word.parse::<ListenSpec>().as_ref(), Ok(listen), "--listen {word}");
            expected.extend([b"--listen".to_vec(), word.into_bytes()]);
        }
    }
    expected.push(b"--".to_vec());
    expected.extend(spec.command.iter().map(|w| w.as_bytes().to_vec()));
    assert_eq!(words, expected, "ExecStart={exec}");
    let reload = service.text.lines().filter_map(|l| l.strip_prefix("ExecReload=")).rfind(|v| !v.is_empty());
    let reload = systemd_words(reload.expect("ExecReload=")).expect("systemd would refuse ExecReload=");
    assert_eq!(undouble(&reload[0]), expected[0], "ExecReload's program");
});
