//! Soak: random and malformed keys are written under the prefix while agents are
//! stopped, killed and restarted. Every foreign address stays, every agent stays up,
//! every real IP ends on exactly one host, and no exclusive IP is ever on two.

mod lab;

use std::time::{Duration, Instant};

use lab::holders::HolderMonitor;
use lab::monitor::has_ip;
use lab::{wait_for, Lab};
use proptest::test_runner::{RngAlgorithm, TestRng};
use rand_core::Rng;

/// Addresses added by hand before any agent runs: extip must never touch them.
const FOREIGN: [(&str, &str); 3] = [
    ("198.51.100.200/32", "lo"),
    ("203.0.113.7/32", "lo"),
    ("2001:db8:ff::7/128", "lo"),
];

fn real_ips() -> Vec<String> {
    (10..15).map(|i| format!("198.51.100.{i}")).collect()
}

/// One random write or delete under the prefix; never a real IP's own keys.
fn junk_write(lab: &Lab, rng: &mut TestRng, written: &mut Vec<String>) {
    let n = |rng: &mut TestRng, m: u32| rng.next_u32() % m;
    let text = |rng: &mut TestRng| -> String {
        let len = 1 + n(rng, 30);
        (0..len)
            .map(|_| char::from(b' ' + n(rng, 95) as u8))
            .collect::<String>()
            .replace('\'', "")
    };
    let (key, value) = match n(rng, 9) {
        0 => (
            format!("/extip/ips/198.51.100.{}", 150 + n(rng, 50)),
            text(rng),
        ),
        1 => (format!("/extip/ips/{}", text(rng)), "{}".to_string()),
        2 => (
            format!("/extip/ips/203.0.113.{}", 1 + n(rng, 200)),
            "{}".into(),
        ),
        3 => (
            format!("/extip/claims/{}/{}", text(rng), text(rng)),
            text(rng),
        ),
        4 => (format!("/extip/nodes/{}", text(rng)), text(rng)),
        5 => (format!("/extip/{}", text(rng)), text(rng)),
        6 => (
            format!("/extip/ips/198.51.100.{}", 150 + n(rng, 50)),
            r#"{"replicas":"lots","prefix_len":99}"#.into(),
        ),
        7 if !written.is_empty() => {
            let k = written.swap_remove(n(rng, written.len() as u32) as usize);
            let _ = lab.etcdctl(&["del", &k]);
            return;
        }
        _ => {
            let key = format!("/extip/ips/198.51.100.{}", 150 + n(rng, 50));
            let mut big = vec![0u8; 100 * 1024];
            rng.fill_bytes(&mut big);
            lab.put_stdin(&key, &big);
            written.push(key);
            return;
        }
    };
    // A key etcdctl cannot take (empty, leading dash) is simply skipped.
    if lab.etcdctl(&["put", &key, "--", &value]).is_ok() {
        written.push(key);
    }
}

/// Write junk for `duration`, stopping (TERM, then KILL) and restarting an agent
/// every 1.5 s. Returns the keys written and the number of agent faults.
fn junk_during_failovers(lab: &mut Lab, duration: Duration) -> (Vec<String>, usize) {
    let mut rng = TestRng::deterministic_rng(RngAlgorithm::ChaCha);
    let mut written = Vec::new();
    let start = Instant::now();
    let mut next_fault = Duration::from_millis(1500);
    let mut faults = 0;
    while start.elapsed() < duration {
        junk_write(lab, &mut rng, &mut written);
        if start.elapsed() > next_fault {
            let h = (rng.next_u32() % 3) as usize;
            let signal = if faults % 2 == 0 { "TERM" } else { "KILL" };
            lab.signal(h, signal);
            let stopped = lab.wait_exit(h, Duration::from_secs(5));
            assert!(stopped.is_some(), "h{} did not stop", h + 1);
            lab.start_agent(h, &["--lease-ttl", "3s"]);
            faults += 1;
            next_fault += Duration::from_millis(1500);
        }
    }
    (written, faults)
}

#[test]
fn malformed_writes_during_failovers_touch_no_foreign_address_and_kill_no_agent() {
    let mut lab = Lab::new(3);
    for h in 0..3 {
        for (addr, dev) in FOREIGN {
            lab.exec(h, &["ip", "addr", "add", addr, "dev", dev]);
        }
    }
    for h in 0..3 {
        lab.start_agent(h, &["--lease-ttl", "3s"]);
    }
    for ip in real_ips() {
        lab.put(&format!("/extip/ips/{ip}"), "{}");
    }
    let monitor = HolderMonitor::start(&mut lab, &[0, 1, 2], &real_ips());
    let (written, faults) = junk_during_failovers(&mut lab, Duration::from_secs(12));
    let settled = wait_for(Duration::from_secs(8), || {
        real_ips().iter().all(|ip| lab.holders(ip).len() == 1)
    });
    monitor.stop().assert_one_holder("junk during failovers");
    assert!(settled.is_some(), "real IPs not served once each");
    for h in 0..3 {
        assert!(
            lab.wait_exit(h, Duration::ZERO).is_none(),
            "h{} died:\n{}",
            h + 1,
            lab.agent_log(h)
        );
        let here = lab.addresses(h, "lo");
        for (addr, _) in FOREIGN {
            assert!(
                here.contains(&addr.to_string()),
                "h{} lost foreign {addr}: {here:?}",
                h + 1
            );
        }
        for junk in (150..200).map(|i| format!("198.51.100.{i}")) {
            assert!(!has_ip(&here, &junk), "h{} configured junk {junk}", h + 1);
        }
        let eth0 = lab.addresses(h, "eth0");
        assert!(
            eth0.contains(&format!("192.0.2.{}/24", h + 1)),
            "link address gone: {eth0:?}"
        );
    }
    eprintln!("soak: {} junk writes, {faults} agent faults", written.len());
}
