//! `extip config check`: every problem of a file, each with its key; the shipped
//! example passes.

use std::process::Command;

fn check(path: &std::path::Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_extip"))
        .args(["config", "check", "--config"])
        .arg(path)
        .env_remove("EXTIP_CONFIG")
        .output()
        .expect("run extip");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn config_check_names_each_bad_key_and_passes_the_example() {
    let dir = std::env::temp_dir().join(format!("extip-cfgcheck-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("agent.toml");
    std::fs::write(
        &bad,
        "lease_tll = \"5s\"\nallowed-cidr = [\"198.51.100.0/33\"]\nlease-ttl = \"1s\"\n",
    )
    .unwrap();
    let (ok, out) = check(&bad);
    assert!(!ok, "a bad file passed: {out}");
    for want in [
        "lease_tll: unknown key",
        "allowed-cidr: `198.51.100.0/33` is not a CIDR",
        "lease-ttl: `1s` is below etcd's minimum lease TTL of 2s",
        "3 problem(s)",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/agent.example.toml");
    let (ok, out) = check(&example);
    assert!(ok && out.contains(": ok"), "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}
