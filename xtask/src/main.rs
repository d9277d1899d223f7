//! `cargo xtask`: the project's build steps that plain cargo cannot do.
//!
//! - `setup`       install what is missing (Debian packages, bpf-linker); fast when all is there
//! - `build-ebpf`  build the eBPF object with Debian's rustc-web into target/bpf/tracer.bpf.o
//! - `lint-ebpf`   rustfmt --check and clippy -D warnings on the eBPF crate (see `lint_ebpf`)
//! - `build`       setup + build-ebpf + release build of the tracer
//! - `run -- ARGS` build, then run `tracer ARGS`
//! - `test`        setup + build-ebpf + fmt/clippy (lint-ebpf too) + every unit and integration test,
//!   then the Docker tests (a real dockerd) on their own, serially
//! - `dist`        static binary, tarball, .deb and SHA256SUMS in target/dist
//!   (see dist.rs); `--check` also runs them in a Debian 11 root
//! - `image`       the agent's container image from the static binary
//! - `bench`       the benchmark harness (see bench/mod.rs)
//! - `kernels`     boot Debian's 5.10, 6.1 and 6.12 (and with `--kernel 7.2` unstable's 7.2) under qemu and run the checks there (see qemu.rs)
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

mod bench;
mod dist;
mod qemu;
mod soak;
mod testbins;
mod userspace;

