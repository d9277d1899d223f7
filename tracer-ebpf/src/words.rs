//! Zeroing and copying plain structs a word at a time.
//!
//! rustc lowers `x = T::default()`, `[0; N]` and `*dst = *src` to calls
//! of `memset` or `memmove` wherever LLVM's BPF backend chooses to, and
//! bpf-linker's are byte-at-a-time loops called as BPF functions: zeroing
//! an event's two route joins (96 bytes) ran about 480 instructions, and
//! the verifier walked the loop again on every path that reached it.
//! Volatile accesses are never merged back into such a call.

use core::mem::{align_of, size_of, MaybeUninit};
use core::ptr::{read_volatile, write_volatile};

/// Zeroes `*p` with the widest stores its alignment allows.
///
/// # Safety
///
/// `p` must be valid for writes of a `T` and aligned for it, and all
/// zero bits must be a valid `T` (plain data: integers and arrays).
#[inline(always)]
pub(crate) unsafe fn zero<T>(p: *mut T) {
    if align_of::<T>() >= 8 && size_of::<T>().is_multiple_of(8) {
        let w = p as *mut u64;
        for i in 0..size_of::<T>() / 8 {
            write_volatile(w.add(i), 0);
        }
    } else if align_of::<T>() >= 4 && size_of::<T>().is_multiple_of(4) {
        let w = p as *mut u32;
        for i in 0..size_of::<T>() / 4 {
            write_volatile(w.add(i), 0);
        }
    } else {
        let w = p as *mut u8;
        for i in 0..size_of::<T>() {
            write_volatile(w.add(i), 0);
        }
    }
}

/// Copies `*src` to `*dst` with the widest accesses their alignment
/// allows.
///
/// # Safety
///
/// `src` must be valid for reads and `dst` for writes of a `T`, both
/// aligned for it, not overlapping; `T` must be plain data (`Copy`).
#[inline(always)]
pub(crate) unsafe fn copy<T: Copy>(dst: *mut T, src: *const T) {
    if align_of::<T>() >= 8 && size_of::<T>().is_multiple_of(8) {
        let (d, s) = (dst as *mut u64, src as *const u64);
        for i in 0..size_of::<T>() / 8 {
            write_volatile(d.add(i), read_volatile(s.add(i)));
        }
    } else if align_of::<T>() >= 4 && size_of::<T>().is_multiple_of(4) {
        let (d, s) = (dst as *mut u32, src as *const u32);
        for i in 0..size_of::<T>() / 4 {
            write_volatile(d.add(i), read_volatile(s.add(i)));
        }
    } else {
        let (d, s) = (dst as *mut u8, src as *const u8);
        for i in 0..size_of::<T>() {
            write_volatile(d.add(i), read_volatile(s.add(i)));
        }
    }
}

/// A zeroed `T` made in `slot` (a local on the caller's stack), where a
/// literal with zero arrays would call `memset`.
///
/// # Safety
///
/// All zero bits must be a valid `T` (plain data).
#[inline(always)]
pub(crate) unsafe fn zeroed<T>(slot: &mut MaybeUninit<T>) -> &mut T {
    zero(slot.as_mut_ptr());
    slot.assume_init_mut()
}
