//! The precise fence as a client sees it: `cargo bench --bench fence` (as root).
//!
//! Two hosts, one exclusive IP on `lo` announced on `eth0`, a client pinging it every
//! 2 ms. For a SIGSTOPped, a SIGKILLed and a cut-off (from etcd) holder: when its last
//! reply came, against the fence deadline read from its own nftables set just after the
//! fault (negative: before), and when the new holder's first reply came. Then the
//! graceful stop: the longest gap between replies. Runs: `EXTIP_BENCH_RUNS` (default 5).
//! Prints Markdown tables for docs/benchmarks.md.

#[path = "../tests/lab/mod.rs"]
mod lab;

use lab::fence::{graceful_stop_gaps, one_run, Fault};

fn ms(v: f64) -> String {
    format!("{:+.0} ms", v * 1000.0)
}

fn median_and_worst(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[v.len() - 1])
}

fn main() {
    let runs: usize = std::env::var("EXTIP_BENCH_RUNS")
        .ok()
        .map_or(5, |r| r.parse().expect("EXTIP_BENCH_RUNS"));
    println!("| fault | last reply of the old holder vs its fence deadline: median (worst) | every run | first reply of the new holder after the deadline: median |");
    println!("|---|---|---|---|");
    for fault in [Fault::Freeze, Fault::Kill, Fault::CutFromEtcd] {
        let samples: Vec<_> = (0..runs).map(|_| one_run(fault)).collect();
        let dark: Vec<f64> = samples.iter().map(|s| s.dark).collect();
        let taken: Vec<f64> = samples.iter().map(|s| s.taken).collect();
        let every: Vec<String> = dark.iter().map(|d| ms(*d)).collect();
        let (median, worst) = median_and_worst(dark);
        let (taken, _) = median_and_worst(taken);
        println!(
            "| {fault:?} | {} ({}) | {} | {} |",
            ms(median),
            ms(worst),
            every.join(", "),
            ms(taken)
        );
    }
    let gaps = graceful_stop_gaps(runs);
    let every: Vec<String> = gaps.iter().map(|g| format!("{:.1}", g * 1000.0)).collect();
    let (median, worst) = median_and_worst(gaps);
    println!();
    println!("| graceful stop | longest ping gap: median (worst) | every run (ms) |");
    println!("|---|---|---|");
    println!(
        "| SIGTERM to the holder | {:.1} ms ({:.1} ms) | {} |",
        median * 1000.0,
        worst * 1000.0,
        every.join(", ")
    );
}
