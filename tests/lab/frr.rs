//! FRR in the lab: zebra, bfdd and bgpd in a namespace, each with its sockets in a
//! directory of the lab's own, configured by `vtysh -f` with the shipped `config/frr/`
//! files, as `frr.conf` would be on a router. No daemon of the machine's is used.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{run, wait_for, Lab};

/// A shipped FRR config file.
pub fn shipped(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("config/frr")
        .join(name)
}

impl Lab {
    /// Start FRR (zebra, bfdd, bgpd) in namespace `ns` under `name` and load `config`.
    pub fn start_frr(&mut self, ns: &str, name: &str, config: &Path) {
        let dir = self.frr_dir(name);
        std::fs::create_dir_all(&dir).expect("frr dir");
        // The daemons drop to the frr user, which must write its sockets here.
        run("chmod", &["777", &dir.to_string_lossy()]);
        let socket = |file: &str| dir.join(file).to_string_lossy().into_owned();
        let dir_text = dir.to_string_lossy().into_owned();
        for daemon in ["zebra", "bfdd", "bgpd"] {
            let log = std::fs::File::create(dir.join(format!("{daemon}.log"))).expect("log");
            let mut command = Command::new("ip");
            command
                .args(["netns", "exec", ns, &format!("/usr/lib/frr/{daemon}")])
                .args(["-u", "frr", "-g", "frr", "-f", "/dev/null"])
                .args(["-i", &socket(&format!("{daemon}.pid"))])
                .args(["-z", &socket("zserv.api"), "--vty_socket", &dir_text]);
            if daemon == "bfdd" {
                command.args(["--bfdctl", &socket("bfdd.sock")]);
            }
            let child = command
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start an FRR daemon");
            self.daemons.push(child);
            // The others connect to zebra, and vtysh to every daemon's vty socket.
            let ready = dir.join(if daemon == "zebra" {
                "zserv.api".to_string()
            } else {
                format!("{daemon}.vty")
            });
            let up = wait_for(Duration::from_secs(10), || ready.exists());
            assert!(
                up.is_some(),
                "FRR's {daemon} did not start in {ns}: see {}",
                dir.display()
            );
        }
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "vtysh",
                "--vty_socket",
                &dir_text,
                "-f",
            ])
            .arg(config)
            .output()
            .expect("vtysh");
        let said = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !said.contains('%'),
            "FRR refused {}: {said}",
            config.display()
        );
    }

    /// What FRR `name` answers to `command` (`show bgp summary`): for failure messages.
    pub fn vtysh(&self, ns: &str, name: &str, command: &str) -> String {
        let dir = self.frr_dir(name).to_string_lossy().into_owned();
        let args = [
            "netns",
            "exec",
            ns,
            "vtysh",
            "--vty_socket",
            &dir,
            "-c",
            command,
        ];
        let out = Command::new("ip").args(args).output().expect("vtysh");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn frr_dir(&self, name: &str) -> PathBuf {
        self.dir.join(format!("frr-{name}"))
    }
}
