//! What the firewall verdicts ask of a drop and of a ruleset reading:
//! the packet in words (which way it went, whether it is a fragment),
//! the hooks it could have died on, the rules that could have dropped it,
//! which of them the counters point at, and how each is named, looked at
//! and removed.

use crate::events::protocols::icmp_name;
use crate::events::record::{DropRecord, Family};
use crate::host::firewall::vmap::{KeyPart, Vmap};
use crate::host::firewall::walk::{candidates, Candidate, CandidateId};
use crate::host::firewall::{Ruleset, Source};
use crate::host::topology::NsTopology;
use crate::rules::fix::{host_port, q, Fix};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::net::IpAddr;

/// The packet, with both ends so its direction shows: a SYN-ACK names
/// the server's port as its source, not as where it was going.
pub fn packet_words(d: &DropRecord) -> String {
    let proto = d
        .proto
        .map(|p| p.to_string())
        .unwrap_or_else(|| "packet".into());
    let end = |a: Option<IpAddr>, p: Option<u16>| match (a, p) {
        (Some(a), Some(p)) => host_port(a, p),
        (Some(a), None) => a.to_string(),
        _ => "?".into(),
    };
    let (from, to) = (end(d.src, d.sport), end(d.dst, d.dport));
    if d.fragment {
        return format!("a non-first fragment (no ports) of {proto} from {from} to {to}");
    }
    if let (Some(p), Some(t), Some(c)) = (d.proto, d.icmp_type, d.icmp_code) {
        if let Some(name) = icmp_name(p, t, c) {
            return format!("{proto} {name} from {from} to {to}");
        }
    }
    let flags = match d.tcp_flags.as_deref() {
        Some("S") => " SYN",
        Some("S.") => " SYN-ACK",
        Some(f) if f.contains('R') => " RST",
        Some(f) if f.contains('F') => " FIN",
        _ => "",
    };
    if d.src.is_none() && d.dst.is_none() {
        return "packets".into();
    }
    format!("{proto}{flags} from {from} to {to}")
}

/// `ip` / `ip6` (None for a packet of neither).
pub fn ip_family(d: &DropRecord) -> Option<&'static str> {
    match d.family {
        Some(Family::Ipv4) => Some("ip"),
        Some(Family::Ipv6) => Some("ip6"),
        None => None,
    }
}

/// The hooks the drop could have happened on: a packet sent from here
/// meets output and postrouting; one received for an address of this
/// namespace prerouting and input; a forwarded one prerouting, forward and
/// postrouting. The counters say which.
pub fn hooks_of(d: &DropRecord, topo: Option<&NsTopology>) -> &'static [&'static str] {
    if d.ingress_ifindex <= 0 || d.from_socket {
        return &["output", "postrouting"];
    }
    // Without the namespace's addresses, either way in.
    let Some(topo) = topo else {
        return &["prerouting", "input", "forward", "postrouting"];
    };
    let local = d.dst.is_some_and(|a| {
        a.is_multicast()
            || matches!(a, IpAddr::V4(v) if v.is_broadcast())
            || super::forwarding::owns_addr(topo, a)
    });
    if local {
        &["prerouting", "input"]
    } else {
        &["prerouting", "forward", "postrouting"]
    }
}

/// The back ends that could have run the dropping rule, from where the
/// kernel freed the packet: a drop at `nft_do_chain` is nftables'
/// (iptables-nft's tables too); a legacy table's drop is freed by
/// `nf_hook_slow` (6.18), which any back end may show, so that keeps all.
pub fn sources_of(location: &str) -> &'static [Source] {
    if location.starts_with("ipt_do_table") || location.starts_with("ip6t_do_table") {
        &[Source::IptablesLegacy]
    } else if location.starts_with("nft_") {
        &[Source::IptablesNft, Source::Nftables]
    } else {
        &[
            Source::IptablesNft,
            Source::IptablesLegacy,
            Source::Nftables,
        ]
    }
}

/// The candidates of one reading that the first reading leaves in: a rule
/// that counts must have counted something (the drop it is accused of);
/// one that counts nothing cannot be ruled out.
pub fn first_fits(all: Vec<Candidate>) -> Vec<Candidate> {
    all.into_iter()
        .filter(|c| c.counter.is_none_or(|n| n.packets > 0))
        .collect()
}

/// Of `before`'s fits, those whose counter rose by at least `drops` (the
/// drops reported between the two readings) by `after`; rules without a
/// counter stay in. A candidate missing from `after` was removed.
pub fn narrow(fits: &[Candidate], after: Vec<Candidate>, drops: u64) -> Vec<Candidate> {
    let keep: HashSet<&CandidateId> = fits.iter().map(|c| &c.id).collect();
    after
        .into_iter()
        .filter(|a| keep.contains(&a.id))
        .filter(|a| {
            let b = fits.iter().find(|b| b.id == a.id).and_then(|b| b.counter);
            match (b, a.counter) {
                (Some(b), Some(a)) => a.packets.saturating_sub(b.packets) >= drops,
                _ => true,
            }
        })
        .collect()
}

