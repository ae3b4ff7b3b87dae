//! extip-sync timings in the lab: `cargo bench --bench sync` (as root).
//!
//! Three hosts with agents, the stand-in API server driven with the real kubectl, two
//! sync replicas (`--election-ttl 3s`, `--lease-ttl 12s`). Measures, over
//! `EXTIP_BENCH_RUNS` rounds (default 10): `kubectl apply` of a Service with an
//! externalIP until the IP is on a host, `kubectl delete` until it is gone, a
//! LoadBalancer Service until `kubectl get` shows its IP; and over 3 rounds: SIGKILL of
//! the leading replica until the other leads; then `EXTIP_BENCH_SERVICES` (default 1000)
//! LoadBalancer Services in one apply. Prints a Markdown table and a line.

// The lab and the stand-in API server both include the one-function tests/common/netns.rs.
#![allow(clippy::duplicate_mod)]

#[path = "../tests/kube/mod.rs"]
mod kube;
#[path = "../tests/lab/mod.rs"]
mod lab;
#[path = "../tests/synclab/mod.rs"]
mod synclab;

use std::time::{Duration, Instant};

use lab::wait_for;
use synclab::{service, wait_leader, SyncLab, SyncReplica};

fn runs() -> usize {
    std::env::var("EXTIP_BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(10)
}

/// `(median, min, max)` in ms.
fn stats(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "{:.0} ms ({:.0}–{:.0})",
        ms(samples[samples.len() / 2]),
        ms(samples[0]),
        ms(samples[samples.len() - 1])
    )
}

fn timed(limit: Duration, what: &str, check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    wait_for(limit, check).unwrap_or_else(|| panic!("{what} did not happen within {limit:?}"));
    start.elapsed()
}

fn main() {
    let s = SyncLab::new(3, true);
    let mut replicas: Vec<SyncReplica> = vec![s.sync("a", &[]), s.sync("b", &[])];
    wait_leader(&s);
    let (mut apply, mut delete, mut lb) = (Vec::new(), Vec::new(), Vec::new());
    let mut kubectl = Vec::new();
    let limit = Duration::from_secs(10);
    for i in 0..runs() {
        let ip = format!("198.51.100.{}", 20 + i);
        let start = Instant::now();
        s.api.apply(&service(
            &format!("web-{i}"),
            &format!("  externalIPs: [{ip}]\n"),
        ));
        kubectl.push(start.elapsed());
        wait_for(limit, || s.lab.holders(&ip).len() == 1).expect("IP on a host");
        apply.push(start.elapsed());
        let start = Instant::now();
        s.api.kubectl(&["delete", "svc", &format!("web-{i}")]);
        wait_for(limit, || s.lab.holders(&ip).is_empty()).expect("IP gone");
        delete.push(start.elapsed());
        let name = format!("lb-{i}");
        let start = Instant::now();
        s.api.apply(&service(&name, "  type: LoadBalancer\n"));
        wait_for(limit, || !s.ingress(&name).is_empty()).expect("ingress IP");
        lb.push(start.elapsed());
    }
    let mut failover = Vec::new();
    for round in 0..3 {
        let leader = wait_leader(&s);
        let k = replicas
            .iter()
            .position(|r| r.identity() == leader)
            .expect("leader runs");
        let mut dead = replicas.remove(k);
        let _ = dead.child.kill();
        let _ = dead.child.wait();
        failover.push(timed(limit * 2, "a standby leading", || {
            s.leader().is_some_and(|l| l != leader)
        }));
        replicas.push(s.sync(&format!("r{round}"), &[]));
    }
    let scale = many_load_balancers(&s, &replicas);
    println!("| measure (median, min–max) | extip-sync |");
    println!("|---|---|");
    println!(
        "| `kubectl apply` (externalIP) → IP on a host, {} runs | {} |",
        apply.len(),
        stats(apply)
    );
    println!(
        "| of which `kubectl apply` itself (start to exit) | {} |",
        stats(kubectl)
    );
    println!(
        "| `kubectl delete` → IP gone from every host | {} |",
        stats(delete)
    );
    println!(
        "| `kubectl apply` (LoadBalancer) → ingress IP shown by kubectl | {} |",
        stats(lb)
    );
    println!(
        "| leader SIGKILLed → standby leads (`--election-ttl 3s`), 3 runs | {} |",
        stats(failover)
    );
    println!("{scale}");
}

/// `EXTIP_BENCH_SERVICES` (default 1000) LoadBalancer Services in one `kubectl apply`,
/// from an IPv6 pool big enough for them: seconds until kubectl shows every IP, and the
/// leader's reconcile times while it worked through them.
fn many_load_balancers(s: &SyncLab, replicas: &[SyncReplica]) -> String {
    let n: usize = std::env::var("EXTIP_BENCH_SERVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    s.lab.extip(&["pool", "rm", "lb"]);
    s.lab.extip(&[
        "pool",
        "add",
        "scale",
        "2001:db8:100::/112",
        "--auto-assign",
    ]);
    let list: String = (0..n)
        .map(|i| {
            format!(
                "---\n{}",
                service(&format!("many-{i:05}"), "  type: LoadBalancer\n")
            )
        })
        .collect();
    let start = Instant::now();
    s.api.apply(&list);
    let applied = start.elapsed();
    let shown = || {
        let ips = s.ingress_ips();
        ips.iter()
            .filter(|l| l.starts_with("2001:db8:100:"))
            .count()
    };
    let all = timed(Duration::from_secs(600), "every IP shown", || {
        std::thread::sleep(Duration::from_millis(200));
        shown() == n
    });
    let leader = s.leader().expect("leader");
    let r = replicas
        .iter()
        .find(|r| r.identity() == leader)
        .expect("leader runs");
    let sum = r
        .metric("extip_sync_reconcile_duration_seconds_sum")
        .unwrap_or(0.0);
    let count = r
        .metric("extip_sync_reconcile_duration_seconds_count")
        .unwrap_or(0.0);
    format!(
        "\n{n} LoadBalancer Services in one `kubectl apply` ({:.1} s for kubectl): every IP \
         shown by kubectl {:.1} s after the apply started; the leader ran {count} reconciles, \
         {:.0} ms each on average.",
        applied.as_secs_f64(),
        all.as_secs_f64(),
        1000.0 * sum / count.max(1.0)
    )
}
