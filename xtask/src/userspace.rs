//! Other distributions' userspaces, for the dist check and the kernel
//! matrix: a minimal Debian root per suite, made with debootstrap from
//! the host's own Debian mirror (`host_mirror`, also the kernel matrix's) and
//! cached in `target/roots/SUITE`.
//!
//! `cargo xtask dist --check` proves what a responder gets on a Debian 11
//! host (glibc 2.31, iproute2 5.10, iptables 1.8.7): in a throwaway
//! overlay of that root, in a mount namespace of its own, the static
//! binary from the tarball runs `tracer check` and proves
//! `lab run bridge-subnet-strict` with bullseye's own `ip` and
//! `iptables`; then `dpkg -i` installs the .deb, whose man page, bash
//! completion and unit must land where Debian looks for them.
use crate::dist::{shell_word, Dist};
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What each root holds beyond minbase: the tools tracer's labs call
/// (ip, nstat, sysctl, iptables, nft, ping), kmod for the guests'
/// modprobe, and bash-completion to check the .deb's completion.
const INCLUDE: &str = "iproute2,iputils-ping,procps,iptables,nftables,kmod,bash-completion";

/// The suite the dist check runs in: the oldest glibc tracer claims.
pub const OLDEST: &str = "bullseye";

/// The cached root of `suite`, made on first use (about a minute). Made
/// in a temporary directory and renamed, so an interrupted run is redone.
pub fn root_of(root: &Path, suite: &str) -> Result<PathBuf> {
    let dir = root.join("target/roots").join(suite);
    if dir.join("etc/debian_version").exists() {
        return Ok(dir);
    }
    crate::install_packages(&["debootstrap", "debian-archive-keyring"])?;
    let tmp = root.join("target/roots").join(format!("{suite}.tmp"));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    let mirror = host_mirror()?;
    eprintln!(
        "xtask: debootstrap {suite} from {mirror} into {}",
        dir.display()
    );
    crate::run(
        Command::new("debootstrap")
            .args(["--variant=minbase", &format!("--include={INCLUDE}")])
            .arg("--keyring=/usr/share/keyrings/debian-archive-keyring.gpg")
            .arg(suite)
            .arg(&tmp)
            .arg(&mirror),
    )?;
    fs::rename(&tmp, &dir)?;
    Ok(dir)
}

/// Runs `script` as root inside a copy-on-write view of `lower`: a private
/// mount namespace (nothing mounted here is seen by the host), an overlay
/// whose writes go to a directory removed afterwards, and the host's
/// /proc, /sys (with tracefs and bpffs) and /dev, which eBPF and network
/// namespaces need. `files` are copied to /dist inside it.
fn in_root(lower: &Path, files: &[&Path], script: &str) -> Result<String> {
    let work = lower.with_extension("run");
    let _ = fs::remove_dir_all(&work);
    for d in ["upper/dist", "work", "merged"] {
        fs::create_dir_all(work.join(d))?;
    }
    for f in files {
        fs::copy(f, work.join("upper/dist").join(f.file_name().unwrap()))?;
    }
    fs::write(work.join("upper/dist/check.sh"), script)?;
    let m = shell_word(&work.join("merged"))?;
    // The overlay is a mount point, so `ip netns exec` can remount it as
    // a slave; /run is a tmpfs of its own, with nothing of the host's.
    let outer = format!(
        "set -e; mount -t overlay overlay -o lowerdir={},upperdir={},workdir={} {m}; \
         mount -t proc proc {m}/proc; mount --rbind /sys {m}/sys; mount --rbind /dev {m}/dev; \
         mount -t tmpfs tmpfs {m}/run; mount -t tmpfs tmpfs {m}/tmp; \
         exec chroot {m} /bin/sh -e /dist/check.sh",
        shell_word(lower)?,
        shell_word(&work.join("upper"))?,
        shell_word(&work.join("work"))?,
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &outer])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LANG", "C.UTF-8")
        .env("NO_COLOR", "1")
        .output()
        .context("cannot start unshare")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = fs::remove_dir_all(&work);
    if !out.status.success() {
        bail!("in the {} root: {}\n{text}", lower.display(), out.status);
    }
    Ok(text)
}

