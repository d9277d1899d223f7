//! What userspace decides before load: `CONFIG` (filters, limits, which
//! extras to send), read by every program, and the packet filter run
//! against it.

use crate::scratch::SCRATCH;
use tracer_abi::*;

#[no_mangle]
pub static CONFIG: Config = Config::new();

/// Hides a value from the verifier by a store and a load through map
/// memory, whose contents it does not track.
struct MapOpaque(*mut u64);

impl filter::Opaque for MapOpaque {
    #[inline(always)]
    fn hide(&self, v: u64) -> u64 {
        // SAFETY: `self.0` points at `opaque` in this CPU's `SCRATCH` slot (see
        // `filter_matches`): valid, aligned, and used by nothing else during
        // the write and the read.
        unsafe {
            core::ptr::write_volatile(self.0, v);
            core::ptr::read_volatile(self.0)
        }
    }
}

/// `CONFIG` seen through an opaque pointer: rustc knows the placeholder
/// initializer of an immutable static and would fold reads of it (the
/// filter program would compile to "always END"); userspace rewrites it
/// before load.
#[inline(always)]
fn config() -> &'static Config {
    let p: *const Config = &CONFIG;
    // SAFETY: `p` is the address of the static `CONFIG`, valid for 'static;
    // the volatile read only hides where it points from rustc.
    unsafe { &*core::ptr::read_volatile(&p) }
}

/// One field of `CONFIG`, e.g. `setting!(agg_burst)` or
/// `setting!(noise.queue_purge)`, read as `config()` explains.
macro_rules! setting {
    ($($field:tt)+) => {
        // SAFETY: `CONFIG` is a static of plain data, always initialized.
        unsafe { core::ptr::read_volatile(&$crate::config::CONFIG.$($field)+) }
    };
}
pub(crate) use setting;

/// The filter, run with its results kept opaque to the verifier.
///
/// # Safety
///
/// The caller must hold no reference to this CPU's `SCRATCH.opaque`,
/// which the filter writes and reads.
#[inline(always)]
pub(crate) unsafe fn filter_matches(flow: &Flow) -> bool {
    if setting!(filter.len) == 0 {
        return true;
    }
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    filter::eval(&config().filter, flow, &MapOpaque(&mut (*s).opaque))
}

#[inline(always)]
pub(crate) fn netns_allowed(netns: u32) -> bool {
    let n = setting!(netns_count);
    if n == 0 {
        return true;
    }
    for i in 0..MAX_NETNS {
        if (i as u32) < n && setting!(netns[i]) == netns {
            return true;
        }
    }
    false
}
