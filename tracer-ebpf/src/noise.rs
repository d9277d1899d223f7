//! Drops that are not worth a user's attention (hidden unless `--all`).

use crate::config::setting;
use tracer_abi::*;

#[inline(always)]
fn is_multicast(f: &Flow) -> bool {
    match f.family {
        FAMILY_V4 => f.dst[0] & 0xf0 == 0xe0,
        FAMILY_V6 => f.dst[0] == 0xff,
        _ => false,
    }
}

/// Known benign frees (see the README): socket queues purged on close,
/// multicast nobody listens to, echo replies handed to ping's raw socket,
/// a FIN that arrives after its socket closed, and non-IP packets freed by
/// a socket layer (vsock between a VM and its host). `socket_only`: the
/// skb has a socket and no device.
#[inline(always)]
pub(crate) fn is_noise(reason: u32, f: &Flow, l3_proto: u16, socket_only: bool) -> bool {
    if reason == setting!(noise.queue_purge) {
        return true;
    }
    let not_specified = reason == setting!(noise.not_specified);
    if not_specified && is_multicast(f) {
        return true;
    }
    // Reason 0 is every drop on kernels without reasons: these two need a
    // real NOT_SPECIFIED to be told apart from drops that matter.
    if not_specified && reason != 0 {
        let fin_only = f.proto == IPPROTO_TCP && f.tcp_flags & 0x07 == 0x01;
        let socket_non_ip = f.family == FAMILY_NONE && l3_proto == 0 && socket_only;
        if fin_only || socket_non_ip {
            return true;
        }
    }
    if reason == setting!(noise.no_socket)
        && ((f.proto == IPPROTO_ICMP && f.icmp_type == 0)
            || (f.proto == IPPROTO_ICMPV6 && f.icmp_type == 129))
    {
        return true;
    }
    false
}
