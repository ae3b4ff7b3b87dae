//! How extip checks etcd and proves itself to it: TLS with a CA (and optionally a client
//! certificate), and etcd user/password authentication. Files are read once, when the
//! configuration is validated, so a bad path stops the agent at start with its setting.

use std::fmt;
use std::path::{Path, PathBuf};

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};

/// A password that never appears in logs or `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

/// A client certificate and its key, PEM.
pub type ClientIdentity = (Vec<u8>, Vec<u8>);

/// TLS material, already read from its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// The CA that signed etcd's server certificate, PEM.
    pub ca: Vec<u8>,
    /// Where the CA came from, for error messages.
    pub ca_path: PathBuf,
    /// Client certificate and key, PEM, for etcd's `--client-cert-auth`.
    pub identity: Option<ClientIdentity>,
}

/// Everything about a connection to etcd beyond its URL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdAuth {
    /// TLS for `https://` endpoints.
    pub tls: Option<Tls>,
    /// etcd user and password.
    pub user: Option<(String, Password)>,
}

/// Which setting is wrong and why; the caller turns it into its own error type.
pub type Problem = (&'static str, String);

fn read(field: &'static str, path: &Path) -> Result<Vec<u8>, Problem> {
    std::fs::read(path).map_err(|e| (field, format!("cannot read {}: {e}", path.display())))
}

/// The files and names an operator gave, before they are read.
#[derive(Debug, Clone, Default)]
pub struct EtcdAuthSettings<'a> {
    /// `--etcd-cacert`.
    pub cacert: Option<&'a Path>,
    /// `--etcd-cert`.
    pub cert: Option<&'a Path>,
    /// `--etcd-key`.
    pub key: Option<&'a Path>,
    /// `--etcd-user`.
    pub user: Option<&'a str>,
    /// `--etcd-password-file`.
    pub password_file: Option<&'a Path>,
    /// `$EXTIP_ETCD_PASSWORD`.
    pub password_env: Option<String>,
}

impl EtcdAuthSettings<'_> {
    /// Check the combination and read the files.
    pub fn load(&self, endpoints: &[String]) -> Result<EtcdAuth, Problem> {
        let https = endpoints.iter().any(|e| e.starts_with("https://"));
        let tls = match (self.cacert, https) {
            (None, true) => {
                return Err((
                    "etcd-cacert",
                    "https:// endpoints need the CA that signed etcd's certificate".into(),
                ))
            }
            (Some(_), false) => {
                return Err((
                    "etcd",
                    "--etcd-cacert is given: use https:// endpoints".into(),
                ))
            }
            (None, false) => None,
            (Some(ca_path), true) => Some(Tls {
                ca: read("etcd-cacert", ca_path)?,
                ca_path: ca_path.to_path_buf(),
                identity: self.identity()?,
            }),
        };
        if tls.is_none() && (self.cert.is_some() || self.key.is_some()) {
            return Err((
                "etcd-cert",
                "a client certificate needs https:// and --etcd-cacert".into(),
            ));
        }
        Ok(EtcdAuth {
            tls,
            user: self.user()?,
        })
    }

    fn identity(&self) -> Result<Option<ClientIdentity>, Problem> {
        match (self.cert, self.key) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => Ok(Some((read("etcd-cert", cert)?, read("etcd-key", key)?))),
            (Some(_), None) => Err(("etcd-key", "--etcd-cert needs its key".into())),
            (None, Some(_)) => Err(("etcd-cert", "--etcd-key needs its certificate".into())),
        }
    }

    fn user(&self) -> Result<Option<(String, Password)>, Problem> {
        let Some(user) = self.user else {
            return Ok(None);
        };
        let password = match (self.password_file, &self.password_env) {
            (Some(path), _) => {
                let text = String::from_utf8(read("etcd-password-file", path)?)
                    .map_err(|_| ("etcd-password-file", "not UTF-8 text".to_string()))?;
                text.trim_end_matches(['\n', '\r']).to_string()
            }
            (None, Some(env)) => env.clone(),
            (None, None) => {
                return Err((
                    "etcd-password-file",
                    "--etcd-user needs a password: a file, or $EXTIP_ETCD_PASSWORD".into(),
                ))
            }
        };
        Ok(Some((user.to_string(), Password(password))))
    }
}

impl EtcdAuth {
    /// Add TLS and credentials to etcd-client's options.
    pub fn apply(&self, mut options: ConnectOptions) -> ConnectOptions {
        if let Some(tls) = &self.tls {
            let mut config = TlsOptions::new().ca_certificate(Certificate::from_pem(&tls.ca));
            if let Some((cert, key)) = &tls.identity {
                config = config.identity(Identity::from_pem(cert, key));
            }
            options = options.with_tls(config);
        }
        if let Some((user, password)) = &self.user {
            options = options.with_user(user.clone(), password.0.clone());
        }
        options
    }

    /// An operator's explanation of a failed connection, when TLS is the likely cause.
    pub fn explain(&self, error: &str) -> Option<String> {
        let tls = self.tls.as_ref()?;
        let lower = error.to_lowercase();
        let cause = if lower.contains("unknownissuer") || lower.contains("unknown issuer") {
            format!(
                "etcd's certificate is not signed by the CA in --etcd-cacert {}",
                tls.ca_path.display()
            )
        } else if lower.contains("certificate") || lower.contains("tls") {
            format!("TLS handshake failed (CA {})", tls.ca_path.display())
        } else {
            return None;
        };
        Some(cause)
    }
}