/// The checks inside the oldest root. Each step names itself, so a
/// failure says which.
const DIST_CHECK: &str = r#"
set -x
step() { echo "== $*"; }
step glibc; ldd --version | head -1
step the tarball
mkdir /opt/t && tar -C /opt/t -xzf /dist/@TARBALL@
T=/opt/t/@TARDIR@/tracer
ldd "$T" 2>&1 | grep -Eq 'not a dynamic executable|statically linked' || { ldd "$T"; exit 1; }
"$T" --version
"$T" check
step lab run bridge-subnet-strict
"$T" lab run bridge-subnet-strict
step dpkg -i
dpkg -i /dist/@DEB@
/usr/bin/tracer --version | grep -q 'commit' 
zcat /usr/share/man/man1/tracer.1.gz | grep -q "^\.TH tracer 1"
zcat /usr/share/man/man1/tracer-diagnose.1.gz | grep -q "replay"
test -f /lib/systemd/system/tracer-agent.service
bash -c '. /usr/share/bash-completion/completions/tracer && complete -p tracer' | grep -q tracer
test -f /usr/share/zsh/vendor-completions/_tracer
test -f /usr/share/fish/vendor_completions.d/tracer.fish
step all passed
"#;

pub fn dist_check(root: &Path, dist: &Dist) -> Result<()> {
    let lower = root_of(root, OLDEST)?;
    let name = |p: &Path| p.file_name().unwrap().to_string_lossy().into_owned();
    let tarball = name(&dist.tarball);
    let script = DIST_CHECK
        .replace("@TARBALL@", &tarball)
        .replace("@TARDIR@", tarball.trim_end_matches(".tar.gz"))
        .replace("@DEB@", &name(&dist.deb));
    let out = in_root(&lower, &[&dist.tarball, &dist.deb], &script)?;
    for l in out.lines().filter(|l| {
        l.starts_with("== ")
            || l.starts_with("ldd")
            || l.contains("proven")
            || l.contains("tracer ")
    }) {
        eprintln!("dist check ({OLDEST}): {l}");
    }
    if !out.contains("== all passed") {
        bail!("dist check in {OLDEST} did not finish:\n{out}");
    }
    Ok(())
}

/// The host's Debian mirror (not its security one), from
/// /etc/apt/sources.list.d/debian.sources (deb822) or /etc/apt/sources.list.
pub fn host_mirror() -> Result<String> {
    let deb822 = "/etc/apt/sources.list.d/debian.sources";
    let classic = "/etc/apt/sources.list";
    let read = |p| fs::read_to_string(p).unwrap_or_default();
    mirror_in(&read(deb822), &read(classic))
        .with_context(|| format!("no Debian mirror in {deb822} or {classic}"))
}

/// The first non-security URI of `deb` sources in a deb822 file's text
/// and a classic sources.list's.
fn mirror_in(deb822: &str, classic: &str) -> Option<String> {
    let uris = deb822
        .lines()
        .filter_map(|l| l.trim().strip_prefix("URIs:"))
        .flat_map(str::split_whitespace);
    let classic_uris = classic.lines().filter_map(|l| {
        let mut words = l.split_whitespace();
        if words.next() != Some("deb") {
            return None;
        }
        // Skip an option block: `[signed-by=... arch=amd64]`.
        let mut word = words.next()?;
        if word.starts_with('[') {
            while !word.ends_with(']') {
                word = words.next()?;
            }
            word = words.next()?;
        }
        Some(word)
    });
    uris.chain(classic_uris)
        .find(|u| !u.contains("security"))
        .map(|u| u.trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_from_deb822_or_sources_list_never_security() {
        let deb822 = "Types: deb\nURIs: http://deb.debian.org/debian-security\n\n\
                      Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm\n";
        assert_eq!(
            mirror_in(deb822, "").as_deref(),
            Some("http://mirror.example/debian")
        );
        let classic = "# deb http://old/debian bookworm main\n\
                       deb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm main\n";
        assert_eq!(
            mirror_in("", classic).as_deref(),
            Some("http://m.example/debian")
        );
        assert_eq!(mirror_in("", ""), None);
    }
}
