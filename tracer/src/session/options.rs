//! Options -> plan: the user's flags checked one by one (one clear error
//! per bad input, before anything touches the kernel where possible) and
//! turned into the kernel's filter `Config`.

use crate::filter;
use crate::host::netns;
use crate::host::topology::Topology;
use crate::kernel::btf::{KernelBtf, Reasons};
use crate::kernel::probes::DropHook;
use crate::sinks::Format;
use anyhow::{anyhow, bail, Result};
use std::time::Duration;
use tracer_abi::{Config, EXTRA_PACKET, EXTRA_SKB, EXTRA_STACK, MAX_NETNS, MAX_SNAPLEN, NO_OFFSET};

/// What the user asked to trace (the flags `watch` and `diagnose` share).
#[derive(Clone, Debug, Default)]
pub struct TraceOptions {
    /// Filter expression words, joined with spaces.
    pub expr: Vec<String>,
    pub netns: Vec<String>,
    pub iface: Option<String>,
    pub reasons: Vec<String>,
    pub exclude_reasons: Vec<String>,
    /// Show the benign noise that is hidden by default.
    pub all: bool,
    pub duration: Option<Duration>,
    pub count: Option<u64>,
    pub hook: Option<DropHook>,
    pub format: Option<Format>,
    /// Kernel BTF to use instead of /sys/kernel/btf/vmlinux.
    pub btf: Option<std::path::PathBuf>,
    /// Send every drop as an event, even in a storm.
    pub no_aggregate: bool,
    /// Write the output (JSON lines or text) to this file instead of
    /// stdout.
    pub output_path: Option<std::path::PathBuf>,
    /// `output_path` moves to `PATH.1` past this many bytes.
    pub log_max: Option<u64>,
    /// What to do with an existing `output_path`, `pcap` or recording
    /// (`--force`, `--append`; refused by default).
    pub existing: crate::sinks::file::Existing,
    /// Write the dropped packets as pcapng here (`-` is stdout).
    pub pcap: Option<std::path::PathBuf>,
    /// Packet bytes to capture for `pcap` (default `DEFAULT_SNAPLEN`).
    pub snaplen: Option<u32>,
    /// Each drop's kernel stack.
    pub stack: bool,
    /// Follow matching packets through the host (`tracer trace`).
    pub trace: bool,
}

/// Bytes of each dropped packet written to pcapng unless --snaplen says
/// otherwise: every header of a TCP/UDP packet over IPv6 with options,
/// and the start of its payload.
pub const DEFAULT_SNAPLEN: u32 = 256;

/// Aggregation starts on a CPU that matched more drops than this in one
/// `AGG_WINDOW_NS` (100 ms): 10k drops/s per CPU, which userspace still
/// prints comfortably and the ring buffer (about 20k events) absorbs.
const AGG_BURST: u32 = 1000;
/// While aggregating, this many drops per key per CPU per second are still
/// sent in full (what `diagnose` and a reader need to see the flow).
const AGG_PER_KEY: u32 = 5;

/// The checked --snaplen: it means something only with -w.
pub(super) fn snaplen(opts: &TraceOptions) -> Result<u32> {
    let snaplen = opts.snaplen.unwrap_or(DEFAULT_SNAPLEN);
    if snaplen == 0 || snaplen > MAX_SNAPLEN {
        bail!("bad --snaplen {snaplen}: give 1 to {MAX_SNAPLEN} bytes");
    }
    if opts.snaplen.is_some() && opts.pcap.is_none() {
        bail!("--snaplen applies to the packets written with -w (pcapng): add -w FILE");
    }
    Ok(snaplen)
}

/// The --netns arguments resolved, each namespace once.
pub(super) fn namespaces(opts: &TraceOptions) -> Result<Vec<netns::NetnsInfo>> {
    let mut namespaces = Vec::new();
    for arg in &opts.netns {
        namespaces.push(netns::resolve(arg)?);
    }
    let namespaces = once_each(namespaces);
    if namespaces.len() > MAX_NETNS {
        bail!("too many --netns: the kernel filter takes at most {MAX_NETNS}");
    }
    Ok(namespaces)
}

/// Each namespace once, in the order first named: `--netns a --netns a`,
/// or a name and the inode of the same namespace, is one namespace (in
/// the kernel filter and the `ready` line).
fn once_each(namespaces: Vec<netns::NetnsInfo>) -> Vec<netns::NetnsInfo> {
    let mut seen = std::collections::HashSet::new();
    namespaces
        .into_iter()
        .filter(|n| seen.insert(n.inode))
        .collect()
}

/// The codes of --reason and --exclude-reason; a reason in both is an
/// error.
pub(super) fn reason_lists(opts: &TraceOptions, reasons: &Reasons) -> Result<(Vec<u32>, Vec<u32>)> {
    let include = reasons.parse_list("--reason", &opts.reasons)?;
    let exclude = reasons.parse_list("--exclude-reason", &opts.exclude_reasons)?;
    if let Some(both) = include.iter().find(|c| exclude.contains(c)) {
        bail!(
            "{} is both included (--reason) and excluded (--exclude-reason)",
            reasons.name(*both)
        );
    }
    Ok((include, exclude))
}

/// Where `-i` points: the interface's index, in the one namespace it
/// limits the run to.
pub(super) struct Interface {
    pub ifindex: u32,
    pub netns: u32,
}

