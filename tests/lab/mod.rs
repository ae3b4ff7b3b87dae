//! The lab: hosts as network namespaces on one bridge, a real etcd, real agents.
//!
//! Everything lives in namespaces named `extip-lab-<pid>-<n>-…`: a switch namespace
//! holds the bridge, etcd has its own namespace, each host has `eth0` on the bridge.
//! Nothing is attached to the root namespace, so lab traffic cannot leave the machine.
//! Results are read with `ip -j` and `etcdctl`, never with extip's own code.
//! `Drop` kills every process and deletes every namespace, also when a test panics;
//! leftovers of a killed test run are removed by the next run.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

mod etcd;
pub mod fence;
pub mod fleet;
pub mod frr;
pub mod holders;
pub mod l2;
pub mod monitor;
#[path = "../common/netns.rs"]
pub mod netns;
pub mod peers;
pub mod routing;
pub mod secure;
pub mod vrrp;
pub mod wire;

const NAME_PREFIX: &str = "extip-lab-";
/// The address of the client station that [`Lab::add_client`] adds.
pub const CLIENT_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(192, 0, 2, 200);
/// The extip binary under test.
pub const EXTIP: &str = env!("CARGO_BIN_EXE_extip");

static COUNTER: AtomicUsize = AtomicUsize::new(0);
/// Labs run one at a time: failover timings on a 2-core machine need the CPU.
static SERIAL: Mutex<()> = Mutex::new(());

/// One host namespace and its agent.
pub struct Host {
    /// Node name given to its agent: h1, h2, …
    pub name: String,
    /// Namespace name.
    pub ns: String,
    /// Its bridge port in the switch namespace.
    port: String,
    agent: Option<Child>,
    runs: usize,
}

/// One etcd member in its own namespace.
pub struct Member {
    /// Member name: m1, m2, …
    pub name: String,
    /// Namespace name.
    pub ns: String,
    /// Address on the bridge.
    pub addr: String,
    child: Option<Child>,
}

/// A running lab; dropped, it leaves nothing behind.
pub struct Lab {
    name: String,
    dir: PathBuf,
    switch: String,
    /// The etcd members, index 0 is m1.
    pub etcd: Vec<Member>,
    clients: Vec<String>,
    /// Other daemons (BIRD), killed on drop.
    daemons: Vec<Child>,
    /// The hosts, index 0 is h1.
    pub hosts: Vec<Host>,
    /// Extra environment for agents started from now on (e.g. `NOTIFY_SOCKET`).
    pub agent_env: Vec<(String, String)>,
    /// The `--lease-ttl` agents get unless a test gives one (`None`: the agent's default).
    pub agent_ttl: Option<&'static str>,
    /// Extra flags for every etcd member (e.g. the fast profile's timers).
    etcd_flags: Vec<String>,
    _serial: MutexGuard<'static, ()>,
}

/// Run a command, panic with its stderr when it fails; returns stdout.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn require_root() {
    let uid = run("id", &["-u"]);
    assert_eq!(
        uid.trim(),
        "0",
        "lab tests need root for network namespaces: run `scripts/test` as root"
    );
    for tool in ["ip", "etcd", "etcdctl", "nft"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(
            found,
            "lab tests need `{tool}`: run `scripts/test`, which installs it"
        );
    }
}

