//! Command-line interface: every flag also reads an `EXTIP_*` environment variable.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::AgentSettings;
pub use crate::config::{EtcdArgs, LogFormat};

/// IP mobility for bare-metal hosts: addresses that live on a healthy host, coordinated by etcd.
#[derive(Debug, Parser)]
#[command(name = "extip", version, about)]
pub struct Cli {
    /// Log lines as `text` (no timestamps under journald, which adds its own) or `json`
    /// (one object a line, for log shippers)
    #[arg(
        long,
        env = "EXTIP_LOG_FORMAT",
        global = true,
        value_enum,
        default_value_t
    )]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the host agent: claim desired IPs and configure them on an interface.
    Agent(Box<AgentArgs>),
    /// Add, remove or list desired IPs.
    #[command(subcommand)]
    Ip(IpCommand),
    /// Show every desired IP, its holder, and the live nodes.
    Status(StatusArgs),
    /// Drain a node (it hands every IP over and claims none) or undrain it.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Add, remove or list pools: IP ranges whose IPs share mask, interface and replicas.
    #[command(subcommand)]
    Pool(PoolCommand),
    /// Check an agent configuration file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completion(CompletionArgs),
    /// Write the man pages, generated from these definitions, into a directory.
    #[command(hide = true)]
    Manpages(ManpagesArgs),
}

/// `extip completion`.
#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell
    pub shell: clap_complete::Shell,
}

/// `extip manpages`.
#[derive(Debug, Args)]
pub struct ManpagesArgs {
    /// Directory to write extip.1, extip-agent.1, … into
    #[arg(long)]
    pub out: PathBuf,
}

/// `extip config …`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a TOML file as the agent would; print every problem with its key.
    Check(ConfigCheckArgs),
}

/// `extip config check`.
#[derive(Debug, Args)]
pub struct ConfigCheckArgs {
    /// The file to check (e.g. /etc/extip/agent.toml)
    #[arg(long, env = "EXTIP_CONFIG")]
    pub config: PathBuf,
}

/// `extip pool …`.
#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// Write `<prefix>/pools/<name>`.
    Add(PoolAddArgs),
    /// Delete `<prefix>/pools/<name>`.
    Rm(PoolRmArgs),
    /// List pools.
    Ls(PoolLsArgs),
}

/// `extip pool add`.
#[derive(Debug, Args)]
pub struct PoolAddArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Pool name.
    pub name: String,
    /// Its addresses, e.g. 198.51.100.0/24
    pub cidr: String,
    /// Mask its IPs are configured with [default: /32 or /128]
    #[arg(long)]
    pub prefix_len: Option<u8>,
    /// Interface its IPs go on [default: each agent's own]
    #[arg(long)]
    pub interface: Option<String>,
    /// Replicas of its IPs: a number or `all` [default: 1]
    #[arg(long)]
    pub replicas: Option<String>,
    /// extip-sync may allocate from it for LoadBalancer Services
    #[arg(long)]
    pub auto_assign: bool,
}

/// `extip pool rm`.
#[derive(Debug, Args)]
pub struct PoolRmArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Pool name.
    pub name: String,
}

/// `extip pool ls`.
#[derive(Debug, Args)]
pub struct PoolLsArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Refresh this often until interrupted (tables redraw in place; JSON prints one
    /// document a line), e.g. `--watch 2s`
    #[arg(long, value_parser = humantime::parse_duration, num_args = 0..=1, default_missing_value = "2s")]
    pub watch: Option<std::time::Duration>,
}

/// `extip node …`.
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Writes `<prefix>/drains/<node>`: the node hands its IPs over and claims none.
    Drain(NodeArgs),
    /// Deletes `<prefix>/drains/<node>`: the node may claim again.
    Undrain(NodeArgs),
}

/// `extip node drain|undrain`.
#[derive(Debug, Args)]
pub struct NodeArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// The node name, as in `extip status`.
    pub node: String,
}

