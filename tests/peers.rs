//! Peer vouching in the lab (`--peers on`): heartbeats between agents over the hosts'
//! bridge, real etcd, real fences; checked with `ip`, `etcdctl`, curl on the metrics
//! and the holder monitor. The fault lab is tests/peer_faults.rs.

mod lab;

use std::time::Duration;

use extip::vouch::wire::{self, Kind, Packet, Secret};
use lab::fleet::{placement, vips};
use lab::holders::{lose_host, HolderMonitor};
use lab::peers::{assert_one_answering_and_served, lab_with_peers, ForeignState, PEER_PORT};
use lab::{run, wait_for, Lab};

const VIP: &str = "198.51.100.10";

/// Host loss with peers on: the witnesses revoke the dead holder's lease, a survivor
/// takes the IP well before the 2 s TTL would, and never two hosts hold it.
#[test]
fn host_loss_is_noticed_by_peers_and_the_lease_is_revoked() {
    let mut lab = lab_with_peers(3, 1);
    lab.put(&format!("/extip/ips/{VIP}"), "{}");
    wait_for(Duration::from_secs(3), || lab.holders(VIP).len() == 1).expect("held once");
    let holder = lab.holders(VIP)[0];
    let (took, _, holders) = lose_host(&mut lab, holder, VIP);
    let took = took.expect("a survivor holds the IP");
    holders.assert_one_holder("host loss with peers");
    let marker = lab.get(&format!("/extip/revoked/{}", lab.hosts[holder].name));
    let marker = marker.expect("the witnesses left a revoked marker naming the dead host");
    assert!(
        marker.contains("voters"),
        "marker lists its voters: {marker}"
    );
    assert!(
        took < Duration::from_millis(1500),
        "peers noticed before the 2 s lease could expire ({took:?})"
    );
    eprintln!("host loss with peers: moved in {took:?}");
}

/// One heartbeat host `from` sent to host `to`, captured with tcpdump on `from`'s eth0:
/// the UDP payload.
fn capture_heartbeat(lab: &Lab, from: usize, to: usize) -> Vec<u8> {
    let file = lab.dir().join("heartbeats.pcap");
    let filter = format!(
        "udp and src host 192.0.2.{} and dst host 192.0.2.{} and dst port {PEER_PORT}",
        from + 1,
        to + 1
    );
    let file_text = file.to_string_lossy().into_owned();
    run(
        "timeout",
        &[
            "5",
            "ip",
            "netns",
            "exec",
            &lab.hosts[from].ns,
            "tcpdump",
            "-i",
            "eth0",
            "-c",
            "20",
            "-U",
            "-w",
            &file_text,
            &filter,
        ],
    );
    let pcap = std::fs::read(&file).expect("capture file");
    udp_payloads(&pcap)
        .into_iter()
        .find(|p| p.get(4) == Some(&1))
        .expect("a heartbeat (kind 1) among the captured datagrams")
}

/// The UDP payloads of a little-endian pcap of Ethernet/IPv4 frames.
fn udp_payloads(pcap: &[u8]) -> Vec<Vec<u8>> {
    let mut at = 24;
    let mut out = Vec::new();
    while at + 16 <= pcap.len() {
        let len = u32::from_le_bytes(pcap[at + 8..at + 12].try_into().unwrap()) as usize;
        let frame = &pcap[at + 16..at + 16 + len];
        let ihl = usize::from(frame[14] & 0x0f) * 4;
        out.push(frame[14 + ihl + 8..].to_vec());
        at += 16 + len;
    }
    out
}

/// Send `datagram` `times` times from namespace `ns` to `addr`:PEER_PORT (bash's /dev/udp).
fn send_from(ns: &str, addr: &str, datagram: &[u8], times: usize, lab: &Lab) {
    let file = lab.write_file("datagram", "");
    std::fs::write(&file, datagram).expect("datagram file");
    let script =
        format!("for i in $(seq {times}); do cat {file} > /dev/udp/{addr}/{PEER_PORT}; done");
    run("ip", &["netns", "exec", ns, "bash", "-c", &script]);
}

/// `extip_peer_packets_dropped_total{reason=…}` on host `i`, read with curl.
fn dropped(lab: &Lab, i: usize, reason: &str) -> f64 {
    let body = lab.exec(
        i,
        &["curl", "-s", "-m", "2", "http://127.0.0.1:9478/metrics"],
    );
    let name = format!("extip_peer_packets_dropped_total{{reason=\"{reason}\"}}");
    lab::sample_value(&body, &name).unwrap_or(0.0)
}

