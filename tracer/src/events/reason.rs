//! A drop reason's name (`enum skb_drop_reason` without its
//! `SKB_DROP_REASON_` prefix), as a type: the names rules and the namer
//! match are constants here, so a misspelt one fails to compile, and the
//! names read from BTF or a recording share one allocation each.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// A drop reason's name; empty when the kernel reports none and none could
/// be inferred. Compares, hashes and orders as its text.
#[derive(Clone)]
pub struct Reason(Repr);

#[derive(Clone)]
enum Repr {
    /// One of the constants below.
    Known(&'static str),
    /// Any other name, interned.
    Shared(Arc<str>),
}

macro_rules! known {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        impl Reason {
            $($(#[$doc])* pub const $name: Reason = Reason(Repr::Known(stringify!($name)));)*
        }
        /// Every constant's name, to hand out the constant for it.
        const KNOWN: &[&str] = &[$(stringify!($name)),*];
    };
}

known! {
    NOT_SPECIFIED,
    NO_SOCKET,
    SOCKET_CLOSE,
    SOCKET_RCVBUFF,
    PKT_TOO_BIG,
    NETFILTER_DROP,
    IP_RPFILTER,
    IP_INADDRERRORS,
    IP_INNOROUTES,
    IP_LOCALNET,
    IP_LOCAL_SOURCE,
    IP_OUTNOROUTES,
    IPV6DISABLED,
    NEIGH_FAILED,
    NEIGH_CREATEFAIL,
    NEIGH_QUEUEFULL,
    CPU_BACKLOG,
    BRIDGE_INGRESS_STP_STATE,
    FRAG_REASM_TIMEOUT,
    QDISC_DROP,
    QDISC_OVERLIMIT,
    QDISC_CONGESTED,
    CAKE_FLOOD,
    FQ_BAND_LIMIT,
    FQ_HORIZON_LIMIT,
    FQ_FLOW_LIMIT,
    // enum qdisc_drop_reason (kernels after 6.18), as btf.rs names it.
    QDISC_DROP_GENERIC,
    QDISC_DROP_OVERLIMIT,
    QDISC_DROP_CONGESTED,
    QDISC_DROP_MAXFLOWS,
    QDISC_DROP_FLOOD_PROTECTION,
    QDISC_DROP_BAND_LIMIT,
    QDISC_DROP_HORIZON_LIMIT,
    QDISC_DROP_FLOW_LIMIT,
    QDISC_DROP_L4S_STEP_NON_ECN,
}

/// Names interned so far; bounded, since a recording may hold any text
/// (past the bound a name is allocated on its own, still correct).
static INTERNED: Mutex<Option<HashSet<Arc<str>>>> = Mutex::new(None);
const MAX_INTERNED: usize = 4096;

impl Reason {
    /// No reason.
    pub const NONE: Reason = Reason(Repr::Known(""));

    pub fn new(name: &str) -> Reason {
        if let Some(k) = KNOWN.iter().find(|k| **k == name) {
            return Reason(Repr::Known(k));
        }
        if name.is_empty() {
            return Reason::NONE;
        }
        let mut g = INTERNED.lock().unwrap_or_else(|e| e.into_inner());
        let set = g.get_or_insert_with(HashSet::new);
        if let Some(n) = set.get(name) {
            return Reason(Repr::Shared(Arc::clone(n)));
        }
        let n: Arc<str> = Arc::from(name);
        if set.len() < MAX_INTERNED {
            set.insert(Arc::clone(&n));
        }
        Reason(Repr::Shared(n))
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Known(s) => s,
            Repr::Shared(s) => s,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.as_str().is_empty()
    }
}

impl Default for Reason {
    fn default() -> Self {
        Reason::NONE
    }
}

impl PartialEq for Reason {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Reason {}

impl std::hash::Hash for Reason {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.as_str().hash(h)
    }
}

impl PartialOrd for Reason {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Reason {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl From<Reason> for String {
    fn from(r: Reason) -> String {
        r.as_str().to_string()
    }
}

/// As its text (an empty one too; records print an empty reason as null).
impl Serialize for Reason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// From text, or null (no reason).
impl<'de> Deserialize<'de> for Reason {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Option::<String>::deserialize(d).map(|o| o.map(|s| Reason::new(&s)).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_compare_as_text_and_share_one_allocation() {
        assert_eq!(Reason::new("IP_RPFILTER"), Reason::IP_RPFILTER);
        assert!(matches!(Reason::new("IP_RPFILTER").0, Repr::Known(_)));
        let (a, b) = (Reason::new("TCP_OFOMERGE"), Reason::new("TCP_OFOMERGE"));
        match (&a.0, &b.0) {
            (Repr::Shared(x), Repr::Shared(y)) => assert!(Arc::ptr_eq(x, y)),
            _ => panic!("not interned"),
        }
        assert_eq!(a.as_str(), "TCP_OFOMERGE");
        assert!(Reason::new("").is_empty());
        let r: Reason = serde_json::from_str("null").unwrap();
        assert_eq!(r, Reason::NONE);
        assert_eq!(serde_json::to_string(&a).unwrap(), "\"TCP_OFOMERGE\"");
    }
}
