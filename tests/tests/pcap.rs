//! `-w` pcapng, `--stack`: real drops in throwaway namespaces, the file
//! read back by Debian's `tshark` (installed by `cargo xtask test`).
//!
//! The lab is client -- router -- host: the client's source 172.17.5.5
//! overlaps the host's bridge docker0 (172.17.0.0/16) and the host's
//! rp_filter is strict, so the host drops every SYN as IP_RPFILTER.

use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tracer_tests::{
    drops, is_drop, kernel_reasons, prefix, rpf_lab, start, syn, tracer_bin, Netlab,
};

const WAIT: Duration = Duration::from_secs(15);

fn tmp(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("{}{name}", prefix("f")))
}

/// `tshark -r FILE -T fields -e F...`: one row per frame, fields split.
fn tshark(file: &Path, fields: &[&str]) -> Vec<Vec<String>> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-r")
        .arg(file)
        .args(["-T", "fields", "-E", "separator=|"]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = cmd
        .output()
        .expect("tshark runs (cargo xtask test installs it)");
    assert!(
        out.status.success(),
        "tshark failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('|').map(str::to_string).collect())
        .collect()
}

fn reason_word() -> &'static str {
    if kernel_reasons() {
        "IP_RPFILTER"
    } else {
        "ip_rcv_finish_core"
    }
}

#[test]
fn pcapng_of_rpfilter_drops_decodes_in_tshark_with_reason_comments() {
    let lab = rpf_lab("pcap");
    let host = lab.name("host");
    let file = tmp("rpf.pcapng");
    let file_s = file.to_str().unwrap();
    let run = start(&["watch", "--netns", &host, "-w", file_s, "tcp port 8080"]);
    syn(&lab);
    run.wait_for(WAIT, |v| is_drop(v, "IP_RPFILTER"));
    let lines = run.stop();
    let ds = drops(&lines);
    assert!(!ds.is_empty(), "no drop: {lines:#?}");
    let rows = tshark(
        &file,
        &[
            "frame.comment",
            "_ws.col.Protocol",
            "tcp.flags.syn",
            "tcp.dstport",
            "ip.src",
            "frame.interface_name",
            "eth.type",
        ],
    );
    let _ = std::fs::remove_file(&file);
    assert_eq!(
        rows.len(),
        ds.len(),
        "one frame per drop: {rows:?} vs {ds:#?}"
    );
    for r in &rows {
        assert!(
            r[0].contains(reason_word()),
            "comment holds the reason: {r:?}"
        );
        assert!(r[0].contains(&host), "comment names the netns: {r:?}");
        assert_eq!(r[1], "TCP", "decodes as TCP: {r:?}");
        assert_eq!(r[2], "1", "a SYN: {r:?}");
        assert_eq!(r[3], "8080");
        assert_eq!(r[4], "172.17.5.5");
        assert_eq!(r[5], format!("{host}/eth0"), "interface named netns/ifname");
        assert_eq!(r[6], "0x0800", "from the Ethernet header");
    }
}

/// The packet's JSON rides in a copyable custom option (2988): read the
/// file back and find it, equal to what `-o json` printed.
#[test]
fn pcapng_custom_option_holds_the_event_json() {
    let lab = rpf_lab("pcapjson");
    let host = lab.name("host");
    let file = tmp("json.pcapng");
    let run = start(&[
        "watch",
        "--netns",
        &host,
        "-w",
        file.to_str().unwrap(),
        "--count",
        "1",
    ]);
    syn(&lab);
    run.wait_for(WAIT, |v| v["type"] == "summary");
    let lines = run.stop();
    let d = drops(&lines)[0].clone();
    let bytes = std::fs::read(&file).unwrap();
    let _ = std::fs::remove_file(&file);
    let jsons = custom_strings(&bytes);
    assert_eq!(jsons.len(), 1, "one custom option per packet");
    let v: Value = serde_json::from_str(&jsons[0]).unwrap();
    assert_eq!(v, d, "the option holds the event as -o json prints it");
}

