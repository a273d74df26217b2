//! The units of units/ as shipped, checked offline by systemd's own tools: the exposure score
//! `systemd-analyze security` gives each service is at most what README.md claims (1.0 for the
//! `sockherd run` units, 1.3 for the native ones, whose reload runs as root), by the host's
//! systemd-analyze (252) and by the newest of the matrix (262) inside a box.
mod common;

use common::sdbox::{SdBox, Systemd};
use common::*;
use std::path::Path;
use std::process::Command;

/// (unit directory, the exposure README.md claims for it).
const CLAIMS: [(&str, f64); 6] =
    [("gunicorn", 1.0), ("unicorn", 1.0), ("puma", 1.0), ("generic", 1.0), ("unicorn-native", 1.3), ("nginx", 1.3)];

/// Checks every claim against `analyze(unit file)`, the output of `systemd-analyze security
/// --offline=yes` for it; `who` names the systemd-analyze in the messages.
fn check_claims(who: &str, analyze: impl Fn(&Path) -> String) {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let flat = readme.split_whitespace().collect::<Vec<_>>().join(" ");
    if !flat.contains("exposure: 1.0 for gunicorn, unicorn, puma and generic; 1.3 for the native units") {
        panic!("README.md no longer states the exposure claims this test checks: update both together");
    }
    let mut problems = Vec::new();
    for (dir, claim) in CLAIMS {
        let unit = repo().join("units").join(dir).join("app.service");
        let text = analyze(&unit);
        let score: Option<f64> = text
            .lines()
            .find_map(|l| l.split("Overall exposure level for app.service: ").nth(1))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok());
        match score {
            Some(score) if score <= claim + 1e-9 => eprintln!("{who}: units/{dir}: exposure {score} (README: {claim})"),
            other => problems
                .push(format!("{who}: units/{dir}/app.service: exposure {other:?}, README claims {claim}\n{text}")),
        }
    }
    if !problems.is_empty() {
        panic!("{}", problems.join("\n"));
    }
}

#[test]
fn shipped_services_have_the_exposure_the_readme_claims() {
    require!("systemd-analyze");
    check_claims("the host's systemd-analyze", |unit| {
        let out = Command::new("systemd-analyze").args(["security", "--offline=yes"]).arg(unit).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    });
}

/// The same claims by the newest systemd of the matrix, whose checks may weigh differently.
#[test]
fn shipped_services_have_the_exposure_the_readme_claims_on_systemd_262() {
    let Some(sdbox) = SdBox::boot_on("exposure", Systemd::V262) else { return };
    check_claims("systemd-analyze 262", |unit| {
        let out = sdbox.sh(&format!("systemd-analyze security --offline=yes '{}' 2>&1", unit.display()));
        String::from_utf8_lossy(&out.stdout).into_owned()
    });
}
