//! Metrics and health in the lab, read with curl inside the host namespace: `/readyz`
//! is 503 without a lease and 200 with one; a failover moves the new holder's takeover
//! counter and claim-to-address histogram.

mod lab;

use std::process::Command;
use std::time::Duration;

use lab::{wait_for, Lab};

const VIP: &str = "198.51.100.10";

/// `curl` in host `h`'s namespace: (HTTP status, body); status 0 while nothing listens.
fn get(lab: &Lab, h: usize, path: &str) -> (u16, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.hosts[h].ns, "curl", "-s", "-m", "2"])
        .args([
            "-w",
            "\n%{http_code}",
            &format!("http://127.0.0.1:9478{path}"),
        ])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// The value of a sample line `name value` in a Prometheus exposition.
fn sample(body: &str, name: &str) -> f64 {
    lab::sample_value(body, name).unwrap_or_else(|| panic!("no {name} in:\n{body}"))
}

#[test]
fn readyz_follows_the_lease_and_a_failover_shows_in_the_new_holders_metrics() {
    let mut lab = Lab::new(2);
    lab.put(&format!("/extip/ips/{VIP}"), "{}");
    lab.isolate_from_etcd(0);
    lab.start_agent(0, &[]);
    let up = wait_for(Duration::from_secs(10), || {
        get(&lab, 0, "/healthz").0 == 200
    });
    assert!(up.is_some(), "no /healthz on 127.0.0.1:9478");
    assert_eq!(get(&lab, 0, "/readyz").0, 503, "ready without a lease");
    lab.heal(0);
    let ready = wait_for(Duration::from_secs(10), || get(&lab, 0, "/readyz").0 == 200);
    assert!(ready.is_some(), "not ready once etcd is reachable");
    assert!(wait_for(Duration::from_secs(5), || lab.holders(VIP) == vec![0]).is_some());

    lab.start_agent(1, &[]);
    assert!(wait_for(Duration::from_secs(10), || get(&lab, 1, "/readyz").0 == 200).is_some());
    let before = get(&lab, 1, "/metrics").1;
    let takeovers = sample(&before, "extip_takeovers_total");
    let histogram = sample(&before, "extip_claim_to_address_seconds_count");
    lab.signal(0, "TERM");
    assert!(wait_for(Duration::from_secs(5), || lab.holders(VIP) == vec![1]).is_some());
    let after = get(&lab, 1, "/metrics").1;
    assert_eq!(sample(&after, "extip_takeovers_total"), takeovers + 1.0);
    assert_eq!(
        sample(&after, "extip_claim_to_address_seconds_count"),
        histogram + 1.0
    );
    assert_eq!(sample(&after, "extip_ips_held{kind=\"exclusive\"}"), 1.0);
    assert!(sample(&after, "extip_lease_deadline_seconds") > 0.0);
    eprintln!("{after}");
}
