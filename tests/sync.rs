//! extip-sync end to end: the stand-in API server (driven with the real kubectl), a
//! real etcd, two sync replicas and agents in lab namespaces. Results are read with
//! `ip`, `etcdctl` and `kubectl`, never with extip's code.

// The lab and the stand-in API server both include the one-function tests/common/netns.rs.
#![allow(clippy::duplicate_mod)]

mod kube;
mod lab;
mod synclab;

use std::time::{Duration, Instant};

use lab::wait_for;
use synclab::{
    every_sync_request_is_allowed_by_the_shipped_cluster_role, service, wait_leader, EtcdWatch,
    SyncLab, ELECTION_TTL, LEASE_TTL,
};

#[test]
fn external_ip_follows_kubectl_apply_and_delete() {
    let s = SyncLab::new(3, true);
    let (_a, _b) = (s.sync("sync-a", &[]), s.sync("sync-b", &[]));
    wait_leader(&s);
    // Let both replicas finish their first list so the clock below measures one change.
    wait_for(Duration::from_secs(15), || {
        s.api
            .requests()
            .iter()
            .filter(|r| r.contains("watch=true"))
            .count()
            >= 2
    })
    .expect("both replicas watch");
    let start = Instant::now();
    s.api
        .apply(&service("web", "  externalIPs: [198.51.100.20]\n"));
    let served = wait_for(Duration::from_secs(10), || {
        s.lab.holders("198.51.100.20").len() == 1
    });
    let served = served.expect("198.51.100.20 on one host");
    eprintln!("kubectl apply -> IP on a host: {:?}", start.elapsed());
    assert!(served <= Duration::from_secs(2), "took {served:?}");
    let key = s
        .desired()
        .into_iter()
        .find(|(k, _)| k == "/extip/ips/198.51.100.20")
        .expect("desired key");
    assert_eq!(key.1["source"], "default/web");
    assert_eq!(key.1["managed_by"], "extip-sync");
    // `extip status` tells the operator which Service an IP is for.
    let table = s.lab.extip(&["status"]);
    let row = table
        .lines()
        .find(|l| l.starts_with("198.51.100.20 "))
        .expect("status row");
    assert!(
        table.contains("SOURCE") && row.ends_with("default/web"),
        "{table}"
    );

    let start = Instant::now();
    s.api.kubectl(&["delete", "svc", "web"]);
    let gone = wait_for(Duration::from_secs(10), || {
        s.lab.holders("198.51.100.20").is_empty()
    });
    let gone = gone.expect("198.51.100.20 removed");
    eprintln!("kubectl delete -> IP gone: {:?}", start.elapsed());
    assert!(gone <= Duration::from_secs(2), "took {gone:?}");
    assert!(s.lab.get("/extip/ips/198.51.100.20").is_none());
}

#[test]
fn an_external_ip_outside_the_allowlist_never_reaches_etcd_and_gets_an_event() {
    let s = SyncLab::new(1, false);
    let watch = EtcdWatch::start(&s.lab, "/extip/ips/", "ips.watch");
    let a = s.sync("sync-a", &[]);
    wait_leader(&s);
    // Outside --allow-external-ip (198.51.100.0/25): refused, with an Event kubectl shows.
    s.api
        .apply(&service("hijack", "  externalIPs: [203.0.113.50]\n"));
    let events = || s.api.events_of("hijack");
    let event = wait_for(Duration::from_secs(10), || {
        events().contains("ExternalIPRefused")
    });
    assert!(event.is_some(), "no ExternalIPRefused event");
    let events = events();
    assert!(
        events.contains("203.0.113.50") && events.contains("CVE-2020-8554"),
        "{events}"
    );
    // A later change makes the leader reconcile again; the IP still must not appear.
    s.api
        .apply(&service("other", "  externalIPs: [198.51.100.21]\n"));
    s.wait_desired("198.51.100.21");
    assert!(
        !watch.text().contains("203.0.113.50"),
        "refused IP reached etcd:\n{}",
        watch.text()
    );
    assert_eq!(
        s.api.events().len(),
        1,
        "one Event per refusal, not one per reconcile"
    );
    assert_eq!(a.metric("extip_sync_refusals"), Some(1.0));
    every_sync_request_is_allowed_by_the_shipped_cluster_role(&s.api, ("create", "events"));
}

