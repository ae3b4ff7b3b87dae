//! Routing in the lab: a router namespace on the bridge (192.0.2.254) peering over BGP
//! with BIRD on every host, and a client behind the router (192.0.2.246/30). BIRD runs
//! the configs shipped in `config/bird/`, so the tests check what operators install.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::{run, Lab};

/// The client's address behind the router.
pub const CLIENT: &str = "192.0.2.246";
/// The router's address on the bridge.
pub const ROUTER: &str = "192.0.2.254";

fn shipped(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("config/bird")
        .join(name)
}

impl Lab {
    /// Add the router and the client; returns (router namespace, client namespace).
    pub fn add_router(&mut self) -> (String, String) {
        let router = format!("{}-r1", self.name);
        let client = format!("{}-rc", self.name);
        self.attach("pr", &router, ROUTER);
        run("ip", &["netns", "add", &client]);
        run("ip", &["-n", &client, "link", "set", "lo", "up"]);
        let peer = [
            "link", "add", "eth1", "type", "veth", "peer", "name", "eth0", "netns", &client,
        ];
        run("ip", &[&["-n", router.as_str()][..], &peer[..]].concat());
        run(
            "ip",
            &[
                "-n",
                &router,
                "addr",
                "add",
                "192.0.2.245/30",
                "dev",
                "eth1",
            ],
        );
        run("ip", &["-n", &router, "link", "set", "eth1", "up"]);
        run(
            "ip",
            &[
                "-n",
                &client,
                "addr",
                "add",
                &format!("{CLIENT}/30"),
                "dev",
                "eth0",
            ],
        );
        run("ip", &["-n", &client, "link", "set", "eth0", "up"]);
        run(
            "ip",
            &[
                "-n",
                &client,
                "route",
                "add",
                "default",
                "via",
                "192.0.2.245",
            ],
        );
        run(
            "ip",
            &[
                "netns",
                "exec",
                &router,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
        );
        for host in &self.hosts {
            run(
                "ip",
                &[
                    "-n",
                    &host.ns,
                    "route",
                    "add",
                    "192.0.2.244/30",
                    "via",
                    ROUTER,
                ],
            );
        }
        self.clients.push(router.clone());
        self.clients.push(client.clone());
        (router, client)
    }

    /// Start BIRD in the router with the shipped router config.
    pub fn start_router_bird(&mut self, router: &str) {
        let config = shipped("extip-router.conf");
        self.start_bird(router, "router", &config);
    }

    /// Start BIRD on host `i`: the shipped host config plus its router id and session.
    pub fn start_host_bird(&mut self, i: usize) {
        let wrapper = self.dir.join(format!("bird-h{}.conf", i + 1));
        let text = format!(
            "router id 192.0.2.{};\ninclude \"{}\";\nprotocol bgp uplink from extip_uplink {{ neighbor {ROUTER} as 65000; }}\n",
            i + 1,
            shipped("extip-host.conf").display()
        );
        std::fs::write(&wrapper, text).expect("bird config");
        let ns = self.hosts[i].ns.clone();
        self.start_bird(&ns, &format!("h{}", i + 1), &wrapper);
    }

    fn start_bird(&mut self, ns: &str, name: &str, config: &std::path::Path) {
        let socket = self.dir.join(format!("bird-{name}.ctl"));
        let log = std::fs::File::create(self.dir.join(format!("bird-{name}.log"))).expect("log");
        let check = Command::new("bird")
            .arg("-p")
            .arg("-c")
            .arg(config)
            .output()
            .expect("bird");
        assert!(
            check.status.success(),
            "bird rejects {}: {}",
            config.display(),
            String::from_utf8_lossy(&check.stderr)
        );
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "bird", "-f", "-c"])
            .arg(config)
            .arg("-s")
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start bird");
        self.daemons.push(child);
    }

    /// The next hops the router's kernel has for `ip`, read with `ip -j route`.
    pub fn router_next_hops(&self, router: &str, ip: &str) -> Vec<String> {
        let out = run(
            "ip",
            &["-n", router, "-j", "route", "show", &format!("{ip}/32")],
        );
        let routes: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        let mut hops: Vec<String> = Vec::new();
        for r in routes.as_array().into_iter().flatten() {
            if let Some(g) = r["gateway"].as_str() {
                hops.push(g.to_string());
            }
            for nh in r["nexthops"].as_array().into_iter().flatten() {
                if let Some(g) = nh["gateway"].as_str() {
                    hops.push(g.to_string());
                }
            }
        }
        hops.sort();
        hops
    }

    /// Every destination in the router's main table, read with `ip -j route`.
    pub fn router_destinations(&self, router: &str) -> Vec<String> {
        let out = run("ip", &["-n", router, "-j", "route", "show"]);
        let routes: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        routes
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["dst"].as_str().map(str::to_string))
            .collect()
    }
}
