//! Policy routing (`ip rule`): a namespace's FIB rules, and which rule and
//! table the kernel uses for a flow. A multi-homed host (a cloud VM with
//! one table per interface) answers from a table other than `main`, so a
//! route-based proof that reads `main` alone blames the wrong route, and a
//! fix that adds to `main` is bypassed by the rule.
//!
//! The model follows `fib_rules_lookup`: rules in preference order, each
//! matched on its selectors (from, to, iif, oif, fwmark/mask, invert);
//! `lookup` tries its table (a `throw`, no match or a route within
//! `suppress_prefixlength` goes on to the next rule), `goto` jumps, `nop`
//! passes, and `blackhole`/`unreachable`/`prohibit` end the lookup.

use crate::host::route::{
    prefix_contains, Route, RouteKind, RT_TABLE_DEFAULT, RT_TABLE_LOCAL, RT_TABLE_MAIN,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleFlags, RuleMessage};
use netlink_packet_route::AddressFamily;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// What a rule does when it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    Lookup,
    Goto,
    Nop,
    Blackhole,
    Unreachable,
    Prohibit,
    Other,
}

/// One `ip rule`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FibRule {
    pub ipv6: bool,
    pub priority: u32,
    pub kind: RuleKind,
    pub table: u32,
    /// The preference a `goto` jumps to.
    pub goto: Option<u32>,
    pub from: Option<(IpAddr, u8)>,
    pub to: Option<(IpAddr, u8)>,
    pub iif: Option<String>,
    pub oif: Option<String>,
    pub fwmark: Option<u32>,
    pub fwmask: Option<u32>,
    pub invert: bool,
    pub suppress_prefixlen: Option<u32>,
    /// Selectors not modelled here (ports, ip protocol, uid range, tos,
    /// tunnel id, l3mdev): such a rule may or may not match.
    pub other_selectors: bool,
}

impl FibRule {
    /// The kernel's three rules when none were read (a recording made
    /// before rules were read, or a namespace whose rules are unknown).
    fn defaults(ipv6: bool) -> Vec<FibRule> {
        [(0, RT_TABLE_LOCAL), (32766, RT_TABLE_MAIN)]
            .into_iter()
            .chain((!ipv6).then_some((32767, RT_TABLE_DEFAULT)))
            .map(|(priority, table)| FibRule {
                ipv6,
                priority,
                kind: RuleKind::Lookup,
                table,
                goto: None,
                from: None,
                to: None,
                iif: None,
                oif: None,
                fwmark: None,
                fwmask: None,
                invert: false,
                suppress_prefixlen: None,
                other_selectors: false,
            })
            .collect()
    }

    /// The selector as `ip rule` prints it: `from 10.0.0.1 iif eth0`.
    pub fn selector(&self) -> String {
        let mut s = Vec::new();
        if self.invert {
            s.push("not".to_string());
        }
        s.push(match self.from {
            Some((a, l)) if l < max_len(a) => format!("from {a}/{l}"),
            Some((a, _)) => format!("from {a}"),
            None => "from all".into(),
        });
        if let Some((a, l)) = self.to {
            s.push(if l < max_len(a) {
                format!("to {a}/{l}")
            } else {
                format!("to {a}")
            });
        }
        if let Some(m) = self.fwmark {
            s.push(match self.fwmask {
                Some(k) if k != u32::MAX => format!("fwmark {m:#x}/{k:#x}"),
                _ => format!("fwmark {m:#x}"),
            });
        }
        if let Some(i) = &self.iif {
            s.push(format!("iif {i}"));
        }
        if let Some(o) = &self.oif {
            s.push(format!("oif {o}"));
        }
        s.join(" ")
    }

    /// The table's name as `ip rule` prints it.
    pub fn table_name(t: u32) -> String {
        match t {
            RT_TABLE_LOCAL => "local".into(),
            RT_TABLE_MAIN => "main".into(),
            RT_TABLE_DEFAULT => "default".into(),
            n => n.to_string(),
        }
    }

    /// `32765: from 10.0.0.1 lookup 100`, as `ip rule` shows it.
    pub fn text(&self) -> String {
        let action = match self.kind {
            RuleKind::Lookup => format!("lookup {}", Self::table_name(self.table)),
            RuleKind::Goto => format!("goto {}", self.goto.unwrap_or_default()),
            RuleKind::Nop => "nop".into(),
            RuleKind::Blackhole => "blackhole".into(),
            RuleKind::Unreachable => "unreachable".into(),
            RuleKind::Prohibit => "prohibit".into(),
            RuleKind::Other => "action ?".into(),
        };
        let sup = self
            .suppress_prefixlen
            .map(|n| format!(" suppress_prefixlength {n}"))
            .unwrap_or_default();
        format!("{}: {} {action}{sup}", self.priority, self.selector())
    }