/// Walks pcapng blocks (little-endian, as tracer writes) and returns the
/// values of EPB custom string options 2988 with tracer's PEN.
fn custom_strings(b: &[u8]) -> Vec<String> {
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap()) as usize;
    let mut out = Vec::new();
    let mut at = 0;
    while at + 12 <= b.len() {
        let (kind, len) = (u32_at(at), u32_at(at + 4) as usize);
        assert!(len >= 12 && at + len <= b.len(), "block at {at} fits");
        assert_eq!(u32_at(at + len - 4) as usize, len, "trailing length");
        if kind == 6 {
            let cap = u32_at(at + 20) as usize;
            let mut o = at + 28 + cap.next_multiple_of(4);
            while o + 4 <= at + len - 4 {
                let (code, l) = (u16_at(o), u16_at(o + 2));
                if code == 0 {
                    break;
                }
                if code == 2988 {
                    assert_eq!(u32_at(o + 4), 32473, "PEN");
                    out.push(String::from_utf8(b[o + 8..o + 4 + l].to_vec()).unwrap());
                }
                o += 4 + l.next_multiple_of(4);
            }
        }
        at += len;
    }
    out
}

/// `-w -`: pcapng on stdout (lines on stderr), read by `tshark -r -`.
#[test]
fn pcapng_to_stdout_pipes_into_tshark() {
    let lab = rpf_lab("pcapstdout");
    let host = lab.name("host");
    let mut child = Command::new(tracer_bin())
        .args([
            "watch", "--netns", &host, "-w", "-", "-o", "json", "-d", "8s",
        ])
        .args(["tcp", "port", "8080"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        stdout.read_to_end(&mut v).unwrap();
        v
    });
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    let errs = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for l in stderr.lines().map_while(Result::ok) {
            if l.contains("\"type\":\"ready\"") {
                let _ = tx.send(());
            }
            lines.push(l);
        }
        lines
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("ready on stderr");
    syn(&lab);
    assert!(child.wait().unwrap().success());
    let pcap = reader.join().unwrap();
    let errs = errs.join().unwrap();
    let drops = errs
        .iter()
        .filter(|l| l.starts_with("{\"type\":\"drop\""))
        .count();
    assert!(drops >= 1, "JSON drop lines on stderr: {errs:?}");
    assert_eq!(
        &pcap[..4],
        &[0x0a, 0x0d, 0x0d, 0x0a],
        "stdout starts with a pcapng SHB"
    );
    let mut t = Command::new("tshark")
        .args([
            "-r",
            "-",
            "-T",
            "fields",
            "-e",
            "frame.comment",
            "-e",
            "tcp.flags.syn",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    t.stdin.take().unwrap().write_all(&pcap).unwrap();
    let out = t.wait_with_output().unwrap();
    let rows: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(rows.len(), drops, "{rows:?}");
    assert!(
        rows.iter()
            .all(|r| r.contains(reason_word()) && r.ends_with("\t1")),
        "{rows:?}"
    );
}

/// A storm: the kernel samples a few packets per key and counts the
/// rest; the pcapng has one frame per delivered drop, and the counts are
/// readable as `storm:` comments (on a later packet, or in the closing
/// statistics block) adding up to the summary's `aggregated`.
#[test]
fn pcapng_in_a_storm_keeps_counts_readable() {
    let mut lab = Netlab::new(&prefix("pcapstorm")).unwrap();
    lab.ns("a").unwrap();
    lab.ns("b").unwrap();
    lab.veth("a", "eth0", "b", "eth0").unwrap();
    lab.exec("a", "ip addr add 10.204.0.1/24 dev eth0").unwrap();
    lab.exec("b", "ip addr add 10.204.0.2/24 dev eth0").unwrap();
    lab.exec("a", "ping -c1 -W2 10.204.0.2 >/dev/null").unwrap();
    let file = tmp("storm.pcapng");
    let run = start(&[
        "watch",
        "--netns",
        &lab.name("b"),
        "-w",
        file.to_str().unwrap(),
        "udp",
    ]);
    let sender = netlab::in_netns(&lab.name("a"), move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        let dst: SocketAddr = "10.204.0.2:9".parse().unwrap();
        let t0 = Instant::now();
        let mut n = 0u64;
        while t0.elapsed() < Duration::from_millis(2500) {
            for _ in 0..64 {
                if s.send_to(&[0u8; 16], dst).is_ok() {
                    n += 1;
                }
            }
        }
        n
    });
    let sent = sender.join().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let lines = run.stop();
    lab.teardown();
    let summary = lines.last().unwrap().clone();
    let aggregated = summary["aggregated"].as_u64().unwrap();
    let delivered = summary["drops"].as_u64().unwrap();
    assert!(
        sent > 20_000 && aggregated > 0,
        "a storm ({sent} sent): {summary}"
    );
    // The protocol stack, not the Protocol column: the sender's source port
    // is ephemeral, and one that a tshark dissector claims (heuristically,
    // from 16 zero bytes) names that protocol in the column instead.
    let rows = tshark(&file, &["frame.comment", "frame.protocols"]);
    // Comments of the statistics block that closes the file.
    let isb = Command::new("tshark")
        .arg("-r")
        .arg(&file)
        .args(["-q", "-z", "io,stat,0"])
        .output()
        .unwrap();
    let bytes = std::fs::read(&file).unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(isb.status.success());
    assert_eq!(rows.len() as u64, delivered, "one frame per delivered drop");
    let not_udp: Vec<_> = rows
        .iter()
        .filter(|r| !r[1].split(':').any(|p| p == "udp"))
        .collect();
    assert!(not_udp.is_empty(), "frames decode as UDP: {not_udp:?}");
    // Every storm count, wherever it landed, read from the file.
    let text = String::from_utf8_lossy(&bytes);
    let counted: u64 = text
        .match_indices("storm: ")
        .map(|(i, _)| {
            text[i + 7..]
                .split(' ')
                .next()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert_eq!(counted, aggregated, "storm comments add up to the summary");
}

/// `--stack`: the strict rp_filter drop's kernel stack, symbolized, runs
/// through the IP receive path.
#[test]
fn stack_of_rpfilter_drop_passes_through_ip_rcv() {
    let lab = rpf_lab("stack");
    let run = start(&["watch", "--netns", &lab.name("host"), "--stack", "tcp"]);
    syn(&lab);
    run.wait_for(WAIT, |v| is_drop(v, "IP_RPFILTER"));
    let lines = run.stop();
    let d = drops(&lines)
        .into_iter()
        .find(|d| is_drop(d, "IP_RPFILTER"))
        .expect("an IP_RPFILTER drop")
        .clone();
    let stack: Vec<&str> = d["stack"]
        .as_array()
        .expect("a stack list")
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(stack.len() >= 5, "{stack:?}");
    assert!(
        stack.iter().any(|f| f.starts_with("ip_rcv")),
        "a frame in ip_rcv*: {stack:?}"
    );
    assert!(
        stack.iter().all(|f| f.contains("+0x")),
        "every frame symbolized: {stack:?}"
    );
    // Without --stack there is no stack field.
    let run = start(&["watch", "--netns", &lab.name("host"), "tcp"]);
    syn(&lab);
    run.wait_for(WAIT, |v| v["type"] == "drop");
    let lines = run.stop();
    assert!(drops(&lines).iter().all(|d| d.get("stack").is_none()));
}

#[test]
fn bad_snaplen_is_one_line() {
    let (code, err) = tracer_tests::run_bad(&["watch", "-w", "/tmp/x.pcapng", "--snaplen", "0"]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--snaplen"), "{err}");
    let (code, err) = tracer_tests::run_bad(&["watch", "--snaplen", "100"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("-w"), "{err}");
}