/// `extip agent` flags; any of them can also come from the `--config` file.
#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// TOML file with the same keys as these flags (e.g. `lease-ttl = "2s"`)
    #[arg(long, env = "EXTIP_CONFIG")]
    pub config: Option<PathBuf>,
    /// Node name published in etcd [default: the host name]
    #[arg(long, env = "EXTIP_NODE")]
    pub node: Option<String>,
    /// Interface the addresses go on; repeatable: the first takes IPs that name none [default: lo]
    #[arg(long, env = "EXTIP_INTERFACE", value_delimiter = ',')]
    pub interface: Option<Vec<String>>,
    /// Lease TTL: how long etcd trouble is ridden out, and how long a dead host keeps its claims when no peer can vouch; whole seconds, at least 1s [default: 10s; 2s with --peers off]
    #[arg(long, env = "EXTIP_LEASE_TTL")]
    pub lease_ttl: Option<String>,
    /// Kernel lifetime of held addresses, a backstop behind the fence: a killed or frozen agent's addresses and exported routes go when it ends [default: 4 × lease TTL, at least 60s; with --export-routes 4s]
    #[arg(long, env = "EXTIP_ADDRESS_LIFETIME")]
    pub address_lifetime: Option<String>,
    /// CIDR this agent may configure; repeatable; required (0.0.0.0/0 and ::/0 allow everything)
    #[arg(
        long = "allowed-cidr",
        env = "EXTIP_ALLOWED_CIDR",
        value_delimiter = ','
    )]
    pub allowed_cidr: Option<Vec<String>>,
    /// Period of the check against etcd: key count and newest change, a full re-list if they differ [default: 30s]
    #[arg(long, env = "EXTIP_RESYNC")]
    pub resync: Option<String>,
    /// Where the agent keeps its lease ID across restarts [default: /var/lib/extip]
    #[arg(long, env = "EXTIP_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Shared IPs (replicas > 1) when etcd is lost: keep or withdraw [default: keep]
    #[arg(long, env = "EXTIP_ON_ETCD_LOSS")]
    pub on_etcd_loss: Option<String>,
    /// Keep a host route (main table, proto 88) for every held address, for BGP export
    #[arg(long, env = "EXTIP_EXPORT_ROUTES", num_args = 0..=1, default_missing_value = "true")]
    pub export_routes: Option<bool>,
    /// Router address whose BGP session and BFD the fence cuts with the fenced IPs, so the router drops their routes at once; repeatable; needs --export-routes and a routing daemon that exports proto-88 routes of metric 88 to it only (config/bird, config/frr)
    #[arg(long, env = "EXTIP_FENCED_ROUTER", value_delimiter = ',')]
    pub fenced_router: Option<Vec<String>>,
    /// How long a new or returning node must be up before IPs move to it [default: 10s]
    #[arg(long, env = "EXTIP_STABILIZATION")]
    pub stabilization: Option<String>,
    /// Node label `key=value` for `node_selector`; repeatable
    #[arg(long, env = "EXTIP_LABEL", value_delimiter = ',')]
    pub label: Option<Vec<String>>,
    /// Gratuitous ARP / unsolicited NA rounds per takeover; 0 turns announcements off [default: 3]
    #[arg(long, env = "EXTIP_ANNOUNCE_COUNT")]
    pub announce_count: Option<u32>,
    /// Time between the rounds of a burst [default: 100ms]
    #[arg(long, env = "EXTIP_ANNOUNCE_INTERVAL")]
    pub announce_interval: Option<String>,
    /// Re-announce every held IP this often; 0s: never [default: 0s]
    #[arg(long, env = "EXTIP_ANNOUNCE_REFRESH")]
    pub announce_refresh: Option<String>,
    /// Ethernet interface that announces IPs held on lo; repeatable
    #[arg(long, env = "EXTIP_ANNOUNCE_INTERFACE", value_delimiter = ',')]
    pub announce_interface: Option<Vec<String>>,
    /// Listen this long for another owner before adding an exclusive IP; 0s: no probe [default: 30ms]
    #[arg(long, env = "EXTIP_CONFLICT_PROBE")]
    pub conflict_probe: Option<String>,
    /// Serve /metrics, /healthz and /readyz here; `none` turns it off [default: 127.0.0.1:9478]
    #[arg(long, env = "EXTIP_LISTEN")]
    pub listen: Option<String>,
    /// Peer vouching: `on` (hosts notice a dead host within --peer-suspicion) or `off` (the lease TTL alone) [default: on]
    #[arg(long, env = "EXTIP_PEERS")]
    pub peers: Option<String>,
    /// Time between heartbeats to each witness [default: 50ms]
    #[arg(long, env = "EXTIP_PEER_INTERVAL")]
    pub peer_interval: Option<String>,
    /// How long one acknowledgement keeps a holder lit, and about how long a silent holder goes unsuspected; at least 3 × --peer-interval, at most 1s [default: 200ms]
    #[arg(long, env = "EXTIP_PEER_SUSPICION")]
    pub peer_suspicion: Option<String>,
    /// UDP port for heartbeats [default: 9480]
    #[arg(long, env = "EXTIP_PEER_PORT")]
    pub peer_port: Option<u16>,
    /// Address heartbeats are received on and published with [default: the one the kernel uses towards etcd]
    #[arg(long, env = "EXTIP_PEER_ADDRESS")]
    pub peer_address: Option<String>,
    /// File with the cluster secret that signs heartbeats (at least 16 bytes) [default: created once in etcd under the prefix]
    #[arg(long, env = "EXTIP_PEER_SECRET_FILE")]
    pub peer_secret_file: Option<PathBuf>,
}