#[test]
fn load_balancer_gets_a_pool_ip_in_its_status_and_keeps_it_when_recreated() {
    let s = SyncLab::new(3, true);
    let (a, b) = (s.sync("sync-a", &[]), s.sync("sync-b", &[]));
    wait_leader(&s);
    let lb = service("shop", "  type: LoadBalancer\n");
    s.api.apply(&lb);
    wait_for(Duration::from_secs(10), || !s.ingress("shop").is_empty()).expect("ingress IP");
    let ip = s.ingress("shop");
    assert!(
        ip.starts_with("198.51.100.1"),
        "{ip} is not from the pool 198.51.100.128/25"
    );
    let table = s.api.kubectl(&["get", "svc", "shop"]);
    assert!(
        table.contains(&ip) && table.contains("LoadBalancer"),
        "{table}"
    );
    wait_for(Duration::from_secs(10), || s.lab.holders(&ip).len() == 1).expect("LB IP on a host");

    s.api.kubectl(&["delete", "svc", "shop"]);
    wait_for(Duration::from_secs(10), || s.lab.holders(&ip).is_empty())
        .expect("withdrawn on delete");
    let kept = s
        .lab
        .get("/extip/allocations/default/shop")
        .expect("allocation kept for the retention window");
    assert!(kept.contains("released_at"), "{kept}");
    // Another Service asking meanwhile must not get the kept IP.
    s.api.apply(&service("other", "  type: LoadBalancer\n"));
    wait_for(Duration::from_secs(10), || !s.ingress("other").is_empty()).expect("other's IP");
    assert_ne!(s.ingress("other"), ip);

    s.api.apply(&lb);
    wait_for(Duration::from_secs(10), || !s.ingress("shop").is_empty()).expect("ingress IP again");
    assert_eq!(s.ingress("shop"), ip, "re-created Service got another IP");
    wait_for(Duration::from_secs(10), || s.lab.holders(&ip).len() == 1).expect("served again");

    // An IP asked for by annotation: exactly that one; replicas from the annotation too.
    let pinned = "apiVersion: v1\nkind: Service\nmetadata:\n  name: pinned\n  annotations:\n    \
                  extip.io/ip: 198.51.100.200\n    extip.io/replicas: \"2\"\nspec:\n  \
                  type: LoadBalancer\n  ports:\n  - port: 80\n";
    s.api.apply(pinned);
    wait_for(Duration::from_secs(10), || {
        s.ingress("pinned") == "198.51.100.200"
    })
    .expect("the asked-for IP");
    // `kubectl describe svc pinned` tells its owner where the IP came from.
    let allocated = || s.api.events_of("pinned");
    wait_for(Duration::from_secs(10), || {
        allocated().contains("IPAllocated")
    })
    .expect("IPAllocated Event");
    let described = s.api.kubectl(&["describe", "svc", "pinned"]);
    assert!(
        described.contains("IPAllocated") && described.contains("198.51.100.200"),
        "{described}"
    );
    wait_for(Duration::from_secs(10), || {
        s.lab.holders("198.51.100.200").len() == 2
    })
    .expect("on two hosts");
    every_sync_request_is_allowed_by_the_shipped_cluster_role(&s.api, ("patch", "services/status"));

    // What an operator's Prometheus sees: one leader, its counts, both replicas ready.
    let (leader, standby) = if s.leader().as_deref() == Some(a.identity()) {
        (&a, &b)
    } else {
        (&b, &a)
    };
    let counts = || {
        (
            leader.metric("extip_sync_desired_keys"),
            leader.metric("extip_sync_allocations"),
        )
    };
    wait_for(Duration::from_secs(10), || {
        counts() == (Some(3.0), Some(3.0))
    })
    .unwrap_or_else(|| panic!("desired keys, allocations: {:?}", counts()));
    assert_eq!(leader.metric("extip_sync_leader"), Some(1.0));
    assert_eq!(standby.metric("extip_sync_leader"), Some(0.0));
    assert_eq!(standby.metric("extip_sync_services"), Some(3.0));
    assert_eq!(leader.http("/readyz").0, 200);
    assert_eq!(standby.http("/readyz").0, 200);
    let (_, text) = leader.http("/metrics");
    assert!(
        text.contains("extip_sync_reconciles_total{result=\"ok\"}"),
        "{text}"
    );
}

