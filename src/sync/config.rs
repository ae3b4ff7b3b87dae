//! extip-sync settings: flags, `EXTIP_*` environment and a TOML file with the same
//! keys, in that order of precedence, like the agent's.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::config::{
    invalid, parse_cidr_list, parse_duration, parse_listen, validate_endpoints, validate_prefix,
    ConfigError, DEFAULT_ETCD, DEFAULT_PREFIX,
};
use crate::config::{EtcdArgs, LogFormat};
use crate::store::{EtcdAuth, EtcdAuthSettings};

/// Default TTL of the lease the desired keys hang on: longer than Kubernetes' default
/// pod eviction (5 min), so a lone replica rescheduled off a dead node comes back
/// before its IPs are withdrawn.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(600);
/// Default TTL of the election lease: how long a dead leader leads.
pub const DEFAULT_ELECTION_TTL: Duration = Duration::from_secs(10);
/// Default time a deleted Service's IP is kept for it.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(3600);
/// Default address of `/metrics`, `/healthz`, `/readyz` (the agent's port plus one, so
/// both can run on one host).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9479";
/// Default period of the full reconcile with etcd.
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(60);

/// Settings as given; `None` = not given. Flags and TOML keys have the same names.
#[derive(Debug, Default, Clone, Deserialize, clap::Args)]
#[serde(rename_all = "kebab-case")]
pub struct SyncSettings {
    /// TOML file with the same keys as these flags (e.g. `lease-ttl = "10m"`)
    #[arg(long, env = "EXTIP_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// etcd and its credentials, as for the agent.
    #[command(flatten)]
    #[serde(flatten)]
    pub etcd: EtcdArgs,
    /// kubeconfig file [default: in-cluster, then $KUBECONFIG, then ~/.kube/config]
    #[arg(long, env = "EXTIP_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Namespace to watch; repeatable [default: all namespaces]
    #[arg(long, env = "EXTIP_NAMESPACE", value_delimiter = ',')]
    #[serde(default, deserialize_with = "crate::config::one_or_many")]
    pub namespace: Option<Vec<String>>,
    /// TTL of the lease the desired keys hang on: how long IPs outlive every sync replica [default: 10m]
    #[arg(long, env = "EXTIP_LEASE_TTL")]
    pub lease_ttl: Option<String>,
    /// TTL of the election lease: how long a dead leader keeps leading [default: 10s]
    #[arg(long, env = "EXTIP_ELECTION_TTL")]
    pub election_ttl: Option<String>,
    /// CIDR that spec.externalIPs may use; repeatable; none: every externalIP is refused (CVE-2020-8554)
    #[arg(long, env = "EXTIP_ALLOW_EXTERNAL_IP", value_delimiter = ',')]
    #[serde(default, deserialize_with = "crate::config::one_or_many")]
    pub allow_external_ip: Option<Vec<String>>,
    /// How long a deleted Service's IP is kept for a Service of the same namespace/name [default: 1h]
    #[arg(long, env = "EXTIP_RETENTION")]
    pub retention: Option<String>,
    /// Period of the full reconcile with etcd [default: 60s]
    #[arg(long, env = "EXTIP_RESYNC")]
    pub resync: Option<String>,
    /// Serve /metrics, /healthz and /readyz here; `none` turns it off [default: 127.0.0.1:9479]
    #[arg(long, env = "EXTIP_LISTEN")]
    pub listen: Option<String>,
    /// Name of this replica in the election [default: the host name]
    #[arg(long, env = "EXTIP_IDENTITY")]
    pub identity: Option<String>,
    /// Serve LoadBalancer Services of this spec.loadBalancerClass only [default: those without a class]
    #[arg(long, env = "EXTIP_LOAD_BALANCER_CLASS")]
    pub load_balancer_class: Option<String>,
    /// Tests only: lead without an election, so two replicas race
    #[arg(long, hide = true)]
    #[serde(skip)]
    pub assume_leader: bool,
}

/// Copies Kubernetes Service externalIPs and LoadBalancer IPs into extip's etcd keys,
/// allocating LoadBalancer IPs from pools.
#[derive(Debug, clap::Parser)]
#[command(name = "extip-sync", version, about)]
pub struct SyncCli {
    /// Log lines as `text` or `json`
    #[arg(long, env = "EXTIP_LOG_FORMAT", value_enum, default_value_t)]
    pub log_format: LogFormat,
    /// Check the settings (flags, environment, --config file), print them and exit
    #[arg(long)]
    pub check_config: bool,
    #[command(flatten)]
    pub settings: SyncSettings,
}

