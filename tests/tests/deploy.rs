//! The manifests under deploy/: validated offline against Kubernetes'
//! schemas (PyPI's kubernetes-validate, which bundles them; `cargo xtask
//! test` installs it in target/kv), and checked for what the agent needs.

use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn validate(file: &std::path::Path) -> (bool, String) {
    let out = Command::new(root().join("target/kv/bin/kubernetes-validate"))
        .args(["--strict", "--kubernetes-version", "1.30.0"])
        .arg(file)
        .output()
        .expect("kubernetes-validate (cargo xtask test installs it in target/kv)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Every document of a YAML file, as JSON (Debian's python3-yaml parses).
fn documents(file: &str) -> Vec<Value> {
    let out = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import sys, json, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(root().join("deploy").join(file))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn daemonset_validates_against_the_kubernetes_schema() {
    let file = root().join("deploy/daemonset.yaml");
    let (ok, text) = validate(&file);
    assert!(ok, "{text}");
    for kind in ["namespace", "serviceaccount", "service", "daemonset"] {
        assert!(
            text.contains(&format!("passed for resource {kind}/")),
            "{text}"
        );
    }
    assert!(!text.contains("WARN") && !text.contains("ERROR"), "{text}");
    // The validator does reject a broken manifest.
    let bad = std::env::temp_dir().join(format!("trtest-{}-bad.yaml", std::process::id()));
    let s = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&bad, s.replace("hostNetwork: true", "hostNetwork: \"yes\"")).unwrap();
    let (ok, text) = validate(&bad);
    let _ = std::fs::remove_file(&bad);
    assert!(!ok, "a string hostNetwork passed: {text}");
}

#[test]
fn daemonset_grants_only_the_listed_capabilities_and_mounts() {
    let docs = documents("daemonset.yaml");
    let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["hostPID"], true);
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(
        sc["capabilities"]["add"],
        serde_json::json!(["BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"])
    );
    assert_eq!(c["args"][0], "agent");
    assert!(c["readinessProbe"]["httpGet"]["path"] == "/healthz");
    assert!(c["resources"]["limits"]["memory"].is_string());
    let mounts: Vec<(&str, bool)> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["mountPath"].as_str().unwrap(), m["readOnly"] == true))
        .collect();
    for path in ["/sys/kernel/btf", "/sys/kernel/tracing", "/run/netns"] {
        assert!(
            mounts.contains(&(path, true)),
            "{path} read-only: {mounts:?}"
        );
    }
    assert!(
        mounts.iter().any(|(p, ro)| p.ends_with(".sock") && *ro),
        "runtime socket read-only: {mounts:?}"
    );
    // hostPID already shows the host's processes in the pod's own /proc,
    // which is where the code looks: a second copy would be unused.
    assert!(
        !mounts.iter().any(|(p, _)| p.ends_with("/proc")),
        "an unused /proc mount: {mounts:?}"
    );
    let ann = &ds["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(ann["prometheus.io/scrape"], "true");
    assert_eq!(ann["prometheus.io/port"], "9431");
}

#[test]
fn servicemonitor_selects_the_agent_service() {
    // No schema ships for this CRD: parsed, and matched to the Service.
    let sm = &documents("servicemonitor.yaml")[0];
    assert_eq!(sm["kind"], "ServiceMonitor");
    let docs = documents("daemonset.yaml");
    let svc = docs.iter().find(|d| d["kind"] == "Service").unwrap();
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&svc["metadata"]["labels"][k], v);
    }
    assert_eq!(
        sm["spec"]["endpoints"][0]["port"],
        svc["spec"]["ports"][0]["name"]
    );
}

/// The DaemonSet runs the image `cargo xtask image` makes (tracer:VERSION),
/// not a tag nobody builds.
#[test]
fn daemonset_names_the_image_that_xtask_builds() {
    let docs = documents("daemonset.yaml");
    let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    let image = &ds["spec"]["template"]["spec"]["containers"][0]["image"];
    assert_eq!(
        image.as_str(),
        Some(concat!("tracer:", env!("CARGO_PKG_VERSION")))
    );
    let xtask = std::fs::read_to_string(root().join("xtask/src/main.rs")).unwrap();
    assert!(xtask.contains(r#"concat!("tracer:", env!("CARGO_PKG_VERSION"))"#));
}

fn promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(root().join("deploy/alerts"))
        .output()
        .expect("promtool (Debian's prometheus package; cargo xtask test installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The shipped alerts are valid rules, and their unit tests fire and
/// resolve each alert on series shaped like the agent's.
#[test]
fn the_alerts_pass_promtool_check_and_their_unit_tests() {
    let (ok, text) = promtool(&["check", "rules", "tracer.rules.yaml"]);
    assert!(ok && text.contains("SUCCESS: 7 rules found"), "{text}");
    let (ok, text) = promtool(&["test", "rules", "tracer.rules.test.yaml"]);
    assert!(ok && text.contains("SUCCESS"), "{text}");
    // Every alert has a case that expects it to fire.
    let rules = std::fs::read_to_string(root().join("deploy/alerts/tracer.rules.yaml")).unwrap();
    let tests =
        std::fs::read_to_string(root().join("deploy/alerts/tracer.rules.test.yaml")).unwrap();
    for alert in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        let cases: Vec<&str> = tests
            .split("- eval_time:")
            .filter(|c| c.contains(&format!("alertname: {alert}\n")))
            .collect();
        assert!(
            cases.iter().any(|c| c.contains("exp_labels")),
            "{alert} never fires in the unit tests"
        );
    }
}

/// The Prometheus Operator's copy holds exactly the plain file's groups.
#[test]
fn the_prometheusrule_holds_the_same_alerts() {
    let plain = &documents("alerts/tracer.rules.yaml")[0];
    let cr = &documents("prometheusrule.yaml")[0];
    assert_eq!(cr["kind"], "PrometheusRule");
    assert_eq!(cr["metadata"]["namespace"], "tracer");
    assert_eq!(cr["spec"]["groups"], plain["groups"]);
}

/// The unit's options, as `systemd-analyze security` scores them offline
/// (no running systemd needed): OK or better, not 7.2 MEDIUM as before.
#[test]
fn the_systemd_unit_scores_ok_in_systemd_analyze_security() {
    let dir = std::env::temp_dir().join(format!("trtest-{}-unit", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let unit = dir.join("tracer-agent.service");
    std::fs::copy(root().join("deploy/tracer-agent.service"), &unit).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze (Debian's systemd package)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    std::fs::remove_dir_all(&dir).unwrap();
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for tracer-agent.service: ")
                .nth(1)
        })
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no score: {text}"));
    assert!(score <= 3.5, "exposure {score}:\n{text}");
    // What the score rests on, each still in place.
    for must in [
        "✓ SystemCallFilter=~@swap",
        "✓ UMask=",
        "✓ ProtectKernelModules=",
        "✓ RestrictAddressFamilies=~AF_PACKET",
    ] {
        assert!(text.contains(must), "{must}:\n{text}");
    }
}
