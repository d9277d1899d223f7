//! Verdict maps and sets: an nftables rule that looks the packet up
//! (`ip daddr . meta l4proto . th dport vmap @no-endpoint-services`, as
//! kube-proxy's nftables mode drops traffic to a Service without
//! endpoints; `ip saddr @blocklist drop`). Such a rule drops only the
//! packets whose key is an element (of a map, one with a drop verdict),
//! so the rule alone does not say what dropped a packet: the element
//! does, and its comment names what it stands for (kube-proxy writes the
//! Service there; a blocklist, why an address is on it). Read from
//! `nft -j` like the rest of the ruleset; the packet's key is matched in
//! userspace.

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
    AddrRange(IpAddr, IpAddr),
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
    /// A set the rule matches (`ip daddr @blocklist drop`): each element
    /// carries the rule's own verdict.
    #[serde(default)]
    pub set: bool,
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
        // Parsed once, not once per element: a blocklist holds thousands.
        let packet: Vec<Option<Packet>> = self
            .key
            .iter()
            .map(|k| {
                value(k).map(|text| Packet {
                    addr: text.parse().ok(),
                    num: text.parse().ok(),
                    text,
                })
            })
            .collect();
        self.elements.iter().find(|e| {
            e.key.len() == packet.len()
                && e.key
                    .iter()
                    .zip(&packet)
                    .all(|(v, p)| p.as_ref().is_some_and(|p| p.fits(v)))
        })
    }
}

/// One key part's value in a packet, as text and parsed.
struct Packet {
    text: String,
    addr: Option<IpAddr>,
    num: Option<u64>,
}

impl Packet {
    fn fits(&self, v: &ElemVal) -> bool {
        match v {
            ElemVal::Exact(s) => *s == self.text,
            ElemVal::Prefix(net, len) => self.addr.is_some_and(|a| prefix_contains(*net, *len, a)),
            ElemVal::Range(lo, hi) => self.num.is_some_and(|n| (*lo..=*hi).contains(&n)),
            ElemVal::AddrRange(lo, hi) => self.addr.is_some_and(|a| (*lo..=*hi).contains(&a)),
        }
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
        set: false,
    })
}

/// The set a rule's `match` looks the packet up in (`"op": "=="` and a
/// right side `@name` or an anonymous `{"set": [...]}`), its elements
/// carrying the rule's `verdict`. A negated lookup (`!= @allowed`) drops
/// packets that are in no element, so it names none: None.
pub fn parse_set(m: &Value, verdict: &str, family: &str, table: &str, sets: &Maps) -> Option<Vmap> {
    if !matches!(m.get("op").and_then(Value::as_str), Some("==" | "in")) {
        return None;
    }
    let key = key_parts(m.get("left")?);
    let (name, elems) = match m.get("right")? {
        Value::String(s) => {
            let name = s.strip_prefix('@')?.to_string();
            let set = sets.get(&(family.to_string(), table.to_string(), name.clone()))?;
            (Some(name), set.get("elem").cloned().unwrap_or(Value::Null))
        }
        other => (None, other.get("set")?.clone()),
    };
    let elements = elems
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|k| member(k, verdict.to_string()))
                .collect()
        })
        .unwrap_or_default();
    Some(Vmap {
        name,
        key,
        elements,
        set: true,
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
    let (verb, arg) = verdict.as_object()?.iter().next()?;
    let verdict = match verb.as_str() {
        "jump" | "goto" => arg.get("target")?.as_str()?.to_string(),
        v => v.to_uppercase(),
    };
    member(k, verdict)
}

/// A key (`key-or-{"elem":{val,comment}}`) with its verdict.
fn member(k: &Value, verdict: String) -> Option<VmapElem> {
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
            let (lo, hi) = (r.first()?, r.get(1)?);
            if let (Some(lo), Some(hi)) = (lo.as_u64(), hi.as_u64()) {
                return Some(ElemVal::Range(lo, hi));
            }
            // An address range (`10.0.0.1-10.0.0.9` in an interval set).
            Some(ElemVal::AddrRange(
                lo.as_str()?.parse().ok()?,
                hi.as_str()?.parse().ok()?,
            ))
        }
    }
}

