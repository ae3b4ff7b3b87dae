//! Routing in the lab: a router namespace on the bridge (192.0.2.254) peering over BGP
//! with BIRD on every host, and a client behind the router (192.0.2.246/30). BIRD runs
//! the configs shipped in `config/bird/`, so the tests check what operators install.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{run, wait_for, Lab};

/// The client's address behind the router.
pub const CLIENT: &str = "192.0.2.246";
/// The router's address on the bridge.
pub const ROUTER: &str = "192.0.2.254";
/// The router's second address: the hosts' sessions for fenced IPs, cut by their fence.
pub const FENCED_ROUTER: &str = "192.0.2.253";
/// Host `i`'s second address on the bridge: its end of the session for fenced IPs (the
/// router keys sessions and BFD by the neighbor's address, so it must differ).
pub fn fenced_session_address(i: usize) -> String {
    format!("192.0.2.{}", 101 + i)
}

/// What a routed lab's agents run with beyond a test's own flags.
pub const ROUTED_ARGS: [&str; 3] = ["--export-routes", "--fenced-router", FENCED_ROUTER];

/// Which BGP sessions a host's BIRD has with the router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sessions {
    /// One (`extip_uplink`): every route, agents without `--fenced-router`.
    One,
    /// Two (`extip_shared`, `extip_fenced`): fenced IPs over the session the fence cuts.
    Two,
}

/// The routing daemon on the router: BIRD or FRR, each with its shipped config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouterDaemon {
    /// BIRD 2, `config/bird/extip-router.conf`.
    Bird,
    /// FRR (zebra, bfdd, bgpd), `config/frr/extip-router.conf`.
    Frr,
}

/// How a routed lab is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routing {
    /// The hosts' sessions.
    pub sessions: Sessions,
    /// The router's daemon.
    pub router: RouterDaemon,
}

impl Default for Routing {
    fn default() -> Self {
        Routing {
            sessions: Sessions::Two,
            router: RouterDaemon::Bird,
        }
    }
}

impl Sessions {
    /// The agent flags this setup needs.
    pub fn agent_args(self) -> &'static [&'static str] {
        match self {
            Sessions::One => &ROUTED_ARGS[..1],
            Sessions::Two => &ROUTED_ARGS[..],
        }
    }
}

fn shipped(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("config/bird")
        .join(name)
}

/// The router's IPv6 address on the bridge; host `i` has `2001:db8:ffff::<i+1>`.
pub const ROUTER6: &str = "2001:db8:ffff::fe";

/// Host `h`'s bridge address of `ip`'s family: a next hop as the router names it.
pub fn gateway(h: usize, ip: &str) -> String {
    if ip.contains(':') {
        format!("2001:db8:ffff::{}", h + 1)
    } else {
        format!("192.0.2.{}", h + 1)
    }
}

/// The hosts' bridge addresses that hold `ip` on `lo`, as the router names them.
pub fn holder_gateways(lab: &Lab, ip: &str) -> Vec<String> {
    let mut gw: Vec<String> = lab
        .holders(ip)
        .into_iter()
        .map(|h| gateway(h, ip))
        .collect();
    gw.sort();
    gw
}

/// Wait until `count` hosts hold `ip` and the router's next hops are exactly them.
pub fn wait_routes_match_holders(
    lab: &Lab,
    router: &str,
    ip: &str,
    count: usize,
) -> Option<Duration> {
    wait_for(Duration::from_secs(20), || {
        let holders = holder_gateways(lab, ip);
        holders.len() == count && lab.router_next_hops(router, ip) == holders
    })
}

/// Ping `ip` from the client every 10 ms, `count` times, in the background.
pub fn ping(client: &str, ip: &str, count: u32) -> Child {
    Command::new("ip")
        .args([
            "netns", "exec", client, "ping", "-n", "-q", "-i", "0.01", "-W", "1",
        ])
        .args(["-c", &count.to_string(), ip])
        .stdout(Stdio::piped())
        .spawn()
        .expect("ping")
}

/// How many of a finished ping's probes got no reply.
pub fn lost_pings(ping: Child) -> u32 {
    let out = ping.wait_with_output().expect("ping");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary: {text}"));
    let nums: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    nums[0] - nums[1]
}

impl Lab {
    /// A lab of `hosts` agents ([`ROUTED_ARGS`] and `args`) and BIRDs with two sessions
    /// each, a BIRD router and a client behind it; returns (lab, router, client namespace).
    pub fn routed(hosts: usize, args: &[&str]) -> (Lab, String, String) {
        Lab::routed_with(hosts, args, Routing::default())
    }

    /// [`Lab::routed`] with the hosts' sessions and the router's daemon chosen.
    pub fn routed_with(hosts: usize, args: &[&str], routing: Routing) -> (Lab, String, String) {
        let mut lab = Lab::new(hosts);
        let (router, client) = lab.add_router();
        match routing.router {
            RouterDaemon::Bird => lab.start_router_bird(&router),
            RouterDaemon::Frr => {
                let config = super::frr::shipped("extip-router.conf");
                lab.start_frr(&router, "router", &config);
            }
        }
        let args = [args, routing.sessions.agent_args()].concat();
        for i in 0..hosts {
            lab.start_agent(i, &args);
            lab.start_host_bird(i, routing.sessions);
        }
        (lab, router, client)
    }

