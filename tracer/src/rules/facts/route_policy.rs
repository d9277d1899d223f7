//! The policy rule and table behind a drop's route: what the evidence of
//! every route-based verdict names, so that a fix acts in the table the
//! kernel uses (a rule can send a flow past `main`).

use super::reverse_path::ROUTE_JOIN_MAX_AGE_NS;
use crate::events::record::DropRecord;
use crate::host::policy::{Decision, Flow, RuleKind};
use crate::host::route::RT_TABLE_LOCAL;
use crate::host::topology::NsTopology;
use serde_json::{json, Value};
use std::net::IpAddr;

/// The lookup flow of a drop: from its ingress device when it arrived,
/// else from a local socket (iif `lo`, as the kernel looks them up).
fn flow_of<'a>(d: &DropRecord, iif: &'a str) -> Option<Flow<'a>> {
    Some(Flow {
        src: d.src,
        dst: d.dst?,
        iif: Some(iif),
        oif: None,
        mark: None,
    })
}

fn iif_name(d: &DropRecord) -> &str {
    d.ingress_ifname.as_deref().unwrap_or("lo")
}

/// The rule and table of the drop's own route lookup: the table the
/// kernel's joined lookup used when it succeeded, else the rules' choice.
pub fn forward(d: &DropRecord, topo: &NsTopology) -> Option<Decision> {
    let flow = flow_of(d, iif_name(d))?;
    let kernel = d
        .route
        .as_ref()
        .filter(|r| r.err == 0 && r.age_ns.unsigned_abs() < ROUTE_JOIN_MAX_AGE_NS)
        .map(|r| r.table);
    kernel
        .and_then(|t| topo.decide(&flow, Some(t)))
        .or_else(|| topo.decide(&flow, None))
}

/// The rule and table of a reply from `local` to `peer` made here.
pub fn reply(topo: &NsTopology, local: Option<IpAddr>, peer: IpAddr) -> Option<Decision> {
    let flow = Flow {
        src: local,
        dst: peer,
        iif: Some("lo"),
        oif: None,
        mark: None,
    };
    topo.decide(&flow, None)
}

/// The `lookup` rules a drop's flow may match, in order (`ip rule` text),
/// and the first table past `local` they send it to: where a missing
/// route belongs.
pub fn tried(d: &DropRecord, topo: &NsTopology) -> (Vec<String>, Option<u32>) {
    let Some(flow) = flow_of(d, iif_name(d)) else {
        return (Vec::new(), None);
    };
    let rules = topo.rules_for(&flow);
    let first = rules
        .iter()
        .find(|r| r.kind == RuleKind::Lookup && r.table != RT_TABLE_LOCAL)
        .map(|r| r.table);
    (rules.iter().map(|r| r.text()).collect(), first)
}

/// `route_table` and `route_rule` for a verdict's evidence.
pub fn evidence(dec: Option<&Decision>) -> (Value, Value) {
    (
        json!(dec.map(|d| d.table)),
        dec.map(Decision::evidence).unwrap_or(Value::Null),
    )
}
