//! A real dockerd for the Docker labs and tests, confined to a lab network
//! namespace: `nsenter --net` runs it there (the mount namespace stays the
//! host's, so cgroups and overlayfs work), so docker0, its veths, its
//! iptables chains and NAT rules, and the `ip_forward=1` it sets all live
//! in that namespace and vanish with it. Its state lives in private
//! directories (data root, exec root, socket, pid file) named after the
//! lab, so it never meets the host's own dockerd. The image is built
//! offline from busybox-static (`docker import`): no registry is needed.

use super::incident::{Built, Params};
use super::traffic::{connect_for, in_netns};
use anyhow::{anyhow, bail, Context, Result};
use netlab::{Netlab, Routed};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where a busybox-static binary may be.
const BUSYBOX: &[&str] = &["/bin/busybox", "/usr/bin/busybox"];

pub struct DockerHost {
    /// The lab namespace dockerd runs in (its `/run/netns` name).
    pub netns: String,
    pub sock: PathBuf,
    data_root: PathBuf,
    exec_root: PathBuf,
    pidfile: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// The imported busybox image.
    pub image: String,
}

/// The docker CLI: Debian's (the daemon's own version) when installed.
fn docker_cli() -> &'static str {
    if Path::new("/usr/bin/docker").exists() {
        "/usr/bin/docker"
    } else {
        "docker"
    }
}

/// Whether this host can run the Docker labs: dockerd and busybox-static.
pub fn available() -> bool {
    which("dockerd") && BUSYBOX.iter().any(|p| Path::new(p).exists())
}

fn which(bin: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false)
}

impl DockerHost {
    /// Starts dockerd in netns `netns` (already created), with state under
    /// names derived from `tag` (short: it ends up in socket paths), and
    /// imports the busybox image. Waits until the API answers.
    pub fn start(netns: &str, tag: &str) -> Result<DockerHost> {
        Self::start_with(netns, tag, None)
    }

    /// Like `start`, with docker0 at `bip` when given.
    pub fn start_with(netns: &str, tag: &str, bip: Option<&str>) -> Result<DockerHost> {
        if !which("dockerd") {
            bail!("dockerd is not installed (Debian's docker.io provides it)");
        }
        let busybox = BUSYBOX
            .iter()
            .find(|p| Path::new(p).exists())
            .ok_or_else(|| anyhow!("busybox-static is not installed"))?;
        let data_root = PathBuf::from(format!("/var/lib/tracer-test-docker/{tag}"));
        let exec_root = PathBuf::from(format!("/run/trdk/{tag}"));
        let sock = PathBuf::from(format!("/run/trdk/{tag}.sock"));
        let pidfile = PathBuf::from(format!("/run/trdk/{tag}.pid"));
        let log = PathBuf::from(format!("/run/trdk/{tag}.log"));
        std::fs::create_dir_all(&data_root)?;
        std::fs::create_dir_all(&exec_root)?;
        let _ = std::fs::remove_file(&sock);
        let logf = std::fs::File::create(&log)?;
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{netns}"))
            .arg("dockerd")
            .arg("--iptables=true")
            .arg("-H")
            .arg(format!("unix://{}", sock.display()))
            .arg("--data-root")
            .arg(&data_root)
            .arg("--exec-root")
            .arg(&exec_root)
            .arg("--pidfile")
            .arg(&pidfile)
            .args(bip.map(|b| format!("--bip={b}")))
            .stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf)
            .spawn()
            .context("cannot start dockerd")?;
        let mut h = DockerHost {
            netns: netns.to_string(),
            sock,
            data_root,
            exec_root,
            pidfile,
            log,
            child: Some(child),
            image: format!("trdk-busybox:{tag}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if h.docker(&["version", "--format", "{{.Server.Version}}"])
                .is_ok()
            {
                break;
            }
            if let Some(c) = h.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    bail!("dockerd exited ({st}): {}", h.log_tail());
                }
            }
            if Instant::now() > deadline {
                bail!("dockerd did not answer within 30 s: {}", h.log_tail());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        h.import(busybox)?;
        Ok(h)
    }

    fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().rev().take(5).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
    }

    /// `docker ARGS` against this daemon; stdout on success.
    pub fn docker(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(docker_cli())
            .arg("-H")
            .arg(format!("unix://{}", self.sock.display()))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("cannot run docker")?;
        if !out.status.success() {
            bail!(
                "docker {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// `DOCKER_HOST` for tracer and clients of this daemon.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.sock.display())
    }

    /// A rootfs of busybox and its applets, imported as `self.image`.
    fn import(&self, busybox: &str) -> Result<()> {
        let root = self.data_root.join("rootfs");
        let _ = std::fs::remove_dir_all(&root);
        for d in ["bin", "tmp", "www", "etc"] {
            std::fs::create_dir_all(root.join(d))?;
        }
        std::fs::copy(busybox, root.join("bin/busybox"))?;
        let list = Command::new(busybox).arg("--list").output()?;
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            if applet != "busybox" && !applet.is_empty() && !applet.contains('/') {
                let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
            }
        }
        std::fs::write(root.join("www/index.html"), "hello from tracer's lab\n")?;
        let tar = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .spawn()?;
        let out = Command::new(docker_cli())
            .arg("-H")
            .arg(format!("unix://{}", self.sock.display()))
            .args(["import", "-", &self.image])
            .stdin(tar.stdout.ok_or_else(|| anyhow!("tar has no stdout"))?)
            .output()?;
        if !out.status.success() {
            bail!(
                "docker import failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// The pid of a running container's first process.
    pub fn pid(&self, container: &str) -> Result<u32> {
        self.docker(&["inspect", "-f", "{{.State.Pid}}", container])?
            .parse()
            .context("container pid")
    }

    /// The netns path of a running container.
    pub fn netns_path(&self, container: &str) -> Result<String> {
        Ok(format!("/proc/{}/ns/net", self.pid(container)?))
    }

    /// Removes every container, stops dockerd and removes its state.
    pub fn stop(&mut self) {
        if let Ok(ids) = self.docker(&["ps", "-aq"]) {
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids);
                let _ = self.docker(&args);
            }
        }
        if let Some(mut c) = self.child.take() {
            // dockerd stops its containerd and unmounts its layers on SIGTERM.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        // Whatever is still mounted under its roots (a killed daemon).
        for root in [&self.data_root, &self.exec_root] {
            let _ = Command::new("umount")
                .arg("-R")
                .arg("-l")
                .arg(root)
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.data_root);
        let _ = std::fs::remove_dir_all(&self.exec_root);
        for f in [&self.sock, &self.pidfile, &self.log] {
            let _ = std::fs::remove_file(f);
        }
        // The parents, when no other lab's daemon uses them.
        let _ = std::fs::remove_dir("/run/trdk");
        let _ = std::fs::remove_dir("/var/lib/tracer-test-docker");
    }
}

impl Drop for DockerHost {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How to build a Docker incident.
#[derive(Clone, Debug)]
pub struct DockerOpts {
    /// Short, unique: it names dockerd's state and the image.
    pub tag: String,
    /// rp_filter of the Docker host (all and uplink).
    pub rp_filter: u8,
    /// The client (its /24 sits behind the router).
    pub client: std::net::Ipv4Addr,
    /// A user-defined network (name, subnet) instead of docker0.
    pub network: Option<(String, String)>,
    pub container: String,
    /// `--bip` for docker0 (default 172.17.0.1/16).
    pub bip: Option<String>,
}

/// The Docker host's address on its uplink, and the router's.
pub const HOST_UPLINK: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 199, 0, 1);
pub const ROUTER_UPLINK: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 199, 0, 254);
/// The published port.
pub const PORT: u16 = 8080;

/// A Docker incident: client -- router -- Docker host (dockerd in its own
/// netns, a container publishing PORT).
pub struct DockerLab {
    pub docker: DockerHost,
    pub container: String,
    pub container_netns: String,
}

/// Builds client -- router -- `dhost` in `lab`, starts dockerd in `dhost`
/// and runs the container with `-p PORT:PORT` (busybox httpd).
pub fn build(lab: &mut Netlab, o: &DockerOpts) -> Result<DockerLab> {
    let client = o.client;
    let net = u32::from(client) & 0xffff_ff00;
    let gw = std::net::Ipv4Addr::from(if u32::from(client) == net | 254 {
        net | 1
    } else {
        net | 254
    });
    Routed {
        client: "client",
        router: "router",
        server: "dhost",
        server_if: "eth0",
        client_addr: client,
        router_client_addr: gw,
        router_server_addr: ROUTER_UPLINK,
        server_addr: HOST_UPLINK,
        forwarding: true,
    }
    .build(lab)?;
    lab.exec(
        "dhost",
        &format!(
            "sysctl -qw net.ipv4.conf.all.rp_filter={rp} net.ipv4.conf.eth0.rp_filter={rp} \
             net.ipv4.conf.default.rp_filter={rp}",
            rp = o.rp_filter
        ),
    )?;
    let docker = DockerHost::start_with(&lab.name("dhost"), &o.tag, o.bip.as_deref())?;
    let mut run = vec!["run", "-d", "--name", &o.container];
    if let Some((name, subnet)) = &o.network {
        docker.docker(&["network", "create", "--subnet", subnet, name])?;
        run.extend(["--network", name.as_str()]);
    }
    let publish = format!("{PORT}:{PORT}");
    let port = PORT.to_string();
    run.extend([
        "-p",
        publish.as_str(),
        docker.image.as_str(),
        "/bin/httpd",
        "-f",
        "-p",
        port.as_str(),
        "-h",
        "/www",
    ]);
    docker.docker(&run)?;
    let container_netns = docker.netns_path(&o.container)?;
    Ok(DockerLab {
        docker,
        container: o.container.clone(),
        container_netns,
    })
}

/// `tracer lab run docker-published-port`: the published-port incident on
/// a real dockerd, loose rp_filter.
pub fn published_port_lab(lab: &mut Netlab, _p: &Params) -> Result<Built> {
    let tag = format!("lab{}", std::process::id());
    let d = build(
        lab,
        &DockerOpts {
            tag: tag.clone(),
            rp_filter: 2,
            client: std::net::Ipv4Addr::new(172, 17, 5, 5),
            network: None,
            container: format!("web-{tag}"),
            bip: None,
        },
    )?;
    let target = std::net::SocketAddr::new(HOST_UPLINK.into(), PORT);
    let client_ns = lab.path("client");
    let traffic = Box::new(move || -> Result<()> {
        in_netns(&client_ns, move || {
            connect_for(target, Duration::from_millis(2500))
        })
        .context("cannot run the lab's client")?;
        Ok(())
    });
    Ok(Built {
        trace: vec![lab.name("dhost"), d.container_netns.clone()],
        host: lab.name("dhost"),
        traffic,
        received: None,
        docker_host: Some(d.docker.docker_host()),
        keep_alive: Some(Box::new(d)),
    })
}
