//! The workspace's test executables, and how `cargo xtask test` runs them.
//!
//! `cargo test --workspace` runs one test executable after another. Most
//! integration tests spend their time waiting for the kernel (ARP's 3 s,
//! a TCP retransmit, a tracer attaching), not computing, so the suite ran
//! far longer than its CPU time. Here the unit tests run first, then the
//! integration executables in two lanes at once, then the timing-bound
//! ones (floods, storms, held connections) alone, so that nothing beside
//! them perturbs what they measure. Each executable's output goes to
//! `target/test-logs/NAME.log`; a failure prints its tail.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// A test executable: (package, target name) and its path.
pub struct TestBin {
    pub package: String,
    pub name: String,
    pub exe: PathBuf,
    /// The package's directory: cargo runs a test executable from there.
    pub dir: PathBuf,
    /// An integration test of the tests crate (else a unit or doc test).
    pub integration: bool,
}

/// Builds every test executable as `cargo test --workspace` does (so the
/// two never rebuild each other) and lists them.
pub fn build(root: &Path) -> Result<Vec<TestBin>> {
    let out = Command::new("cargo")
        .current_dir(root)
        .args(["test", "--workspace", "--no-run"])
        .arg("--message-format=json-render-diagnostics")
        .stderr(Stdio::inherit())
        .output()
        .context("cannot start cargo")?;
    if !out.status.success() {
        bail!("cargo test --no-run failed: {}", out.status);
    }
    let tests_manifest = root.join("tests/Cargo.toml");
    let mut bins = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact"
            || !msg["profile"]["test"].as_bool().unwrap_or(false)
        {
            continue;
        }
        let (Some(name), Some(exe), Some(manifest)) = (
            msg["target"]["name"].as_str(),
            msg["executable"].as_str(),
            msg["manifest_path"].as_str(),
        ) else {
            continue;
        };
        let manifest = PathBuf::from(manifest);
        let is_test_kind = msg["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "test"));
        bins.push(TestBin {
            package: msg["package_id"].as_str().unwrap_or_default().to_string(),
            name: name.to_string(),
            exe: PathBuf::from(exe),
            dir: manifest.parent().unwrap_or(root).to_path_buf(),
            integration: is_test_kind && manifest == tests_manifest,
        });
    }
    Ok(bins)
}

/// The integration executables of the tests crate, by target name.
pub fn integration(bins: &[TestBin]) -> BTreeMap<String, PathBuf> {
    bins.iter()
        .filter(|b| b.integration)
        .map(|b| (b.name.clone(), b.exe.clone()))
        .collect()
}

/// Integration tests that measure time or load (floods, storms, signals
/// in a storm, thousands of held connections, a full CPU, a verdict's
/// latency): they run last, one at a time, with nothing beside them.
/// `diagnose` bounds how soon the lab's verdict comes (3 s); beside the
/// other lane it once took 4.3 s.
const ALONE: &[&str] = &["parking", "reliability", "agent", "watch", "diagnose"];

/// The shared lanes' longest executables, longest first (seconds in one
/// run of the test command here): the rest follow by name, and are all
/// under 25 s.
const LONGEST_FIRST: &[&str] = &[
    "fixes",           // 123
    "filter_corpus",   // 100
    "netfilter_rules", // 68
    "listen_overflow", // 54
    "fragments",       // 37
];

/// Integration tests never run on the host: the exhaustion labs lower
/// host-wide limits (nf_conntrack_max, gc_thresh3, netdev_max_backlog),
/// which a lab must never change on a real host, and refuse to run
/// without the guest's marker; the IP tunnel labs need GRE and IPIP,
/// which some kernels (the CI host's) are built without. `cargo xtask
/// kernels` runs them inside its qemu guests instead (checks
/// `exhaustion`, `ip-tunnels`).
pub const GUEST_ONLY: &[&str] = &["exhaustion", "ip_tunnels"];

