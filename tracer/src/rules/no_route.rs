//! `no_route`: `IP_INNOROUTES` / `IP_OUTNOROUTES` with a failed kernel
//! lookup or no route in the table; also an `IP_RPFILTER` drop whose
//! reverse-path lookup failed (no route back to the source), concluded
//! through [`no_route_back`].

use super::ctx::{Ctx, Finding};
use super::{Fact, Rule, Tier};
use crate::events::event::DropRecord;
use crate::events::protocols::errno_name;
use serde_json::json;
use std::net::IpAddr;

pub struct NoRoute;

impl Rule for NoRoute {
    fn kinds(&self) -> &'static [&'static str] {
        &["no_route"]
    }

    fn on_fact(&mut self, fact: &Fact, cx: &mut Ctx) {
        let Fact::Drop(d) = fact else { return };
        if !matches!(d.reason.as_str(), "IP_INNOROUTES" | "IP_OUTNOROUTES") {
            return;
        }
        let Some(dst) = d.dst else { return };
        let topo = cx.topo(d.netns);
        // Proof: the kernel's lookup failed, or the table has no route.
        let kernel_err = d.route.as_ref().map(|r| r.err).filter(|e| *e != 0);
        let table_route = topo.as_ref().and_then(|t| t.route_to(dst).cloned());
        if kernel_err.is_none() && table_route.is_some() {
            return;
        }
        let key = format!("noroute/{}/{}", d.netns, dst);
        cx.tally(&key, d.ts_ns);
        let hint = cx.ns_hint(d.netns);
        let summary = format!(
            "No route to {dst}{}: the kernel drops the packet{}.",
            d.ingress_ifname
                .as_ref()
                .map(|i| format!(" for traffic forwarded from {i}"))
                .unwrap_or_default(),
            if d.reason == "IP_INNOROUTES" {
                " and answers ICMP net-unreachable"
            } else {
                ""
            }
        );
        let fix = vec![format!(
            "Add a route: {hint}ip route add {dst}/32 via <gateway> (or a default route); check {hint}ip route get {dst}"
        )];
        let evidence = json!({
            "dst": dst, "src": d.src, "ingress_ifname": d.ingress_ifname,
            "route_err": kernel_err.map(errno_name), "route_errno": kernel_err,
            "reason": d.reason,
        });
        cx.conclude(Finding {
            key,
            kind: "no_route",
            tier: Tier::Proven,
            netns: d.netns,
            summary,
            evidence,
            fix,
        });
    }
}

/// rp_filter dropped a packet because there is no route back to its
/// source at all (`err` is the reverse lookup's error, 0 if the table
/// alone showed it).
pub(super) fn no_route_back(d: &DropRecord, cx: &mut Ctx, src: IpAddr, err: i32) {
    let key = format!("noroute-back/{}/{}", d.netns, src);
    cx.tally(&key, d.ts_ns);
    let hint = cx.ns_hint(d.netns);
    let ingress = d.ingress_ifname.clone().unwrap_or_else(|| "?".into());
    let summary = format!(
        "Packets from {src} arrive on {ingress} but there is no route back to {src}, so rp_filter drops them."
    );
    let dev = super::fix::q(&ingress);
    let fix = vec![format!(
        "Add a route back to {src}: {hint}ip route add {src}/32 via <gateway on {ingress}> dev {dev} (or a default route); check {hint}ip route get {src}"
    )];
    let err = (err != 0).then_some(err);
    let evidence = json!({
        "dst": src, "src": d.dst, "ingress_ifname": d.ingress_ifname,
        "route_err": err.map(errno_name), "route_errno": err, "reason": d.reason,
    });
    cx.conclude(Finding {
        key,
        kind: "no_route",
        tier: Tier::Proven,
        netns: d.netns,
        summary,
        evidence,
        fix,
    });
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::super::{Fact, Tier};

    #[test]
    fn a_failed_lookup_names_its_errno() {
        let mut src = Fake::with(vec![topo(
            NS,
            None,
            vec![],
            vec![route("10.1.0.0", 24, 2, None)],
        )]);
        let mut d = drop("IP_INNOROUTES", 1_000);
        d.dst = Some(ip("203.0.113.9"));
        d.route = Some(lookup(0, "", 0, -11));
        let v = run(&mut src, vec![Fact::Drop(d)], 0);
        assert_eq!(kinds(&v), [("no_route", Tier::Proven)]);
        assert_eq!(v[0].evidence["route_err"], "ENETUNREACH");
        assert_eq!(v[0].evidence["route_errno"], -11);
    }
}
