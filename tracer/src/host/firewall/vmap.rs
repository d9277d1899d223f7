//! Verdict maps: an nftables rule whose verdict is looked up per packet
//! (`ip daddr . meta l4proto . th dport vmap @no-endpoint-services`, as
//! kube-proxy's nftables mode drops traffic to a Service without
//! endpoints). Such a rule drops only the packets whose key is an element
//! with a drop verdict, so the rule alone does not say what dropped a
//! packet: the element does, and its comment names what it stands for
//! (kube-proxy writes the Service there). Read from `nft -j` like the
//! rest of the ruleset; the packet's key is matched in userspace.

use crate::host::route::prefix_contains;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::net::IpAddr;

/// One field of the map's key, as the rule builds it from the packet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyPart {
    Saddr,
    Daddr,
    L4proto,
    Sport,
    Dport,
    /// A field tracer does not take from a drop (an interface, a mark):
    /// no element can be matched on it.
    Other(String),
}

/// One value of an element's key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ElemVal {
    /// An address, a protocol name or a port, as nft prints it.
    Exact(String),
    Prefix(IpAddr, u8),
    Range(u64, u64),
}

/// One element: its key, comment and verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmapElem {
    pub key: Vec<ElemVal>,
    /// The key as nft prints it (`172.30.0.44 . tcp . 80`).
    pub text: String,
    pub comment: Option<String>,
    /// `DROP`, `REJECT`, `ACCEPT`, `RETURN` or the chain it jumps to.
    pub verdict: String,
}

impl VmapElem {
    pub fn drops(&self) -> bool {
        matches!(self.verdict.as_str(), "DROP" | "REJECT")
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vmap {
    /// The named map (`@name`); None for an anonymous one (`vmap { ... }`).
    pub name: Option<String>,
    pub key: Vec<KeyPart>,
    pub elements: Vec<VmapElem>,
}

impl Vmap {
    /// Some element drops: the rule can drop.
    pub fn drops(&self) -> bool {
        self.elements.iter().any(VmapElem::drops)
    }

    /// The element the packet's key finds, given each key part's value
    /// (`value(part)`: an address, `tcp`/`udp`/..., a port) or None when
    /// the packet has none.
    pub fn element_for(&self, value: impl Fn(&KeyPart) -> Option<String>) -> Option<&VmapElem> {
        let packet: Vec<Option<String>> = self.key.iter().map(value).collect();
        self.elements.iter().find(|e| {
            e.key.len() == packet.len()
                && e.key
                    .iter()
                    .zip(&packet)
                    .all(|(v, p)| p.as_deref().is_some_and(|p| fits(v, p)))
        })
    }
}

fn fits(v: &ElemVal, p: &str) -> bool {
    match v {
        ElemVal::Exact(s) => s == p,
        ElemVal::Prefix(net, len) => p
            .parse::<IpAddr>()
            .is_ok_and(|a| prefix_contains(*net, *len, a)),
        ElemVal::Range(lo, hi) => p.parse::<u64>().is_ok_and(|n| (*lo..=*hi).contains(&n)),
    }
}

/// The named maps of a listing: (family, table, name) -> the map's JSON.
pub type Maps = HashMap<(String, String, String), Value>;

/// The map a rule's `vmap` expression looks up, with its elements: a named
/// map from `maps` (of the rule's family and table), or an anonymous one.
pub fn parse(vmap: &Value, family: &str, table: &str, maps: &Maps) -> Option<Vmap> {
    let key = key_parts(vmap.get("key")?);
    let data = vmap.get("data")?;
    let (name, elems) = match data {
        Value::String(s) => {
            let name = s.strip_prefix('@')?.to_string();
            let m = maps.get(&(family.to_string(), table.to_string(), name.clone()))?;
            (Some(name), m.get("elem").cloned().unwrap_or(Value::Null))
        }
        other => (None, other.get("set").cloned().unwrap_or(Value::Null)),
    };
    let elements = elems
        .as_array()
        .map(|a| a.iter().filter_map(element).collect())
        .unwrap_or_default();
    Some(Vmap {
        name,
        key,
        elements,
    })
}

fn key_parts(key: &Value) -> Vec<KeyPart> {
    match key.get("concat").and_then(Value::as_array) {
        Some(parts) => parts.iter().map(key_part).collect(),
        None => vec![key_part(key)],
    }
}

fn key_part(v: &Value) -> KeyPart {
    if let Some(p) = v.get("payload") {
        let field = p.get("field").and_then(Value::as_str).unwrap_or("");
        return match field {
            "saddr" => KeyPart::Saddr,
            "daddr" => KeyPart::Daddr,
            "sport" => KeyPart::Sport,
            "dport" => KeyPart::Dport,
            f => KeyPart::Other(f.to_string()),
        };
    }
    match v
        .get("meta")
        .and_then(|m| m.get("key"))
        .and_then(Value::as_str)
    {
        Some("l4proto") => KeyPart::L4proto,
        Some(k) => KeyPart::Other(k.to_string()),
        None => KeyPart::Other(v.to_string()),
    }
}

/// `[key-or-{"elem":{val,comment}}, verdict]`.
fn element(pair: &Value) -> Option<VmapElem> {
    let [k, verdict] = pair.as_array()?.as_slice() else {
        return None;
    };
    let (val, comment) = match k.get("elem") {
        Some(e) => (
            e.get("val")?,
            e.get("comment").and_then(Value::as_str).map(str::to_string),
        ),
        None => (k, None),
    };
    let vals: Vec<&Value> = match val.get("concat").and_then(Value::as_array) {
        Some(parts) => parts.iter().collect(),
        None => vec![val],
    };
    let key: Vec<ElemVal> = vals.iter().map(|v| elem_val(v)).collect::<Option<_>>()?;
    let text = key.iter().map(val_text).collect::<Vec<_>>().join(" . ");
    let (verb, arg) = verdict.as_object()?.iter().next()?;
    let verdict = match verb.as_str() {
        "jump" | "goto" => arg.get("target")?.as_str()?.to_string(),
        v => v.to_uppercase(),
    };
    Some(VmapElem {
        key,
        text,
        comment,
        verdict,
    })
}

fn elem_val(v: &Value) -> Option<ElemVal> {
    match v {
        Value::String(s) => Some(ElemVal::Exact(s.clone())),
        Value::Number(n) => Some(ElemVal::Exact(n.to_string())),
        _ => {
            if let Some(p) = v.get("prefix") {
                let addr = p.get("addr")?.as_str()?.parse().ok()?;
                let len = u8::try_from(p.get("len")?.as_u64()?).ok()?;
                return Some(ElemVal::Prefix(addr, len));
            }
            let r = v.get("range")?.as_array()?;
            Some(ElemVal::Range(r.first()?.as_u64()?, r.get(1)?.as_u64()?))
        }
    }
}

fn val_text(v: &ElemVal) -> String {
    match v {
        ElemVal::Exact(s) => s.clone(),
        ElemVal::Prefix(a, l) => format!("{a}/{l}"),
        ElemVal::Range(lo, hi) => format!("{lo}-{hi}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// kube-proxy's shape, as `nft -j list ruleset` prints it.
    const MAP: &str = r#"{"family":"ip","name":"no-endpoint-services","table":"kube-proxy",
"type":["ipv4_addr","inet_proto","inet_service"],"map":"verdict","elem":[
[{"elem":{"val":{"concat":["172.30.0.45","udp",53]},"comment":"kube-system/dns:dns"}},{"drop":null}],
[{"elem":{"val":{"concat":["172.30.0.44","tcp",80]},"comment":"shop/web:http"}},{"goto":{"target":"reject-chain"}}],
[{"concat":[{"prefix":{"addr":"10.9.0.0","len":16}},"tcp",{"range":[8000,8099]}]},{"drop":null}]]}"#;

    const RULE_VMAP: &str = r#"{"key":{"concat":[{"payload":{"protocol":"ip","field":"daddr"}},
{"meta":{"key":"l4proto"}},{"payload":{"protocol":"th","field":"dport"}}]},"data":"@no-endpoint-services"}"#;

