//! The host's processes and threads, as /proc lists them: where the
//! namespaces and containers without a name are found, and who runs.

use std::path::Path;

/// Every process id, lowest first: low pids are long-lived daemons, so
/// paths through them stay valid longer.
pub fn pids() -> Vec<u32> {
    ids(Path::new("/proc"))
}

/// The thread ids of a process, lowest first.
pub fn tids(pid: u32) -> Vec<u32> {
    ids(&Path::new("/proc").join(pid.to_string()).join("task"))
}

/// Whether a process of this name (`/proc/PID/comm`) runs.
pub fn runs(comm: &str) -> bool {
    pids().into_iter().any(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
    })
}

/// The numeric entries of a /proc directory, sorted.
fn ids(dir: &Path) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut ids: Vec<u32> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    ids.sort_unstable();
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_and_its_thread_are_listed() {
        let me = std::process::id();
        assert!(pids().contains(&me));
        assert!(tids(me).contains(&me));
    }
}
