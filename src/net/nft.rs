//! nf_tables netlink messages for set elements, encoded by hand: the fence's hot path
//! (arm at every lease renewal, one element per held IP) must not spawn `nft`. Only the
//! few message kinds the fence needs are here; tables, sets and rules are made by `nft`.

use std::net::IpAddr;
use std::time::Duration;

/// `NETLINK_NETFILTER`.
pub const NETLINK_NETFILTER: i32 = 12;
/// nf_tables protocol families.
pub const NFPROTO_INET: u8 = 1;
/// The ARP family.
pub const NFPROTO_ARP: u8 = 3;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;

const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_TIMEOUT: u16 = 4;
const NFTA_DATA_VALUE: u16 = 1;

/// One element operation on a named set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElementOp {
    /// Add these keys (existing ones are left as they are), each with the timeout if any.
    Add {
        family: u8,
        table: &'static str,
        set: &'static str,
        keys: Vec<Vec<u8>>,
        timeout: Option<Duration>,
    },
    /// Delete these keys; a key that is not there fails the whole batch.
    Delete {
        family: u8,
        table: &'static str,
        set: &'static str,
        keys: Vec<Vec<u8>>,
    },
    /// Delete every element of the set.
    Flush {
        family: u8,
        table: &'static str,
        set: &'static str,
    },
}

/// The set key of an IP: its bytes in network order.
pub fn ip_key(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(ip) => ip.octets().to_vec(),
        IpAddr::V6(ip) => ip.octets().to_vec(),
    }
}

/// The set key of an ether type (`meta protocol`), in network order.
pub fn ether_type_key(ether_type: u16) -> Vec<u8> {
    ether_type.to_be_bytes().to_vec()
}

/// A batch: every operation applies, or none does (the kernel commits it atomically).
/// Each message asks for an acknowledgement; sequence numbers start at `seq`.
pub fn batch(ops: &[ElementOp], seq: u32) -> Vec<u8> {
    let mut out = Vec::new();
    message(
        &mut out,
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        seq,
        0,
        NFNL_SUBSYS_NFTABLES,
        |_| {},
    );
    for (i, op) in ops.iter().enumerate() {
        let seq = seq.wrapping_add(1 + i as u32);
        encode_op(&mut out, op, seq);
    }
    let end = seq.wrapping_add(1 + ops.len() as u32);
    message(
        &mut out,
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        end,
        0,
        NFNL_SUBSYS_NFTABLES,
        |_| {},
    );
    out
}

fn encode_op(out: &mut Vec<u8>, op: &ElementOp, seq: u32) {
    let kind = |t: u16| (NFNL_SUBSYS_NFTABLES << 8) | t;
    match op {
        ElementOp::Add {
            family,
            table,
            set,
            keys,
            timeout,
        } => {
            let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE;
            message(out, kind(NFT_MSG_NEWSETELEM), flags, seq, *family, 0, |b| {
                names(b, table, set);
                elements(b, keys, *timeout);
            });
        }
        ElementOp::Delete {
            family,
            table,
            set,
            keys,
        } => {
            let flags = NLM_F_REQUEST | NLM_F_ACK;
            message(out, kind(NFT_MSG_DELSETELEM), flags, seq, *family, 0, |b| {
                names(b, table, set);
                elements(b, keys, None);
            });
        }
        ElementOp::Flush { family, table, set } => {
            let flags = NLM_F_REQUEST | NLM_F_ACK;
            message(out, kind(NFT_MSG_DELSETELEM), flags, seq, *family, 0, |b| {
                names(b, table, set);
            });
        }
    }
}

fn names(b: &mut Vec<u8>, table: &str, set: &str) {
    attr(b, NFTA_SET_ELEM_LIST_TABLE, &nul_terminated(table));
    attr(b, NFTA_SET_ELEM_LIST_SET, &nul_terminated(set));
}

fn elements(b: &mut Vec<u8>, keys: &[Vec<u8>], timeout: Option<Duration>) {
    nested(b, NFTA_SET_ELEM_LIST_ELEMENTS, |list| {
        for key in keys {
            nested(list, NFTA_LIST_ELEM, |elem| {
                nested(elem, NFTA_SET_ELEM_KEY, |k| attr(k, NFTA_DATA_VALUE, key));
                if let Some(timeout) = timeout {
                    // Milliseconds, big-endian; at least 1 (0 would mean "never").
                    let ms = u64::try_from(timeout.as_millis())
                        .unwrap_or(u64::MAX)
                        .max(1);
                    attr(elem, NFTA_SET_ELEM_TIMEOUT, &ms.to_be_bytes());
                }
            });
        }
    });
}

