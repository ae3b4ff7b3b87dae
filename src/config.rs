//! Agent configuration: flags, `EXTIP_*` environment and a TOML file, merged and validated.
//!
//! Precedence: flag, then environment (clap reads both), then the file, then the default.
//! Every error names the setting it is about, so an operator can fix it without reading code.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use thiserror::Error;

mod announce;
mod fields;
mod peers;
mod shared;
pub use announce::AnnounceConfig;
use fields::*;
pub use fields::{
    hostname, parse_address_lifetime, parse_lease_ttl, validate_prefix, DEFAULT_LISTEN,
};
pub(crate) use fields::{one_or_many, parse_duration, parse_listen, validate_endpoints};
// extip-sync parses its allowlist the same way; the agent-only build does not use it.
#[cfg(feature = "sync")]
pub(crate) use fields::parse_cidr_list;
pub use peers::{read_secret, PeersConfig, SecretSource, DEFAULT_PEER_PORT};
pub use shared::{EtcdArgs, LogFormat};

/// etcd grants no lease shorter than 1.5 election timeouts (2 s with its default
/// timings, 1 s with the fast profile's 500 ms); it silently raises a shorter one.
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(1);
/// Default etcd endpoint.
pub const DEFAULT_ETCD: &str = "http://127.0.0.1:2379";
/// Default key prefix.
pub const DEFAULT_PREFIX: &str = "/extip";
/// Default interface for addresses.
pub const DEFAULT_INTERFACE: &str = "lo";
/// Default lease TTL with peer vouching on: the peers notice a dead host, so the lease
/// only has to outlast etcd trouble (a leader election, a member restart, a short outage).
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
/// Default lease TTL with `--peers off`: the lease alone notices a dead host, so it is
/// the shortest etcd grants with its default timings.
pub const DEFAULT_LEASE_TTL_WITHOUT_PEERS: Duration = Duration::from_secs(2);
/// Default period of the full re-list.
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(30);
/// Default wait before IPs move to a new or returning node.
pub const DEFAULT_STABILIZATION: Duration = Duration::from_secs(10);
/// Default directory for the lease file (systemd's `StateDirectory=extip`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/extip";

/// A setting that cannot be used, with the setting's name.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The TOML file could not be read.
    #[error("config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The TOML file is malformed or a value has the wrong type.
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// The TOML file has a key no setting has (a typo, or a newer version's key).
    #[error("{key}: unknown key in {path}")]
    UnknownKey { path: PathBuf, key: String },
    /// One setting has a bad value.
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// The agent's settings as given (flags and env already merged by clap); `None` = not given.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AgentSettings {
    /// etcd endpoints.
    #[serde(default, deserialize_with = "one_or_many")]
    pub etcd: Option<Vec<String>>,
    /// Key prefix.
    pub prefix: Option<String>,
    /// CA of etcd's server certificate.
    pub etcd_cacert: Option<PathBuf>,
    /// Client certificate for etcd.
    pub etcd_cert: Option<PathBuf>,
    /// Key of the client certificate.
    pub etcd_key: Option<PathBuf>,
    /// etcd user.
    pub etcd_user: Option<String>,
    /// File with the etcd user's password.
    pub etcd_password_file: Option<PathBuf>,
    /// Node name.
    pub node: Option<String>,
    /// Interfaces addresses go on: one name or a list (TOML), the first is the default.
    #[serde(default, deserialize_with = "one_or_many")]
    pub interface: Option<Vec<String>>,
    /// Lease TTL, humantime text.
    pub lease_ttl: Option<String>,
    /// Kernel lifetime of fenced addresses (the backstop), humantime text.
    pub address_lifetime: Option<String>,
    /// CIDRs the agent may configure.
    #[serde(default, deserialize_with = "one_or_many")]
    pub allowed_cidr: Option<Vec<String>>,
    /// Period of the check against etcd, humantime text.
    pub resync: Option<String>,
    /// Directory for the lease file.
    pub state_dir: Option<PathBuf>,
    /// `keep` or `withdraw`: shared IPs during an etcd outage.
    pub on_etcd_loss: Option<String>,
    /// Mirror held addresses as export routes for a routing daemon.
    pub export_routes: Option<bool>,
    /// Routers whose BGP session goes dark with the fence (fenced IPs' routes only).
    #[serde(default, deserialize_with = "one_or_many")]
    pub fenced_router: Option<Vec<String>>,
    /// How long a new or returning node must be up before IPs move to it.
    pub stabilization: Option<String>,
    /// Node labels, `key=value`.
    #[serde(default, deserialize_with = "one_or_many")]
    pub label: Option<Vec<String>>,
    /// Announcements per takeover (0: none).
    pub announce_count: Option<u32>,
    /// Time between the announcements of a burst, humantime text.
    pub announce_interval: Option<String>,
    /// Re-announce every held IP this often (humantime; `0s`: never).
    pub announce_refresh: Option<String>,
    /// Ethernet interfaces that announce IPs held on `lo` or other non-ARP interfaces.
    #[serde(default, deserialize_with = "one_or_many")]
    pub announce_interface: Option<Vec<String>>,
    /// How long to listen for another owner before adding an exclusive IP (`0s`: no probe).
    pub conflict_probe: Option<String>,
    /// `host:port` for metrics and health, or `none`.
    pub listen: Option<String>,
    /// Peer vouching: `on` or `off`.
    pub peers: Option<String>,
    /// Time between heartbeats, humantime text.
    pub peer_interval: Option<String>,
    /// How long an acknowledgement vouches for a holder, humantime text.
    pub peer_suspicion: Option<String>,
    /// UDP port for heartbeats.
    pub peer_port: Option<u16>,
    /// Address heartbeats are received on and published with.
    pub peer_address: Option<String>,
    /// File with the cluster secret that signs heartbeats.
    pub peer_secret_file: Option<PathBuf>,
}

