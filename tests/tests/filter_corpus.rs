//! The kernel corpus: crafted packets (IPv4, IPv6; TCP, UDP, SCTP, ICMP,
//! ICMPv6 and others; fragments, extension-header chains, cut headers,
//! edge ports and addresses), dropped in a namespace of this test on
//! arrival (addressed to another host's MAC), each numbered in its IPv4 ID / IPv6 flow label. For each
//! expression and hook, the set tracer's kernel filter matched (read back
//! from its pcapng, `-w`) must equal the set `tcpdump -r` matches on a
//! capture of the same packets, except where `differences::explain`
//! names the reason.
//!
//! Cost: one tracer per expression per hook, but never one run each.
//! Per hook, a batch of tracers (one expression each) is started at once,
//! the whole corpus is sent once while all are attached, and all are
//! stopped: a tracer's start-up (BTF, verifier) is the cost, the packets
//! are free.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};
use tracer::filter::differences;
use tracer_tests::oracle::{frame, gen_expr, gen_v4, gen_v6, render, Rng};
use tracer_tests::{prefix, spawn_bin, tracer_release_bin, Netlab, TracerRun, WITH_TRACEFS};

const PACKETS: usize = 320;
const EXPRS: usize = 150;
const SEED: u64 = 0x0c0f_fee5;
/// Tracers attached at once.
const BATCH: usize = 25;

/// The corpus: numbered IP packets, with the userspace parse of each.
fn corpus(r: &mut Rng) -> Vec<(Vec<u8>, tracer_abi::Flow)> {
    let mut out = Vec::new();
    while out.len() < PACKETS {
        let v6 = out.len() % 2 == 1;
        let mut ip = if v6 { gen_v6(r) } else { gen_v4(r) };
        let n = out.len() as u32;
        if v6 {
            ip[1] = (n >> 16) as u8 & 0x0f;
            ip[2] = (n >> 8) as u8;
            ip[3] = n as u8;
        } else {
            ip[4] = (n >> 8) as u8;
            ip[5] = n as u8;
        }
        let flow = tracer_abi::packet::flow_of(&ip, 0).expect("an IP packet");
        // tcpdump may never return on a protochain past AH (see
        // differences::PROTOCHAIN_PAST_AH): no AH in the corpus.
        if flow.chain & tracer_abi::CHAIN_AH != 0 {
            continue;
        }
        out.push((frame(&ip, v6), flow));
    }
    out
}

/// The packet's number, from its IP header at `ip`.
fn number(ip: &[u8]) -> Option<u32> {
    match ip.first()? >> 4 {
        4 => Some(u16::from_be_bytes([*ip.get(4)?, *ip.get(5)?]) as u32),
        6 => Some(
            ((*ip.get(1)? as u32 & 0x0f) << 16) | ((*ip.get(2)? as u32) << 8) | *ip.get(3)? as u32,
        ),
        _ => None,
    }
}

fn pcap_file(frames: &[(Vec<u8>, tracer_abi::Flow)]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend(0xa1b2_c3d4u32.to_le_bytes());
    f.extend(2u16.to_le_bytes());
    f.extend(4u16.to_le_bytes());
    f.extend([0u8; 8]);
    f.extend(65535u32.to_le_bytes());
    f.extend(1u32.to_le_bytes());
    for (i, (p, _)) in frames.iter().enumerate() {
        f.extend((i as u32).to_le_bytes());
        f.extend(0u32.to_le_bytes());
        f.extend((p.len() as u32).to_le_bytes());
        f.extend((p.len() as u32).to_le_bytes());
        f.extend(p);
    }
    f
}

/// Numbers of the packets in a classic pcap (tcpdump -w) of Ethernet frames.
fn pcap_numbers(b: &[u8]) -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    let mut at = 24;
    while at + 16 <= b.len() {
        let cap = u32::from_le_bytes(b[at + 8..at + 12].try_into().unwrap()) as usize;
        let data = &b[at + 16..(at + 16 + cap).min(b.len())];
        out.extend(data.get(14..).and_then(number));
        at += 16 + cap;
    }
    out
}

