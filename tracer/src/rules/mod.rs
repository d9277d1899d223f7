//! From facts to causes. Each rule turns facts (drops with the route
//! lookups joined to them, flagged SYNs, neighbour events) plus the
//! topology of the namespace into one kind of verdict: what happened, the
//! facts that prove it, and what to change.
//!
//! Layers, top to bottom (each only looks down):
//! - [`engine`]: feeds every fact to every rule, live or from a recording;
//! - the rules, one file per verdict kind; a rule never uses another
//!   rule (a test checks the imports), so each can be read alone;
//! - [`ctx`] (what a rule may use: topology, tallies, `conclude`) and
//!   [`fix`] (shell-quoted fix commands and the advice several rules
//!   share);
//! - [`facts`]: what several rules ask of the same records (reverse
//!   paths, where a peer arrives, forwarding, PMTU black holes), and the
//!   observations the engine keeps from every fact before any rule runs,
//!   so no rule's result depends on the order of [`all`].
//!
//! A rule needs no printer and no kernel: its tests feed it facts and a
//! topology built by hand. Rules never depend on names (docker0, eth0),
//! subnets or MTU values; only the advice may name a manager's knob.
//!
//! To add a verdict kind: one file with a type implementing [`Rule`], its
//! dedup key in [`key::Key`], and one line in [`all`]. What it shares with
//! other rules goes into [`facts`], never into another rule's file.

pub mod ctx;
pub mod engine;
pub mod facts;
pub mod fix;
pub mod key;

mod asymmetric_route;
mod bridge_port_blocked;
mod conntrack_table_full;
mod cpu_backlog_full;
mod forwarding_disabled;
mod fragment_timeout;
mod l2_mtu_mismatch;
mod listen_overflow;
mod martian;
mod misdelivered;
mod mss_exceeds_mtu;
mod neighbor_table_full;
mod neighbor_unreachable;
mod netfilter_drop;
mod no_route;
mod pmtu_blackhole;
mod port_closed;
mod qdisc_drop;
mod rpfilter_route_conflict;
mod socket_buffer_full;
mod tunnel_mtu;

#[cfg(test)]
pub(crate) mod testkit;

pub use ctx::{Ctx, TopologySource};
pub use engine::Engine;

use crate::events::record::{DropRecord, NeighRecord, SynRecord};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One typed fact, as a rule sees it. Route lookups arrive joined to the
/// drop they explain (`DropRecord::route` / `reverse_route`); topology is
/// asked for through [`TopologySource`], so a recording can supply it.
// Drops are most facts; boxing them would add an allocation per drop
// to save stack space that is only ever briefly used.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Fact {
    Drop(DropRecord),
    /// A forwarded or sent SYN whose MSS the egress MTU cannot carry.
    Syn(SynRecord),
    Neigh(NeighRecord),
}

impl Fact {
    pub fn ts_ns(&self) -> u64 {
        match self {
            Fact::Drop(d) => d.ts_ns,
            Fact::Syn(s) => s.ts_ns,
            Fact::Neigh(n) => n.ts_ns,
        }
    }
}

/// What a rule does with facts. Rules only talk to the world through
/// [`Ctx`]: they cannot print, and they see time only as `cx.now_ns`.
pub trait Rule {
    /// The verdict kinds this rule concludes (each must have a recorded
    /// run that the replay tests prove it from).
    fn kinds(&self) -> &'static [&'static str];
    fn on_fact(&mut self, fact: &Fact, cx: &mut Ctx);
    /// About every 250 ms (of fact time on a replay), for conclusions that
    /// need time to pass, and to bound per-flow memory.
    fn tick(&mut self, _cx: &mut Ctx) {}
    /// Once, at the end of the run.
    fn finish(&mut self, _cx: &mut Ctx) {}
}

/// Every rule, in dispatch order. The order only decides which of two
/// verdicts concluded on the same fact is printed first: what each rule
/// concludes does not depend on it (a test runs them reversed).
pub fn all() -> Vec<Box<dyn Rule>> {
    vec![
        Box::new(rpfilter_route_conflict::RpFilterRouteConflict),
        Box::new(asymmetric_route::AsymmetricRoute),
        Box::new(neighbor_unreachable::NeighborUnreachable),
        Box::new(pmtu_blackhole::PmtuBlackhole),
        Box::new(mss_exceeds_mtu::MssExceedsMtu::default()),
        Box::new(l2_mtu_mismatch::L2MtuMismatch),
        Box::new(netfilter_drop::NetfilterDrop::default()),
        Box::new(no_route::NoRoute),
        Box::new(forwarding_disabled::ForwardingDisabled),
        Box::new(misdelivered::Misdelivered),
        Box::new(port_closed::PortClosed),
        Box::new(qdisc_drop::QdiscDrop),
        Box::new(socket_buffer_full::SocketBufferFull),
        Box::new(martian::Martian),
        Box::new(bridge_port_blocked::BridgePortBlocked),
        Box::new(tunnel_mtu::TunnelMtu),
        Box::new(listen_overflow::ListenOverflow),
        Box::new(fragment_timeout::FragmentTimeout::default()),
        Box::new(conntrack_table_full::ConntrackTableFull::default()),
        Box::new(neighbor_table_full::NeighborTableFull::default()),
        Box::new(cpu_backlog_full::CpuBacklogFull::default()),
    ]
}

