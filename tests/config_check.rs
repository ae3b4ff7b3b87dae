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

/// Check a file holding `text`; the output must fail and name every one of `wants`.
fn check_bad_file(tag: &str, text: &str, wants: &[&str]) -> String {
    let dir = std::env::temp_dir().join(format!("extip-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("agent.toml");
    std::fs::write(&bad, text).unwrap();
    let (ok, out) = check(&bad);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!ok, "a bad file passed: {out}");
    for want in wants {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    out
}

#[test]
fn config_check_names_each_bad_key_and_passes_the_example() {
    check_bad_file(
        "cfgcheck",
        "lease_tll = \"5s\"\nallowed-cidr = [\"198.51.100.0/33\"]\nlease-ttl = \"500ms\"\n",
        &[
            "lease_tll: unknown key",
            "allowed-cidr: `198.51.100.0/33` is not a CIDR",
            "lease-ttl: `500ms` is below the minimum lease TTL of 1s",
            "3 problem(s)",
        ],
    );
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/agent.example.toml");
    let (ok, out) = check(&example);
    assert!(ok && out.contains(": ok"), "{out}");
}

#[test]
fn config_check_takes_a_string_for_a_list_and_reports_every_problem() {
    let out = check_bad_file(
        "cfgcheck2",
        "etcd = \"http://192.0.2.250:2379\"\nlease-ttl = \"500ms\"\n\
         announce-count = \"three\"\nallowed-cidr = \"10.0.0.0/33\"\n",
        &[
            "lease-ttl: `500ms` is below the minimum lease TTL of 1s",
            "allowed-cidr: `10.0.0.0/33` is not a CIDR",
            "announce-count: invalid type: string \"three\", expected u32",
            "3 problem(s)",
        ],
    );
    assert!(
        !out.contains("etcd:"),
        "the string etcd was refused:\n{out}"
    );
}

#[test]
fn status_without_etcd_says_once_what_failed_and_what_to_do() {
    // Port 1 on loopback: nothing listens there, the connection is refused at once.
    let out = Command::new(env!("CARGO_BIN_EXE_extip"))
        .args(["status", "--etcd", "http://127.0.0.1:1"])
        .env_remove("EXTIP_ETCD")
        .output()
        .expect("run extip");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "not one line:\n{err}");
    assert!(
        err.contains("cannot reach etcd at http://127.0.0.1:1 (connection refused)")
            && err.contains("--etcd")
            && err.contains("EXTIP_ETCD"),
        "{err}"
    );
    assert!(!err.contains("tonic"), "internals leak:\n{err}");
}

#[test]
fn config_check_names_bad_peer_settings() {
    check_bad_file(
        "cfgpeers",
        "allowed-cidr = [\"198.51.100.0/24\"]\npeers = \"on\"\npeer-suspicion = \"100ms\"\n",
        &["peer-suspicion: `100ms` must be at least 3 × peer-interval"],
    );
    check_bad_file(
        "cfgpeers2",
        "allowed-cidr = [\"198.51.100.0/24\"]\npeers = \"yes\"\n",
        &["peers: `yes` is neither `on` nor `off`"],
    );
}