/// Numbers of the corpus's packets in tracer's pcapng (Ethernet or raw
/// IP). A packet counts only if its bytes are that corpus packet's: the
/// namespace's own traffic (an IPv6 router solicitation when its link
/// comes up, flow label 0) is not "packet 0".
fn pcapng_numbers(b: &[u8], corpus: &[(Vec<u8>, tracer_abi::Flow)]) -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    let mut at = 0;
    while at + 12 <= b.len() {
        let kind = u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
        let len = u32::from_le_bytes(b[at + 4..at + 8].try_into().unwrap()) as usize;
        if len < 12 {
            break;
        }
        if kind == 6 && at + 28 <= b.len() {
            let cap = u32::from_le_bytes(b[at + 20..at + 24].try_into().unwrap()) as usize;
            let data = &b[at + 28..(at + 28 + cap).min(b.len())];
            let ip = if data.first().is_some_and(|v| matches!(v >> 4, 4 | 6)) {
                data
            } else {
                data.get(14..).unwrap_or(&[])
            };
            let ours = number(ip).filter(|n| {
                corpus.get(*n as usize).is_some_and(|(frame, _)| {
                    let want = frame.get(14..).unwrap_or(&[]);
                    let k = ip.len().min(want.len());
                    k > 0 && ip[..k] == want[..k]
                })
            });
            out.extend(ours);
        }
        at += len;
    }
    out
}

/// Expressions both sides take (tcpdump compiles them; not the extension).
fn expressions(r: &mut Rng, dir: &std::path::Path) -> Vec<String> {
    let want = std::env::var("CORPUS_EXPRS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(EXPRS);
    // The control: no filter, every packet (each must reach the kernel's
    // drop and tracer's capture).
    let mut out = vec![String::new()];
    while out.len() < want {
        let text = render(&gen_expr(r, 2));
        if differences::extension(&text).is_some() || tracer::filter::compile(&text).is_err() {
            continue;
        }
        let ok = std::process::Command::new("tcpdump")
            .args([
                "-r",
                dir.join("corpus.pcap").to_str().unwrap(),
                "-w",
                "/dev/null",
            ])
            .arg(&text)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            out.push(text);
        }
    }
    out
}

fn tcpdump_numbers(dir: &std::path::Path, expr: &str) -> BTreeSet<u32> {
    let out = std::process::Command::new("tcpdump")
        .args(["-r", dir.join("corpus.pcap").to_str().unwrap(), "-w", "-"])
        .arg(expr)
        .stderr(std::process::Stdio::null())
        .output()
        .expect("tcpdump");
    pcap_numbers(&out.stdout)
}

/// Sends every frame out of `c0` in namespace `tx` (AF_PACKET, in order).
fn send(lab: &Netlab, frames_file: &std::path::Path) {
    let script = format!(
        "import socket,struct\n\
         s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW)\n\
         s.bind(('c0',0))\n\
         d=open('{}','rb').read()\n\
         i=0\n\
         while i<len(d):\n (n,)=struct.unpack('<I',d[i:i+4]); s.send(d[i+4:i+4+n]); i+=4+n\n",
        frames_file.display()
    );
    lab.exec("tx", &format!("python3 -c \"{script}\""))
        .expect("send the corpus");
}

/// The namespaces: frames leave `c0` in `tx` and die arriving on `c1` in `rx`.
fn lab() -> Netlab {
    let mut lab = Netlab::new(&prefix("corpus")).unwrap();
    lab.ns("tx").unwrap();
    lab.ns("rx").unwrap();
    lab.veth("tx", "c0", "rx", "c1").unwrap();
    // The frames go to 02:00:00:00:00:02, not c1's address: IPv4 and IPv6
    // both drop them on arrival (OTHERHOST), whatever their headers hold,
    // before reassembly or any extension header is looked at.
    lab.exec("rx", "ip link set c1 address 02:00:00:00:00:99")
        .unwrap();
    lab
}

