//! Where the etcd cluster is and how to log: settings every program shares, as flags
//! (`extip`) and as keys of a TOML file (extip-sync).

use std::path::PathBuf;

use clap::{Args, ValueEnum};

/// `--log-format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Plain lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Where the etcd cluster is; shared by every subcommand and by extip-sync, whose TOML
/// file has the same keys (`etcd`, `etcd-cacert`, …).
#[derive(Debug, Clone, Default, Args, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct EtcdArgs {
    /// etcd endpoints, comma separated [default: http://127.0.0.1:2379]
    #[arg(long, env = "EXTIP_ETCD", value_delimiter = ',')]
    #[serde(default, deserialize_with = "crate::config::one_or_many")]
    pub etcd: Option<Vec<String>>,
    /// Key prefix [default: /extip]
    #[arg(long, env = "EXTIP_PREFIX")]
    pub prefix: Option<String>,
    /// CA certificate (PEM) that signed etcd's server certificate; needs https:// endpoints
    #[arg(long, env = "EXTIP_ETCD_CACERT")]
    pub etcd_cacert: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's --client-cert-auth
    #[arg(long, env = "EXTIP_ETCD_CERT")]
    pub etcd_cert: Option<PathBuf>,
    /// Key (PEM) of --etcd-cert
    #[arg(long, env = "EXTIP_ETCD_KEY")]
    pub etcd_key: Option<PathBuf>,
    /// etcd user; the password comes from --etcd-password-file or $EXTIP_ETCD_PASSWORD
    #[arg(long, env = "EXTIP_ETCD_USER")]
    pub etcd_user: Option<String>,
    /// File holding the etcd user's password (never pass a password on the command line)
    #[arg(long, env = "EXTIP_ETCD_PASSWORD_FILE")]
    pub etcd_password_file: Option<PathBuf>,
}

impl EtcdArgs {
    /// Settings given here win; the rest come from `lower`.
    pub fn over(self, lower: EtcdArgs) -> EtcdArgs {
        EtcdArgs {
            etcd: self.etcd.or(lower.etcd),
            prefix: self.prefix.or(lower.prefix),
            etcd_cacert: self.etcd_cacert.or(lower.etcd_cacert),
            etcd_cert: self.etcd_cert.or(lower.etcd_cert),
            etcd_key: self.etcd_key.or(lower.etcd_key),
            etcd_user: self.etcd_user.or(lower.etcd_user),
            etcd_password_file: self.etcd_password_file.or(lower.etcd_password_file),
        }
    }

    /// TLS and credentials as given, checked and read.
    pub fn auth(&self, endpoints: &[String]) -> anyhow::Result<crate::store::EtcdAuth> {
        crate::store::EtcdAuthSettings {
            cacert: self.etcd_cacert.as_deref(),
            cert: self.etcd_cert.as_deref(),
            key: self.etcd_key.as_deref(),
            user: self.etcd_user.as_deref(),
            password_file: self.etcd_password_file.as_deref(),
            password_env: std::env::var("EXTIP_ETCD_PASSWORD").ok(),
        }
        .load(endpoints)
        .map_err(|(field, reason)| anyhow::anyhow!("{field}: {reason}"))
    }
}
