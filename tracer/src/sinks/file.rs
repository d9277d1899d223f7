//! Every file tracer writes (pcapng of `-w`/`--pcap`, the recording of
//! `diagnose -w`, the agent's `--log`) is opened here, because tracer runs
//! as root and its paths often sit in directories other users can write
//! (/tmp, a shared log directory). A link planted there must never make
//! root overwrite or append to a file it points at, and a file another
//! user created must never receive packet payloads that user can read.
//!
//! The rules:
//! - a new file is created with `O_CREAT|O_EXCL|O_NOFOLLOW`, mode 0600: a
//!   name that exists (a planted symlink included) is never followed;
//! - an existing file is refused unless the caller allows it (`--force`
//!   truncates, the agent's `--append` appends), and even then only a
//!   regular file with one link, owned by the user tracer runs as, opened
//!   with `O_NOFOLLOW` (a symlink is refused) and checked with `fstat` on
//!   the descriptor opened, so a swap between check and open cannot
//!   redirect it. An existing file keeps its mode: its owner chose it.

use anyhow::{bail, Result};
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// What to do when the path already exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Existing {
    /// Refuse it (the default): the message names `flag`.
    Refuse { flag: &'static str },
    /// `--force`: truncate it (only a regular file of ours).
    Truncate,
    /// `--append`: add to its end (only a regular file of ours).
    Append,
}

impl Default for Existing {
    fn default() -> Self {
        Existing::Refuse { flag: "--force" }
    }
}

impl Existing {
    /// `--force` given or not.
    pub fn force(force: bool) -> Self {
        if force {
            Existing::Truncate
        } else {
            Existing::default()
        }
    }
}

/// Opens `path` for writing by the rules above; errors are one line
/// naming the path and what to do.
pub fn open(path: &Path, existing: Existing) -> Result<File> {
    let mut new = OpenOptions::new();
    new.write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
    if existing == Existing::Append {
        new.append(true);
    }
    match new.open(path) {
        Ok(f) => return Ok(f),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => bail!("cannot create {}: {e}", path.display()),
    }
    let append = match existing {
        Existing::Refuse { flag } => {
            bail!(
                "{} already exists: refusing to overwrite it (remove it, or give {flag})",
                path.display()
            )
        }
        Existing::Truncate => false,
        Existing::Append => true,
    };
    open_existing(path, append)
}

/// Opens an existing file without following a link and without blocking
/// on a FIFO, then checks what was opened before writing a byte.
fn open_existing(path: &Path, append: bool) -> Result<File> {
    let f = OpenOptions::new()
        .write(true)
        .append(append)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => anyhow::anyhow!(
                "{} is a symbolic link: refusing to write through it",
                path.display()
            ),
            _ => anyhow::anyhow!("cannot open {}: {e}", path.display()),
        })?;
    let m = f.metadata()?;
    // SAFETY: geteuid cannot fail and touches no memory.
    let me = unsafe { libc::geteuid() };
    if !m.file_type().is_file() {
        bail!(
            "{} is not a regular file: refusing to write to it",
            path.display()
        );
    }
    if m.uid() != me {
        bail!(
            "{} is owned by uid {}, not by uid {me} that tracer runs as: refusing to write to it",
            path.display(),
            m.uid()
        );
    }
    // A hard link to another file of ours (e.g. one in /etc) would be
    // overwritten through a name someone else chose.
    if m.nlink() > 1 {
        bail!(
            "{} has {} hard links: refusing to write to it",
            path.display(),
            m.nlink()
        );
    }
    if !append {
        f.set_len(0)?;
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("trfile-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    const REFUSE: Existing = Existing::Refuse { flag: "--force" };

    #[test]
    fn a_new_file_is_private() {
        let d = dir("new");
        let p = d.join("out");
        open(&p, REFUSE).unwrap().write_all(b"x").unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn an_existing_file_needs_a_flag_then_is_truncated_or_appended() {
        let d = dir("exist");
        let p = d.join("out");
        std::fs::write(&p, "old\n").unwrap();
        let e = open(&p, REFUSE).unwrap_err().to_string();
        assert!(e.contains("already exists") && e.contains("--force"), "{e}");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "old\n");
        open(&p, Existing::Append)
            .unwrap()
            .write_all(b"new\n")
            .unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "old\nnew\n");
        open(&p, Existing::Truncate)
            .unwrap()
            .write_all(b"x")
            .unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "x");
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn links_are_never_followed() {
        let d = dir("link");
        let target = d.join("target");
        std::fs::write(&target, "precious\n").unwrap();
        let link = d.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        for how in [REFUSE, Existing::Truncate, Existing::Append] {
            let e = open(&link, how).unwrap_err().to_string();
            assert_eq!(e.lines().count(), 1, "{e}");
            assert!(e.contains(&link.display().to_string()), "{e}");
        }
        let e = open(&link, Existing::Truncate).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        // A dangling link is not followed to create its target either.
        let dangling = d.join("dangling");
        std::os::unix::fs::symlink(d.join("made"), &dangling).unwrap();
        assert!(open(&dangling, REFUSE).is_err());
        assert!(!d.join("made").exists());
        let hard = d.join("hard");
        std::fs::hard_link(&target, &hard).unwrap();
        let e = open(&hard, Existing::Truncate).unwrap_err().to_string();
        assert!(e.contains("hard links"), "{e}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n");
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn another_users_file_is_refused() {
        let d = dir("owner");
        let p = d.join("theirs");
        std::fs::write(&p, "").unwrap();
        // Giving a file away needs root, as these tests run.
        std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
        let e = open(&p, Existing::Truncate).unwrap_err().to_string();
        assert!(e.contains("owned by uid 65534"), "{e}");
        std::fs::remove_dir_all(d).unwrap();
    }
}
