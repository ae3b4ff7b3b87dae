//! What kernel lifetimes cost at scale: `cargo bench --bench lifetimes` (as root).
//!
//! Re-runs itself inside a fresh network namespace, adds N marked IPv6 /128s to `lo`
//! through extip's netlink adapter, dumps them, refreshes every lifetime once, and
//! compares with `ip -batch` adding the same addresses (the kernel's own pace).
//! N: `EXTIP_BENCH_ADDRESSES` (default 10000). Prints a Markdown table.

use std::net::{IpAddr, Ipv6Addr};
use std::process::Command;
use std::time::{Duration, Instant};

use extip::net::Netlink;
use extip::observed::LocalAddress;

const INSIDE: &str = "EXTIP_BENCH_INSIDE";

fn main() {
    if std::env::var(INSIDE).is_ok() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(measure());
        return;
    }
    let ns = format!("extip-bench-{}", std::process::id());
    let ip = |args: &[&str]| assert!(Command::new("ip").args(args).status().unwrap().success());
    ip(&["netns", "add", &ns]);
    ip(&["-n", &ns, "link", "set", "lo", "up"]);
    let exe = std::env::current_exe().expect("own path");
    let status = Command::new("ip")
        .args(["netns", "exec", &ns])
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env(INSIDE, "1")
        .status()
        .expect("run inside the namespace");
    ip(&["netns", "del", &ns]);
    assert!(status.success(), "benchmark failed");
}

fn addresses(n: usize, ifindex: u32) -> Vec<LocalAddress> {
    (0..n)
        .map(|i| LocalAddress {
            ip: IpAddr::V6(Ipv6Addr::new(
                0x2001,
                0xdb8,
                0x100,
                0,
                0,
                0,
                (i >> 16) as u16,
                i as u16,
            )),
            prefix_len: 128,
            ifindex,
        })
        .collect()
}

fn row(what: &str, n: usize, took: Duration) -> String {
    let per = took.as_secs_f64() * 1e6 / n as f64;
    format!(
        "| {what} | {n} | {:.0} ms | {per:.1} µs |",
        took.as_secs_f64() * 1e3
    )
}

async fn measure() {
    let n: usize = std::env::var("EXTIP_BENCH_ADDRESSES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let net = Netlink::open().expect("netlink");
    let lo = net.interface_index("lo").await.expect("lo");
    let all = addresses(n, lo);
    let mut rows = Vec::new();

    let t = Instant::now();
    for &a in &all {
        net.add(a, Some(30)).await.expect("add");
    }
    rows.push(row("add with mark and lifetime (extip)", n, t.elapsed()));

    let t = Instant::now();
    let owned = net.owned_addresses().await.expect("dump");
    rows.push(row("list owned addresses (extip)", n, t.elapsed()));
    assert_eq!(owned.len(), n);

    let t = Instant::now();
    for &a in &all {
        net.refresh(a, Some(28)).await.expect("refresh");
    }
    let refresh = t.elapsed();
    rows.push(row("refresh every lifetime (extip)", n, refresh));

    for &a in &all {
        net.remove(a).await.expect("remove");
    }
    let batch: String = all
        .iter()
        .map(|a| {
            format!(
                "address add {}/128 dev lo valid_lft 30 preferred_lft 30\n",
                a.ip
            )
        })
        .collect();
    let path = std::env::temp_dir().join(format!("extip-batch-{}", std::process::id()));
    std::fs::write(&path, batch).expect("batch file");
    let t = Instant::now();
    let ok = Command::new("ip")
        .arg("-batch")
        .arg(&path)
        .status()
        .unwrap()
        .success();
    rows.push(row("add with `ip -batch` (reference)", n, t.elapsed()));
    assert!(ok);
    let _ = std::fs::remove_file(&path);

    println!("| operation | addresses | total | per address |");
    println!("|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
    println!();
    println!("| lease TTL | backstop lifetime | refresh round every | CPU for {n} addresses |");
    println!("|---|---|---|---|");
    for ttl in [2u64, 5, 10, 30] {
        let lifetime = extip::agent::backstop_lifetime(Duration::from_secs(ttl), false);
        let period = lifetime / 2;
        let share = refresh.as_secs_f64() / period.as_secs_f64() * 100.0;
        println!(
            "| {ttl} s | {} s | ~{} s | {share:.1} % of a core |",
            lifetime.as_secs(),
            period.as_secs()
        );
    }
}
