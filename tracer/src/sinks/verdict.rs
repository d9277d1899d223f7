//! Verdicts as the user sees them: one JSON line, or a block whose first
//! line says how sure it is. Text never states a fault that was not
//! proven: a suspicion reads SUSPECTED, a note reads NOTE.

use super::{Format, Output, BOLD, RED, YELLOW};
use crate::rules::{Tier, Verdict};
use serde_json::Value;

pub fn print(out: &mut Output, v: &Verdict) -> std::io::Result<()> {
    if out.format == Format::Json {
        return out.json(v);
    }
    // A container named through NAT is not the verdict's namespace: the
    // summary names it; the head keeps the namespace where it happened.
    let own = v.container.as_ref().filter(|_| !v.container_by_nat);
    let ns = match own {
        Some(c) => match (&c.pod, &c.pod_namespace) {
            (Some(pod), Some(ns)) => format!("pod {ns}/{pod}, {} {}", c.runtime, c.name),
            _ => format!("{} {}", c.runtime, c.name),
        },
        None => out.netns_label(v.netns, &v.netns_name),
    };
    // mss_exceeds_mtu counts SYNs, every other kind counts drops.
    let what = if v.kind == "mss_exceeds_mtu" {
        "SYN"
    } else {
        "drop"
    };
    let head = format!(
        "{} {} (netns {ns}, {} {what}{}, {:.0} ms after the first)",
        match v.tier {
            Tier::Proven => "VERDICT",
            Tier::Suspected => "SUSPECTED",
            Tier::Info => "NOTE",
        },
        v.kind,
        v.drops,
        if v.drops == 1 { "" } else { "s" },
        v.latency_ms
    );
    let head = match v.tier {
        Tier::Proven => out.paint(&format!("{BOLD}{RED}"), &head),
        Tier::Suspected => out.paint(&format!("{BOLD}{YELLOW}"), &head),
        Tier::Info => out.paint(BOLD, &head),
    };
    let mut lines = vec![String::new(), head, out.bold(&format!("  {}", v.summary))];
    if v.stale {
        lines.push(out.bold(&format!(
            "  STALE: this flow was first seen {}, before the latest change on its path; it may predate a fix",
            v.first_seen_ns
                .map(super::clock)
                .unwrap_or_else(|| "earlier".into())
        )));
    }
    lines.push("  evidence:".to_string());
    for (k, val) in &v.evidence {
        let shown = match val {
            Value::String(x) => x.clone(),
            Value::Null => "-".to_string(),
            other => other.to_string(),
        };
        lines.push(format!("    {k:<26} {}", super::printable::escape(&shown)));
    }
    lines.push(
        if v.tier == Tier::Proven {
            "  fix:"
        } else {
            "  if it matters:"
        }
        .to_string(),
    );
    for (i, f) in v.fix.iter().enumerate() {
        lines.push(format!("    {}. {f}", i + 1));
    }
    lines.push(String::new());
    for l in lines {
        out.line(&l)?;
    }
    Ok(())
}
