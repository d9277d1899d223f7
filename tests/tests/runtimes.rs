//! Containers named by containerd's and podman's own APIs (Debian's
//! `containerd` and `podman`; `cargo xtask test` installs them and runs
//! this binary after the Docker tests).
//!
//! Each test starts its own runtime with every directory (root, state,
//! socket, storage) under a private temporary directory, so it never meets
//! a system containerd or podman; the containers join network namespaces
//! of the test's own (no CNI, no bridge, no iptables rule is made). The
//! image is a busybox-static rootfs, imported offline. The tracer is
//! pointed at the runtime by its socket variable, and a drop caused in each
//! container's namespace must come out named: runtime, name, pod and pod
//! namespace in JSON, the name in text and in the agent's metric labels.

use netlab::runtimes::{rootfs_tar, stop, wait_until, which, Podman, Scratch};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tracer_tests::{free_port, http_get, prefix, start_in, tracer_bin, Netlab};

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The rootfs as a one-layer image in `docker save`'s format, which
/// `ctr images import` reads: no registry needed.
fn image_archive(dir: &Scratch, tag: &str) -> PathBuf {
    let layer = rootfs_tar(dir).unwrap();
    let img = dir.path("image");
    std::fs::create_dir_all(&img).unwrap();
    std::fs::rename(&layer, img.join("layer.tar")).unwrap();
    let digest = sh(&format!("sha256sum {}/layer.tar", img.display()));
    let digest = digest.split_whitespace().next().unwrap();
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{digest}")]},
    });
    std::fs::write(img.join("config.json"), config.to_string()).unwrap();
    let manifest = serde_json::json!([{
        "Config": "config.json",
        "RepoTags": [tag],
        "Layers": ["layer.tar"],
    }]);
    std::fs::write(img.join("manifest.json"), manifest.to_string()).unwrap();
    let out = dir.path("image.tar");
    sh(&format!(
        "tar -C {} -cf {} manifest.json config.json layer.tar",
        img.display(),
        out.display()
    ));
    out
}

/// containerd with its own root, state, socket and plugin directory, the
/// CRI plugin off (no CNI is set up), in the `k8s.io` namespace kubelet
/// uses.
struct Containerd {
    child: Child,
    sock: PathBuf,
    containers: Vec<String>,
    /// /run/containerd did not exist before: the shims' fifo and socket
    /// directories it gets are removed after.
    made_run_dir: bool,
    // Last: removed after containerd stopped.
    dir: Scratch,
}

const CTR_NS: &str = "k8s.io";
const CTR_IMAGE: &str = "docker.io/tracer-test/busybox:latest";

impl Containerd {
    fn start() -> Containerd {
        assert!(
            which("containerd") && which("ctr") && Path::new("/bin/busybox").exists(),
            "containerd, ctr and busybox-static must be installed (cargo xtask test installs them)"
        );
        let made_run_dir = !Path::new("/run/containerd").exists();
        let dir = Scratch::new("ctd").unwrap();
        let sock = dir.path("c.sock");
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{sock}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"#,
            root = dir.path("root").display(),
            state = dir.path("state").display(),
            sock = sock.display(),
            opt = dir.path("opt").display(),
        );
        std::fs::write(dir.path("config.toml"), config).unwrap();
        let log = dir.path("log");
        let logf = std::fs::File::create(&log).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.path("config.toml"))
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .unwrap();
        let mut c = Containerd {
            child,
            sock,
            containers: Vec::new(),
            made_run_dir,
            dir,
        };
        wait_until("containerd", &log, || c.ctr(&["version"]).is_some()).unwrap();
        let image = image_archive(&c.dir, CTR_IMAGE);
        c.ctr(&["images", "import", &image.to_string_lossy()])
            .expect("ctr images import");
        c
    }

    /// `ctr ARGS` in the k8s.io namespace; stdout on success.
    fn ctr(&mut self, args: &[&str]) -> Option<String> {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&self.sock)
            .args(["--namespace", CTR_NS])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A container in netns `netns` with the labels kubelet puts on a
    /// pod's container.
    fn run(&mut self, id: &str, netns: &str, pod: &str, pod_ns: &str, name: &str) {
        let labels = [
            format!("io.kubernetes.pod.name={pod}"),
            format!("io.kubernetes.pod.namespace={pod_ns}"),
            format!("io.kubernetes.container.name={name}"),
            "io.cri-containerd.kind=container".to_string(),
        ];
        let mut args = vec![
            "run".to_string(),
            "-d".into(),
            "--with-ns".into(),
            format!("network:/run/netns/{netns}"),
        ];
        for l in &labels {
            args.extend(["--label".to_string(), l.clone()]);
        }
        args.extend([CTR_IMAGE, id, "sleep", "600"].map(String::from));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.containers.push(id.to_string());
        self.ctr(&args).expect("ctr run");
    }

    fn env(&self) -> String {
        format!("CONTAINERD_ADDRESS={}", self.sock.display())
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for id in std::mem::take(&mut self.containers) {
            let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", &id]);
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.ctr(&["task", "rm", "-f", &id]).is_some() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.ctr(&["container", "rm", &id]);
        }
        stop(&mut self.child);
        if self.made_run_dir {
            let _ = std::fs::remove_dir_all("/run/containerd");
        }
    }
}

