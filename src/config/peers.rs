//! Settings of peer vouching: heartbeats between agents that let a dead holder's IPs
//! move in a fraction of a second (see `src/vouch/`).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{invalid, parse_duration, AgentSettings, ConfigError};
use crate::vouch::{wire::MIN_SECRET, Timing, MAX_WINDOW};

/// Default UDP port for heartbeats (metrics use 9478, extip-sync 9479).
pub const DEFAULT_PEER_PORT: u16 = 9480;

/// Where the cluster secret that signs heartbeats comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A file every host has (only holders of it can forge heartbeats).
    File(PathBuf),
    /// `<prefix>/secret` in etcd, created once (anyone who can read the prefix can).
    Etcd,
}

/// Peer vouching settings; `None` in [`super::AgentConfig`] when it is off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeersConfig {
    /// Heartbeat interval and window.
    pub timing: Timing,
    /// UDP port heartbeats are received on.
    pub port: u16,
    /// The address published and bound; `None`: the one the kernel uses towards etcd.
    pub address: Option<IpAddr>,
    /// Where the MAC key comes from.
    pub secret: SecretSource,
}

impl PeersConfig {
    /// Validate the peer settings; `Ok(None)` when `peers = off`.
    pub fn from_settings(s: &AgentSettings) -> Result<Option<Self>, ConfigError> {
        match s.peers.as_deref() {
            None | Some("on") => {}
            Some("off") => return Ok(None),
            Some(other) => {
                return Err(invalid(
                    "peers",
                    format!("`{other}` is neither `on` nor `off`"),
                ))
            }
        }
        let defaults = Timing::default();
        let interval = match s.peer_interval.as_deref() {
            None => defaults.interval,
            Some(text) => parse_duration("peer-interval", text)?,
        };
        if !(Duration::from_millis(10)..=Duration::from_secs(1)).contains(&interval) {
            return Err(invalid("peer-interval", "must be between 10ms and 1s"));
        }
        let window = match s.peer_suspicion.as_deref() {
            None => defaults.window.max(interval * 4),
            Some(text) => parse_duration("peer-suspicion", text)?,
        };
        if window < interval * 3 || window > MAX_WINDOW {
            return Err(invalid(
                "peer-suspicion",
                format!(
                    "`{}` must be at least 3 × peer-interval ({:?}) and at most {:?}",
                    humantime::format_duration(window),
                    interval * 3,
                    MAX_WINDOW
                ),
            ));
        }
        let port = s.peer_port.unwrap_or(DEFAULT_PEER_PORT);
        if port == 0 {
            return Err(invalid("peer-port", "0 is not a port"));
        }
        let address =
            match s.peer_address.as_deref() {
                None => None,
                Some(text) => Some(text.trim().parse().map_err(|_| {
                    invalid("peer-address", format!("`{text}` is not an IP address"))
                })?),
            };
        let secret = match &s.peer_secret_file {
            None => SecretSource::Etcd,
            Some(path) => {
                read_secret(path)?;
                SecretSource::File(path.clone())
            }
        };
        Ok(Some(PeersConfig {
            timing: Timing { interval, window },
            port,
            address,
            secret,
        }))
    }
}

/// Read a secret file: at least [`MIN_SECRET`] bytes, surrounding whitespace ignored.
pub fn read_secret(path: &std::path::Path) -> Result<Vec<u8>, ConfigError> {
    let bytes = std::fs::read(path)
        .map_err(|e| invalid("peer-secret-file", format!("{}: {e}", path.display())))?;
    let text = String::from_utf8_lossy(&bytes);
    let secret = text.trim().as_bytes().to_vec();
    if secret.len() < MIN_SECRET {
        return Err(invalid(
            "peer-secret-file",
            format!(
                "{}: {} bytes, at least {MIN_SECRET} needed (e.g. `openssl rand -hex 32`)",
                path.display(),
                secret.len()
            ),
        ));
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> AgentSettings {
        AgentSettings {
            peers: Some("on".into()),
            ..AgentSettings::default()
        }
    }

    #[test]
    fn defaults_and_off() {
        let unset = PeersConfig::from_settings(&AgentSettings::default()).unwrap();
        assert_eq!(
            unset.map(|c| c.timing),
            Some(Timing::default()),
            "on unless turned off"
        );
        let c = PeersConfig::from_settings(&settings()).unwrap().unwrap();
        assert_eq!(c.timing, Timing::default());
        assert_eq!(
            (c.port, c.address, c.secret),
            (9480, None, SecretSource::Etcd)
        );
        let off = AgentSettings {
            peers: Some("off".into()),
            ..settings()
        };
        assert_eq!(PeersConfig::from_settings(&off).unwrap(), None);
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            (
                AgentSettings {
                    peers: Some("yes".into()),
                    ..settings()
                },
                "peers",
            ),
            (
                AgentSettings {
                    peer_interval: Some("5ms".into()),
                    ..settings()
                },
                "peer-interval",
            ),
            (
                AgentSettings {
                    peer_suspicion: Some("100ms".into()),
                    ..settings()
                },
                "peer-suspicion",
            ),
            (
                AgentSettings {
                    peer_suspicion: Some("2s".into()),
                    ..settings()
                },
                "peer-suspicion",
            ),
            (
                AgentSettings {
                    peer_port: Some(0),
                    ..settings()
                },
                "peer-port",
            ),
            (
                AgentSettings {
                    peer_address: Some("h1".into()),
                    ..settings()
                },
                "peer-address",
            ),
            (
                AgentSettings {
                    peer_secret_file: Some("/nonexistent/s".into()),
                    ..settings()
                },
                "peer-secret-file",
            ),
        ];
        for (s, field) in cases {
            let e = PeersConfig::from_settings(&s).unwrap_err().to_string();
            assert!(e.starts_with(&format!("{field}:")), "{e}");
        }
        let slow = AgentSettings {
            peer_interval: Some("100ms".into()),
            ..settings()
        };
        let c = PeersConfig::from_settings(&slow).unwrap().unwrap();
        assert_eq!(
            c.timing.window,
            Duration::from_millis(400),
            "4 intervals at least"
        );
    }

    #[test]
    fn a_short_secret_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("extip-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret");
        std::fs::write(&path, "short\n").unwrap();
        assert!(read_secret(&path)
            .unwrap_err()
            .to_string()
            .contains("at least 16"));
        std::fs::write(&path, "0123456789abcdef0123\n").unwrap();
        assert_eq!(read_secret(&path).unwrap(), b"0123456789abcdef0123");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
