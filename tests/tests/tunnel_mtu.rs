//! `tunnel_mtu` against the real kernel: two hosts joined by a VXLAN
//! (`df set`) over a 1360-byte underlay, each tunnel device at 1420 where
//! only 1310 fits. Datagrams the sender lets the kernel fragment (ping
//! `-M dont`) fit the tunnel, grow past the underlay and die at
//! `ip_fragment`. Each end's printed fix (its tunnel MTU) is applied,
//! then the same pings pass and a second run is silent; the control, a
//! tunnel sized right from the start, is silent.

use serde_json::Value;
use std::path::Path;
use std::time::Duration;
use tracer_tests::{
    all_verdicts, apply_first_fix, assert_no_verdict, diagnose_on, keep_recording, prefix,
    recording, replay, Netlab,
};

/// Underlay lk0 10.219.33.1 -- lk1 10.219.33.2 (MTU 1360); VXLAN vx919
/// (VNI 919, port 4789, df set) 192.168.213.1 -- .2 at `tun_mtu`.
fn lab(test: &str, tun_mtu: u32) -> Netlab {
    let mut lab = Netlab::new(&prefix(test)).unwrap();
    lab.ns("va").unwrap();
    lab.ns("vb").unwrap();
    lab.veth("va", "lk0", "vb", "lk1").unwrap();
    for (ns, dev, me, peer) in [("va", "lk0", 1, 2), ("vb", "lk1", 2, 1)] {
        // No `dev`: the kernel would cap the tunnel's MTU at the
        // underlay's; a tunnel bound by route alone has no such check.
        lab.exec(
            ns,
            &format!(
                "ip link set {dev} mtu 1360 && ip addr add 10.219.33.{me}/24 dev {dev} && \
                 ip link add vx919 type vxlan id 919 local 10.219.33.{me} \
                   remote 10.219.33.{peer} dstport 4789 df set && \
                 ip link set vx919 mtu {tun_mtu} up && \
                 ip addr add 192.168.213.{me}/24 dev vx919"
            ),
        )
        .unwrap();
    }
    lab
}

/// Three 1300-byte pings (the kernel may fragment them) from `ns` to
/// `dst`; true when all three came back.
fn pings_pass(lab: &Netlab, ns: &str, dst: &str) -> bool {
    let out = lab
        .try_exec(ns, &format!("ping -M dont -s 1300 -c 3 -i 0.3 -W 1 {dst}"))
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains(" 0% packet loss")
}

/// Both ways, one after the other; the path MTUs learned before are
/// forgotten first, so each direction starts from the tunnel's own MTU.
fn both_ways(lab: &Netlab) -> [bool; 2] {
    [("va", "192.168.213.2"), ("vb", "192.168.213.1")].map(|(ns, dst)| {
        // The other direction's replies taught both ends a path MTU.
        for ns in ["va", "vb"] {
            lab.exec(ns, "ip route flush cache").unwrap();
        }
        pings_pass(lab, ns, dst)
    })
}

/// diagnose on both ends, recording to `rec` when given.
fn diagnose(lab: &Netlab, rec: Option<&Path>) -> tracer_tests::TracerRun {
    diagnose_on(lab, &["va", "vb"], rec)
}

