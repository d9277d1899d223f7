//! Points `include_bytes_aligned!` at the eBPF object that
//! `cargo xtask build-ebpf` produced. The object is built by xtask, not
//! here, because it needs a different compiler (Debian's rustc-web for the
//! bpf target) and a linker that a plain `cargo build` cannot assume.
use std::path::PathBuf;

fn main() {
    println!("cargo::rerun-if-env-changed=TRACER_BPF_OBJECT");
    let path = match std::env::var_os("TRACER_BPF_OBJECT") {
        Some(p) => PathBuf::from(p),
        None => {
            let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
            manifest.join("../target/bpf/tracer.bpf.o")
        }
    };
    if !path.exists() {
        println!(
            "cargo::error=the eBPF object {} is missing: run `cargo xtask build-ebpf` first \
             (or `cargo xtask test` / `cargo xtask run`, which build everything)",
            path.display()
        );
        return;
    }
    println!("cargo::rerun-if-changed={}", path.display());
    println!("cargo::rustc-env=TRACER_BPF_OBJECT={}", path.display());
}
