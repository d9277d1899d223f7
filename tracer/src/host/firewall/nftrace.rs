//! `--nftrace`: which nftables rule really dropped a flow, from the
//! kernel's own trace of the next packet of that flow, where counters
//! cannot tell the candidates apart (nftables rules may count nothing).
//!
//! Opt-in, and built so that it can never change a packet's fate or
//! outlive tracer:
//! - the trace rule is `meta nftrace set 1` and nothing else, in a table of
//!   tracer's own (`inet tracer_trace_PID`), in chains at priority -500
//!   (before raw), on prerouting and output, matching only the flow's
//!   addresses, protocol and port: it marks packets for tracing and
//!   never decides a verdict (its chains' policy is accept);
//! - the table has the `owner` flag (Linux 5.12+): it belongs to the
//!   netlink socket of one `nft -i` process that tracer keeps open and
//!   feeds on its stdin, so the kernel deletes the table the moment that
//!   process ends: on tracer's exit, on a crash or a kill -9 (its stdin
//!   closes). Nothing is left for a next start to clean up. Where the flag
//!   is refused, no trace is made and the verdict stays as counters say;
//! - the traces are read by `nft -a monitor trace` in the same namespace,
//!   line-buffered by `stdbuf -oL`
//!   (nft 1.0.6 prints traces as text only: the lines are of a fixed
//!   form, `trace id ID FAMILY TABLE CHAIN rule ... # handle N (verdict
//!   V)` or `... policy V`).
//!
//! iptables-legacy rules are not nftables rules and are never traced;
//! their counters always tell them apart.

use super::super::netns::{self, NetnsInfo};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};

/// The flow to trace: what the drop showed of it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TraceFlow {
    pub src: Option<IpAddr>,
    pub dst: IpAddr,
    /// IP protocol number.
    pub proto: u8,
    pub dport: Option<u16>,
}

impl TraceFlow {
    /// The nft match of the flow (every value is a number or an address:
    /// nothing here comes from a name).
    fn expr(&self) -> String {
        let fam = if self.dst.is_ipv4() { "ip" } else { "ip6" };
        let mut e = format!("{fam} daddr {}", self.dst);
        if let Some(s) = self.src.filter(|s| s.is_ipv4() == self.dst.is_ipv4()) {
            e = format!("{fam} saddr {s} {e}");
        }
        e.push_str(&format!(" meta l4proto {}", self.proto));
        if let (Some(p), 6 | 17 | 132 | 136) = (self.dport, self.proto) {
            e.push_str(&format!(" th dport {p}"));
        }
        e
    }
}

/// A rule or policy that ended a traced packet with drop or reject.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceHit {
    pub family: String,
    pub table: String,
    pub chain: String,
    /// The rule's handle; None for the chain's policy.
    pub handle: Option<u64>,
    pub verdict: String,
    /// The packet's destination and port, to tell traced flows apart.
    pub dst: Option<IpAddr>,
    pub dport: Option<u16>,
    /// The trace line as nft printed it.
    pub line: String,
}

/// One namespace's trace: the owner of the table, and the monitor.
struct Trace {
    nft: Child,
    stdin: ChildStdin,
    monitor: Child,
    hits: Arc<Mutex<Vec<TraceHit>>>,
    flows: Vec<TraceFlow>,
}

impl Drop for Trace {
    fn drop(&mut self) {
        // Ending `nft -i` closes its socket: the kernel deletes the
        // owned table with it.
        let _ = self.nft.kill();
        let _ = self.nft.wait();
        let _ = self.monitor.kill();
        let _ = self.monitor.wait();
    }
}

/// Every namespace's trace of this run.
#[derive(Default)]
pub struct NfTrace {
    traces: HashMap<u32, Trace>,
    /// Namespaces where tracing could not start, with why (tried once).
    pub failed: HashMap<u32, String>,
}

impl NfTrace {
    fn table() -> String {
        format!("tracer_trace_{}", std::process::id())
    }

