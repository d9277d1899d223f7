//! Portable reads of kernel structs. Rust eBPF has no
//! `preserve_access_index`, so userspace resolves every member offset from
//! the running kernel's BTF and writes them into `OFFSETS` before load.

use aya_ebpf::helpers::bpf_probe_read_kernel;
use tracer_abi::{Offsets, NO_OFFSET};

#[no_mangle]
pub static OFFSETS: Offsets = Offsets::missing();

/// One offset from the `OFFSETS` global. The volatile read stops rustc
/// from folding in the placeholder value the object is compiled with.
#[macro_export]
macro_rules! off {
    ($field:ident) => {{
        #[allow(unused_unsafe)]
        // SAFETY: `OFFSETS` is a static of plain integers, always initialized;
        // the volatile read only hides its value from rustc.
        let v = unsafe { core::ptr::read_volatile(&$crate::kernel::OFFSETS.$field) };
        v
    }};
}

/// How a program reads kernel structs. tp_btf programs get typed (BTF)
/// pointers, so the verifier lets them load members directly, as C's
/// `skb->dev` would; the offsets come from the frozen .rodata, which the
/// verifier treats as constants and checks against the kernel's BTF. The
/// raw_tp and classic-tracepoint fallbacks see plain numbers and must use
/// bpf_probe_read_kernel. Packet bytes are always probe-read.
pub trait Mem {
    /// A `T` at `base + offset`, or `None` if the offset is unknown on this
    /// kernel or the base is NULL.
    ///
    /// # Safety
    ///
    /// `T` must be valid for every bit pattern (integers, byte arrays, raw
    /// pointers): the bytes come from the kernel unchecked. `base` must be
    /// NULL or a pointer `Self` can read from: for `Direct`, a BTF-typed kernel
    /// pointer (a tp_btf argument, or a pointer member loaded through one),
    /// whose loads the verifier checks and makes fault-safe; `Probe` accepts
    /// any address.
    unsafe fn get<T: Copy>(base: *const u8, offset: u32) -> Option<T>;
}

/// Direct loads through BTF pointers (tp_btf); several times cheaper than
/// a helper call, which matters on paths that run for every packet.
pub struct Direct;

/// `bpf_probe_read_kernel`, for untyped pointers.
pub struct Probe;

impl Mem for Direct {
    #[inline(always)]
    unsafe fn get<T: Copy>(base: *const u8, offset: u32) -> Option<T> {
        if offset == NO_OFFSET || base.is_null() {
            return None;
        }
        Some(core::ptr::read_volatile(
            base.wrapping_add(offset as usize) as *const T
        ))
    }
}

impl Mem for Probe {
    #[inline(always)]
    unsafe fn get<T: Copy>(base: *const u8, offset: u32) -> Option<T> {
        read(base, offset)
    }
}

/// Reads a `T` at `base + offset` with bpf_probe_read_kernel, or `None` if
/// the offset is unknown on this kernel, the base is NULL, or the read
/// faults.
///
/// # Safety
///
/// `T` must be valid for every bit pattern (integers, byte arrays, raw
/// pointers). Any `base` is sound: bpf_probe_read_kernel fails on an
/// unmapped address instead of faulting.
#[inline(always)]
pub unsafe fn read<T>(base: *const u8, offset: u32) -> Option<T> {
    if offset == NO_OFFSET || base.is_null() {
        return None;
    }
    bpf_probe_read_kernel(base.wrapping_add(offset as usize) as *const T).ok()
}

/// Reads `dst.len()` bytes at `base + offset` straight into `dst` (an
/// event's field in the ring buffer): no copy on the stack, for programs
/// whose stack is nearly full. False if the offset is unknown, the base is
/// NULL or the read faults.
///
/// # Safety
///
/// Any `base` is sound: bpf_probe_read_kernel fails on an unmapped address
/// instead of faulting.
#[inline(always)]
pub unsafe fn read_into(base: *const u8, offset: u32, dst: &mut [u8]) -> bool {
    if offset == NO_OFFSET || base.is_null() {
        return false;
    }
    aya_ebpf::helpers::bpf_probe_read_kernel_buf(base.wrapping_add(offset as usize), dst).is_ok()
}

/// `net->ns.inum`.
///
/// # Safety
///
/// `net` must be NULL or a `struct net *` that `M` can read (see `Mem::get`).
#[inline(always)]
pub unsafe fn net_inum<M: Mem>(net: *const u8) -> u32 {
    M::get::<u32>(net, crate::off!(net_inum)).unwrap_or(0)
}

/// The netns inode of a `struct net_device`.
///
/// # Safety
///
/// `dev` must be NULL or a `struct net_device *` that `M` can read (see `Mem::get`).
#[inline(always)]
pub unsafe fn dev_netns<M: Mem>(dev: *const u8) -> u32 {
    // possible_net_t holds one `struct net *` when CONFIG_NET_NS is set.
    match M::get::<*const u8>(dev, crate::off!(dev_nd_net)) {
        Some(net) => net_inum::<M>(net),
        None => 0,
    }
}

/// # Safety
///
/// `dev` must be NULL or a `struct net_device *` that `M` can read (see `Mem::get`).
#[inline(always)]
pub unsafe fn dev_ifindex<M: Mem>(dev: *const u8) -> i32 {
    M::get::<i32>(dev, crate::off!(dev_ifindex)).unwrap_or(0)
}

/// # Safety
///
/// `dev` must be NULL or a `struct net_device *` that `M` can read (see `Mem::get`).
#[inline(always)]
pub unsafe fn dev_mtu<M: Mem>(dev: *const u8) -> u32 {
    M::get::<u32>(dev, crate::off!(dev_mtu)).unwrap_or(0)
}

/// The netns inode of a `struct sock` (rare path: probe reads).
///
/// # Safety
///
/// None for the caller: the socket is only probe-read (bpf_probe_read_kernel),
/// so any `sk` is sound; a wrong one gives wrong fields, not a fault.
#[inline(always)]
pub unsafe fn sk_netns(sk: *const u8) -> u32 {
    match read::<*const u8>(sk, crate::off!(sk_net)) {
        Some(net) => net_inum::<Probe>(net),
        None => 0,
    }
}
