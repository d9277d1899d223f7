//! The words of the grammar: protocol, direction and kind qualifiers, the
//! keywords, and the ops they compile to.

use super::lex::{Tok, Token};
use tracer_abi::filter::{FilterOp, OP_FAMILY, OP_PROTO};
use tracer_abi::{
    FAMILY_V4, FAMILY_V6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP,
};

/// A protocol word: alone it is a primitive, before another primitive it
/// qualifies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Proto {
    Tcp,
    Udp,
    Sctp,
    Icmp,
    Icmp6,
    Ip,
    Ip6,
}

impl Proto {
    pub(super) fn from_word(w: &str) -> Option<Proto> {
        Some(match w {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            "sctp" => Proto::Sctp,
            "icmp" => Proto::Icmp,
            "icmp6" => Proto::Icmp6,
            "ip" => Proto::Ip,
            "ip6" => Proto::Ip6,
            _ => return None,
        })
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
            Proto::Icmp => "icmp",
            Proto::Icmp6 => "icmp6",
            Proto::Ip => "ip",
            Proto::Ip6 => "ip6",
        }
    }

    /// The address family `ip` / `ip6` stand for.
    pub(super) fn family(self) -> Option<u8> {
        match self {
            Proto::Ip => Some(FAMILY_V4),
            Proto::Ip6 => Some(FAMILY_V6),
            _ => None,
        }
    }

    pub(super) fn op(self) -> FilterOp {
        match self.family() {
            Some(family) => FilterOp {
                value: family as u16,
                ..op(OP_FAMILY)
            },
            None => {
                // tcpdump: `icmp` is `ip proto 1` and `icmp6` is `ip6 proto
                // 58`, each in its own family; `tcp`, `udp` and `sctp` are
                // in either.
                let (proto, family) = match self {
                    Proto::Tcp => (IPPROTO_TCP, 0),
                    Proto::Udp => (IPPROTO_UDP, 0),
                    Proto::Sctp => (IPPROTO_SCTP, 0),
                    Proto::Icmp => (IPPROTO_ICMP, FAMILY_V4),
                    _ => (IPPROTO_ICMPV6, FAMILY_V6),
                };
                FilterOp {
                    value: proto as u16,
                    family,
                    ..op(OP_PROTO)
                }
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Dir {
    /// No direction, or `src or dst`.
    Any,
    Src,
    Dst,
    /// `src and dst`: two tests joined by `and`.
    Both,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Host,
    Net,
    Port,
    PortRange,
    Proto,
    /// `protochain N`: N anywhere in the header chain.
    Protochain,
    /// A direction with no kind (`src 10.0.0.1`): the value decides between
    /// host and net, as in tcpdump.
    Addr,
}

impl Kind {
    /// What the value after this kind must be, for "expected ..." messages.
    pub(super) fn what(self) -> &'static str {
        match self {
            Kind::Host => "an address",
            Kind::Net => "a network",
            Kind::Port => "a port number",
            Kind::PortRange => "a port range like 1000-2000",
            Kind::Proto | Kind::Protochain => {
                "a protocol number or name (tcp, udp, sctp, icmp, icmp6)"
            }
            Kind::Addr => "'host', 'net', 'port', 'portrange' or an address",
        }
    }
}

/// Everything a primitive says besides its value; what a bare value in a
/// list like `port 80 or 443` inherits.
#[derive(Clone, Copy, Debug)]
pub(super) struct Quals {
    pub(super) proto: Option<Proto>,
    pub(super) dir: Dir,
    pub(super) kind: Kind,
}

pub(super) const KEYWORDS: &[&str] = &[
    "src",
    "dst",
    "host",
    "net",
    "port",
    "portrange",
    "proto",
    "protochain",
    "mask",
    "tcp",
    "udp",
    "sctp",
    "icmp",
    "icmp6",
    "ip",
    "ip6",
];

/// tcpdump primitives a user may reasonably try; named so the error says
/// "not supported" rather than "unknown".
pub(super) const UNSUPPORTED: &[&str] = &[
    "ether",
    "arp",
    "rarp",
    "vlan",
    "mpls",
    "less",
    "greater",
    "len",
    "broadcast",
    "multicast",
    "gateway",
    "inbound",
    "outbound",
    "ifname",
    "on",
    "igmp",
    "ah",
    "esp",
];

pub(super) fn is_keyword(t: &Token) -> bool {
    t.tok == Tok::Word && KEYWORDS.contains(&t.text.to_ascii_lowercase().as_str())
}

/// Whether a word can only be a value: a bare value reuses the previous
/// qualifiers, while any other unknown word is a typo worth reporting as such.
pub(super) fn looks_like_value(w: &str) -> bool {
    w.starts_with(|c: char| c.is_ascii_digit() || c == '\\') || w.contains(':')
}

pub(super) fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

pub(super) fn op(code: u8) -> FilterOp {
    FilterOp {
        code,
        ..FilterOp::END
    }
}