    /// Whether the router has every host's two sessions established with BFD up: only
    /// then does a fenced route leave with its host's fence (a session still coming
    /// back after a restart has no BFD to lose).
    pub fn router_sessions_up(&self, router: &str, daemon: RouterDaemon) -> bool {
        let hosts = self.hosts.len();
        match daemon {
            RouterDaemon::Bird => {
                let count = |command: &str, word: &str| {
                    let out = self.birdc("router", command);
                    out.lines().filter(|l| l.contains(word)).count()
                };
                count("show protocols", "Established") == 2 * hosts
                    && count("show bfd sessions", " Up ") == 2 * hosts
            }
            RouterDaemon::Frr => {
                let json = |command: &str| -> serde_json::Value {
                    serde_json::from_str(&self.vtysh(router, "router", command)).unwrap_or_default()
                };
                let bgp = json("show bgp ipv4 unicast summary json");
                let established = bgp["peers"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(_, p)| p["state"] == "Established")
                    .count();
                let bfd = json("show bfd peers json");
                let up = bfd
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| p["status"] == "up")
                    .count();
                established == 2 * hosts && up == 2 * hosts
            }
        }
    }

    /// The router daemon's sessions, for failure messages.
    pub fn router_sessions(&self, router: &str, daemon: RouterDaemon) -> String {
        match daemon {
            RouterDaemon::Bird => self.birdc("router", "show protocols"),
            RouterDaemon::Frr => self.vtysh(router, "router", "show bgp summary"),
        }
    }

    /// Add the router and the client; returns (router namespace, client namespace).
    pub fn add_router(&mut self) -> (String, String) {
        let router = format!("{}-r1", self.name);
        let client = format!("{}-rc", self.name);
        self.attach("pr", &router, ROUTER);
        // IPv6 on the bridge too, for IPv6 routes over the same BGP sessions.
        let v6 = |ns: &str, addr: &str| {
            let cidr = format!("{addr}/64");
            run(
                "ip",
                &["-n", ns, "addr", "add", &cidr, "dev", "eth0", "nodad"],
            );
        };
        v6(&router, ROUTER6);
        let second = format!("{FENCED_ROUTER}/24");
        run(
            "ip",
            &["-n", &router, "addr", "add", &second, "dev", "eth0"],
        );
        for (i, host) in self.hosts.iter().enumerate() {
            v6(&host.ns, &gateway(i, "::"));
            let second = format!("{}/24", fenced_session_address(i));
            run(
                "ip",
                &["-n", &host.ns, "addr", "add", &second, "dev", "eth0"],
            );
        }
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

    /// Start BIRD on host `i`: the shipped host config plus its router id and sessions.
    pub fn start_host_bird(&mut self, i: usize, sessions: Sessions) {
        let wrapper = self.dir.join(format!("bird-h{}.conf", i + 1));
        let protocols = match sessions {
            Sessions::One => {
                format!("protocol bgp uplink from extip_uplink {{ neighbor {ROUTER} as 65000; }}\n")
            }
            Sessions::Two => format!(
                "protocol bgp uplink from extip_shared {{ neighbor {ROUTER} as 65000; }}\n\
                 protocol bgp fenced from extip_fenced {{ local {} as 65001; neighbor {FENCED_ROUTER} as 65000; }}\n",
                fenced_session_address(i)
            ),
        };
        let text = format!(
            "router id 192.0.2.{};\ninclude \"{}\";\n{protocols}",
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

    /// What BIRD `name` ("router", "h1", …) answers to `command` (`show protocols`):
    /// for failure messages.
    pub fn birdc(&self, name: &str, command: &str) -> String {
        let socket = self.dir.join(format!("bird-{name}.ctl"));
        let socket = socket.to_string_lossy().into_owned();
        let mut args = vec!["-s", socket.as_str()];
        args.extend(command.split(' '));
        let out = Command::new("birdc").args(&args).output().expect("birdc");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The next hops the router's kernel has for `ip`, read with `ip -j route`, each
    /// named by its host's first address.
    pub fn router_next_hops(&self, router: &str, ip: &str) -> Vec<String> {
        let (family, host) = if ip.contains(':') {
            ("-6", format!("{ip}/128"))
        } else {
            ("-4", format!("{ip}/32"))
        };
        let out = run("ip", &["-n", router, family, "-j", "route", "show", &host]);
        let routes: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        let mut hops: Vec<String> = Vec::new();
        for r in routes.as_array().into_iter().flatten() {
            if let Some(g) = r["gateway"].as_str() {
                hops.push(self.host_address(g));
            }
            for nh in r["nexthops"].as_array().into_iter().flatten() {
                if let Some(g) = nh["gateway"].as_str() {
                    hops.push(self.host_address(g));
                }
            }
        }
        hops.sort();
        hops
    }

    /// A next hop as [`gateway`] names its host: a fenced session announces its routes
    /// with the host's second address ([`fenced_session_address`]) as next hop.
    fn host_address(&self, next_hop: &str) -> String {
        (0..self.hosts.len())
            .find(|&i| fenced_session_address(i) == next_hop)
            .map(|i| gateway(i, next_hop))
            .unwrap_or_else(|| next_hop.to_string())
    }

    /// Every destination in the router's main tables, IPv4 and IPv6, read with `ip -j route`.
    pub fn router_destinations(&self, router: &str) -> Vec<String> {
        let mut all = Vec::new();
        for family in ["-4", "-6"] {
            let out = run("ip", &["-n", router, family, "-j", "route", "show"]);
            let routes: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
            all.extend(
                routes
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|r| r["dst"].as_str().map(str::to_string)),
            );
        }
        all
    }
}
