//! IpPool objects end to end: the CRD from config/k8s/ applied with the real kubectl to
//! the stand-in API server, extip-sync writing them into a real etcd, agents in lab
//! namespaces serving their IPs. Results are read with kubectl, etcdctl, `ip` and ARP.

// The lab and the stand-in API server both include the one-function tests/common/netns.rs.
#![allow(clippy::duplicate_mod)]

mod kube;
mod lab;
mod synclab;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use lab::wait_for;
use serde_json::Value;
use synclab::{every_sync_request_is_allowed_by_the_shipped_cluster_role, service, SyncLab};

const CRD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/k8s/ippool-crd.yaml");

/// An IpPool manifest named `name` with `spec` lines (two-space indented under spec).
fn ippool(name: &str, spec: &str) -> String {
    format!("apiVersion: extip.io/v1alpha1\nkind: IpPool\nmetadata:\n  name: {name}\nspec:\n{spec}")
}

/// The etcd pool `name` as JSON, if the key exists.
fn etcd_pool(s: &SyncLab, name: &str) -> Option<Value> {
    let text = s.lab.get(&format!("/extip/pools/{name}"))?;
    Some(serde_json::from_str(&text).expect("a pool value is JSON"))
}

/// The IpPool `name` as kubectl prints it in JSON.
fn object(s: &SyncLab, name: &str) -> Value {
    serde_json::from_str(&s.api.kubectl(&["get", "ippool", name, "-o", "json"])).expect("json")
}

/// `(status, reason)` of condition `kind` of IpPool `name`.
fn condition(s: &SyncLab, name: &str, kind: &str) -> Option<(String, String)> {
    let obj = object(s, name);
    let c = obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)?
        .clone();
    Some((c["status"].as_str()?.into(), c["reason"].as_str()?.into()))
}

/// Wait until condition `kind` of `name` has `status` and `reason`.
fn wait_condition(s: &SyncLab, name: &str, kind: &str, want: (&str, &str)) {
    let want = Some((want.0.to_string(), want.1.to_string()));
    wait_for(Duration::from_secs(10), || condition(s, name, kind) == want).unwrap_or_else(|| {
        panic!(
            "{name} {kind}: want {want:?}, have {:?}",
            condition(s, name, kind)
        )
    });
}

/// Reasons of the Warning Events on `name`.
fn warnings(s: &SyncLab, name: &str) -> Vec<String> {
    let json: Value = serde_json::from_str(&s.api.events_of(name)).expect("events json");
    let items = json["items"].as_array().cloned().unwrap_or_default();
    items
        .iter()
        .filter(|e| e["type"] == "Warning")
        .filter_map(|e| e["reason"].as_str().map(str::to_string))
        .collect()
}

/// The cells of the row named `name` in a kubectl table, cut at the header's columns.
fn row_of(table: &str, name: &str) -> Vec<String> {
    let mut lines = table.lines();
    let header = lines.next().unwrap_or_default();
    let starts: Vec<usize> = header
        .match_indices(|c: char| c != ' ')
        .filter(|(i, _)| *i == 0 || header.as_bytes()[i - 1] == b' ')
        .map(|(i, _)| i)
        .collect();
    let row = lines.find(|l| l.starts_with(name)).unwrap_or_default();
    let cut = |i: usize| starts.get(i).map_or(row.len(), |&at| at.min(row.len()));
    (0..starts.len())
        .map(|i| row[cut(i)..cut(i + 1)].trim().to_string())
        .collect()
}

/// A lab of two hosts with agents, the CRD installed, one extip-sync leading, and no
/// etcd pool but what the test writes.
fn ippool_lab() -> (SyncLab, synclab::SyncReplica) {
    let mut lab = lab::Lab::new(2);
    lab.start_all();
    let s = SyncLab::on(lab);
    s.lab.extip(&["pool", "rm", "lb"]);
    let crd = std::fs::read_to_string(CRD).expect("CRD file");
    s.api.apply(&crd);
    let sync = s.sync("sync-a", &[]);
    synclab::wait_leader(&s);
    (s, sync)
}

