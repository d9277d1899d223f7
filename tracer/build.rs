//! Points `include_bytes_aligned!` at the eBPF object that
//! `cargo xtask build-ebpf` produced, and stamps the version with the git
//! commit. The object is built by xtask, not here, because it needs a
//! different compiler (Debian's rustc-web for the bpf target) and a linker
//! that a plain `cargo build` cannot assume.
//!
//! Without the object (a fresh clone, rust-analyzer, `cargo check`), an
//! empty stub stands in, as aya-template does, so the workspace still
//! checks; the binary then refuses to load probes with a line saying how
//! to build it (`kernel::probes`).
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    ebpf_object();
    git_commit();
    // Which libc linkage the binary has, for `--version`: the dist build
    // is static (`+crt-static`) so that it starts on glibc 2.28 hosts.
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    let linkage = if features.split(',').any(|f| f == "crt-static") {
        "static"
    } else {
        "dynamic"
    };
    println!("cargo::rustc-env=TRACER_LINKAGE={linkage}");
}

fn ebpf_object() {
    println!("cargo::rerun-if-env-changed=TRACER_BPF_OBJECT");
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let path = match std::env::var_os("TRACER_BPF_OBJECT") {
        Some(p) => PathBuf::from(p),
        None => manifest.join("../target/bpf/tracer.bpf.o"),
    };
    // Rebuild when it appears or changes (watching a missing path works).
    println!("cargo::rerun-if-changed={}", path.display());
    let path = if path.exists() {
        path
    } else {
        println!(
            "cargo::warning=the eBPF object {} is missing: this build cannot trace \
             (run `cargo xtask build-ebpf`, or `cargo xtask build`)",
            path.display()
        );
        let stub = PathBuf::from(std::env::var_os("OUT_DIR").unwrap()).join("tracer.bpf.o.stub");
        std::fs::write(&stub, b"").expect("writing the stub object into OUT_DIR");
        stub
    };
    println!("cargo::rustc-env=TRACER_BPF_OBJECT={}", path.display());
}

/// The commit, from TRACER_GIT_COMMIT (a build from a source tarball) or
/// git; "unknown" outside a checkout.
fn git_commit() {
    println!("cargo::rerun-if-env-changed=TRACER_GIT_COMMIT");
    let commit = std::env::var("TRACER_GIT_COMMIT").ok().or_else(|| {
        let dir = std::env::var_os("CARGO_MANIFEST_DIR")?;
        let git = |args: &[&str]| -> Option<String> {
            let out = Command::new("git")
                .current_dir(&dir)
                .args(args)
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        };
        let git_dir = git(&["rev-parse", "--absolute-git-dir"])?;
        // HEAD moves on checkout; logs/HEAD on every commit, also on a branch.
        for f in ["HEAD", "logs/HEAD"] {
            let p = Path::new(&git_dir).join(f);
            if p.exists() {
                println!("cargo::rerun-if-changed={}", p.display());
            }
        }
        git(&["rev-parse", "--short=12", "HEAD"])
    });
    println!(
        "cargo::rustc-env=TRACER_GIT_COMMIT={}",
        commit.as_deref().unwrap_or("unknown")
    );
}
