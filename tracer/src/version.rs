//! What `tracer --version` says: the release, the commit it was built
//! from, and (in `--version`'s long form) what the binary needs from a
//! kernel, so a responder can tell at once whether a copied binary fits
//! the host in front of them.

/// `tracer -V`: `0.1.0 (commit 0123456789ab)`.
pub const SHORT: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("TRACER_GIT_COMMIT"),
    ")"
);

/// `tracer --version`.
pub const LONG: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\ncommit:  ",
    env!("TRACER_GIT_COMMIT"),
    "\nlinked:  ",
    env!("TRACER_LINKAGE"),
    " (x86_64 Linux)",
    "\nkernels: 5.10 or later with BTF (/sys/kernel/btf/vmlinux, or --btf FILE);",
    "\n         drop reasons from 5.17 (before that, inferred from where the packet died)",
    "\nhooks:   skb:kfree_skb as tp_btf, raw_tp or tracepoint (the first that attaches);",
    "\n         for diagnose, the BTF tracepoints fib_table_lookup, fib6_table_lookup,",
    "\n         net_dev_start_xmit, neigh_timer_handler and neigh_event_send_done;",
    "\n         no kprobes, no fentry",
);
