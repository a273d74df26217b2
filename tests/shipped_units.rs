//! The units of units/ as shipped, checked offline by systemd's own tools: the exposure score
//! `systemd-analyze security` gives each service is at most what README.md claims (1.2 for the
//! `sockherd run` units, 1.3 for the native ones, whose reload runs as root).
mod common;

use common::*;
use std::process::Command;

/// (unit directory, the exposure README.md claims for it).
const CLAIMS: [(&str, f64); 6] =
    [("gunicorn", 1.2), ("unicorn", 1.2), ("puma", 1.2), ("generic", 1.2), ("unicorn-native", 1.3), ("nginx", 1.3)];

#[test]
fn shipped_services_have_the_exposure_the_readme_claims() {
    require!("systemd-analyze");
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let flat = readme.split_whitespace().collect::<Vec<_>>().join(" ");
    if !flat.contains("exposure: 1.2 for gunicorn, unicorn, puma and generic; 1.3 for the native units") {
        panic!("README.md no longer states the exposure claims this test checks: update both together");
    }
    let mut problems = Vec::new();
    for (dir, claim) in CLAIMS {
        let unit = repo().join("units").join(dir).join("app.service");
        let out = Command::new("systemd-analyze").args(["security", "--offline=yes"]).arg(&unit).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        let score: Option<f64> = text
            .lines()
            .find_map(|l| l.split("Overall exposure level for app.service: ").nth(1))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok());
        match score {
            Some(score) if score <= claim + 1e-9 => eprintln!("units/{dir}: exposure {score} (README: {claim})"),
            other => problems.push(format!("units/{dir}/app.service: exposure {other:?}, README claims {claim}")),
        }
    }
    if !problems.is_empty() {
        panic!("{}", problems.join("\n"));
    }
}