#[test]
fn an_ippool_becomes_an_etcd_pool_whose_ip_a_load_balancer_gets_and_one_host_answers() {
    let (mut s, _sync) = ippool_lab();
    let start = Instant::now();
    s.api
        .apply(&ippool("edge", "  cidr: 198.51.100.0/28\n  mask: 32\n"));
    wait_for(Duration::from_secs(10), || etcd_pool(&s, "edge").is_some())
        .expect("/extip/pools/edge written");
    eprintln!("kubectl apply IpPool -> etcd pool: {:?}", start.elapsed());
    let pool = etcd_pool(&s, "edge").expect("pool");
    assert_eq!(pool["cidr"], "198.51.100.0/28", "{pool}");
    assert_eq!(pool["prefix_len"], 32, "{pool}");
    assert_eq!(pool["auto_assign"], true, "the CRD's default: {pool}");
    assert_eq!(pool["managed_by"], "extip-sync", "{pool}");
    // `extip pool ls` shows it beside hand-written pools.
    let listed = s.lab.extip(&["pool", "ls"]);
    assert!(listed.contains("edge"), "{listed}");

    s.api.apply(&service("shop", "  type: LoadBalancer\n"));
    wait_for(Duration::from_secs(10), || !s.ingress("shop").is_empty())
        .expect("shop gets an ingress IP");
    let ip = s.ingress("shop");
    let addr: Ipv4Addr = ip.parse().expect("IPv4");
    assert!(
        "198.51.100.0/28"
            .parse::<ipnet::Ipv4Net>()
            .unwrap()
            .contains(&addr),
        "{ip} is not from edge"
    );
    wait_for(Duration::from_secs(10), || s.lab.holders(&ip).len() == 1)
        .expect("one host lists the IP");
    let held = s.lab.holders(&ip)[0];
    assert!(
        s.lab.addresses(held, "lo").contains(&format!("{ip}/32")),
        "the pool's mask: {:?}",
        s.lab.addresses(held, "lo")
    );
    // kubectl get ippools counts it: 14 usable addresses in a /28, one taken.
    wait_for(Duration::from_secs(10), || {
        let obj = object(&s, "edge");
        obj["status"]["allocated"] == 1 && obj["status"]["free"] == 13
    })
    .unwrap_or_else(|| panic!("status: {}", object(&s, "edge")["status"]));
    wait_condition(&s, "edge", "Ready", ("True", "Accepted"));
    let table = s.api.kubectl(&["get", "ippools"]);
    let cells = row_of(&table, "edge");
    // kubectl leaves a cell blank when its column's path finds nothing (replicas unset).
    assert_eq!(
        cells[..6],
        ["edge", "198.51.100.0/28", "32", "", "1", "13"],
        "{table}"
    );
    every_sync_request_is_allowed_by_the_shipped_cluster_role(&s.api, ("patch", "ippools/status"));

    // A mask edit reaches etcd, and the holder replaces its live address (remove, add):
    // on the wire one MAC answers throughout, the gap no longer than the replacement.
    let client = s.lab.add_client();
    lab::l2::route_vips_on_link(&client);
    let wire = lab::wire::WireMonitor::start(&client, &[&ip]);
    std::thread::sleep(Duration::from_millis(200));
    let start = Instant::now();
    s.api
        .apply(&ippool("edge", "  cidr: 198.51.100.0/28\n  mask: 30\n"));
    wait_for(Duration::from_secs(10), || {
        etcd_pool(&s, "edge").is_some_and(|p| p["prefix_len"] == 30)
    })
    .unwrap_or_else(|| panic!("mask edit not in etcd: {:?}", etcd_pool(&s, "edge")));
    eprintln!(
        "kubectl apply mask edit -> etcd pool: {:?}",
        start.elapsed()
    );
    let on_holder = || s.lab.addresses(held, "lo").contains(&format!("{ip}/30"));
    wait_for(Duration::from_secs(10), on_holder)
        .unwrap_or_else(|| panic!("{ip}/30: {:?}", s.lab.addresses(held, "lo")));
    eprintln!(
        "kubectl apply mask edit -> /30 on the holder: {:?}",
        start.elapsed()
    );
    std::thread::sleep(Duration::from_millis(200));
    let wire = wire.stop();
    assert!(wire.overlaps.is_empty(), "{wire:?}");
    assert_eq!(
        wire.answered_by.get(&addr).map(|m| m.len()),
        Some(1),
        "{wire:?}"
    );
    let silence = wire.longest_silence[&addr];
    eprintln!(
        "wire: {} ARP rounds, longest unanswered {silence:?}",
        wire.rounds
    );
    assert!(silence < Duration::from_secs(1), "{wire:?}");

    // A replicas edit: the second host adds it too.
    let start = Instant::now();
    s.api.apply(&ippool(
        "edge",
        "  cidr: 198.51.100.0/28\n  mask: 30\n  replicas: 2\n",
    ));
    wait_for(Duration::from_secs(10), || {
        etcd_pool(&s, "edge").is_some_and(|p| p["replicas"] == 2)
    })
    .unwrap_or_else(|| panic!("replicas edit not in etcd: {:?}", etcd_pool(&s, "edge")));
    eprintln!(
        "kubectl apply replicas edit -> etcd pool: {:?}",
        start.elapsed()
    );
    wait_for(Duration::from_secs(10), || {
        (0..2).all(|i| s.lab.addresses(i, "lo").contains(&format!("{ip}/30")))
    })
    .unwrap_or_else(|| panic!("{ip}/30 on both hosts: {:?}", s.lab.addresses(0, "lo")));
    eprintln!(
        "kubectl apply replicas edit -> on both hosts: {:?}",
        start.elapsed()
    );

    // Deleting the IpPool deletes its etcd pool; the Service keeps its IP.
    let ips = synclab::EtcdWatch::start(&s.lab, "/extip/ips/", "ips.watch");
    s.api.kubectl(&["delete", "ippool", "edge"]);
    wait_for(Duration::from_secs(10), || etcd_pool(&s, "edge").is_none())
        .expect("/extip/pools/edge deleted with its IpPool");
    // The pool's delete and the Services' plan run in one reconcile; a second lets
    // its writes and Events land before the checks that nothing else changed.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(s.ingress("shop"), ip, "the Service lost its IP");
    assert!(
        !s.lab.holders(&ip).is_empty(),
        "no host holds {ip} any more"
    );
    assert!(!ips.text().contains("DELETE"), "{}", ips.text());
    // ... and no Warning that it could get none.
    assert_eq!(warnings(&s, "shop"), Vec::<String>::new());
}

