//! Ring-buffer records as they leave the kernel, decoded without trusting
//! a byte, and the raw fields' plain names (families, protocols, TCP
//! flags, neighbour states).

use super::record::{Family, NudState, Proto};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use tracer_abi::*;

/// A decoded ring-buffer record.
// Drops are nearly every record and are consumed at once: boxing the
// large variant would allocate per drop to save stack on the rare ones.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Drop(DropEvent),
    Syn(SynEvent),
    Neigh(NeighEvent),
}

#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    Short { kind: u32, len: usize, want: usize },
    UnknownKind(u32),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Short { kind, len, want } => {
                write!(f, "event of kind {kind} has {len} bytes, expected {want}")
            }
            DecodeError::UnknownKind(k) => write!(f, "unknown event kind {k}"),
        }
    }
}

/// Reads a POD struct from the front of `buf`. Every type in tracer-abi is
/// made of integers only, so any bytes are a valid value.
fn pod<T: Copy>(buf: &[u8], kind: u32) -> Result<T, DecodeError> {
    let want = std::mem::size_of::<T>();
    if buf.len() < want {
        return Err(DecodeError::Short {
            kind,
            len: buf.len(),
            want,
        });
    }
    // SAFETY: length checked above; T is a repr(C) struct of integers and
    // byte arrays (see tracer-abi), valid for every bit pattern.
    Ok(unsafe { std::ptr::read_unaligned(buf.as_ptr() as *const T) })
}

/// A drop's stack and bytes (`KIND_DROP_EXTRA`), sent just before its
/// `DropEvent` on the same CPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extra {
    pub hdr: tracer_abi::DropExtra,
    /// The packet's bytes, from its MAC or IP header (`hdr.link`).
    pub data: Vec<u8>,
}

impl Extra {
    /// The stack's return addresses, innermost first.
    pub fn stack(&self) -> impl Iterator<Item = u64> + '_ {
        let n = (self.hdr.stack_bytes as usize / 8).min(MAX_STACK_DEPTH);
        self.hdr.stack[..n].iter().copied().filter(|a| *a != 0)
    }
}

/// Reads a `KIND_DROP_EXTRA` record: its header and the bytes after it.
pub fn decode_extra(buf: &[u8]) -> Result<Extra, DecodeError> {
    let hdr = pod::<tracer_abi::DropExtra>(buf, KIND_DROP_EXTRA)?;
    let at = std::mem::size_of::<tracer_abi::DropExtra>();
    let n = (hdr.cap_len as usize).min(buf.len() - at);
    Ok(Extra {
        hdr,
        data: buf[at..at + n].to_vec(),
    })
}

/// Reads a `KIND_HOP` record.
pub fn decode_hop(buf: &[u8]) -> Result<HopEvent, DecodeError> {
    pod::<HopEvent>(buf, KIND_HOP)
}

/// The kind of a ring-buffer record, 0 if too short.
pub fn kind_of(buf: &[u8]) -> u32 {
    match buf {
        [a, b, c, d, ..] => u32::from_ne_bytes([*a, *b, *c, *d]),
        _ => 0,
    }
}

pub fn decode(buf: &[u8]) -> Result<Event, DecodeError> {
    if buf.len() < 4 {
        return Err(DecodeError::Short {
            kind: 0,
            len: buf.len(),
            want: 4,
        });
    }
    let kind = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
    match kind {
        KIND_DROP => pod::<DropEvent>(buf, kind).map(Event::Drop),
        KIND_SYN => pod::<SynEvent>(buf, kind).map(Event::Syn),
        KIND_NEIGH => pod::<NeighEvent>(buf, kind).map(Event::Neigh),
        k => Err(DecodeError::UnknownKind(k)),
    }
}

pub fn flow_src(f: &Flow) -> Option<IpAddr> {
    addr(f.family, &f.src)
}

pub fn flow_dst(f: &Flow) -> Option<IpAddr> {
    addr(f.family, &f.dst)
}

