//! Plan -> attach: the checked options become the kernel filter, the
//! outputs are opened, the probes load and attach, and the `ready` line
//! says so.

use super::consumer::Session;
use super::options::{self, Plan, TraceOptions};
use crate::events::namer::Namer;
use crate::filter;
use crate::host::containers::{Containers, Starting};
use crate::host::netns;
use crate::host::topology::Topology;
use crate::kernel::btf::{KernelBtf, Reasons};
use crate::kernel::probes::{ProbeConfig, Probes};
use crate::sinks::pcapng::PcapSink;
use crate::sinks::{Format, Output};
use anyhow::{anyhow, Result};
use serde::Serialize;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tracer_abi::Config;

#[derive(Serialize)]
struct Ready<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    hook: String,
    routes: bool,
    syn_check: bool,
    neigh: bool,
    netns: &'a [u32],
    filter: &'a str,
    startup_ms: f64,
}

/// A loaded, attached tracer with its session state.
pub struct Tracer {
    pub(super) probes: Probes,
    pub session: Session,
    pub(super) duration: Option<Duration>,
    pub(super) count: Option<u64>,
    started: Instant,
    pub(super) stop: Option<std::sync::Arc<tokio::sync::Notify>>,
    /// Taken before `ready` is printed, so a signal sent the moment a
    /// caller sees it still ends the run with a summary.
    pub(super) signals: Signals,
    /// Bytes of the record sent before each drop when capturing (0 if not):
    /// the ring then holds fewer drops (see `--count`).
    pub(super) extra_bytes: u64,
}

/// The signals that end a run with its summary.
pub(super) struct Signals {
    pub term: Signal,
    pub int: Signal,
    /// A dropped SSH session: end with the summary, as on SIGTERM.
    pub hup: Signal,
}

/// Everything checked and resolved before the probes load.
struct Planned {
    filter: filter::Filter,
    config: Config,
    include: Vec<u32>,
    exclude: Vec<u32>,
    reasons: Reasons,
    kbtf: KernelBtf,
    /// aya's own parse of the kernel BTF, on a second core.
    aya_btf: std::thread::JoinHandle<Result<aya::Btf, aya::BtfError>>,
    /// aya's loader, made on another (see [`crate::kernel::probes::new_loader`]).
    loader: std::thread::JoinHandle<aya::EbpfLoader<'static>>,
    topology: Topology,
    containers: Starting,
    own_netns: u32,
    /// The namespaces traced (empty: all).
    inodes: Vec<u32>,
}

impl Tracer {
    /// Validates every option (one clear error per bad input), then loads
    /// and attaches. `diagnose` adds the route, SYN and neighbour probes.
    pub fn start(opts: &TraceOptions, diagnose: bool, started: Instant) -> Result<Tracer> {
        let p = plan(opts, diagnose)?;
        let format = opts.format.unwrap_or(Format::Text);
        let (pcap, out) = open_outputs(opts, format, p.own_netns)?;
        let aya_btf = p
            .aya_btf
            .join()
            .map_err(|_| anyhow!("reading kernel BTF failed"))?
            .map_err(|e| anyhow!("cannot read kernel BTF: {e}"))?;
        let loader = p
            .loader
            .join()
            .map_err(|_| anyhow!("making the eBPF loader failed"))?;
        let mut probes = Probes::load(
            &p.kbtf,
            &aya_btf,
            &ProbeConfig {
                config: p.config,
                include_reasons: p.include,
                exclude_reasons: p.exclude,
                hook: opts.hook,
                drop_reasons: !p.reasons.is_empty(),
            },
            loader,
        )?;
        let mut namer = Namer::loading_symbols(p.reasons, p.topology);
        namer.containers = p.containers.ready(Duration::from_millis(1500));
        namer.routes = probes.take_routes();
        let mut session = Session::new(namer, out, p.own_netns, p.filter);
        session.netns = p.inodes;
        session.pcap = pcap;
        session.stack = opts.stack;
        session.show_noise = opts.all;
        let mut t = Tracer {
            probes,
            session,
            duration: opts.duration,
            count: opts.count,
            started,
            stop: None,
            signals: Signals {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
                hup: signal(SignalKind::hangup())?,
            },
            extra_bytes: extra_bytes(&p.config),
        };
        t.announce()?;
        Ok(t)
    }

    fn announce(&mut self) -> Result<()> {
        let startup_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        let s = &mut self.session;
        for w in &self.probes.warnings {
            eprintln!("tracer: warning: {w}");
        }
        if s.out.format == Format::Json {
            s.out.json(&Ready {
                kind: "ready",
                hook: self.probes.hook.to_string(),
                routes: self.probes.routes_attached,
                syn_check: self.probes.syn_attached,
                neigh: self.probes.neigh_attached,
                netns: &s.netns,
                filter: &s.filter.text,
                startup_ms,
            })?;
            s.out.flush()?;
        } else {
            let scope = if s.netns.is_empty() {
                "all namespaces".to_string()
            } else {
                let names: Vec<String> = s
                    .netns
                    .iter()
                    .map(|n| s.out.netns_label(*n, &s.namer.topology.netns_name(*n)))
                    .collect();
                format!("netns {}", names.join(", "))
            };
            eprintln!(
                "tracer: attached to skb:kfree_skb ({}) in {startup_ms:.0} ms, watching {scope}{}; Ctrl-C to stop",
                self.probes.hook,
                if s.filter.is_empty() {
                    String::new()
                } else {
                    format!(" for '{}'", s.filter.text)
                }
            );
        }
        Ok(())
    }