/// The tracer's environment: this runtime's socket, and every other
/// runtime's pointed at nothing (a host's own runtimes stay out).
fn runtime_env(own: String) -> Vec<String> {
    let mut env = vec![
        "env".to_string(),
        "DOCKER_HOST=unix:///nonexistent/docker.sock".into(),
        "CONTAINER_HOST=unix:///nonexistent/podman.sock".into(),
        "CONTAINERD_ADDRESS=/nonexistent/containerd.sock".into(),
    ];
    env.push(own);
    env
}

/// A UDP datagram to a closed port on the namespace's loopback: the kernel
/// drops it (NO_SOCKET) in that namespace.
fn closed_port_drop(lab: &Netlab, ns: &str) {
    lab.exec(ns, "bash -c 'echo x > /dev/udp/127.0.0.1/9' || true")
        .unwrap();
}

/// The drop in netns `inode` with a container, sending again until one
/// comes (a container started after the tracer is named once the
/// runtime's event reached it).
fn named_drop(run: &tracer_tests::TracerRun, lab: &Netlab, ns: &str, want: &str) -> Option<Value> {
    let inode = lab.inode(ns).unwrap();
    for _ in 0..20 {
        closed_port_drop(lab, ns);
        let got = run.wait_for(Duration::from_millis(500), |v| {
            v["type"] == "drop" && v["netns"] == inode && v["container"]["name"] == want
        });
        if got.is_some() {
            return got;
        }
    }
    None
}

/// `tracer agent` on `netns` with `env`: the `tracer_drops_total` line
/// whose labels name `container` from `source`, once a drop there counted.
fn agent_drop_series(
    env: &[String],
    lab: &Netlab,
    ns: &str,
    container: &str,
    source: &str,
) -> String {
    let port = free_port().unwrap();
    let mut child = Command::new(&env[0])
        .args(&env[1..])
        .arg(tracer_bin())
        .args(["agent", "--metrics-addr", &format!("127.0.0.1:{port}")])
        .args(["--netns", &lab.name(ns)])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while http_get(port, "/healthz").map(|r| r.0) != Some(200) {
        assert!(Instant::now() < deadline, "agent never healthy");
        std::thread::sleep(Duration::from_millis(100));
    }
    let want_c = format!("container=\"{container}\"");
    let want_s = format!("container_source=\"{source}\"");
    let mut line = None;
    for _ in 0..20 {
        closed_port_drop(lab, ns);
        std::thread::sleep(Duration::from_millis(300));
        let body = http_get(port, "/metrics").map(|r| r.1).unwrap_or_default();
        line = body
            .lines()
            .find(|l| {
                l.starts_with("tracer_drops_total{") && l.contains(&want_c) && l.contains(&want_s)
            })
            .map(String::from);
        if line.is_some() {
            break;
        }
    }
    stop(&mut child);
    line.unwrap_or_else(|| panic!("no tracer_drops_total series with {want_c} {want_s}"))
}

/// `tracer watch` in text: the NETNS column of a drop there shows `name`
/// (the pod's `namespace/name`, or the container's name).
fn text_names(env: &[String], lab: &Netlab, ns: &str, name: &str) -> bool {
    let mut child = Command::new(&env[0])
        .args(&env[1..])
        .arg(tracer_bin())
        .args(["watch", "--netns", &lab.name(ns)])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(out)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });
    // Loading takes a few seconds; drops before that are not seen.
    std::thread::sleep(Duration::from_secs(8));
    for _ in 0..5 {
        closed_port_drop(lab, ns);
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(1));
    unsafe { kill(child.id() as i32, 2) };
    let _ = child.wait();
    let lines = reader.join().unwrap();
    lines
        .iter()
        .any(|l| l.contains("NO_SOCKET") && l.split_whitespace().nth(1) == Some(name))
}

