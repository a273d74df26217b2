//! contrib/deploy/deploy.sh's own bookkeeping: which releases it prunes, where `current` points
//! after a good and a failed deploy. `systemctl` is a stand-in on PATH that records its
//! arguments and succeeds or fails as told: the reload itself, inside a real systemd, is tested
//! by tests/systemd.rs (`deploy_recipe_deploys_and_fails_loudly`).
mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn deploy(root: &Path, stub: &Path, source: &Path, keep: &str, reload_ok: bool) -> Output {
    let path = format!("{}:{}", stub.display(), std::env::var("PATH").unwrap_or_default());
    Command::new("bash")
        .arg(repo().join("contrib/deploy/deploy.sh"))
        .arg(source)
        .arg(root)
        .arg("shop")
        .env("PATH", path)
        .env("KEEP", keep)
        .env("STUB_RC", if reload_ok { "0" } else { "1" })
        .output()
        .expect("run deploy.sh")
}

fn releases(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root.join("releases"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn current(root: &Path) -> String {
    std::fs::read_link(root.join("current")).unwrap().display().to_string()
}

#[test]
fn deploy_prunes_all_but_the_newest_releases_and_rolls_current_back_on_failure() {
    require!("bash");
    let dir = TempDir::new("deploy-prune");
    let (root, stub, source) = (dir.join("srv"), dir.join("stub"), dir.join("source"));
    std::fs::create_dir_all(&stub).unwrap();
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(source.join("app.py"), "# app\n").unwrap();
    let systemctl = stub.join("systemctl");
    std::fs::write(
        &systemctl,
        format!("#!/bin/sh\necho \"$@\" >>'{}'\nexit \"$STUB_RC\"\n", dir.join("calls").display()),
    )
    .unwrap();
    std::fs::set_permissions(&systemctl, std::fs::Permissions::from_mode(0o755)).unwrap();

    let mut deployed = Vec::new();
    for _ in 0..4 {
        let out = deploy(&root, &stub, &source, "2", true);
        if !out.status.success() {
            panic!("a good deploy failed: {:?} {}", out.status, String::from_utf8_lossy(&out.stderr));
        }
        deployed.push(current(&root));
    }
    let kept = releases(&root);
    let newest: Vec<String> = deployed[2..].iter().map(|p| p.trim_start_matches("releases/").to_string()).collect();
    if kept != newest || current(&root) != deployed[3] {
        panic!(
            "KEEP=2: the 2 newest releases should stay ({newest:?}), current -> the last; kept {kept:?}, current {}",
            current(&root)
        );
    }
    let calls = std::fs::read_to_string(dir.join("calls")).unwrap();
    if calls.lines().collect::<Vec<_>>() != ["reload shop"; 4] {
        panic!("each deploy should run `systemctl reload shop` once: {calls:?}");
    }

    // A failed reload: non-zero, current back at the previous release, nothing pruned.
    let out = deploy(&root, &stub, &source, "2", false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || !stderr.contains("reload of shop failed") || current(&root) != deployed[3] {
        panic!("a failed deploy: {:?} {stderr}; current {} (want {})", out.status, current(&root), deployed[3]);
    }
    if releases(&root).len() != 3 || !releases(&root).starts_with(&kept) {
        panic!("a failed deploy must prune nothing: {:?}", releases(&root));
    }
}
