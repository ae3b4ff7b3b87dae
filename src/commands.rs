//! `extip ip …` and `extip status`: thin clients of the etcd contract.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Serialize;

use crate::cli::{
    EtcdArgs, IpAddArgs, IpLsArgs, IpRmArgs, NodeArgs, Output, PoolAddArgs, PoolLsArgs, PoolRmArgs,
    StatusArgs,
};
use crate::config::{validate_prefix, DEFAULT_ETCD, DEFAULT_PREFIX};
use crate::model::{self, DesiredValue, KeyKind, Keys};
use crate::pools::{self, Pool};
use crate::store::{Snapshot, Store};

const CLI_TIMEOUT: Duration = Duration::from_secs(5);

async fn connect(args: &EtcdArgs) -> anyhow::Result<(Store, Keys)> {
    let endpoints = args
        .etcd
        .clone()
        .unwrap_or_else(|| vec![DEFAULT_ETCD.to_string()]);
    let prefix = validate_prefix(args.prefix.as_deref().unwrap_or(DEFAULT_PREFIX))?;
    let auth = args.auth(&endpoints)?;
    let keys = Keys::new(&prefix);
    let (store, _) =
        Store::connect_any(&endpoints, 0, CLI_TIMEOUT, CLI_TIMEOUT, &auth, &keys.root()).await?;
    Ok((store, keys))
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
    println!("{ip} withdrawn");
    Ok(())
}

/// `extip ip ls`.
pub async fn ip_ls(args: IpLsArgs) -> anyhow::Result<()> {
    let status = fetch_status(&args.etcd).await?;
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
pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let status = fetch_status(&args.etcd).await?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&status)?),
        Output::Table => print!("{}\n{}", ips_table(&status), nodes_table(&status)),
    }
    Ok(())
}

/// Everything `extip status` shows; its JSON form is stable for scripts.
#[derive(Debug, Default, Serialize)]
pub struct Status {
    /// Desired IPs, in address order.
    pub ips: Vec<IpStatus>,
    /// Live nodes, in name order.
    pub nodes: Vec<model::NodeValue>,
}

/// One desired IP and who holds it.
#[derive(Debug, Default, Serialize)]
pub struct IpStatus {
    /// The address.
    pub ip: String,
    /// Mask, when set.
    pub prefix_len: Option<u8>,
    /// Replicas as text (`1`, `3`, `all`).
    pub replicas: String,
    /// Interface override, when set.
    pub interface: Option<String>,
    /// The pool the IP belongs to, if any.
    pub pool: Option<String>,
    /// Holders by slot.
    pub holders: Vec<HolderStatus>,
    /// Why the agents skip this key, when they do.
    pub error: Option<String>,
    /// A foreign host on the segment answers for this IP: agents stay away from it.
    pub conflict: Option<model::ConflictValue>,
}

/// One claim slot.
#[derive(Debug, Serialize)]
pub struct HolderStatus {
    /// Slot number.
    pub slot: u32,
    /// Node, or `?` when the claim value is unreadable.
    pub node: String,
    /// When it was claimed.
    pub since: String,
}

async fn fetch_status(args: &EtcdArgs) -> anyhow::Result<Status> {
    let (mut store, keys) = connect(args).await?;
    let snapshot = store.list(&keys.root()).await?;
    Ok(build_status(&keys, &snapshot))
}

/// Assemble the status from one consistent list of the prefix.
pub fn build_status(keys: &Keys, snapshot: &Snapshot) -> Status {
    let mut ips: BTreeMap<IpAddr, IpStatus> = BTreeMap::new();
    let mut claims: BTreeMap<IpAddr, Vec<HolderStatus>> = BTreeMap::new();
    let mut status = Status::default();
    let pools = read_pools(keys, snapshot);
    let mut drains = std::collections::BTreeSet::new();
    let mut conflicts = BTreeMap::new();
    for kv in &snapshot.kvs {
        match keys.parse(&kv.key) {
            Ok(Some(KeyKind::Desired(ip))) => {
                ips.insert(ip, ip_status(ip, &kv.value, &pools));
            }
            Ok(Some(KeyKind::Claim(ip, slot))) => {
                let claim = model::parse_claim(&kv.value).ok();
                claims.entry(ip).or_default().push(HolderStatus {
                    slot,
                    node: claim.as_ref().map_or("?".into(), |c| c.node.clone()),
                    since: claim.map_or(String::new(), |c| c.since),
                });
            }
            Ok(Some(KeyKind::Node(_))) => {
                if let Ok(node) = model::parse_node(&kv.value) {
                    status.nodes.push(node);
                }
            }
            Ok(Some(KeyKind::Drain(name))) => {
                drains.insert(name);
            }
            Ok(Some(KeyKind::Conflict(ip))) => {
                if let Ok(conflict) = serde_json::from_slice(&kv.value) {
                    conflicts.insert(ip, conflict);
                }
            }
            _ => {}
        }
    }
    for (ip, mut entry) in ips {
        entry.holders = claims.remove(&ip).unwrap_or_default();
        entry.conflict = conflicts.remove(&ip);
        status.ips.push(entry);
    }
    for node in &mut status.nodes {
        node.draining |= drains.contains(&node.node);
    }
    status
}