impl AgentSettings {
    /// Read a TOML file with the same keys as the flags (`lease-ttl = "2s"`).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Read a TOML file and report every unknown key, not just the first: the settings
    /// of the known keys and the unknown ones, or what made the file unreadable.
    pub fn check_file(path: &Path) -> Result<(Self, Vec<ConfigError>), Vec<ConfigError>> {
        let text = std::fs::read_to_string(path).map_err(|source| {
            vec![ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }]
        })?;
        let parse_error = |message: String| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        };
        let table: toml::Table =
            toml::from_str(&text).map_err(|e| vec![parse_error(e.to_string())])?;
        // Each key on its own, so one wrong type does not hide the problems after it.
        let mut problems = Vec::new();
        let mut good = toml::Table::new();
        for (key, value) in table {
            let alone = toml::Table::from_iter([(key.clone(), value.clone())]);
            match AgentSettings::deserialize(alone) {
                Ok(_) => {
                    good.insert(key, value);
                }
                Err(e) if unknown_field(&e.to_string()).is_some() => {
                    problems.push(ConfigError::UnknownKey {
                        path: path.to_path_buf(),
                        key,
                    });
                }
                Err(e) => problems.push(invalid_key(path, &key, &e.to_string())),
            }
        }
        match AgentSettings::deserialize(good) {
            Ok(settings) => Ok((settings, problems)),
            Err(e) => {
                problems.push(parse_error(e.to_string()));
                Err(problems)
            }
        }
    }

    /// Settings given here win; the rest come from `lower`.
    pub fn over(self, lower: AgentSettings) -> AgentSettings {
        AgentSettings {
            etcd: self.etcd.or(lower.etcd),
            prefix: self.prefix.or(lower.prefix),
            etcd_cacert: self.etcd_cacert.or(lower.etcd_cacert),
            etcd_cert: self.etcd_cert.or(lower.etcd_cert),
            etcd_key: self.etcd_key.or(lower.etcd_key),
            etcd_user: self.etcd_user.or(lower.etcd_user),
            etcd_password_file: self.etcd_password_file.or(lower.etcd_password_file),
            node: self.node.or(lower.node),
            interface: self.interface.or(lower.interface),
            lease_ttl: self.lease_ttl.or(lower.lease_ttl),
            address_lifetime: self.address_lifetime.or(lower.address_lifetime),
            allowed_cidr: self.allowed_cidr.or(lower.allowed_cidr),
            resync: self.resync.or(lower.resync),
            state_dir: self.state_dir.or(lower.state_dir),
            on_etcd_loss: self.on_etcd_loss.or(lower.on_etcd_loss),
            export_routes: self.export_routes.or(lower.export_routes),
            fenced_router: self.fenced_router.or(lower.fenced_router),
            stabilization: self.stabilization.or(lower.stabilization),
            label: self.label.or(lower.label),
            announce_count: self.announce_count.or(lower.announce_count),
            announce_interval: self.announce_interval.or(lower.announce_interval),
            announce_refresh: self.announce_refresh.or(lower.announce_refresh),
            announce_interface: self.announce_interface.or(lower.announce_interface),
            conflict_probe: self.conflict_probe.or(lower.conflict_probe),
            listen: self.listen.or(lower.listen),
            peers: self.peers.or(lower.peers),
            peer_interval: self.peer_interval.or(lower.peer_interval),
            peer_suspicion: self.peer_suspicion.or(lower.peer_suspicion),
            peer_port: self.peer_port.or(lower.peer_port),
            peer_address: self.peer_address.or(lower.peer_address),
            peer_secret_file: self.peer_secret_file.or(lower.peer_secret_file),
        }
    }
}

