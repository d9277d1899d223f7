//! `tunnel_mtu` for the IP tunnels (GRE, IPIP) against a real kernel:
//! each tunnel at 1420 over a 1360-byte underlay, where 1336 (GRE, 24
//! bytes of encapsulation) or 1340 (IPIP, 20) fits. Their path MTU
//! discovery (on by default) sets the outer DF, so 1388-byte inner
//! packets the sender lets the kernel fragment (ping `-M dont`) die at
//! `ip_fragment` as outer packets. Each end's printed fix is applied,
//! then the pings pass and a second run is silent; the control, each
//! tunnel sized right from the start, is silent.
//!
//! Guest only: kernels built without GRE and IPIP (this project's CI
//! host's among them) refuse to make the devices, so `cargo xtask test`
//! runs this file in a qemu guest of Debian's kernel (check
//! `ip-tunnels`), not on the host (`testbins::GUEST_ONLY`).

use std::time::Duration;
use tracer_tests::{all_verdicts, apply_first_fix, assert_no_verdict, diagnose_on, prefix, Netlab};

/// Underlay lk0 10.219.36.1 -- lk1 10.219.36.2 (MTU 1360); a `kind`
/// tunnel (gre, ipip) named `dev` between them, 192.168.216.1 -- .2, at
/// `tun_mtu`, with path MTU discovery (their default: the outer DF set).
fn lab_ip(test: &str, kind: &str, dev: &str, tun_mtu: u32) -> Netlab {
    let mut lab = Netlab::new(&prefix(test)).unwrap();
    lab.ns("va").unwrap();
    lab.ns("vb").unwrap();
    lab.veth("va", "lk0", "vb", "lk1").unwrap();
    for (ns, under, me, peer) in [("va", "lk0", 1, 2), ("vb", "lk1", 2, 1)] {
        let made = lab.exec(
            ns,
            &format!(
                "ip link set {under} mtu 1360 up && ip addr add 10.219.36.{me}/24 dev {under} && \
                 ip link add {dev} type {kind} local 10.219.36.{me} remote 10.219.36.{peer} ttl 64 && \
                 ip link set {dev} mtu {tun_mtu} up && \
                 ip addr add 192.168.216.{me}/24 dev {dev}"
            ),
        );
        if let Err(e) = made {
            panic!(
                "{e}\nthis kernel cannot make a {kind} device: run these labs in a guest \
                 (cargo xtask kernels --check ip-tunnels)"
            );
        }
    }
    lab
}

/// Three 1360-byte pings each way (an inner packet of 1388 bytes, which
/// the kernel may fragment), the path MTUs learned before forgotten.
fn both_ways_ip(lab: &Netlab) -> [bool; 2] {
    [("va", "192.168.216.2"), ("vb", "192.168.216.1")].map(|(ns, dst)| {
        for ns in ["va", "vb"] {
            lab.exec(ns, "ip route flush cache").unwrap();
        }
        let out = lab
            .try_exec(ns, &format!("ping -M dont -s 1360 -c 3 -i 0.3 -W 1 {dst}"))
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains(" 0% packet loss")
    })
}

/// GRE (24 bytes of encapsulation) and IPIP (20) at 1420 over the 1360
/// underlay: the outer packets of the 1388-byte inner ones die at
/// `ip_fragment`, proven at each end with the tunnel's own overhead (no
/// port ties them to the device: the protocol and the far end do), and
/// each end's fix, pasted, heals.
#[test]
fn gre_and_ipip_too_big_for_their_underlay_are_tunnel_mtu_and_their_fixes_heal() {
    for (kind, dev, overhead, fits) in [("gre", "gr41", 24, 1336), ("ipip", "ip42", 20, 1340)] {
        let lab = lab_ip(&format!("tun{kind}"), kind, dev, 1420);
        let run = diagnose_on(&lab, &["va", "vb"], None);
        assert_eq!(both_ways_ip(&lab), [false, false], "{kind}");
        std::thread::sleep(Duration::from_millis(500));
        let lines = run.stop();
        let got = all_verdicts(&lines);
        assert_eq!(got.len(), 2, "{kind}: {got:#?}");
        for (v, ns, remote) in [(got[0], "va", "10.219.36.2"), (got[1], "vb", "10.219.36.1")] {
            assert_eq!(v["kind"], "tunnel_mtu", "{v:#}");
            assert_eq!(v["tier"], "proven");
            assert_eq!(v["netns_name"], lab.name(ns));
            let e = &v["evidence"];
            assert_eq!(e["tunnel"], dev, "{e}");
            assert_eq!(e["tunnel_kind"], kind);
            assert_eq!(e["overhead"], overhead);
            assert_eq!(e["df"], "set");
            assert_eq!(e["underlay_mtu"], 1360);
            assert_eq!(e["outer_dst"], remote);
            assert_eq!(e["suggested_mtu"], fits);
            assert_eq!(
                v["fix_commands"][0][0],
                format!("ip -n {} link set dev {dev} mtu {fits}", lab.name(ns))
            );
        }
        for v in &got {
            apply_first_fix(v);
        }
        let run = diagnose_on(&lab, &["va", "vb"], None);
        assert_eq!(both_ways_ip(&lab), [true, true], "{kind} after the fix");
        assert_no_verdict(&run.stop());
    }
}

/// The control: the same GRE and IPIP tunnels sized to the underlay.
#[test]
fn gre_and_ipip_sized_to_their_underlay_give_no_verdict() {
    for (kind, dev, fits) in [("gre", "gr43", 1336), ("ipip", "ip44", 1340)] {
        let lab = lab_ip(&format!("tunfit{kind}"), kind, dev, fits);
        let run = diagnose_on(&lab, &["va", "vb"], None);
        assert_eq!(both_ways_ip(&lab), [true, true], "{kind}");
        assert_no_verdict(&run.stop());
    }
}
