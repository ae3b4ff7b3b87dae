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

#[test]
fn the_agent_unit_verifies_and_scores_as_documented() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let unit = std::fs::read_to_string(root.join(UNIT)).expect("unit");
    let dir = std::env::temp_dir().join(format!("extip-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("extip-agent.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/bin/extip", env!("CARGO_BIN_EXE_extip")),
    )
    .unwrap();
    let (ok, text) = analyze(&["verify", &copy.to_string_lossy()]);
    assert!(
        ok && text.trim().is_empty(),
        "systemd-analyze verify: {text}"
    );

    let (_, text) = analyze(&["security", "--offline=yes", &copy.to_string_lossy()]);
    std::fs::remove_dir_all(&dir).unwrap();
    let score = text
        .lines()
        .find_map(|l| l.split("exposure level for extip-agent.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no score in: {text}"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert!(
        readme.contains(&format!("`systemd-analyze security` rates it {score} OK")),
        "README must quote the score {score}"
    );
}
