//! The precise fence, in the lab: a holder whose agent stops renewing (SIGSTOP, SIGKILL,
//! cut off from etcd) stops answering for its IP at the fence deadline, read from its
//! own nftables set, as a client pinging every 2 ms sees it; no two hosts ever answer.
//! The fence lives in extip's own tables: a foreign table is left as it was, and a
//! graceful stop removes extip's.

mod lab;

use std::time::Duration;

use lab::fence::{graceful_stop_gaps, nft, one_run, Fault, VIP};
use lab::{wait_for, Lab};

#[test]
fn a_stopped_agent_s_host_goes_dark_at_its_fence_deadline() {
    for fault in [Fault::Freeze, Fault::Kill, Fault::CutFromEtcd] {
        let run = one_run(fault);
        let (dark, taken) = (run.dark, run.taken);
        println!(
            "{fault:?}: last reply of the old holder {:+.0} ms from its fence deadline, \
             first of the new one {:+.0} ms; wire: {} ARP rounds, never two MACs; \
             address tables: {} samples listed it on both hosts",
            dark * 1000.0,
            taken * 1000.0,
            run.wire_rounds,
            run.listed_overlaps
        );
        // The spec is 50 ms; tests assert generous bounds (the benchmark reports figures).
        assert!(
            dark <= 0.1,
            "{fault:?}: answered {dark:.3} s past the fence deadline"
        );
        assert!(
            dark >= -1.0,
            "{fault:?}: dark {dark:.3} s before the deadline"
        );
        assert!(taken > dark, "{fault:?}: the new holder answered first");
    }
}

#[test]
fn a_graceful_stop_hands_over_without_a_probe_in_a_few_milliseconds() {
    let mut gaps = graceful_stop_gaps(3);
    // The goal is 20 ms; a test only bounds generously (the benchmark has the figures).
    gaps.sort_by(f64::total_cmp);
    assert!(gaps[1] < 0.1, "median gap {:.3} s", gaps[1]);
}

#[test]
fn the_fence_is_extip_s_own_table_and_a_graceful_stop_removes_it() {
    let mut lab = Lab::new(1);
    let ns = lab.hosts[0].ns.clone();
    let nft = |command: &str| nft(&ns, command);
    nft("add table inet foreign; \
             add chain inet foreign input { type filter hook input priority 0; policy accept; }; \
             add rule inet foreign input counter");
    let foreign_before = nft("list table inet foreign");
    lab.start_all();
    lab.put(&format!("/extip/ips/{VIP}"), "{}");
    assert!(wait_for(Duration::from_secs(10), || lab.holders(VIP) == [0]).is_some());
    let fenced = nft("list set inet extip fenced4");
    assert!(
        fenced.contains(VIP),
        "{VIP} is not behind the fence:\n{fenced}"
    );
    let arp = nft("list set arp extip fenced4");
    assert!(arp.contains(VIP), "ARP for {VIP} is not fenced:\n{arp}");
    lab.signal(0, "TERM");
    assert_eq!(lab.wait_exit(0, Duration::from_secs(10)), Some(0));
    let tables = nft("list tables");
    assert!(
        !tables.contains("extip"),
        "fence tables left behind:\n{tables}"
    );
    let foreign_after = nft("list table inet foreign");
    let strip = |t: &str| {
        t.lines()
            .map(|l| l.split("counter").next().unwrap_or(l).to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        strip(&foreign_before),
        strip(&foreign_after),
        "the foreign table changed"
    );
}

#[test]
fn the_wire_monitor_catches_two_hosts_answering_and_not_a_fenced_one() {
    // The wire assertions above mean something only if this monitor can fail.
    let mut lab = Lab::new(2);
    let client = lab.add_client();
    lab::l2::route_vips_on_link(&client);
    for i in 0..2 {
        lab.exec(i, &["ip", "addr", "add", &format!("{VIP}/32"), "dev", "lo"]);
    }
    let both = lab::wire::WireMonitor::start(&client, &[VIP]);
    std::thread::sleep(Duration::from_millis(100));
    let both = both.stop();
    assert!(
        !both.overlaps.is_empty(),
        "missed two answering hosts: {both:?}"
    );
    // The same address behind a closed fence on h2: listed there, answered by h1 only.
    let ns = lab.hosts[1].ns.clone();
    nft(
        &ns,
        "add table arp t; \
             add chain arp t in { type filter hook input priority 0; policy drop; }",
    );
    let one = lab::wire::WireMonitor::start(&client, &[VIP]);
    std::thread::sleep(Duration::from_millis(100));
    let one = one.stop();
    assert!(one.overlaps.is_empty() && one.rounds > 3, "{one:?}");
    let macs = &one.answered_by[&VIP.parse().unwrap()];
    assert_eq!(macs.len(), 1, "{one:?}");
}

#[test]
fn an_older_builds_fence_gains_the_fenced_routers_without_being_rebuilt() {
    let mut lab = Lab::new(1);
    let ns = lab.hosts[0].ns.clone();
    // The tables as builds before --fenced-router made them, with a running timeout.
    nft(
        &ns,
        "add table inet extip; \
         add set inet extip alive { type ether_type; flags timeout; }; \
         add set inet extip fenced4 { type ipv4_addr; }; \
         add set inet extip fenced6 { type ipv6_addr; }; \
         add chain inet extip inbound { type filter hook prerouting priority raw - 10; policy accept; }; \
         add chain inet extip outbound { type filter hook output priority raw - 10; policy accept; }; \
         add element inet extip alive { ip timeout 60s }; \
         add table arp extip; \
         add set arp extip alive { type ether_type; flags timeout; }; \
         add set arp extip fenced4 { type ipv4_addr; }",
    );
    let with_handles = || {
        let args = [
            "netns", "exec", &ns, "nft", "-a", "list", "table", "inet", "extip",
        ];
        lab::run("ip", &args)
    };
    let handle = |text: &str| text.lines().next().unwrap_or_default().to_string();
    let before = handle(&with_handles());
    lab.start_agent(0, &["--export-routes", "--fenced-router", "192.0.2.253"]);
    let routers = wait_for(Duration::from_secs(10), || {
        // The table exists throughout; its routers4 set only once the agent added it.
        nft(&ns, "list table inet extip").contains("elements = { 192.0.2.253 }")
    });
    let table = with_handles();
    assert!(routers.is_some(), "no fenced router in:\n{table}");
    assert!(
        table.contains("ip daddr @routers4") && table.contains("ip saddr @routers4"),
        "the fenced router's rules are missing:\n{table}"
    );
    // `# handle N` of the table: the same table, not one deleted and made again.
    assert_eq!(handle(&table), before, "the table was rebuilt");
}
