//! `spec.loadBalancerClass`: extip-sync serves Services without a class by default, or
//! those of `--load-balancer-class`; a Service of another class belongs to another
//! controller and is never allocated, written to etcd or patched. Checked with kubectl,
//! etcdctl and an `etcdctl watch` that sees every write.

// The lab and the stand-in API server both include the one-function tests/common/netns.rs.
#![allow(clippy::duplicate_mod)]

mod kube;
mod lab;
mod synclab;

use std::time::Duration;

use lab::wait_for;
use synclab::{service, wait_leader, EtcdWatch, SyncLab};

const OTHER: &str = "example.com/other-lb";

/// `status.loadBalancer` of a Service as `kubectl get -o json` shows it.
fn load_balancer_status(s: &SyncLab, name: &str) -> serde_json::Value {
    let json = s.api.kubectl(&["get", "svc", name, "-o", "json"]);
    let svc: serde_json::Value = serde_json::from_str(&json).expect("kubectl JSON");
    svc["status"]["loadBalancer"].clone()
}

/// With `--load-balancer-class` set to `class` (if any), apply a Service of class `OTHER`
/// and one without a class; wait until the served one has its IP. The lab, the names of
/// the served and the left-alone Service, and everything written under /extip/.
fn run(class: Option<&str>) -> (SyncLab, String, String, String) {
    let s = SyncLab::new(1, false);
    let writes = EtcdWatch::start(&s.lab, "/extip/", "extip-writes");
    let flags: Vec<&str> = class
        .map(|c| vec!["--load-balancer-class", c])
        .unwrap_or_default();
    let _replica = s.sync("s1", &flags);
    wait_leader(&s);
    let classed = format!("  type: LoadBalancer\n  loadBalancerClass: {OTHER}\n");
    let plain = "  type: LoadBalancer\n".to_string();
    let ((served, served_spec), (left, left_spec)) = match class {
        Some(_) => (("classed", classed), ("plain", plain)),
        None => (("plain", plain), ("classed", classed)),
    };
    // The left-alone one first: one watch delivers both in order, so by the time the
    // served one has its IP the other has been seen.
    s.api.apply(&service(left, &left_spec));
    s.api.apply(&service(served, &served_spec));
    let got_ip = wait_for(Duration::from_secs(15), || !s.ingress(served).is_empty());
    assert!(got_ip.is_some(), "{served} got no IP");
    let seen = writes.text();
    drop(writes);
    (s, served.into(), left.into(), seen)
}

fn assert_left_alone(s: &SyncLab, left: &str, writes: &str) {
    let status = load_balancer_status(s, left);
    assert!(
        status
            .get("ingress")
            .is_none_or(|i| i.as_array().is_none_or(Vec::is_empty)),
        "{left} was patched: {status}"
    );
    let name = format!("default/{left}");
    assert!(
        !writes.contains(&name),
        "{name} was written to etcd:\n{writes}"
    );
    let keys = s
        .lab
        .etcdctl(&["get", "--prefix", "/extip/"])
        .unwrap_or_default();
    assert!(!keys.contains(&name), "{name} in etcd:\n{keys}");
}

#[test]
fn by_default_a_service_of_another_class_is_left_to_its_controller() {
    let (s, served, left, writes) = run(None);
    assert!(writes.contains(&format!("default/{served}")), "{writes}");
    assert_left_alone(&s, &left, &writes);
}

#[test]
fn with_a_class_only_services_of_that_class_are_served() {
    let (s, served, left, writes) = run(Some(OTHER));
    assert!(writes.contains(&format!("default/{served}")), "{writes}");
    assert_left_alone(&s, &left, &writes);
}