/// Delete namespaces and kill processes left by lab runs whose process is gone.
fn remove_stale_labs() {
    for line in run("ip", &["netns", "list"]).lines() {
        let ns = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = ns.strip_prefix(NAME_PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or("");
        if PathBuf::from(format!("/proc/{pid}")).exists() {
            continue;
        }
        kill_namespace(ns);
    }
    let Ok(dirs) = std::fs::read_dir("/dev/shm") else {
        return;
    };
    for dir in dirs.flatten() {
        let name = dir.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(NAME_PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or("");
        if !PathBuf::from(format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(dir.path());
        }
    }
}

fn kill_namespace(ns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
    }
    let _ = Command::new("ip").args(["netns", "del", ns]).status();
}

impl Lab {
    /// A lab with `hosts` host namespaces and a running single-member etcd.
    pub fn new(hosts: usize) -> Lab {
        Lab::with_cluster(hosts, 1)
    }

    /// A lab with `hosts` host namespaces and an etcd cluster of `members`.
    pub fn with_cluster(hosts: usize, members: usize) -> Lab {
        Lab::with_etcd_flags(hosts, members, &[])
    }

    /// A lab whose etcd members run with extra `flags`.
    pub fn with_etcd_flags(hosts: usize, members: usize, flags: &[&str]) -> Lab {
        require_root();
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        remove_stale_labs();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("{NAME_PREFIX}{}-{n}", std::process::id());
        // tmpfs: etcd's fsync then costs nothing, keeping timings about extip.
        let dir = PathBuf::from(format!("/dev/shm/{name}"));
        std::fs::create_dir_all(&dir).expect("lab dir");
        let mut lab = Lab {
            switch: format!("{name}-sw"),
            name,
            dir,
            etcd: Vec::new(),
            clients: Vec::new(),
            daemons: Vec::new(),
            hosts: Vec::new(),
            agent_env: Vec::new(),
            agent_ttl: Some("2s"),
            etcd_flags: flags.iter().map(ToString::to_string).collect(),
            _serial: serial,
        };
        lab.build_switch();
        for k in 1..=members {
            let ns = format!("{}-m{k}", lab.name);
            let addr = format!("192.0.2.{}", 249 + k);
            lab.attach(&format!("e{k}"), &ns, &addr);
            lab.etcd.push(Member {
                name: format!("m{k}"),
                ns,
                addr,
                child: None,
            });
        }
        for i in 1..=hosts {
            let ns = format!("{}-h{i}", lab.name);
            lab.attach(&format!("p{i}"), &ns, &format!("192.0.2.{i}"));
            lab.hosts.push(Host {
                name: format!("h{i}"),
                ns,
                port: format!("p{i}"),
                agent: None,
                runs: 0,
            });
        }
        lab.start_etcd();
        lab
    }

    fn build_switch(&self) {
        run("ip", &["netns", "add", &self.switch]);
        let sw = self.switch.as_str();
        run("ip", &["-n", sw, "link", "add", "br0", "type", "bridge"]);
        run("ip", &["-n", sw, "link", "set", "br0", "up"]);
    }

    /// A namespace with `lo` up and `eth0` on the bridge through port `port`.
    fn attach(&self, port: &str, ns: &str, addr: &str) {
        let sw = self.switch.as_str();
        run("ip", &["netns", "add", ns]);
        run("ip", &["-n", ns, "link", "set", "lo", "up"]);
        run(
            "ip",
            &[
                "-n", sw, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ],
        );
        run(
            "ip",
            &["-n", sw, "link", "set", port, "master", "br0", "up"],
        );
        run(
            "ip",
            &[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ],
        );
        run("ip", &["-n", ns, "link", "set", "eth0", "up"]);
    }

    /// Start host `i`'s agent with the acceptance settings; flags in `extra` replace them.
    pub fn start_agent(&mut self, i: usize, extra: &[&str]) {
        let url = self.etcd_url();
        let state = self.dir.join(format!("{}-state", self.hosts[i].name));
        let state = state.to_string_lossy().into_owned();
        let defaults = [
            ("--state-dir", state.as_str()),
            ("--etcd", url.as_str()),
            ("--node", self.hosts[i].name.as_str()),
            ("--interface", "lo"),
            ("--lease-ttl", self.agent_ttl.unwrap_or_default()),
            ("--allowed-cidr", "198.51.100.0/24"),
        ];
        let mut args: Vec<String> = Vec::new();
        for (flag, value) in defaults {
            let agent_default = flag == "--lease-ttl" && self.agent_ttl.is_none();
            if !extra.contains(&flag) && !agent_default {
                args.extend([flag.to_string(), value.to_string()]);
            }
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        self.start_agent_raw(i, &args);
    }

    /// Start host `i`'s agent with exactly `args` after `extip agent`.
    pub fn start_agent_raw(&mut self, i: usize, args: &[String]) {
        assert!(self.hosts[i].agent.is_none(), "agent {i} already running");
        self.hosts[i].runs += 1;
        let log_path = self
            .dir
            .join(format!("{}.{}.log", self.hosts[i].name, self.hosts[i].runs));
        let log = std::fs::File::create(&log_path).expect("agent log");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.hosts[i].ns, EXTIP, "agent"])
            .args(args)
            .env("EXTIP_LOG", "info")
            .envs(self.agent_env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start agent");
        self.hosts[i].agent = Some(child);
    }

    /// Start every host's agent with the acceptance settings.
    pub fn start_all(&mut self) {
        for i in 0..self.hosts.len() {
            self.start_agent(i, &[]);
        }
    }

    /// The process ID of host `i`'s agent, if it runs.
    pub fn agent_pid(&self, i: usize) -> Option<u32> {
        self.hosts[i].agent.as_ref().map(Child::id)
    }

    /// Send `signal` (e.g. "KILL", "TERM") to host `i`'s agent.
    pub fn signal(&self, i: usize, signal: &str) {
        let child = self.hosts[i].agent.as_ref().expect("agent running");
        run("kill", &[&format!("-{signal}"), &child.id().to_string()]);
    }

    /// Wait up to `timeout` for host `i`'s agent to exit; its exit code.
    pub fn wait_exit(&mut self, i: usize, timeout: Duration) -> Option<i32> {
        let child = self.hosts[i].agent.as_mut().expect("agent running");
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.hosts[i].agent = None;
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }

    /// SIGKILL host `i`'s agent and reap it.
    pub fn kill(&mut self, i: usize) {
        self.signal(i, "KILL");
        self.wait_exit(i, Duration::from_secs(5))
            .expect("killed agent exits");
    }

    /// Give every host an `eth1` on a second bridge (a data plane apart from etcd's path).
    pub fn add_data_plane(&self) {
        let sw = self.switch.as_str();
        run("ip", &["-n", sw, "link", "add", "br1", "type", "bridge"]);
        run("ip", &["-n", sw, "link", "set", "br1", "up"]);
        for (i, host) in self.hosts.iter().enumerate() {
            let port = format!("d{}", i + 1);
            let ns = host.ns.as_str();
            run(
                "ip",
                &[
                    "-n", sw, "link", "add", &port, "type", "veth", "peer", "name", "eth1",
                    "netns", ns,
                ],
            );
            run(
                "ip",
                &["-n", sw, "link", "set", &port, "master", "br1", "up"],
            );
            run("ip", &["-n", ns, "link", "set", "eth1", "up"]);
        }
    }

    /// Add a client namespace on the bridge at [`CLIENT_IP`]; returns its namespace name.
    /// A second call returns the same namespace (one client per lab).
    pub fn add_client(&mut self) -> String {
        let ns = format!("{}-client", self.name);
        if self.clients.contains(&ns) {
            return ns;
        }
        self.add_station("client", &CLIENT_IP.to_string())
    }

    /// Add a namespace `tag` (a few letters) on the bridge at `addr`/24 on its `eth0`.
    pub fn add_station(&mut self, tag: &str, addr: &str) -> String {
        let ns = format!("{}-{tag}", self.name);
        self.attach(&format!("p{tag}"), &ns, addr);
        self.clients.push(ns.clone());
        ns
    }

    /// Take host `i` off the bridge (its link to etcd and everyone else).
    pub fn cut(&self, i: usize) {
        run(
            "ip",
            &[
                "-n",
                &self.switch,
                "link",
                "set",
                &self.hosts[i].port,
                "down",
            ],
        );
    }

    /// Put host `i` back on the bridge.
    pub fn reconnect(&self, i: usize) {
        run(
            "ip",
            &["-n", &self.switch, "link", "set", &self.hosts[i].port, "up"],
        );
    }

    /// Addresses (`ip/len`) on `dev` in host `i`, read with `ip -j addr`.
    pub fn addresses(&self, i: usize, dev: &str) -> Vec<String> {
        monitor::addresses(&self.hosts[i].ns, dev)
    }

    /// Hosts with `ip` (any mask) on `lo`.
    pub fn holders(&self, ip: &str) -> Vec<usize> {
        (0..self.hosts.len())
            .filter(|&i| monitor::has_ip(&self.addresses(i, "lo"), ip))
            .collect()
    }

    /// Namespace names of the given hosts, for a monitor thread.
    pub fn namespaces(&self, hosts: &[usize]) -> Vec<String> {
        hosts.iter().map(|&i| self.hosts[i].ns.clone()).collect()
    }

    /// Run `args` inside host `i`'s namespace.
    pub fn exec(&self, i: usize, args: &[&str]) -> String {
        let mut full = vec!["netns", "exec", self.hosts[i].ns.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Every log of host `i`'s agent runs, concatenated.
    pub fn agent_log(&self, i: usize) -> String {
        (1..=self.hosts[i].runs)
            .map(|r| self.file(&format!("{}.{r}.log", self.hosts[i].name)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Write `text` to a file in the lab's directory; returns its path.
    pub fn write_file(&self, name: &str, text: &str) -> String {
        let path = self.dir.join(name);
        std::fs::write(&path, text).expect("lab file");
        path.to_string_lossy().into_owned()
    }

    /// The lab's directory (tmpfs), removed on drop.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    pub(crate) fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }
}

/// The value of the sample line `name value` (no labels) in a Prometheus exposition.
pub fn sample_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Poll `check` every 5 ms until it holds; the time it took, or `None` after `timeout`.
pub fn wait_for(timeout: Duration, check: impl FnMut() -> bool) -> Option<Duration> {
    wait_every(Duration::from_millis(5), timeout, check)
}

/// [`wait_for`], checking every `interval`: for checks costly enough to disturb what
/// they watch.
pub fn wait_every(
    interval: Duration,
    timeout: Duration,
    mut check: impl FnMut() -> bool,
) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if check() {
            return Some(start.elapsed());
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(interval);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for i in 0..self.hosts.len() {
                eprintln!(
                    "---- log of {} ----\n{}",
                    self.hosts[i].name,
                    self.agent_log(i)
                );
            }
        }
        for host in &mut self.hosts {
            if let Some(mut child) = host.agent.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        for k in 0..self.etcd.len() {
            if self.etcd[k].child.is_some() {
                let _ = Command::new("kill")
                    .args([
                        "-CONT",
                        &self.etcd[k].child.as_ref().unwrap().id().to_string(),
                    ])
                    .status();
            }
            self.kill_member(k);
        }
        for host in &self.hosts {
            kill_namespace(&host.ns);
        }
        for mut child in self.daemons.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in &self.clients {
            kill_namespace(ns);
        }
        for m in &self.etcd {
            kill_namespace(&m.ns);
        }
        kill_namespace(&self.switch);
        // EXTIP_LAB_KEEP=1 keeps the logs and configs for a look after the run.
        if std::env::var_os("EXTIP_LAB_KEEP").is_some() {
            eprintln!("lab files kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A flag shared with monitor threads.
pub type Shared<T> = Arc<Mutex<T>>;