    /// Whether `flow` matches this rule's selectors; None when a selector
    /// depends on what is not known (the packet's mark, ports).
    fn matches(&self, flow: &Flow) -> Option<bool> {
        let mut unknown = self.other_selectors;
        let mut hit = true;
        if let Some((a, l)) = self.from {
            match flow.src {
                Some(s) => hit &= prefix_contains(a, l, s),
                None => unknown |= l > 0,
            }
        }
        hit &= self.to.is_none_or(|(a, l)| prefix_contains(a, l, flow.dst));
        hit &= self.iif.as_deref().is_none_or(|i| flow.iif == Some(i));
        hit &= self.oif.as_deref().is_none_or(|o| flow.oif == Some(o));
        if let Some(m) = self.fwmark {
            let mask = self.fwmask.unwrap_or(u32::MAX);
            match flow.mark {
                Some(fm) => hit &= (m ^ fm) & mask == 0,
                None => unknown |= mask != 0,
            }
        }
        if !hit {
            // A selector known not to match settles it.
            return Some(self.invert);
        }
        (!unknown).then_some(!self.invert)
    }

    /// From a rule of a dump, if it is an IPv4 or IPv6 one.
    pub fn from_msg(m: &RuleMessage) -> Option<FibRule> {
        let ipv6 = match m.header.family {
            AddressFamily::Inet => false,
            AddressFamily::Inet6 => true,
            _ => return None,
        };
        let kind = match m.header.action {
            RuleAction::ToTable => RuleKind::Lookup,
            RuleAction::Goto => RuleKind::Goto,
            RuleAction::Nop => RuleKind::Nop,
            RuleAction::Blackhole => RuleKind::Blackhole,
            RuleAction::Unreachable => RuleKind::Unreachable,
            RuleAction::Prohibit => RuleKind::Prohibit,
            _ => RuleKind::Other,
        };
        let mut r = FibRule {
            ipv6,
            priority: 0,
            kind,
            table: u32::from(m.header.table),
            goto: None,
            from: None,
            to: None,
            iif: None,
            oif: None,
            fwmark: None,
            fwmask: None,
            invert: m.header.flags.contains(RuleFlags::Invert),
            suppress_prefixlen: None,
            other_selectors: m.header.tos != 0,
        };
        for a in &m.attributes {
            match a {
                RuleAttribute::Priority(p) => r.priority = *p,
                RuleAttribute::Table(t) => r.table = *t,
                RuleAttribute::Goto(g) => r.goto = Some(*g),
                RuleAttribute::Source(s) => r.from = Some((*s, m.header.src_len)),
                RuleAttribute::Destination(d) => r.to = Some((*d, m.header.dst_len)),
                RuleAttribute::Iifname(i) => r.iif = Some(i.clone()),
                RuleAttribute::Oifname(o) => r.oif = Some(o.clone()),
                RuleAttribute::FwMark(v) => r.fwmark = Some(*v),
                RuleAttribute::FwMask(v) => r.fwmask = Some(*v),
                // The kernel reports "no suppression" as u32::MAX.
                RuleAttribute::SuppressPrefixLen(n) if *n != u32::MAX => {
                    r.suppress_prefixlen = Some(*n)
                }
                RuleAttribute::L3MDev(true)
                | RuleAttribute::UidRange(_)
                | RuleAttribute::IpProtocol(_)
                | RuleAttribute::SourcePortRange(_)
                | RuleAttribute::DestinationPortRange(_)
                | RuleAttribute::TunId(_)
                | RuleAttribute::SuppressIfGroup(_) => r.other_selectors = true,
                _ => {}
            }
        }
        // A mark without a mask is matched whole.
        if r.fwmark.is_some() && r.fwmask.is_none() {
            r.fwmask = Some(u32::MAX);
        }
        Some(r)
    }
}

fn max_len(a: IpAddr) -> u8 {
    if a.is_ipv6() {
        128
    } else {
        32
    }
}

