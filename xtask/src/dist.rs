//! `cargo xtask dist`: what a responder installs on a host with no Rust.
//!
//! Writes `target/dist/`:
//! - `tracer-VERSION-x86_64-linux.tar.gz`: one statically linked `tracer`
//!   (glibc linked in with `+crt-static`, so it starts on Debian 11,
//!   Ubuntu 20.04, RHEL 8 and Amazon Linux 2, whose glibc is older than
//!   the 2.34 a bookworm build needs), the eBPF object inside it, the
//!   README, the licences, the man page, completions for bash, zsh and
//!   fish, and the agent's systemd unit;
//! - `tracer_VERSION_amd64.deb`: the same files where Debian puts them,
//!   built by dpkg-deb; the unit is installed, not enabled;
//! - `SHA256SUMS`.
//!
//! Reproducible: every timestamp is the commit's (`SOURCE_DATE_EPOCH`),
//! owners are root, members are sorted and gzip stores no name or time,
//! and the build remaps the checkout's and cargo's paths, so two runs
//! from one commit give byte-identical files. The man page and the
//! completions are printed by the binary itself from its clap
//! definitions (`tracer man`, `tracer completions SHELL`), so they cannot
//! drift from its flags.
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "x86_64-unknown-linux-gnu";
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Where each shipped file goes in the .deb (and, by its file name, in
/// the tarball).
struct Payload {
    /// Path under the package root.
    deb_path: &'static str,
    /// Name in the tarball, under `tracer-VERSION-x86_64-linux/`.
    tar_name: &'static str,
    mode: u32,
}

const BINARY: Payload = Payload {
    deb_path: "usr/bin/tracer",
    tar_name: "tracer",
    mode: 0o755,
};
/// Man pages: tracer.1 and one per subcommand (tracer-watch.1 ...).
const MAN_DEB_DIR: &str = "usr/share/man/man1";
const MAN_TAR_DIR: &str = "man";
const UNIT: Payload = Payload {
    deb_path: "lib/systemd/system/tracer-agent.service",
    tar_name: "tracer-agent.service",
    mode: 0o644,
};
/// (shell, where Debian's packages of that shell look, tarball name)
const COMPLETIONS: &[(&str, &str, &str)] = &[
    (
        "bash",
        "usr/share/bash-completion/completions/tracer",
        "completions/tracer.bash",
    ),
    (
        "zsh",
        "usr/share/zsh/vendor-completions/_tracer",
        "completions/_tracer",
    ),
    (
        "fish",
        "usr/share/fish/vendor_completions.d/tracer.fish",
        "completions/tracer.fish",
    ),
];
const DOCS: &[&str] = &["README.md", "LICENSE-MIT", "LICENSE-APACHE"];

/// The files `dist` wrote.
pub struct Dist {
    pub tarball: PathBuf,
    pub deb: PathBuf,
    pub sums: PathBuf,
}

pub fn run(root: &Path) -> Result<Dist> {
    crate::install_packages(&["dpkg-dev", "gzip", "tar", "coreutils"])?;
    let epoch = source_date_epoch(root)?;
    let binary = build_static(root)?;
    let out = root.join("target/dist");
    let _ = fs::remove_dir_all(&out);
    let stage = out.join("stage");
    fs::create_dir_all(&stage)?;
    let generated = generate(&binary, &stage)?;
    let tarball = tarball(root, &out, &stage, &binary, &generated, epoch)?;
    let deb = deb(root, &out, &stage, &binary, &generated, epoch)?;
    fs::remove_dir_all(&stage)?;
    let sums = out.join("SHA256SUMS");
    let names = [&tarball, &deb].map(|p| p.file_name().unwrap().to_owned());
    let listed = Command::new("sha256sum")
        .current_dir(&out)
        .args(names)
        .output()
        .context("cannot start sha256sum")?;
    if !listed.status.success() {
        bail!("sha256sum failed: {}", listed.status);
    }
    fs::write(&sums, &listed.stdout)?;
    for p in [&tarball, &deb, &sums] {
        eprintln!("dist: {}", p.display());
    }
    Ok(Dist { tarball, deb, sums })
}

/// The commit's time, unless the caller set one.
fn source_date_epoch(root: &Path) -> Result<u64> {
    if let Ok(v) = std::env::var("SOURCE_DATE_EPOCH") {
        return v
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={v} is not a number of seconds"));
    }
    let out = Command::new("git")
        .current_dir(root)
        .args(["log", "-1", "--format=%ct"])
        .output()
        .context("cannot start git")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .with_context(|| format!("no commit time from git log: {text:?}"))
}

/// The release tracer, linked statically. `--target` keeps the flag off
/// build scripts and proc macros, which must stay dynamic.
pub fn build_static(root: &Path) -> Result<PathBuf> {
    let cargo_home = std::env::var("CARGO_HOME")
        .unwrap_or_else(|_| format!("{}/.cargo", std::env::var("HOME").unwrap_or_default()));
    let flags = format!(
        "-C target-feature=+crt-static --remap-path-prefix={}=/build/tracer \
         --remap-path-prefix={cargo_home}=/cargo",
        root.display()
    );
    crate::run(
        Command::new("cargo")
            .current_dir(root)
            .args(["build", "--release", "--locked", "-q", "-p", "tracer"])
            .args(["--target", TARGET])
            .env("RUSTFLAGS", flags)
            // No symbol table: the binary shrinks by a third and names
            // no build paths; panics still print their message.
            .env("CARGO_PROFILE_RELEASE_STRIP", "symbols"),
    )?;
    let bin = static_binary(root);
    let elf = fs::read(&bin).with_context(|| format!("reading {}", bin.display()))?;
    if has_interpreter(&elf) {
        bail!(
            "{} still asks for a dynamic loader (PT_INTERP)",
            bin.display()
        );
    }
    Ok(bin)
}

/// Where `build_static` leaves the binary.
pub fn static_binary(root: &Path) -> PathBuf {
    root.join("target").join(TARGET).join("release/tracer")
}

/// Whether a 64-bit little-endian ELF has a PT_INTERP program header:
/// a dynamically linked executable does, a static(-pie) one does not.
fn has_interpreter(elf: &[u8]) -> bool {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return true;
    };
    (0..phnum as usize).any(|i| u32_at(phoff as usize + i * phentsize as usize) == Some(3))
}

