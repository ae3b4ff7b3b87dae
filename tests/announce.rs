//! L2 announcements in the lab: a client on the hosts' segment pings a virtual IP every
//! 10 ms while its holder stops or dies; tcpdump in the client sees the announcements;
//! a foreign host that already answers for an IP keeps every agent off it.

mod lab;

use std::time::Duration;

use lab::l2::{self, Capture, Pinger};
use lab::monitor::has_ip;
use lab::{wait_for, Lab};

const VIP4: &str = "198.51.100.10";
const VIP6: &str = "2001:db8:6::10";

/// Three hosts serving `dev` (announcing on eth0) and a client on the same bridge.
struct L2 {
    lab: Lab,
    client: String,
    args: Vec<String>,
}

impl L2 {
    /// Only h1's agent runs, so it takes every IP: start the others with `start_rest`.
    fn new(dev: &str, ttl: &str, extra: &[&str]) -> Self {
        let mut lab = Lab::new(3);
        let client = lab.add_client();
        l2::route_vips_on_link(&client);
        let mut args = vec![
            "--interface",
            dev,
            "--announce-interface",
            "eth0",
            "--lease-ttl",
            ttl,
            "--allowed-cidr",
            "198.51.100.0/24,2001:db8::/32",
        ];
        args.extend_from_slice(extra);
        lab.start_agent(0, &args);
        let args = args.into_iter().map(str::to_string).collect();
        L2 { lab, client, args }
    }

    /// Start h2 and h3 with h1's flags.
    fn start_rest(&mut self) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        for h in 1..3 {
            self.lab.start_agent(h, &args);
        }
        let up = wait_for(Duration::from_secs(10), || {
            (2..=3).all(|h| self.lab.get(&format!("/extip/nodes/h{h}")).is_some())
        });
        assert!(up.is_some(), "h2 and h3 did not register");
    }
}

/// The one host with `ip` on `dev`, once there is exactly one.
fn holder(lab: &Lab, ip: &str, dev: &str) -> usize {
    let one = wait_for(Duration::from_secs(10), || {
        (0..3)
            .filter(|&h| has_ip(&lab.addresses(h, dev), ip))
            .count()
            == 1
    });
    assert!(one.is_some(), "{ip} not on exactly one host");
    (0..3)
        .find(|&h| has_ip(&lab.addresses(h, dev), ip))
        .unwrap()
}

/// The surviving host that serves `ip` on `dev` once every host in `gone` lost it.
fn new_holder(lab: &Lab, ip: &str, dev: &str, gone: &[usize]) -> usize {
    let serving = |h: &usize| !gone.contains(h) && has_ip(&lab.addresses(*h, dev), ip);
    let moved = wait_for(Duration::from_secs(10), || (0..3).any(|h| serving(&h)));
    assert!(moved.is_some(), "{ip} did not move off {gone:?}");
    (0..3).find(serving).unwrap()
}

/// Start pinging and wait until replies flow.
fn pinging(client: &str, ip: &str) -> Pinger {
    let pinger = Pinger::start(client, ip);
    let answered = wait_for(Duration::from_secs(5), || {
        l2::neighbour_mac(client, ip).is_some()
    });
    assert!(answered.is_some(), "the client never resolved {ip}");
    std::thread::sleep(Duration::from_millis(200));
    pinger
}

#[test]
fn a_graceful_stop_moves_client_traffic_at_once_and_the_burst_is_on_the_wire() {
    let mut l2 = L2::new("eth0", "2s", &[]);
    l2.lab.put(&format!("/extip/ips/{VIP4}"), "{}");
    l2.lab.put(&format!("/extip/ips/{VIP6}"), "{}");
    assert_eq!(holder(&l2.lab, VIP4, "eth0"), 0);
    assert_eq!(holder(&l2.lab, VIP6, "eth0"), 0);
    l2.start_rest();
    let (lab, client) = (&mut l2.lab, l2.client.as_str());
    let (ping4, ping6) = (pinging(client, VIP4), pinging(client, VIP6));
    let capture = Capture::start(client);

    lab.signal(0, "TERM");
    let new4 = new_holder(lab, VIP4, "eth0", &[0]);
    let new6 = new_holder(lab, VIP6, "eth0", &[0]);
    // The burst is 3 rounds 100 ms apart: over after 200 ms.
    std::thread::sleep(Duration::from_millis(600));
    let (r4, r6) = (ping4.stop(), ping6.stop());
    let lines = capture.stop();
    eprintln!("graceful stop: IPv4 {r4:?}, IPv6 {r6:?}");

    let mac4 = l2::mac_of(&lab.hosts[new4].ns, "eth0");
    let mac6 = l2::mac_of(&lab.hosts[new6].ns, "eth0");
    assert_eq!(l2::neighbour_mac(client, VIP4), Some(mac4.clone()));
    assert_eq!(l2::neighbour_mac(client, VIP6), Some(mac6.clone()));
    assert_eq!(
        l2::gratuitous_arps(&lines, &mac4, VIP4),
        (3, 3),
        "3 request and 3 reply gratuitous ARPs expected:\n{}",
        lines.join("\n")
    );
    assert_eq!(
        l2::unsolicited_nas(&lines, &mac6, VIP6),
        3,
        "3 unsolicited NAs expected:\n{}",
        lines.join("\n")
    );
    // Generous bounds; scripts/bench-failover measures the real figures.
    assert!(r4.longest_gap < Duration::from_secs(1), "IPv4 gap {r4:?}");
    assert!(r6.longest_gap < Duration::from_secs(1), "IPv6 gap {r6:?}");
}