/// What the kernel looks up: the flow of one route lookup. Devices are
/// names (rules name devices); `iif` is `lo` for locally made packets and
/// for the reverse-path check, `oif` None when the lookup has none.
#[derive(Clone, Debug)]
pub struct Flow<'a> {
    pub src: Option<IpAddr>,
    pub dst: IpAddr,
    pub iif: Option<&'a str>,
    pub oif: Option<&'a str>,
    /// The packet's mark as the lookup sees it: None when unknown.
    pub mark: Option<u32>,
}

/// The outcome of a policy lookup: the rule that decided and the table it
/// sent the lookup to, with the route found there (None for a rule that
/// ends the lookup, such as `unreachable`).
#[derive(Clone, Debug)]
pub struct Decision {
    pub rule: FibRule,
    pub table: u32,
    pub route: Option<Route>,
    /// False when a rule on the way may have matched but depends on what
    /// is not known (the mark): the decision assumes it did not.
    pub certain: bool,
}

impl Decision {
    /// Whether the lookup left the main table (a fix must then act in
    /// this table, which the rule sends the flow to).
    pub fn policy_routed(&self) -> bool {
        self.table != RT_TABLE_MAIN
    }

    /// ` table 213` for a command acting in this table; empty for main.
    pub fn table_arg(&self) -> String {
        if self.policy_routed() {
            format!(" table {}", FibRule::table_name(self.table))
        } else {
            String::new()
        }
    }

    /// The evidence of a route-based verdict: the table and the rule.
    pub fn evidence(&self) -> serde_json::Value {
        serde_json::json!({
            "table": self.table,
            "rule": self.rule.text(),
            "rule_priority": self.rule.priority,
            "rule_selector": self.rule.selector(),
            "fwmark": self.rule.fwmark,
            "fwmask": self.rule.fwmask,
            "certain": self.certain,
        })
    }
}

/// The rules (of `flow`'s family, the kernel's defaults when none were
/// read) whose selectors may match `flow`, in preference order.
pub fn matching(rules: &[FibRule], flow: &Flow) -> Vec<FibRule> {
    let v6 = flow.dst.is_ipv6();
    let mut mine: Vec<FibRule> = rules.iter().filter(|r| r.ipv6 == v6).cloned().collect();
    if mine.is_empty() {
        mine = FibRule::defaults(v6);
    }
    mine.sort_by_key(|r| r.priority);
    mine.retain(|r| r.matches(flow) != Some(false));
    mine
}

/// The best route of one table: longest prefix, then lowest metric.
pub fn table_lookup(routes: &[Route], table: u32, dst: IpAddr) -> Option<&Route> {
    routes
        .iter()
        .filter(|r| r.table == table && r.contains(dst))
        .max_by_key(|r| (r.prefix_len, std::cmp::Reverse(r.metric)))
}

const RTN_THROW: u8 = 9;