/// The man pages and completions, written by the binary.
struct Generated {
    /// tracer.1, tracer-watch.1, ... (sorted, for a stable archive).
    man: Vec<PathBuf>,
    completions: Vec<PathBuf>,
}

fn generate(binary: &Path, stage: &Path) -> Result<Generated> {
    let capture = |args: &[&str], to: &Path| -> Result<PathBuf> {
        let out = Command::new(binary)
            .args(args)
            .output()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        if !out.status.success() || out.stdout.is_empty() {
            bail!(
                "tracer {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        fs::write(to, &out.stdout)?;
        Ok(to.to_path_buf())
    };
    let man_dir = stage.join("man");
    fs::create_dir_all(&man_dir)?;
    crate::run(Command::new(binary).arg("man").arg("--dir").arg(&man_dir))?;
    let mut man: Vec<PathBuf> = fs::read_dir(&man_dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    man.sort();
    if !man.iter().any(|p| p.ends_with("tracer.1")) {
        bail!("tracer man --dir wrote no tracer.1");
    }
    let completions = COMPLETIONS
        .iter()
        .map(|(shell, _, _)| capture(&["completions", shell], &stage.join(shell)))
        .collect::<Result<_>>()?;
    Ok(Generated { man, completions })
}

fn put(from: &Path, to: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(to.parent().unwrap())?;
    fs::copy(from, to).with_context(|| format!("copying {}", from.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn tarball(
    root: &Path,
    out: &Path,
    stage: &Path,
    binary: &Path,
    g: &Generated,
    epoch: u64,
) -> Result<PathBuf> {
    let name = format!("tracer-{VERSION}-x86_64-linux");
    let dir = stage.join("tar").join(&name);
    put(binary, &dir.join(BINARY.tar_name), BINARY.mode)?;
    for page in &g.man {
        put(
            page,
            &dir.join(MAN_TAR_DIR).join(page.file_name().unwrap()),
            0o644,
        )?;
    }
    put(
        &root.join("deploy/tracer-agent.service"),
        &dir.join(UNIT.tar_name),
        UNIT.mode,
    )?;
    for ((_, _, tar_name), file) in COMPLETIONS.iter().zip(&g.completions) {
        put(file, &dir.join(tar_name), 0o644)?;
    }
    for doc in DOCS {
        put(&root.join(doc), &dir.join(doc), 0o644)?;
    }
    let tar = out.join(format!("{name}.tar.gz"));
    // GNU tar's reproducible form: sorted, one owner, one time, no
    // atime/ctime extended headers; gzip -n stores no name or time.
    let script = format!(
        "set -e; tar --sort=name --format=posix \
         --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
         --mtime=@{epoch} --owner=0 --group=0 --numeric-owner -C {} -cf - {} | gzip -9n > {}",
        shell_word(&stage.join("tar"))?,
        shell_word(Path::new(&name))?,
        shell_word(&tar)?,
    );
    crate::run(Command::new("sh").args(["-c", &script]))?;
    Ok(tar)
}

fn deb(
    root: &Path,
    out: &Path,
    stage: &Path,
    binary: &Path,
    g: &Generated,
    epoch: u64,
) -> Result<PathBuf> {
    let pkg = stage.join("deb");
    put(binary, &pkg.join(BINARY.deb_path), BINARY.mode)?;
    for page in &g.man {
        let mut name = page.file_name().unwrap().to_owned();
        name.push(".gz");
        gzip_into(page, &pkg.join(MAN_DEB_DIR).join(name))?;
    }
    put(
        &root.join("deploy/tracer-agent.service"),
        &pkg.join(UNIT.deb_path),
        UNIT.mode,
    )?;
    for ((_, deb_path, _), file) in COMPLETIONS.iter().zip(&g.completions) {
        put(file, &pkg.join(deb_path), 0o644)?;
    }
    put(
        &root.join("LICENSE-MIT"),
        &pkg.join("usr/share/doc/tracer/copyright"),
        0o644,
    )?;
    let installed_kib = dir_size(&pkg)?.div_ceil(1024);
    let control = format!(
        "Package: tracer\n\
         Version: {VERSION}\n\
         Architecture: amd64\n\
         Maintainer: tracer developers <tracer@invalid>\n\
         Installed-Size: {installed_kib}\n\
         Recommends: iproute2\n\
         Section: net\n\
         Priority: optional\n\
         Homepage: https://github.com/tracer-dev/tracer\n\
         Description: why did the kernel drop my packet?\n \
         An eBPF tool that catches every packet the kernel drops, with its reason,\n \
         joins the drops with route lookups and the host's topology (veths,\n \
         bridges, MTUs, rp_filter) and proves the root cause. Statically linked;\n \
         needs a 5.10 or later kernel with BTF. The agent's systemd unit is\n \
         installed but not enabled.\n"
    );
    fs::create_dir_all(pkg.join("DEBIAN"))?;
    fs::write(pkg.join("DEBIAN/control"), control)?;
    let deb = out.join(format!("tracer_{VERSION}_amd64.deb"));
    // dpkg-deb clamps every member's time to SOURCE_DATE_EPOCH and, with
    // --root-owner-group, makes root own everything.
    let script = format!(
        "set -e; find {0} -exec touch -h -d @{epoch} {{}} +; \
         dpkg-deb --root-owner-group -Zxz --build {0} {1} >/dev/null",
        shell_word(&pkg)?,
        shell_word(&deb)?
    );
    crate::run(
        Command::new("sh")
            .args(["-c", &script])
            .env("SOURCE_DATE_EPOCH", epoch.to_string()),
    )?;
    Ok(deb)
}

fn gzip_into(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to.parent().unwrap())?;
    let out = Command::new("gzip")
        .args(["-9n", "-c"])
        .arg(from)
        .output()
        .context("cannot start gzip")?;
    if !out.status.success() {
        bail!("gzip {} failed", from.display());
    }
    fs::write(to, out.stdout)?;
    Ok(())
}

fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for e in fs::read_dir(dir)? {
        let e = e?;
        let meta = e.metadata()?;
        total += if meta.is_dir() {
            dir_size(&e.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// One word for `sh -c`, single-quoted.
pub fn shell_word(p: &Path) -> Result<String> {
    let s = p
        .to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))?;
    Ok(format!("'{}'", s.replace('\'', r"'\''")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_static_pie_has_no_interpreter_and_a_dynamic_one_does() {
        // This xtask binary itself is dynamically linked.
        let me = fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(has_interpreter(&me));
        // A minimal ELF header with no program headers.
        let mut elf = vec![0u8; 64];
        elf[0x36] = 56;
        assert!(!has_interpreter(&elf));
        assert!(has_interpreter(&[0u8; 8]), "a short file is not trusted");
    }
}
