//! Single settings parsed and validated one by one: each error names its field.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use super::*;

/// Default address of `/metrics`, `/healthz` and `/readyz`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9478";

/// `listen`: `host:port`, or `none` for no listener; `default` when not given.
pub(crate) fn parse_listen(
    text: Option<&str>,
    default: &str,
) -> Result<Option<std::net::SocketAddr>, ConfigError> {
    match text.unwrap_or(default) {
        "none" => Ok(None),
        text => text.parse().map(Some).map_err(|_| {
            invalid(
                "listen",
                format!("`{text}` is neither host:port (e.g. {default}) nor `none`"),
            )
        }),
    }
}

pub(super) fn parse_resync(text: Option<&str>) -> Result<Duration, ConfigError> {
    let resync = match text {
        None => DEFAULT_RESYNC,
        Some(text) => parse_duration("resync", text)?,
    };
    if resync < Duration::from_secs(1) {
        return Err(invalid("resync", "must be at least 1s"));
    }
    Ok(resync)
}

pub(super) fn validate_state_dir(dir: PathBuf) -> Result<PathBuf, ConfigError> {
    if !dir.is_absolute() {
        return Err(invalid(
            "state-dir",
            format!("`{}` must be an absolute path", dir.display()),
        ));
    }
    Ok(dir)
}

/// A key of the file whose value has the wrong type.
pub(super) fn invalid_key(path: &Path, key: &str, message: &str) -> ConfigError {
    ConfigError::Parse {
        path: path.to_path_buf(),
        message: format!(
            "{key}: {}",
            message.lines().next().unwrap_or(message).trim()
        ),
    }
}

/// The key serde names in an "unknown field `x`" error.
pub(super) fn unknown_field(message: &str) -> Option<String> {
    let rest = message.split("unknown field `").nth(1)?;
    Some(rest.split('`').next()?.to_string())
}

/// `interface = "eth0"` and `interface = ["lo", "eth0"]` both read as a list; so does
/// every other list setting (`etcd = "http://192.0.2.250:2379"`).
pub(crate) fn one_or_many<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(Some(match OneOrMany::deserialize(d)? {
        OneOrMany::One(name) => vec![name],
        OneOrMany::Many(names) => names,
    }))
}

pub(super) fn validate_interfaces(names: Option<Vec<String>>) -> Result<Vec<String>, ConfigError> {
    let names = names.unwrap_or_else(|| vec![DEFAULT_INTERFACE.into()]);
    if names.is_empty() {
        return Err(invalid("interface", "at least one interface is needed"));
    }
    let mut valid: Vec<String> = Vec::with_capacity(names.len());
    for name in names {
        let name = crate::model::validate_interface(name)
            .map_err(|e| invalid("interface", e.to_string()))?;
        if valid.contains(&name) {
            return Err(invalid("interface", format!("`{name}` is given twice")));
        }
        valid.push(name);
    }
    Ok(valid)
}

pub(crate) fn parse_duration(field: &'static str, text: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(text).map_err(|e| invalid(field, format!("`{text}`: {e}")))
}

/// Parse `--lease-ttl`: whole seconds, at least [`MIN_LEASE_TTL`]; the default depends
/// on whether peers vouch.
pub fn parse_lease_ttl(text: Option<&str>, peers_on: bool) -> Result<Duration, ConfigError> {
    let Some(text) = text else {
        return Ok(if peers_on {
            DEFAULT_LEASE_TTL
        } else {
            DEFAULT_LEASE_TTL_WITHOUT_PEERS
        });
    };
    let ttl = parse_duration("lease-ttl", text)?;
    if ttl < MIN_LEASE_TTL {
        return Err(invalid(
            "lease-ttl",
            format!("`{text}` is below the minimum lease TTL of 1s"),
        ));
    }
    if ttl.subsec_nanos() != 0 {
        return Err(invalid(
            "lease-ttl",
            format!("`{text}`: etcd leases are whole seconds"),
        ));
    }
    Ok(ttl)
}