/// One too-big VXLAN lab: what it is built with and what each end's
/// verdict must say.
struct TooBig {
    lab: Netlab,
    both_ways: fn(&Netlab) -> [bool; 2],
    dev: &'static str,
    tun_mtu: u32,
    overhead: u32,
    underlay_mtu: u32,
    /// The far end of va's and of vb's tunnel.
    remotes: [&'static str; 2],
}

/// Both directions die; each end is proven `tunnel_mtu` with its numbers
/// and fix (recorded to `rec` when given); each fix, pasted, lets the
/// pings through, and a second run is silent.
fn too_big_heals(c: TooBig, rec: Option<&Path>) {
    let lab = &c.lab;
    let run = diagnose(lab, rec);
    // The first of each direction dies; the ICMP it raises teaches the
    // sender a smaller path MTU, so later ones may pass.
    assert_eq!((c.both_ways)(lab), [false, false]);
    std::thread::sleep(Duration::from_millis(500));
    let lines = run.stop();
    let got = all_verdicts(&lines);
    assert_eq!(got.len(), 2, "{got:#?}");
    for (v, ns, remote) in [(got[0], "va", c.remotes[0]), (got[1], "vb", c.remotes[1])] {
        assert_eq!(v["kind"], "tunnel_mtu");
        assert_eq!(v["tier"], "proven");
        assert_eq!(v["netns_name"], lab.name(ns));
        let e = &v["evidence"];
        assert_eq!(e["tunnel"], c.dev);
        assert_eq!(e["tunnel_kind"], "vxlan");
        assert_eq!(e["tunnel_mtu"], c.tun_mtu);
        assert_eq!(e["overhead"], c.overhead);
        assert_eq!(e["underlay_mtu"], c.underlay_mtu);
        assert_eq!(e["outer_dst"], remote);
        assert_eq!(e["outer_dport"], 4789);
        assert!(
            e["outer_len"].as_u64().unwrap() > u64::from(c.underlay_mtu),
            "{e}"
        );
        let fits = c.underlay_mtu - c.overhead;
        assert_eq!(e["suggested_mtu"], fits);
        assert_eq!(
            v["fix_commands"][0][0],
            format!("ip -n {} link set dev {} mtu {fits}", lab.name(ns), c.dev)
        );
    }
    // Each end's fix, pasted as printed: the pings pass, nothing proven.
    for v in &got {
        apply_first_fix(v);
    }
    let run = diagnose(lab, None);
    assert_eq!((c.both_ways)(lab), [true, true]);
    assert_no_verdict(&run.stop());
}

#[test]
fn a_vxlan_too_big_for_its_underlay_is_tunnel_mtu_and_its_fix_heals() {
    let rec = recording("tunbig");
    let _ = std::fs::remove_file(&rec);
    let c = TooBig {
        lab: lab("tunbig", 1420),
        both_ways,
        dev: "vx919",
        tun_mtu: 1420,
        overhead: 50,
        underlay_mtu: 1360,
        remotes: ["10.219.33.2", "10.219.33.1"],
    };
    too_big_heals(c, Some(&rec));
    keep_recording(&rec, "tunnel-mtu.jsonl");
    // The recording proves the same, `df set` included.
    let replayed = replay(&rec).lines;
    let _ = std::fs::remove_file(&rec);
    let v = all_verdicts(&replayed);
    let kinds: Vec<&Value> = v.iter().map(|v| &v["kind"]).collect();
    assert_eq!(kinds, ["tunnel_mtu", "tunnel_mtu"]);
    assert_eq!(v[0]["evidence"]["df"], "set");
}

/// The control: the same tunnel at 1310, what the underlay carries.
#[test]
fn a_tunnel_sized_to_its_underlay_gives_no_verdict() {
    let lab = lab("tunfit", 1310);
    let run = diagnose(&lab, None);
    assert_eq!(both_ways(&lab), [true, true]);
    let lines = run.stop();
    assert_no_verdict(&lines);
}

/// The same over an IPv6 underlay: lk0 fd21:33::1 -- lk1 fd21:33::2 (MTU
/// 1380), VXLAN vx77 (VNI 77, port 4789) 192.168.214.1 -- .2 at
/// `tun_mtu`. The overhead is 70 (outer IPv6 40): 1310 fits.
fn lab6(test: &str, tun_mtu: u32) -> Netlab {
    let mut lab = Netlab::new(&prefix(test)).unwrap();
    lab.ns("va").unwrap();
    lab.ns("vb").unwrap();
    lab.veth("va", "lk0", "vb", "lk1").unwrap();
    for (ns, dev, me, peer) in [("va", "lk0", 1, 2), ("vb", "lk1", 2, 1)] {
        lab.exec(
            ns,
            &format!(
                "ip link set {dev} mtu 1380 && ip addr add fd21:33::{me}/64 dev {dev} nodad && \
                 ip link add vx77 type vxlan id 77 local fd21:33::{me} \
                   remote fd21:33::{peer} dstport 4789 && \
                 ip link set vx77 mtu {tun_mtu} up && \
                 ip addr add 192.168.214.{me}/24 dev vx77"
            ),
        )
        .unwrap();
    }
    lab
}

fn both_ways6(lab: &Netlab) -> [bool; 2] {
    [("va", "192.168.214.2"), ("vb", "192.168.214.1")].map(|(ns, dst)| {
        for ns in ["va", "vb"] {
            lab.exec(ns, "ip route flush cache && ip -6 route flush cache")
                .unwrap();
        }
        pings_pass(lab, ns, dst)
    })
}

/// A VXLAN over IPv6 too big for its underlay: the outer packet is too
/// big where IPv6 never fragments on the way, proven at each end with
/// the IPv6 overhead, and each end's fix, pasted, heals.
#[test]
fn a_vxlan_over_ipv6_too_big_for_its_underlay_is_tunnel_mtu_and_its_fix_heals() {
    too_big_heals(
        TooBig {
            lab: lab6("tunbig6", 1440),
            both_ways: both_ways6,
            dev: "vx77",
            tun_mtu: 1440,
            overhead: 70,
            underlay_mtu: 1380,
            remotes: ["fd21:33::2", "fd21:33::1"],
        },
        None,
    );
}

/// The control over IPv6: the tunnel at 1310 from the start.
#[test]
fn a_vxlan_over_ipv6_sized_to_its_underlay_gives_no_verdict() {
    let lab = lab6("tunfit6", 1310);
    let run = diagnose(&lab, None);
    assert_eq!(both_ways6(&lab), [true, true]);
    let lines = run.stop();
    assert_no_verdict(&lines);
}