    /// Starts tracing `flow` in `ns` (once per flow); then returns every
    /// drop or reject traced there so far.
    pub fn trace(&mut self, ns: &NetnsInfo, flow: &TraceFlow) -> Option<Vec<TraceHit>> {
        if self.failed.contains_key(&ns.inode) {
            return None;
        }
        let t = match self.traces.entry(ns.inode) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => match start(ns) {
                Ok(t) => v.insert(t),
                Err(e) => {
                    // Said once per namespace: the verdict stays as the
                    // counters leave it.
                    eprintln!("tracer: --nftrace in {}: {e}", ns.label());
                    self.failed.insert(ns.inode, e);
                    return None;
                }
            },
        };
        if !t.flows.contains(flow) {
            let table = Self::table();
            let e = flow.expr();
            let cmds = format!(
                "add rule inet {table} pre {e} meta nftrace set 1\nadd rule inet {table} out {e} meta nftrace set 1\n"
            );
            if t.stdin.write_all(cmds.as_bytes()).is_err() {
                return None;
            }
            let _ = t.stdin.flush();
            t.flows.push(flow.clone());
        }
        Some(t.hits.lock().ok()?.clone())
    }
}

/// The owned table and the monitor, started inside `ns`. The monitor
/// first, so no trace of the first traced packet is missed.
fn start(ns: &NetnsInfo) -> Result<Trace, String> {
    let table = NfTrace::table();
    let spawn = |args: &'static [&'static str], stdin: bool| {
        netns::run_in(&ns.path, move || {
            Command::new(args[0])
                .args(&args[1..])
                .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
                .stdout(if stdin { Stdio::null() } else { Stdio::piped() })
                .stderr(Stdio::null())
                .spawn()
        })
        .and_then(|r| r)
        .map_err(|e| format!("cannot run nft in {}: {e}", ns.label()))
    };
    // nft's stdout is block-buffered into a pipe: a trace would wait for
    // 4 kB of others. stdbuf (coreutils) makes it line-buffered.
    let mut monitor = spawn(&["stdbuf", "-oL", "nft", "-a", "monitor", "trace"], false)?;
    let hits = Arc::new(Mutex::new(Vec::new()));
    let out = monitor.stdout.take().ok_or("no monitor output")?;
    let sink = hits.clone();
    std::thread::Builder::new()
        .name("nftrace".into())
        .spawn(move || read_traces(out, &sink))
        .map_err(|e| e.to_string())?;
    let mut nft = spawn(&["nft", "-i"], true)?;
    let stdin = nft.stdin.take().ok_or("no stdin for nft -i")?;
    // From here on, dropping `t` ends both processes (and the table).
    let mut t = Trace {
        nft,
        stdin,
        monitor,
        hits,
        flows: Vec::new(),
    };
    let setup = format!(
        "add table inet {table} {{ flags owner; }}\n\
         add chain inet {table} pre {{ type filter hook prerouting priority -500; policy accept; }}\n\
         add chain inet {table} out {{ type filter hook output priority -500; policy accept; }}\n"
    );
    if t.stdin.write_all(setup.as_bytes()).is_err() || t.stdin.flush().is_err() {
        return Err("nft -i did not take the trace table".into());
    }
    // The table exists only if the kernel took the owner flag; nft -i
    // reports a refusal on its (discarded) stderr, so look.
    for _ in 0..20 {
        if listed(&ns.path, &table) {
            return Ok(t);
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    Err("nftables refused an owned table (it needs Linux 5.12+): no trace".into())
}

/// Whether `inet TABLE` exists in the namespace at `path`.
fn listed(path: &std::path::Path, table: &str) -> bool {
    let table = table.to_string();
    netns::run_in(path, move || {
        Command::new("nft")
            .args(["list", "table", "inet", &table])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
    .unwrap_or(false)
}

fn read_traces(out: impl std::io::Read, hits: &Mutex<Vec<TraceHit>>) {
    // trace id -> (dst, dport) from its `packet:` line.
    let mut packets: HashMap<String, (Option<IpAddr>, Option<u16>)> = HashMap::new();
    for line in BufReader::new(out).lines() {
        let Ok(line) = line else { break };
        if let Some(h) = parse_line(&line, &mut packets) {
            if let Ok(mut v) = hits.lock() {
                if v.len() < 1000 {
                    v.push(h);
                }
            }
        }
        if packets.len() > 10_000 {
            packets.clear();
        }
    }
}

/// One line of `nft -a monitor trace`: a drop or reject by a rule or a
/// policy becomes a hit; a `packet:` line is remembered by its trace id.
pub fn parse_line(
    line: &str,
    packets: &mut HashMap<String, (Option<IpAddr>, Option<u16>)>,
) -> Option<TraceHit> {
    let w: Vec<&str> = line.split_whitespace().collect();
    // trace id ID FAMILY TABLE CHAIN WHAT ...
    if w.len() < 7 || w[0] != "trace" || w[1] != "id" {
        return None;
    }
    let (id, family, table, chain) = (w[2], w[3], w[4], w[5]);
    let after = |key: &str| w.windows(2).find(|p| p[0] == key).map(|p| p[1]);
    // `ether daddr` comes first on ingress: the IP one is `ip(6) daddr`.
    let field = |protos: &[&str], key: &str| {
        w.windows(3)
            .find(|p| protos.contains(&p[0]) && p[1] == key)
            .map(|p| p[2])
    };
    match w[6] {
        "packet:" => {
            let dst = field(&["ip", "ip6"], "daddr").and_then(|a| a.parse().ok());
            let dport =
                field(&["tcp", "udp", "sctp", "dccp"], "dport").and_then(|p| p.parse().ok());
            packets.insert(id.to_string(), (dst, dport));
            None
        }
        "rule" => {
            let verdict = line
                .rsplit_once("(verdict ")?
                .1
                .trim_end_matches(')')
                .trim();
            if !matches!(verdict, "drop" | "reject") {
                return None;
            }
            let handle = after("handle").and_then(|h| h.parse().ok());
            let (dst, dport) = packets.get(id).copied().unwrap_or_default();
            Some(TraceHit {
                family: family.into(),
                table: table.into(),
                chain: chain.into(),
                handle,
                verdict: verdict.into(),
                dst,
                dport,
                line: line.trim().into(),
            })
        }
        "policy" if w[7..].first().is_some_and(|v| *v == "drop") => {
            let (dst, dport) = packets.get(id).copied().unwrap_or_default();
            Some(TraceHit {
                family: family.into(),
                table: table.into(),
                chain: chain.into(),
                handle: None,
                verdict: "drop".into(),
                dst,
                dport,
                line: line.trim().into(),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_drop_is_a_hit_with_its_handle_and_flow() {
        let mut p = HashMap::new();
        let pkt = "trace id 1d35d166 inet f in packet: iif \"s38\" ether saddr 6e:3e:a9:52:ef:f2 ether daddr 5e:5b:aa:c1:d9:f6 ip saddr 127.0.0.1 ip daddr 10.7.0.2 ip protocol tcp tcp sport 46494 tcp dport 9999 tcp flags == syn";
        assert!(parse_line(pkt, &mut p).is_none());
        let h = parse_line(
            "trace id 1d35d166 inet f in rule tcp dport 9999 drop # handle 2 (verdict drop)",
            &mut p,
        )
        .unwrap();
        assert_eq!(
            (h.family.as_str(), h.table.as_str(), h.chain.as_str()),
            ("inet", "f", "in")
        );
        assert_eq!(h.handle, Some(2));
        assert_eq!(h.dst, Some("10.7.0.2".parse().unwrap()));
        assert_eq!(h.dport, Some(9999));
    }

    #[test]
    fn accepts_and_continues_are_not_hits_and_a_drop_policy_is() {
        let mut p = HashMap::new();
        for l in [
            "trace id 45305352 inet trt pre rule ip daddr 127.0.0.1 tcp dport 9999 meta nftrace set 1 # handle 2 (verdict continue)",
            "trace id 45305352 inet trt pre policy accept ",
            "trace id 45305352 ip filter INPUT rule counter packets 0 bytes 0 accept # handle 4 (verdict accept)",
            "something else",
        ] {
            assert!(parse_line(l, &mut p).is_none(), "{l}");
        }
        let h = parse_line("trace id 9 ip6 filter FORWARD policy drop ", &mut p).unwrap();
        assert_eq!(h.handle, None);
        assert_eq!(h.chain, "FORWARD");
    }

    #[test]
    fn the_flow_match_is_numbers_and_addresses_only() {
        let f = TraceFlow {
            src: Some("10.1.0.1".parse().unwrap()),
            dst: "10.2.0.2".parse().unwrap(),
            proto: 6,
            dport: Some(8080),
        };
        assert_eq!(
            f.expr(),
            "ip saddr 10.1.0.1 ip daddr 10.2.0.2 meta l4proto 6 th dport 8080"
        );
        let g = TraceFlow {
            src: None,
            dst: "fd00::2".parse().unwrap(),
            proto: 58,
            dport: Some(3),
        };
        assert_eq!(g.expr(), "ip6 daddr fd00::2 meta l4proto 58");
    }
}