#[test]
fn overlapping_clashing_and_invalid_ippools_are_refused_with_a_condition_and_an_event() {
    let (s, _sync) = ippool_lab();
    s.lab
        .extip(&["pool", "add", "taken", "203.0.113.0/28", "--auto-assign"]);
    s.api
        .apply(&ippool("edge", "  cidr: 198.51.100.0/28\n  mask: 32\n"));
    wait_condition(&s, "edge", "Ready", ("True", "Accepted"));

    // Overlapping an accepted IpPool: refused, and nothing in etcd.
    s.api.apply(&ippool("wide", "  cidr: 198.51.100.0/27\n"));
    wait_condition(&s, "wide", "Overlapping", ("True", "Overlapping"));
    wait_condition(&s, "wide", "Ready", ("False", "Overlapping"));
    assert!(
        etcd_pool(&s, "wide").is_none(),
        "an overlapping pool was written"
    );
    wait_for(Duration::from_secs(10), || {
        warnings(&s, "wide").contains(&"Overlapping".to_string())
    })
    .expect("an Overlapping Warning Event on wide");

    // A name an etcd pool has: the hand-written pool is left alone.
    s.api.apply(&ippool("taken", "  cidr: 203.0.113.64/28\n"));
    wait_condition(&s, "taken", "Ready", ("False", "NameTaken"));
    let hand = etcd_pool(&s, "taken").expect("the hand-written pool");
    assert_eq!(hand["cidr"], "203.0.113.0/28", "{hand}");
    assert!(hand.get("managed_by").is_none(), "{hand}");

    // A mask the CRD's CEL rule refuses on a real server (the stand-in does not run CEL):
    // extip-sync refuses it too and keeps the last good pool in etcd.
    s.api
        .apply(&ippool("edge", "  cidr: 198.51.100.0/28\n  mask: 33\n"));
    wait_condition(&s, "edge", "Ready", ("False", "InvalidSpec"));
    let kept = etcd_pool(&s, "edge").expect("edge kept");
    assert_eq!(kept["prefix_len"], 32, "{kept}");
    let message = object(&s, "edge")["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready").cloned())
        .unwrap_or_default();
    assert!(
        message["message"]
            .as_str()
            .unwrap_or("")
            .contains("spec.mask"),
        "{message}"
    );
    let w = warnings(&s, "edge");
    assert_eq!(
        w.iter().filter(|r| *r == "InvalidSpec").count(),
        1,
        "one Event per refusal: {w:?}"
    );
}
