//! `tracer check`: a preflight that says, one line each, what this kernel
//! and this process offer tracer and what will be missing, before anyone
//! needs it during an incident. Every hook is really loaded (so the
//! verifier has its say) and detached again; nothing else is touched.

use crate::kernel::btf::KernelBtf;
use crate::kernel::caps::{self, Cap, CapSet};
use crate::kernel::probes;
use crate::sinks::{Format, Output};
use anyhow::{bail, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// One line of the report.
#[derive(Serialize)]
struct Item {
    #[serde(rename = "type")]
    kind: &'static str,
    check: String,
    /// `ok`, `missing` (works without it, with less), or `fail`.
    status: &'static str,
    detail: String,
}

impl Item {
    fn new(check: impl Into<String>, status: &'static str, detail: impl Into<String>) -> Self {
        Item {
            kind: "check",
            check: check.into(),
            status,
            detail: detail.into(),
        }
    }
}

const TRACEFS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Capabilities tracer uses, and what for.
const CAPS: [(Cap, &str); 4] = [
    (
        caps::SYS_ADMIN,
        "entering other namespaces; loads eBPF on its own",
    ),
    (caps::BPF, "loading eBPF"),
    (caps::PERFMON, "tracing programs"),
    (caps::NET_ADMIN, "reading and changing lab namespaces"),
];

fn capabilities() -> Item {
    let eff = CapSet::effective();
    let held: Vec<&str> = CAPS
        .iter()
        .filter(|(cap, _)| eff.has(*cap))
        .map(|(cap, _)| cap.name)
        .collect();
    let lacking: Vec<String> = CAPS
        .iter()
        .filter(|(cap, _)| !eff.has(*cap))
        .map(|(cap, why)| format!("{} ({why})", cap.name))
        .collect();
    let can_load = eff.can_load();
    let detail = if lacking.is_empty() {
        format!("held: {}", held.join(" "))
    } else {
        format!(
            "held: {}; lacking: {}",
            if held.is_empty() {
                "none".to_string()
            } else {
                held.join(" ")
            },
            lacking.join(", ")
        )
    };
    let status = match (can_load, lacking.is_empty()) {
        (false, _) => "fail",
        (true, true) => "ok",
        (true, false) => "missing",
    };
    Item::new("capabilities", status, detail)
}

fn tracefs() -> Item {
    match TRACEFS
        .iter()
        .find(|p| Path::new(p).join("events/skb/kfree_skb/format").exists())
    {
        Some(p) => Item::new("tracefs", "ok", format!("{p} (the classic tracepoint fallback)")),
        None => Item::new(
            "tracefs",
            "missing",
            "not mounted: the classic tracepoint fallback is unavailable (mount -t tracefs nodev /sys/kernel/tracing)",
        ),
    }
}

/// Runs every check, prints the report, and fails if no drop hook works.
pub fn run(format: Format, btf: Option<PathBuf>) -> Result<()> {
    let mut items = vec![Item::new(
        "kernel",
        "ok",
        crate::kernel::release().unwrap_or_else(|| "unknown".into()),
    )];
    let path = btf.unwrap_or_else(|| crate::kernel::btf::VMLINUX.into());
    let mut drop_hooks = 0;
    match KernelBtf::from_file(&path) {
        Err(e) => items.push(Item::new("btf", "fail", format!("{e:#}"))),
        Ok(kbtf) => {
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            items.push(Item::new(
                "btf",
                "ok",
                format!("{} ({:.2} MB)", path.display(), size as f64 / 1e6),
            ));
            let reasons = kbtf.drop_reasons_or_none()?;
            items.push(if reasons.is_empty() {
                Item::new(
                    "drop reasons",
                    "missing",
                    "none before Linux 5.17: drops show location, netns, devices and flow; \
                     a few reasons are inferred from the dropping function",
                )
            } else {
                Item::new(
                    "drop reasons",
                    "ok",
                    format!("{} names from the kernel BTF", reasons.len()),
                )
            });
            match aya::Btf::parse_file(&path, object::Endianness::default()) {
                Err(e) => items.push(Item::new(
                    "hooks",
                    "fail",
                    format!("aya cannot read {}: {e}", path.display()),
                )),
                Ok(aya_btf) => match probes::check_hooks(&kbtf, &aya_btf, !reasons.is_empty()) {
                    Err(e) => items.push(Item::new("hooks", "fail", format!("{e:#}"))),
                    Ok(hooks) => {
                        for h in hooks {
                            let is_drop = h.role == "drop";
                            let (status, detail) = match h.result {
                                Ok(()) => {
                                    drop_hooks += usize::from(is_drop);
                                    ("ok", "loads and attaches".to_string())
                                }
                                // Another drop hook can stand in; the others
                                // are what diagnose loses.
                                Err(e) if is_drop => ("missing", format!("{e:#}")),
                                Err(e) => ("missing", format!("diagnose works without it: {e:#}")),
                            };
                            items.push(Item::new(format!("{} {}", h.role, h.hook), status, detail));
                        }
                    }
                },
            }
        }
    }
    items.push(tracefs());
    items.push(capabilities());

    let mut out = Output::stdout(format, 0);
    for i in &items {
        if format == Format::Json {
            out.json(i)?;
        } else {
            out.line(&format!("{:<8} {:<42} {}", i.status, i.check, i.detail))?;
        }
    }
    out.flush()?;
    if drop_hooks == 0 {
        bail!("no drop probe can attach on this kernel: see the lines above");
    }
    Ok(())
}