#[test]
fn two_racing_leaders_hand_200_load_balancers_200_distinct_ips() {
    let s = SyncLab::new(1, false);
    // 200 IPs need more than the /25 of `lb`.
    s.lab.extip(&["pool", "rm", "lb"]);
    s.lab
        .extip(&["pool", "add", "race", "203.0.113.0/24", "--auto-assign"]);
    let list: String = (0..200)
        .map(|i| {
            format!(
                "---\n{}",
                service(&format!("lb-{i:03}"), "  type: LoadBalancer\n")
            )
        })
        .collect();
    s.api.apply(&list);
    // Both replicas find all 200 waiting and allocate at once, each believing it leads.
    let start = Instant::now();
    let (a, b) = (
        s.sync("race-a", &["--assume-leader"]),
        s.sync("race-b", &["--assume-leader"]),
    );
    let ips = || s.ingress_ips();
    let done = wait_for(Duration::from_secs(60), || ips().len() == 200);
    done.unwrap_or_else(|| panic!("only {} of 200 Services got an IP", ips().len()));
    let races = a.log().matches("lost a race").count() + b.log().matches("lost a race").count();
    let counted = || {
        let total = |r: &synclab::SyncReplica| {
            r.metric("extip_sync_allocation_races_total")
                .unwrap_or(-1.0)
        };
        total(&a) + total(&b)
    };
    // The metric is set after the reconcile's allocations: wait for the last one.
    wait_for(Duration::from_secs(10), || counted() == races as f64)
        .unwrap_or_else(|| panic!("races: {} in the metric, {races} in the logs", counted()));
    eprintln!(
        "200 LoadBalancer IPs from two racing syncs in {:?}; {races} allocation txns lost a race",
        start.elapsed()
    );
    let mut all = ips();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 200, "an IP was handed out twice");
    // etcd agrees: one record per Service and one per IP, pointing at each other.
    let records = s
        .lab
        .etcdctl(&["get", "--prefix", "/extip/allocations/"])
        .expect("allocations");
    let lines: Vec<&str> = records.lines().collect();
    let (mut services, mut owned) = (0, 0);
    for kv in lines.chunks(2) {
        let v: serde_json::Value = serde_json::from_str(kv[1]).expect("allocation JSON");
        if v["ip"].is_string() {
            services += 1;
        } else {
            owned += 1;
        }
    }
    assert_eq!((services, owned), (200, 200), "{records}");
    assert_eq!(s.desired().len(), 200);
}

#[test]
fn killing_the_leading_sync_loses_no_desired_key_and_the_standby_takes_over() {
    let s = SyncLab::new(3, true);
    let mut a = s.sync("sync-a", &[]);
    wait_for(Duration::from_secs(15), || {
        s.leader().as_deref() == Some("sync-a")
    })
    .expect("sync-a leads");
    let b = s.sync("sync-b", &[]);
    let list: String = (20..30)
        .map(|i| {
            format!(
                "---\n{}",
                service(
                    &format!("web-{i}"),
                    &format!("  externalIPs: [198.51.100.{i}]\n")
                )
            )
        })
        .collect();
    s.api.apply(&list);
    wait_for(Duration::from_secs(10), || s.desired().len() == 10).expect("10 desired keys");
    let watch = EtcdWatch::start(&s.lab, "/extip/ips/", "failover.watch");
    let killed = Instant::now();
    let _ = a.child.kill();
    let took = wait_for(ELECTION_TTL * 3, || s.leader().as_deref() == Some("sync-b"));
    let took = took.expect("sync-b leads");
    eprintln!("sync-a killed -> sync-b leads after {took:?}");
    assert!(
        took <= ELECTION_TTL + Duration::from_secs(2),
        "took {took:?}"
    );
    // Past the dead leader's data lease: every key must still be there (re-attached).
    while killed.elapsed() < LEASE_TTL + Duration::from_secs(2) {
        assert_eq!(s.desired().len(), 10, "a desired key disappeared");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        !watch.text().contains("DELETE"),
        "a desired key was deleted:\n{}",
        watch.text()
    );
    for i in 20..30 {
        assert_eq!(
            s.lab.holders(&format!("198.51.100.{i}")).len(),
            1,
            "198.51.100.{i} not served"
        );
    }
    assert!(b.log().contains("leading"), "{}", b.log());
}

