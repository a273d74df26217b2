//! sockherd: hands listening sockets (from systemd socket activation, or bound from `--listen`)
//! to preforking app servers in their own dialect, and supervises them.
//!
//! Exit codes of the `sockherd` binary:
//! - 0: the server stopped cleanly when asked to
//! - 1: sockherd itself failed (bad environment, a socket that cannot be bound, ...)
//! - 2: invalid command line
//! - 126: the command exists but cannot be executed
//! - 127: the command was not found
//! - otherwise the server's own exit status, or 128 + the signal that killed it.
#![deny(unsafe_code)]

pub mod activation;
pub mod cgroup;
pub mod cli;
pub mod command;
pub mod control;
pub mod fdstore;
pub mod flavor;
pub mod generation;
pub mod handoff;
pub mod history;
pub mod listen;
pub mod log;
pub mod metrics;
pub mod native;
pub mod notify;
pub mod procfs;
pub mod protocol;
pub mod queue;
pub mod readiness;
pub mod reexec;
pub mod resources;
pub mod runtime;
pub mod signal;
pub mod sockdiag;
pub mod socket;
pub mod status;
pub mod supervisor;
pub mod sys;
pub mod unitgen;

use std::process::ExitCode;

use clap::Parser;

/// The binary's entry point: parse, run, and print the error chain once.
pub fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // A supervisor re-executed into a build that refuses its command line goes back to
            // the build before, which says why to whoever asked.
            if e.use_stderr() && std::env::var_os(reexec::STATE_ENV).is_some() {
                log::init(false, true);
                if let Some(handed) = reexec::take_handed() {
                    let why = e.to_string();
                    let why = why.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
                    let err = reexec::give_back(handed, &format!("it refuses the command line: {why}"));
                    log::error(format!("{err:#}")).kind("error").emit();
                    return ExitCode::from(1);
                }
            }
            e.exit()
        }
    };
    match cli::dispatch(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            let code = match err.downcast_ref::<command::CommandError>() {
                Some(command::CommandError::NotFound(_)) => 127,
                Some(command::CommandError::NotExecutable(_)) => 126,
                None => 1,
            };
            let chain: Vec<String> = err.chain().map(|e| e.to_string()).collect();
            log::error(chain.join(": ")).kind("error").emit();
            ExitCode::from(code)
        }
    }
}