/// Validated agent configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// etcd endpoints, tried in turn.
    pub etcd: Vec<String>,
    /// TLS and credentials for etcd.
    pub etcd_auth: crate::store::EtcdAuth,
    /// Key prefix without a trailing `/`.
    pub prefix: String,
    /// Node name.
    pub node: String,
    /// Interfaces addresses go on, without duplicates; the first takes IPs naming none.
    pub interfaces: Vec<String>,
    /// Lease TTL, whole seconds.
    pub lease_ttl: Duration,
    /// Kernel lifetime of fenced addresses, whole seconds; `None`: the default for the TTL.
    pub address_lifetime: Option<Duration>,
    /// CIDRs the agent may configure.
    pub allowed: Vec<IpNet>,
    /// Period of the check against etcd (and of the reconcile after it).
    pub resync: Duration,
    /// Directory for the lease file.
    pub state_dir: PathBuf,
    /// What shared IPs do when the lease can no longer be trusted.
    pub on_etcd_loss: EtcdLossPolicy,
    /// Mirror held addresses as export routes (main table, proto 88) for BGP.
    pub export_routes: bool,
    /// Routers the fence cuts off with the fenced IPs: the BGP session (and BFD) that
    /// carries the fenced IPs' routes, so the router drops them when the fence closes.
    pub fenced_routers: Vec<std::net::IpAddr>,
    /// How long a new or returning node must be up before IPs move to it.
    pub stabilization: Duration,
    /// Node labels for `node_selector`.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Gratuitous ARP / unsolicited NA and the conflict probe.
    pub announce: AnnounceConfig,
    /// Where `/metrics`, `/healthz` and `/readyz` are served; `None`: nowhere.
    pub listen: Option<std::net::SocketAddr>,
    /// Peer vouching; `None`: off (the lease alone decides, as before).
    pub peers: Option<PeersConfig>,
}

/// `--on-etcd-loss`: what happens to shared IPs (replicas > 1) when etcd is lost.
/// Exclusive IPs are always withdrawn by the lease deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EtcdLossPolicy {
    /// Keep serving them: ECMP keeps working through an etcd outage.
    Keep,
    /// Remove them too, and give them kernel lifetimes like exclusive IPs.
    Withdraw,
}

fn parse_etcd_loss(text: Option<&str>) -> Result<EtcdLossPolicy, ConfigError> {
    match text {
        None | Some("keep") => Ok(EtcdLossPolicy::Keep),
        Some("withdraw") => Ok(EtcdLossPolicy::Withdraw),
        Some(other) => Err(invalid(
            "on-etcd-loss",
            format!("`{other}` is neither `keep` nor `withdraw`"),
        )),
    }
}

/// Explains how to allow everything, for the error when no CIDR is given.
const ALLOW_ALL_HINT: &str = "no CIDR given, so the agent would serve no IP; \
    list the ranges it may configure (e.g. --allowed-cidr 198.51.100.0/24), \
    or pass --allowed-cidr 0.0.0.0/0 --allowed-cidr ::/0 to allow every address";