/// Validated extip-sync configuration.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// etcd endpoints.
    pub etcd: Vec<String>,
    /// TLS and credentials for etcd.
    pub etcd_auth: EtcdAuth,
    /// Key prefix without a trailing `/`.
    pub prefix: String,
    /// kubeconfig file, `None` for the default chain.
    pub kubeconfig: Option<PathBuf>,
    /// Namespaces to watch; empty: all.
    pub namespaces: Vec<String>,
    /// Data lease TTL.
    pub lease_ttl: Duration,
    /// Election lease TTL.
    pub election_ttl: Duration,
    /// CIDRs spec.externalIPs may use.
    pub allow_external: Vec<IpNet>,
    /// Sticky-IP window.
    pub retention: Duration,
    /// Full reconcile period.
    pub resync: Duration,
    /// Where the metrics are served; `None`: nowhere.
    pub listen: Option<std::net::SocketAddr>,
    /// This replica's name.
    pub identity: String,
    /// The `spec.loadBalancerClass` served; `None`: Services without one.
    pub load_balancer_class: Option<String>,
    /// Lead without an election (tests).
    pub assume_leader: bool,
}

macro_rules! over {
    ($high:expr, $low:expr, $($f:ident),*) => { SyncSettings { $($f: $high.$f.or($low.$f),)* etcd: $high.etcd.over($low.etcd), config: $high.config, assume_leader: $high.assume_leader } };
}

impl SyncSettings {
    /// Read the TOML file named by `--config`, if any, under the flags and environment.
    pub fn merged(self) -> Result<SyncSettings, ConfigError> {
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        let file = Self::from_file(&path)?;
        Ok(over!(
            self,
            file,
            kubeconfig,
            namespace,
            lease_ttl,
            election_ttl,
            allow_external_ip,
            retention,
            resync,
            listen,
            identity,
            load_balancer_class
        ))
    }

    /// The file's settings; a key that is no flag of extip-sync is an error naming it
    /// (the flags are the list of keys, so the two cannot drift apart).
    fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let parse_error = |e: toml::de::Error| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let table: toml::Table = toml::from_str(&text).map_err(parse_error)?;
        let flags = <SyncSettings as clap::Args>::augment_args(clap::Command::new("extip-sync"));
        let not_in_file = ["config", "assume-leader"];
        let known = |key: &str| {
            !not_in_file.contains(&key) && flags.get_arguments().any(|a| a.get_long() == Some(key))
        };
        if let Some(key) = table.keys().find(|k| !known(k)) {
            return Err(ConfigError::UnknownKey {
                path: path.to_path_buf(),
                key: key.clone(),
            });
        }
        table.try_into().map_err(parse_error)
    }
}

fn duration(
    field: &'static str,
    text: Option<&str>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let d = text.map_or(Ok(default), |t| parse_duration(field, t))?;
    if d.subsec_nanos() != 0 || d.is_zero() {
        return Err(invalid(
            field,
            format!(
                "{} is not a whole, positive number of seconds",
                humantime::format_duration(d)
            ),
        ));
    }
    Ok(d)
}

/// A `spec.loadBalancerClass` as Kubernetes accepts it: a label-style name with a
/// domain prefix (`example.com/lb`), so a typo cannot silently match no Service.
fn validate_class(class: &str) -> Result<(), ConfigError> {
    let field = "load-balancer-class";
    let Some((domain, name)) = class.split_once('/') else {
        return Err(invalid(
            field,
            format!("{class:?} needs a domain prefix, like extip.io/{class}"),
        ));
    };
    let label = |s: &str, extra: &[char]| {
        !s.is_empty()
            && s.len() <= 63
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || extra.contains(&c))
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric())
    };
    if !domain.split('.').all(|part| label(part, &['-'])) || !label(name, &['-', '_', '.']) {
        return Err(invalid(
            field,
            format!("{class:?} is not a valid class name (domain/name)"),
        ));
    }
    Ok(())
}

