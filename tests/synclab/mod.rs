//! The extip-sync lab: agents, the stand-in API server and extip-sync replicas in the
//! lab's etcd namespace. Shared by tests/sync.rs and benches/sync.rs.

#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::kube::ApiServer;
use crate::lab::{wait_for, Lab};

pub const EXTIP_SYNC: &str = env!("CARGO_BIN_EXE_extip-sync");
/// Election TTL of the lab's syncs: a dead leader leads this long.
pub const ELECTION_TTL: Duration = Duration::from_secs(3);
/// Data lease TTL of the lab's syncs: keys of a dead leader would vanish after this.
pub const LEASE_TTL: Duration = Duration::from_secs(12);

/// One extip-sync replica in etcd's namespace; killed on drop.
pub struct SyncReplica {
    /// The process.
    pub child: Child,
    log: std::path::PathBuf,
    identity: String,
    /// Namespace it runs in and its `--listen` address.
    ns: String,
    listen: String,
}

impl SyncReplica {
    /// Its `--identity`.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// `GET path` on its metrics listener: HTTP status and body, read with curl.
    pub fn http(&self, path: &str) -> (u16, String) {
        let url = format!("http://{}{path}", self.listen);
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns,
                "curl",
                "-s",
                "-w",
                "\n%{http_code}",
                &url,
            ])
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// The value of metric `name` (no labels) on its `/metrics`.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = self.http("/metrics");
        crate::lab::sample_value(&body, name)
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for SyncReplica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- {} ----\n{}", self.log.display(), self.log());
        }
    }
}

/// A lab with agents on `hosts` hosts, the stand-in API server and an auto-assign pool.
pub struct SyncLab {
    /// Hosts, etcd, agents.
    pub lab: Lab,
    /// The stand-in API server.
    pub api: ApiServer,
    replicas_started: std::cell::Cell<u16>,
}

impl SyncLab {
    /// `hosts` hosts (agents running if `agents`), the API server, pool `lb`.
    pub fn new(hosts: usize, agents: bool) -> Self {
        let mut lab = Lab::new(hosts);
        if agents {
            lab.start_all();
        }
        Self::on(lab)
    }

    /// The API server and pool `lb` beside the hosts of `lab` (a routed lab, say).
    pub fn on(lab: Lab) -> Self {
        let api = ApiServer::start(Some(&lab.etcd[0].ns), &lab.etcd[0].addr, lab.dir());
        lab.extip(&["pool", "add", "lb", "198.51.100.128/25", "--auto-assign"]);
        SyncLab {
            lab,
            api,
            replicas_started: std::cell::Cell::new(0),
        }
    }

    /// Start a replica named `identity`; `extra` flags are appended.
    pub fn sync(&self, identity: &str, extra: &[&str]) -> SyncReplica {
        let log = self.lab.dir().join(format!("sync-{identity}.log"));
        // Replicas share etcd's namespace: each gets its own metrics port.
        let n = self.replicas_started.get();
        self.replicas_started.set(n + 1);
        let listen = format!("127.0.0.1:{}", 9480 + n);
        let file = std::fs::File::create(&log).expect("sync log");
        let ttl = |d: Duration| format!("{}s", d.as_secs());
        let child = Command::new("ip")
            .args(["netns", "exec", &self.lab.etcd[0].ns, EXTIP_SYNC])
            .args(["--etcd", &self.lab.etcd_url(), "--identity", identity])
            .arg("--kubeconfig")
            .arg(self.api.kubeconfig())
            .args([
                "--lease-ttl",
                &ttl(LEASE_TTL),
                "--election-ttl",
                &ttl(ELECTION_TTL),
            ])
            .args(["--allow-external-ip", "198.51.100.0/25"])
            .args(["--listen", &listen])
            .args(extra)
            .env("EXTIP_LOG", "info,extip=debug")
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .expect("start extip-sync");
        SyncReplica {
            child,
            log,
            identity: identity.to_string(),
            ns: self.lab.etcd[0].ns.clone(),
            listen,
        }
    }

    /// The identity in the leader key, if any.
    pub fn leader(&self) -> Option<String> {
        let value = self.lab.get("/extip/sync/leader")?;
        let json: serde_json::Value = serde_json::from_str(&value).ok()?;
        json["identity"].as_str().map(str::to_string)
    }

    /// Desired keys under /extip/ips/ with their values.
    pub fn desired(&self) -> Vec<(String, serde_json::Value)> {
        let out = self
            .lab
            .etcdctl(&["get", "--prefix", "/extip/ips/"])
            .unwrap_or_default();
        let lines: Vec<&str> = out.lines().collect();
        lines
            .chunks(2)
            .filter_map(|kv| Some((kv[0].to_string(), serde_json::from_str(kv.get(1)?).ok()?)))
            .collect()
    }

    /// Wait until etcd has the desired key of `ip`.
    pub fn wait_desired(&self, ip: &str) {
        let key = format!("/extip/ips/{ip}");
        wait_for(Duration::from_secs(10), || self.lab.get(&key).is_some())
            .unwrap_or_else(|| panic!("{key} never written"));
    }