/// How sure a verdict is. Only `proven` may call something a fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Worth knowing, not a fault (a closed port refuses, it does not lose).
    Info,
    /// A configuration that breaks traffic under conditions not seen here.
    Suspected,
    /// The facts seen here prove that packets die for this cause.
    Proven,
}

impl Tier {
    /// A conclusion (proven, or information), not a suspicion still
    /// waiting for its proof.
    pub fn concluded(self) -> bool {
        self != Tier::Suspected
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Info => "info",
            Tier::Suspected => "suspected",
            Tier::Proven => "proven",
        }
    }
}

/// One cause, printed when concluded (and again if later proven) and
/// counted afterwards.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    #[serde(rename = "type")]
    pub kind_type: &'static str,
    pub kind: &'static str,
    pub tier: Tier,
    pub netns: u32,
    pub netns_name: Option<String>,
    /// The container whose namespace `netns` is, if any; else, for a
    /// verdict about connections that conntrack translated (a Docker
    /// host's MASQUERADE), the container that opened them.
    pub container: Option<crate::host::containers::ContainerRef>,
    /// `container` opened the connections this verdict is about, through
    /// NAT; the verdict's namespace is another (the host's, a router's).
    #[serde(skip)]
    pub container_by_nat: bool,
    /// In a container: the host-side veth of the interface concerned.
    pub host_ifname: Option<String>,
    pub summary: String,
    pub evidence: Map<String, Value>,
    pub fix: Vec<String>,
    /// The shell commands that apply each entry of `fix`, in its order
    /// (empty where that fix is advice only), each prefixed to run in the
    /// verdict's namespace.
    pub fix_commands: Vec<Vec<String>>,
    /// Drops (SYNs for mss_exceeds_mtu) attributed to this cause when it
    /// was printed.
    pub drops: u64,
    /// Milliseconds from the first drop (or SYN) of this cause to the verdict.
    pub latency_ms: f64,
    /// True only for proven faults.
    pub fault: bool,
    /// When a fact last counted towards this cause (the conclusion, or a
    /// later drop of it): what `tracer agent` calls still active.
    #[serde(skip)]
    pub last_ns: u64,
    /// When the flow this verdict is about was first seen (wall ns), for
    /// verdicts about one flow.
    pub first_seen_ns: Option<u64>,
    /// The flow began before the latest change of this namespace's
    /// topology (routes, links, MTUs, sysctls, nftables ruleset): its
    /// packets may still show a problem that a change has since fixed.
    pub stale: bool,
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// In every stored verdict, `fix_commands` has one list per fix, and
    /// each command is shown verbatim in its fix's text: what a script
    /// runs is what the user reads.
    #[test]
    fn every_fix_shows_the_commands_that_apply_it() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/expected");
        let mut seen = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_none_or(|x| x != "json") {
                continue;
            }
            for line in std::fs::read_to_string(&p).unwrap().lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                if v["type"] != "verdict" {
                    continue;
                }
                let fix = v["fix"].as_array().unwrap();
                let cmds = v["fix_commands"].as_array().unwrap();
                assert_eq!(fix.len(), cmds.len(), "{}: {line}", p.display());
                for (f, c) in fix.iter().zip(cmds) {
                    for c in c.as_array().unwrap() {
                        let c = c.as_str().unwrap();
                        let shown = f.as_str().unwrap();
                        // The FORWARD twin of a PMTU OUTPUT rule is shown
                        // as "(and in FORWARD)".
                        let twin = c.replace(" -I FORWARD ", " -I OUTPUT ");
                        assert!(
                            shown.contains(c) || shown.contains(&twin),
                            "{}: {c:?} not in {shown:?}",
                            p.display()
                        );
                        seen += 1;
                    }
                }
            }
        }
        assert!(seen >= 8, "{seen}");
    }

    /// Rules never import rules: what several need lives in `facts` or
    /// `ctx`, below all of them. Only this file (which lists them) and the
    /// engine (which runs them) may name a rule's module.
    #[test]
    fn no_rule_uses_another_rule() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/rules");
        let not_rules = ["mod", "engine", "ctx", "fix", "key", "testkit", "facts"];
        let mut files = Vec::new();
        for sub in [dir.clone(), dir.join("facts")] {
            for e in std::fs::read_dir(&sub).unwrap() {
                let p = e.unwrap().path();
                if p.extension().is_some_and(|x| x == "rs") {
                    files.push(p);
                }
            }
        }
        let rules: Vec<String> = files
            .iter()
            .filter(|p| p.parent() == Some(dir.as_path()))
            .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
            .filter(|n| !not_rules.contains(&n.as_str()))
            .collect();
        assert!(rules.len() >= 12, "{rules:?}");
        for f in &files {
            let name = f.file_name().unwrap().to_string_lossy();
            if f.parent() == Some(dir.as_path()) && (name == "mod.rs" || name == "engine.rs") {
                continue;
            }
            let text = std::fs::read_to_string(f).unwrap();
            for r in &rules {
                for used in [
                    format!("super::{r}::"),
                    format!("super::{r};"),
                    format!("super::{r}::{{"),
                    format!("rules::{r}::"),
                    format!("rules::{r};"),
                ] {
                    assert!(
                        !text.contains(&used),
                        "{} uses the rule {r} ({used})",
                        f.display()
                    );
                }
            }
        }
    }
}
