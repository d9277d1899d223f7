//! The command line: clap definitions and dispatch. `main.rs` only calls
//! `run` and turns an error into one line and an exit code.

use crate::kernel::probes::DropHook;
use crate::session::{TraceOptions, Tracer};
use crate::sinks::file::Existing;
use crate::sinks::Format;
use crate::watch::Printer;
use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    name = "tracer",
    version = crate::version::SHORT,
    long_version = crate::version::LONG,
    about = "Why did the kernel drop my packet? Traces every drop with its reason, and proves the cause.",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Stream every packet the kernel drops, with reason, place, netns, device and flow.
    Watch(WatchArgs),
    /// Follow matching packets through the host (tracepoints only), hop by hop, to their drop or delivery.
    Trace(WatchArgs),
    /// Watch drops, route lookups and SYNs, and print each root cause as soon as it is proven.
    Diagnose(DiagnoseArgs),
    /// Run the diagnosis long-running for a fleet: Prometheus metrics on
    /// --metrics-addr, verdicts as JSON lines to --log.
    Agent(AgentArgs),
    /// Rebuild an incident in throwaway namespaces and diagnose it live.
    Lab {
        #[command(subcommand)]
        command: LabCommand,
    },
    /// Preflight: what this kernel offers (BTF, each hook, drop reasons, tracefs, capabilities).
    Check {
        #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
        output: Format,
        /// Kernel BTF file (default /sys/kernel/btf/vmlinux).
        #[arg(long, value_name = "PATH")]
        btf: Option<PathBuf>,
    },
    /// List this kernel's drop reasons (from its BTF).
    Reasons {
        #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
        output: Format,
        /// Kernel BTF file (default /sys/kernel/btf/vmlinux).
        #[arg(long, value_name = "PATH")]
        btf: Option<PathBuf>,
    },
    /// Print the shell completion script for SHELL (e.g. `tracer completions bash > /etc/bash_completion.d/tracer`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), made from these same definitions (`tracer man | man -l -`).
    #[command(hide = true)]
    Man {
        /// Write tracer.1 and a page per subcommand (tracer-watch.1 ...) into DIR instead.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum LabCommand {
    /// List the labs.
    List {
        #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
        output: Format,
    },
    /// Build a lab, run its traffic under `diagnose`, print the verdict, tear it down.
    Run {
        /// A name from `tracer lab list`, or `all` to run every lab in turn.
        name: String,
        /// Leave the namespaces in place afterwards (remove them with `tracer lab clean`).
        #[arg(long)]
        keep: bool,
        #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
        output: Format,
        /// Record the diagnosis to FILE (see `diagnose --replay`); one lab only.
        #[arg(short = 'w', long = "write", value_name = "FILE")]
        write: Option<PathBuf>,
        /// Overwrite an existing -w FILE (never through a symlink, never another user's file).
        #[arg(long)]
        force: bool,
        /// Build the IPv6 variant (overlay and PMTU labs).
        #[arg(long)]
        ipv6: bool,
    },
    /// Remove every lab namespace (trlab-*) that a killed run left behind.
    Clean,
}

/// Flags shared by `watch` and `diagnose`.
#[derive(Args, Debug, Clone)]
pub struct TraceArgs {
    /// Packet filter, tcpdump-like: host, net A/N, port, portrange, src/dst,
    /// tcp/udp/icmp/icmp6/ip/ip6, and/or/not, parentheses.
    #[arg(value_name = "EXPR")]
    pub expr: Vec<String>,
    /// Only drops in this network namespace: a name in /run/netns, a path, or an inode (repeatable).
    #[arg(long, value_name = "NAME|PATH|INODE")]
    pub netns: Vec<String>,
    /// Only drops on (or arriving through) this interface (name or ifindex) of --netns (default: tracer's own netns).
    #[arg(short = 'i', long = "interface", value_name = "IFNAME|IFINDEX")]
    pub interface: Option<String>,
    /// Only these drop reasons (comma-separated, e.g. IP_RPFILTER,NO_SOCKET).
    #[arg(long = "reason", value_name = "R,...")]
    pub reason: Vec<String>,
    /// Never these drop reasons.
    #[arg(long = "exclude-reason", value_name = "R,...")]
    pub exclude_reason: Vec<String>,
    /// Also show known benign noise (socket queue purges, unheard multicast, ping replies).
    #[arg(short = 'a', long)]
    pub all: bool,
    #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
    pub output: Format,
    /// Stop after this long (10s, 2m, 500ms; a bare number is seconds).
    #[arg(short = 'd', long, value_name = "D", value_parser = parse_duration_arg, allow_hyphen_values = true)]
    pub duration: Option<Duration>,
    /// Stop after this many drops (1 or more).
    #[arg(short = 'c', long, value_name = "N", value_parser = parse_count_arg, allow_hyphen_values = true)]
    pub count: Option<u64>,
    /// Attach the drop probe this way instead of trying tp_btf, raw_tp, then the tracepoint.
    #[arg(long, value_enum, value_name = "HOOK")]
    pub hook: Option<DropHook>,
    /// Kernel BTF file, for kernels that keep it elsewhere (default /sys/kernel/btf/vmlinux).
    #[arg(long, value_name = "PATH")]
    pub btf: Option<PathBuf>,
    /// Print every drop even in a storm (by default, past ~10k drops/s per CPU the
    /// kernel sends the first few per key each second and counts the rest by key).
    #[arg(long)]
    pub no_aggregate: bool,
    /// Bytes of each dropped packet written by -w/--pcap (1 to 4096; default 256).
    #[arg(long, value_name = "BYTES")]
    pub snaplen: Option<u32>,
    /// Show each drop's kernel stack (JSON `stack`; text: one `at` line per frame).
    #[arg(long)]
    pub stack: bool,
    /// Overwrite an existing -w/--pcap FILE (never through a symlink, never
    /// another user's file); without it an existing file is refused.
    #[arg(long)]
    pub force: bool,
}

