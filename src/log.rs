//! Logging: native journald entries with structured `SOCKHERD_*` fields when our stderr is the
//! journal (systemd sets `JOURNAL_STREAM` to stderr's `device:inode`), human lines on stderr
//! otherwise. The app's own output is not ours: it goes wherever our stdout/stderr go.

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::sync::OnceLock;

use crate::protocol::{JOURNAL_SOCKET, JOURNAL_STREAM};
use crate::sys;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error = 3,
    Warning = 4,
    Notice = 5,
    Info = 6,
    Debug = 7,
}

enum Sink {
    Stderr,
    Journal(UnixDatagram),
}

struct Logger {
    sink: Sink,
    max_level: Level,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

/// Chooses the sink once, at start. `debug` also shows debug events; `native_journal` allows
/// native journal entries when stderr is the journal (only for a process that outlives its
/// messages: journald needs the sender alive to tell which unit an entry belongs to).
pub fn init(debug: bool, native_journal: bool) {
    let sink = if native_journal && stderr_is_journal() {
        match UnixDatagram::unbound().and_then(|s| s.connect(JOURNAL_SOCKET).map(|()| s)) {
            Ok(sock) => Sink::Journal(sock),
            Err(_) => Sink::Stderr,
        }
    } else {
        Sink::Stderr
    };
    let max_level = if debug { Level::Debug } else { Level::Info };
    let _ = LOGGER.set(Logger { sink, max_level });
}

/// Whether `JOURNAL_STREAM` names our stderr, as sd_journal_stream_fd(3) sets it.
fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os(JOURNAL_STREAM) else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    match sys::fstat(std::io::stderr().as_fd()) {
        Ok((_, d, i)) => d == dev && i == ino,
        Err(_) => false,
    }
}

/// One log event: a human message plus structured fields (`GENERATION` is sent as
/// `SOCKHERD_GENERATION`). `kind` becomes `SOCKHERD_EVENT`.
#[must_use = "an event does nothing until emitted"]
#[derive(Debug, Clone)]
pub struct Event {
    level: Level,
    kind: Option<&'static str>,
    message: String,
    fields: Vec<(&'static str, String)>,
}

pub fn event(level: Level, message: impl Into<String>) -> Event {
    Event { level, kind: None, message: message.into(), fields: Vec::new() }
}

pub fn info(message: impl Into<String>) -> Event {
    event(Level::Info, message)
}

pub fn warn(message: impl Into<String>) -> Event {
    event(Level::Warning, message)
}

pub fn error(message: impl Into<String>) -> Event {
    event(Level::Error, message)
}

pub fn debug(message: impl Into<String>) -> Event {
    event(Level::Debug, message)
}

impl Event {
    pub fn level(&self) -> Level {
        self.level
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// `SOCKHERD_EVENT`, if set.
    pub fn event_kind(&self) -> Option<&'static str> {
        self.kind
    }

    pub fn kind(mut self, kind: &'static str) -> Event {
        self.kind = Some(kind);
        self
    }

    /// A structured field's value (`GENERATION` for `SOCKHERD_GENERATION`), if set.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    /// Adds `text` to the human message.
    pub fn note(mut self, text: &str) -> Event {
        self.message.push_str(text);
        self
    }

    pub fn field(mut self, name: &'static str, value: impl ToString) -> Event {
        self.fields.push((name, value.to_string()));
        self
    }

    /// The value of a field set with [`Event::field`].
    pub fn field_value(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    /// Adds `text` to the end of the human message.
    pub fn append(mut self, text: &str) -> Event {
        self.message.push_str(text);
        self
    }

    pub fn emit(self) {
        let logger = LOGGER.get_or_init(|| Logger { sink: Sink::Stderr, max_level: Level::Info });
        if self.level > logger.max_level {
            return;
        }
        if let Sink::Journal(sock) = &logger.sink
            && sock.send(&self.journal_entry()).is_ok()
        {
            return;
        }
        let prefix = match self.level {
            Level::Error => "error: ",
            Level::Warning => "warning: ",
            _ => "",
        };
        let _ = writeln!(std::io::stderr().lock(), "sockherd: {prefix}{}", self.message);
    }

    /// The journal's native protocol: `KEY=value\n`, or for values with a newline
    /// `KEY\n<u64 little-endian length>value\n`.
    fn journal_entry(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        let mut put = |key: &str, value: &str| {
            if value.contains('\n') {
                out.extend_from_slice(key.as_bytes());
                out.push(b'\n');
                out.extend_from_slice(&(value.len() as u64).to_le_bytes());
                out.extend_from_slice(value.as_bytes());
            } else {
                out.extend_from_slice(key.as_bytes());
                out.push(b'=');
                out.extend_from_slice(value.as_bytes());
            }
            out.push(b'\n');
        };
        put("MESSAGE", &self.message);
        put("PRIORITY", &(self.level as u8).to_string());
        put("SYSLOG_IDENTIFIER", "sockherd");
        if let Some(kind) = self.kind {
            put("SOCKHERD_EVENT", kind);
        }
        for (name, value) in &self.fields {
            put(&format!("SOCKHERD_{name}"), value);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_entry_uses_binary_form_for_newlines() {
        let entry = info("two\nlines").kind("spawn").field("GENERATION", 3).journal_entry();
        let text = String::from_utf8_lossy(&entry);
        assert!(text.starts_with("MESSAGE\n"), "{text:?}");
        assert!(text.contains("SOCKHERD_EVENT=spawn\n"));
        assert!(text.contains("SOCKHERD_GENERATION=3\n"));
        assert!(text.contains("PRIORITY=6\n"));
    }
}
