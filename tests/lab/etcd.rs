//! The lab's etcd: members in their own namespaces, etcdctl, faults between hosts and etcd.

use std::process::{Command, Stdio};
use std::time::Duration;

use super::{run, wait_for, Lab};

impl Lab {
    pub(super) fn start_etcd(&mut self) {
        for k in 0..self.etcd.len() {
            self.start_member(k);
        }
        let ready = wait_for(Duration::from_secs(20), || {
            self.etcdctl(&["endpoint", "health", "--cluster"]).is_ok()
        });
        assert!(
            ready.is_some(),
            "etcd did not become healthy: {}",
            self.file("m1.log")
        );
    }

    /// Start member `k` (again): a restarted member keeps its data directory.
    pub fn start_member(&mut self, k: usize) {
        let cluster: Vec<String> = self
            .etcd
            .iter()
            .map(|m| format!("{}=http://{}:2380", m.name, m.addr))
            .collect();
        let m = &self.etcd[k];
        let data = self.dir.join(format!("{}-data", m.name));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", m.name)))
            .expect("etcd log");
        let client = format!("http://{}:2379", m.addr);
        let peer = format!("http://{}:2380", m.addr);
        let child = Command::new("ip")
            .args(["netns", "exec", &m.ns, "etcd", "--name", &m.name])
            .arg("--data-dir")
            .arg(&data)
            .args([
                "--listen-client-urls",
                &format!("{client},http://127.0.0.1:2379"),
            ])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &cluster.join(",")])
            .args(["--initial-cluster-token", &self.name])
            .args(&self.etcd_flags)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.etcd[k].child = Some(child);
    }

    /// SIGKILL member `k` and reap it.
    pub fn kill_member(&mut self, k: usize) {
        if let Some(mut child) = self.etcd[k].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Send `signal` (e.g. "STOP", "CONT") to member `k`.
    pub fn signal_member(&self, k: usize, signal: &str) {
        let child = self.etcd[k].child.as_ref().expect("member running");
        run("kill", &[&format!("-{signal}"), &child.id().to_string()]);
    }

    /// Index of the current leader, asked of the running members.
    pub fn leader(&self) -> Option<usize> {
        let running: Vec<String> = self
            .etcd
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| format!("http://{}:2379", m.addr))
            .collect();
        let args = ["endpoint", "status", "-w", "json"];
        let out = self.etcdctl_at(&running.join(","), &args).ok()?;
        let statuses: serde_json::Value = serde_json::from_str(&out).ok()?;
        let endpoint = statuses.as_array()?.iter().find_map(|s| {
            let me = s["Status"]["header"]["member_id"].as_u64()?;
            (s["Status"]["leader"].as_u64()? == me)
                .then(|| s["Endpoint"].as_str().map(str::to_string))?
        })?;
        self.etcd.iter().position(|m| endpoint.contains(&m.addr))
    }

    /// Drop host `i`'s traffic to every etcd member; everyone else still reaches it.
    pub fn isolate_from_etcd(&self, i: usize) {
        self.blackhole_etcd(i, "add");
    }

    /// Undo [`Lab::isolate_from_etcd`].
    pub fn heal(&self, i: usize) {
        self.blackhole_etcd(i, "del");
    }

    fn blackhole_etcd(&self, i: usize, op: &str) {
        let ns = self.hosts[i].ns.as_str();
        for m in &self.etcd {
            let dest = format!("{}/32", m.addr);
            run("ip", &["-n", ns, "route", op, "blackhole", &dest]);
        }
    }

    /// The client URLs agents use, comma separated.
    pub fn etcd_url(&self) -> String {
        let urls: Vec<String> = self
            .etcd
            .iter()
            .map(|m| format!("http://{}:2379", m.addr))
            .collect();
        urls.join(",")
    }

    /// Run etcdctl (API v3) from m1's namespace against every member.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String, String> {
        self.etcdctl_at(&self.etcd_url(), args)
    }

    /// `etcdctl` (API v3) from m1's namespace against every member, not yet run: for
    /// one that keeps running, such as `watch`.
    pub fn etcdctl_command(&self, args: &[&str]) -> Command {
        self.etcdctl_in_lab(&self.etcd_url(), args)
    }

    /// `etcdctl` (API v3) run from m1's namespace against `endpoints`.
    fn etcdctl_in_lab(&self, endpoints: &str, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.etcd[0].ns, "etcdctl"])
            .args(["--endpoints", endpoints])
            .args(args)
            .env("ETCDCTL_API", "3");
        command
    }

    pub(super) fn etcdctl_at(&self, endpoints: &str, args: &[&str]) -> Result<String, String> {
        let timed: Vec<&str> = ["--command-timeout", "5s"]
            .into_iter()
            .chain(args.iter().copied())
            .collect();
        let out = self
            .etcdctl_in_lab(endpoints, &timed)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// `etcdctl put`.
    pub fn put(&self, key: &str, value: &str) {
        self.etcdctl(&["put", key, "--", value])
            .expect("etcdctl put");
    }

    /// `etcdctl put` with the value on standard input (for values too big for argv).
    pub fn put_stdin(&self, key: &str, value: &[u8]) {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.etcd[0].ns, "etcdctl"])
            .args(["--endpoints", &self.etcd_url(), "put", key])
            .env("ETCDCTL_API", "3")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("etcdctl");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(value)
            .expect("write value");
        assert!(
            child.wait().expect("etcdctl").success(),
            "etcdctl put {key} failed"
        );
    }

    /// Put many keys with `etcdctl txn`, 100 per transaction (etcd allows 128).
    /// Values must not contain spaces.
    pub fn put_many(&self, pairs: &[(String, String)]) {
        use std::io::Write;
        for batch in pairs.chunks(100) {
            let mut script = String::from("\n");
            for (k, v) in batch {
                script.push_str(&format!("put {k} {v}\n"));
            }
            script.push_str("\n\n");
            let mut child = Command::new("ip")
                .args(["netns", "exec", &self.etcd[0].ns, "etcdctl"])
                .args(["--endpoints", &self.etcd_url(), "txn"])
                .env("ETCDCTL_API", "3")
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
                .expect("etcdctl txn");
            let mut stdin = child.stdin.take().expect("stdin");
            stdin.write_all(script.as_bytes()).expect("txn script");
            drop(stdin);
            assert!(
                child.wait().expect("etcdctl").success(),
                "etcdctl txn failed"
            );
        }
    }

    /// Run the `extip` CLI from m1's namespace against this lab's etcd.
    pub fn extip(&self, args: &[&str]) -> String {
        let mut full = vec!["netns", "exec", self.etcd[0].ns.as_str(), super::EXTIP];
        full.extend_from_slice(args);
        let url = self.etcd_url();
        full.extend_from_slice(&["--etcd", &url]);
        run("ip", &full)
    }

    /// `etcdctl del`.
    pub fn del(&self, key: &str) {
        self.etcdctl(&["del", key]).expect("etcdctl del");
    }

    /// The value of `key`, if it exists.
    pub fn get(&self, key: &str) -> Option<String> {
        let out = self
            .etcdctl(&["get", "--print-value-only", key])
            .expect("etcdctl get");
        let value = out.trim_end_matches('\n');
        (!value.is_empty()).then(|| value.to_string())
    }
}