/// `watch`: the trace flags, plus pcapng output.
#[derive(Args, Debug, Clone)]
pub struct WatchArgs {
    #[command(flatten)]
    pub trace: TraceArgs,
    /// Write the dropped packets as pcapng to FILE (`-` for stdout, e.g. `| tshark -r -`;
    /// the text/JSON lines then go to stderr).
    #[arg(
        short = 'w',
        long = "write",
        visible_alias = "pcap",
        value_name = "FILE"
    )]
    pub write: Option<PathBuf>,
}

/// `tracer agent`.
#[derive(Args, Debug, Clone)]
pub struct AgentArgs {
    /// Serve GET /metrics and /healthz on this HOST:PORT (e.g. 0.0.0.0:9431).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: String,
    /// Only drops in this network namespace: a name in /run/netns, a path, or an inode (repeatable).
    #[arg(long, value_name = "NAME|PATH|INODE")]
    pub netns: Vec<String>,
    /// Write verdicts (JSON lines) to FILE (created 0600); `-` is stdout.
    #[arg(long, value_name = "FILE|-", default_value = "-")]
    pub log: String,
    /// Append to an existing --log FILE (only a regular file of the agent's
    /// own user, never through a symlink); without it an existing file is refused.
    #[arg(long)]
    pub append: bool,
    /// Also log every drop sent in full, storm aggregates, SYN and neighbour context.
    #[arg(long)]
    pub log_drops: bool,
    /// Past this size (e.g. 100MB) the --log FILE becomes FILE.1 and a new one starts.
    #[arg(long, value_name = "SIZE", default_value = "100MB", value_parser = parse_size_arg)]
    pub log_max: u64,
    /// Keep a rolling recording (what `diagnose -w` writes) in DIR, for
    /// `diagnose --replay DIR` after an outage; created 0700 if missing.
    #[arg(long, value_name = "DIR")]
    pub record_dir: Option<PathBuf>,
    /// The most the --record-dir files hold (e.g. 200MB, 1GiB); the oldest go first.
    #[arg(long, value_name = "SIZE", default_value = "200MB", value_parser = parse_size_arg, requires = "record_dir")]
    pub record_max: u64,
    /// Labels of tracer_drops_total, comma-separated; those left out stay empty.
    #[arg(
        long,
        value_name = "L,...",
        default_value = "reason,netns,container,ifname",
        value_parser = parse_labels_arg
    )]
    pub drop_labels: crate::agent::DropLabelChoice,
    /// Series per labelled metric; label sets past that are counted with netns/container/ifname "other".
    #[arg(long, value_name = "N", default_value_t = 500, value_parser = parse_series_arg)]
    pub max_series: usize,
    /// A cause is active (tracer_verdict_active) this long after its last drop.
    #[arg(long, value_name = "D", default_value = "5m", value_parser = parse_duration_arg)]
    pub active_window: Duration,
    /// Remove a series that has not grown for this long.
    #[arg(long, value_name = "D", default_value = "1h", value_parser = parse_duration_arg)]
    pub series_idle: Duration,
    /// Attach the drop probe this way instead of trying tp_btf, raw_tp, then the tracepoint.
    #[arg(long, value_enum, value_name = "HOOK")]
    pub hook: Option<DropHook>,
    /// Kernel BTF file (default /sys/kernel/btf/vmlinux).
    #[arg(long, value_name = "PATH")]
    pub btf: Option<PathBuf>,
}