    /// The ingress IP of every Service that has one, as kubectl prints them.
    pub fn ingress_ips(&self) -> Vec<String> {
        let each = "jsonpath={range .items[*]}{.status.loadBalancer.ingress[0].ip}{\"\\n\"}{end}";
        let out = self.api.kubectl(&["get", "svc", "-o", each]);
        out.lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// `status.loadBalancer.ingress[0].ip` as kubectl prints it.
    pub fn ingress(&self, name: &str) -> String {
        self.api.kubectl(&[
            "get",
            "svc",
            name,
            "-o",
            "jsonpath={.status.loadBalancer.ingress[0].ip}",
        ])
    }
}

/// `etcdctl watch --prefix` in the background: every event under a prefix, for
/// "never written" and "never deleted" checks that no sampling could miss.
pub struct EtcdWatch {
    child: Child,
    out: std::path::PathBuf,
}

impl EtcdWatch {
    /// Watch `prefix`, writing events to the lab file `name`.
    pub fn start(lab: &Lab, prefix: &str, name: &str) -> Self {
        let out = lab.dir().join(name);
        let file = std::fs::File::create(&out).expect("watch file");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.etcd[0].ns,
                "etcdctl",
                "--endpoints",
                &lab.etcd_url(),
            ])
            .args(["watch", "--prefix", prefix])
            .env("ETCDCTL_API", "3")
            .stdout(file)
            .stderr(Stdio::null())
            .spawn()
            .expect("etcdctl watch");
        EtcdWatch { child, out }
    }

    /// Everything seen so far.
    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }
}

impl Drop for EtcdWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Service manifest with port 80 and `body` appended under `spec`.
pub fn service(name: &str, body: &str) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  ports:\n  - port: 80\n{body}")
}

/// Wait until some replica leads; its identity.
pub fn wait_leader(s: &SyncLab) -> String {
    wait_for(Duration::from_secs(15), || s.leader().is_some()).expect("a sync leads");
    s.leader().expect("leader")
}

/// The ClusterRole in config/k8s/rbac.yaml allows every request the syncs made.
/// `expected`: a request the test made the syncs do, so the check cannot pass empty.
pub fn every_sync_request_is_allowed_by_the_shipped_cluster_role(
    api: &ApiServer,
    expected: (&str, &str),
) {
    let rbac = concat!(env!("CARGO_MANIFEST_DIR"), "/config/k8s/rbac.yaml");
    // kubectl parses the file offline (--local) and prints one JSON document per object.
    let text = api.kubectl(&["label", "--local", "-f", rbac, "checked=yes", "-o", "json"]);
    let objects: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&text)
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("rbac.yaml");
    let role = objects
        .iter()
        .find(|o| o["kind"] == "ClusterRole")
        .expect("ClusterRole");
    let allowed = |verb: &str, (group, resource): &(String, String)| {
        role["rules"].as_array().into_iter().flatten().any(|r| {
            let has =
                |field: &str, v: &str| r[field].as_array().into_iter().flatten().any(|x| x == v);
            has("apiGroups", group) && has("resources", resource) && has("verbs", verb)
        })
    };
    let mut used = std::collections::BTreeSet::new();
    for line in api.requests() {
        let mut parts = line.split(' ');
        let (method, target, agent) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        let path = target.split('?').next().unwrap_or("");
        // Core resources under /api/v1/, a group's under /apis/<group>/<version>/.
        let (group, rest) = match path.split('/').collect::<Vec<_>>().as_slice() {
            ["", "api", "v1", ..] => (String::new(), path.trim_start_matches("/api/v1/")),
            ["", "apis", group, version, ..] => {
                let prefix = format!("/apis/{group}/{version}/");
                (group.to_string(), &path[prefix.len().min(path.len())..])
            }
            _ => continue,
        };
        if agent.starts_with("kubectl") {
            continue;
        }
        let segments: Vec<&str> = rest.split('/').collect();
        let (resource, named) = match segments.as_slice() {
            ["namespaces", _, r, _, "status"] => (format!("{r}/status"), true),
            ["namespaces", _, r, _] => (r.to_string(), true),
            ["namespaces", _, r] | [r] => (r.to_string(), false),
            // Cluster-scoped objects (IpPools) have no namespace segment.
            [r, _, "status"] => (format!("{r}/status"), true),
            [r, _] => (r.to_string(), true),
            _ => panic!("unexpected request {line}"),
        };
        let verb = match (method, named) {
            ("GET", _) if target.contains("watch=true") => "watch",
            ("GET", false) => "list",
            ("GET", true) => "get",
            ("POST", _) => "create",
            ("PATCH", _) => "patch",
            ("PUT", _) => "update",
            ("DELETE", _) => "delete",
            _ => panic!("unexpected request {line}"),
        };
        used.insert((verb, (group, resource)));
    }
    eprintln!("requests of extip-sync: {used:?}");
    assert!(
        used.iter()
            .any(|(verb, (_, resource))| (*verb, resource.as_str()) == expected),
        "{used:?}"
    );
    for (verb, resource) in &used {
        assert!(
            allowed(verb, resource),
            "config/k8s/rbac.yaml does not allow {verb} {resource:?}"
        );
    }
    let slices = ("discovery.k8s.io".to_string(), "endpointslices".to_string());
    assert!(used.contains(&("watch", slices)), "{used:?}");
}
