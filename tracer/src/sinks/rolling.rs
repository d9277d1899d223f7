//! The agent's flight recorder (`agent --record-dir DIR --record-max SIZE`):
//! one recording spread over numbered files in a directory, the oldest
//! removed once they hold more than SIZE, so that what dropped before an
//! outage can still be replayed after it (`diagnose --replay DIR`).
//!
//! - Files are `tracer-NNNNNNNN.jsonl`, numbered on from the highest one
//!   already there, so a restarted agent continues the set instead of
//!   overwriting it; only names of that form are ever removed.
//! - Each file starts a recording of its own (the recorder writes the
//!   header and the topology it knows again), so the newest file replays
//!   alone once older ones are gone.
//! - Each line reaches the kernel in one write, unbuffered: a `kill -9`
//!   loses at most the line being written, and the reader skips a torn
//!   last line.
//! - The directory is root's evidence: it must not be a symlink nor
//!   writable by other users (who could swap a name for a link), and is
//!   created 0700 when missing. Files are created through `sinks::file`.

use anyhow::{bail, Context, Result};
use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::sinks::file::{self, Existing};

const PREFIX: &str = "tracer-";
const SUFFIX: &str = ".jsonl";
/// The size is shared by this many files, so removing the oldest gives
/// back a quarter of it at a time.
const FILES: u64 = 4;
/// Smallest `--record-max`: a file must hold a header, a topology and
/// some facts.
pub const MIN_TOTAL: u64 = 64 * 1024;

/// A set of recording files in one directory.
pub struct RollingDir {
    dir: PathBuf,
    max_total: u64,
    /// Oldest first, the one being written last, with their sizes.
    files: VecDeque<(PathBuf, u64)>,
    current: File,
    next_seq: u64,
}

/// The sequence number of a file of the set, from its name.
fn seq_of(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The recording files of `dir`, oldest first.
pub fn list(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    let mut found: Vec<(u64, PathBuf)> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let seq = seq_of(e.file_name().to_str()?)?;
            e.file_type().ok()?.is_file().then(|| (seq, e.path()))
        })
        .collect();
    found.sort();
    Ok(found.into_iter().map(|(_, p)| p).collect())
}

/// Checks `dir` (creating it 0700 if missing): a real directory, ours,
/// that nobody else can write.
fn checked_dir(dir: &Path) -> Result<()> {
    let md = match std::fs::symlink_metadata(dir) {
        Ok(md) => md,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("cannot create --record-dir {}", dir.display()))?;
            std::fs::symlink_metadata(dir)?
        }
        Err(e) => bail!("cannot use --record-dir {}: {e}", dir.display()),
    };
    if md.file_type().is_symlink() || !md.is_dir() {
        bail!(
            "--record-dir {} is not a directory (a symlink is refused)",
            dir.display()
        );
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if md.uid() != me || md.mode() & 0o022 != 0 {
        bail!(
            "--record-dir {} must be owned by uid {me} and writable by no one else (mode {:o}): another user could plant links there",
            dir.display(),
            md.mode() & 0o7777
        );
    }
    Ok(())
}

impl RollingDir {
    /// Opens the set in `dir`, at most `max_total` bytes, and starts a new
    /// file after any already there.
    pub fn open(dir: &Path, max_total: u64) -> Result<RollingDir> {
        if max_total < MIN_TOTAL {
            bail!("--record-max must be at least {} KiB", MIN_TOTAL / 1024);
        }
        checked_dir(dir)?;
        let mut files = VecDeque::new();
        let mut next_seq = 0;
        for p in list(dir)? {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            next_seq = next_seq.max(seq_of(name).unwrap_or(0) + 1);
            let size = std::fs::symlink_metadata(&p).map(|m| m.len()).unwrap_or(0);
            files.push_back((p, size));
        }
        let (path, current) = Self::create(dir, next_seq)?;
        files.push_back((path, 0));
        let mut set = RollingDir {
            dir: dir.to_path_buf(),
            max_total,
            files,
            current,
            next_seq: next_seq + 1,
        };
        set.prune();
        Ok(set)
    }

