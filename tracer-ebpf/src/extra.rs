//! What a drop carries beyond its `DropEvent` when the user asks for it:
//! the kernel stack (`--stack`) and the packet's bytes (`-w` pcapng). Sent
//! as a `DropExtra` record right before the drop event, from the same
//! program run, so userspace pairs them by CPU. Nothing here runs unless
//! `Config::extra` is set.

use crate::config::setting;
use crate::events::EVENTS;
use crate::kernel::Mem;
use crate::off;
use crate::packet::SkbMeta;
use aya_ebpf::{
    helpers::{bpf_get_smp_processor_id, generated},
    macros::map,
    maps::PerCpuArray,
    EbpfContext,
};
use tracer_abi::*;

/// `skb->mac_header` / `network_header` when unset.
const HEADER_UNSET: u16 = 0xffff;
const ETH_HLEN: u16 = 14;

/// The record is built here (too big for the stack), then copied into the
/// ring buffer with its variable length.
#[repr(C)]
pub struct ExtraBuf {
    hdr: DropExtra,
    data: [u8; SNAP_MASK as usize + 1],
}

#[map]
static EXTRA: PerCpuArray<ExtraBuf> = PerCpuArray::with_max_entries(1, 0);

/// Sends the `DropExtra` of the drop of `skb`. Returns false when it could
/// not be queued (ring buffer full).
/// `now` is the drop event's own timestamp: userspace pairs the two by CPU
/// and time.
///
/// # Safety
///
/// `skb` must be a `struct sk_buff *` that `M` can read (see `Mem::get`);
/// `m`'s pointers and the packet bytes are only probe-read.
#[inline(always)]
pub unsafe fn emit<M: Mem, C: EbpfContext>(ctx: &C, skb: *const u8, m: &SkbMeta, now: u64) -> bool {
    let Some(buf) = EXTRA.get_ptr_mut(0) else {
        return false;
    };
    let h = &mut (*buf).hdr;
    h.kind = KIND_DROP_EXTRA;
    h.cpu = bpf_get_smp_processor_id();
    h.ts_ns = now;
    h.skb = skb as u64;
    // Volatile: LLVM merged these four stores into a call to a
    // byte-at-a-time memset (see `words`).
    core::ptr::write_volatile(&mut h.stack_bytes, 0);
    core::ptr::write_volatile(&mut h.cap_len, 0);
    core::ptr::write_volatile(&mut h.orig_len, 0);
    core::ptr::write_volatile(&mut h.link, LINK_NONE);
    let want = setting!(extra);
    if setting!(trace) != 0 {
        crate::hop::forget(skb);
    }
    if want & EXTRA_STACK != 0 {
        let n = generated::bpf_get_stack(
            ctx.as_ptr(),
            h.stack.as_mut_ptr() as *mut _,
            (MAX_STACK_DEPTH * 8) as u32,
            0,
        );
        if n > 0 {
            h.stack_bytes = n as u32;
        }
    }
    let mut cap: u32 = 0;
    if want & EXTRA_PACKET != 0 && !m.head.is_null() {
        cap = packet_bytes::<M>(skb, m, buf);
    }
    let cap = cap & SNAP_MASK;
    let size = core::mem::size_of::<DropExtra>() + cap as usize;
    let rec = core::slice::from_raw_parts(buf as *const u8, size);
    EVENTS.output::<[u8]>(rec, 0).is_ok()
}

/// Copies the packet from its MAC header (when it is Ethernet) or its IP
/// header, up to the snap length and the end of the linear data; returns
/// how many bytes.
///
/// # Safety
///
/// `skb` as for `emit`. `buf` must point at this CPU's `EXTRA` slot, with
/// no other reference to it live.
#[inline(always)]
unsafe fn packet_bytes<M: Mem>(skb: *const u8, m: &SkbMeta, buf: *mut ExtraBuf) -> u32 {
    let h = &mut (*buf).hdr;
    let nh = M::get::<u16>(skb, off!(skb_network_header)).unwrap_or(HEADER_UNSET);
    let mh = M::get::<u16>(skb, off!(skb_mac_header)).unwrap_or(HEADER_UNSET);
    let Some(tail) = M::get::<u32>(skb, off!(skb_tail)) else {
        return 0;
    };
    let Some(data) = M::get::<*const u8>(skb, off!(skb_data)) else {
        return 0;
    };
    let (start, link) =
        if mh != HEADER_UNSET && nh != HEADER_UNSET && nh.wrapping_sub(mh) == ETH_HLEN {
            (mh as u32, LINK_ETHERNET)
        } else if nh != HEADER_UNSET {
            (nh as u32, LINK_RAW_IP)
        } else {
            return 0;
        };
    // skb->len counts from skb->data; the capture starts at `start`.
    let data_off = (data as u64).wrapping_sub(m.head as u64);
    if data_off > 0xffff {
        return 0;
    }
    let orig = m.len as i64 + data_off as i64 - start as i64;
    if orig <= 0 || tail <= start {
        return 0;
    }
    h.link = link;
    h.orig_len = orig as u32;
    let mut cap = tail - start;
    if cap > orig as u32 {
        cap = orig as u32;
    }
    let snap = setting!(snaplen);
    if cap > snap {
        cap = snap;
    }
    if cap > MAX_SNAPLEN {
        cap = MAX_SNAPLEN;
    }
    let cap = cap & SNAP_MASK;
    if cap == 0 {
        return 0;
    }
    let src = m.head.wrapping_add(start as usize);
    if generated::bpf_probe_read_kernel((*buf).data.as_mut_ptr() as *mut _, cap, src as *const _)
        != 0
    {
        h.link = LINK_NONE;
        return 0;
    }
    h.cap_len = cap;
    cap
}
