//! The `extip` binary: parses the command line and runs the chosen subcommand.

use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use extip::cli::{Cli, Command, ConfigCommand, IpCommand, NodeCommand, PoolCommand};
use extip::config::{hostname, AgentConfig, AgentSettings};

fn main() -> ExitCode {
    let cli = Cli::parse();
    extip::cli::init_logging(cli.log_format);
    // Two workers beside the main thread: the agent's event loop runs on the main
    // thread (block_on), the etcd and netlink connections on the workers, so a long
    // reconcile (planning thousands of IPs) does not stall them. The lease keepalive has
    // a thread, runtime and connection of its own (agent/keepalive.rs).
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("extip: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("extip: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Agent(args) => {
            let file = match &args.config {
                Some(path) => AgentSettings::from_file(path)?,
                None => AgentSettings::default(),
            };
            let cfg = AgentConfig::from_settings(args.settings().over(file), &hostname())?;
            extip::agent::run(cfg).await
        }
        Command::Ip(IpCommand::Add(args)) => extip::commands::ip_add(args).await,
        Command::Ip(IpCommand::Rm(args)) => extip::commands::ip_rm(args).await,
        Command::Ip(IpCommand::Ls(args)) => extip::commands::ip_ls(args).await,
        Command::Status(args) => extip::commands::status(args).await,
        Command::Node(NodeCommand::Drain(args)) => extip::commands::drain(args, true).await,
        Command::Node(NodeCommand::Undrain(args)) => extip::commands::drain(args, false).await,
        Command::Pool(PoolCommand::Add(args)) => extip::commands::pool_add(args).await,
        Command::Pool(PoolCommand::Rm(args)) => extip::commands::pool_rm(args).await,
        Command::Pool(PoolCommand::Ls(args)) => extip::commands::pool_ls(args).await,
        Command::Config(ConfigCommand::Check(args)) => check_config(&args.config),
        Command::Completion(args) => {
            let mut cmd = Cli::command();
            clap_complete::generate(args.shell, &mut cmd, "extip", &mut std::io::stdout());
            Ok(())
        }
        Command::Manpages(args) => write_manpages(&args.out),
    }
}

/// `extip config check`: every problem of the file, one per line, each with its key.
fn check_config(path: &std::path::Path) -> anyhow::Result<()> {
    let problems = match AgentSettings::check_file(path) {
        Ok((settings, mut unknown)) => {
            unknown.extend(
                AgentConfig::check(settings, &hostname())
                    .err()
                    .unwrap_or_default(),
            );
            unknown
        }
        Err(problems) => problems,
    };
    if problems.is_empty() {
        println!("{}: ok", path.display());
        return Ok(());
    }
    for problem in &problems {
        println!("{problem}");
    }
    anyhow::bail!("{}: {} problem(s)", path.display(), problems.len())
}

/// One man page per command and subcommand (extip.1, extip-agent.1, extip-ip-add.1, …),
/// and extip-sync.1.
fn write_manpages(out: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    let cmd = Cli::command();
    clap_mangen::generate_to(cmd, out)?;
    #[cfg(feature = "sync")]
    clap_mangen::generate_to(extip::sync::SyncCli::command(), out)?;
    Ok(())
}