fn nul_terminated(text: &str) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    bytes.push(0);
    bytes
}

/// A netlink message: header, `nfgenmsg` (family, version 0, resource id), attributes.
fn message(
    out: &mut Vec<u8>,
    kind: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    body: impl FnOnce(&mut Vec<u8>),
) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]); // length, filled in below
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
    out.extend_from_slice(&[family, 0]);
    out.extend_from_slice(&res_id.to_be_bytes());
    body(out);
    let len = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

fn attr(b: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    b.extend_from_slice(&(len as u16).to_ne_bytes());
    b.extend_from_slice(&kind.to_ne_bytes());
    b.extend_from_slice(value);
    pad(b);
}

fn nested(b: &mut Vec<u8>, kind: u16, inner: impl FnOnce(&mut Vec<u8>)) {
    let start = b.len();
    b.extend_from_slice(&[0; 2]);
    b.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    inner(b);
    let len = (b.len() - start) as u16;
    b[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    pad(b);
}

fn pad(b: &mut Vec<u8>) {
    while b.len() % 4 != 0 {
        b.push(0);
    }
}

/// The outcome of one acknowledgement: the sequence number it answers and the error
/// (0: success, else a negative errno), or `None` for a message that is not an ack.
pub fn parse_ack(message: &[u8]) -> Option<(u32, i32)> {
    const NLMSG_ERROR: u16 = 2;
    if message.len() < 20 {
        return None;
    }
    let kind = u16::from_ne_bytes([message[4], message[5]]);
    if kind != NLMSG_ERROR {
        return None;
    }
    let error = i32::from_ne_bytes(message[16..20].try_into().ok()?);
    // The original header follows the error code; its sequence number says what failed.
    let seq = message
        .get(28..32)
        .map(|s| u32::from_ne_bytes(s.try_into().unwrap_or_default()))?;
    Some((seq, error))
}

/// Split a receive buffer into netlink messages.
pub fn messages(buf: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 16 <= buf.len() {
        let len = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap_or_default()) as usize;
        if len < 16 || at + len > buf.len() {
            break;
        }
        out.push(&buf[at..at + len]);
        at += (len + 3) & !3;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_add_with_timeout_is_a_framed_batch_with_the_key_and_milliseconds() {
        let op = ElementOp::Add {
            family: NFPROTO_INET,
            table: "extip",
            set: "alive",
            keys: vec![ether_type_key(0x0800)],
            timeout: Some(Duration::from_millis(1500)),
        };
        let bytes = batch(&[op], 7);
        let parts = messages(&bytes);
        assert_eq!(parts.len(), 3, "begin, the op, end");
        let op = parts[1];
        assert_eq!(u16::from_ne_bytes([op[4], op[5]]), (10 << 8) | 12);
        assert_eq!(u32::from_ne_bytes(op[8..12].try_into().unwrap()), 8);
        assert_eq!(op[16], NFPROTO_INET);
        let find = |needle: &[u8]| op.windows(needle.len()).any(|w| w == needle);
        assert!(find(b"extip\0") && find(b"alive\0"));
        assert!(find(&[0x08, 0x00]), "the key");
        assert!(find(&1500u64.to_be_bytes()), "the timeout in ms");
        assert!(bytes.len() % 4 == 0 && parts.iter().all(|p| p.len() % 4 == 0));
    }

    #[test]
    fn acks_are_read_with_their_sequence() {
        let mut ack = vec![0u8; 36];
        ack[0..4].copy_from_slice(&36u32.to_ne_bytes());
        ack[4..6].copy_from_slice(&2u16.to_ne_bytes());
        ack[16..20].copy_from_slice(&(-2i32).to_ne_bytes());
        ack[28..32].copy_from_slice(&9u32.to_ne_bytes());
        assert_eq!(parse_ack(&ack), Some((9, -2)));
        assert_eq!(messages(&ack).len(), 1);
    }
}
