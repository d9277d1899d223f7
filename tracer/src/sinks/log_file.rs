//! The agent's `--log FILE`: a log that a long-lived service can keep.
//!
//! - Whole lines only: what the writers hand over in pieces is written
//!   once its newline arrives, so a failed write never leaves half a line.
//! - A size cap (`--log-max`): past it, FILE becomes `FILE.1` (the older
//!   `FILE.1` goes) and a new FILE is created as every output is
//!   (`sinks::file`, `O_EXCL|O_NOFOLLOW`, 0600). `rename` replaces a name
//!   and never follows a link there.
//! - A full disk (or any write error) does not end the agent: the error is
//!   reported once with the path, lines are dropped and counted, and
//!   writing resumes, with a note of how many were lost, once it can.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::sinks::file::{self, Existing};

pub struct LogFile {
    path: PathBuf,
    file: File,
    /// Bytes in the current file (its size when it was opened, appended to).
    size: u64,
    max: Option<u64>,
    /// A line not yet ended.
    pending: Vec<u8>,
    /// Lines dropped since the last write that failed.
    lost: u64,
}

impl LogFile {
    pub fn open(path: &Path, existing: Existing, max: Option<u64>) -> anyhow::Result<LogFile> {
        let file = file::open(path, existing)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(LogFile {
            path: path.to_path_buf(),
            file,
            size,
            max,
            pending: Vec::new(),
            lost: 0,
        })
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        std::fs::rename(&self.path, &old)?;
        self.file = file::open(&self.path, Existing::Refuse { flag: "--log" })
            .map_err(std::io::Error::other)?;
        self.size = 0;
        Ok(())
    }

    fn write_line(&mut self, line: &[u8]) {
        let full = self.max.is_some_and(|m| self.size + line.len() as u64 > m);
        let r = if full && self.size > 0 {
            self.rotate()
        } else {
            Ok(())
        }
        .and_then(|()| self.file.write_all(line));
        match r {
            Ok(()) => {
                self.size += line.len() as u64;
                if self.lost > 0 {
                    eprintln!(
                        "tracer: --log {} is written again; {} lines were lost",
                        self.path.display(),
                        self.lost
                    );
                    self.lost = 0;
                }
            }
            Err(e) => {
                if self.lost == 0 {
                    eprintln!(
                        "tracer: cannot write --log {}: {e}; its lines are dropped until it can be written (metrics go on)",
                        self.path.display()
                    );
                }
                self.lost += 1;
            }
        }
    }
}

impl Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.pending.extend_from_slice(buf);
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            self.write_line(&line);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_its_size_the_log_moves_to_dot_1_and_starts_again() {
        let dir = std::env::temp_dir().join(format!("trlog-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.log");
        let mut log = LogFile::open(&path, Existing::default(), Some(1000)).unwrap();
        for i in 0..100 {
            // Handed over in pieces, as serde writes.
            write!(log, "{{\"n\":").unwrap();
            writeln!(log, "{i:04}}}").unwrap();
        }
        let now = std::fs::read_to_string(&path).unwrap();
        let old = std::fs::read_to_string(dir.join("agent.log.1")).unwrap();
        assert!(
            now.len() <= 1000 && old.len() <= 1000,
            "{} {}",
            now.len(),
            old.len()
        );
        assert!(now.ends_with("{\"n\":0099}\n"), "{now}");
        // Whole lines only, in order across the two files.
        let all: Vec<&str> = old.lines().chain(now.lines()).collect();
        assert!(all.windows(2).all(|w| w[0] < w[1]), "{all:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
