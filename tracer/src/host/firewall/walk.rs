//! Which rules could have dropped a packet: every rule that ends in DROP
//! or REJECT, and every DROP policy, in a chain reachable from a base
//! chain on the packet's hooks, with the jump path that reaches it.

use super::vmap::{Vmap, VmapElem};
use super::{Counter, FwChain, FwRule, Ruleset, Source};
use serde::{Deserialize, Serialize};

/// A rule (or a chain's DROP policy) that could have dropped the packet,
/// by what survives a re-read: the same chain and text, even when rules
/// were inserted before it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CandidateId {
    pub source: Source,
    pub family: String,
    pub table: String,
    pub chain: String,
    /// The rule's text; None for the chain's policy.
    pub text: Option<String>,
}

/// A candidate as found in one reading.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub id: CandidateId,
    /// The hook of the base chain it was reached from.
    pub hook: String,
    /// Chain names from that base chain to the candidate's chain.
    pub path: Vec<String>,
    /// None for a policy.
    pub rule: Option<FwRule>,
    /// The counter of the rule, or of the policy (None: it counts nothing).
    pub counter: Option<Counter>,
    /// For a verdict-map rule, the element the packet's key found (set
    /// once a packet is matched, see `facts::firewall::candidates_for`).
    pub element: Option<VmapElem>,
    /// Reached only through this element of this map (`vmap { k : goto
    /// chain }`): a candidate only for packets whose key finds it.
    pub gate: Option<(Vmap, VmapElem)>,
}

/// Does a chain of `family` see packets of `ip_family` (`ip` / `ip6`)?
fn family_sees(family: &str, ip_family: Option<&str>) -> bool {
    match ip_family {
        Some(f) => family == f || family == "inet",
        None => matches!(family, "ip" | "ip6" | "inet"),
    }
}

/// Every candidate in `rs` for a packet of `ip_family` on one of `hooks`,
/// from the given sources, in hook order.
pub fn candidates(
    rs: &Ruleset,
    sources: &[Source],
    ip_family: Option<&str>,
    hooks: &[&str],
) -> Vec<Candidate> {
    let mut out = Vec::new();
    for hook in hooks {
        for base in rs.chains.iter().filter(|c| {
            c.hook.as_deref() == Some(*hook)
                && sources.contains(&c.source)
                && family_sees(&c.family, ip_family)
        }) {
            let mut path = vec![base.name.clone()];
            descend(rs, base, hook, &mut path, &mut out);
            if base.policy.as_deref() == Some("DROP") {
                out.push(Candidate {
                    id: id(base, None),
                    hook: hook.to_string(),
                    path: path.clone(),
                    rule: None,
                    counter: base.policy_counter,
                    element: None,
                    gate: None,
                });
            }
        }
    }
    out
}

fn id(c: &FwChain, r: Option<&FwRule>) -> CandidateId {
    CandidateId {
        source: c.source,
        family: c.family.clone(),
        table: c.table.clone(),
        chain: c.name.clone(),
        text: r.map(|r| r.text.clone()),
    }
}

/// The drop rules of `chain`, then of the chains it jumps to (depth
/// first, each chain once per path: a loop is a ruleset the kernel would
/// have refused, but a listing is not the kernel).
fn descend(
    rs: &Ruleset,
    chain: &FwChain,
    hook: &str,
    path: &mut Vec<String>,
    out: &mut Vec<Candidate>,
) {
    for r in &chain.rules {
        // A verdict map that holds a dropping element can drop too.
        if r.drops() || r.vmap.as_ref().is_some_and(|m| m.drops()) {
            out.push(Candidate {
                id: id(chain, Some(r)),
                hook: hook.to_string(),
                path: path.clone(),
                rule: Some(r.clone()),
                counter: r.counter,
                element: None,
                gate: None,
            });
        }
        // The chains a verdict map's elements jump to, each reached only
        // by the packets of its element.
        if let Some(m) = &r.vmap {
            for e in m.elements.iter().filter(|e| !e.drops()) {
                let t = e.verdict.as_str();
                let Some(sub) = rs.chain(chain.source, &chain.family, &chain.table, t) else {
                    continue;
                };
                if sub.hook.is_some() || path.len() >= 16 || path.iter().any(|p| p == t) {
                    continue;
                }
                let mut found = Vec::new();
                path.push(t.to_string());
                descend(rs, sub, hook, path, &mut found);
                path.pop();
                out.extend(found.into_iter().map(|mut c| {
                    c.gate.get_or_insert_with(|| (m.clone(), e.clone()));
                    c
                }));
            }
        }
        if r.drops() || r.vmap.is_some() {
            continue;
        }
        let Some(t) = r.target.as_deref() else {
            continue;
        };
        let Some(sub) = rs.chain(chain.source, &chain.family, &chain.table, t) else {
            continue;
        };
        if sub.hook.is_some() || path.len() >= 16 || path.iter().any(|p| p == t) {
            continue;
        }
        path.push(t.to_string());
        descend(rs, sub, hook, path, out);
        path.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::super::iptables::parse;
    use super::*;

    #[test]
    fn user_chains_are_reached_with_their_path_and_policies_count() {
        let text = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [2:120]\n:GUARD - [0:0]\n:LOOP - [0:0]\n\
[5:300] -A FORWARD -j GUARD\n[1:60] -A GUARD -p udp -j DROP\n[0:0] -A GUARD -j LOOP\n[0:0] -A LOOP -j GUARD\n\
[0:0] -A INPUT -j DROP\nCOMMIT\n";
        let rs = Ruleset {
            chains: parse(text, Source::IptablesLegacy, "ip"),
            ..Ruleset::default()
        };
        let c = candidates(&rs, &[Source::IptablesLegacy], Some("ip"), &["forward"]);
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!(c[0].path, ["FORWARD", "GUARD"]);
        assert_eq!(c[0].rule.as_ref().unwrap().position, 1);
        assert!(c[1].rule.is_none());
        assert_eq!(c[1].counter.unwrap().packets, 2);
        let v6 = candidates(&rs, &[Source::IptablesLegacy], Some("ip6"), &["forward"]);
        assert!(v6.is_empty());
        let nft = candidates(&rs, &[Source::IptablesNft], Some("ip"), &["forward"]);
        assert!(nft.is_empty());
    }
}
