//! Peer vouching in the lab: heartbeats between agents over the hosts' bridge, real etcd,
//! real fences; failovers and faults seen with `ip`, `etcdctl` and the wire monitor.

mod lab;

use std::time::Duration;

use lab::holders::HolderMonitor;
use lab::monitor::has_ip;
use lab::{wait_for, Lab};

const VIP: &str = "198.51.100.10";

#[test]
fn probe() {
    let mut lab = Lab::new(3);
    lab.start_all();
    wait_for(Duration::from_secs(10), || {
        (1..=3).all(|i| lab.get(&format!("/extip/nodes/h{i}")).is_some())
    })
    .expect("registered");
    lab.put(&format!("/extip/ips/{VIP}"), "{}");
    wait_for(Duration::from_secs(3), || lab.holders(VIP).len() == 1).expect("held");
    std::thread::sleep(Duration::from_secs(2));
    eprintln!("{}", lab.etcdctl(&["get", "--prefix", "/extip/"]).unwrap());
    let holder = lab.holders(VIP)[0];
    let survivors: Vec<usize> = (0..3).filter(|&i| i != holder).collect();
    let monitor = HolderMonitor::start(&mut lab, &survivors, &[VIP.into()]);
    lab.kill(holder);
    lab.cut(holder);
    let took = wait_for(Duration::from_secs(3), || {
        survivors
            .iter()
            .any(|&i| has_ip(&lab.addresses(i, "lo"), VIP))
    });
    let _ = monitor.stop();
    eprintln!("took {took:?}");
    for i in 0..3 {
        eprintln!("==== h{} ====\n{}", i + 1, lab.agent_log(i));
    }
}