/// Parse `--address-lifetime`: whole seconds, at least 3 s (the kernel checks lifetimes
/// about once a second, and the agent renews them at half use).
pub fn parse_address_lifetime(text: Option<&str>) -> Result<Option<Duration>, ConfigError> {
    let Some(text) = text else {
        return Ok(None);
    };
    let lifetime = parse_duration("address-lifetime", text)?;
    if lifetime < Duration::from_secs(3) || lifetime.subsec_nanos() != 0 {
        return Err(invalid(
            "address-lifetime",
            format!("`{text}`: whole seconds, at least 3s"),
        ));
    }
    Ok(Some(lifetime))
}

pub(super) fn parse_cidrs(given: Vec<String>) -> Result<Vec<IpNet>, ConfigError> {
    if given.is_empty() {
        return Err(invalid("allowed-cidr", ALLOW_ALL_HINT));
    }
    parse_cidr_list("allowed-cidr", &given)
}

/// CIDRs of setting `field`, host bits cleared; the first that does not parse is the error.
pub(crate) fn parse_cidr_list(
    field: &'static str,
    given: &[String],
) -> Result<Vec<IpNet>, ConfigError> {
    given
        .iter()
        .map(|c| {
            c.trim()
                .parse::<IpNet>()
                .map(|n| n.trunc())
                .map_err(|_| invalid(field, format!("`{c}` is not a CIDR")))
        })
        .collect()
}

pub(super) fn parse_labels(
    given: Vec<String>,
) -> Result<std::collections::BTreeMap<String, String>, ConfigError> {
    given
        .iter()
        .map(|pair| match pair.trim().split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(invalid("label", format!("`{pair}` is not key=value"))),
        })
        .collect()
}

pub(crate) fn validate_endpoints(endpoints: Vec<String>) -> Result<Vec<String>, ConfigError> {
    let endpoints: Vec<String> = endpoints
        .iter()
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
        .collect();
    if endpoints.is_empty() {
        return Err(invalid("etcd", "no endpoint given"));
    }
    for e in &endpoints {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            return Err(invalid(
                "etcd",
                format!("`{e}` must start with http:// or https://"),
            ));
        }
    }
    Ok(endpoints)
}

/// Check a key prefix: absolute, no trailing slash.
pub fn validate_prefix(prefix: &str) -> Result<String, ConfigError> {
    let trimmed = prefix.trim_end_matches('/');
    if !trimmed.starts_with('/') || trimmed.len() < 2 {
        return Err(invalid(
            "prefix",
            format!("`{prefix}` must start with / and name a key"),
        ));
    }
    Ok(trimmed.to_string())
}

pub(super) fn validate_node(node: &str) -> Result<String, ConfigError> {
    let ok = !node.is_empty()
        && node.len() <= 253
        && !node.contains('/')
        && !node.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(node.to_string())
    } else {
        Err(invalid(
            "node",
            format!("`{node}` is not a node name (1-253 characters, no `/` or spaces)"),
        ))
    }
}

/// The host name, for the default node name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// `fenced-router`: addresses of BGP peers whose sessions carry only fenced IPs' routes.
/// Cutting a session is all the fence does, so it needs `export-routes`; an address the
/// host itself relies on for everything (loopback, unspecified, multicast) is refused.
pub(super) fn parse_fenced_routers(
    given: Vec<String>,
    export_routes: bool,
) -> Result<Vec<std::net::IpAddr>, ConfigError> {
    if given.is_empty() {
        return Ok(Vec::new());
    }
    if !export_routes {
        return Err(invalid(
            "fenced-router",
            "needs export-routes: without export routes no BGP session carries the IPs",
        ));
    }
    let mut routers = Vec::new();
    for text in given {
        let ip: std::net::IpAddr = text.trim().parse().map_err(|_| {
            invalid(
                "fenced-router",
                format!("`{text}` is not an IP address (e.g. 192.0.2.253)"),
            )
        })?;
        if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() {
            return Err(invalid(
                "fenced-router",
                format!("`{ip}` cannot be a BGP peer: give the router's own address"),
            ));
        }
        if !routers.contains(&ip) {
            routers.push(ip);
        }
    }
    Ok(routers)
}