impl SyncConfig {
    /// Validate merged settings; `hostname` is the default identity.
    pub fn from_settings(s: SyncSettings, hostname: &str) -> Result<Self, ConfigError> {
        let etcd = validate_endpoints(
            s.etcd
                .etcd
                .unwrap_or_else(|| vec![DEFAULT_ETCD.to_string()]),
        )?;
        let etcd_auth = EtcdAuthSettings {
            cacert: s.etcd.etcd_cacert.as_deref(),
            cert: s.etcd.etcd_cert.as_deref(),
            key: s.etcd.etcd_key.as_deref(),
            user: s.etcd.etcd_user.as_deref(),
            password_file: s.etcd.etcd_password_file.as_deref(),
            password_env: std::env::var("EXTIP_ETCD_PASSWORD").ok(),
        }
        .load(&etcd)
        .map_err(|(field, reason)| invalid(field, reason))?;
        let lease_ttl = duration("lease-ttl", s.lease_ttl.as_deref(), DEFAULT_LEASE_TTL)?;
        let election_ttl = duration(
            "election-ttl",
            s.election_ttl.as_deref(),
            DEFAULT_ELECTION_TTL,
        )?;
        if election_ttl < Duration::from_secs(2) || election_ttl * 3 > lease_ttl {
            return Err(invalid("election-ttl", format!(
                "{} must be at least 2s and at most a third of lease-ttl ({}), so a new leader re-attaches the keys before the old lease expires",
                humantime::format_duration(election_ttl), humantime::format_duration(lease_ttl))));
        }
        let given = s.allow_external_ip.unwrap_or_default();
        let allow_external = parse_cidr_list("allow-external-ip", &given)?;
        let identity = s.identity.unwrap_or_else(|| hostname.to_string());
        if identity.is_empty() {
            return Err(invalid("identity", "must not be empty"));
        }
        let load_balancer_class = s
            .load_balancer_class
            .map(|class| validate_class(&class).map(|()| class))
            .transpose()?;
        Ok(SyncConfig {
            etcd,
            etcd_auth,
            prefix: validate_prefix(s.etcd.prefix.as_deref().unwrap_or(DEFAULT_PREFIX))?,
            kubeconfig: s.kubeconfig,
            namespaces: s.namespace.unwrap_or_default(),
            lease_ttl,
            election_ttl,
            allow_external,
            retention: duration("retention", s.retention.as_deref(), DEFAULT_RETENTION)?,
            resync: duration("resync", s.resync.as_deref(), DEFAULT_RESYNC)?,
            listen: parse_listen(s.listen.as_deref(), DEFAULT_LISTEN)?,
            identity,
            load_balancer_class,
            assume_leader: s.assume_leader,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> SyncSettings {
        SyncSettings::default()
    }

    #[test]
    fn defaults_are_long_lived_and_named_errors_name_the_field() {
        let cfg = SyncConfig::from_settings(settings(), "host").unwrap();
        assert_eq!(cfg.lease_ttl, Duration::from_secs(600));
        assert!(cfg.allow_external.is_empty());
        let bad = SyncSettings {
            allow_external_ip: Some(vec!["198.51.100.0/33".into()]),
            ..settings()
        };
        let e = SyncConfig::from_settings(bad, "host")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("allow-external-ip:"), "{e}");
        let close = SyncSettings {
            lease_ttl: Some("20s".into()),
            election_ttl: Some("10s".into()),
            ..settings()
        };
        let e = SyncConfig::from_settings(close, "host")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("election-ttl:"), "{e}");
    }

    #[test]
    fn a_load_balancer_class_needs_a_domain_prefix() {
        let class = |c: &str| {
            let s = SyncSettings {
                load_balancer_class: Some(c.into()),
                ..settings()
            };
            SyncConfig::from_settings(s, "host").map(|cfg| cfg.load_balancer_class)
        };
        assert_eq!(class("extip.io/lb").unwrap(), Some("extip.io/lb".into()));
        for bad in ["lb", "extip.io/", "/lb", "extip..io/lb", "extip.io/l b"] {
            let e = class(bad).unwrap_err().to_string();
            assert!(e.starts_with("load-balancer-class:"), "{bad}: {e}");
        }
        let none = SyncConfig::from_settings(settings(), "host").unwrap();
        assert_eq!(
            none.load_balancer_class, None,
            "default: Services without a class"
        );
    }

    #[test]
    fn the_file_takes_every_flag_name_and_refuses_others_and_flags_win() {
        let dir = std::env::temp_dir().join(format!("extip-sync-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.toml");
        std::fs::write(
            &good,
            "etcd = [\"http://192.0.2.9:2379\"]\nprefix = \"/x\"\nretention = \"2h\"\n",
        )
        .unwrap();
        let flags = SyncSettings {
            config: Some(good),
            etcd: EtcdArgs {
                prefix: Some("/flag".into()),
                ..Default::default()
            },
            ..settings()
        };
        let cfg = SyncConfig::from_settings(flags.merged().unwrap(), "host").unwrap();
        assert_eq!(cfg.etcd, vec!["http://192.0.2.9:2379".to_string()]);
        assert_eq!(
            (cfg.prefix.as_str(), cfg.retention),
            ("/flag", Duration::from_secs(7200))
        );
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "lease_ttl = \"5m\"\n").unwrap();
        let e = SyncSettings {
            config: Some(bad),
            ..settings()
        }
        .merged()
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("lease_ttl: unknown key"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
