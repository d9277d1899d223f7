//! `tunnel_mtu` against the real kernel: two hosts joined by a VXLAN
//! (`df set`) over a 1360-byte underlay, each tunnel device at 1420 where
//! only 1310 fits, and the same over a 1380-byte IPv6 underlay at 1440.
//! Datagrams the sender lets the kernel fragment (ping `-M dont`) fit
//! the tunnel, grow past the underlay and die at `ip_fragment` (IPv4) or
//! as too big (IPv6). Each end's printed fix (its tunnel MTU) is applied,
//! then the same pings pass and a second run is silent; the control, a
//! tunnel sized right from the start, is silent.

use serde_json::Value;
use std::path::Path;
use std::time::Duration;
use tracer_tests::{
    all_verdicts, apply_first_fix, assert_no_verdict, diagnose_on, keep_recording, prefix,
    recording, replay, Netlab,
};

/// One VXLAN between va (lk0) and vb (lk1): the underlay's MTU and
/// addresses (`net` + 1 or 2, `/plen`), the device and its `ip link`
/// options, and the inner /24 (`.1` and `.2`).
struct Shape {
    underlay_mtu: u32,
    net: &'static str,
    plen: u8,
    dev: &'static str,
    vxlan: &'static str,
    inner: &'static str,
    /// Bytes of encapsulation: outer IP, UDP 8, VXLAN 8, Ethernet 14.
    overhead: u32,
}

/// 10.219.33.0/24 at 1360; vx919 (VNI 919, `df set`), 192.168.213.0/24.
const V4: Shape = Shape {
    underlay_mtu: 1360,
    net: "10.219.33.",
    plen: 24,
    dev: "vx919",
    vxlan: "id 919 dstport 4789 df set",
    inner: "192.168.213",
    overhead: 50,
};

/// fd21:33::/64 at 1380; vx77 (VNI 77), 192.168.214.0/24.
const V6: Shape = Shape {
    underlay_mtu: 1380,
    net: "fd21:33::",
    plen: 64,
    dev: "vx77",
    vxlan: "id 77 dstport 4789",
    inner: "192.168.214",
    overhead: 70,
};

impl Shape {
    fn lab(&self, test: &str, tun_mtu: u32) -> Netlab {
        let mut lab = Netlab::new(&prefix(test)).unwrap();
        lab.ns("va").unwrap();
        lab.ns("vb").unwrap();
        lab.veth("va", "lk0", "vb", "lk1").unwrap();
        let (net, dev) = (self.net, self.dev);
        for (ns, under, me, peer) in [("va", "lk0", 1, 2), ("vb", "lk1", 2, 1)] {
            // No `dev`: the kernel would cap the tunnel's MTU at the
            // underlay's; a tunnel bound by route alone has no such check.
            lab.exec(
                ns,
                &format!(
                    "ip link set {under} mtu {} && ip addr add {net}{me}/{} dev {under} nodad && \
                     ip link add {dev} type vxlan {} local {net}{me} remote {net}{peer} && \
                     ip link set {dev} mtu {tun_mtu} up && \
                     ip addr add {}.{me}/24 dev {dev}",
                    self.underlay_mtu, self.plen, self.vxlan, self.inner
                ),
            )
            .unwrap();
        }
        lab
    }

    /// Three 1300-byte pings (the kernel may fragment them) each way, one
    /// way after the other; true for a way when all three came back. The
    /// path MTUs learned before are forgotten first (the other direction's
    /// replies taught both ends one), so each starts from the tunnel's own.
    fn both_ways(&self, lab: &Netlab) -> [bool; 2] {
        [("va", 2), ("vb", 1)].map(|(ns, peer)| {
            for ns in ["va", "vb"] {
                lab.exec(ns, "ip route flush cache && ip -6 route flush cache")
                    .unwrap();
            }
            let dst = format!("{}.{peer}", self.inner);
            let out = lab
                .try_exec(ns, &format!("ping -M dont -s 1300 -c 3 -i 0.3 -W 1 {dst}"))
                .unwrap();
            String::from_utf8_lossy(&out.stdout).contains(" 0% packet loss")
        })
    }
}

