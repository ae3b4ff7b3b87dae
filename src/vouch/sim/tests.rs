//! The invariant over many seeds, and the broken rules that must break it.
//! `EXTIP_SIM_TRACE=<seed>` prints every decision of that seed's runs; `EXTIP_SIM_SEEDS=<n>`
//! runs n seeds per cluster size instead of 300.

use std::time::Duration;

use super::{first_violation, Breakage, Params, World};
use crate::vouch::Timing;

fn params(seed_nodes: usize, breakage: Breakage) -> Params {
    Params {
        nodes: seed_nodes,
        ips: 3,
        duration: Duration::from_secs(20),
        ttl_secs: 10,
        timing: Timing::default(),
        breakage,
        quiet: false,
    }
}

/// Seeds per shape in the test suite; `EXTIP_SIM_SEEDS` runs more.
fn seeds() -> u64 {
    std::env::var("EXTIP_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300)
}

#[test]
fn no_two_hosts_are_ever_lit_for_one_exclusive_ip() {
    for nodes in [2, 3, 5, 6] {
        let found = first_violation(0..seeds(), params(nodes, Breakage::default()));
        if let Some((seed, outcome)) = found {
            panic!("{nodes} nodes, seed {seed}: {:?}", outcome.violation);
        }
    }
}

#[test]
fn the_simulation_revokes_and_serves() {
    // Not a timing goal: a check that the faults really exercise revocations and that
    // IPs are served most of the time, so the safety result above is not vacuous.
    let mut revocations = 0;
    let mut dark = 0.0;
    for seed in 0..40 {
        let outcome = World::new(seed, params(3, Breakage::default())).run();
        revocations += outcome.revocations;
        dark += outcome.dark_share;
    }
    assert!(revocations > 20, "{revocations} revocations in 40 runs");
    assert!(
        dark / 40.0 < 0.5,
        "IPs dark {:.0} % of the time",
        dark / 40.0 * 100.0
    );
}

#[test]
fn a_witness_voting_inside_its_promise_is_caught() {
    let broken = Breakage {
        promise_cut: Duration::from_millis(150),
        ..Default::default()
    };
    let found = first_violation(0..500, params(3, broken));
    assert!(
        found.is_some(),
        "voting 150 ms inside the promise went unnoticed"
    );
}

#[test]
fn a_vote_quorum_that_misses_the_acknowledgers_is_caught() {
    let broken = Breakage {
        small_vote_quorum: true,
        ..Default::default()
    };
    let found = first_violation(0..500, params(5, broken));
    assert!(
        found.is_some(),
        "revoking with too few votes went unnoticed"
    );
}

#[test]
fn a_holder_forgetting_its_pending_write_is_caught() {
    let broken = Breakage {
        ignore_pending: true,
        ..Default::default()
    };
    let found = first_violation(0..500, params(3, broken));
    assert!(
        found.is_some(),
        "lighting by the old configuration went unnoticed"
    );
}

#[test]
fn heartbeat_traffic_per_host_stays_flat_from_10_to_100_nodes() {
    // Each host heartbeats its witnesses (at most 4) and acknowledges the holders it
    // witnesses (4 on the ring): its traffic depends on that bound, not on the cluster.
    let mut rates = Vec::new();
    for nodes in [10, 25, 50, 100] {
        let quiet = Params {
            nodes,
            duration: Duration::from_secs(5),
            quiet: true,
            ..params(nodes, Breakage::default())
        };
        let outcome = World::new(1, quiet).run();
        assert_eq!(outcome.revocations, 0, "{nodes} quiet nodes: a revocation");
        eprintln!(
            "{nodes} nodes: {:.1} datagrams per host per second",
            outcome.datagrams_per_host_second
        );
        rates.push(outcome.datagrams_per_host_second);
    }
    let per_interval = 1.0 / Timing::default().interval.as_secs_f64();
    let bound = 2.0 * crate::vouch::MAX_WITNESSES as f64 * per_interval;
    let (lo, hi) = rates
        .iter()
        .fold((f64::MAX, 0.0f64), |(l, h), r| (l.min(*r), h.max(*r)));
    assert!(
        hi <= bound * 1.05,
        "{hi:.1}/s over the bound of {bound:.0}/s"
    );
    assert!(hi / lo < 1.1, "not flat from 10 to 100 nodes: {rates:?}");
}