/// Debian packages: the eBPF toolchain (rustc-web with the prebuilt bpf
/// core; LLVM 22 for bpf-linker) and the network tools the tests drive.
const BUILD_PACKAGES: &[&str] = &[
    "rustc-web",
    "libstd-rust-web-dev",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    // containerd-client's build script compiles containerd's protos.
    "protobuf-compiler",
];
const RUN_PACKAGES: &[&str] = &[
    "iproute2",
    "iputils-ping",
    "iptables",
    // The native nftables tests build an inet table, and netfilter_drop
    // reads native rules with `nft -j` (its postinst starts no service).
    "nftables",
    "procps",
    // The pcapng tests read captures back with Wireshark's tshark.
    "tshark",
    // The filter is checked against libpcap: the oracle test links it
    // (the pcap crate), the kernel corpus runs `tcpdump -r`.
    "libpcap-dev",
    "tcpdump",
    // The agent test scrapes with a real Prometheus server.
    "prometheus",
    // The deploy test validates the manifests (kubernetes-validate, in a venv).
    "python3-venv",
    "python3-yaml",
    // The unit's hardening: systemd-analyze scores it, and the agent runs
    // under strace to check its syscalls against the unit's filter.
    "systemd",
    "strace",
];
/// PyPI's validator with Kubernetes' schemas bundled (offline), in target/kv.
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";
/// The container runtimes the Docker and runtimes tests start (each with
/// private state) and their offline image's only binary.
const DOCKER_PACKAGES: &[&str] = &["docker.io", "containerd", "podman", "busybox-static"];
const BENCH_PACKAGES: &[&str] = &["iperf3", "bpftrace"];
const BPF_LINKER_VERSION: &str = "0.13.0";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn missing_packages(pkgs: &[&str]) -> Vec<String> {
    pkgs.iter()
        .filter(|p| {
            let out = Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output();
            !matches!(out, Ok(o) if String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .map(|p| p.to_string())
        .collect()
}

fn install_packages(pkgs: &[&str]) -> Result<()> {
    let missing = missing_packages(pkgs);
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-q"]))?;
    // docker.io's postinst would start the system's dockerd (which sets
    // ip_forward, the FORWARD policy and its chains on the host), and
    // containerd's and podman's their services: the tests start their own,
    // confined, so forbid service starts meanwhile.
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let guard = !policy.exists()
        && missing
            .iter()
            .any(|p| ["docker.io", "containerd", "podman"].contains(&p.as_str()))
        && std::fs::write(policy, "#!/bin/sh\nexit 101\n").is_ok();
    if guard {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(policy, std::fs::Permissions::from_mode(0o755));
    }
    let r = run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"));
    if guard {
        let _ = std::fs::remove_file(policy);
    }
    r
}

fn bpf_linker_ok() -> bool {
    matches!(
        Command::new("bpf-linker").arg("--version").output(),
        Ok(o) if String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)
    )
}

fn setup(extra: &[&str]) -> Result<()> {
    let mut pkgs: Vec<&str> = BUILD_PACKAGES.to_vec();
    pkgs.extend_from_slice(RUN_PACKAGES);
    pkgs.extend_from_slice(extra);
    install_packages(&pkgs)?;
    let kv = root().join("target/kv");
    if !kv.join("bin/kubernetes-validate").exists() {
        eprintln!("xtask: installing {KUBERNETES_VALIDATE} into target/kv");
        run(Command::new("/usr/bin/python3")
            .arg("-m")
            .arg("venv")
            .arg(&kv))?;
        run(Command::new(kv.join("bin/pip")).args(["install", "-q", KUBERNETES_VALIDATE]))?;
    }
    if !bpf_linker_ok() {
        eprintln!("xtask: installing bpf-linker {BPF_LINKER_VERSION} against Debian's LLVM 22");
        // Its default feature wants LLVM 23, which Debian lacks.
        run(Command::new("cargo")
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(["--locked", "--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22")
            .env("LLVM_SYS_221_PREFIX", "/usr/lib/llvm-22"))?;
    }
    Ok(())
}

pub fn ebpf_object() -> PathBuf {
    root().join("target/bpf/tracer.bpf.o")
}

fn build_ebpf() -> Result<()> {
    let dir = root().join("tracer-ebpf");
    let mut cmd = Command::new("cargo");
    cmd.current_dir(&dir)
        .args(["build", "--release", "--locked"]);
    // The eBPF crate's own .cargo/config.toml picks the compiler, target and
    // flags; anything inherited from an outer cargo would override it.
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "RUSTDOC",
    ] {
        cmd.env_remove(var);
    }
    run(&mut cmd)?;
    let built = dir.join("target/bpfel-unknown-none/release/tracer");
    let out = ebpf_object();
    std::fs::create_dir_all(out.parent().unwrap())?;
    // Copy only when changed, so the userspace crate is not rebuilt for nothing.
    let new = std::fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
    if std::fs::read(&out).ok().as_deref() != Some(&new[..]) {
        std::fs::write(&out, &new)?;
    }
    Ok(())
}

/// `cargo fmt --check` and `cargo clippy -D warnings` on the eBPF crate,
/// which the workspace's own fmt and clippy steps do not reach (it is its
/// own workspace). Debian's rustc-web, the only compiler with a `core` for
/// bpfel-unknown-none here, ships no clippy, and rustup's clippy cannot
/// read that `core` (another rustc version): so clippy checks the crate for
/// the host target with rustup's toolchain. The code is the same either
/// way (aya-ebpf builds on any target); only the bpf codegen is not linted,
/// and `build-ebpf` and the verifier cover that.
fn lint_ebpf() -> Result<()> {
    let dir = root().join("tracer-ebpf");
    run(Command::new("cargo")
        .current_dir(&dir)
        .args(["fmt", "--check"]))?;
    let host = host_triple()?;
    let mut cmd = Command::new("cargo");
    cmd.current_dir(&dir)
        .args(["clippy", "--locked", "--target", &host])
        // Its own directory: the bpf build's dependencies come from
        // another rustc, and sharing one would rebuild them each time.
        .args(["--target-dir", "target/lint"])
        .args(["--", "-D", "warnings"])
        // The crate's .cargo/config.toml names Debian's rustc: rustup's
        // must compile the dependencies clippy-driver reads.
        .env("RUSTC", "rustc");
    for var in [
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
    ] {
        cmd.env_remove(var);
    }
    run(&mut cmd)
}

/// The host's target triple, from rustup's `rustc -vV`.
fn host_triple() -> Result<String> {
    let out = Command::new("rustc").arg("-vV").output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_string)
        .context("`rustc -vV` names no host")
}

/// How long each part of `cargo xtask test` took, printed at its end:
/// the README promises a time, and this says where it goes.
struct Phases {
    t0: std::time::Instant,
    last: std::time::Instant,
    done: Vec<(&'static str, f64)>,
}

impl Phases {
    fn new() -> Self {
        let now = std::time::Instant::now();
        Phases {
            t0: now,
            last: now,
            done: Vec::new(),
        }
    }

    fn done(&mut self, what: &'static str) {
        let now = std::time::Instant::now();
        self.done
            .push((what, now.duration_since(self.last).as_secs_f64()));
        self.last = now;
    }

    fn report(&self) {
        let parts: Vec<String> = self
            .done
            .iter()
            .map(|(w, s)| format!("{w} {s:.0} s"))
            .collect();
        eprintln!(
            "xtask test: passed in {:.1} min: {}",
            self.t0.elapsed().as_secs_f64() / 60.0,
            parts.join(", ")
        );
    }
}

fn cargo(args: &[&str]) -> Result<()> {
    run(Command::new("cargo").current_dir(root()).args(args))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cmd = args.first().map(String::as_str).unwrap_or("help");
    let rest: Vec<&str> = args
        .iter()
        .skip(1)
        .map(String::as_str)
        .skip_while(|a| *a == "--")
        .collect();
    match cmd {
        "setup" => setup(BENCH_PACKAGES),
        "build-ebpf" => {
            setup(&[])?;
            build_ebpf()
        }
        "lint-ebpf" => lint_ebpf(),
        "build" => {
            setup(&[])?;
            build_ebpf()?;
            cargo(&["build", "--release", "-p", "tracer"])
        }
        "run" => {
            setup(&[])?;
            build_ebpf()?;
            cargo(&["build", "--release", "-q", "-p", "tracer"])?;
            let status = Command::new(root().join("target/release/tracer"))
                .args(&rest)
                .status()?;
            std::process::exit(status.code().unwrap_or(1));
        }
        "test" => {
            let mut phases = Phases::new();
            setup(DOCKER_PACKAGES)?;
            build_ebpf()?;
            cargo(&["fmt", "--all", "--check"])?;
            cargo(&[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ])?;
            // `--all-targets` leaves out the test targets marked
            // `test = false` (docker, runtimes: run on their own later).
            cargo(&[
                "clippy",
                "-p",
                "tracer-tests",
                "--test",
                "docker",
                "--test",
                "runtimes",
                "--",
                "-D",
                "warnings",
            ])?;
            lint_ebpf()?;
            // A fresh clone has no eBPF object yet: the workspace must
            // still check (build.rs puts a stub in its place), so that
            // rust-analyzer and `cargo check` work before any eBPF build.
            run(Command::new("cargo")
                .current_dir(root())
                .args(["check", "--workspace", "-q"])
                .env("TRACER_BPF_OBJECT", root().join("target/bpf/absent.o")))?;
            // Integration tests drive the real binary; the filter corpus
            // starts hundreds of tracers, whose start-up takes 0.6 s
            // optimized and 4 s in a debug build, so it runs the release one.
            cargo(&["build", "-p", "tracer"])?;
            phases.done("setup, build and lints");
            if rest.is_empty() {
                // What users install first: the static binary, tarball and
                // .deb, twice for reproducibility, then run in a Debian 11
                // root. Before the tests: the filter corpus starts
                // hundreds of tracers and runs this optimized one (its
                // start-up is 0.6 s, a debug build's 4 s), so no second
                // release build is needed; the Docker image test packs it.
                dist_twice_and_check()?;
                phases.done("dist and its Debian 11 check");
                let bins = testbins::build(&root())?;
                let release = [("TRACER_RELEASE_BIN", dist::static_binary(&root()))];
                testbins::run_all(&root(), &bins, &[], &release)?;
            } else {
                let mut test = vec!["test", "--workspace"];
                test.extend_from_slice(&rest);
                cargo(&test)?;
            }
            // A real dockerd, after everything else and one test at a
            // time: while it runs, new namespaces could inherit what it
            // sets (devconf_inherit_init_net=0), so nothing runs beside it.
            let mut docker = vec!["test", "-p", "tracer-tests", "--test", "docker"];
            docker.extend(rest.iter().copied().filter(|a| *a != "--"));
            docker.extend(["--", "--test-threads=1"]);
            phases.done("test builds and host tests");
            cargo(&docker)?;
            // containerd and podman, each with private state, after it.
            let mut runtimes = vec!["test", "-p", "tracer-tests", "--test", "runtimes"];
            runtimes.extend(rest.iter().copied().filter(|a| *a != "--"));
            cargo(&runtimes)?;
            phases.done("dockerd, containerd and podman");
            // Last, Debian's own kernels under qemu: the same tracer, the
            // watch tests and each lab on 5.10, 6.1 and 6.12 (see
            // qemu.rs). The diagnose tests there double the matrix's time
            // and `lab run all` adds the Docker lab, whose dockerd once
            // crashed a guest under emulation: `cargo xtask kernels` runs
            // both; the labs prove the same verdicts end to end.
            if rest.is_empty() {
                let checks = [
                    "check",
                    "reasons",
                    // The watch suite on the two kernels most hosts run
                    // (Debian 11's and 12's): 6.12 lies between 6.1 and
                    // the host's 6.18, which runs it in full, and its
                    // 300 s there kept the test command over 30 minutes
                    // in CI. `cargo xtask kernels` still runs it on 6.12.
                    "watch@5.10,6.1",
                    // The one watch check any userspace runs (Debian 11's).
                    "watch-drop",
                    "lab-strict",
                    "lab-pmtu",
                    // The controls and the loose lab on two kernels: the
                    // third guest's time goes to the exhaustion labs,
                    // which lower host-wide limits and so run only in a
                    // guest (about 200 s on 6.12, the fastest to boot).
                    "lab-loose@5.10,6.1",
                    "lab-clamp@5.10,6.1",
                    "lab-pmtud@5.10,6.1",
                    "lab-veth",
                    "exhaustion@6.12",
                    "ip-tunnels@6.1",
                ];
                let args: Vec<&str> = checks.iter().flat_map(|c| ["--check", c]).collect();
                qemu::run(&root(), &args)?;
                phases.done("kernel matrix");
            }
            phases.report();
            Ok(())
        }
        "dist" => {
            setup(&[])?;
            build_ebpf()?;
            match rest.as_slice() {
                [] => dist::run(&root()).map(|_| ()),
                ["--check"] => dist_twice_and_check(),
                _ => bail!("usage: cargo xtask dist [--check]"),
            }
        }
        "image" if rest.contains(&"--prebuilt") => image(&rest),
        "image" => {
            setup(&[])?;
            build_ebpf()?;
            image(&rest)
        }
        // Usage needs no packages, eBPF object or release build.
        "bench" if rest.iter().any(|a| *a == "--help" || *a == "-h") => bench::run(&root(), &rest),
        // A given binary needs no build (the scale bench of another build).
        "bench" if rest.contains(&"--scale") && rest.contains(&"--tracer") => {
            bench::run(&root(), &rest)
        }
        "bench" => {
            setup(BENCH_PACKAGES)?;
            build_ebpf()?;
            cargo(&["build", "--release", "-q", "-p", "tracer"])?;
            bench::run(&root(), &rest)
        }
        "soak" => {
            setup(BENCH_PACKAGES)?;
            build_ebpf()?;
            cargo(&["build", "--release", "-q", "-p", "tracer"])?;
            soak::run(&root(), &rest)
        }
        "kernels" => {
            setup(&[])?;
            build_ebpf()?;
            qemu::run(&root(), &rest)
        }
        _ => {
            eprintln!(
                "usage: cargo xtask <setup|build-ebpf|lint-ebpf|build|run -- ARGS|test [-- FILTER]|dist [--check]|image [--tag T]|bench|soak|kernels>"
            );
            std::process::exit(2);
        }
    }
}

/// `dist` twice from one commit must give byte-identical files; then the
/// files go through their paces in a Debian 11 root.
fn dist_twice_and_check() -> Result<()> {
    let first = dist::run(&root())?;
    let sums = std::fs::read_to_string(&first.sums)?;
    let again = dist::run(&root())?;
    let sums_again = std::fs::read_to_string(&again.sums)?;
    if sums != sums_again {
        bail!("two dist runs differ:\n{sums}\n{sums_again}");
    }
    eprintln!("dist: reproducible (two runs, identical SHA256SUMS)");
    userspace::dist_check(&root(), &again)
}

/// The tag deploy/ names, and `cargo xtask image` makes.
pub const IMAGE_TAG: &str = concat!("tracer:", env!("CARGO_PKG_VERSION"));

/// `cargo xtask image [--tag T] [--prebuilt]`: deploy/Dockerfile over the
/// static binary alone (FROM scratch, no registry), with the Docker CLI
/// against whichever daemon DOCKER_HOST names. `--prebuilt` takes the
/// static binary `dist` already built instead of running cargo: the
/// Docker test calls this binary while `cargo test` holds the build lock.
fn image(args: &[&str]) -> Result<()> {
    let mut tag = IMAGE_TAG;
    let mut prebuilt = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match *a {
            "--tag" => tag = it.next().context("--tag needs a value")?,
            "--prebuilt" => prebuilt = true,
            _ => bail!("usage: cargo xtask image [--tag T] [--prebuilt]"),
        }
    }
    let bin = if prebuilt {
        dist::static_binary(&root())
    } else {
        dist::build_static(&root())?
    };
    let ctx = root().join("target/image");
    let _ = std::fs::remove_dir_all(&ctx);
    std::fs::create_dir_all(&ctx)?;
    std::fs::copy(&bin, ctx.join("tracer")).with_context(|| {
        format!(
            "no static binary at {} (cargo xtask dist builds it)",
            bin.display()
        )
    })?;
    // Debian's docker.io client where installed, matching its daemon.
    let cli = if Path::new("/usr/bin/docker").exists() {
        "/usr/bin/docker"
    } else {
        "docker"
    };
    run(Command::new(cli)
        .args(["build", "--quiet", "-t", tag, "-f"])
        .arg(root().join("deploy/Dockerfile"))
        .arg(&ctx)
        // The classic builder needs no buildx plugin (Debian's docker.io
        // ships none) and takes FROM scratch with no registry.
        .env("DOCKER_BUILDKIT", "0"))?;
    eprintln!("image: {tag}");
    Ok(())
}