fn val_text(v: &ElemVal) -> String {
    match v {
        ElemVal::Exact(s) => s.clone(),
        ElemVal::Prefix(a, l) => format!("{a}/{l}"),
        ElemVal::Range(lo, hi) => format!("{lo}-{hi}"),
        ElemVal::AddrRange(lo, hi) => format!("{lo}-{hi}"),
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

    /// Sets as `nft -j list ruleset` prints them (an interval set with a
    /// prefix, an address range and a commented address; a concatenation).
    const SETS: &str = r#"[{"family":"inet","name":"deny-v4","table":"guard","type":"ipv4_addr","flags":["interval"],
"elem":[{"prefix":{"addr":"10.9.0.0","len":16}},{"range":["192.0.2.10","192.0.2.20"]},{"elem":{"val":"198.51.100.7","comment":"old partner"}}]},
{"family":"inet","name":"pairs","table":"guard","type":["ipv4_addr","inet_service"],
"elem":[{"elem":{"val":{"concat":["10.1.1.1",8080]},"comment":"legacy api"}}]}]"#;

    fn sets() -> Maps {
        let all: Vec<Value> = serde_json::from_str(SETS).unwrap();
        all.into_iter()
            .map(|s| {
                let n = s["name"].as_str().unwrap().to_string();
                (("inet".to_string(), "guard".to_string(), n), s)
            })
            .collect()
    }

    fn set_match(op: &str, left: &str, right: &str) -> Value {
        serde_json::from_str(&format!(r#"{{"op":"{op}","left":{left},"right":{right}}}"#)).unwrap()
    }

    #[test]
    fn a_set_lookup_finds_the_member_and_its_comment() {
        let daddr = r#"{"payload":{"protocol":"ip","field":"daddr"}}"#;
        let m = set_match("==", daddr, r#""@deny-v4""#);
        let s = parse_set(&m, "DROP", "inet", "guard", &sets()).unwrap();
        assert!(s.set && s.drops());
        assert_eq!(s.name.as_deref(), Some("deny-v4"));
        let dst =
            |a: &'static str| move |p: &KeyPart| (*p == KeyPart::Daddr).then(|| a.to_string());
        let e = s.element_for(dst("198.51.100.7")).unwrap();
        assert_eq!(
            (e.text.as_str(), e.comment.as_deref()),
            ("198.51.100.7", Some("old partner"))
        );
        assert_eq!(
            s.element_for(dst("10.9.200.1")).unwrap().text,
            "10.9.0.0/16"
        );
        assert_eq!(
            s.element_for(dst("192.0.2.15")).unwrap().text,
            "192.0.2.10-192.0.2.20"
        );
        assert!(s.element_for(dst("192.0.2.21")).is_none());
        // A concatenation.
        let pair = r#"{"concat":[{"payload":{"protocol":"ip","field":"saddr"}},{"payload":{"protocol":"tcp","field":"dport"}}]}"#;
        let s = parse_set(
            &set_match("==", pair, r#""@pairs""#),
            "REJECT",
            "inet",
            "guard",
            &sets(),
        )
        .unwrap();
        let e = s
            .element_for(|p| match p {
                KeyPart::Saddr => Some("10.1.1.1".into()),
                KeyPart::Dport => Some("8080".into()),
                _ => None,
            })
            .unwrap();
        assert_eq!(e.text, "10.1.1.1 . 8080");
        assert_eq!(e.verdict, "REJECT");
        // Anonymous.
        let dport = r#"{"payload":{"protocol":"tcp","field":"dport"}}"#;
        let s = parse_set(
            &set_match("==", dport, r#"{"set":[25,465]}"#),
            "DROP",
            "inet",
            "guard",
            &sets(),
        )
        .unwrap();
        assert_eq!(s.name, None);
        assert_eq!(s.element_for(|_| Some("465".into())).unwrap().text, "465");
        // A negated lookup names nothing; an unknown set is none.
        assert!(parse_set(
            &set_match("!=", daddr, r#""@deny-v4""#),
            "DROP",
            "inet",
            "guard",
            &sets()
        )
        .is_none());
        assert!(parse_set(
            &set_match("==", daddr, r#""@gone""#),
            "DROP",
            "inet",
            "guard",
            &sets()
        )
        .is_none());
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
