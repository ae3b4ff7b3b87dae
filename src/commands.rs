//! `extip ip …` and `extip status`: thin clients of the etcd contract.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::cli::{
    EtcdArgs, IpAddArgs, IpLsArgs, IpRmArgs, NodeArgs, Output, PoolAddArgs, PoolLsArgs, PoolRmArgs,
};
use crate::config::{validate_prefix, DEFAULT_ETCD, DEFAULT_PREFIX};
use crate::model::{self, DesiredValue, KeyKind, Keys};
use crate::pools::{self, Pool};
use crate::store::{Snapshot, Store, StoreError};

mod status;
pub use status::{build_status, status, HolderStatus, IpStatus, Status};
use status::{fetch_status, ips_table, render};

const CLI_TIMEOUT: Duration = Duration::from_secs(5);

async fn connect(args: &EtcdArgs) -> anyhow::Result<(Store, Keys)> {
    let endpoints = args
        .etcd
        .clone()
        .unwrap_or_else(|| vec![DEFAULT_ETCD.to_string()]);
    let prefix = validate_prefix(args.prefix.as_deref().unwrap_or(DEFAULT_PREFIX))?;
    let auth = args.auth(&endpoints)?;
    let keys = Keys::new(&prefix);
    let connected =
        Store::connect_any(&endpoints, 0, CLI_TIMEOUT, CLI_TIMEOUT, &auth, &keys.root()).await;
    match connected {
        Ok((store, _)) => Ok((store, keys)),
        Err(StoreError::Unreachable { tried, last }) => {
            Err(anyhow::anyhow!("{}", unreachable_advice(&tried, &last)))
        }
        Err(e) => Err(e.into()),
    }
}

/// One plain line for a newcomer whose etcd is not where extip looks.
fn unreachable_advice(tried: &str, last: &str) -> String {
    let cause = last
        .strip_prefix(tried)
        .and_then(|c| c.strip_prefix(": "))
        .unwrap_or(last);
    format!(
        "cannot reach etcd at {tried} ({cause}); start etcd there, or point extip at yours \
         with --etcd URL or EXTIP_ETCD=URL"
    )
}

/// Parse `IP` or `IP/LEN` as typed by an operator.
pub fn parse_ip_arg(text: &str) -> anyhow::Result<(IpAddr, Option<u8>)> {
    let (ip_text, len) = match text.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (text, None),
    };
    let ip: IpAddr = ip_text
        .parse()
        .with_context(|| format!("`{ip_text}` is not an IP address"))?;
    let len = len
        .map(|l| {
            let max = model::max_prefix_len(ip);
            match l.parse::<u8>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => bail!("mask `/{l}` must be from 1 to {max}"),
            }
        })
        .transpose()?;
    Ok((ip, len))
}

/// `extip ip add`.
pub async fn ip_add(args: IpAddArgs) -> anyhow::Result<()> {
    let (ip, prefix_len) = parse_ip_arg(&args.ip)?;
    if let Some(class) = model::special_purpose(ip) {
        bail!("{ip} is a special-purpose address ({class}): every agent refuses it");
    }
    let replicas = args
        .replicas
        .as_deref()
        .map(|r| {
            let v = r
                .parse::<u64>()
                .map(serde_json::Value::from)
                .unwrap_or_else(|_| serde_json::Value::from(r));
            model::parse_replicas(&v).map(|_| v)
        })
        .transpose()
        .context("--replicas")?;
    let interface = args
        .interface
        .map(model::validate_interface)
        .transpose()
        .context("--interface")?;
    let value = DesiredValue {
        prefix_len: prefix_len.map(serde_json::Value::from),
        replicas,
        interface,
        ..Default::default()
    };
    let json = serde_json::to_vec(&value)?;
    let (mut store, keys) = connect(&args.etcd).await?;
    store.put(&keys.desired(ip), &json, None).await?;
    println!("{ip} desired: {}", String::from_utf8_lossy(&json));
    Ok(())
}

/// `extip ip rm`.
pub async fn ip_rm(args: IpRmArgs) -> anyhow::Result<()> {
    let (ip, _) = parse_ip_arg(&args.ip)?;
    let (mut store, keys) = connect(&args.etcd).await?;
    if !store.delete(&keys.desired(ip)).await? {
        bail!("{ip} is not a desired IP (no key {})", keys.desired(ip));
    }
    // Its holder history goes with it; a missing one is fine.
    store.delete(&keys.history(ip)).await?;
    println!("{ip} withdrawn");
    Ok(())
}

