//! Output files as a tenant on the same host would attack them: tracer
//! runs as root, so `-w`, `--pcap`, `diagnose -w` and `agent --log` must
//! never write through a planted symlink, never into a file another user
//! made, and never leave a new file readable by others.
//!
//! The links are planted in a directory that is not sticky: in a sticky
//! one (/tmp) the kernel's fs.protected_symlinks would refuse to follow
//! them for us, and the test would pass without tracer's own checks.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use tracer_tests::tracer_release_bin;

/// A fresh directory, 0755, owned by root, not sticky; removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(test: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("trtest-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        Dir(d)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Each way of writing a file: the arguments with `{}` for the path. The
/// runs are short (`-d`).
fn writers() -> Vec<(&'static str, Vec<&'static str>)> {
    vec![
        ("watch -w", vec!["watch", "-d", "1s", "-w", "{}"]),
        ("watch --pcap", vec!["watch", "-d", "1s", "--pcap", "{}"]),
        ("diagnose -w", vec!["diagnose", "-d", "1s", "-w", "{}"]),
        (
            "diagnose --pcap",
            vec!["diagnose", "-d", "1s", "--pcap", "{}"],
        ),
        (
            "agent --log",
            vec![
                "agent",
                "--metrics-addr",
                "127.0.0.1:0",
                "--log-drops",
                "--log",
                "{}",
            ],
        ),
    ]
}

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

/// Runs tracer with `args` (`{}` replaced by `path`) plus `extra`: the
/// optimized binary, as each test starts twenty tracers (a debug build's
/// start-up is seconds). The
/// agent has no duration: once it says it is serving, it gets SIGTERM.
/// Anything still running after 60 s is killed (a hang fails the test).
fn run(args: &[&str], path: &Path, extra: &[&str]) -> Output {
    let p = path.to_str().unwrap();
    let args: Vec<&str> = args
        .iter()
        .map(|a| if *a == "{}" { p } else { a })
        .collect();
    let mut child = Command::new(tracer_release_bin())
        .args(&args)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tracer");
    let pid = child.id() as i32;
    let (done, stop) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if stop.recv_timeout(Duration::from_secs(60)).is_err() {
            unsafe { kill(pid, 9) };
        }
    });
    let mut stderr = Vec::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        if line.contains("agent serving") {
            unsafe { kill(pid, 15) };
            continue;
        }
        stderr.extend_from_slice(line.as_bytes());
        stderr.push(b'\n');
    }
    let status = child.wait().unwrap();
    let _ = done.send(());
    watchdog.join().unwrap();
    Output {
        status,
        stdout: Vec::new(),
        stderr,
    }
}

/// Exit status 1 and exactly one stderr line, containing every needle.
fn refused(out: &Output, what: &str, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{what}: {err}");
    assert_eq!(err.lines().count(), 1, "{what}: {err}");
    for n in needles {
        assert!(err.contains(n), "{what}: {n:?} not in {err}");
    }
}

/// `--force` for the files, `--append` for the agent's log.
fn flag(what: &str) -> &'static str {
    if what.starts_with("agent") {
        "--append"
    } else {
        "--force"
    }
}

#[test]
fn a_planted_symlink_is_never_followed() {
    let d = Dir::new("fsymlink");
    let target = d.path("precious");
    std::fs::write(&target, "precious\n").unwrap();
    let link = d.path("out");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let link_s = link.display().to_string();
    let untouched = |what: &str| {
        assert_eq!(
            std::fs::read_to_string(&target).unwrap(),
            "precious\n",
            "{what} wrote through the link"
        );
        assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
    };
    // Even told to overwrite or append, every writer refuses the link
    // itself (the message shows the flag reached the check).
    for (what, args) in writers() {
        let out = run(&args, &link, &[flag(what)]);
        refused(&out, what, &[&link_s, "is a symbolic link"]);
        untouched(what);
    }
    // Without the flag the name is simply taken.
    let out = run(&writers()[0].1, &link, &[]);
    refused(&out, "watch -w", &[&link_s, "already exists"]);
    untouched("watch -w");
    // A dangling link is not followed to create its target either.
    let dangling = d.path("dangling");
    let made = d.path("made");
    std::os::unix::fs::symlink(&made, &dangling).unwrap();
    refused(&run(&writers()[2].1, &dangling, &[]), "diagnose -w", &[]);
    assert!(!made.exists(), "diagnose -w created the link's target");
}

#[test]
fn a_new_file_is_private() {
    let d = Dir::new("fnew");
    for (i, (what, args)) in writers().into_iter().enumerate() {
        let p = d.path(&format!("new{i}"));
        let out = run(&args, &p, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        // diagnose exits 3 when it proved a fault, which other tests'
        // namespaces may give it in its second (it watches them all).
        let ok =
            out.status.success() || (what.starts_with("diagnose") && out.status.code() == Some(3));
        assert!(ok, "{what}: {:?} {err}", out.status);
        let m = std::fs::metadata(&p).unwrap_or_else(|e| panic!("{what}: {e}: {err}"));
        assert_eq!(m.permissions().mode() & 0o777, 0o600, "{what}");
    }
}

#[test]
fn an_existing_file_needs_force_and_never_another_users() {
    let d = Dir::new("fexist");
    let p = d.path("old");
    let ps = p.display().to_string();
    // The two ways to accept an existing file (every writer reaches the
    // same check: see the symlink test's messages).
    for (what, args) in writers()
        .into_iter()
        .filter(|(w, _)| ["watch -w", "agent --log"].contains(w))
    {
        let agent = what.starts_with("agent");
        let flag = flag(what);
        std::fs::write(&p, "old\n").unwrap();
        std::os::unix::fs::chown(&p, Some(0), Some(0)).unwrap();
        refused(&run(&args, &p, &[]), what, &[&ps, "already exists", flag]);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "old\n", "{what}");

        let out = run(&args, &p, &[flag]);
        assert!(
            out.status.success(),
            "{what} {flag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let now = std::fs::read(&p).unwrap();
        if agent {
            assert!(now.starts_with(b"old\n"), "--append keeps what was there");
        } else {
            assert!(!now.starts_with(b"old\n"), "{what} --force overwrites");
        }

        // Another user's file: refused even when forced.
        std::fs::write(&p, "theirs\n").unwrap();
        std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().uid(), 65534);
        refused(&run(&args, &p, &[flag]), what, &[&ps, "owned by uid 65534"]);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "theirs\n", "{what}");
        std::fs::remove_file(&p).unwrap();
    }
}

#[test]
fn stdout_still_works() {
    // `-w -` is pcapng on stdout: the section header block's magic first.
    let out = Command::new(tracer_release_bin())
        .args(["watch", "-d", "1s", "-w", "-"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(&out.stdout[..4], &[0x0a, 0x0d, 0x0d, 0x0a]);
}
