//! Issue 22: a dense node costs nothing while it idles. With 200
//! namespaces (each a veth into one bridge), `diagnose` must not rescan
//! /proc on a timer, nor spawn threads: over a 10 s window, strace attached
//! to it logs the file syscalls a rescan is made of and the threads it
//! starts. main's code failed this (a /proc walk and a thread per namespace
//! every 2 s for the MTU check, the containers' /proc walk every 5 s, in
//! 10 s: 428 threads started, 770 calls on /proc). What remains
//! is the MTU check re-reading each namespace's links by its /run/netns
//! name, at most a quarter of a percent of a CPU (kernel/syn_gate.rs).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;
use tracer_tests::*;

const N: usize = 200;
/// The window strace watches.
const WINDOW_S: u64 = 10;
/// Calls on /proc paths, readlink and getdents64 over the window: one walk
/// of /proc is a few hundred by itself.
const PROC_CALLS_BUDGET: usize = 40;

fn ip_batch(ns: Option<&str>, cmds: &str) {
    let mut c = Command::new("ip");
    if let Some(ns) = ns {
        c.args(["-n", ns]);
    }
    let mut child = c
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("ip");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(cmds.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "ip -batch failed");
}

#[test]
fn idle_namespaces_cost_no_rescans_and_no_threads() {
    let mut lab = Netlab::new(&prefix("scale")).unwrap();
    // No IPv6: router solicitations flooded to 200 bridge ports would be
    // a drop storm, not idling.
    lab.ipv6 = false;
    let hub = lab.ns("hub").unwrap();
    let mut cmds = String::from("link add br0 type bridge\nlink set br0 up\n");
    for i in 0..N {
        // The namespace side stays down: nothing in it ever sends.
        let ns = lab.ns(&format!("n{i}")).unwrap();
        cmds.push_str(&format!(
            "link add h{i} type veth peer name eth0 netns {ns}\nlink set h{i} master br0 up\n"
        ));
    }
    ip_batch(Some(&hub), &cmds);

    // Drops of other namespaces (other tests on the host) are not the
    // subject: the kernel filters them out. Every namespace is still
    // listed, scanned for MTUs and watched for churn.
    let run = start(&["diagnose", "--netns", &hub]);
    // Start-up reads every namespace once (the MTU check's first scan).
    std::thread::sleep(scaled(Duration::from_secs(4)));
    let out = std::env::temp_dir().join(format!("trtest-scale-{}.strace", std::process::id()));
    let status = Command::new("timeout")
        .args(["-s", "INT", &WINDOW_S.to_string(), "strace", "-f", "-o"])
        .arg(&out)
        .args([
            "-e",
            "trace=openat,statx,newfstatat,readlink,getdents64,clone,clone3",
            "-p",
            &run.pid().to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("strace");
    // The container inventory's thread walks /proc when a namespace is
    // made or deleted anywhere on the host (its fallback has no other
    // event): other tests' churn on a shared host, not idling here.
    let inventory: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", run.pid()))
        .map(|rd| {
            rd.flatten()
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.trim() == "containers")
                })
                .map(|t| t.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let log = std::fs::read_to_string(&out).unwrap_or_default();
    if std::env::var_os("TRACER_TEST_KEEP_STRACE").is_none() {
        let _ = std::fs::remove_file(&out);
    }
    let lines = run.stop();
    assert!(
        status.code() == Some(124) || status.success(),
        "strace: {status}"
    );
    assert!(!log.is_empty(), "strace logged nothing");
    let calls: Vec<&str> = log
        .lines()
        .filter(|l| !l.contains("resumed>"))
        .filter(|l| {
            !inventory
                .iter()
                .any(|t| l.split_whitespace().next() == Some(t))
        })
        .collect();
    let threads: Vec<&&str> = calls
        .iter()
        .filter(|l| l.contains(" clone(") || l.contains(" clone3("))
        .collect();
    let proc: Vec<&&str> = calls
        .iter()
        .filter(|l| {
            l.contains("\"/proc/") || l.contains(" readlink(") || l.contains(" getdents64(")
        })
        .collect();
    eprintln!(
        "over {WINDOW_S} s with {N} idle namespaces: {} calls traced, {} threads started, {} /proc calls",
        calls.len(),
        threads.len(),
        proc.len()
    );
    assert!(
        threads.is_empty(),
        "threads started while idle with {N} namespaces: {threads:#?}"
    );
    assert!(
        proc.len() <= PROC_CALLS_BUDGET,
        "{} /proc calls in {WINDOW_S} s idle with {N} namespaces (budget {PROC_CALLS_BUDGET}): {:#?}",
        proc.len(),
        &proc[..proc.len().min(20)]
    );
    // The run itself went well: a summary, no error.
    assert!(lines.iter().any(|v| v["type"] == "summary"), "{lines:?}");
}