/// `extip ip ls`.
pub async fn ip_ls(args: IpLsArgs) -> anyhow::Result<()> {
    let status = fetch_status(&args.etcd, "none").await?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&status.ips)?),
        Output::Table => print!("{}", ips_table(&status)),
    }
    Ok(())
}

/// `extip node drain` (`drain`) or `extip node undrain`.
pub async fn drain(args: NodeArgs, drain: bool) -> anyhow::Result<()> {
    let node = args.node.trim();
    if node.is_empty() || node.contains('/') {
        bail!("`{node}` is not a node name");
    }
    let (mut store, keys) = connect(&args.etcd).await?;
    if drain {
        let since = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
        let value = serde_json::json!({ "since": since.to_string() });
        store
            .put(&keys.drain(node), value.to_string().as_bytes(), None)
            .await?;
        println!("{node} drained: it hands its IPs over and claims none");
    } else if store.delete(&keys.drain(node)).await? {
        println!("{node} undrained: it may claim IPs again");
    } else {
        bail!("{node} was not drained");
    }
    Ok(())
}

/// `extip pool add`: validated like the agents will, then written.
pub async fn pool_add(args: PoolAddArgs) -> anyhow::Result<()> {
    let mut value = serde_json::json!({ "cidr": args.cidr });
    if let Some(len) = args.prefix_len {
        value["prefix_len"] = len.into();
    }
    if let Some(interface) = args.interface {
        value["interface"] = interface.into();
    }
    if let Some(r) = args.replicas {
        value["replicas"] = r
            .parse::<u64>()
            .map(Into::into)
            .unwrap_or_else(|_| r.into());
    }
    if args.auto_assign {
        value["auto_assign"] = true.into();
    }
    let raw = value.to_string();
    pools::parse_pool(raw.as_bytes())?;
    let (mut store, keys) = connect(&args.etcd).await?;
    store
        .put(&keys.pool(&args.name), raw.as_bytes(), None)
        .await?;
    println!("pool {}: {raw}", args.name);
    Ok(())
}

/// `extip pool rm`.
pub async fn pool_rm(args: PoolRmArgs) -> anyhow::Result<()> {
    let (mut store, keys) = connect(&args.etcd).await?;
    if !store.delete(&keys.pool(&args.name)).await? {
        bail!("no pool {}", args.name);
    }
    println!("pool {} removed", args.name);
    Ok(())
}

/// `extip pool ls`.
pub async fn pool_ls(args: PoolLsArgs) -> anyhow::Result<()> {
    let (mut store, keys) = connect(&args.etcd).await?;
    let snapshot = store.list(&keys.root()).await?;
    let pools = read_pools(&keys, &snapshot);
    if args.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&pools)?);
        return Ok(());
    }
    let mut rows = vec![[
        "POOL".to_string(),
        "CIDR".into(),
        "MASK".into(),
        "INTERFACE".into(),
        "REPLICAS".into(),
        "AUTO-ASSIGN".into(),
    ]];
    for (name, p) in &pools {
        rows.push([
            name.clone(),
            p.cidr.to_string(),
            p.prefix_len.map_or("-".into(), |l| format!("/{l}")),
            p.interface.clone().unwrap_or_else(|| "-".into()),
            p.replicas.map_or("-".into(), |r| r.to_string()),
            if p.auto_assign { "yes" } else { "no" }.into(),
        ]);
    }
    print!("{}", render(&rows));
    Ok(())
}

/// The valid pools in a listing (invalid ones are the agents' to report).
fn read_pools(keys: &Keys, snapshot: &Snapshot) -> BTreeMap<String, Pool> {
    snapshot
        .kvs
        .iter()
        .filter_map(|kv| match keys.parse(&kv.key) {
            Ok(Some(KeyKind::Pool(name))) => {
                pools::parse_pool(&kv.value).ok().map(|(p, _)| (name, p))
            }
            _ => None,
        })
        .collect()
}

/// `extip status`.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_argument_takes_an_optional_mask() {
        assert_eq!(
            parse_ip_arg("198.51.100.10/24").unwrap(),
            ("198.51.100.10".parse().unwrap(), Some(24))
        );
        assert_eq!(parse_ip_arg("2001:db8::1").unwrap().1, None);
        assert!(parse_ip_arg("198.51.100.10/33").is_err());
        assert!(parse_ip_arg("nonsense").is_err());
    }
}