/// diagnose on both ends, recording to `rec` when given.
fn diagnose(lab: &Netlab, rec: Option<&Path>) -> tracer_tests::TracerRun {
    diagnose_on(lab, &["va", "vb"], rec)
}

/// The tunnel at `tun_mtu`, too big for its underlay: both directions
/// die; each end is proven `tunnel_mtu` with its numbers and fix
/// (recorded to `rec` when given); each fix, pasted, lets the pings
/// through, and a second run is silent.
fn too_big_heals(s: &Shape, test: &str, tun_mtu: u32, rec: Option<&Path>) {
    let lab = s.lab(test, tun_mtu);
    let run = diagnose(&lab, rec);
    // The first of each direction dies; the ICMP it raises teaches the
    // sender a smaller path MTU, so later ones may pass.
    assert_eq!(s.both_ways(&lab), [false, false]);
    std::thread::sleep(Duration::from_millis(500));
    let lines = run.stop();
    let got = all_verdicts(&lines);
    assert_eq!(got.len(), 2, "{got:#?}");
    let fits = s.underlay_mtu - s.overhead;
    for (v, ns, peer) in [(got[0], "va", 2), (got[1], "vb", 1)] {
        assert_eq!(v["kind"], "tunnel_mtu");
        assert_eq!(v["tier"], "proven");
        assert_eq!(v["netns_name"], lab.name(ns));
        let e = &v["evidence"];
        assert_eq!(e["tunnel"], s.dev);
        assert_eq!(e["tunnel_kind"], "vxlan");
        assert_eq!(e["tunnel_mtu"], tun_mtu);
        assert_eq!(e["overhead"], s.overhead);
        assert_eq!(e["underlay_mtu"], s.underlay_mtu);
        assert_eq!(e["outer_dst"], format!("{}{peer}", s.net));
        assert_eq!(e["outer_dport"], 4789);
        assert!(
            e["outer_len"].as_u64().unwrap() > u64::from(s.underlay_mtu),
            "{e}"
        );
        assert_eq!(e["suggested_mtu"], fits);
        assert_eq!(
            v["fix_commands"][0][0],
            format!("ip -n {} link set dev {} mtu {fits}", lab.name(ns), s.dev)
        );
    }
    // Each end's fix, pasted as printed: the pings pass, nothing proven.
    for v in &got {
        apply_first_fix(v);
    }
    let run = diagnose(&lab, None);
    assert_eq!(s.both_ways(&lab), [true, true]);
    assert_no_verdict(&run.stop());
}

/// The control: the tunnel at what its underlay carries, from the start.
fn sized_is_silent(s: &Shape, test: &str) {
    let lab = s.lab(test, s.underlay_mtu - s.overhead);
    let run = diagnose(&lab, None);
    assert_eq!(s.both_ways(&lab), [true, true]);
    assert_no_verdict(&run.stop());
}

#[test]
fn a_vxlan_too_big_for_its_underlay_is_tunnel_mtu_and_its_fix_heals() {
    let rec = recording("tunbig");
    let _ = std::fs::remove_file(&rec);
    too_big_heals(&V4, "tunbig", 1420, Some(&rec));
    keep_recording(&rec, "tunnel-mtu.jsonl");
    // The recording proves the same, `df set` included.
    let replayed = replay(&rec).lines;
    let _ = std::fs::remove_file(&rec);
    let v = all_verdicts(&replayed);
    let kinds: Vec<&Value> = v.iter().map(|v| &v["kind"]).collect();
    assert_eq!(kinds, ["tunnel_mtu", "tunnel_mtu"]);
    assert_eq!(v[0]["evidence"]["df"], "set");
}

#[test]
fn a_tunnel_sized_to_its_underlay_gives_no_verdict() {
    sized_is_silent(&V4, "tunfit");
}

/// Over IPv6 the outer packet is too big where IPv6 never fragments on
/// the way: proven at each end with the IPv6 overhead (70: 1310 fits).
#[test]
fn a_vxlan_over_ipv6_too_big_for_its_underlay_is_tunnel_mtu_and_its_fix_heals() {
    too_big_heals(&V6, "tunbig6", 1440, None);
}

#[test]
fn a_vxlan_over_ipv6_sized_to_its_underlay_gives_no_verdict() {
    sized_is_silent(&V6, "tunfit6");
}
