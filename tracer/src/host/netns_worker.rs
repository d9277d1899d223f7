//! Reading inside other network namespaces without a thread per read.
//!
//! `setns(CLONE_NEWNET)` moves only the calling thread, so a read inside a
//! namespace needs a thread there. A fresh thread per read cost a `clone3`
//! per namespace per refresh (153 threads in 6 s at 300 namespaces, issue
//! 22). Instead a [`Visitor`] moves a long-lived thread into the target and
//! back home afterwards, and [`read_in`] hands short reads to one shared
//! worker thread that does exactly that.
//!
//! A thread that cannot get back home is never used again: the visitor is
//! poisoned and the shared worker ends (the next read starts a new one), so
//! the wrong namespace never leaks into later work.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Mutex, PoisonError};

/// Moves the calling thread into namespaces and back.
pub struct Visitor {
    /// The namespace the thread was in when the visitor was made.
    home: File,
    poisoned: bool,
}

impl Visitor {
    /// Remembers the calling thread's namespace as home.
    pub fn here() -> io::Result<Visitor> {
        Ok(Visitor {
            home: File::open("/proc/thread-self/ns/net")?,
            poisoned: false,
        })
    }

    /// Runs `f` inside the namespace `path` opens, then returns home.
    /// Inside `f`, new sockets and /proc/sys/net are the target's (see
    /// [`crate::host::netns::run_in`]). A panic in `f` becomes an error.
    pub fn visit<T>(&mut self, path: &Path, f: impl FnOnce() -> T) -> io::Result<T> {
        if self.poisoned {
            return Err(io::Error::other("this thread could not return home"));
        }
        let target = File::open(path)?;
        self.enter_run_return(target, path, f)
    }

    fn enter_run_return<T>(
        &mut self,
        target: File,
        path: &Path,
        f: impl FnOnce() -> T,
    ) -> io::Result<T> {
        setns(&target)?;
        drop(target);
        let out = catch_unwind(AssertUnwindSafe(f));
        if let Err(e) = setns(&self.home) {
            self.poisoned = true;
            return Err(io::Error::other(format!("cannot return home: {e}")));
        }
        out.map_err(|payload| {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic".to_string());
            io::Error::other(format!(
                "closure panicked in netns {}: {msg}",
                path.display()
            ))
        })
    }

    /// [`Visitor::visit`], only if `path` opens the namespace `inode`:
    /// checked on the open file (no look at /proc; the path may have
    /// changed meaning since it was listed).
    pub fn visit_inode<T>(
        &mut self,
        path: &Path,
        inode: u32,
        f: impl FnOnce() -> T,
    ) -> io::Result<T> {
        use std::os::unix::fs::MetadataExt;
        if self.poisoned {
            return Err(io::Error::other("this thread could not return home"));
        }
        let target = File::open(path)?;
        let actual = target.metadata()?.ino();
        if actual != u64::from(inode) {
            return Err(io::Error::other(format!(
                "{} now opens netns {actual}, not {inode}",
                path.display()
            )));
        }
        self.enter_run_return(target, path, f)
    }

    pub fn poisoned(&self) -> bool {
        self.poisoned
    }
}

fn setns(f: &File) -> io::Result<()> {
    // SAFETY: the fd is owned by `f`, which outlives the call.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

type Job = Box<dyn FnOnce(&mut Visitor) + Send>;

/// The shared worker's queue; None until the first read (or after the
/// worker ended).
static WORKER: Mutex<Option<mpsc::Sender<Job>>> = Mutex::new(None);

/// Runs `f` inside the namespace at `path` on the shared worker thread and
/// waits for its result. For short reads only: reads from every caller
/// queue behind one another.
pub fn read_in<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    let (tx, rx) = mpsc::sync_channel::<io::Result<T>>(1);
    let path = path.to_path_buf();
    let job: Job = Box::new(move |v: &mut Visitor| {
        let _ = tx.send(v.visit(&path, f));
    });
    submit(job)?;
    rx.recv()
        .unwrap_or_else(|_| Err(io::Error::other("the netns worker ended")))
}

fn submit(job: Job) -> io::Result<()> {
    let mut g = WORKER.lock().unwrap_or_else(PoisonError::into_inner);
    let job = match g.as_ref() {
        Some(tx) => match tx.send(job) {
            Ok(()) => return Ok(()),
            // The worker ended: start another with this job.
            Err(mpsc::SendError(job)) => job,
        },
        None => job,
    };
    let (tx, rx) = mpsc::channel::<Job>();
    tx.send(job)
        .map_err(|_| io::Error::other("netns worker queue"))?;
    std::thread::Builder::new()
        .name("netns-reader".into())
        .spawn(move || {
            let Ok(mut v) = Visitor::here() else {
                return;
            };
            while let Ok(job) = rx.recv() {
                job(&mut v);
                if v.poisoned() {
                    return;
                }
            }
        })?;
    *g = Some(tx);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::netns::test_support::TestNs;
    use crate::host::netns::{own_inode, thread_inode};

    #[test]
    fn reads_run_inside_and_the_worker_is_reused() {
        let ns = TestNs::new("worker");
        let own = own_inode().unwrap();
        let (a, ta) = read_in(&ns.path(), || (thread_inode().unwrap(), proc_tid())).unwrap();
        let (b, tb) = read_in(&ns.path(), || (thread_inode().unwrap(), proc_tid())).unwrap();
        assert_eq!((a, b), (ns.inode, ns.inode));
        assert_eq!(ta, tb, "one thread serves every read");
        // Back home between reads: a read of our own namespace sees it.
        let home = read_in(Path::new("/proc/self/ns/net"), || thread_inode().unwrap()).unwrap();
        assert_eq!(home, own);
        let e = read_in(&ns.path(), || -> u32 { panic!("boom") }).unwrap_err();
        assert!(e.to_string().contains("boom"), "{e}");
        assert!(read_in(Path::new("/nonexistent/trtopo"), || 1).is_err());
        assert_eq!(
            read_in(Path::new("/etc/hostname"), || 1)
                .unwrap_err()
                .raw_os_error(),
            Some(libc::EINVAL)
        );
        assert_eq!(thread_inode().unwrap(), own, "the caller never moves");
    }

    fn proc_tid() -> i64 {
        // SAFETY: gettid has no preconditions.
        unsafe { libc::syscall(libc::SYS_gettid) }
    }
}
