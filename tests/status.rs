//! `extip status` as an operator reads it: each node's lease time left, the holder
//! history of an IP, and `--watch` refreshing until interrupted.

mod lab;

use std::process::Command;
use std::time::Duration;

use lab::{wait_for, Lab, EXTIP};

#[test]
fn status_shows_each_nodes_lease_left_and_watch_keeps_refreshing() {
    let mut lab = Lab::new(2);
    lab.start_all();
    let up = wait_for(Duration::from_secs(10), || {
        (1..=2).all(|h| lab.get(&format!("/extip/nodes/h{h}")).is_some())
    });
    assert!(up.is_some());
    let json: serde_json::Value =
        serde_json::from_str(&lab.extip(&["status", "-o", "json"])).expect("status JSON");
    for node in json["nodes"].as_array().expect("nodes") {
        let left = node["lease_ttl_seconds"]
            .as_i64()
            .expect("lease_ttl_seconds");
        // The lab's agents use --lease-ttl 2s and renew every 250 ms.
        assert!((1..=2).contains(&left), "{node}");
        assert!(
            node["node"].is_string() && node["version"].is_string(),
            "{node}"
        );
    }
    let table = lab.extip(&["status"]);
    assert!(table.contains("LEASE LEFT"), "{table}");

    // The history of an IP names its holders in order.
    let ip = "198.51.100.10";
    lab.put(&format!("/extip/ips/{ip}"), "{}");
    assert!(wait_for(Duration::from_secs(5), || lab.holders(ip).len() == 1).is_some());
    let first = lab.holders(ip)[0];
    lab.signal(first, "TERM");
    let history = || -> Vec<String> {
        let json: serde_json::Value =
            serde_json::from_str(&lab.extip(&["status", "-o", "json"])).expect("JSON");
        json["ips"][0]["history"]
            .as_array()
            .map(|h| {
                h.iter()
                    .map(|e| e["node"].as_str().unwrap_or("").to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let names = |h: usize| format!("h{}", h + 1);
    let recorded = wait_for(Duration::from_secs(5), || {
        history() == [names(first), names(1 - first)]
    });
    assert!(recorded.is_some(), "history: {:?}", history());
    assert!(lab
        .extip(&["status"])
        .contains(&format!("{} > {}", names(first), names(1 - first))));

    let url = lab.etcd_url();
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.etcd[0].ns, "timeout", "2.5", EXTIP])
        .args(["status", "--watch", "1s", "-o", "json", "--etcd", &url])
        .output()
        .expect("extip status --watch");
    let text = String::from_utf8_lossy(&out.stdout);
    let documents: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        documents.len() >= 2,
        "--watch printed {}: {text}",
        documents.len()
    );
    assert!(documents
        .iter()
        .all(|d| d["nodes"].as_array().is_some_and(|n| n.len() == 1)));
}