#[test]
fn a_410_gone_watch_makes_the_sync_relist_and_pick_up_what_changed_meanwhile() {
    let s = SyncLab::new(1, false);
    // Left over from an earlier sync, for a Service that no longer exists; and one of the
    // operator's own. The first list removes the first and never touches the second.
    s.lab.put(
        "/extip/ips/198.51.100.99",
        r#"{"managed_by":"extip-sync","source":"default/gone"}"#,
    );
    s.lab.extip(&["ip", "add", "198.51.100.98"]);
    let _a = s.sync("sync-a", &[]);
    wait_leader(&s);
    s.api
        .apply(&service("web", "  externalIPs: [198.51.100.20]\n"));
    s.wait_desired("198.51.100.20");
    assert!(
        s.lab.get("/extip/ips/198.51.100.99").is_none(),
        "stale synced key kept"
    );
    assert_eq!(
        s.lab.get("/extip/ips/198.51.100.98").as_deref(),
        Some("{}"),
        "the operator's key was touched"
    );
    let bookmarks = |r: &String| r.contains("watch=true") && r.contains("allowWatchBookmarks=true");
    assert!(s.api.requests().iter().any(bookmarks));
    let lists = || {
        s.api
            .requests()
            .iter()
            .filter(|r| r.starts_with("GET /api/v1/services?") && !r.contains("watch=true"))
            .count()
    };
    let before = lists();
    // The watch goes quiet, the Service changes, then history is compacted: the sync's
    // next watch gets 410 Gone, and only a re-list can show it the change.
    s.api.pause_watches();
    s.api
        .merge_patch("web", r#"{"spec":{"externalIPs":["198.51.100.21"]}}"#);
    s.api.expire_watches();
    let converged = wait_for(Duration::from_secs(20), || {
        s.lab.get("/extip/ips/198.51.100.21").is_some()
            && s.lab.get("/extip/ips/198.51.100.20").is_none()
    });
    assert!(
        converged.is_some(),
        "the change made while the watch was down was not picked up"
    );
    assert!(
        lists() > before,
        "no re-list after 410 Gone: {:?}",
        s.api.requests()
    );
}

#[test]
fn a_sync_limited_to_namespaces_serves_only_their_services() {
    let s = SyncLab::new(1, false);
    let _a = s.sync("ns-only", &["--namespace", "shop,blog"]);
    wait_leader(&s);
    let svc = |ns: &str, ip: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: {ns}\nspec:\n  \
             ports:\n  - port: 80\n  externalIPs: [{ip}]\n"
        )
    };
    s.api.apply(&svc("default", "198.51.100.30"));
    s.api.apply(&svc("shop", "198.51.100.31"));
    s.api.apply(&svc("blog", "198.51.100.32"));
    wait_for(Duration::from_secs(10), || {
        s.lab.get("/extip/ips/198.51.100.31").is_some()
            && s.lab.get("/extip/ips/198.51.100.32").is_some()
    })
    .expect("shop and blog served");
    let key = s.lab.get("/extip/ips/198.51.100.31").unwrap();
    assert!(key.contains("shop/web"), "{key}");
    // default/web came first; had the sync watched default, its key would exist by now.
    assert!(s.lab.get("/extip/ips/198.51.100.30").is_none());
    let watched: Vec<String> = s
        .api
        .requests()
        .into_iter()
        .filter(|r| r.contains("watch=true"))
        .collect();
    assert!(
        watched
            .iter()
            .all(|r| r.contains("/namespaces/shop/") || r.contains("/namespaces/blog/")),
        "{watched:?}"
    );
}