/// The address of a family and 16 bytes (v4 in the first four).
pub fn addr(family: u8, b: &[u8; 16]) -> Option<IpAddr> {
    match family {
        FAMILY_V4 => Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
        FAMILY_V6 => Some(IpAddr::V6(Ipv6Addr::from(*b))),
        _ => None,
    }
}

/// The family of a flow's `family` byte; None without an IP header.
pub fn family_of(family: u8) -> Option<Family> {
    match family {
        FAMILY_V4 => Some(Family::Ipv4),
        FAMILY_V6 => Some(Family::Ipv6),
        _ => None,
    }
}

pub fn proto_of(p: u8) -> Proto {
    match p {
        IPPROTO_TCP => Proto::Tcp,
        IPPROTO_UDP => Proto::Udp,
        IPPROTO_ICMP => Proto::Icmp,
        IPPROTO_ICMPV6 => Proto::Icmp6,
        IPPROTO_SCTP => Proto::Sctp,
        2 => Proto::Igmp,
        n => Proto::Other(n),
    }
}

/// TCP flags as tcpdump prints them: `S`, `S.`, `F.`, `R`, `P.`.
pub fn tcp_flags(f: u8) -> String {
    let mut s = String::new();
    for (bit, c) in [
        (0x01, 'F'),
        (0x02, 'S'),
        (0x04, 'R'),
        (0x08, 'P'),
        (0x20, 'U'),
    ] {
        if f & bit != 0 {
            s.push(c);
        }
    }
    if f & 0x10 != 0 {
        s.push('.');
    }
    if s.is_empty() {
        s.push_str("none");
    }
    s
}

pub fn nud_state_of(state: u8) -> NudState {
    match state {
        NUD_INCOMPLETE => NudState::Incomplete,
        NUD_FAILED => NudState::Failed,
        _ => NudState::Other,
    }
}

/// A task name as the kernel stores it (NUL-padded).
pub fn comm(b: &[u8; 16]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: test-only view of a POD value as bytes.
        unsafe { std::slice::from_raw_parts(v as *const T as *const u8, std::mem::size_of::<T>()) }
            .to_vec()
    }

    #[test]
    fn decodes_a_drop_round_trip() {
        let mut e = DropEvent {
            kind: KIND_DROP,
            reason: 104,
            len: 60,
            ..Default::default()
        };
        e.flow.family = FAMILY_V4;
        e.flow.src[..4].copy_from_slice(&[172, 17, 5, 5]);
        let got = decode(&bytes_of(&e)).unwrap();
        assert_eq!(got, Event::Drop(e));
        assert_eq!(
            flow_src(&e.flow),
            Some(IpAddr::V4(Ipv4Addr::new(172, 17, 5, 5)))
        );
    }

    #[test]
    fn short_and_unknown_records_are_errors_not_panics() {
        let e = DropEvent {
            kind: KIND_DROP,
            ..Default::default()
        };
        let b = bytes_of(&e);
        assert!(matches!(
            decode(&b[..b.len() - 1]),
            Err(DecodeError::Short { .. })
        ));
        assert_eq!(decode(&[9, 0, 0, 0, 1]), Err(DecodeError::UnknownKind(9)));
        assert!(decode(&[]).is_err());
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics() {
        // A cheap deterministic fuzz: xorshift bytes of every length, with
        // valid kinds forced in half of them.
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for len in 0..600usize {
            let mut buf = vec![0u8; len];
            for b in buf.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            if len >= 4 && len % 2 == 0 {
                buf[..4].copy_from_slice(&((len as u32 % 3) + 1).to_ne_bytes());
            }
            let _ = decode(&buf);
        }
    }

    #[test]
    fn tcp_flags_read_like_tcpdump() {
        assert_eq!(tcp_flags(0x02), "S");
        assert_eq!(tcp_flags(0x12), "S.");
        assert_eq!(tcp_flags(0x18), "P.");
        assert_eq!(tcp_flags(0x04), "R");
        assert_eq!(tcp_flags(0), "none");
    }
}
