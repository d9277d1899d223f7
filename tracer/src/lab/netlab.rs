//! Throwaway network namespaces joined by veth pairs, for the labs and the
//! integration tests. Everything is created inside namespaces whose names
//! start with a prefix this process owns; interfaces are created directly
//! in their namespace, so nothing ever appears in the host's. Dropping a
//! `Netlab` deletes its namespaces, which also deletes their interfaces.

use anyhow::{bail, Context, Result};
use std::process::{Child, Command, Output, Stdio};

/// Every lab namespace starts with this, so `tracer lab clean` can find
/// what a killed run left behind without touching anyone else's.
pub const LAB_PREFIX: &str = "trlab-";

pub struct Netlab {
    prefix: String,
    namespaces: Vec<String>,
    children: Vec<Child>,
    /// Leave the namespaces in place on drop (`lab run --keep`).
    pub keep: bool,
}

fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} failed: {}",
            cmd,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// `ip netns list` names that start with `prefix`.
pub fn list_namespaces(prefix: &str) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// Deletes every namespace whose name starts with `prefix`; returns them.
pub fn clean(prefix: &str) -> Vec<String> {
    let names = list_namespaces(prefix);
    for n in &names {
        // Processes still inside keep a netns alive; kill them first.
        let _ = Command::new("ip")
            .args(["netns", "pids", n])
            .output()
            .map(|o| {
                for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            });
        let _ = Command::new("ip").args(["netns", "del", n]).status();
    }
    names
}

impl Netlab {
    /// A lab whose namespaces are named `<prefix><name>`. Leftovers with
    /// the same prefix (from a killed run) are removed first.
    pub fn new(prefix: &str) -> Result<Netlab> {
        clean(prefix);
        Ok(Netlab {
            prefix: prefix.to_string(),
            namespaces: Vec::new(),
            children: Vec::new(),
            keep: false,
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn name(&self, short: &str) -> String {
        format!("{}{}", self.prefix, short)
    }

    /// Creates namespace `<prefix><short>` with loopback up.
    pub fn ns(&mut self, short: &str) -> Result<String> {
        let name = self.name(short);
        run(Command::new("ip").args(["netns", "add", &name]))?;
        self.namespaces.push(name.clone());
        self.exec(short, "ip link set lo up")?;
        Ok(name)
    }

    /// A veth pair: `a_if` in namespace `a`, `b_if` in namespace `b`, both up.
    pub fn veth(&self, a: &str, a_if: &str, b: &str, b_if: &str) -> Result<()> {
        let (na, nb) = (self.name(a), self.name(b));
        // `ip -n A link add` creates the pair inside A; the peer goes
        // straight to B. Nothing is ever created in the host netns.
        run(Command::new("ip").args([
            "-n", &na, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &nb,
        ]))?;
        // Arguments, not a shell line: tests name interfaces with quotes
        // and control characters.
        run(Command::new("ip").args(["-n", &na, "link", "set", "dev", a_if, "up"]))?;
        run(Command::new("ip").args(["-n", &nb, "link", "set", "dev", b_if, "up"]))?;
        Ok(())
    }

    /// Runs a shell command inside namespace `<prefix><short>`.
    pub fn exec(&self, short: &str, cmd: &str) -> Result<String> {
        let out =
            run(Command::new("ip").args(["netns", "exec", &self.name(short), "sh", "-c", cmd]))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Like `exec`, but a failure is returned as the command's status.
    pub fn try_exec(&self, short: &str, cmd: &str) -> Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", &self.name(short), "sh", "-c", cmd])
            .stdin(Stdio::null())
            .output()
            .context("cannot run ip netns exec")
    }

    /// Starts a background command in a namespace; killed when the lab drops.
    pub fn spawn(&mut self, short: &str, cmd: &str) -> Result<()> {
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.name(short),
                "sh",
                "-c",
                &format!("exec {cmd}"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start a lab process")?;
        self.children.push(child);
        Ok(())
    }

    /// The inode of a lab namespace (what drop events carry).
    pub fn inode(&self, short: &str) -> Result<u32> {
        use std::os::unix::fs::MetadataExt;
        let p = format!("/run/netns/{}", self.name(short));
        Ok(std::fs::metadata(&p)
            .with_context(|| format!("no netns {p}"))?
            .ino() as u32)
    }

    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// Stops background processes and deletes every namespace now.
    pub fn teardown(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
        if !self.keep {
            clean(&self.prefix);
            self.namespaces.clear();
        }
    }
}

impl Drop for Netlab {
    fn drop(&mut self) {
        self.teardown();
    }
}
