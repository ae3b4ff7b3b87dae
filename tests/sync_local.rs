//! `externalTrafficPolicy: Local`: a Service's IP goes only to nodes with a ready
//! endpoint (EndpointSlices applied with the real kubectl), follows them when they move,
//! is withdrawn with a Warning Event when none is left and comes back with the next one.
//! Holders are read with `ip -j addr`, the router's next hops with `ip -j route`, the
//! desired key with etcdctl.

// The lab and the stand-in API server both include the one-function tests/common/netns.rs.
#![allow(clippy::duplicate_mod)]

mod kube;
mod lab;
mod synclab;

use std::time::{Duration, Instant};

use kube::{endpoint_slice, endpoint_slice_of, EndpointState};
use lab::routing::holder_gateways;
use lab::{wait_for, Lab};
use synclab::{service, wait_leader, SyncLab};

/// A LoadBalancer Service with `externalTrafficPolicy: Local` and `extra` spec lines.
fn local_service(extra: &str) -> String {
    let spec = format!("  type: LoadBalancer\n  externalTrafficPolicy: Local\n{extra}");
    service("web", &spec)
}

/// The `nodes` of the desired key of `ip`, as etcdctl prints it (`None`: no key).
fn listed_nodes(s: &SyncLab, ip: &str) -> Option<serde_json::Value> {
    let value = s.lab.get(&format!("/extip/ips/{ip}"))?;
    let json: serde_json::Value = serde_json::from_str(&value).expect("desired JSON");
    Some(json["nodes"].clone())
}

/// Warning Events with `reason` on Service `web`, as kubectl prints them.
fn warnings(s: &SyncLab, reason: &str) -> usize {
    let events: serde_json::Value =
        serde_json::from_str(&s.api.events_of("web")).expect("events JSON");
    events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == "Warning" && e["reason"] == reason)
        .count()
}

#[test]
fn an_exclusive_ip_stays_on_nodes_with_a_ready_endpoint_and_follows_them() {
    let mut s = SyncLab::new(3, false);
    s.lab.start_agent(0, &[]);
    s.lab.start_agent(1, &[]);
    // h3 is `worker-3` to Kubernetes: the label maps its EndpointSlice nodeName.
    s.lab
        .start_agent(2, &["--label", "extip.io/kubernetes-node=worker-3"]);
    let _sync = s.sync("s1", &[]);
    wait_leader(&s);
    s.api.apply(&endpoint_slice(
        "web",
        "web-1",
        &[("h1", true), ("worker-3", true)],
    ));
    s.api.apply(&local_service(""));
    wait_for(Duration::from_secs(15), || !s.ingress("web").is_empty()).expect("an IP");
    let ip = s.ingress("web");
    wait_for(Duration::from_secs(10), || s.lab.holders(&ip).len() == 1).expect("held");
    assert_eq!(
        listed_nodes(&s, &ip),
        Some(serde_json::json!(["h1", "worker-3"]))
    );
    let first = s.lab.holders(&ip)[0];
    assert!([0, 2].contains(&first), "held by h{}", first + 1);

    // The holder's endpoint moves to h2: the IP leaves it for a node that has one.
    let (kept, kept_index) = if first == 0 {
        ("worker-3", 2)
    } else {
        ("h1", 0)
    };
    let start = Instant::now();
    s.api.apply(&endpoint_slice(
        "web",
        "web-1",
        &[(kept, true), ("h2", true)],
    ));
    let moved = wait_for(Duration::from_secs(15), || {
        let h = s.lab.holders(&ip);
        h.len() == 1 && h[0] != first
    });
    let moved = moved.unwrap_or_else(|| panic!("still on {:?}", s.lab.holders(&ip)));
    let now = s.lab.holders(&ip)[0];
    assert!([kept_index, 1].contains(&now), "moved to h{}", now + 1);
    eprintln!(
        "endpoint moved: IP left h{} for h{} {moved:?} after kubectl apply ({:?} in all)",
        first + 1,
        now + 1,
        start.elapsed()
    );

    // No ready endpoint: withdrawn from every host, the key gone, one Warning Event;
    // the Service keeps its allocated IP in its status.
    s.api.apply(&endpoint_slice(
        "web",
        "web-1",
        &[(kept, false), ("h2", false)],
    ));
    let gone = wait_for(Duration::from_secs(15), || {
        s.lab.holders(&ip).is_empty() && listed_nodes(&s, &ip).is_none()
    });
    gone.unwrap_or_else(|| panic!("still held by {:?}", s.lab.holders(&ip)));
    wait_for(Duration::from_secs(10), || {
        warnings(&s, "NoReadyEndpoints") == 1
    })
    .expect("a NoReadyEndpoints Warning Event");
    assert_eq!(s.ingress("web"), ip);

    // One ready endpoint again (h1 only): served there and nowhere else.
    s.api
        .apply(&endpoint_slice("web", "web-1", &[("h1", true)]));
    wait_for(Duration::from_secs(15), || s.lab.holders(&ip) == [0])
        .unwrap_or_else(|| panic!("held by {:?}", s.lab.holders(&ip)));
    assert_eq!(listed_nodes(&s, &ip), Some(serde_json::json!(["h1"])));
    assert_eq!(
        warnings(&s, "NoReadyEndpoints"),
        1,
        "one Event per withdrawal"
    );
}