#[test]
fn a_load_balancer_waiting_for_a_pool_gets_its_ip_as_soon_as_one_is_added() {
    let s = SyncLab::new(1, false);
    s.lab.extip(&["pool", "rm", "lb"]);
    let _a = s.sync("sync-a", &[]);
    wait_leader(&s);
    s.api.apply(&service("shop", "  type: LoadBalancer\n"));
    let no_pool = || s.api.events_of("shop").contains("\"NoPool\"");
    wait_for(Duration::from_secs(10), no_pool).expect("a NoPool Event");
    let pending = s.api.kubectl(&["get", "svc", "shop"]);
    assert!(pending.contains("<pending>"), "{pending}");
    let added = Instant::now();
    s.lab
        .extip(&["pool", "add", "late", "198.51.100.64/28", "--auto-assign"]);
    // The resync is 60 s: only the watch on the pools makes this quick.
    let took = wait_for(Duration::from_secs(10), || !s.ingress("shop").is_empty()).expect("an IP");
    eprintln!("pool added -> ingress IP after {:?}", added.elapsed());
    assert!(took <= Duration::from_secs(5), "took {took:?}");
    assert!(s.ingress("shop").starts_with("198.51.100."));
}

#[test]
fn a_desired_key_that_is_not_json_is_logged_once_and_never_overwritten() {
    let s = SyncLab::new(1, false);
    s.lab.put("/extip/ips/198.51.100.97", "not json");
    let a = s.sync("sync-a", &[]);
    wait_leader(&s);
    s.api
        .apply(&service("junk", "  externalIPs: [198.51.100.97]\n"));
    s.api
        .apply(&service("fine", "  externalIPs: [198.51.100.96]\n"));
    s.wait_desired("198.51.100.96");
    // More reconciles: each must leave the key alone and not log it again.
    s.api
        .merge_patch("fine", r#"{"metadata":{"labels":{"touched":"yes"}}}"#);
    let ok_reconciles = || {
        let (_, text) = a.http("/metrics");
        text.lines()
            .find_map(|l| l.strip_prefix("extip_sync_reconciles_total{result=\"ok\"} "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    wait_for(Duration::from_secs(10), || ok_reconciles() >= 3.0).expect("three good reconciles");
    assert_eq!(
        s.lab.get("/extip/ips/198.51.100.97").as_deref(),
        Some("not json")
    );
    let log = a.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("bad data in etcd"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(
        lines[0].contains("/extip/ips/198.51.100.97"),
        "{}",
        lines[0]
    );
    assert!(!log.contains("reconcile failed"), "{log}");
}

#[test]
fn the_sync_rides_out_an_etcd_restart_and_keeps_serving_changes() {
    let mut s = SyncLab::new(1, false);
    let a = s.sync("sync-a", &[]);
    wait_leader(&s);
    s.api
        .apply(&service("before", "  externalIPs: [198.51.100.40]\n"));
    s.wait_desired("198.51.100.40");
    s.lab.kill_member(0);
    // A change while etcd is down waits for it; nothing is lost.
    s.api
        .apply(&service("during", "  externalIPs: [198.51.100.41]\n"));
    std::thread::sleep(Duration::from_secs(2));
    s.lab.start_member(0);
    let back = wait_for(Duration::from_secs(30), || {
        s.lab.get("/extip/ips/198.51.100.41").is_some()
    });
    let back = back.unwrap_or_else(|| {
        panic!(
            "the change made during the outage never arrived:\n{}",
            a.log()
        )
    });
    eprintln!("etcd back -> change written after {back:?}");
    assert!(
        s.lab.get("/extip/ips/198.51.100.40").is_some(),
        "a key was lost"
    );
    s.api
        .apply(&service("after", "  externalIPs: [198.51.100.42]\n"));
    s.wait_desired("198.51.100.42");
    assert_eq!(s.leader().as_deref(), Some("sync-a"));
    // It led on with its own election lease rather than waiting for that lease to expire.
    assert!(
        a.log().contains("the leader key is still ours"),
        "{}",
        a.log()
    );
}
