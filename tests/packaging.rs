//! The Debian package as an operator installs it: `dpkg -i` inside a systemd harness box (the
//! box's throwaway overlay of the root, never the host), then the binary, the unit templates,
//! the man pages and the shell completions where Debian looks for them.
//!
//! The package is built beforehand by `packaging/build-deb` (a release build and cargo-deb take
//! minutes; CI runs it before `cargo test`). A missing or stale package is a missing
//! prerequisite: skipped with the reason, or a failure under SOCKHERD_TEST_REQUIRE=1.
mod common;

use common::sdbox::{SdBox, Systemd};
use common::*;

/// A box with the package installed by `dpkg -i`. The host's systemd: nothing the package
/// holds depends on the systemd version (the units it ships are verified and run on every
/// version of the matrix by tests/systemd.rs).
fn installed(tag: &str) -> Option<SdBox> {
    let deb = built_deb()?;
    let sdbox = SdBox::boot_on(tag, Systemd::V252)?;
    let out = sdbox.ok(&format!("test ! -e /usr/bin/sockherd; dpkg -i {} 2>&1", deb.display()));
    eprintln!("{tag}: {}", out.lines().last().unwrap_or_default());
    Some(sdbox)
}

#[test]
fn deb_installs_the_binary_and_the_unit_templates() {
    let Some(b) = installed("deb-bin") else { return };
    let version = b.ok("/usr/bin/sockherd --version");
    if version.trim() != format!("sockherd {}", env!("CARGO_PKG_VERSION")) {
        b.fail(&format!("/usr/bin/sockherd --version said {version:?}"));
    }
    // The templates exactly as in units/, and the examples as in contrib/.
    b.ok(&format!(
        "diff -r {units} /usr/share/sockherd/units && diff -r {contrib} /usr/share/sockherd/contrib",
        units = repo().join("units").display(),
        contrib = repo().join("contrib").display()
    ));
    // The installed binary writes units that run itself.
    let unit = b.ok("cd / && sockherd unit web -l 127.0.0.1:8080 --systemd-version 252 -- /usr/bin/server 2>/dev/null");
    if !unit.contains("\nExecStart=/usr/bin/sockherd run --flavor systemd -- /usr/bin/server\n") {
        b.fail(&format!("the installed sockherd's unit does not run /usr/bin/sockherd:\n{unit}"));
    }
    // Each path on its own: one left behind must fail the test even if the other is gone.
    let removed = b.ok(
        "dpkg -r sockherd >/dev/null 2>&1; for p in /usr/bin/sockherd /usr/share/sockherd /usr/share/man/man1/sockherd.1.gz \
         /usr/share/bash-completion/completions/sockherd; do if [ -e \"$p\" ]; then echo \"left=$p\"; fi; done",
    );
    if removed.contains("left=") {
        b.fail(&format!("dpkg -r sockherd left files behind:\n{removed}"));
    }
}

#[test]
fn deb_man_pages_render() {
    require!("man");
    let Some(b) = installed("deb-man") else { return };
    let listed = b.ok("dpkg -L sockherd | grep /usr/share/man/man1/ | sort");
    for page in
        ["sockherd.1.gz", "sockherd-run.1.gz", "sockherd-reload.1.gz", "sockherd-status.1.gz", "sockherd-unit.1.gz"]
    {
        if !listed.contains(&format!("/usr/share/man/man1/{page}\n")) {
            b.fail(&format!("the package has no {page}:\n{listed}"));
        }
    }
    let out = b.sh("MANPAGER=cat MANWIDTH=100 man sockherd");
    let page = String::from_utf8_lossy(&out.stdout);
    // man justifies lines: compare with single spaces.
    let flat = page.split_whitespace().collect::<Vec<_>>().join(" ");
    let warnings = String::from_utf8_lossy(&out.stderr);
    for want in [
        "NAME",
        "sockherd - Hands systemd's",
        "SUBCOMMANDS",
        "sockherd-unit(1)",
        "EXIT STATUS",
        "/usr/share/sockherd/units/",
    ] {
        if !out.status.success() || !flat.contains(want) {
            b.fail(&format!("`man sockherd` ({:?}) lacks {want:?}:\n{page}\n{warnings}", out.status));
        }
    }
    if !warnings.trim().is_empty() {
        b.fail(&format!("`man sockherd` warned:\n{warnings}"));
    }
    let unit = b.ok("MANPAGER=cat MANWIDTH=100 man sockherd-unit");
    if !unit.contains("--systemd-version") || !unit.contains("--listen") {
        b.fail(&format!("`man sockherd-unit` lacks its options:\n{unit}"));
    }
}

#[test]
fn deb_installs_shell_completions() {
    let Some(b) = installed("deb-completions") else { return };
    b.ok("test -s /usr/share/zsh/vendor-completions/_sockherd && test -s /usr/share/fish/vendor_completions.d/sockherd.fish");
    // bash: the file defines the completion, and completing `sockherd st` offers status.
    let bash = b.ok(
        "bash -c 'source /usr/share/bash-completion/completions/sockherd && complete -p sockherd && \
         COMP_WORDS=(sockherd st) COMP_CWORD=1 COMP_LINE=\"sockherd st\" COMP_POINT=11 && _sockherd sockherd st sockherd && \
         echo \"offers: ${COMPREPLY[*]}\"'",
    );
    if !bash.contains("complete -o bashdefault -o default -o nosort -F _sockherd sockherd")
        || !bash.contains("offers: status")
    {
        b.fail(&format!("bash completion:\n{bash}"));
    }
}