fn parse_labels_arg(s: &str) -> Result<crate::agent::DropLabelChoice, String> {
    crate::agent::DropLabelChoice::parse(s).map_err(|e| e.to_string())
}

fn parse_size_arg(s: &str) -> Result<u64, String> {
    let n = s
        .trim()
        .parse::<bytesize::ByteSize>()
        .map_err(|_| "give a size such as 200MB or 1GiB".to_string())?
        .as_u64();
    if n < crate::sinks::rolling::MIN_TOTAL {
        return Err(format!(
            "{s} is too small: at least {} KiB",
            crate::sinks::rolling::MIN_TOTAL / 1024
        ));
    }
    Ok(n)
}

fn parse_series_arg(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err("give a whole number of series, 1 or more".into()),
    }
}

impl AgentArgs {
    pub fn options(&self) -> crate::agent::AgentOptions {
        crate::agent::AgentOptions {
            metrics_addr: self.metrics_addr.clone(),
            trace: TraceOptions {
                netns: self.netns.clone(),
                hook: self.hook,
                btf: self.btf.clone(),
                output_path: (self.log != "-").then(|| PathBuf::from(&self.log)),
                log_max: Some(self.log_max),
                existing: if self.append {
                    Existing::Append
                } else {
                    Existing::Refuse { flag: "--append" }
                },
                ..Default::default()
            },
            log_drops: self.log_drops,
            record: self.record_dir.clone().map(|d| (d, self.record_max)),
            labels: self.drop_labels,
            max_series: self.max_series,
            active_window: self.active_window,
            series_idle: self.series_idle,
        }
    }
}

fn parse_count_arg(s: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err("give a whole number of drops, 1 or more".into()),
    }
}

/// `diagnose`: the trace flags, plus recording and replay.
#[derive(Args, Debug, Clone)]
pub struct DiagnoseArgs {
    #[command(flatten)]
    pub trace: TraceArgs,
    /// Also record everything the diagnosis used to FILE (JSON lines).
    #[arg(
        short = 'w',
        long = "write",
        value_name = "FILE",
        conflicts_with = "replay"
    )]
    pub write: Option<PathBuf>,
    /// Diagnose a recording instead of the kernel (no root needed): a
    /// file of `-w`, or an agent's --record-dir; the capture flags were
    /// applied when it was recorded.
    #[arg(long, value_name = "FILE|DIR")]
    pub replay: Option<PathBuf>,
    /// Write the dropped packets as pcapng to FILE (`-` for stdout); here
    /// `-w` is the JSON recording, so pcapng has its own flag.
    #[arg(long, value_name = "FILE", conflicts_with = "replay")]
    pub pcap: Option<PathBuf>,
    /// Where rule counters cannot tell which nftables rule dropped a flow,
    /// trace the flow's next packet in the kernel (`nft monitor trace`)
    /// with a rule in a table of tracer's own that only marks packets for
    /// tracing, and that the kernel deletes when tracer exits, even on a
    /// crash (Linux 5.12+, needs nft).
    #[arg(long, conflicts_with = "replay")]
    pub nftrace: bool,
}

fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

/// Parses `10s`, `2m`, `500ms`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let t = s.trim();
    if let Ok(secs) = t.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Ok(Duration::from_secs_f64(secs));
        }
    }
    if t.starts_with('-') {
        anyhow::bail!("bad duration '{s}': it cannot be negative");
    }
    match humantime::parse_duration(t) {
        Ok(d) => Ok(d),
        Err(_) => anyhow::bail!("bad duration '{s}': use a value like 10s, 2m or 500ms"),
    }
}

impl TraceArgs {
    pub fn options(&self) -> TraceOptions {
        TraceOptions {
            expr: self.expr.clone(),
            netns: self.netns.clone(),
            iface: self.interface.clone(),
            reasons: self.reason.clone(),
            exclude_reasons: self.exclude_reason.clone(),
            all: self.all,
            duration: self.duration,
            count: self.count,
            hook: self.hook,
            format: Some(self.output),
            btf: self.btf.clone(),
            no_aggregate: self.no_aggregate,
            output_path: None,
            log_max: None,
            pcap: None,
            snaplen: self.snaplen,
            stack: self.stack,
            trace: false,
            existing: Existing::force(self.force),
        }
    }
}

