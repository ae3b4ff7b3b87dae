//! `extip-sync`: copies Kubernetes Service externalIPs and LoadBalancer IPs into etcd.

use std::process::ExitCode;

use clap::Parser;
use extip::cli::{init_logging, LogFormat};
use extip::config::hostname;
use extip::sync::{SyncConfig, SyncSettings};

/// Copies Kubernetes Service externalIPs and LoadBalancer IPs into extip's etcd keys,
/// allocating LoadBalancer IPs from pools.
#[derive(Debug, Parser)]
#[command(name = "extip-sync", version, about)]
struct SyncCli {
    /// Log lines as `text` or `json`
    #[arg(long, env = "EXTIP_LOG_FORMAT", value_enum, default_value_t)]
    log_format: LogFormat,
    #[command(flatten)]
    settings: SyncSettings,
}

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
