//! Where tracer's filter and tcpdump's (libpcap 1.10.3, the version the
//! oracle tests run against) disagree, on purpose or by a limit, each with
//! its reason. The tests hold exactly these: the libpcap oracle and the
//! kernel corpus fail on any disagreement that `explain` does not name,
//! and on any entry here that they never see.

use tracer_abi::packet::CHAIN_CAP;
use tracer_abi::{
    Flow, CHAIN_AH, CHAIN_CAPPED, CHAIN_EMPTY, CHAIN_TRUNC, FAMILY_V6, FLOW_EXT_CHAIN,
    FLOW_L4_SHORT, IPPROTO_FRAGMENT, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP,
};

/// One known difference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Difference {
    pub id: &'static str,
    /// What differs, with an example.
    pub what: &'static str,
    /// Why it is so.
    pub reason: &'static str,
}

pub const NET_WITHOUT_NET: &str = "net-without-net";
pub const FRAGMENT_THEN_EXTENSION: &str = "fragment-then-extension";
pub const CHAIN_LONGER_THAN_CAP: &str = "chain-longer-than-cap";
pub const PROTOCHAIN_PAST_AH: &str = "protochain-past-ah";
pub const CUT_SHORT_LOAD: &str = "cut-short-load";

/// Every known difference. The README's filter section lists the same.
pub const DIFFERENCES: &[Difference] = &[
    Difference {
        id: NET_WITHOUT_NET,
        what: "`src 10.77.0.0/24` and `dst NET` take a network without `net`; \
               tcpdump refuses them (\"mask syntax for networks only\")",
        reason: "an extension: the value's `/` already says it is a network, \
                 and nothing it means in tcpdump is taken away",
    },
    Difference {
        id: FRAGMENT_THEN_EXTENSION,
        what: "an IPv6 packet whose fragment header is followed by another \
               extension header: `proto N` (and `tcp`, `udp`, `sctp`, `icmp6`) \
               tests N against each extension header behind the fragment \
               header, where libpcap tests only the first (`ip6[40]`)",
        reason: "the kernel keeps which extension headers the chain holds as \
                 bits (`Flow::chain`), not their order; RFC 8200 puts the \
                 fragment header after the others (a second fragment header \
                 is not allowed), so such packets are malformed or crafted",
    },
    Difference {
        id: CHAIN_LONGER_THAN_CAP,
        what: "`protochain N` on a chain of more extension headers than the \
               walk's cap (4): N behind the 4th is not found, where libpcap walks \
               on",
        reason: "the kernel's walk is a bounded loop (the verifier needs a \
                 constant bound); RFC 8200 allows each extension header once \
                 (destination options twice), 7 at most",
    },
    Difference {
        id: CUT_SHORT_LOAD,
        what: "a packet that ends inside a header the filter reads (ports of \
               a cut TCP/UDP/SCTP header, an extension header of a chain \
               `protochain` walks, the header behind an IPv6 fragment header \
               for `proto N`): libpcap rejects the whole packet when its \
               compiled code loads the missing bytes, and whether it loads \
               them depends on what its optimizer folded away; tracer takes \
               the test as unknown, and rejects the packet only when the \
               answer depends on it (Kleene's logic: `not port 80` rejects \
               it, `port 80 or tcp` on TCP takes it)",
        reason: "libpcap's result there follows its optimizer's choices, not \
                 the expression; tracer's follows the expression. The two \
                 agree on every packet that holds the bytes, and on a plain \
                 `port N` or `not port N` of a cut one",
    },
    Difference {
        id: PROTOCHAIN_PAST_AH,
        what: "`protochain N` on a chain that holds an AH header: tracer \
               steps over it by its length and walks on; libpcap 1.10.3 sets \
               its offset to the AH header's length instead of adding it \
               (`X = (len + 2) * 4` in gen_protochain), so it reads the wrong \
               bytes, and when those say AH again it loops forever (tcpdump \
               hangs)",
        reason: "a libpcap bug; tracer does what protochain means. The oracle \
                 tests never hand libpcap such a pair (it would not return), \
                 and check the wrong reading on a packet where it returns",
    },
];

/// Which difference explains tracer and libpcap disagreeing on `flow`'s
/// packet for expression `expr` (its text), if any.
pub fn explain(expr: &str, flow: &Flow) -> Option<&'static str> {
    let ext_after_fragment = flow.family == FAMILY_V6
        && flow.nexthdr == IPPROTO_FRAGMENT
        && flow.flags & FLOW_EXT_CHAIN != 0;
    let words: Vec<&str> = expr
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
        .collect();
    let protocol_test = words
        .iter()
        .any(|w| matches!(*w, "proto" | "tcp" | "udp" | "sctp" | "icmp6"));
    if ext_after_fragment && protocol_test {
        return Some(FRAGMENT_THEN_EXTENSION);
    }
    if flow.chain & CHAIN_AH != 0 && words.contains(&"protochain") {
        return Some(PROTOCHAIN_PAST_AH);
    }
    let cut_ports = flow.flags & FLOW_L4_SHORT != 0
        && matches!(flow.nexthdr, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP)
        && words.iter().any(|w| w.starts_with("port"));
    let cut_chain = flow.chain & CHAIN_TRUNC != 0 && words.contains(&"protochain");
    let cut_after_fragment = flow.family == FAMILY_V6
        && flow.nexthdr == IPPROTO_FRAGMENT
        && flow.chain & CHAIN_EMPTY != 0
        && protocol_test;
    if cut_ports || cut_chain || cut_after_fragment {
        return Some(CUT_SHORT_LOAD);
    }
    if flow.chain & CHAIN_CAPPED != 0 && words.contains(&"protochain") {
        return Some(CHAIN_LONGER_THAN_CAP);
    }
    None
}

/// Whether `expr` is one tcpdump refuses and tracer takes on purpose.
pub fn extension(expr: &str) -> Option<&'static str> {
    let words: Vec<&str> = expr.split_whitespace().collect();
    words.windows(2).find_map(|w| {
        (matches!(w[0], "src" | "dst") && w[1].contains('/')).then_some(NET_WITHOUT_NET)
    })
}

const _: () = assert!(CHAIN_CAP == 4, "the table says 4");