#[test]
fn a_rolling_update_keeps_the_ip_on_terminating_serving_endpoints_until_a_new_one_is_ready() {
    use EndpointState::{Ready, Starting, TerminatingServing};
    let mut s = SyncLab::new(3, false);
    for i in 0..3 {
        s.lab.start_agent(i, &[]);
    }
    let _sync = s.sync("s1", &[]);
    wait_leader(&s);
    s.api
        .apply(&endpoint_slice_of("web", "web-1", &[("h1", Ready)]));
    s.api.apply(&local_service(""));
    wait_for(Duration::from_secs(15), || !s.ingress("web").is_empty()).expect("an IP");
    let ip = s.ingress("web");
    wait_for(Duration::from_secs(10), || s.lab.holders(&ip) == [0]).expect("held by h1");
    let watch =
        lab::holders::HolderMonitor::start(&mut s.lab, &[0, 1, 2], std::slice::from_ref(&ip));

    // The old pod on h1 terminates but still serves; the new one on h2 is not ready yet.
    // kube-proxy keeps sending h1's traffic to the old pod: h1 keeps the IP.
    let slice = |endpoints: &[(&str, EndpointState)]| endpoint_slice_of("web", "web-1", endpoints);
    s.api
        .apply(&slice(&[("h1", TerminatingServing), ("h2", Starting)]));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(s.lab.holders(&ip), [0], "the IP left the serving node");
    assert_eq!(listed_nodes(&s, &ip), Some(serde_json::json!(["h1"])));

    // The new pod is ready: the IP goes to h2 while h1's old pod still serves.
    let start = Instant::now();
    s.api
        .apply(&slice(&[("h1", TerminatingServing), ("h2", Ready)]));
    wait_for(Duration::from_secs(15), || s.lab.holders(&ip) == [1])
        .unwrap_or_else(|| panic!("held by {:?}", s.lab.holders(&ip)));
    let moved = start.elapsed();
    assert_eq!(listed_nodes(&s, &ip), Some(serde_json::json!(["h2"])));
    // The old pod is gone.
    s.api.apply(&slice(&[("h2", Ready)]));
    std::thread::sleep(Duration::from_millis(500));
    let seen = watch.stop();
    seen.assert_one_holder("rolling update");
    let silence = seen
        .wire
        .longest_silence
        .values()
        .max()
        .copied()
        .unwrap_or_default();
    eprintln!(
        "rolling update under ETP Local: moved to the new pod's node {moved:?} after it was \
         ready; longest time nobody answered for the IP on the wire: {silence:?}"
    );
    // The hand-over itself, a few milliseconds; a withdrawal would be seconds.
    assert!(
        silence < Duration::from_millis(500),
        "the IP went unanswered for {silence:?}"
    );
    assert_eq!(warnings(&s, "NoReadyEndpoints"), 0, "never withdrawn");
}

#[test]
fn with_replicas_all_the_router_next_hops_are_exactly_the_endpoint_nodes() {
    let (lab, router, _client) = Lab::routed(3, &["--lease-ttl", "3s"]);
    let s = SyncLab::on(lab);
    let _sync = s.sync("s1", &[]);
    wait_leader(&s);
    s.api.apply(&endpoint_slice(
        "web",
        "web-1",
        &[("h1", true), ("h3", true)],
    ));
    let manifest = local_service("").replace(
        "metadata:\n  name: web\n",
        "metadata:\n  name: web\n  annotations:\n    extip.io/replicas: all\n",
    );
    s.api.apply(&manifest);
    wait_for(Duration::from_secs(15), || !s.ingress("web").is_empty()).expect("an IP");
    let ip = s.ingress("web");
    let hops = |want: &[&str]| {
        let want: Vec<String> = want.iter().map(|h| h.to_string()).collect();
        wait_for(Duration::from_secs(20), || {
            s.lab.router_next_hops(&router, &ip) == want && holder_gateways(&s.lab, &ip) == want
        })
    };
    hops(&["192.0.2.1", "192.0.2.3"]).unwrap_or_else(|| {
        panic!(
            "router {:?}, holders {:?}",
            s.lab.router_next_hops(&router, &ip),
            holder_gateways(&s.lab, &ip)
        )
    });

    // The endpoint on h3 moves to h2: the router's next hops follow.
    let start = Instant::now();
    s.api.apply(&endpoint_slice(
        "web",
        "web-1",
        &[("h1", true), ("h2", true)],
    ));
    let followed = hops(&["192.0.2.1", "192.0.2.2"]);
    let followed = followed.unwrap_or_else(|| {
        panic!(
            "router {:?}, holders {:?}",
            s.lab.router_next_hops(&router, &ip),
            holder_gateways(&s.lab, &ip)
        )
    });
    eprintln!(
        "endpoint moved h3 -> h2: router next hops followed {followed:?} after kubectl apply \
         ({:?} in all)",
        start.elapsed()
    );

    // None ready: the route leaves the router; one back: it returns with one next hop.
    s.api.apply(&endpoint_slice(
        "web",
        "web-1",
        &[("h1", false), ("h2", false)],
    ));
    let start = Instant::now();
    hops(&[]).expect("the route left the router");
    eprintln!(
        "no ready endpoint: route withdrawn after {:?}",
        start.elapsed()
    );
    s.api
        .apply(&endpoint_slice("web", "web-1", &[("h3", true)]));
    hops(&["192.0.2.3"]).expect("served from h3 again");
}
