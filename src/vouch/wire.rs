//! Heartbeat and acknowledgement packets: pure encoding, decoding and the keyed MAC.
//!
//! One UDP datagram each, big-endian:
//! `"XTV1" | kind (1 heartbeat, 2 ack) | from (len u8 + name) | to (len u8 + name) |
//! lease i64 | seq u64 | window µs u32 | HMAC-SHA256 over all before (32 bytes)`.
//! A heartbeat names the holder's lease, its sequence number and the window it asks
//! for; an acknowledgement names the same lease and sequence and the window granted.

use std::time::Duration;

use ring::hmac;
use thiserror::Error;

const MAGIC: &[u8; 4] = b"XTV1";
const MAC_LEN: usize = 32;
/// The largest packet: two names of at most 253 bytes.
pub const MAX_PACKET: usize = 4 + 1 + 2 * (1 + 253) + 8 + 8 + 4 + MAC_LEN;
/// The shortest secret accepted.
pub const MIN_SECRET: usize = 16;

/// Heartbeat or acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Holder to witness.
    Heartbeat,
    /// Witness to holder.
    Ack,
}

/// One packet's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Heartbeat or acknowledgement.
    pub kind: Kind,
    /// Sender's node name.
    pub from: String,
    /// Receiver's node name.
    pub to: String,
    /// The holder's lease (of the sender for a heartbeat, of the receiver for an ack).
    pub lease: i64,
    /// The heartbeat's sequence number.
    pub seq: u64,
    /// Asked for (heartbeat) or granted (acknowledgement).
    pub window: Duration,
}

/// Why a datagram was dropped before it reached the state machines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum WireError {
    /// Too short, wrong magic or kind, bad lengths.
    #[error("malformed")]
    Malformed,
    /// The MAC does not match: another key, or a forgery.
    #[error("bad MAC")]
    BadMac,
}

/// The cluster secret as a MAC key.
#[derive(Clone)]
pub struct Secret(hmac::Key);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// A key from secret bytes ([`MIN_SECRET`] at least, checked by the caller).
    pub fn new(bytes: &[u8]) -> Self {
        Secret(hmac::Key::new(hmac::HMAC_SHA256, bytes))
    }
}

/// Encode and sign `packet`.
pub fn encode(packet: &Packet, secret: &Secret) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + packet.from.len() + packet.to.len());
    out.extend_from_slice(MAGIC);
    out.push(match packet.kind {
        Kind::Heartbeat => 1,
        Kind::Ack => 2,
    });
    for name in [&packet.from, &packet.to] {
        let bytes = &name.as_bytes()[..name.len().min(253)];
        out.push(bytes.len() as u8);
        out.extend_from_slice(bytes);
    }
    out.extend_from_slice(&packet.lease.to_be_bytes());
    out.extend_from_slice(&packet.seq.to_be_bytes());
    let micros = u32::try_from(packet.window.as_micros()).unwrap_or(u32::MAX);
    out.extend_from_slice(&micros.to_be_bytes());
    let tag = hmac::sign(&secret.0, &out);
    out.extend_from_slice(tag.as_ref());
    out
}

/// Check the MAC and decode.
pub fn decode(datagram: &[u8], secret: &Secret) -> Result<Packet, WireError> {
    if datagram.len() < MAGIC.len() + 1 + 2 + 20 + MAC_LEN || &datagram[..4] != MAGIC {
        return Err(WireError::Malformed);
    }
    let (body, tag) = datagram.split_at(datagram.len() - MAC_LEN);
    hmac::verify(&secret.0, body, tag).map_err(|_| WireError::BadMac)?;
    let mut rest = &body[4..];
    let kind = match take(&mut rest, 1)?[0] {
        1 => Kind::Heartbeat,
        2 => Kind::Ack,
        _ => return Err(WireError::Malformed),
    };
    let from = name(&mut rest)?;
    let to = name(&mut rest)?;
    let lease = i64::from_be_bytes(take(&mut rest, 8)?.try_into().expect("8 bytes"));
    let seq = u64::from_be_bytes(take(&mut rest, 8)?.try_into().expect("8 bytes"));
    let micros = u32::from_be_bytes(take(&mut rest, 4)?.try_into().expect("4 bytes"));
    if !rest.is_empty() {
        return Err(WireError::Malformed);
    }
    Ok(Packet {
        kind,
        from,
        to,
        lease,
        seq,
        window: Duration::from_micros(u64::from(micros)),
    })
}

fn take<'a>(rest: &mut &'a [u8], n: usize) -> Result<&'a [u8], WireError> {
    if rest.len() < n {
        return Err(WireError::Malformed);
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Ok(head)
}

fn name(rest: &mut &[u8]) -> Result<String, WireError> {
    let len = take(rest, 1)?[0] as usize;
    let bytes = take(rest, len)?;
    String::from_utf8(bytes.to_vec()).map_err(|_| WireError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heartbeat() -> Packet {
        Packet {
            kind: Kind::Heartbeat,
            from: "h1".into(),
            to: "h2".into(),
            lease: 0x694d_9a4f_3c1a_2b05,
            seq: 1_733_000_000_000_001,
            window: Duration::from_millis(200),
        }
    }

    #[test]
    fn packets_round_trip_and_a_wrong_key_or_a_flipped_bit_is_refused() {
        let key = Secret::new(b"0123456789abcdef0123456789abcdef");
        let bytes = encode(&heartbeat(), &key);
        assert!(bytes.len() <= MAX_PACKET);
        assert_eq!(decode(&bytes, &key), Ok(heartbeat()));
        let other = Secret::new(b"another secret, also long enough");
        assert_eq!(decode(&bytes, &other), Err(WireError::BadMac));
        for i in 4..bytes.len() {
            let mut forged = bytes.clone();
            forged[i] ^= 1;
            assert!(decode(&forged, &key).is_err(), "bit flipped at {i}");
        }
        assert_eq!(decode(&bytes[..10], &key), Err(WireError::Malformed));
        let mut ack = heartbeat();
        ack.kind = Kind::Ack;
        assert_eq!(decode(&encode(&ack, &key), &key), Ok(ack));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let key = Secret::new(b"0123456789abcdef");
        let mut x: u64 = 1;
        for len in 0..200 {
            let junk: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                    (x >> 33) as u8
                })
                .collect();
            assert!(decode(&junk, &key).is_err());
        }
    }
}