    fn create(dir: &Path, seq: u64) -> Result<(PathBuf, File)> {
        let path = dir.join(format!("{PREFIX}{seq:08}{SUFFIX}"));
        let f = file::open(
            &path,
            Existing::Refuse {
                flag: "--record-dir",
            },
        )?;
        Ok((path, f))
    }

    /// Writes one whole line (with its newline) in one write.
    pub fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        self.current.write_all(line)?;
        if let Some((_, size)) = self.files.back_mut() {
            *size += line.len() as u64;
        }
        Ok(())
    }

    /// The file being written has its share of the size.
    pub fn full(&self) -> bool {
        self.files
            .back()
            .is_some_and(|(_, size)| *size >= self.max_total / FILES)
    }

    /// Starts the next file, then removes the oldest while the set holds
    /// more than its size. The caller writes the new file's header.
    pub fn rotate(&mut self) -> std::io::Result<()> {
        let (path, f) = Self::create(&self.dir, self.next_seq).map_err(std::io::Error::other)?;
        self.next_seq += 1;
        self.current = f;
        self.files.push_back((path, 0));
        self.prune();
        Ok(())
    }

    fn prune(&mut self) {
        while self.files.len() > 1
            && self.files.iter().map(|(_, s)| s).sum::<u64>() > self.max_total
        {
            if let Some((old, _)) = self.files.pop_front() {
                // Gone already (removed by hand): nothing to give back.
                let _ = std::fs::remove_file(old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("trroll-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn the_set_stays_within_its_size_and_numbers_on_after_a_restart() {
        let d = dir("cap");
        let mut set = RollingDir::open(&d, MIN_TOTAL).unwrap();
        let line = vec![b'x'; 999]
            .into_iter()
            .chain([b'\n'])
            .collect::<Vec<u8>>();
        for _ in 0..400 {
            set.write_line(&line).unwrap();
            if set.full() {
                set.rotate().unwrap();
            }
        }
        let total: u64 = list(&d)
            .unwrap()
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum();
        assert!(total <= MIN_TOTAL + 1000, "{total}");
        let last = list(&d).unwrap().last().cloned().unwrap();
        drop(set);
        // A restart continues after the highest number, never over it.
        let _again = RollingDir::open(&d, MIN_TOTAL).unwrap();
        let newest = list(&d).unwrap().last().cloned().unwrap();
        assert!(newest > last, "{newest:?} {last:?}");
        assert_eq!(std::fs::metadata(&newest).unwrap().len(), 0);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn other_files_are_never_removed() {
        let d = dir("others");
        std::fs::DirBuilder::new().mode(0o700).create(&d).unwrap();
        std::fs::write(d.join("notes.txt"), vec![b'n'; 100_000]).unwrap();
        std::fs::write(d.join("tracer-1.jsonl"), b"short name").unwrap();
        let mut set = RollingDir::open(&d, MIN_TOTAL).unwrap();
        for _ in 0..200 {
            set.write_line(&[b'y'; 1000]).unwrap();
            if set.full() {
                set.rotate().unwrap();
            }
        }
        assert!(d.join("notes.txt").exists());
        assert!(d.join("tracer-1.jsonl").exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_shared_or_linked_directory_is_refused() {
        let d = dir("shared");
        std::fs::DirBuilder::new().mode(0o777).create(&d).unwrap();
        std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
        let e = RollingDir::open(&d, MIN_TOTAL).err().unwrap().to_string();
        assert!(e.contains("writable by no one else"), "{e}");
        let link = dir("link");
        std::os::unix::fs::symlink(&d, &link).unwrap();
        let e = RollingDir::open(&link, MIN_TOTAL)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("a symlink is refused"), "{e}");
        let e = RollingDir::open(&dir("small"), 1000)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("at least 64 KiB"), "{e}");
        std::fs::remove_file(&link).unwrap();
        std::fs::remove_dir_all(&d).unwrap();
    }
}
