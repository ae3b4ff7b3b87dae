//! The addresses behind etcd endpoint URLs: no agent may take one as a service IP.

use std::net::IpAddr;

/// The host and port of an endpoint such as `http://192.0.2.250:2379`,
/// `https://[2001:db8::1]:2379` or `etcd1:2379`; the port defaults to 2379.
pub fn endpoint_host(endpoint: &str) -> Option<(String, u16)> {
    let rest = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest);
    let authority = rest.split('/').next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']')?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(p) => p.parse().ok()?,
        None => 2379,
    };
    (!host.is_empty()).then(|| (host.to_string(), port))
}

/// Every address the endpoints name or resolve to; a name that does not resolve now is
/// skipped (logged): the agent may still reach etcd through another endpoint.
pub async fn endpoint_addresses(endpoints: &[String]) -> Vec<IpAddr> {
    let mut addresses = Vec::new();
    for endpoint in endpoints {
        let Some((host, port)) = endpoint_host(endpoint) else {
            continue;
        };
        if let Ok(ip) = host.parse::<IpAddr>() {
            addresses.push(ip);
            continue;
        }
        match tokio::net::lookup_host(format!("{host}:{port}")).await {
            Ok(found) => addresses.extend(found.map(|a| a.ip())),
            Err(e) => tracing::warn!(endpoint, error = %e, "cannot resolve etcd endpoint"),
        }
    }
    addresses.sort();
    addresses.dedup();
    addresses
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_every_endpoint_form() {
        let cases = [
            ("http://192.0.2.250:2379", Some(("192.0.2.250", 2379))),
            ("https://[2001:db8::1]:2380/", Some(("2001:db8::1", 2380))),
            ("http://[2001:db8::1]", Some(("2001:db8::1", 2379))),
            ("etcd1:2379", Some(("etcd1", 2379))),
            (
                "https://user@etcd.example:12379",
                Some(("etcd.example", 12379)),
            ),
            ("192.0.2.9", Some(("192.0.2.9", 2379))),
            ("http://:2379", None),
            ("http://x:port", None),
        ];
        for (endpoint, want) in cases {
            let want = want.map(|(h, p)| (h.to_string(), p));
            assert_eq!(endpoint_host(endpoint), want, "{endpoint}");
        }
    }
}