/// Runs every executable of `bins` (`args` passed to each): unit tests
/// first, then the integration tests in two lanes, then those in `ALONE`.
pub fn run_all(
    root: &Path,
    bins: &[TestBin],
    args: &[&str],
    env: &[(&str, PathBuf)],
) -> Result<()> {
    let logs = root.join("target/test-logs");
    std::fs::create_dir_all(&logs)?;
    let t0 = Instant::now();
    let mut failed = Vec::new();
    let (units, integ): (Vec<&TestBin>, Vec<&TestBin>) = bins
        .iter()
        .filter(|b| !(b.integration && GUEST_ONLY.contains(&b.name.as_str())))
        .partition(|b| !b.integration);
    for b in &units {
        failed.extend(run_one(b, args, env, &logs)?);
    }
    let (alone, mut shared): (Vec<&TestBin>, Vec<&TestBin>) = integ
        .into_iter()
        .partition(|b| ALONE.contains(&b.name.as_str()));
    // Two lanes take the next executable from one queue, the longest
    // first, so that they end together: split by name, one lane ran
    // 308 s and the other 236 s.
    shared.sort_by_key(|b| {
        let rank = LONGEST_FIRST
            .iter()
            .position(|n| *n == b.name)
            .unwrap_or(LONGEST_FIRST.len());
        (rank, b.name.clone())
    });
    let queue = std::sync::Mutex::new(std::collections::VecDeque::from(shared));
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let (logs, queue) = (&logs, &queue);
                s.spawn(move || -> Result<Vec<String>> {
                    let mut f = Vec::new();
                    loop {
                        let next = queue.lock().expect("the test queue").pop_front();
                        let Some(b) = next else { break };
                        f.extend(run_one(b, args, env, logs)?);
                    }
                    Ok(f)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a test lane panicked"))
            .collect::<Vec<_>>()
    });
    for r in results {
        failed.extend(r?);
    }
    for b in &alone {
        failed.extend(run_one(b, args, env, &logs)?);
    }
    eprintln!(
        "tests: {} executables in {:.0} s",
        bins.len(),
        t0.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        bail!("tests failed: {}", failed.join(", "));
    }
    Ok(())
}

/// Runs one executable into its log; Some(name) if it failed.
fn run_one(
    b: &TestBin,
    args: &[&str],
    env: &[(&str, PathBuf)],
    logs: &Path,
) -> Result<Option<String>> {
    let label = format!("{}:{}", crate_name(&b.package), b.name);
    let log = logs.join(format!("{}-{}.log", crate_name(&b.package), b.name));
    let file = std::fs::File::create(&log)?;
    let start = Instant::now();
    let status = Command::new(&b.exe)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_os_str())))
        .current_dir(&b.dir)
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .status()
        .with_context(|| format!("cannot run {}", b.exe.display()))?;
    let secs = start.elapsed().as_secs_f64();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let summary = text
        .lines()
        .rev()
        .find(|l| l.starts_with("test result:"))
        .unwrap_or("")
        .to_string();
    if status.success() {
        eprintln!("test {label}: ok in {secs:.0} s  {summary}");
        return Ok(None);
    }
    let tail: Vec<&str> = text.lines().rev().take(60).collect();
    eprintln!("test {label}: FAILED in {secs:.0} s ({})", log.display());
    for l in tail.into_iter().rev() {
        eprintln!("  | {l}");
    }
    Ok(Some(label))
}

/// The crate's name in a package id: `path+file:///w/tracer#0.1.0` (the
/// directory names it), `path+file:///w/tests#tracer-tests@0.1.0`, or the
/// older `tracer 0.1.0 (path+file:///w/tracer)`.
fn crate_name(package_id: &str) -> &str {
    if let Some((url, frag)) = package_id.rsplit_once('#') {
        return match frag.split_once('@') {
            Some((name, _)) => name,
            None => url.rsplit('/').next().unwrap_or(url),
        };
    }
    package_id.split_whitespace().next().unwrap_or(package_id)
}

#[cfg(test)]
mod tests {
    use super::crate_name;

    #[test]
    fn package_ids_of_both_formats() {
        assert_eq!(crate_name("path+file:///work/main/tracer#0.1.0"), "tracer");
        assert_eq!(
            crate_name("path+file:///w/tests#tracer-tests@0.1.0"),
            "tracer-tests"
        );
        assert_eq!(crate_name("tracer 0.1.0 (path+file:///w/tracer)"), "tracer");
    }
}
