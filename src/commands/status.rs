//! `extip status`: every desired IP with its holders, conflicts and recent holders, and
//! every live node with what is left of its lease.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;

use super::{connect, read_pools};
use crate::cli::{EtcdArgs, Output, StatusArgs};
use crate::model::{self, KeyKind, Keys};
use crate::pools::{self, Pool};
use crate::store::Snapshot;

pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let Some(every) = args.watch else {
        let status = fetch_status(&args.etcd, &args.agent).await?;
        match args.output {
            Output::Json => println!("{}", serde_json::to_string_pretty(&status)?),
            Output::Table => print!("{}\n{}", ips_table(&status), nodes_table(&status)),
        }
        return Ok(());
    };
    // --watch: redraw in place (tables) or one JSON document a line, until interrupted.
    loop {
        let shown = match fetch_status(&args.etcd, &args.agent).await {
            Ok(status) if args.output == Output::Json => serde_json::to_string(&status)? + "\n",
            Ok(status) => format!("{}\n{}", ips_table(&status), nodes_table(&status)),
            Err(e) => format!("extip: {e:#}\n"),
        };
        if args.output == Output::Table {
            let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
            print!(
                "\x1b[H\x1b[2J{now}  (every {}; Ctrl-C stops)\n\n",
                humantime::format_duration(every)
            );
        }
        print!("{shown}");
        std::io::Write::flush(&mut std::io::stdout())?;
        tokio::time::sleep(every).await;
    }
}

/// Everything `extip status` shows; its JSON form is stable for scripts.
#[derive(Debug, Default, Serialize)]
pub struct Status {
    /// Desired IPs, in address order.
    pub ips: Vec<IpStatus>,
    /// Live nodes, in name order.
    pub nodes: Vec<NodeStatus>,
}

/// A live node: its record and what is left of its lease.
#[derive(Debug, Serialize)]
pub struct NodeStatus {
    /// The node's record, as it published it.
    #[serde(flatten)]
    pub record: model::NodeValue,
    /// Seconds until etcd expires the node's lease unless it is renewed.
    pub lease_ttl_seconds: Option<i64>,
    /// The lease the record hangs on.
    #[serde(skip)]
    pub lease: i64,
    /// Milliseconds since the local agent last heard this node's heartbeat (`None`: it
    /// does not hear it, or was not asked).
    pub heard_ms: Option<u64>,
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
    /// Who asked for it (`namespace/name` of Services for extip-sync's keys); empty: nobody said.
    pub source: Vec<String>,
    /// Holders by slot.
    pub holders: Vec<HolderStatus>,
    /// Why the agents skip this key, when they do.
    pub error: Option<String>,
    /// Why every agent refuses this IP (special-purpose, a member's own address), if so.
    pub refused: Option<String>,
    /// A foreign host on the segment answers for this IP: agents stay away from it.
    pub conflict: Option<model::ConflictValue>,
    /// The last holders, oldest first (at most `model::MAX_HISTORY`).
    pub history: Vec<model::HistoryEntry>,
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
    /// The lease the claim hangs on, in hex as etcdctl shows it; `None`: no lease, a
    /// forged claim that agents delete.
    pub lease: Option<String>,
}

pub(super) async fn fetch_status(args: &EtcdArgs, agent: &str) -> anyhow::Result<Status> {
    let (mut store, keys) = connect(args).await?;
    let snapshot = store.list(&keys.root()).await?;
    let mut status = build_status(&keys, &snapshot);
    let peers = agent_peers(agent).await;
    for node in &mut status.nodes {
        if node.lease != 0 {
            node.lease_ttl_seconds = store.lease_ttl_left(node.lease).await?;
        }
        node.heard_ms = peers
            .as_ref()
            .and_then(|p| p.heard_ms.get(&node.record.node).copied());
    }
    Ok(status)
}

/// Ask the local agent at `addr` who it hears (`None`: `none`, or no answer within a
/// second: the column then shows `-`, and status still works without an agent).
async fn agent_peers(addr: &str) -> Option<model::PeersView> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if addr == "none" {
        return None;
    }
    let ask = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET /peers HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut answer = Vec::new();
        stream.take(1 << 20).read_to_end(&mut answer).await.ok()?;
        let text = String::from_utf8(answer).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        let ok = head.split(' ').nth(1) == Some("200");
        ok.then(|| serde_json::from_str(body).ok())?
    };
    tokio::time::timeout(std::time::Duration::from_secs(1), ask)
        .await
        .ok()
        .flatten()
}