/// Every candidate for `d` in `rs`. A verdict-map rule stays one only if
/// the packet's key finds an element that drops, which it carries: the
/// map, unlike a counter, says which packets it drops.
pub fn candidates_for(d: &DropRecord, rs: &Ruleset, hooks: &[&str]) -> Vec<Candidate> {
    candidates(rs, sources_of(&d.location), ip_family(d), hooks)
        .into_iter()
        .filter_map(|mut c| {
            if let Some((map, via)) = &c.gate {
                // Reached through an element: only by its packets.
                let e = map.element_for(|part| key_value(d, part))?;
                if e != via {
                    return None;
                }
                c.element = Some(via.clone());
            }
            // A rule that looks the packet up in sets drops only what is
            // in each of them; the first named one names the element.
            let sets = c.rule.as_ref().map(|r| r.sets.as_slice()).unwrap_or(&[]);
            let (mut first, mut named) = (None, None);
            for s in sets {
                let e = s.element_for(|part| key_value(d, part))?;
                first.get_or_insert_with(|| e.clone());
                if s.name.is_some() {
                    named.get_or_insert_with(|| e.clone());
                }
            }
            if let Some(e) = named.or(first) {
                c.element.get_or_insert(e);
            }
            let Some(map) = c.rule.as_ref().and_then(|r| r.vmap.as_ref()) else {
                return Some(c);
            };
            let e = map.element_for(|part| key_value(d, part))?;
            if !e.drops() {
                return None;
            }
            c.element = Some(e.clone());
            Some(c)
        })
        .collect()
}

/// The map or set whose element decided `c`, if one did.
fn lookup_of(c: &Candidate) -> Option<&Vmap> {
    if let Some((m, _)) = &c.gate {
        return Some(m);
    }
    let r = c.rule.as_ref()?;
    let e = c.element.as_ref()?;
    r.vmap
        .as_ref()
        .filter(|m| m.elements.contains(e))
        .or_else(|| r.sets.iter().find(|s| s.elements.contains(e)))
}

/// The drop's value for one field of a map's key, as nft prints it.
fn key_value(d: &DropRecord, part: &KeyPart) -> Option<String> {
    match part {
        KeyPart::Saddr => d.src.map(|a| a.to_string()),
        KeyPart::Daddr => d.dst.map(|a| a.to_string()),
        KeyPart::L4proto => d.proto.map(|p| p.to_string()),
        KeyPart::Sport => d.sport.map(|p| p.to_string()),
        KeyPart::Dport => d.dport.map(|p| p.to_string()),
        KeyPart::Other(_) => None,
    }
}

/// The tool that prints and edits a candidate's chain.
pub fn tool(c: &CandidateId) -> &'static str {
    match (c.source, c.family.as_str()) {
        (Source::IptablesNft, "ip6") => "ip6tables-nft",
        (Source::IptablesNft, _) => "iptables-nft",
        (Source::IptablesLegacy, "ip6") => "ip6tables-legacy",
        (Source::IptablesLegacy, _) => "iptables-legacy",
        (Source::Nftables, _) => "nft",
    }
}

/// "rule 1 of chain GUARD (table filter, hook forward, iptables-nft):
/// `-A GUARD -p tcp -j DROP`", or the chain's policy.
pub fn name(c: &Candidate) -> String {
    let id = &c.id;
    let table = match id.source {
        Source::Nftables => format!("{} {}", id.family, id.table),
        _ => id.table.clone(),
    };
    let by = match id.source {
        Source::Nftables => "nftables",
        _ => tool(id),
    };
    let place = format!("table {table}, hook {}, {by}", c.hook);
    let via = if c.path.len() > 1 {
        format!(", reached by {}", c.path.join(" -> "))
    } else {
        String::new()
    };
    match &c.rule {
        Some(r) => {
            let handle = r
                .handle
                .map(|h| format!(" (handle {h})"))
                .unwrap_or_default();
            let element = match &c.element {
                Some(e) => {
                    let comment = e
                        .comment
                        .as_ref()
                        .map(|c| format!(" (comment {c:?})"))
                        .unwrap_or_default();
                    if c.gate.is_some() {
                        format!(", reached through map element `{}`{comment}", e.text)
                    } else if let Some(s) = lookup_of(c).filter(|m| m.set) {
                        let of = s
                            .name
                            .as_ref()
                            .map(|n| format!(" of set {n}"))
                            .unwrap_or_default();
                        format!(", matching element `{}`{comment}{of}", e.text)
                    } else {
                        format!(
                            ", whose map element `{}`{comment} is {}",
                            e.text,
                            e.verdict.to_lowercase()
                        )
                    }
                }
                None => String::new(),
            };
            format!(
                "rule {}{handle} of chain {} ({place}{via}): `{}`{element}",
                r.position, id.chain, r.text
            )
        }
        None => format!("the DROP policy of chain {} ({place})", id.chain),
    }
}

