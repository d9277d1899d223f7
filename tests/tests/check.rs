//! `tracer check`, the preflight: it really loads every hook on the
//! running kernel and says what works, one line each.

use serde_json::Value;
use std::process::Command;
use tracer_tests::{kernel_reasons, tracer_bin};

fn check(args: &[&str]) -> (i32, Vec<Value>, String) {
    let out = Command::new(tracer_bin())
        .arg("check")
        .args(args)
        .output()
        .unwrap();
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    (
        out.status.code().unwrap_or(-1),
        lines,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn item<'a>(lines: &'a [Value], name: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["check"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {lines:#?}"))
}

#[test]
fn every_hook_is_loaded_and_reported() {
    let (code, lines, err) = check(&["-o", "json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(item(&lines, "btf")["status"], "ok");
    // tp_btf and raw_tp need no tracefs; every kernel tracer supports has both.
    assert_eq!(item(&lines, "drop tp_btf kfree_skb")["status"], "ok");
    assert_eq!(item(&lines, "drop raw_tp kfree_skb")["status"], "ok");
    for hook in [
        "routes tp_btf fib_table_lookup",
        "routes tp_btf fib6_table_lookup",
        "xmit tp_btf net_dev_start_xmit",
        "neighbours tp_btf neigh_timer_handler",
        "neighbours tp_btf neigh_event_send_done",
    ] {
        assert_eq!(item(&lines, hook)["status"], "ok", "{hook}");
    }
    let reasons = item(&lines, "drop reasons");
    let want = if kernel_reasons() { "ok" } else { "missing" };
    assert_eq!(reasons["status"], want, "{reasons}");
    assert_eq!(item(&lines, "capabilities")["status"], "ok");
    // The classic tracepoint follows tracefs: both ok or both missing.
    assert_eq!(
        item(&lines, "tracefs")["status"],
        item(&lines, "drop tracepoint skb:kfree_skb")["status"]
    );
}

#[test]
fn without_privileges_it_fails_and_says_why() {
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(tracer_bin())
        .arg("check")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("tracer needs root"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("fail") && l.contains("capabilities")),
        "{stdout}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no drop probe can attach"), "{stderr}");
}

#[test]
fn a_missing_btf_file_is_named() {
    let (code, lines, err) = check(&["-o", "json", "--btf", "/nonexistent/vmlinux"]);
    assert_eq!(code, 1);
    let btf = item(&lines, "btf");
    assert_eq!(btf["status"], "fail");
    assert!(btf["detail"]
        .as_str()
        .unwrap()
        .contains("/nonexistent/vmlinux"));
    assert!(err.contains("no drop probe can attach"), "{err}");
}