/// Resolves `-i` (a name or an index) in the single --netns, or in
/// tracer's own netns: an ifindex means nothing without its netns.
pub(super) fn interface(
    ifname: &str,
    namespaces: &[netns::NetnsInfo],
    own_netns: u32,
    topology: &mut Topology,
) -> Result<Interface> {
    if namespaces.len() > 1 {
        bail!("-i needs a single --netns to name the interface in");
    }
    let inode = namespaces.first().map(|n| n.inode).unwrap_or(own_netns);
    let label = namespaces
        .first()
        .and_then(|n| n.name.clone())
        .unwrap_or_else(|| {
            if inode == own_netns {
                "host".to_string()
            } else {
                inode.to_string()
            }
        });
    let topo = topology
        .get(inode)
        .ok_or_else(|| anyhow!("cannot read the interfaces of netns {label}"))?;
    // An ifindex works too, as with `ip link show 8`.
    let link = match ifname.parse::<i32>() {
        Ok(index) if index > 0 => topo.link(index),
        _ => topo.link_by_name(ifname),
    };
    let Some(link) = link else {
        bail!(
            "unknown interface '{ifname}' in netns {label}{}",
            elsewhere(topology, ifname, inode)
        );
    };
    Ok(Interface {
        ifindex: link.ifindex as u32,
        netns: inode,
    })
}

/// Where else an interface of that name lives, as a hint for `-i`: the
/// user probably meant a namespace's interface without `--netns`.
fn elsewhere(topology: &mut Topology, ifname: &str, searched: u32) -> String {
    let found: Vec<String> = netns::list_fresh()
        .into_iter()
        .filter(|n| n.inode != searched)
        .filter(|n| {
            topology
                .get(n.inode)
                .is_some_and(|t| t.link_by_name(ifname).is_some())
        })
        .map(|n| n.label())
        .take(3)
        .collect();
    match found.first() {
        None => String::new(),
        Some(first) => format!(
            " (an interface of that name is in netns {}: add --netns {})",
            found.join(", "),
            shlex::try_quote(first).unwrap_or_default()
        ),
    }
}

/// What the kernel filter is built from, checked.
pub(super) struct Plan<'a> {
    pub opts: &'a TraceOptions,
    /// The namespaces to trace (empty: all); one with `-i`.
    pub inodes: &'a [u32],
    pub ifindex: u32,
    pub include: bool,
    pub exclude: bool,
    /// `diagnose`: also the route, SYN and neighbour probes.
    pub diagnose: bool,
    pub snaplen: u32,
    pub filter: &'a filter::Filter,
}

impl Plan<'_> {
    /// The kernel's `Config`: what to match, what to send, which probes.
    pub fn config(&self, reasons: &Reasons, kbtf: &KernelBtf) -> Result<Config> {
        let opts = self.opts;
        let mut config = Config::new();
        config.ifindex = self.ifindex;
        for (i, n) in self.inodes.iter().enumerate() {
            config.netns[i] = *n;
        }
        config.netns_count = self.inodes.len() as u32;
        config.reason_include = u32::from(self.include);
        config.reason_exclude = u32::from(self.exclude);
        config.hide_noise = u32::from(!opts.all);
        noise_reasons(&mut config, reasons);
        config.aggregate = u32::from(!opts.no_aggregate);
        config.agg_burst = AGG_BURST;
        config.agg_per_key = AGG_PER_KEY;
        config.routes = u32::from(self.diagnose);
        config.syn_check = u32::from(self.diagnose);
        config.neigh = u32::from(self.diagnose);
        config.filter = *self.filter.to_kernel();
        if opts.pcap.is_some() {
            config.extra |= EXTRA_PACKET;
            config.snaplen = self.snaplen;
            let o = kbtf.offsets()?;
            if [o.skb_mac_header, o.skb_tail, o.skb_data].contains(&NO_OFFSET) {
                bail!("this kernel's BTF lacks sk_buff.mac_header/tail/data: packets cannot be captured");
            }
        }
        if opts.stack {
            config.extra |= EXTRA_STACK;
        }
        if opts.trace {
            config.trace = 1;
            config.extra |= EXTRA_SKB;
        }
        Ok(config)
    }
}

/// The reason codes the kernel needs to hide noise, and to infer
/// fragment timeouts.
fn noise_reasons(config: &mut Config, reasons: &Reasons) {
    // Before 5.17 every drop carries reason 0: multicast nobody
    // listens to is still noise whatever its reason, the others need one.
    config.noise.not_specified = if reasons.is_empty() {
        0
    } else {
        reasons.code("NOT_SPECIFIED").unwrap_or(u32::MAX)
    };
    config.noise.no_socket = reasons.code("NO_SOCKET").unwrap_or(u32::MAX);
    config.noise.queue_purge = reasons.code("QUEUE_PURGE").unwrap_or(u32::MAX);
    config.frag_reason = reasons.code("FRAG_REASM_TIMEOUT").unwrap_or(u32::MAX);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_netns_is_listed_once() {
        let ns = |inode: u32, name: &str| netns::NetnsInfo {
            inode,
            name: Some(name.into()),
            path: format!("/run/netns/{name}").into(),
        };
        // By name twice, and once by a path to the same namespace.
        let got = once_each(vec![ns(7, "a"), ns(9, "b"), ns(7, "a"), ns(7, "x")]);
        let inodes: Vec<u32> = got.iter().map(|n| n.inode).collect();
        assert_eq!(inodes, [7, 9]);
    }
}
