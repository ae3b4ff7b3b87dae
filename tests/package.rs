//! The Debian package: `scripts/package` builds it; dpkg installs it into a fresh root
//! (unpack: files and dpkg's database; the postinst that creates the user is checked as
//! a script); man pages render with `man -l`; the installed unit passes
//! `systemd-analyze verify`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn built_deb(root: &Path) -> PathBuf {
    run(&root.join("scripts/package").to_string_lossy(), &[]);
    let dir = root.join("target/debian");
    std::fs::read_dir(&dir)
        .expect("target/debian")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        .expect("a .deb")
}

#[test]
fn the_deb_installs_its_files_into_a_fresh_root() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let deb = built_deb(root);
    let fresh = std::env::temp_dir().join(format!("extip-root-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&fresh);
    for dir in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
        std::fs::create_dir_all(fresh.join(dir)).unwrap();
    }
    std::fs::write(fresh.join("var/lib/dpkg/status"), "").unwrap();
    let f = fresh.to_string_lossy().into_owned();
    let d = deb.to_string_lossy().into_owned();
    run("dpkg", &["--root", &f, "--force-depends", "--unpack", &d]);
    let listed = run("dpkg", &["--root", &f, "-L", "extip"]);
    for file in [
        "/usr/bin/extip",
        "/usr/bin/extip-sync",
        "/lib/systemd/system/extip-agent.service",
        "/lib/systemd/system/extip-sync.service",
        "/etc/extip/agent.toml",
        "/etc/extip/sync.toml",
        "/usr/share/doc/extip/k8s/rbac.yaml",
        "/usr/share/extip/extip.rules.yml",
        "/usr/share/extip/extip.json",
        "/usr/share/bash-completion/completions/extip",
        "/usr/share/zsh/vendor-completions/_extip",
        "/usr/share/fish/vendor_completions.d/extip.fish",
    ] {
        assert!(
            listed.lines().any(|l| l == file),
            "{file} not installed:\n{listed}"
        );
        // Unpacked, not configured: dpkg keeps a conffile as .dpkg-new until configure.
        let on_disk = fresh.join(&file[1..]);
        let new = fresh.join(format!("{}.dpkg-new", &file[1..]));
        assert!(on_disk.exists() || new.exists(), "{file} missing on disk");
    }
    let man = listed
        .lines()
        .find(|l| l.starts_with("/usr/share/man/man1/extip-agent.1"))
        .unwrap_or_else(|| panic!("no extip-agent man page:\n{listed}"));
    let page = run("man", &["-l", &format!("{f}{man}")]);
    assert!(
        page.contains("--lease-ttl"),
        "the man page lacks the flags:\n{page}"
    );
    let sync_man = listed
        .lines()
        .find(|l| l.starts_with("/usr/share/man/man1/extip-sync.1"))
        .unwrap_or_else(|| panic!("no extip-sync man page:\n{listed}"));
    let page = run("man", &["-l", &format!("{f}{sync_man}")]);
    assert!(page.contains("--allow-external-ip"), "{page}");

    // The postinst creates the unprivileged user the unit runs as.
    let control = fresh.join("control");
    run("dpkg-deb", &["-e", &d, &control.to_string_lossy()]);
    let postinst = std::fs::read_to_string(control.join("postinst")).expect("postinst");
    assert!(postinst.contains("adduser --system --group"), "{postinst}");
    let unit =
        std::fs::read_to_string(fresh.join("lib/systemd/system/extip-agent.service")).unwrap();
    assert!(unit.contains("User=extip") && unit.contains("ExecStart=/usr/bin/extip agent"));
    let copy = fresh.join("extip-agent.service");
    let binary = format!("{f}/usr/bin/extip");
    std::fs::write(&copy, unit.replace("/usr/bin/extip", &binary)).unwrap();
    run("systemd-analyze", &["verify", &copy.to_string_lossy()]);
    let sync_unit =
        std::fs::read_to_string(fresh.join("lib/systemd/system/extip-sync.service")).unwrap();
    let sync_copy = fresh.join("extip-sync.service");
    let sync_binary = format!("{f}/usr/bin/extip-sync");
    std::fs::write(
        &sync_copy,
        sync_unit.replace("/usr/bin/extip-sync ", &format!("{sync_binary} ")),
    )
    .unwrap();
    run("systemd-analyze", &["verify", &sync_copy.to_string_lossy()]);
    std::fs::remove_dir_all(&fresh).unwrap();
}
