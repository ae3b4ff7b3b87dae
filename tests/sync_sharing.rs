//! Shared LoadBalancer IPs: Services of one namespace with the same
//! `extip.io/sharing-key` and ports that do not collide get one IP; the IP lives while
//! one of them does; a colliding port stays pending with a Warning Event. Checked with
//! kubectl, etcdctl (and an `etcdctl watch` that sees every write) and `ip -j addr`.

// The lab and the stand-in API server both include the one-function tests/common/netns.rs.
#![allow(clippy::duplicate_mod)]

mod kube;
mod lab;
mod synclab;

use std::time::Duration;

use lab::wait_for;
use synclab::{wait_leader, EtcdWatch, SyncLab};

/// A LoadBalancer Service `name` on TCP `port` with sharing key `front`.
fn shared(name: &str, port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  annotations:\n    \
         extip.io/sharing-key: front\nspec:\n  type: LoadBalancer\n  ports:\n  - port: {port}\n"
    )
}

/// The desired key of `ip` as etcdctl prints it.
fn desired(s: &SyncLab, ip: &str) -> Option<serde_json::Value> {
    let text = s.lab.get(&format!("/extip/ips/{ip}"))?;
    serde_json::from_str(&text).ok()
}

#[test]
fn two_services_share_an_ip_a_colliding_port_waits_and_the_ip_outlives_one_of_them() {
    let s = SyncLab::new(2, true);
    let _sync = s.sync("s1", &[]);
    wait_leader(&s);
    // Back to back: one reconcile may well see both.
    s.api.apply(&format!(
        "{}---\n{}",
        shared("http", 80),
        shared("https", 443)
    ));
    let both = wait_for(Duration::from_secs(15), || {
        let (a, b) = (s.ingress("http"), s.ingress("https"));
        !a.is_empty() && a == b
    });
    both.unwrap_or_else(|| {
        panic!(
            "http {:?}, https {:?}",
            s.ingress("http"),
            s.ingress("https")
        )
    });
    let ip = s.ingress("http");
    wait_for(Duration::from_secs(10), || s.lab.holders(&ip).len() == 1).expect("on a host");
    assert_eq!(
        desired(&s, &ip).map(|d| d["source"].clone()),
        Some(serde_json::json!(["default/http", "default/https"]))
    );

    // A third on port 80 with the same key: pending, with a Warning Event.
    s.api.apply(&shared("again", 80));
    let warned = wait_for(Duration::from_secs(10), || {
        s.api.events_of("again").contains("PortCollision")
    });
    warned.expect("a PortCollision Warning Event");
    assert!(s.api.events_of("again").contains("\"Warning\""));
    assert_eq!(s.ingress("again"), "", "a colliding Service got an IP");

    // Deleting `http`: the IP stays on its host, its key is never deleted, `https`
    // keeps it, and the port-80 Service that waited takes `http`'s place.
    let writes = EtcdWatch::start(&s.lab, "/extip/", "sharing-writes");
    s.api.kubectl(&["delete", "svc", "http"]);
    let joined = wait_for(Duration::from_secs(15), || s.ingress("again") == ip);
    joined.unwrap_or_else(|| panic!("again: {:?}", s.ingress("again")));
    wait_for(Duration::from_secs(10), || {
        desired(&s, &ip).map(|d| d["source"].clone())
            == Some(serde_json::json!(["default/again", "default/https"]))
    })
    .expect("the desired key lists the two Services left");
    assert_eq!(s.ingress("https"), ip);
    assert_eq!(s.lab.holders(&ip).len(), 1);
    let seen = writes.text();
    drop(writes);
    let key = format!("/extip/ips/{ip}");
    let deleted = seen
        .lines()
        .collect::<Vec<_>>()
        .windows(2)
        .any(|w| w[0] == "DELETE" && w[1] == key);
    assert!(!deleted, "the shared IP's key was deleted:\n{seen}");
    // The IP's record passed to a Service still on it, with no retention lease.
    let record = s
        .lab
        .get(&format!("/extip/allocations/{ip}"))
        .expect("IP record");
    assert!(!record.contains("default/http\""), "{record}");
    let leased = s
        .lab
        .etcdctl(&["get", &format!("/extip/allocations/{ip}"), "-w", "json"])
        .unwrap_or_default();
    assert!(
        !leased.contains("\"lease\""),
        "the record is on a lease: {leased}"
    );
}