    fn maps() -> Maps {
        let m: Value = serde_json::from_str(MAP).unwrap();
        let k = (
            "ip".to_string(),
            "kube-proxy".to_string(),
            "no-endpoint-services".to_string(),
        );
        HashMap::from([(k, m)])
    }

    fn packet(
        dst: &'static str,
        proto: &'static str,
        dport: u16,
    ) -> impl Fn(&KeyPart) -> Option<String> {
        move |p| match p {
            KeyPart::Daddr => Some(dst.to_string()),
            KeyPart::L4proto => Some(proto.to_string()),
            KeyPart::Dport => Some(dport.to_string()),
            _ => None,
        }
    }

    #[test]
    fn a_packets_key_finds_its_element_and_comment() {
        let v: Value = serde_json::from_str(RULE_VMAP).unwrap();
        let m = parse(&v, "ip", "kube-proxy", &maps()).unwrap();
        assert_eq!(m.name.as_deref(), Some("no-endpoint-services"));
        assert_eq!(m.key, [KeyPart::Daddr, KeyPart::L4proto, KeyPart::Dport]);
        assert!(m.drops());
        let e = m.element_for(packet("172.30.0.45", "udp", 53)).unwrap();
        assert_eq!(e.text, "172.30.0.45 . udp . 53");
        assert_eq!(e.comment.as_deref(), Some("kube-system/dns:dns"));
        assert!(e.drops());
        // A jump to a chain is not a drop by the map itself.
        let e = m.element_for(packet("172.30.0.44", "tcp", 80)).unwrap();
        assert_eq!(e.verdict, "reject-chain");
        assert!(!e.drops());
        // Prefixes and ranges.
        let e = m.element_for(packet("10.9.4.4", "tcp", 8080)).unwrap();
        assert_eq!(e.text, "10.9.0.0/16 . tcp . 8000-8099");
        assert!(m.element_for(packet("10.9.4.4", "tcp", 8100)).is_none());
        assert!(m.element_for(packet("172.30.0.45", "tcp", 53)).is_none());
    }

    #[test]
    fn an_anonymous_map_and_an_unknown_one() {
        let v: Value = serde_json::from_str(
            r#"{"key":{"payload":{"protocol":"tcp","field":"dport"}},"data":{"set":[[22,{"accept":null}],[23,{"drop":null}]]}}"#,
        )
        .unwrap();
        let m = parse(&v, "inet", "t", &Maps::new()).unwrap();
        assert_eq!(m.name, None);
        let e = m.element_for(|_| Some("23".into())).unwrap();
        assert!(e.drops());
        let named: Value =
            serde_json::from_str(r#"{"key":{"meta":{"key":"l4proto"}},"data":"@gone"}"#).unwrap();
        assert!(parse(&named, "inet", "t", &Maps::new()).is_none());
    }
}