#[test]
fn without_announcements_the_client_keeps_sending_to_the_old_mac() {
    let mut l2 = L2::new("eth0", "2s", &["--announce-count", "0"]);
    l2.lab.put(&format!("/extip/ips/{VIP4}"), "{}");
    assert_eq!(holder(&l2.lab, VIP4, "eth0"), 0);
    l2.start_rest();
    let (lab, client) = (&mut l2.lab, l2.client.as_str());
    let ping = pinging(client, VIP4);
    let old_mac = l2::mac_of(&lab.hosts[0].ns, "eth0");
    assert_eq!(l2::neighbour_mac(client, VIP4), Some(old_mac.clone()));

    lab.signal(0, "TERM");
    let new = new_holder(lab, VIP4, "eth0", &[0]);
    std::thread::sleep(Duration::from_secs(2));
    let report = ping.stop();
    eprintln!("announcements off, graceful stop: {report:?}");
    assert_eq!(
        l2::neighbour_mac(client, VIP4),
        Some(old_mac),
        "the client learned the new holder h{} without announcements",
        new + 1
    );
    assert!(
        report.longest_gap >= Duration::from_secs(2),
        "the client reached the new holder without announcements: {report:?}"
    );
}

#[test]
fn an_ip_on_lo_announced_on_eth0_survives_a_host_loss_within_about_one_ttl() {
    let mut l2 = L2::new("lo", "3s", &[]);
    l2.lab.put(&format!("/extip/ips/{VIP4}"), "{}");
    assert_eq!(holder(&l2.lab, VIP4, "lo"), 0);
    l2.start_rest();
    let (lab, client) = (&mut l2.lab, l2.client.as_str());
    let ping = pinging(client, VIP4);
    lab.kill(0);
    lab.cut(0);
    let new = new_holder(lab, VIP4, "lo", &[0]);
    std::thread::sleep(Duration::from_millis(500));
    let report = ping.stop();
    eprintln!("IP on lo, host loss (TTL 3s): {report:?}");
    let mac = l2::mac_of(&lab.hosts[new].ns, "eth0");
    assert_eq!(l2::neighbour_mac(client, VIP4), Some(mac));
    // Generous bound for a debug build on a busy machine: the takeover lands at most
    // TTL + 500 ms after the fault (etcd's expiry sweep), then claim, 30 ms probe, add
    // and announcement follow; scripts/bench-failover measures the figure.
    assert!(
        report.longest_gap <= Duration::from_millis(4000),
        "gap {report:?} above TTL + 1 s"
    );
}

#[test]
fn an_ip_a_foreign_host_answers_for_is_never_added_and_the_conflict_is_shown() {
    let mut l2 = L2::new("eth0", "2s", &[]);
    l2.start_rest();
    let lab = &mut l2.lab;
    let ip = "198.51.100.77";
    let foreign = lab.add_station("rogue", "192.0.2.201");
    lab::run(
        "ip",
        &[
            "-n",
            &foreign,
            "addr",
            "add",
            &format!("{ip}/32"),
            "dev",
            "eth0",
        ],
    );
    let foreign_mac = l2::mac_of(&foreign, "eth0");
    let watchers: Vec<_> = (0..3)
        .map(|h| lab::monitor::AddressEvents::start(&lab.hosts[h].ns))
        .collect();

    lab.put(&format!("/extip/ips/{ip}"), "{}");
    let reported = wait_for(Duration::from_secs(10), || {
        lab.extip(&["status"]).contains(&foreign_mac)
    });
    // Every agent gets its turn after the one before backs off (1 s placement grace).
    let all_tried = wait_for(Duration::from_secs(10), || {
        (0..3).all(|h| lab.agent_log(h).contains(&foreign_mac))
    });
    let added: Vec<String> = watchers.into_iter().flat_map(|w| w.additions(ip)).collect();
    assert!(added.is_empty(), "an agent added {ip}: {added:?}");
    assert!(
        reported.is_some(),
        "extip status does not show the conflict"
    );
    assert!(
        all_tried.is_some(),
        "not every agent probed and logged the foreign MAC"
    );
    let status = lab.extip(&["status"]);
    eprintln!("{status}");
    assert!(status.contains("conflict"), "{status}");
}
