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
        let v = unsafe { core::ptr::read_volatile(&$crate::kernel::OFFSETS.$field) };
        v
    }};
}

/// Reads a `T` at `base + offset`, or `None` if the offset is unknown on
/// this kernel, the base is NULL, or the read faults.
#[inline(always)]
pub unsafe fn read<T>(base: *const u8, offset: u32) -> Option<T> {
    if offset == NO_OFFSET || base.is_null() {
        return None;
    }
    bpf_probe_read_kernel(base.wrapping_add(offset as usize) as *const T).ok()
}

/// `net->ns.inum`.
#[inline(always)]
pub unsafe fn net_inum(net: *const u8) -> u32 {
    read::<u32>(net, crate::off!(net_inum)).unwrap_or(0)
}

/// The netns inode of a `struct net_device`.
#[inline(always)]
pub unsafe fn dev_netns(dev: *const u8) -> u32 {
    // possible_net_t holds one `struct net *` when CONFIG_NET_NS is set.
    match read::<*const u8>(dev, crate::off!(dev_nd_net)) {
        Some(net) => net_inum(net),
        None => 0,
    }
}

#[inline(always)]
pub unsafe fn dev_ifindex(dev: *const u8) -> i32 {
    read::<i32>(dev, crate::off!(dev_ifindex)).unwrap_or(0)
}

#[inline(always)]
pub unsafe fn dev_mtu(dev: *const u8) -> u32 {
    read::<u32>(dev, crate::off!(dev_mtu)).unwrap_or(0)
}

/// The netns inode of a `struct sock`.
#[inline(always)]
pub unsafe fn sk_netns(sk: *const u8) -> u32 {
    match read::<*const u8>(sk, crate::off!(sk_net)) {
        Some(net) => net_inum(net),
        None => 0,
    }
}