/// An intruder on the hosts' segment sends replayed, wrong-key, malformed, unknown-sender
/// and stale-lease heartbeats: each is dropped and counted by its reason, nobody is
/// voted against, no IP moves and every host stays vouched for.
#[test]
fn forged_replayed_and_wrong_key_heartbeats_are_dropped_and_counted() {
    let mut lab = lab_with_peers(3, 1);
    let foreign = ForeignState::plant(&lab, &[0, 1, 2]);
    let intruder = lab.add_station("intr", "192.0.2.150");
    let replay = capture_heartbeat(&lab, 0, 1);
    let secret = lab
        .get("/extip/secret")
        .expect("the cluster secret in etcd");
    let secret = Secret::new(secret.trim_end().as_bytes());
    let real = wire::decode(&replay, &secret).expect("the captured heartbeat verifies");
    let forged = |from: &str, lease: i64, key: &Secret| {
        let packet = Packet {
            kind: Kind::Heartbeat,
            from: from.into(),
            to: "h2".into(),
            lease,
            seq: real.seq + 1_000_000,
            window: Duration::from_millis(900),
        };
        wire::encode(&packet, key)
    };
    let wrong_key = Secret::new(b"not the cluster secret at all");
    let attacks: [(&str, Vec<u8>); 5] = [
        ("replayed", replay.clone()),
        ("bad_mac", forged("h1", real.lease, &wrong_key)),
        ("malformed", b"XTV1 not a heartbeat".to_vec()),
        ("unknown_sender", forged("intruder", real.lease, &secret)),
        ("stale_lease", forged("h1", real.lease ^ 0x5a5a, &secret)),
    ];
    let before = placement(&lab, &[0, 1, 2]);
    let monitor = HolderMonitor::start(&mut lab, &[0, 1, 2], &vips());
    for (reason, datagram) in &attacks {
        let was = dropped(&lab, 1, reason);
        send_from(&intruder, "192.0.2.2", datagram, 50, &lab);
        let counted = wait_for(Duration::from_secs(3), || {
            dropped(&lab, 1, reason) >= was + 50.0
        });
        assert!(
            counted.is_some(),
            "{reason}: 50 sent, {} counted",
            dropped(&lab, 1, reason) - was
        );
    }
    std::thread::sleep(Duration::from_secs(1));
    let holders = monitor.stop();
    let what = "forged, replayed and wrong-key heartbeats";
    holders.assert_one_holder(what);
    assert_one_answering_and_served(&holders, what, Duration::from_millis(500));
    assert_eq!(placement(&lab, &[0, 1, 2]), before, "{what}: an IP moved");
    assert!(lab.revoked().is_empty(), "{what}: {:?}", lab.revoked());
    foreign.assert_untouched(&lab, what);
    lab.wait_vouched(&[0, 1, 2]);
}

/// Turning peers on with a reload (`peers = "off"` → `"on"` in the TOML, SIGHUP): the
/// old process hands its record over, so the holder keeps answering throughout, and
/// then its peers vouch for it.
#[test]
fn turning_peers_on_by_reload_loses_no_ping() {
    let mut lab = Lab::new(3);
    let config = lab.write_file("agent.toml", "peers = \"off\"\n");
    for i in 0..3 {
        lab.start_agent(i, &["--config", &config]);
    }
    lab.put(&format!("/extip/ips/{VIP}"), "{}");
    wait_for(Duration::from_secs(5), || lab.holders(VIP).len() == 1).expect("held once");
    let holder = lab.holders(VIP)[0];
    assert_eq!(
        lab.published_mode(holder),
        None,
        "peers off: no vouching part"
    );
    let client = lab.add_client();
    let via = format!("192.0.2.{}", holder + 1);
    run(
        "ip",
        &[
            "-n",
            &client,
            "route",
            "add",
            &format!("{VIP}/32"),
            "via",
            &via,
        ],
    );
    let ping = std::process::Command::new("ip")
        .args([
            "netns", "exec", &client, "ping", "-n", "-q", "-i", "0.01", "-c", "300", "-W", "1", VIP,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("ping");
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(&config, "peers = \"on\"\n").expect("config");
    for i in 0..3 {
        lab.signal(i, "HUP");
    }
    let ping = ping.wait_with_output().expect("ping");
    let summary = String::from_utf8_lossy(&ping.stdout).into_owned();
    assert!(
        summary.contains("300 packets transmitted, 300 received"),
        "{summary}"
    );
    assert_eq!(lab.holders(VIP), vec![holder], "the IP stayed");
    lab.wait_vouched(&[0, 1, 2]);
}