/// Assemble the status from one consistent list of the prefix.
pub fn build_status(keys: &Keys, snapshot: &Snapshot) -> Status {
    let mut ips: BTreeMap<IpAddr, IpStatus> = BTreeMap::new();
    let mut claims: BTreeMap<IpAddr, Vec<HolderStatus>> = BTreeMap::new();
    let mut status = Status::default();
    let pools = read_pools(keys, snapshot);
    let mut drains = std::collections::BTreeSet::new();
    let mut conflicts = BTreeMap::new();
    let mut history = BTreeMap::new();
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
                    lease: (kv.lease != 0).then(|| format!("{:x}", kv.lease)),
                });
            }
            Ok(Some(KeyKind::Node(_))) => {
                if let Ok(record) = model::parse_node(&kv.value) {
                    status.nodes.push(NodeStatus {
                        record,
                        lease_ttl_seconds: None,
                        lease: kv.lease,
                        heard_ms: None,
                    });
                }
            }
            Ok(Some(KeyKind::Drain(name))) => {
                drains.insert(name);
            }
            Ok(Some(KeyKind::History(ip))) => {
                if let Ok(entries) = serde_json::from_slice(&kv.value) {
                    history.insert(ip, entries);
                }
            }
            Ok(Some(KeyKind::Conflict(ip))) => {
                if let Ok(conflict) = serde_json::from_slice(&kv.value) {
                    conflicts.insert(ip, conflict);
                }
            }
            _ => {}
        }
    }
    let members = model::MemberAddresses::of(status.nodes.iter().map(|n| &n.record));
    for (ip, mut entry) in ips {
        if entry.error.is_none() {
            entry.refused = members.refusal(ip).map(|r| r.to_string());
        }
        entry.holders = claims.remove(&ip).unwrap_or_default();
        entry.conflict = conflicts.remove(&ip);
        entry.history = history.remove(&ip).unwrap_or_default();
        status.ips.push(entry);
    }
    for node in &mut status.nodes {
        node.record.draining |= drains.contains(&node.record.node);
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
                source: match desired.source {
                    Some(model::Source::One(one)) => vec![one],
                    Some(model::Source::Many(many)) => many,
                    None => Vec::new(),
                },
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

pub(super) fn ips_table(status: &Status) -> String {
    let mut rows = vec![[
        "IP".to_string(),
        "MASK".into(),
        "REPLICAS".into(),
        "HOLDER".into(),
        "SINCE".into(),
        "HISTORY".into(),
        "SOURCE".into(),
    ]];
    for ip in &status.ips {
        let mask = ip.prefix_len.map_or("-".into(), |l| format!("/{l}"));
        let holder = match (&ip.error, ip.holders.is_empty(), &ip.conflict) {
            (Some(e), _, _) => format!("(skipped: {e})"),
            _ if ip.refused.is_some() && ip.holders.is_empty() => {
                format!("(refused: {})", ip.refused.as_deref().unwrap_or_default())
            }
            (None, true, Some(c)) => format!(
                "(none: conflict, {} answers for it, seen by {} at {})",
                c.mac, c.node, c.since
            ),
            (None, true, None) => "(none)".into(),
            (None, false, _) => ip
                .holders
                .iter()
                .map(|h| match h.lease {
                    Some(_) => h.node.clone(),
                    None => format!("{} (no lease: forged, being removed)", h.node),
                })
                .collect::<Vec<_>>()
                .join(","),
        };
        let since = ip
            .holders
            .first()
            .map_or(String::new(), |h| h.since.clone());
        let history: Vec<&str> = ip.history.iter().map(|h| h.node.as_str()).collect();
        let history = history.join(" > ");
        rows.push([
            ip.ip.clone(),
            mask,
            ip.replicas.clone(),
            holder,
            since,
            history,
            if ip.source.is_empty() {
                "-".into()
            } else {
                ip.source.join(",")
            },
        ]);
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
        "LEASE LEFT".into(),
        "MODE".into(),
        "HEARD".into(),
    ]];
    for node in &status.nodes {
        let n = &node.record;
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
            node.lease_ttl_seconds
                .map_or("-".into(), |s| format!("{s}s")),
            vouch_mode_text(n.vouch.as_ref()).into(),
            node.heard_ms.map_or("-".into(), |ms| format!("{ms}ms ago")),
        ]);
    }
    render(&rows)
}

/// How a node serves its exclusive IPs, as the MODE column says it.
fn vouch_mode_text(record: Option<&model::VouchRecord>) -> &'static str {
    match record {
        None => "lease only (peers off)",
        Some(r) if r.revocable() => "vouched",
        Some(_) => "lease only",
    }
}

pub(super) fn render<const N: usize>(rows: &[[String; N]]) -> String {
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
    fn status_pairs_ips_with_holders_and_shows_bad_keys() {
        let kv = |k: &str, v: &str| RawKv {
            key: k.into(),
            value: v.into(),
            lease: 0,
            mod_revision: 1,
            create_revision: 1,
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

    #[test]
    fn status_shows_refusals_and_claims_without_a_lease() {
        let kv = |k: &str, v: &str, lease: i64| RawKv {
            key: k.into(),
            value: v.into(),
            lease,
            mod_revision: 1,
            create_revision: 1,
        };
        let snapshot = Snapshot {
            revision: 1,
            kvs: vec![
                kv("/extip/ips/127.0.0.5", "{}", 0),
                kv("/extip/ips/198.51.100.60", "{}", 0),
                kv(
                    "/extip/claims/198.51.100.60/0",
                    r#"{"node":"h1","since":""}"#,
                    0,
                ),
            ],
        };
        let status = build_status(&Keys::new("/extip"), &snapshot);
        assert_eq!(
            status.ips[0].refused.as_deref(),
            Some("special-purpose address (loopback)")
        );
        assert_eq!(status.ips[1].holders[0].lease, None);
        let table = ips_table(&status);
        assert!(
            table.contains("(refused: special-purpose address (loopback))"),
            "{table}"
        );
        assert!(
            table.contains("h1 (no lease: forged, being removed)"),
            "{table}"
        );
    }
}