fn lab_with(test: &str, names: &[&str]) -> Netlab {
    let mut lab = Netlab::new(&prefix(test)).unwrap();
    for n in names {
        lab.ns(n).unwrap();
        lab.exec(n, "ip link set lo up").unwrap();
    }
    lab
}

/// One container started before the tracer (the first inventory) and one
/// after (the event stream): both named from kubelet's labels.
#[test]
fn containerd_names_pods_from_kubelets_labels() {
    let lab = lab_with("ctd", &["early", "late"]);
    let mut ctd = Containerd::start();
    let tag = std::process::id();
    let early_id = format!("trtest-{tag}-web");
    ctd.run(&early_id, &lab.name("early"), "web-0", "shop", "nginx");
    let env = runtime_env(ctd.env());
    let env_ref: Vec<&str> = env.iter().map(String::as_str).collect();
    let run = start_in(
        &env_ref,
        &[
            "watch",
            "--netns",
            &lab.name("early"),
            "--netns",
            &lab.name("late"),
        ],
    );
    ctd.run(
        &format!("trtest-{tag}-api"),
        &lab.name("late"),
        "api-0",
        "payments",
        "api",
    );
    let early = named_drop(&run, &lab, "early", "nginx");
    let late = named_drop(&run, &lab, "late", "api");
    let lines = run.stop();
    let early = early.unwrap_or_else(|| panic!("no named drop in early: {lines:#?}"));
    let c = &early["container"];
    assert_eq!(c["runtime"], "containerd", "{c}");
    assert_eq!(c["id"], early_id.as_str(), "{c}");
    assert_eq!(c["pod"], "web-0", "{c}");
    assert_eq!(c["pod_namespace"], "shop", "{c}");
    assert_eq!(c["image"], CTR_IMAGE, "{c}");
    assert_eq!(c["source"], "containerd_api", "{c}");
    let late = late.unwrap_or_else(|| panic!("the later container was never named: {lines:#?}"));
    let c = &late["container"];
    assert_eq!(c["pod"], "api-0", "{c}");
    assert_eq!(c["pod_namespace"], "payments", "{c}");
    assert_eq!(c["source"], "containerd_api", "{c}");

    // The namespace is the pod's (its containers share it): text names
    // the pod, the metrics both.
    assert!(
        text_names(&env, &lab, "early", "shop/web-0"),
        "the text output does not name the pod"
    );
    let series = agent_drop_series(&env, &lab, "early", "nginx", "containerd_api");
    assert!(series.contains("reason=\"NO_SOCKET\""), "{series}");
    assert!(
        series.contains("pod=\"web-0\",pod_namespace=\"shop\""),
        "{series}"
    );
    drop(ctd);
}

/// The same through rootful podman's service: a container before the
/// tracer and one after, named with podman's names and the pod labels.
#[test]
fn podman_names_containers_from_its_service() {
    let lab = lab_with("pod", &["early", "late"]);
    let mut pm = Podman::start().unwrap();
    let tag = std::process::id();
    let early_name = format!("trtest-{tag}-web");
    pm.run(&early_name, &lab.name("early"), "web-0", "shop")
        .unwrap();
    let env = runtime_env(pm.env());
    let env_ref: Vec<&str> = env.iter().map(String::as_str).collect();
    let run = start_in(
        &env_ref,
        &[
            "watch",
            "--netns",
            &lab.name("early"),
            "--netns",
            &lab.name("late"),
        ],
    );
    let late_name = format!("trtest-{tag}-api");
    pm.run(&late_name, &lab.name("late"), "api-0", "payments")
        .unwrap();
    let early = named_drop(&run, &lab, "early", &early_name);
    let late = named_drop(&run, &lab, "late", &late_name);
    let lines = run.stop();
    let early = early.unwrap_or_else(|| panic!("no named drop in early: {lines:#?}"));
    let c = &early["container"];
    assert_eq!(c["runtime"], "podman", "{c}");
    assert_eq!(c["pod"], "web-0", "{c}");
    assert_eq!(c["pod_namespace"], "shop", "{c}");
    assert_eq!(c["source"], "podman_api", "{c}");
    let late = late.unwrap_or_else(|| panic!("the later container was never named: {lines:#?}"));
    assert_eq!(late["container"]["pod_namespace"], "payments");

    assert!(
        text_names(&env, &lab, "early", "shop/web-0"),
        "the text output does not name the pod"
    );
    let series = agent_drop_series(&env, &lab, "early", &early_name, "podman_api");
    assert!(series.contains("reason=\"NO_SOCKET\""), "{series}");
    assert!(
        series.contains("pod=\"web-0\",pod_namespace=\"shop\""),
        "{series}"
    );
    drop(pm);
}

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}
