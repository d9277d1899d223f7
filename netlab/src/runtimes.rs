//! Container runtimes with private state, for the tests and the agent
//! soak: a scratch directory that takes its mounts with it, a
//! busybox-static rootfs (no registry is needed), and a rootful podman
//! service whose root, run, tmp and runc directories and socket all live
//! in that scratch directory, so it never meets a system podman. Its
//! containers join namespaces the caller made (`--network ns:PATH`): no
//! CNI, bridge or iptables rule is made.

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A private directory for one runtime, removed (after unmounting anything
/// left under it) when dropped.
pub struct Scratch(PathBuf);

impl Scratch {
    /// `/tmp/tr<tag>-<pid>`: short, since sockets under it must fit in
    /// `sun_path`.
    pub fn new(tag: &str) -> Result<Scratch> {
        let p = PathBuf::from(format!("/tmp/tr{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(Scratch(p))
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut under: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(1))
            .filter(|m| Path::new(m).starts_with(&self.0))
            .collect();
        // Deepest first.
        under.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in under {
            let _ = Command::new("umount").args(["-l", m]).status();
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The busybox applets the containers use.
const APPLETS: &[&str] = &["sh", "sleep"];

fn sh(cmd: &str) -> Result<String> {
    let out = Command::new("sh").args(["-c", cmd]).output()?;
    if !out.status.success() {
        bail!("{cmd}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `bin` is on the PATH.
pub fn which(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A rootfs of busybox-static and its applet links, as a tar file in `dir`.
pub fn rootfs_tar(dir: &Scratch) -> Result<PathBuf> {
    let rootfs = dir.path("rootfs");
    std::fs::create_dir_all(rootfs.join("bin"))?;
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
        .context("busybox-static must be installed (/bin/busybox)")?;
    for a in APPLETS {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a))?;
    }
    let tar = dir.path("rootfs.tar");
    sh(&format!(
        "tar -C {} -cf {} .",
        rootfs.display(),
        tar.display()
    ))?;
    Ok(tar)
}

/// Waits until `ok`, or fails with `what` and the log.
pub fn wait_until(what: &str, log: &Path, mut ok: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        if Instant::now() >= deadline {
            bail!(
                "{what} did not come up: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// SIGTERM, then SIGKILL after 10 s.
pub fn stop(child: &mut Child) {
    // SAFETY: kill(2) on a pid we spawned and have not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A plain HTTP/1.0 GET over a unix socket: the answer, if it is HTTP.
pub fn unix_get(sock: &Path, path: &str) -> Option<String> {
    use std::os::unix::net::UnixStream;
    let mut s = UnixStream::connect(sock).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: d\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.starts_with("HTTP/1.").then_some(buf)
}

/// The image every private podman imports.
pub const PODMAN_IMAGE: &str = "localhost/tracer-test/busybox:latest";

/// Rootful podman's service with its own storage (vfs), run and tmp
/// directories and socket; cgroupfs and file events (no systemd needed).
pub struct Podman {
    child: Option<Child>,
    sock: PathBuf,
    containers: Vec<String>,
    /// /var/lib/containers did not exist before: podman 4.3 keeps its
    /// image copy cache there whatever `--root` says, so it goes after.
    made_cache_dir: bool,
    dir: Scratch,
}

impl Podman {
    pub fn start() -> Result<Podman> {
        if !which("podman") {
            bail!("podman must be installed (cargo xtask test installs it)");
        }
        let made_cache_dir = !Path::new("/var/lib/containers").exists();
        let dir = Scratch::new("pod")?;
        let sock = dir.path("p.sock");
        let mut p = Podman {
            child: None,
            sock,
            containers: Vec::new(),
            made_cache_dir,
            dir,
        };
        let log = p.dir.path("log");
        let logf = std::fs::File::create(&log)?;
        let child = p
            .cmd()
            .args(["system", "service", "--time", "0"])
            .arg(format!("unix://{}", p.sock.display()))
            .stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf)
            .spawn()
            .context("cannot start podman system service")?;
        p.child = Some(child);
        wait_until("podman system service", &log, || {
            unix_get(&p.sock, "/_ping").is_some()
        })?;
        let tar = rootfs_tar(&p.dir)?;
        p.podman(&["import", &tar.to_string_lossy(), PODMAN_IMAGE])?;
        Ok(p)
    }

    /// `podman` with this instance's private directories.
    fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(self.dir.path("root"))
            .arg("--runroot")
            .arg(self.dir.path("run"))
            .arg("--tmpdir")
            .arg(self.dir.path("tmp"))
            // runc's state too (else /run/runc).
            .arg("--runtime-flag")
            .arg(format!("root={}", self.dir.path("runc").display()))
            .args([
                "--storage-driver",
                "vfs",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
            ]);
        c
    }

    /// Runs `podman ARGS` on this instance: its stdout.
    pub fn podman(&self, args: &[&str]) -> Result<String> {
        let out = self.cmd().args(args).stdin(Stdio::null()).output()?;
        if !out.status.success() {
            bail!(
                "podman {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A container named `name` in named netns `netns`, labelled as pod
    /// `pod` of namespace `pod_ns` (kubelet's labels), sleeping.
    pub fn run(&mut self, name: &str, netns: &str, pod: &str, pod_ns: &str) -> Result<()> {
        self.containers.push(name.to_string());
        let netns = format!("ns:{}", crate::netns_path(netns).display());
        let pod = format!("io.kubernetes.pod.name={pod}");
        let pod_ns = format!("io.kubernetes.pod.namespace={pod_ns}");
        self.podman(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            &netns,
            "--label",
            &pod,
            "--label",
            &pod_ns,
            // Podman asks for more than this host's hard limits allow.
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            PODMAN_IMAGE,
            "sleep",
            "600",
        ])
        .map(|_| ())
    }

    /// Removes container `name` at once.
    pub fn remove(&mut self, name: &str) -> Result<()> {
        self.containers.retain(|c| c != name);
        self.podman(&["rm", "-f", "-t", "0", name]).map(|_| ())
    }

    /// `CONTAINER_HOST=...` for a tracer that should ask this instance.
    pub fn env(&self) -> String {
        format!("CONTAINER_HOST=unix://{}", self.sock.display())
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for name in std::mem::take(&mut self.containers) {
            let _ = self.podman(&["rm", "-f", "-t", "0", &name]);
        }
        if let Some(mut c) = self.child.take() {
            stop(&mut c);
        }
        if self.made_cache_dir {
            let _ = std::fs::remove_dir_all("/var/lib/containers");
        }
    }
}
