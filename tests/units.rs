//! The shipped systemd unit: `systemd-analyze verify` accepts it (with the built binary
//! in place of the installed path) and `systemd-analyze security` rates it as the README
//! says. No systemd runs here; systemd-analyze works offline.

use std::path::Path;
use std::process::Command;

const UNIT: &str = "systemd/extip-agent.service";

fn analyze(args: &[&str]) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .args(args)
        .output()
        .expect("systemd-analyze (Debian package systemd) must be installed");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// `systemd-analyze verify` accepts `unit` (with `installed` replaced by `built`) and
/// `systemd-analyze security` gives it the score the README quotes.
fn verifies_and_scores_as_documented(unit_path: &str, installed: &str, built: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let unit = std::fs::read_to_string(root.join(unit_path)).expect("unit");
    let name = Path::new(unit_path)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let dir = std::env::temp_dir().join(format!("extip-unit-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join(&name);
    std::fs::write(
        &copy,
        unit.replace(&format!("{installed} "), &format!("{built} ")),
    )
    .unwrap();
    let (ok, text) = analyze(&["verify", &copy.to_string_lossy()]);
    assert!(
        ok && text.trim().is_empty(),
        "systemd-analyze verify {name}: {text}"
    );

    let (_, text) = analyze(&["security", "--offline=yes", &copy.to_string_lossy()]);
    std::fs::remove_dir_all(&dir).unwrap();
    let score = text
        .lines()
        .find_map(|l| l.split(&format!("exposure level for {name}: ")).nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no score in: {text}"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let quote = format!("`systemd-analyze security {name}` rates it {score} OK");
    assert!(readme.contains(&quote), "README must say: {quote}");
}

#[test]
fn the_agent_unit_verifies_and_scores_as_documented() {
    verifies_and_scores_as_documented(UNIT, "/usr/bin/extip", env!("CARGO_BIN_EXE_extip"));
}

#[test]
fn the_sync_unit_verifies_and_scores_as_documented() {
    let built = env!("CARGO_BIN_EXE_extip-sync");
    verifies_and_scores_as_documented("systemd/extip-sync.service", "/usr/bin/extip-sync", built);
}
