//! Holders in both views at once: the hosts' address tables (who lists an IP) and the
//! wire (who answers a client's ARP request for it). A killed or frozen host may list
//! a fenced address; two hosts answering is what a client would suffer.

use std::time::Duration;

use super::monitor::{OverlapMonitor, Report};
use super::wire::{WireMonitor, WireReport};
use super::Lab;

/// At most this many IPs are asked for on the wire per round: every request costs the
/// hosts an ARP reply, and a few hundred per 10 ms would slow what is being measured.
const WIRE_SAMPLE: usize = 60;

/// Samples both views until stopped.
pub struct HolderMonitor {
    table: OverlapMonitor,
    wire: WireMonitor,
    wire_ips: usize,
}

/// What both views saw.
pub struct Holders {
    /// The address tables of the watched hosts.
    pub table: Report,
    /// The client's ARP requests.
    pub wire: WireReport,
    wire_ips: usize,
}

impl HolderMonitor {
    /// Watch `ips` in the address tables of `hosts`, and on the wire from a new client
    /// namespace on the bridge (an evenly spread sample of at most 60 IPv4 ones).
    pub fn start(lab: &mut Lab, hosts: &[usize], ips: &[String]) -> Self {
        let client = lab.add_client();
        let v4: Vec<&str> = ips
            .iter()
            .map(String::as_str)
            .filter(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok())
            .collect();
        let step = v4.len().div_ceil(WIRE_SAMPLE).max(1);
        let sample: Vec<&str> = v4.iter().step_by(step).copied().collect();
        HolderMonitor {
            table: OverlapMonitor::start(lab.namespaces(hosts), ips.to_vec()),
            wire: WireMonitor::start(&client, &sample),
            wire_ips: sample.len(),
        }
    }

    /// Stop both views.
    pub fn stop(self) -> Holders {
        Holders {
            table: self.table.stop(),
            wire: self.wire.stop(),
            wire_ips: self.wire_ips,
        }
    }
}

impl Holders {
    /// Both views in one line, for the test's output.
    pub fn summary(&self) -> String {
        format!(
            "wire: {} ARP rounds over {} IPs, {} answered by two hosts; address tables: {} \
             samples, {} listed an IP twice",
            self.wire.rounds,
            self.wire_ips,
            self.wire.overlaps.len(),
            self.table.rounds,
            self.table.overlaps.len()
        )
    }

    /// Fail if two hosts ever answered for an IP; the address tables are only reported
    /// (a killed or frozen host lists its fenced addresses until the backstop ends).
    pub fn assert_one_answering(&self, what: &str) {
        eprintln!("{what}: {}", self.summary());
        assert!(self.wire.rounds > 0, "{what}: the wire was never asked");
        assert!(
            self.wire.overlaps.is_empty(),
            "{what}: two hosts answered: {:?}",
            self.wire.overlaps
        );
    }

    /// Fail if two hosts ever answered for an IP, or if two of the watched hosts ever
    /// listed one (only live, healthy agents are watched in the tables).
    pub fn assert_one_holder(&self, what: &str) {
        self.assert_one_answering(what);
        assert!(
            self.table.overlaps.is_empty(),
            "{what}: listed on two hosts: {:?}",
            self.table.overlaps
        );
    }
}

/// Lose host `holder` (agent SIGKILLed, host off the bridge) while the other hosts are
/// watched for `ip`: how long until one of them listed it (`None`: not within 3 s),
/// the survivors, and what both views saw (300 ms past the takeover).
pub fn lose_host(
    lab: &mut Lab,
    holder: usize,
    ip: &str,
) -> (Option<Duration>, Vec<usize>, Holders) {
    let survivors: Vec<usize> = (0..lab.hosts.len()).filter(|&i| i != holder).collect();
    let monitor = HolderMonitor::start(lab, &survivors, &[ip.into()]);
    lab.kill(holder);
    lab.cut(holder);
    let took = super::wait_for(Duration::from_secs(3), || {
        survivors
            .iter()
            .any(|&i| super::monitor::has_ip(&lab.addresses(i, "lo"), ip))
    });
    std::thread::sleep(Duration::from_millis(300));
    (took, survivors, monitor.stop())
}
