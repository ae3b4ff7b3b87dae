//! Claims go many to an etcd transaction, and each key still wins or loses on its own:
//! one agent facing 150 new IPs, one of them already claimed by someone else, takes the
//! other 149 in a handful of transactions (counted by etcd's own /metrics) and never
//! the one held. Checked with etcdctl.

mod lab;

use std::time::Duration;

use lab::{wait_for, Lab};

/// Transactions etcd has handled so far, from its /metrics, read through host `h`.
fn etcd_txns(lab: &Lab, h: usize) -> f64 {
    let url = format!("http://{}:2379/metrics", lab.etcd[0].addr);
    let text = lab.exec(h, &["curl", "-s", &url]);
    text.lines()
        .filter(|l| {
            l.starts_with("grpc_server_handled_total{") && l.contains("grpc_method=\"Txn\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Claim keys and their values under /extip/claims/, as etcdctl prints them.
fn claims(lab: &Lab) -> Vec<(String, String)> {
    let out = lab
        .etcdctl(&["get", "--prefix", "/extip/claims/"])
        .unwrap_or_default();
    let lines: Vec<&str> = out.lines().collect();
    lines
        .chunks(2)
        .filter(|kv| kv.len() == 2)
        .map(|kv| (kv[0].to_string(), kv[1].to_string()))
        .collect()
}

#[test]
fn an_agent_claims_149_ips_in_a_few_transactions_and_leaves_the_one_held_alone() {
    let mut lab = Lab::new(1);
    let grant = lab
        .etcdctl(&["lease", "grant", "300"])
        .expect("lease grant");
    let lease = grant
        .split_whitespace()
        .nth(1)
        .expect("lease id")
        .to_string();
    let held = "/extip/claims/198.51.100.7/0";
    let ghost = r#"{"node":"ghost","since":"2026-11-29T00:00:00Z"}"#;
    lab.etcdctl(&["put", "--lease", &lease, held, ghost])
        .expect("claim of another node");
    let pairs: Vec<(String, String)> = (1..=150)
        .map(|i| (format!("/extip/ips/198.51.100.{i}"), "{}".to_string()))
        .collect();
    lab.put_many(&pairs);
    let before = etcd_txns(&lab, 0);
    lab.start_agent(0, &[]);
    let all = wait_for(Duration::from_secs(30), || claims(&lab).len() == 150);
    all.unwrap_or_else(|| panic!("{} claims", claims(&lab).len()));
    let claims = claims(&lab);
    let mine = claims.iter().filter(|(_, v)| v.contains("\"h1\"")).count();
    assert_eq!(mine, 149);
    assert!(
        claims.contains(&(held.to_string(), ghost.to_string())),
        "the held claim was touched"
    );
    // Holder histories are written after the claims, batched the same way.
    let histories = || {
        let keys = lab.etcdctl(&["get", "--prefix", "/extip/history/", "--keys-only"]);
        keys.unwrap_or_default()
            .lines()
            .filter(|l| !l.is_empty())
            .count()
    };
    wait_for(Duration::from_secs(10), || histories() == 149)
        .unwrap_or_else(|| panic!("{} holder histories", histories()));
    let txns = etcd_txns(&lab, 0) - before;
    eprintln!("149 claims and 149 histories took {txns} etcd transactions");
    // One a claim and one a history would be 298; batches of 120 need 4, and a few more
    // go to the membership key and claims retried as the view catches up.
    assert!(txns < 30.0, "{txns} transactions for 149 claims");
}

#[test]
fn an_etcd_that_allows_fewer_operations_per_transaction_gets_smaller_batches() {
    let mut lab = Lab::with_etcd_flags(1, 1, &["--max-txn-ops", "16"]);
    let pairs: Vec<(String, String)> = (1..=60)
        .map(|i| (format!("/extip/ips/198.51.100.{i}"), "{}".to_string()))
        .collect();
    for few in pairs.chunks(10) {
        lab.put_many(few);
    }
    lab.start_agent(0, &[]);
    wait_for(Duration::from_secs(30), || claims(&lab).len() == 60)
        .unwrap_or_else(|| panic!("{} claims; log: {}", claims(&lab).len(), lab.agent_log(0)));
    wait_for(Duration::from_secs(10), || {
        lab.holders("198.51.100.60") == [0]
    })
    .expect("the last IP on the host");
    assert!(
        lab.agent_log(0).contains("smaller batches"),
        "{}",
        lab.agent_log(0)
    );
}