impl AgentConfig {
    /// Validate merged settings; `hostname` is the default node name. The first problem.
    pub fn from_settings(s: AgentSettings, hostname: &str) -> Result<Self, ConfigError> {
        Self::check(s, hostname).map_err(|mut problems| problems.remove(0))
    }

    /// Validate merged settings; on failure every problem, each naming its setting.
    pub fn check(s: AgentSettings, hostname: &str) -> Result<Self, Vec<ConfigError>> {
        let announce = AnnounceConfig::from_settings(&s);
        let peers = PeersConfig::from_settings(&s);
        let etcd = validate_endpoints(s.etcd.unwrap_or_else(|| vec![DEFAULT_ETCD.to_string()]));
        let etcd_auth = crate::store::EtcdAuthSettings {
            cacert: s.etcd_cacert.as_deref(),
            cert: s.etcd_cert.as_deref(),
            key: s.etcd_key.as_deref(),
            user: s.etcd_user.as_deref(),
            password_file: s.etcd_password_file.as_deref(),
            password_env: std::env::var("EXTIP_ETCD_PASSWORD").ok(),
        }
        .load(etcd.as_deref().unwrap_or_default())
        .map_err(|(field, reason)| invalid(field, reason));
        let prefix = validate_prefix(s.prefix.as_deref().unwrap_or(DEFAULT_PREFIX));
        let node = validate_node(s.node.as_deref().unwrap_or(hostname));
        let interfaces = validate_interfaces(s.interface);
        let lease_ttl = parse_lease_ttl(s.lease_ttl.as_deref(), !matches!(peers, Ok(None)));
        let address_lifetime = parse_address_lifetime(s.address_lifetime.as_deref());
        let resync = parse_resync(s.resync.as_deref());
        let allowed = parse_cidrs(s.allowed_cidr.unwrap_or_default());
        let state_dir = validate_state_dir(s.state_dir.unwrap_or_else(|| DEFAULT_STATE_DIR.into()));
        let on_etcd_loss = parse_etcd_loss(s.on_etcd_loss.as_deref());
        let stabilization = match s.stabilization.as_deref() {
            None => Ok(DEFAULT_STABILIZATION),
            Some(text) => parse_duration("stabilization", text),
        };
        let labels = parse_labels(s.label.unwrap_or_default());
        let export_routes = s.export_routes.unwrap_or(false);
        let fenced_routers =
            parse_fenced_routers(s.fenced_router.unwrap_or_default(), export_routes);
        let listen = parse_listen(s.listen.as_deref(), DEFAULT_LISTEN);
        match (
            etcd,
            prefix,
            node,
            interfaces,
            lease_ttl,
            address_lifetime,
            resync,
            allowed,
            state_dir,
            on_etcd_loss,
            stabilization,
            labels,
            announce,
            listen,
            etcd_auth,
            peers,
            fenced_routers,
        ) {
            (
                Ok(etcd),
                Ok(prefix),
                Ok(node),
                Ok(interfaces),
                Ok(lease_ttl),
                Ok(address_lifetime),
                Ok(resync),
                Ok(allowed),
                Ok(state_dir),
                Ok(on_etcd_loss),
                Ok(stabilization),
                Ok(labels),
                Ok(announce),
                Ok(listen),
                Ok(etcd_auth),
                Ok(peers),
                Ok(fenced_routers),
            ) => Ok(AgentConfig {
                etcd,
                etcd_auth,
                prefix,
                node,
                interfaces,
                lease_ttl,
                address_lifetime,
                allowed,
                resync,
                state_dir,
                on_etcd_loss,
                export_routes,
                fenced_routers,
                stabilization,
                labels,
                announce,
                listen,
                peers,
            }),
            (a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p, q) => Err([
                a.err(),
                b.err(),
                c.err(),
                d.err(),
                e.err(),
                f.err(),
                g.err(),
                h.err(),
                i.err(),
                j.err(),
                k.err(),
                l.err(),
                m.err(),
                n.err(),
                o.err(),
                p.err(),
                q.err(),
            ]
            .into_iter()
            .flatten()
            .collect()),
        }
    }
}

#[cfg(test)]
mod tests;