/// The evidence of one candidate.
pub fn evidence(c: &Candidate) -> Value {
    let id = &c.id;
    let mut v = json!({
        "source": id.source.as_str(),
        "family": id.family,
        "table": id.table,
        "chain": id.chain,
        "hook": c.hook,
        "jump_path": c.path.join(" -> "),
        "policy": c.rule.is_none(),
        "position": c.rule.as_ref().map(|r| r.position),
        "handle": c.rule.as_ref().and_then(|r| r.handle),
        "rule": c.rule.as_ref().map(|r| &r.text),
        "comment": c.rule.as_ref().and_then(|r| r.comment.clone()),
        "packets": c.counter.map(|n| n.packets),
    });
    // Only where a map or set decided: other rules' evidence is as before.
    if let Some(e) = &c.element {
        let map = lookup_of(c);
        let set = map.is_some_and(|m| m.set);
        v["element"] = json!({
            "map": map.filter(|_| !set).and_then(|m| m.name.clone()),
            "set": map.filter(|_| set).and_then(|m| m.name.clone()),
            "key": e.text,
            "comment": e.comment,
            "verdict": e.verdict,
        });
    }
    v
}

/// The command that removes a candidate rule (or opens its policy), run
/// in the namespace through `hint`.
pub fn remove_command(c: &Candidate, hint: &str) -> String {
    let id = &c.id;
    let (t, ch) = (q(&id.table), q(&id.chain));
    if let (Some(e), Some(name)) = (&c.element, lookup_of(c).and_then(|m| m.name.as_ref())) {
        // The element, not the rule: the rest of the map (or set) stays in
        // force.
        return format!(
            "{hint}nft delete element {} {t} {} {}",
            q(&id.family),
            q(name),
            q(&format!("{{ {} }}", e.text))
        );
    }
    match (&c.rule, id.source) {
        (Some(r), Source::Nftables) => match r.handle {
            Some(h) => format!(
                "{hint}nft delete rule {} {t} {ch} handle {h}",
                q(&id.family)
            ),
            None => format!("{hint}nft -a list chain {} {t} {ch}", q(&id.family)),
        },
        (Some(r), _) => format!("{hint}{} -t {t} -D {ch} {}", tool(id), r.position),
        (None, Source::Nftables) => format!(
            "{hint}nft chain {} {t} {ch} {}",
            q(&id.family),
            q("{ policy accept; }")
        ),
        (None, _) => format!("{hint}{} -t {t} -P {ch} ACCEPT", tool(id)),
    }
}

/// The command that lists a candidate's chain with counters.
pub fn look_command(c: &CandidateId, hint: &str) -> String {
    let (t, ch) = (q(&c.table), q(&c.chain));
    match c.source {
        Source::Nftables => format!("{hint}nft -a list chain {} {t} {ch}", q(&c.family)),
        _ => format!("{hint}{} -t {t} -L {ch} -v -n --line-numbers", tool(c)),
    }
}

/// The fixes for one named candidate: remove it (the root cause's fix),
/// then look at its chain.
pub fn fixes_for(c: &Candidate, hint: &str) -> Vec<Fix> {
    let rm = remove_command(c, hint);
    let named = lookup_of(c).filter(|m| m.name.is_some() && c.element.is_some());
    let what = if named.is_some_and(|m| m.set) {
        "Remove the address (or key) from the set, if this traffic should pass (whoever fills the set may add it back)"
    } else if named.is_some() {
        "Remove the map's element, if this traffic should pass (whoever fills the map adds it back while its reason stands: kube-proxy's no-endpoint-services holds a Service until it has ready endpoints)"
    } else if c.rule.is_some() {
        "Remove the rule, if this traffic should pass"
    } else {
        "Accept by default instead, if this traffic should pass (or add a rule that accepts it)"
    };
    let look = look_command(&c.id, hint);
    vec![
        Fix::run(format!("{what}: {rm}"), vec![rm]),
        Fix::advice(format!("See its counters: {look}")),
    ]
}

/// Looks for when no single rule is named: each candidate's chain (once),
/// else every table of the family.
pub fn looks(cands: &[Candidate], family: Option<&str>, hint: &str) -> Vec<Fix> {
    let mut seen = HashSet::new();
    let mut out: Vec<Fix> = cands
        .iter()
        .map(|c| look_command(&c.id, hint))
        .filter(|l| seen.insert(l.clone()))
        .take(4)
        .map(|l| Fix::advice(format!("Find the rule whose counters rise: {l}")))
        .collect();
    if out.is_empty() {
        let ipt = if family == Some("ip6") {
            "ip6tables"
        } else {
            "iptables"
        };
        out.push(Fix::advice(format!(
            "Find the rule whose counters rise: {hint}{ipt}-save -c, or {hint}nft -a list ruleset"
        )));
    }
    out
}