/// Runs the policy lookup of `flow` over `rules` (the kernel's defaults
/// when empty). With `table` (the one the kernel reported using), the
/// decision is the first rule that may match and sends the lookup there
/// with a result: how the kernel got to that table.
pub fn decide(
    rules: &[FibRule],
    routes: &[Route],
    flow: &Flow,
    table: Option<u32>,
) -> Option<Decision> {
    let defaults;
    let mut mine: Vec<&FibRule> = rules
        .iter()
        .filter(|r| r.ipv6 == flow.dst.is_ipv6())
        .collect();
    if mine.is_empty() {
        defaults = FibRule::defaults(flow.dst.is_ipv6());
        mine = defaults.iter().collect();
    }
    mine.sort_by_key(|r| r.priority);
    let mut certain = true;
    let mut skip_below = 0;
    for r in mine {
        if r.priority < skip_below {
            continue;
        }
        let m = r.matches(flow);
        let maybe = m.is_none();
        match (m, table) {
            (Some(false), _) => continue,
            // Without the kernel's word, an unknown match is assumed not
            // to hold, and the decision says so.
            (None, None) => {
                certain = false;
                continue;
            }
            _ => {}
        }
        let done = |route: Option<&Route>| {
            Some(Decision {
                rule: r.clone(),
                table: r.table,
                route: route.cloned(),
                certain: certain && !maybe,
            })
        };
        match r.kind {
            RuleKind::Lookup => {
                if table.is_some_and(|t| t != r.table) {
                    continue;
                }
                let Some(route) = table_lookup(routes, r.table, flow.dst) else {
                    continue;
                };
                if route.kind == RouteKind::Other(RTN_THROW)
                    || r.suppress_prefixlen
                        .is_some_and(|n| u32::from(route.prefix_len) <= n)
                {
                    continue;
                }
                return done(Some(route));
            }
            RuleKind::Goto => skip_below = r.goto.unwrap_or(u32::MAX),
            RuleKind::Nop | RuleKind::Other => {}
            RuleKind::Blackhole | RuleKind::Unreachable | RuleKind::Prohibit => {
                if table.is_none() {
                    return done(None);
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn route(dst: &str, len: u8, table: u32, oif: i32) -> Route {
        Route {
            dst: ip(dst),
            prefix_len: len,
            table,
            kind: RouteKind::Unicast,
            oif: Some(oif),
            gateway: None,
            metric: 0,
            src: None,
        }
    }

    fn rule(priority: u32, table: u32) -> FibRule {
        FibRule {
            priority,
            table,
            ..FibRule::defaults(false)[1].clone()
        }
    }

    fn rules() -> Vec<FibRule> {
        let mut v = FibRule::defaults(false);
        v.push(FibRule {
            from: Some((ip("10.44.0.9"), 32)),
            ..rule(32000, 77)
        });
        v.push(FibRule {
            fwmark: Some(0x20),
            fwmask: Some(0xf0),
            ..rule(31000, 78)
        });
        v
    }

    fn routes() -> Vec<Route> {
        vec![
            route("0.0.0.0", 0, RT_TABLE_MAIN, 2),
            route("0.0.0.0", 0, 77, 3),
            route("0.0.0.0", 0, 78, 4),
        ]
    }

    fn flow(src: &str, mark: Option<u32>) -> Flow<'static> {
        Flow {
            src: Some(ip(src)),
            dst: ip("192.0.2.1"),
            iif: Some("lo"),
            oif: None,
            mark,
        }
    }

    #[test]
    fn a_source_rule_sends_the_lookup_to_its_table() {
        let (ru, ro) = (rules(), routes());
        let d = decide(&ru, &ro, &flow("10.44.0.9", Some(0)), None).unwrap();
        assert_eq!(
            (d.table, d.route.as_ref().unwrap().oif, d.certain),
            (77, Some(3), true)
        );
        assert_eq!(d.rule.text(), "32000: from 10.44.0.9 lookup 77");
        let d = decide(&ru, &ro, &flow("10.44.0.8", Some(0)), None).unwrap();
        assert_eq!((d.table, d.rule.priority), (RT_TABLE_MAIN, 32766));
    }

    #[test]
    fn a_mark_rule_matches_under_its_mask() {
        let (ru, ro) = (rules(), routes());
        let d = decide(&ru, &ro, &flow("10.1.1.1", Some(0x2f)), None).unwrap();
        assert_eq!(d.table, 78);
        assert_eq!(d.rule.text(), "31000: from all fwmark 0x20/0xf0 lookup 78");
        let d = decide(&ru, &ro, &flow("10.1.1.1", Some(0x10)), None).unwrap();
        assert_eq!(d.table, RT_TABLE_MAIN);
        // Mark unknown: main, but not certain; the kernel's table settles it.
        let d = decide(&ru, &ro, &flow("10.1.1.1", None), None).unwrap();
        assert_eq!((d.table, d.certain), (RT_TABLE_MAIN, false));
        let d = decide(&ru, &ro, &flow("10.1.1.1", None), Some(78)).unwrap();
        assert_eq!((d.rule.priority, d.certain), (31000, false));
    }

    #[test]
    fn throw_and_suppression_go_on_to_the_next_rule() {
        let mut ru = rules();
        ru.push(FibRule {
            suppress_prefixlen: Some(0),
            ..rule(100, RT_TABLE_MAIN)
        });
        let mut ro = routes();
        ro.push(route("10.44.0.0", 16, 77, 5));
        ro.last_mut().unwrap().kind = RouteKind::Other(RTN_THROW);
        // The main table's default is suppressed by rule 100.
        let d = decide(&ru, &ro, &flow("10.44.0.9", Some(0)), None).unwrap();
        assert_eq!(d.rule.priority, 32000);
        let mut f = flow("10.44.0.9", Some(0));
        f.dst = ip("10.44.3.3");
        // Table 77 throws 10.44/16: on to main's default.
        let d = decide(&ru, &ro, &f, None).unwrap();
        assert_eq!((d.rule.priority, d.table), (32766, RT_TABLE_MAIN));
    }

    #[test]
    fn no_rules_read_means_the_kernel_defaults() {
        let ro = routes();
        let d = decide(&[], &ro, &flow("10.44.0.9", Some(0)), None).unwrap();
        assert_eq!(d.rule.text(), "32766: from all lookup main");
    }
}
