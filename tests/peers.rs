//! Peer vouching in the lab (`--peers on`): heartbeats between agents over the hosts'
//! bridge, real etcd, real fences; checked with `ip`, `etcdctl` and the holder monitor.

mod lab;

use std::time::Duration;

use lab::holders::HolderMonitor;
use lab::monitor::has_ip;
use lab::{wait_for, Lab};

const VIP: &str = "198.51.100.10";

/// The `vouch.mode` a node published in its record, as etcdctl shows it.
fn published_mode(lab: &Lab, host: usize) -> Option<String> {
    let value = lab.get(&format!("/extip/nodes/{}", lab.hosts[host].name))?;
    let v: serde_json::Value = serde_json::from_str(&value).expect("node record is JSON");
    v["vouch"]["mode"].as_str().map(str::to_string)
}

fn lab_with_peers(hosts: usize) -> Lab {
    let mut lab = Lab::new(hosts);
    for i in 0..hosts {
        lab.start_agent(i, &["--peers", "on", "--listen", "none"]);
    }
    let vouched = wait_for(Duration::from_secs(10), || {
        (0..hosts).all(|i| published_mode(&lab, i).as_deref() == Some("peers"))
    });
    assert!(
        vouched.is_some(),
        "every node publishes mode `peers` once its peers ack"
    );
    lab
}

/// Host loss with peers on: the witnesses revoke the dead holder's lease, a survivor
/// takes the IP well before the 2 s TTL would, and never two hosts hold it.
#[test]
fn host_loss_is_noticed_by_peers_and_the_lease_is_revoked() {
    let mut lab = lab_with_peers(3);
    lab.put(&format!("/extip/ips/{VIP}"), "{}");
    wait_for(Duration::from_secs(3), || lab.holders(VIP).len() == 1).expect("held once");
    let holder = lab.holders(VIP)[0];
    let lease = lab
        .etcdctl(&["get", &format!("/extip/claims/{VIP}/0"), "-w", "json"])
        .unwrap();
    let survivors: Vec<usize> = (0..3).filter(|&i| i != holder).collect();
    let monitor = HolderMonitor::start(&mut lab, &survivors, &[VIP.into()]);
    lab.kill(holder);
    lab.cut(holder);
    let took = wait_for(Duration::from_secs(3), || {
        survivors
            .iter()
            .any(|&i| has_ip(&lab.addresses(i, "lo"), VIP))
    });
    std::thread::sleep(Duration::from_millis(300));
    let holders = monitor.stop();
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
        "peers noticed before the 2 s lease could expire ({took:?}); claim was {lease}"
    );
    eprintln!("host loss with peers: moved in {took:?}");
}