fn ip_status(ip: IpAddr, raw: &[u8], pools: &BTreeMap<String, Pool>) -> IpStatus {
    match model::parse_desired(ip, raw) {
        Ok(parsed) => {
            let desired = pools::resolve(ip, &parsed, pools);
            IpStatus {
                ip: ip.to_string(),
                prefix_len: desired.prefix_len,
                replicas: desired.replicas.to_string(),
                interface: desired.interface,
                pool: desired.pool,
                ..Default::default()
            }
        }
        Err(e) => IpStatus {
            ip: ip.to_string(),
            error: Some(e.to_string()),
            ..Default::default()
        },
    }
}

fn ips_table(status: &Status) -> String {
    let mut rows = vec![[
        "IP".to_string(),
        "MASK".into(),
        "REPLICAS".into(),
        "HOLDER".into(),
        "SINCE".into(),
    ]];
    for ip in &status.ips {
        let mask = ip.prefix_len.map_or("-".into(), |l| format!("/{l}"));
        let holder = match (&ip.error, ip.holders.is_empty(), &ip.conflict) {
            (Some(e), _, _) => format!("(skipped: {e})"),
            (None, true, Some(c)) => format!(
                "(none: conflict, {} answers for it, seen by {} at {})",
                c.mac, c.node, c.since
            ),
            (None, true, None) => "(none)".into(),
            (None, false, _) => ip
                .holders
                .iter()
                .map(|h| h.node.clone())
                .collect::<Vec<_>>()
                .join(","),
        };
        let since = ip
            .holders
            .first()
            .map_or(String::new(), |h| h.since.clone());
        rows.push([ip.ip.clone(), mask, ip.replicas.clone(), holder, since]);
    }
    render(&rows)
}

fn nodes_table(status: &Status) -> String {
    let mut rows = vec![[
        "NODE".to_string(),
        "INTERFACES".into(),
        "DRAINING".into(),
        "VERSION".into(),
        "STARTED".into(),
    ]];
    for n in &status.nodes {
        let interfaces = if n.interfaces.is_empty() {
            "(down)".to_string()
        } else {
            n.interfaces.join(",")
        };
        rows.push([
            n.node.clone(),
            interfaces,
            if n.draining { "yes" } else { "no" }.into(),
            n.version.clone(),
            n.started.clone(),
        ]);
    }
    render(&rows)
}

fn render<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RawKv;

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

    #[test]
    fn status_pairs_ips_with_holders_and_shows_bad_keys() {
        let kv = |k: &str, v: &str| RawKv {
            key: k.into(),
            value: v.into(),
            lease: 0,
            mod_revision: 1,
        };
        let snapshot = Snapshot {
            revision: 1,
            kvs: vec![
                kv("/extip/ips/198.51.100.10", "{}"),
                kv("/extip/ips/198.51.100.11", "not json"),
                kv(
                    "/extip/claims/198.51.100.10/0",
                    r#"{"node":"h2","since":"2026-11-26T10:00:00Z"}"#,
                ),
                kv("/extip/nodes/h2", r#"{"node":"h2","interfaces":["lo"]}"#),
            ],
        };
        let status = build_status(&Keys::new("/extip"), &snapshot);
        assert_eq!(status.ips.len(), 2);
        assert_eq!(status.ips[0].holders[0].node, "h2");
        assert!(status.ips[1].error.is_some());
        let table = ips_table(&status);
        assert!(
            table.contains("198.51.100.10  -     1         h2"),
            "{table}"
        );
        assert!(
            table.contains("(skipped: value is not valid JSON"),
            "{table}"
        );
    }
}
