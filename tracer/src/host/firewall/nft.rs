//! Native nftables, from `nft -j -a list ruleset` (libnftables' JSON,
//! parsed with serde): chains with their hooks and policies, rules with
//! their handles, comments, counters and verdicts. The text of each rule
//! comes from `nft -a list ruleset`, matched by handle, so it reads as
//! `nft` prints it. This is the documented fallback for reading rules
//! over netlink: libnftables is what turns rule bytecode back into words.

use super::vmap::{self, Maps};
use super::{Counter, FwChain, FwRule, Source};
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;

#[derive(Deserialize)]
struct Listing {
    nftables: Vec<Value>,
}

#[derive(Deserialize)]
struct ChainJson {
    family: String,
    table: String,
    name: String,
    hook: Option<String>,
    policy: Option<String>,
}

#[derive(Deserialize)]
struct RuleJson {
    family: String,
    table: String,
    chain: String,
    handle: u64,
    comment: Option<String>,
    #[serde(default)]
    expr: Vec<Value>,
}

/// Native chains of `json`, except those of tables in `owned` (family,
/// table) that iptables-nft manages and its own listing shows. `text` is
/// the `nft -a list ruleset` listing the rule texts come from.
pub fn parse(
    json: &str,
    text: &str,
    owned: &[(String, String)],
) -> serde_json::Result<Vec<FwChain>> {
    let listing: Listing = serde_json::from_str(json)?;
    let texts = rule_texts(text);
    let mine = |f: &str, t: &str| !owned.iter().any(|(of, ot)| of == f && ot == t);
    // Named maps and sets first: a rule may look one up (`vmap @name`,
    // `ip daddr @name`).
    let named = |kind: &str| -> Maps {
        listing
            .nftables
            .iter()
            .filter_map(|item| {
                let m = item.get(kind)?;
                let s = |k: &str| m.get(k).and_then(Value::as_str).map(str::to_string);
                Some(((s("family")?, s("table")?, s("name")?), m.clone()))
            })
            .collect()
    };
    let (maps, sets) = (named("map"), named("set"));
    let mut chains: Vec<FwChain> = Vec::new();
    for item in listing.nftables {
        if let Some(c) = item.get("chain") {
            let c: ChainJson = serde_json::from_value(c.clone())?;
            if !mine(&c.family, &c.table) {
                continue;
            }
            chains.push(FwChain {
                source: Source::Nftables,
                family: c.family,
                table: c.table,
                name: c.name,
                hook: c.hook,
                policy: c.policy.map(|p| p.to_uppercase()),
                policy_counter: None,
                rules: Vec::new(),
            });
        } else if let Some(r) = item.get("rule") {
            let r: RuleJson = serde_json::from_value(r.clone())?;
            let Some(chain) = chains
                .iter_mut()
                .find(|c| c.family == r.family && c.table == r.table && c.name == r.chain)
            else {
                continue;
            };
            let key = (r.family.clone(), r.table.clone(), r.handle);
            let rule = rule(
                &r,
                texts.get(&key).cloned(),
                chain.rules.len() as u32 + 1,
                (&maps, &sets),
            );
            chain.rules.push(rule);
        }
    }
    Ok(chains)
}

/// One rule: its verdict and counter are the last of its expressions.
fn rule(r: &RuleJson, text: Option<String>, position: u32, (maps, sets): (&Maps, &Maps)) -> FwRule {
    let mut target = None;
    let mut goto = false;
    let mut counter = None;
    let mut vmap = None;
    let mut lookups = Vec::new();
    for e in &r.expr {
        let Some((k, v)) = e.as_object().and_then(|o| o.iter().next()) else {
            continue;
        };
        match k.as_str() {
            "counter" => {
                counter = Some(Counter {
                    packets: v.get("packets").and_then(Value::as_u64).unwrap_or(0),
                    bytes: v.get("bytes").and_then(Value::as_u64).unwrap_or(0),
                })
            }
            "drop" | "reject" | "accept" | "return" => target = Some(k.to_uppercase()),
            "jump" | "goto" => {
                target = v.get("target").and_then(Value::as_str).map(str::to_string);
                goto = k == "goto";
            }
            "vmap" => vmap = vmap::parse(v, &r.family, &r.table, maps),
            "match" => lookups.push(v),
            _ => {}
        }
    }
    // Only a dropping rule's sets: they say which packets it drops. (A
    // jump's would gate the chain it jumps to, element by element, as a
    // map's do; a large set made that a walk per element.)
    let verdict = target.clone().filter(|t| t == "DROP" || t == "REJECT");
    let sets = verdict
        .map(|t| {
            lookups
                .into_iter()
                .filter_map(|m| vmap::parse_set(m, &t, &r.family, &r.table, sets))
                .collect()
        })
        .unwrap_or_default();
    FwRule {
        position,
        handle: Some(r.handle),
        text: text.unwrap_or_else(|| format!("handle {}", r.handle)),
        comment: r.comment.clone(),
        target,
        goto,
        counter,
        vmap,
        sets,
    }
}