    /// The drop hook that attached (`tp_btf`, `raw_tp`, `tracepoint`).
    pub fn hook(&self) -> String {
        self.probes.hook.to_string()
    }

    /// Also stop when `n` is notified (the lab stops when its traffic ends).
    pub fn stop_on(&mut self, n: std::sync::Arc<tokio::sync::Notify>) {
        self.stop = Some(n);
    }
}

/// Options -> plan, in the order the errors should come: user input
/// first (typos fail fast and without root), then what the kernel's BTF
/// and the host's interfaces say.
fn plan(opts: &TraceOptions, diagnose: bool) -> Result<Planned> {
    let filter = filter::compile(&opts.expr.join(" ")).map_err(|e| anyhow!("{e}"))?;
    let snaplen = options::snaplen(opts)?;
    let own_netns = netns::own_inode().map_err(|e| anyhow!("cannot read own netns: {e}"))?;
    let namespaces = options::namespaces(opts)?;
    // aya needs its own parse of the kernel BTF; do it on a second
    // core while we resolve names and offsets with btf-rs.
    let btf_path = opts
        .btf
        .clone()
        .unwrap_or_else(|| crate::kernel::btf::VMLINUX.into());
    let kbtf = KernelBtf::from_file(&btf_path)?;
    let aya_btf =
        std::thread::spawn(move || aya::Btf::parse_file(&btf_path, object::Endianness::default()));
    let loader = std::thread::spawn(crate::kernel::probes::new_loader);
    let reasons = kbtf.drop_reasons_or_none()?;
    let (include, exclude) = options::reason_lists(opts, &reasons)?;
    let mut topology = Topology::new();
    // Container names: the inventory runs while the programs load.
    let containers = Containers::start();
    let mut inodes: Vec<u32> = namespaces.iter().map(|n| n.inode).collect();
    let mut ifindex = 0;
    if let Some(ifname) = &opts.iface {
        let i = options::interface(ifname, &namespaces, own_netns, &mut topology)?;
        ifindex = i.ifindex;
        inodes = vec![i.netns];
    }
    // The watched namespaces' counters before any drop: the "before" of
    // an exhaustion or accept-queue verdict is a namespace's first full
    // read (`at_start`). Taken at the first drop instead, it came after a
    // whole episode in a slow guest, and then nothing had risen since.
    if diagnose {
        for &inode in &inodes {
            topology.get(inode);
        }
    }
    let config = Plan {
        opts,
        inodes: &inodes,
        ifindex,
        include: !include.is_empty(),
        exclude: !exclude.is_empty(),
        diagnose,
        snaplen,
        filter: &filter,
    }
    .config(&reasons, &kbtf)?;
    Ok(Planned {
        filter,
        config,
        include,
        exclude,
        reasons,
        kbtf,
        aya_btf,
        loader,
        topology,
        containers,
        own_netns,
        inodes,
    })
}

/// The pcapng file and the output, opened before attaching so a bad path
/// fails fast.
fn open_outputs(
    opts: &TraceOptions,
    format: Format,
    own_netns: u32,
) -> Result<(Option<PcapSink>, Output)> {
    let pcap = match &opts.pcap {
        Some(p) => Some(PcapSink::create(p, opts.existing)?),
        None => None,
    };
    let pcap_stdout = pcap.as_ref().is_some_and(|p| p.stdout);
    // `-w -` owns stdout: the lines go to stderr, as tcpdump's do.
    let out = match &opts.output_path {
        Some(p) => Output::to_log(p, opts.existing, opts.log_max, format, own_netns)?,
        None if pcap_stdout => Output::stderr(format, own_netns),
        None => Output::stdout(format, own_netns),
    };
    Ok((pcap, out))
}

/// Ring bytes each drop's extra record can take (0 when none is sent).
fn extra_bytes(config: &Config) -> u64 {
    if config.extra == 0 {
        0
    } else {
        (std::mem::size_of::<tracer_abi::DropExtra>() + tracer_abi::MAX_SNAPLEN as usize) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::netns::test_support::TestNs;
    use crate::host::topology::NsTopology;

    /// An exhaustion verdict compares the kernel's counters with a
    /// namespace's first full reading. `diagnose` takes it before `ready`,
    /// so what rises before its first drop is processed still counts:
    /// taken at the first drop, it came after a whole episode in a slow
    /// guest, and nothing had risen since. Here conntrack's entry count
    /// rises between the plan and the first look.
    #[test]
    fn diagnose_counts_its_namespaces_before_ready() {
        let ns = TestNs::new("first");
        ns.track_connections();
        let opts = TraceOptions {
            netns: vec![ns.name.clone()],
            ..Default::default()
        };
        let at_start = |t: &NsTopology| t.exhaustion.at_start.and_then(|b| b.conntrack_count);
        let mut diagnose = plan(&opts, true).unwrap();
        let mut watch = plan(&opts, false).unwrap();
        ns.sh("ping -c1 -W1 127.0.0.1 >/dev/null");
        let t = diagnose.topology.get(ns.inode).unwrap();
        assert_eq!(at_start(&t), Some(0), "diagnose read it before the entry");
        // `watch` has no verdict to compare for: its first read is now.
        let t = watch.topology.get(ns.inode).unwrap();
        assert_eq!(at_start(&t), Some(1));
    }
}