/// The exit status of a `diagnose` run (live or `--replay`) that proved a
/// fault: distinct from 0 (ran, no fault proven), 1 (error) and 2 (bad
/// command line), so a script or CI job can tell them apart. Labs keep
/// their own statuses (non-zero when the lab's expectation failed).
pub const EXIT_FAULT_PROVEN: u8 = 3;

/// How a command that ran to its end came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Done; for `diagnose`, no fault proven.
    Done,
    /// `diagnose` proved at least one fault.
    FaultProven,
}

impl Outcome {
    pub fn of_faults(proven: bool) -> Outcome {
        if proven {
            Outcome::FaultProven
        } else {
            Outcome::Done
        }
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli, started: Instant) -> Result<Outcome> {
    match cli.command {
        Command::Diagnose(args) => diagnose(args, started),
        command => run_other(command, started).map(|()| Outcome::Done),
    }
}

fn diagnose(args: DiagnoseArgs, started: Instant) -> Result<Outcome> {
    if let Some(path) = &args.replay {
        return crate::diagnose::replay_cmd(path, args.trace.output).map(Outcome::of_faults);
    }
    if args.write.as_deref().is_some_and(|w| w.as_os_str() == "-")
        && args.pcap.as_deref().is_some_and(|w| w.as_os_str() == "-")
    {
        anyhow::bail!("-w - and --pcap - cannot both write to stdout");
    }
    let mut opts = args.trace.options();
    opts.pcap = args.pcap.clone();
    let rt = runtime()?;
    rt.block_on(crate::diagnose::live(
        &opts,
        args.write.as_deref(),
        args.nftrace,
        started,
    ))
    .map(Outcome::of_faults)
}

/// Every command but `diagnose`, whose status says more.
fn run_other(command: Command, started: Instant) -> Result<()> {
    match command {
        Command::Watch(args) => {
            let rt = runtime()?;
            rt.block_on(async {
                let mut opts = args.trace.options();
                opts.pcap = args.write.clone();
                let tracer = Tracer::start(&opts, false, started)?;
                tracer.run(&mut Printer).await?;
                Ok(())
            })
        }
        Command::Trace(args) => {
            if args.trace.expr.is_empty() {
                anyhow::bail!("trace needs a filter expression (e.g. 'tcp port 8080'): it follows only the packets that match");
            }
            let mut opts = args.trace.options();
            opts.pcap = args.write.clone();
            opts.trace = true;
            let rt = runtime()?;
            rt.block_on(async {
                let tracer = Tracer::start(&opts, false, started)?;
                tracer.run(&mut crate::trace::Tracker::default()).await?;
                Ok(())
            })
        }
        Command::Diagnose(args) => diagnose(args, started).map(drop),
        Command::Agent(args) => {
            // One worker for the HTTP server, so /healthz answers (503)
            // while the probes load on the main thread.
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?;
            rt.block_on(crate::agent::run(args.options(), started))
        }
        Command::Lab { command } => match command {
            LabCommand::List { output } => crate::lab::list(output),
            LabCommand::Run {
                name,
                keep,
                output,
                write,
                ipv6,
                force,
            } => {
                let params = if ipv6 {
                    crate::lab::incident::Params::ipv6()
                } else {
                    Default::default()
                };
                let write = write.as_deref().map(|w| (w, Existing::force(force)));
                crate::lab::run(&name, keep, output, params, write, started)
            }
            LabCommand::Clean => crate::lab::clean(),
        },
        Command::Check { output, btf } => crate::check::run(output, btf),
        Command::Reasons { output, btf } => reasons(output, btf),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "tracer", &mut std::io::stdout());
            Ok(())
        }
        Command::Man { dir } => {
            let cmd = <Cli as clap::CommandFactory>::command();
            match dir {
                Some(dir) => clap_mangen::generate_to(cmd, &dir)
                    .map_err(|e| anyhow::anyhow!("writing man pages into {}: {e}", dir.display())),
                None => Ok(clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?),
            }
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn reasons(format: Format, btf: Option<PathBuf>) -> Result<()> {
    let btf = crate::kernel::btf::KernelBtf::from_file(
        &btf.unwrap_or_else(|| crate::kernel::btf::VMLINUX.into()),
    )?;
    let reasons = btf.drop_reasons()?;
    let mut out = crate::sinks::Output::stdout(format, 0);
    for (code, name) in reasons.iter() {
        if format == Format::Json {
            out.json(&serde_json::json!({"type": "reason", "code": code, "name": name}))?;
        } else {
            out.line(&format!("{code:>8}  {name}"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        let e = parse_duration("soon").unwrap_err().to_string();
        assert!(e.contains("'soon'"), "{e}");
    }
}
