//! `extip-sync`: copies Kubernetes Service externalIPs and LoadBalancer IPs into etcd.

use std::process::ExitCode;

use clap::Parser;
use extip::cli::init_logging;
use extip::config::hostname;
use extip::sync::{SyncCli, SyncConfig};

fn main() -> ExitCode {
    let cli = SyncCli::parse();
    init_logging(cli.log_format);
    let cfg = match cli
        .settings
        .merged()
        .and_then(|s| SyncConfig::from_settings(s, &hostname()))
    {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("extip-sync: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.check_config {
        print_summary(&cfg);
        println!("extip-sync: configuration OK");
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("extip-sync: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(extip::sync::run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("extip-sync: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// What `--check-config` prints: a summary, not `Debug`, which would print the client key.
fn print_summary(cfg: &SyncConfig) {
    let d = humantime::format_duration;
    println!(
        "etcd: {} (TLS: {}, user: {})",
        cfg.etcd.join(","),
        cfg.etcd_auth.tls.is_some(),
        cfg.etcd_auth
            .user
            .as_ref()
            .map_or("none", |(u, _)| u.as_str())
    );
    println!("prefix: {}  identity: {}", cfg.prefix, cfg.identity);
    println!(
        "lease-ttl: {}  election-ttl: {}  retention: {}  resync: {}",
        d(cfg.lease_ttl),
        d(cfg.election_ttl),
        d(cfg.retention),
        d(cfg.resync)
    );
    let allow: Vec<String> = cfg.allow_external.iter().map(ToString::to_string).collect();
    println!(
        "allow-external-ip: {}",
        if allow.is_empty() {
            "none (every externalIP is refused)".into()
        } else {
            allow.join(",")
        }
    );
    let listen = cfg.listen.map_or("none".to_string(), |a| a.to_string());
    println!("listen: {listen}");
    println!(
        "load-balancer-class: {}",
        cfg.load_balancer_class
            .as_deref()
            .unwrap_or("none (Services without a class)")
    );
    println!(
        "namespaces: {}",
        if cfg.namespaces.is_empty() {
            "all".into()
        } else {
            cfg.namespaces.join(",")
        }
    );
}