/// Runs one tracer per expression of `exprs` on `hook`, all at once, over
/// one sending of the corpus; what each matched.
/// The corpus, the expressions of one batch, and where it runs.
struct Batch<'a> {
    lab: &'a Netlab,
    dir: &'a Path,
    corpus: &'a [(Vec<u8>, tracer_abi::Flow)],
}

fn batch(on: &Batch, hook: &str, tag: usize, exprs: &[String]) -> Vec<BTreeSet<u32>> {
    let (lab, dir) = (on.lab, on.dir);
    // The classic tracepoint needs tracefs: a private mount of it.
    let wrapper = if hook == "tracepoint" {
        WITH_TRACEFS
    } else {
        &[]
    };
    let rx = lab.name("rx");
    let bin = tracer_release_bin();
    let files: Vec<_> = (0..exprs.len())
        .map(|i| dir.join(format!("{hook}-{tag}-{i}.pcapng")))
        .collect();
    let mut runs: Vec<TracerRun> = exprs
        .iter()
        .zip(&files)
        .map(|(e, f)| {
            let f = f.to_str().unwrap();
            let args = [
                "watch",
                "--netns",
                &rx,
                "--hook",
                hook,
                "--no-aggregate",
                "-a",
                "-w",
                f,
                e,
            ];
            spawn_bin(&bin, wrapper, &args)
        })
        .collect();
    for run in &mut runs {
        run.ready();
    }
    send(lab, &dir.join("frames"));
    std::thread::sleep(Duration::from_millis(300));
    // Stopped side by side too: each waits for its tracer's exit.
    std::thread::scope(|sc| {
        for run in runs {
            sc.spawn(move || run.stop());
        }
    });
    files
        .iter()
        .map(|f| pcapng_numbers(&std::fs::read(f).unwrap_or_default(), on.corpus))
        .collect()
}

#[test]
fn kernel_filter_matches_what_tcpdump_matches() {
    let started = Instant::now();
    let lab = lab();
    let dir = std::env::temp_dir().join(format!("trcorpus-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut r = Rng(SEED);
    let packets = corpus(&mut r);
    std::fs::write(dir.join("corpus.pcap"), pcap_file(&packets)).unwrap();
    let mut framed = Vec::new();
    for (p, _) in &packets {
        framed.extend((p.len() as u32).to_le_bytes());
        framed.extend(p);
    }
    std::fs::write(dir.join("frames"), framed).unwrap();
    let exprs = expressions(&mut r, &dir);
    let theirs: Vec<BTreeSet<u32>> = exprs.iter().map(|e| tcpdump_numbers(&dir, e)).collect();
    let mut failures = Vec::new();
    let (mut compared, mut matched) = (0, 0);
    for hook in ["tp_btf", "raw_tp", "tracepoint"] {
        for (b, chunk) in exprs.chunks(BATCH).enumerate() {
            let on = Batch {
                lab: &lab,
                dir: &dir,
                corpus: &packets,
            };
            let ours = batch(&on, hook, b, chunk);
            for (k, (e, ours)) in chunk.iter().zip(&ours).enumerate() {
                let want = &theirs[b * BATCH + k];
                if e.is_empty() {
                    assert_eq!(ours.len(), packets.len(), "{hook}: the unfiltered control");
                    assert_eq!(want.len(), packets.len(), "tcpdump's control");
                }
                matched += ours.len();
                compared += packets.len();
                for n in ours.symmetric_difference(want) {
                    let flow = &packets[*n as usize].1;
                    if differences::explain(e, flow).is_none() && failures.len() < 10 {
                        failures.push(format!(
                            "{hook}: {e:?} packet {n}: tracer {}, tcpdump {}\n  flow {flow:?}",
                            ours.contains(n),
                            want.contains(n)
                        ));
                    }
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "corpus: {} packets x {} expressions on 3 hooks: {compared} pairs, {matched} matched, {:.1} s",
        packets.len(),
        exprs.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