impl AgentArgs {
    /// The settings given on the command line or in the environment.
    pub fn settings(&self) -> AgentSettings {
        AgentSettings {
            etcd: self.etcd.etcd.clone(),
            prefix: self.etcd.prefix.clone(),
            etcd_cacert: self.etcd.etcd_cacert.clone(),
            etcd_cert: self.etcd.etcd_cert.clone(),
            etcd_key: self.etcd.etcd_key.clone(),
            etcd_user: self.etcd.etcd_user.clone(),
            etcd_password_file: self.etcd.etcd_password_file.clone(),
            node: self.node.clone(),
            interface: self.interface.clone(),
            lease_ttl: self.lease_ttl.clone(),
            address_lifetime: self.address_lifetime.clone(),
            allowed_cidr: self.allowed_cidr.clone(),
            resync: self.resync.clone(),
            state_dir: self.state_dir.clone(),
            on_etcd_loss: self.on_etcd_loss.clone(),
            export_routes: self.export_routes,
            fenced_router: self.fenced_router.clone(),
            stabilization: self.stabilization.clone(),
            label: self.label.clone(),
            announce_count: self.announce_count,
            announce_interval: self.announce_interval.clone(),
            announce_refresh: self.announce_refresh.clone(),
            announce_interface: self.announce_interface.clone(),
            conflict_probe: self.conflict_probe.clone(),
            listen: self.listen.clone(),
            peers: self.peers.clone(),
            peer_interval: self.peer_interval.clone(),
            peer_suspicion: self.peer_suspicion.clone(),
            peer_port: self.peer_port,
            peer_address: self.peer_address.clone(),
            peer_secret_file: self.peer_secret_file.clone(),
        }
    }
}

/// `extip ip …`.
#[derive(Debug, Subcommand)]
pub enum IpCommand {
    /// Ask for an IP: writes `<prefix>/ips/<ip>`.
    Add(IpAddArgs),
    /// Withdraw an IP: deletes `<prefix>/ips/<ip>`.
    Rm(IpRmArgs),
    /// List desired IPs.
    Ls(IpLsArgs),
}

/// `extip ip add`.
#[derive(Debug, Args)]
pub struct IpAddArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// The address, optionally with a mask: 198.51.100.10 or 198.51.100.10/24
    pub ip: String,
    /// How many hosts hold it: a number or `all` [default: 1]
    #[arg(long)]
    pub replicas: Option<String>,
    /// Interface to put it on [default: each agent's own]
    #[arg(long)]
    pub interface: Option<String>,
}

/// `extip ip rm`.
#[derive(Debug, Args)]
pub struct IpRmArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// The address.
    pub ip: String,
}

/// `extip ip ls`.
#[derive(Debug, Args)]
pub struct IpLsArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Refresh this often until interrupted (tables redraw in place; JSON prints one
    /// document a line), e.g. `--watch 2s`
    #[arg(long, value_parser = humantime::parse_duration, num_args = 0..=1, default_missing_value = "2s")]
    pub watch: Option<std::time::Duration>,
}

/// `extip status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// The local agent's `--listen` address: its `/peers` answer fills the HEARD column
    /// (`none`: do not ask)
    #[arg(long, env = "EXTIP_AGENT", default_value = crate::config::DEFAULT_LISTEN)]
    pub agent: String,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Refresh this often until interrupted (tables redraw in place; JSON prints one
    /// document a line), e.g. `--watch 2s`
    #[arg(long, value_parser = humantime::parse_duration, num_args = 0..=1, default_missing_value = "2s")]
    pub watch: Option<std::time::Duration>,
}

/// Human table or JSON for scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// One JSON document.
    Json,
}

/// Log to stderr: plain lines (no timestamps under journald, which adds its own) or JSON;
/// the level comes from `$EXTIP_LOG` (default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("EXTIP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match (format, std::env::var_os("JOURNAL_STREAM").is_some()) {
        (LogFormat::Json, _) => builder.json().init(),
        (LogFormat::Text, true) => builder.without_time().init(),
        (LogFormat::Text, false) => builder.init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn repeated_and_comma_separated_cidrs_both_work() {
        let cli = Cli::try_parse_from([
            "extip",
            "agent",
            "--allowed-cidr",
            "198.51.100.0/24,203.0.113.0/24",
            "--allowed-cidr",
            "2001:db8::/32",
        ])
        .unwrap();
        let Command::Agent(args) = cli.command else {
            panic!("not agent")
        };
        assert_eq!(args.allowed_cidr.unwrap().len(), 3);
    }
}
