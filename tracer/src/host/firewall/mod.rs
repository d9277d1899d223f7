//! A namespace's firewall ruleset, with the per-rule counters at the time
//! it was read: what `netfilter_drop` needs to name the rule that dropped
//! a packet without a kprobe and without adding anything to the ruleset.
//!
//! Three sources, each read inside the namespace by the tool that owns
//! its format, so a rule is shown exactly as its user wrote it:
//! - iptables-nft: `iptables-nft-save -c` / `ip6tables-nft-save -c`;
//! - iptables-legacy: `iptables-legacy-save -c` / `ip6tables-legacy-save -c`,
//!   only where the legacy tables are loaded (`ip_tables_names` of the
//!   reading thread's namespace: `/proc/thread-self/net`, since
//!   `/proc/net` is the main thread's), so reading never loads a module;
//! - native nftables: `nft -j list ruleset` (see [`nft`]), when `nft` is
//!   installed. Tables that iptables-nft owns are left to the first source.
//!
//! Reading changes nothing: every command only lists.

pub mod iptables;
pub mod nft;
pub mod nftrace;
pub mod vmap;
pub mod walk;

use super::netns::{self, NetnsInfo};
use serde::{Deserialize, Serialize};
use std::process::Command;

/// Which tool manages a chain (and so which tool prints and edits it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    IptablesNft,
    IptablesLegacy,
    Nftables,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::IptablesNft => "iptables-nft",
            Source::IptablesLegacy => "iptables-legacy",
            Source::Nftables => "nftables",
        }
    }
}

/// A packet or byte counter pair, as read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// One rule, in its chain's order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FwRule {
    /// 1-based, as `iptables -L --line-numbers` and `-D CHAIN N` count.
    pub position: u32,
    /// The nftables handle (`nft -a`); None for iptables-legacy.
    pub handle: Option<u64>,
    /// As the managing tool prints it (`-A CHAIN ...`, or nft's text).
    pub text: String,
    pub comment: Option<String>,
    /// What the rule does when it matches: `DROP`, `REJECT`, `ACCEPT`,
    /// `RETURN`, or the chain it jumps (or goes) to. None: it only
    /// counts, logs or marks.
    pub target: Option<String>,
    /// `-g` / `goto`: the jump does not come back.
    #[serde(default)]
    pub goto: bool,
    /// None where the rule counts nothing (an nftables rule without a
    /// `counter`).
    pub counter: Option<Counter>,
    /// A verdict map whose elements decide (`vmap`): nftables only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmap: Option<vmap::Vmap>,
    /// The sets the rule matches the packet against (`ip daddr @blocklist
    /// drop`): it drops only packets in each of them. nftables only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sets: Vec<vmap::Vmap>,
}

impl FwRule {
    /// The rule ends the packet here.
    pub fn drops(&self) -> bool {
        matches!(self.target.as_deref(), Some("DROP") | Some("REJECT"))
    }
}

/// One chain: a base chain (`hook` set) or a user chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FwChain {
    pub source: Source,
    /// `ip`, `ip6` or (native nftables) `inet`, `bridge`, `netdev`, `arp`.
    pub family: String,
    pub table: String,
    pub name: String,
    /// prerouting, input, forward, output, postrouting; None for a user chain.
    pub hook: Option<String>,
    /// A base chain's policy (`ACCEPT` / `DROP`).
    pub policy: Option<String>,
    /// The packets the policy decided (iptables only).
    pub policy_counter: Option<Counter>,
    pub rules: Vec<FwRule>,
}

/// Every chain of a namespace, with when it was read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ruleset {
    /// Wall clock (ns) when the read began: a counter read then includes
    /// every drop the kernel reported before it.
    pub read_ns: u64,
    pub chains: Vec<FwChain>,
    /// Sources that could not be read (tool missing or failing), so a
    /// verdict can say what it could not see.
    #[serde(default)]
    pub unread: Vec<String>,
}

impl Ruleset {
    pub fn chain(&self, source: Source, family: &str, table: &str, name: &str) -> Option<&FwChain> {
        self.chains.iter().find(|c| {
            c.source == source && c.family == family && c.table == table && c.name == name
        })
    }
}

/// Reads the ruleset of `ns` (every source present), stamped `read_ns`.
pub fn read(ns: &NetnsInfo, read_ns: u64) -> std::io::Result<Ruleset> {
    netns::run_in(&ns.path, move || read_here(read_ns))
}

/// Must run on a thread inside the namespace: the tools it starts are
/// forked from this thread, so they inherit its network namespace.
fn read_here(read_ns: u64) -> Ruleset {
    let mut rs = Ruleset {
        read_ns,
        ..Ruleset::default()
    };
    for (tool, family) in [("iptables-nft-save", "ip"), ("ip6tables-nft-save", "ip6")] {
        match run(tool, &["-c"]) {
            Some(out) => rs
                .chains
                .extend(iptables::parse(&out, Source::IptablesNft, family)),
            None => rs.unread.push(tool.to_string()),
        }
    }
    for (tool, family, names) in [
        (
            "iptables-legacy-save",
            "ip",
            "/proc/thread-self/net/ip_tables_names",
        ),
        (
            "ip6tables-legacy-save",
            "ip6",
            "/proc/thread-self/net/ip6_tables_names",
        ),
    ] {
        // No legacy table loaded in this namespace: nothing to read, and
        // running the tool could load the module.
        let loaded = std::fs::read_to_string(names).is_ok_and(|s| !s.trim().is_empty());
        if !loaded {
            continue;
        }
        match run(tool, &["-c"]) {
            Some(out) => rs
                .chains
                .extend(iptables::parse(&out, Source::IptablesLegacy, family)),
            None => rs.unread.push(tool.to_string()),
        }
    }
    let json = run("nft", &["-j", "-a", "list", "ruleset"]);
    let text = run("nft", &["-a", "list", "ruleset"]);
    match json.zip(text) {
        Some((json, text)) => {
            let owned: Vec<(String, String)> = rs
                .chains
                .iter()
                .filter(|c| c.source == Source::IptablesNft)
                .map(|c| (c.family.clone(), c.table.clone()))
                .collect();
            match nft::parse(&json, &text, &owned) {
                Ok(chains) => rs.chains.extend(chains),
                Err(e) => rs.unread.push(format!("nft: {e}")),
            }
        }
        None => rs.unread.push("nft".to_string()),
    }
    rs
}

/// A listing tool's output; None when it is missing or fails.
fn run(tool: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(tool)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8(out.stdout).ok()
}