/// (family, table, handle) -> the rule's line in `nft -a list ruleset`,
/// trimmed, without its `# handle N`.
fn rule_texts(text: &str) -> HashMap<(String, String, u64), String> {
    let mut out = HashMap::new();
    let mut table: Option<(String, String)> = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("table ") {
            let mut w = rest.split_whitespace();
            if let (Some(f), Some(n)) = (w.next(), w.next()) {
                table = Some((f.to_string(), n.to_string()));
            }
            continue;
        }
        let Some((body, handle)) = t.rsplit_once(" # handle ") else {
            continue;
        };
        if body.starts_with("chain ") || body.ends_with('{') {
            continue;
        }
        let (Some((f, n)), Ok(h)) = (&table, handle.trim().parse::<u64>()) else {
            continue;
        };
        out.insert((f.clone(), n.clone(), h), without_counts(body));
    }
    out
}

/// `counter packets 2 bytes 120` -> `counter`: the rule as written, the
/// same text at every reading (the counts are kept apart).
fn without_counts(body: &str) -> String {
    let w: Vec<&str> = body.split(' ').collect();
    let mut out = Vec::with_capacity(w.len());
    let mut i = 0;
    while i < w.len() {
        out.push(w[i]);
        if w[i] == "counter" && w.get(i + 1) == Some(&"packets") && w.get(i + 3) == Some(&"bytes") {
            i += 5;
        } else {
            i += 1;
        }
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: &str = r#"{"nftables":[{"metainfo":{"version":"1.0.6"}},
{"table":{"family":"ip","name":"filter","handle":1}},
{"chain":{"family":"ip","table":"filter","name":"FORWARD","handle":1,"type":"filter","hook":"forward","prio":0,"policy":"accept"}},
{"table":{"family":"inet","name":"edge","handle":2}},
{"chain":{"family":"inet","table":"edge","name":"fwdchain","handle":1,"type":"filter","hook":"forward","prio":0,"policy":"accept"}},
{"chain":{"family":"inet","table":"edge","name":"sub","handle":2}},
{"rule":{"family":"inet","table":"edge","chain":"fwdchain","handle":3,"comment":"no 9090","expr":[{"match":{}},{"counter":{"packets":2,"bytes":120}},{"drop":null}]}},
{"rule":{"family":"inet","table":"edge","chain":"fwdchain","handle":4,"expr":[{"jump":{"target":"sub"}}]}}]}"#;

    const TEXT: &str = "table ip filter { # handle 1\n\tchain FORWARD { # handle 1\n\t}\n}\n\
table inet edge { # handle 2\n\tchain fwdchain { # handle 1\n\t\ttype filter hook forward priority filter; policy accept;\n\
\t\ttcp dport 9090 counter packets 2 bytes 120 drop comment \"no 9090\" # handle 3\n\t\tjump sub # handle 4\n\t}\n}\n";

    #[test]
    fn native_rules_have_handles_texts_and_verdicts() {
        let owned = vec![("ip".to_string(), "filter".to_string())];
        let c = parse(JSON, TEXT, &owned).unwrap();
        assert_eq!(c.len(), 2, "iptables-nft's table is left out");
        assert_eq!(c[0].hook.as_deref(), Some("forward"));
        assert_eq!(c[0].policy.as_deref(), Some("ACCEPT"));
        let r = &c[0].rules[0];
        assert_eq!(r.handle, Some(3));
        assert!(r.drops());
        assert_eq!(r.counter.map(|c| c.packets), Some(2));
        assert_eq!(r.comment.as_deref(), Some("no 9090"));
        assert_eq!(r.text, "tcp dport 9090 counter drop comment \"no 9090\"");
        assert_eq!(c[0].rules[1].target.as_deref(), Some("sub"));
        assert_eq!(c[0].rules[1].counter, None);
    }
}
