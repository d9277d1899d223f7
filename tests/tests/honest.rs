//! No false proof, and fixes that work when pasted (issue 21): a link
//! coming up proves nothing; an IPv6 `no_route` fix, applied, heals; a
//! plain host that receives someone else's packets is told who sent them
//! there, not to turn on forwarding; and `diagnose` says by its exit
//! status whether it proved a fault. Names, subnets and MTUs differ from
//! the labs' on purpose, so no rule can key on them.

use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;
use tracer_tests::{expected_status, prefix, start, tracer_bin, Netlab, EXIT_FAULT_PROVEN};

fn verdicts(lines: &[Value]) -> Vec<&Value> {
    lines.iter().filter(|v| v["type"] == "verdict").collect()
}

fn verdicts_of<'a>(lines: &'a [Value], kind: &str) -> Vec<&'a Value> {
    verdicts(lines)
        .into_iter()
        .filter(|v| v["kind"] == kind)
        .collect()
}

/// The command of a fix entry: what follows its last ": " (the fixes
/// say what to do, then the command).
fn fix_command(fix: &Value) -> String {
    let s = fix.as_str().unwrap();
    let cmd = s.rsplit(": ").next().unwrap();
    cmd.split(" (").next().unwrap().trim().to_string()
}

/// Runs a printed command as a user would paste it (through a shell).
fn paste(cmd: &str) {
    let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
    assert!(
        out.status.success(),
        "pasting {cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn mac_of(lab: &Netlab, ns: &str, dev: &str) -> String {
    lab.exec(ns, &format!("cat /sys/class/net/{dev}/address"))
        .unwrap()
        .trim()
        .to_string()
}

/// `ip -n A link add ...`: a veth between two namespaces, left down.
fn veth_down(lab: &Netlab, a: &str, a_if: &str, b: &str, b_if: &str) {
    let (na, nb) = (lab.name(a), lab.name(b));
    paste(&format!(
        "ip -n {na} link add {a_if} type veth peer name {b_if} netns {nb}"
    ));
}

#[test]
fn links_coming_up_with_ipv6_prove_nothing() {
    let mut lab = Netlab::new(&prefix("lup")).unwrap();
    for n in ["left", "right"] {
        lab.ns(n).unwrap();
        lab.exec(
            n,
            "sysctl -qw net.ipv6.conf.all.disable_ipv6=0 net.ipv6.conf.default.disable_ipv6=0",
        )
        .unwrap();
    }
    let run = start(&[
        "diagnose",
        "--netns",
        &lab.name("left"),
        "--netns",
        &lab.name("right"),
    ]);
    // Created and brought up while diagnose watches: DAD, MLD reports
    // from ::, router solicitations, on a veth and through a bridge.
    veth_down(&lab, "left", "up9", "right", "port9");
    lab.exec(
        "right",
        "ip link add brq7 type bridge && ip link set port9 master brq7 && \
         ip link set port9 mtu 1380 && ip link set brq7 mtu 1380 && \
         ip link set brq7 up && ip link set port9 up && \
         ip addr add fd5e:77::2/64 dev brq7",
    )
    .unwrap();
    // The bridge stays up without carrier a while, so its first IGMP and
    // MLD reports (sent a jiffy after up, and again within a second) go
    // to its noop queue and are dropped: the trap is certain, not a race
    // against how soon the next command runs on a busy host.
    std::thread::sleep(Duration::from_millis(1500));
    lab.exec(
        "left",
        "ip link set up9 mtu 1380 && ip link set up9 up && ip addr add fd5e:77::1/64 dev up9",
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(5));
    // The link works: traffic flows once the addresses settle.
    lab.exec("left", "ping -6 -c 1 -W 2 fd5e:77::2 >/dev/null")
        .unwrap();
    let lines = run.stop();
    assert!(verdicts(&lines).is_empty(), "{:#?}", verdicts(&lines));
    // The trap was there: packets of the links coming up were dropped.
    let link_scoped =
        |a: &str| a.starts_with("ff") || a.starts_with("fe80") || a.starts_with("224.0.0.");
    let trap = lines.iter().filter(|v| v["type"] == "drop").any(|d| {
        d["dst"].as_str().is_some_and(link_scoped) || d["src"] == "::" || d["src"] == "0.0.0.0"
    });
    assert!(trap, "no drop of a link coming up was seen: {lines:#?}");
}

/// client -- router -- server, IPv6; the server's service address
/// fd6c:99::5 sits behind it and the router has no route to it.
fn v6_chain(test: &str) -> Netlab {
    let mut lab = Netlab::new(&prefix(test)).unwrap();
    for n in ["cli", "rtr", "srv"] {
        lab.ns(n).unwrap();
    }
    lab.veth("cli", "c0", "rtr", "r-in").unwrap();
    lab.veth("rtr", "r-out", "srv", "s0").unwrap();
    lab.exec(
        "cli",
        "ip link set c0 mtu 1460 && ip addr add fd6c:11::2/64 dev c0 nodad && \
         ip route add default via fd6c:11::1",
    )
    .unwrap();
    lab.exec(
        "rtr",
        "ip link set r-in mtu 1460 && ip addr add fd6c:11::1/64 dev r-in nodad && \
         ip addr add fd6c:22::1/64 dev r-out nodad && sysctl -qw net.ipv6.conf.all.forwarding=1",
    )
    .unwrap();
    lab.exec(
        "srv",
        "ip addr add fd6c:22::2/64 dev s0 nodad && ip addr add fd6c:99::5/128 dev lo && \
         ip route add default via fd6c:22::1",
    )
    .unwrap();
    lab
}

#[test]
fn ipv6_no_route_fix_is_a_host_route_that_heals_when_pasted() {
    let lab = v6_chain("v6nr");
    let run = start(&["diagnose", "--netns", &lab.name("rtr")]);
    assert!(lab
        .try_exec("cli", "ping -6 -c 2 -i 0.3 -W 1 fd6c:99::5")
        .unwrap()
        .stdout
        .windows(9)
        .any(|w| w == b" 0 receiv"));
    std::thread::sleep(Duration::from_millis(800));
    let lines = run.stop();
    let v = verdicts_of(&lines, "no_route");
    assert_eq!(v.len(), 1, "{:#?}", verdicts(&lines));
    let v = v[0];
    assert_eq!(v["evidence"]["dst"], "fd6c:99::5");
    assert!(v["summary"].as_str().unwrap().contains("ICMPv6"), "{v}");
    let cmd = fix_command(&v["fix"][0]);
    assert!(cmd.contains("fd6c:99::5/128 via <gateway>"), "{cmd}");
    // The one thing the fix cannot know: the next hop, the server here.
    paste(&cmd.replace("<gateway>", "fd6c:22::2"));
    let run = start(&["diagnose", "--netns", &lab.name("rtr")]);
    lab.exec("cli", "ping -6 -c 2 -i 0.3 -W 2 fd6c:99::5 >/dev/null")
        .unwrap();
    let lines = run.stop();
    assert!(verdicts(&lines).is_empty(), "{:#?}", verdicts(&lines));
}

/// sender -- switch (a bridge) -- host, plus the address's real owner on
/// the same bridge. The sender's neighbour entries for the owner's
/// addresses point at the host (stale, as after the address moved).
fn misdelivery_lab(test: &str) -> Netlab {
    let mut lab = Netlab::new(&prefix(test)).unwrap();
    for n in ["snd", "sw", "plain", "owner"] {
        lab.ns(n).unwrap();
    }
    lab.exec("sw", "ip link add b-x type bridge && ip link set b-x up")
        .unwrap();
    for (n, dev, port) in [
        ("snd", "a1", "p-snd"),
        ("plain", "h1", "p-pl"),
        ("owner", "o1", "p-ow"),
    ] {
        lab.veth(n, dev, "sw", port).unwrap();
        lab.exec("sw", &format!("ip link set {port} master b-x"))
            .unwrap();
        lab.exec(n, &format!("ip link set {dev} mtu 1432")).unwrap();
    }
    lab.exec(
        "sw",
        "for p in p-snd p-pl p-ow; do ip link set $p mtu 1432; done",
    )
    .unwrap();
    for (n, dev, last) in [("snd", "a1", 1), ("plain", "h1", 2), ("owner", "o1", 9)] {
        lab.exec(
            n,
            &format!(
                "ip addr add 10.47.3.{last}/24 dev {dev} && ip addr add fd47:3::{last}/64 dev {dev} nodad"
            ),
        )
        .unwrap();
    }
    let mac = mac_of(&lab, "plain", "h1");
    lab.exec(
        "snd",
        &format!(
            "ip neigh replace 10.47.3.9 lladdr {mac} dev a1 && \
             ip -6 neigh replace fd47:3::9 lladdr {mac} dev a1"
        ),
    )
    .unwrap();
    lab
}

#[test]
fn a_plain_host_is_told_the_packets_were_misdelivered_and_the_fix_heals() {
    let lab = misdelivery_lab("mis");
    let run = start(&[
        "diagnose",
        "--netns",
        &lab.name("plain"),
        "--netns",
        &lab.name("snd"),
    ]);
    for dst in ["10.47.3.9", "fd47:3::9"] {
        let _ = lab.try_exec("snd", &format!("ping -c 2 -i 0.3 -W 1 {dst}"));
    }
    std::thread::sleep(Duration::from_millis(800));
    let lines = run.stop();
    assert!(
        verdicts_of(&lines, "forwarding_disabled").is_empty(),
        "{:#?}",
        verdicts(&lines)
    );
    let v = verdicts_of(&lines, "misdelivered");
    assert_eq!(v.len(), 2, "{:#?}", verdicts(&lines));
    let snd_mac = mac_of(&lab, "snd", "a1");
    let plain_mac = mac_of(&lab, "plain", "h1");
    for (v, dst) in v.iter().zip(["10.47.3.9", "fd47:3::9"]) {
        assert_eq!(v["tier"], "proven");
        assert_eq!(v["netns_name"], lab.name("plain"));
        assert_eq!(v["evidence"]["dst"], dst);
        assert_eq!(v["evidence"]["sender_mac"], snd_mac.as_str());
        assert_eq!(v["evidence"]["ingress_mac"], plain_mac.as_str());
        assert!(v["summary"].as_str().unwrap().contains(&snd_mac), "{v}");
        let cmd = fix_command(&v["fix"][0]);
        assert_eq!(
            cmd,
            format!("ip -n {} neigh del {dst} dev a1", lab.name("snd"))
        );
        assert_eq!(v["fix_commands"][0], serde_json::json!([cmd]));
        tracer_tests::apply_first_fix(v);
    }
    // The sender now resolves both addresses to their real owner.
    for dst in ["10.47.3.9", "fd47:3::9"] {
        lab.exec("snd", &format!("ping -c 1 -W 2 {dst} >/dev/null"))
            .unwrap();
    }
}

#[test]
fn a_router_with_forwarding_off_is_still_forwarding_disabled() {
    let lab = v6_chain("v6fwd");
    lab.exec(
        "rtr",
        "sysctl -qw net.ipv6.conf.all.forwarding=0 && ip route add fd6c:99::5/128 via fd6c:22::2",
    )
    .unwrap();
    let run = start(&["diagnose", "--netns", &lab.name("rtr")]);
    let _ = lab.try_exec("cli", "ping -6 -c 2 -i 0.3 -W 1 fd6c:99::5");
    std::thread::sleep(Duration::from_millis(800));
    let lines = run.stop();
    let v = verdicts_of(&lines, "forwarding_disabled");
    assert_eq!(v.len(), 1, "{:#?}", verdicts(&lines));
    assert_eq!(v[0]["evidence"]["sysctl"], "net.ipv6.conf.all.forwarding");
    assert!(verdicts_of(&lines, "misdelivered").is_empty());
}

/// `diagnose --duration`/`--count` and `--replay`: 3 when a fault was
/// proven, 0 when none was, 1 on an error.
#[test]
fn exit_status_says_whether_a_fault_was_proven() {
    let lab = v6_chain("exit");
    let rtr = lab.name("rtr");
    let bin = tracer_bin();
    // Started and attached (its `ready` line read); the rest of its
    // output is read by `status`.
    let diagnose = |extra: &[&str]| {
        let mut c = Command::new(&bin)
            .args(["diagnose", "--netns", &rtr, "-o", "json"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(c.stdout.take().unwrap());
        let mut ready = String::new();
        out.read_line(&mut ready).unwrap();
        assert!(ready.contains("\"ready\""), "{ready}");
        (c, out)
    };
    let status = |(mut c, mut out): (Child, BufReader<ChildStdout>)| {
        let mut rest = String::new();
        out.read_to_string(&mut rest).unwrap();
        let lines: Vec<Value> = rest
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let code = c.wait().unwrap().code().unwrap();
        assert_eq!(code, expected_status(&lines), "{rest}");
        code
    };
    // Healthy traffic only, ended by --duration: 0.
    let healthy = diagnose(&["--duration", "2s"]);
    // Three tries: the first may wait on neighbour discovery, and a
    // loaded host once answered none within its one second.
    lab.exec("cli", "ping -6 -c 3 -i 0.2 -W 1 fd6c:22::2 >/dev/null")
        .unwrap();
    assert_eq!(status(healthy), 0);
    // The missing route, ended by --count: 3.
    let faulty = diagnose(&["--count", "1", "--duration", "20s"]);
    let _ = lab.try_exec("cli", "ping -6 -c 3 -i 0.3 -W 1 fd6c:99::5");
    assert_eq!(status(faulty), EXIT_FAULT_PROVEN);
    let rec = |name: &str| {
        format!(
            "{}/../tracer/tests/recordings/{name}.jsonl",
            env!("CARGO_MANIFEST_DIR")
        )
    };
    for (name, want) in [
        ("no-route", EXIT_FAULT_PROVEN),
        ("port-closed", 0),
        ("pmtud-healthy", 0),
    ] {
        let out = Command::new(&bin)
            .args(["diagnose", "--replay", &rec(name), "-o", "json"])
            .output()
            .unwrap();
        let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(out.status.code(), Some(want), "{name}");
        assert_eq!(expected_status(&lines), want, "{name}");
    }
    let out = Command::new(&bin)
        .args(["diagnose", "--replay", "/nonexistent/rec.jsonl"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

/// A bridge port held in the learning state drops what enters it
/// (`BRIDGE_INGRESS_STP_STATE`, 24 characters): in text the ARP request
/// says who asked for whom, and the long reason keeps LOCATION in its
/// column; in JSON the drop carries its `arp`.
#[test]
fn dropped_arp_says_who_has_and_long_reasons_fit_their_column() {
    let mut lab = Netlab::new(&prefix("arp")).unwrap();
    lab.ns("st").unwrap();
    lab.ns("sw").unwrap();
    lab.exec(
        "sw",
        "ip link add brz type bridge stp_state 0 forward_delay 3000 && ip link set brz up",
    )
    .unwrap();
    lab.veth("st", "ea", "sw", "p-a").unwrap();
    lab.exec(
        "sw",
        "ip link set p-a master brz && bridge link set dev p-a state 2",
    )
    .unwrap();
    lab.exec("st", "ip addr add 10.61.4.1/24 dev ea").unwrap();
    // JSON: the frame with its ARP fields.
    let run = start(&["watch", "--netns", &lab.name("sw")]);
    // A request a second until one is seen (a loaded host may be slow).
    let asked = |v: &Value| v["arp"]["sender"] == "10.61.4.1";
    let mut seen = None;
    for i in 9..17 {
        let _ = lab.try_exec("st", &format!("ping -c 1 -W 1 10.61.4.{i}"));
        seen = run.wait_for(Duration::from_millis(500), asked);
        if seen.is_some() {
            break;
        }
    }
    let lines = run.stop();
    let d = seen.unwrap_or_else(|| panic!("{lines:#?}"));
    assert_eq!(d["arp"]["op"], "request");
    assert_eq!(d["arp"]["sender"], "10.61.4.1");
    assert!(d["src"].is_null() && d["family"].is_null(), "{d}");
    // The port would move on to forwarding after forward_delay (30 s at
    // most) on a slow run: put it back in learning.
    lab.exec("sw", "bridge link set dev p-a state 2").unwrap();
    let mut child = Command::new(tracer_bin())
        .args(["watch", "--netns", &lab.name("sw"), "--duration", "6s"])
        .args(["-o", "text"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut attached = String::new();
    err.read_line(&mut attached).unwrap();
    assert!(attached.contains("attached"), "{attached}");
    let _ = lab.try_exec("st", "ping -c 2 -i 0.5 -W 1 10.61.4.7");
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let header = text.lines().find(|l| l.starts_with("TIME")).expect(&text);
    let col = header.find("LOCATION").unwrap();
    let arp: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("BRIDGE_INGRESS_STP_STATE") && l.contains(" p-a "))
        .collect();
    assert!(
        arp.iter()
            .any(|l| l.ends_with("ARP who-has 10.61.4.7 tell 10.61.4.1")),
        "{text}"
    );
    // The REASON column is as wide in every line as under its title
    // (a long namespace name may push the columns after NETNS).
    let reason_w = col - header.find("REASON").unwrap();
    for l in arp {
        let at = l.find("BRIDGE_INGRESS_STP_STATE").unwrap();
        assert_eq!(
            l.find(" br_handle_frame"),
            Some(at + reason_w - 1),
            "{text}"
        );
    }
}
