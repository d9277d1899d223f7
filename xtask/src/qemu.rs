//! `cargo xtask kernels [--kernel 5.10|5.10-deb11|6.1|6.12|6.12-deb13|7.2]... [--check NAME[@KERNEL,...]]... [--jobs N] [--cpus N] [--timeout SECS]`:
//! boots Debian's own kernels under qemu, runs tracer's checks inside each
//! and prints a kernel x check table. Meant to run last in `cargo xtask
//! test` too, through `run`.
//!
//! This VM runs one kernel; tracer's users run Debian's 5.10 (bullseye),
//! 6.1 (bookworm) and 6.12 (bookworm-backports), whose BTF, tracepoints and
//! verifiers differ. `--kernel 7.2` boots Debian unstable's newest kernel,
//! newer than this VM's 6.18, to meet the next kernel's changes before
//! users do; it is not in the default run. Per kernel:
//!
//! 1. Fetch (cached in `target/kernels/<kernel>/`, so a second run
//!    downloads nothing; remove that directory to pick up a newer kernel):
//!    `apt-get download` of the newest `linux-image-*` of the kernel's suite
//!    under a private apt configuration (`target/kernels/apt/`: its own
//!    sources list naming the host's mirror, lists and cache), so the
//!    host's apt state and boot setup are never touched; then `dpkg-deb -x`
//!    and `depmod -b`, since modules.dep is made by the package's postinst.
//! 2. initramfs (newc cpio, written here): static busybox, the kernel's
//!    own 9p-over-virtio and overlayfs modules (with their dependencies,
//!    decompressed, as busybox's insmod takes plain .ko files) and a
//!    stage-1 init. It mounts the host's `/` read-only over 9p under a
//!    tmpfs overlay, bind-mounts the kernel's modules on
//!    `/usr/lib/modules/KVER` and switch_roots into it: the guest runs the
//!    host's own tracer, test executables and tools at their host paths,
//!    and whatever it writes stays in its tmpfs.
//! 3. Boot under plain TCG (this VM's /dev/kvm is nested paravirt and
//!    cannot run stock kernels), with no network device. Stage 2
//!    (`guest.sh`, in the results share) mounts the pseudo filesystems,
//!    loads the network modules the labs use and runs each check, writing
//!    `NAME.log` and `NAME.rc` into a second, writable 9p share,
//!    `target/kernels/results/<kernel>/`.
//! 4. The host reports each result as it arrives, kills qemu at the guest
//!    timeout, then prints each failure with the tail of its output (a
//!    verifier log tail when a program did not load) and the table.
//!
//! The guests run at once (`--jobs 1`: one after the other), each with one
//! vCPU (`GUEST_CPUS`; `--cpus N` for more): the checks mostly wait, so
//! their waits overlap.

use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Host packages the harness uses: qemu, the busybox that goes into the
/// initramfs (it must be static: the initramfs has no libc), kmod for
/// depmod and modprobe (the guest's modprobe is the host's too), and the
/// decompressors for .ko.xz / .ko.zst modules.
const PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "kmod",
    "xz-utils",
    "zstd",
];

/// Debian's signing keys for every suite below, bullseye's included.
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// A guest of the matrix: a Debian kernel, and the userspace it boots.
struct KernelSpec {
    /// What `--kernel` takes and the table shows.
    label: &'static str,
    /// The kernel's own label (5.10, 6.1...): what SKIPPED and
    /// EXPECTED_TO_DIFFER name, and its cache directory.
    kernel: &'static str,
    /// None: the host's own `/` (bookworm), running the host-built tracer
    /// and test executables. Some(suite): a debootstrap root of that
    /// Debian suite (`userspace.rs`) running the static dist binary, as
    /// a user of that distribution would, with its own ip and iptables.
    userspace: Option<&'static str>,
    suite: &'static str,
    /// Its package names are `prefix V suffix` with V a number (the ABI
    /// number or the stable release) or a dotted version (unstable's
    /// `7.2.13`): the largest V, compared part by part, is the newest.
    prefix: &'static str,
    suffix: &'static str,
    /// In the matrix run without `--kernel` (and so in `cargo xtask
    /// test`). The others are booted only when named.
    default: bool,
}

const KERNELS: &[KernelSpec] = &[
    KernelSpec {
        label: "5.10",
        kernel: "5.10",
        userspace: None,
        suite: "bullseye",
        prefix: "linux-image-5.10.0-",
        suffix: "-amd64",
        default: true,
    },
    // Debian 11 as its users have it: glibc 2.31, iproute2 5.10,
    // iptables 1.8.7 (nft backend), and the static dist binary.
    KernelSpec {
        label: "5.10-deb11",
        kernel: "5.10",
        userspace: Some("bullseye"),
        suite: "bullseye",
        prefix: "linux-image-5.10.0-",
        suffix: "-amd64",
        default: true,
    },
    KernelSpec {
        label: "6.1",
        kernel: "6.1",
        userspace: None,
        suite: "bookworm",
        prefix: "linux-image-6.1.0-",
        suffix: "-amd64",
        default: true,
    },
    KernelSpec {
        label: "6.12",
        kernel: "6.12",
        userspace: None,
        suite: "bookworm-backports",
        prefix: "linux-image-6.12.",
        suffix: "+deb12-amd64",
        default: true,
    },
    // Debian 13 as its users have it: trixie's own 6.12 (a package of its
    // own, hence its own cache), glibc 2.41, nftables-only by default; the
    // root still gets the iptables package (nft backend), because the labs
    // call iptables (firewall-drop, the NAT and MSS-clamp labs). Not in the
    // default run: one more TCG guest.
    KernelSpec {
        label: "6.12-deb13",
        kernel: "6.12-deb13",
        userspace: Some("trixie"),
        suite: "trixie",
        prefix: "linux-image-6.12.",
        suffix: "+deb13-amd64",
        default: false,
    },
    // Debian unstable's newest kernel, newer than this host's 6.18, with
    // the host's userspace: the next kernel before users have it. Not in
    // the default matrix: unstable moves (a new upload replaces the
    // package), and one more TCG guest makes `cargo xtask test` slower.
    // Its version is dotted (7.2.13+deb14-amd64); `newest` checks that it
    // is still 7.2. Its image package is only a metapackage: the kernel
    // and modules come in linux-binary-* and linux-modules-* (see
    // Apt::parts).
    KernelSpec {
        label: "7.2",
        kernel: "7.2",
        userspace: None,
        suite: "unstable",
        prefix: "linux-image-",
        suffix: "+deb14-amd64",
        default: false,
    },
];

/// What a check runs inside the guest.
enum Cmd {
    /// The static release tracer (`cargo xtask dist`) with these arguments.
    Tracer(&'static [&'static str]),
    /// An integration-test executable of the tests crate, by target name
    /// (tests/tests/NAME.rs); it drives the binary named by TRACER_BIN.
    /// Built against the host's glibc, so not run in other userspaces.
    /// The second field names tests skipped there: they check only
    /// userspace (argument errors, usage, naming), which the host's own
    /// run already covers, and the guests share two cores under TCG.
    Test(&'static str, &'static [&'static str]),
    /// A shell script run by the guest's own /bin/sh, with the tracer in
    /// $TRACER_BIN: checks that need no test executable.
    Script(&'static str),
}

/// Tests of tests/tests/watch.rs whose outcome no kernel changes: they
/// stop before loading a program (bad input, no privileges, a missing
/// tracepoint's message) or check how userspace names and counts what
/// any kernel reported. On the host they run as usual.
const WATCH_USERSPACE_ONLY: &[&str] = &[
    "bad_input_gets_one_line_and_a_nonzero_exit",
    "without_privileges_it_says_so",
    "a_missing_tracepoint_is_named",
    "count_ends_the_run_with_a_summary",
    "interface_by_index_and_a_hint_for_other_namespaces",
];

/// `watch` in any userspace: a UDP datagram to a closed port in a fresh
/// namespace must come out as one JSON drop line naming that namespace.
/// bash's /dev/udp sends it (no netcat in a minimal root).
const WATCH_DROP: &str = r#"
set -e
ip netns add xtwd; ip -n xtwd link set lo up
"$TRACER_BIN" watch --netns xtwd -o json --count 1 --duration 120 >/tmp/wd.json &
for i in $(seq 1 100); do
    grep -q '"type":"ready"' /tmp/wd.json 2>/dev/null && break
    sleep 1
done
for i in $(seq 1 20); do
    ip netns exec xtwd bash -c 'echo drop >/dev/udp/127.0.0.1/9' || true
    grep -q '"type":"drop"' /tmp/wd.json && break
    sleep 1
done
wait
cat /tmp/wd.json
grep '"type":"drop"' /tmp/wd.json | grep -q '"netns_name":"xtwd"'
"#;

/// How the kernel itself reports a qdisc's drops, read from a tracefs
/// instance of its own with no tracer involved. Four queues on dummy
/// devices overflow: a token bucket (an enqueue drop), a codel under a
/// token bucket and one under an htb (AQM drops at dequeue under a root
/// that keeps no list of dequeue drops), and an fq_codel under an htb
/// whose limit overflows (an enqueue drop of an AQM qdisc). Prints the
/// tracepoints' formats and each setup's distinct kfree_skb (and, where
/// the kernel has it, qdisc_drop) records; fails when a setup's drops never
/// reached kfree_skb.
const QDISC_TRACE: &str = r#"
set -e
I=/sys/kernel/tracing/instances/xtqd
mkdir $I
cat $I/events/skb/kfree_skb/format
QD=0
if [ -d $I/events/qdisc/qdisc_drop ]; then QD=1; cat $I/events/qdisc/qdisc_drop/format; fi
ip netns add xtqd
ip -n xtqd link set lo up
n=0
run() {
    n=$((n + 1))
    ip -n xtqd link add d$n type dummy
    ip -n xtqd addr add 10.77.$n.1/24 dev d$n
    ip -n xtqd link set d$n up
    echo "== $*"
    # Each argument is one tc command; $D names the setup's device.
    for q in "$@"; do D=d$n ip netns exec xtqd sh -c "tc $q"; done
    echo 0 >$I/tracing_on
    echo >$I/trace
    echo 1 >$I/events/skb/kfree_skb/enable
    [ $QD = 0 ] || echo 1 >$I/events/qdisc/qdisc_drop/enable
    echo 1 >$I/tracing_on
    ip netns exec xtqd bash -c 'p=$(printf "%01000d" 0); for i in $(seq 1 150); do echo "$p" >/dev/udp/10.77.'$n'.2/9; done'
    sleep 3
    echo 0 >$I/tracing_on
    ip netns exec xtqd tc -s qdisc show dev d$n | grep -E 'qdisc|dropped'
    sed -n 's/^.*\(kfree_skb\|qdisc_drop\): /\1: /p' $I/trace |
        sed 's/\(skbaddr\|rx_sk\|location\|handle\|parent\|txq_state\)=[^ ]* //g' | sort | uniq -c
    grep -q kfree_skb $I/trace
}
run 'qdisc add dev $D root handle 1: tbf rate 1mbit burst 1600 limit 3000'
run 'qdisc add dev $D root handle 1: tbf rate 1mbit burst 1600 limit 300000' \
    'qdisc add dev $D parent 1:1 handle 10: codel target 1ms interval 5ms'
run 'qdisc add dev $D root handle 1: htb default 1' \
    'class add dev $D parent 1: classid 1:1 htb rate 1mbit' \
    'qdisc add dev $D parent 1:1 handle 10: codel target 1ms interval 5ms'
run 'qdisc add dev $D root handle 1: htb default 1' \
    'class add dev $D parent 1: classid 1:1 htb rate 1mbit' \
    'qdisc add dev $D parent 1:1 handle 10: fq_codel limit 10'
"#;

/// tracer's own reason for a queue's drops: a token bucket on a dummy
/// device overflows while `watch` runs. Every kernel with reasons must
/// name a QDISC_* reason; where the kernel has qdisc:qdisc_drop (after
/// 6.18), kfree_skb says only QDISC_DROP, and tracer must report the
/// finer QDISC_DROP_* that qdisc_drop gave instead.
const QDISC_REASON: &str = r#"
set -e
ip netns add xtqr
ip -n xtqr link set lo up
ip -n xtqr link add d0 type dummy
ip -n xtqr addr add 10.78.0.1/24 dev d0
ip -n xtqr link set d0 up
ip netns exec xtqr tc qdisc add dev d0 root handle 1: tbf rate 1mbit burst 1600 limit 3000
"$TRACER_BIN" watch --netns xtqr -o json --count 5 --duration 120 >/tmp/qr.json &
for i in $(seq 1 100); do
    grep -q '"type":"ready"' /tmp/qr.json 2>/dev/null && break
    sleep 1
done
ip netns exec xtqr bash -c 'p=$(printf "%01000d" 0); for i in $(seq 1 100); do echo "$p" >/dev/udp/10.78.0.2/9; done'
wait
grep '"type":"drop"' /tmp/qr.json | grep -o '"reason":"[^"]*"' | sort | uniq -c
grep '"type":"drop"' /tmp/qr.json | grep -q '"reason":"QDISC_'
if [ -d /sys/kernel/tracing/events/qdisc/qdisc_drop ]; then
    echo "this kernel has qdisc:qdisc_drop"
    # (Not `! grep`: set -e ignores a negated command.)
    if grep '"type":"drop"' /tmp/qr.json | grep -q '"reason":"QDISC_DROP"'; then
        echo "plain QDISC_DROP: qdisc_drop's reason was not taken"
        exit 1
    fi
fi
"#;

struct Check {
    name: &'static str,
    cmd: Cmd,
    /// Killed after this long, inside the guest, so one hung check
    /// still leaves the others' results.
    timeout_s: u64,
}

/// One lab, start to end. The tracer's start-up under TCG is the bulk:
/// 20-35 s in a guest of its own, but 70-80 s in Debian 11's guest while
/// the other three guests share its two cores; there lab-pmtu took 105 s
/// here and went past a 120 s bound in CI after proving its verdicts.
/// The bound is for a hang.
const LAB_TIMEOUT_S: u64 = 300;

const CHECKS: &[Check] = &[
    Check {
        name: "check",
        cmd: Cmd::Tracer(&["check"]),
        timeout_s: 120,
    },
    Check {
        name: "reasons",
        cmd: Cmd::Tracer(&["reasons"]),
        timeout_s: 60,
    },
    Check {
        name: "watch",
        cmd: Cmd::Test("watch", WATCH_USERSPACE_ONLY),
        // Four guests share two cores: the 5.10 guest's suite has taken
        // 546 and 602 s there (86 s alone). The bound is for a hang.
        timeout_s: 1200,
    },
    Check {
        name: "watch-drop",
        cmd: Cmd::Script(WATCH_DROP),
        timeout_s: 180,
    },
    Check {
        name: "diagnose",
        cmd: Cmd::Test("diagnose", &[]),
        timeout_s: 600,
    },
    Check {
        name: "lab",
        cmd: Cmd::Tracer(&["lab", "run", "all"]),
        timeout_s: 480,
    },
    // The two incidents every kernel must prove, reasons or not.
    Check {
        name: "lab-strict",
        cmd: Cmd::Tracer(&["lab", "run", "bridge-subnet-strict"]),
        timeout_s: LAB_TIMEOUT_S,
    },
    // Kernels after 6.18 moved the qdisc drop reasons into an enum of
    // their own; the queue-overflow lab must still be proven.
    Check {
        name: "lab-qdisc",
        cmd: Cmd::Tracer(&["lab", "run", "qdisc-full"]),
        timeout_s: LAB_TIMEOUT_S,
    },
    Check {
        name: "qdisc-reason",
        cmd: Cmd::Script(QDISC_REASON),
        timeout_s: 180,
    },
    Check {
        name: "qdisc-trace",
        cmd: Cmd::Script(QDISC_TRACE),
        timeout_s: 120,
    },
    Check {
        name: "lab-pmtu",
        cmd: Cmd::Tracer(&["lab", "run", "overlay-mtu-blackhole"]),
        timeout_s: LAB_TIMEOUT_S,
    },
    // The other labs one by one: `lab run all` also starts dockerd, which
    // once crashed a guest kernel under TCG (an emulation race in
    // kmem_cache_free), so the test command runs these instead.
    Check {
        name: "lab-loose",
        cmd: Cmd::Tracer(&["lab", "run", "bridge-subnet-loose"]),
        timeout_s: LAB_TIMEOUT_S,
    },
    Check {
        name: "lab-clamp",
        cmd: Cmd::Tracer(&["lab", "run", "overlay-mtu-clamped"]),
        timeout_s: LAB_TIMEOUT_S,
    },
    Check {
        name: "lab-pmtud",
        cmd: Cmd::Tracer(&["lab", "run", "pmtud-healthy"]),
        timeout_s: LAB_TIMEOUT_S,
    },
    Check {
        name: "lab-veth",
        cmd: Cmd::Tracer(&["lab", "run", "veth-mtu-mismatch"]),
        timeout_s: LAB_TIMEOUT_S,
    },
    // Full conntrack and neighbour tables and CPU backlogs: their labs
    // lower host-wide limits, so they run only here (see
    // testbins::GUEST_ONLY), leaving their recordings in the results.
    Check {
        name: "exhaustion",
        cmd: Cmd::Test("exhaustion", &[]),
        timeout_s: 600,
    },
    // GRE and IPIP tunnels too big for their underlay: kernels built
    // without them (the CI host's) cannot make the devices.
    Check {
        name: "ip-tunnels",
        cmd: Cmd::Test("ip_tunnels", &[]),
        timeout_s: 300,
    },
];

/// Checks not run on a kernel, and why: they assert what that kernel
/// cannot give. Unlike EXPECTED_TO_DIFFER, nothing is learnt by running
/// them there.
const SKIPPED: &[Differs] = &[
    Differs {
        kernel: "5.10",
        check: "diagnose",
        why: "its tests name causes by drop reason (NO_SOCKET, NEIGH_FAILED, NOT_SPECIFIED...), \
              which 5.10 does not report; lab-strict and lab-pmtu prove what 5.10 can",
    },
    Differs {
        kernel: "5.10",
        check: "lab-veth",
        why: "the L2 MTU verdict needs the drop reason NOT_SPECIFIED at the veth, which 5.10 does not report",
    },
    Differs {
        kernel: "5.10",
        check: "lab-qdisc",
        why: "a queue drop is told from other drops by its reason (QDISC_DROP...), which 5.10 \
              does not report",
    },
    Differs {
        kernel: "5.10",
        check: "qdisc-reason",
        why: "it asserts the reason tracer names for a queue's drops; 5.10 reports none",
    },
    Differs {
        kernel: "5.10",
        check: "lab",
        why: "the L2 MTU and Docker published-port labs need drop reasons (measured: the \
              others are proven on 5.10); the strict rp_filter and PMTU black-hole labs \
              run as lab-strict and lab-pmtu",
    },
];

fn skipped(kernel: &str, check: &str) -> Option<&'static Differs> {
    SKIPPED
        .iter()
        .find(|d| d.kernel == kernel && d.check == check)
}

/// Why a guest does not run a check, if it does not.
fn skip_reason(spec: &KernelSpec, check: &Check) -> Option<&'static str> {
    if spec.userspace.is_some() && matches!(check.cmd, Cmd::Test(..)) {
        return Some(
            "test executables are linked against the host's glibc; this userspace runs \
             the static dist binary's checks and labs",
        );
    }
    if spec.userspace.is_some() && OTHER_USERSPACE_SKIPS.contains(&check.name) {
        return Some(
            "the same kernel's guest in the host's userspace runs this lab; another \
             userspace runs the checks, watch-drop and the two incidents' labs",
        );
    }
    skipped(spec.kernel, check.name).map(|d| d.why)
}

/// Labs a guest in another userspace (Debian 11's) leaves to the guest of
/// the same kernel in the host's: they differ from lab-strict and
/// lab-pmtu only in the kernel's behaviour, not in what the userspace
/// gives the tracer (its static binary, its `ip` and `iptables`), and
/// the four guests share two cores.
const OTHER_USERSPACE_SKIPS: &[&str] = &["lab-loose", "lab-clamp", "lab-pmtud"];

/// A check whose result is known to differ on one kernel, and why. It
/// must then fail cleanly: a non-zero exit with a message, not a crash or
/// a timeout. Passing there means the entry is stale, and is a failure.
struct Differs {
    kernel: &'static str,
    check: &'static str,
    why: &'static str,
}

const EXPECTED_TO_DIFFER: &[Differs] = &[Differs {
    kernel: "5.10",
    check: "reasons",
    why: "5.10 has no drop reasons (no reason in its kfree_skb tracepoint, no enum \
          skb_drop_reason in its BTF): `tracer reasons` must say so and exit non-zero",
}];

/// Put in the initramfs for stage 1 to mount the host's root (some are
/// built in on some kernels; modprobe says so and they are skipped).
const INITRAMFS_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay"];

/// Loaded by stage 2 before the checks: what the tests and labs use
/// (veth pairs, bridges, iptables-nft rules, NAT, TCPMSS clamping). The
/// kernel would autoload most on first use; loading them up front puts a
/// missing one in modules.log instead of in a confusing lab failure.
const GUEST_MODULES: &[&str] = &[
    "veth",
    "bridge",
    "br_netfilter",
    "vxlan",
    "ip_gre",
    "ipip",
    "nf_tables",
    "nft_compat",
    "nft_chain_nat",
    "iptable_filter",
    "iptable_mangle",
    "iptable_nat",
    "ip6table_filter",
    "ip6table_mangle",
    "xt_TCPMSS",
    "xt_tcpudp",
    "xt_conntrack",
    "xt_MASQUERADE",
];

/// Host-side allowance for a guest beyond its checks' own timeouts: the
/// boot (8-15 s under TCG) and module loading.
const BOOT_ALLOWANCE_S: u64 = 120;

/// At most this long per guest by default, so that a hung kernel costs a
/// bounded share of the matrix. Healthy guests running every check, four
/// at once, took 780-860 s on this 2-core VM and in CI with two vCPUs
/// each, 620-630 s with one (the checks' timeouts, meant for one hung
/// check, add up to more).
const GUEST_TIMEOUT_CAP_S: u64 = 1500;

/// Lines of a failed check's output shown in the report, and of each
/// failed test's section in a test executable's output.
const TAIL_LINES: usize = 40;
const SECTION_HEAD: usize = 6;
const SECTION_TAIL: usize = 12;

const USAGE: &str =
    "usage: cargo xtask kernels [--kernel 5.10|5.10-deb11|6.1|6.12|6.12-deb13|7.2]... [--check NAME[@KERNEL,...]]... \
                     [--jobs N] [--cpus N] [--timeout SECS]";

pub fn run(root: &Path, args: &[&str]) -> Result<()> {
    let opts = Options::parse(args)?;
    crate::install_packages(PACKAGES)?;
    let root = root
        .canonicalize()
        .with_context(|| format!("resolving {}", root.display()))?;
    let artifacts = Artifacts::build(&root)?;
    // Canonical: stage 1 reaches the modules through /host + this path, where
    // a symlink to an absolute path would resolve inside the initramfs.
    let dir = root.join("target/kernels");
    fs::create_dir_all(&dir)?;
    let dir = dir.canonicalize()?;
    let mut apt = Apt::new(&dir.join("apt"))?;
    // Other userspaces run it from the results share (their root is not
    // the host's, so the host's path to it does not exist there).
    let static_tracer = opts
        .kernels
        .iter()
        .any(|k| k.userspace.is_some())
        .then(|| artifacts.tracer.clone());
    let mut guests = Vec::new();
    for spec in &opts.kernels {
        let kernel = prepare_kernel(spec, &dir, &mut apt)?;
        let initrd = build_initramfs(&kernel)?;
        let rootfs = match spec.userspace {
            Some(suite) => crate::userspace::root_of(&root, suite)?,
            None => PathBuf::from("/"),
        };
        guests.push((kernel, initrd, rootfs));
    }
    let mut results = Vec::new();
    for batch in guests.chunks(opts.jobs) {
        let batch_results = std::thread::scope(|s| {
            let running: Vec<_> = batch
                .iter()
                .map(|(kernel, initrd, rootfs)| {
                    let out = dir.join("results").join(kernel.label);
                    let (artifacts, opts) = (&artifacts, &opts);
                    let guest = Guest {
                        kernel,
                        initrd,
                        rootfs,
                        static_tracer: static_tracer.as_deref(),
                    };
                    s.spawn(move || boot(&guest, &out, artifacts, opts))
                })
                .collect();
            running
                .into_iter()
                .map(|h| h.join().expect("a guest's thread panicked"))
                .collect::<Vec<_>>()
        });
        for r in batch_results {
            results.push(r?);
        }
    }
    let failed = report(&results, &opts.checks);
    if failed > 0 {
        bail!("kernel matrix: {failed} failure(s)");
    }
    Ok(())
}

// ---------------------------------------------------------------- options

#[derive(Clone)]
struct Options {
    kernels: Vec<&'static KernelSpec>,
    checks: Vec<&'static Check>,
    /// `--check NAME@LABEL,LABEL`: the check runs on these guests only.
    only: Vec<(&'static str, Vec<String>)>,
    /// Guests run at once; by default all of them. The checks mostly wait
    /// (timers, sleeps, the tracer's start-up), so the guests' waits
    /// overlap: on this 2-core VM, with other builds running, the three
    /// guests took 1270 s one after the other and 740 s at once, with the
    /// same results.
    jobs: usize,
    /// vCPUs per guest (`--cpus`, `GUEST_CPUS` by default): more than one
    /// exercises what is per CPU (the probes' per-CPU scratch, the summed
    /// softnet and conntrack counters) in each guest, at the cost of time.
    cpus: u32,
    /// Per guest; by default the boot allowance plus the checks' timeouts,
    /// capped at GUEST_TIMEOUT_CAP_S.
    timeout: Option<Duration>,
}

impl Options {
    fn parse(args: &[&str]) -> Result<Options> {
        let mut kernels = Vec::new();
        let mut checks: Vec<&'static Check> = Vec::new();
        let mut only = Vec::new();
        let mut timeout = None;
        let mut jobs = KERNELS.len();
        let mut cpus = GUEST_CPUS;
        let mut it = args.iter();
        while let Some(&arg) = it.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) => (f, Some(v)),
                None => (arg, None),
            };
            let mut value = || -> Result<&str> {
                match inline {
                    Some(v) => Ok(v),
                    None => it
                        .next()
                        .copied()
                        .with_context(|| format!("{flag} needs a value")),
                }
            };
            match flag {
                "--kernel" => {
                    let v = value()?;
                    let spec = KERNELS.iter().find(|k| k.label == v);
                    kernels.push(spec.with_context(|| format!("unknown kernel {v}\n{USAGE}"))?);
                }
                "--check" => {
                    let v = value()?;
                    let (name, on) = match v.split_once('@') {
                        Some((n, k)) => (n, Some(k)),
                        None => (v, None),
                    };
                    let check = CHECKS.iter().find(|c| c.name == name).with_context(|| {
                        let names: Vec<_> = CHECKS.iter().map(|c| c.name).collect();
                        format!("unknown check {name} (checks: {})", names.join(", "))
                    })?;
                    if let Some(on) = on {
                        let labels: Vec<String> = on.split(',').map(str::to_string).collect();
                        if let Some(k) = labels
                            .iter()
                            .find(|k| !KERNELS.iter().any(|s| s.label == **k))
                        {
                            bail!("unknown kernel {k} in --check {v}\n{USAGE}");
                        }
                        only.push((check.name, labels));
                    }
                    if !checks.iter().any(|c| c.name == check.name) {
                        checks.push(check);
                    }
                }
                "--timeout" => {
                    let v = value()?;
                    let secs: u64 = v.parse().with_context(|| format!("bad --timeout {v}"))?;
                    timeout = Some(Duration::from_secs(secs));
                }
                "--jobs" => {
                    let v = value()?;
                    jobs = v
                        .parse()
                        .ok()
                        .filter(|&j| j > 0)
                        .with_context(|| format!("bad --jobs {v}"))?;
                }
                "--cpus" => {
                    let v = value()?;
                    cpus = v
                        .parse()
                        .ok()
                        .filter(|c| (1..=8).contains(c))
                        .with_context(|| format!("bad --cpus {v}: 1 to 8"))?;
                }
                _ => bail!("kernels: unknown argument {arg}\n{USAGE}"),
            }
        }
        if kernels.is_empty() {
            kernels = KERNELS.iter().filter(|k| k.default).collect();
        }
        if checks.is_empty() {
            checks = CHECKS.iter().collect();
        }
        Ok(Options {
            kernels,
            checks,
            only,
            jobs,
            cpus,
            timeout,
        })
    }

    /// Why `spec`'s guest does not run `check`, if it does not.
    fn skip(&self, spec: &KernelSpec, check: &Check) -> Option<&'static str> {
        skip_reason(spec, check).or_else(|| {
            let asked = self.only.iter().filter(|(c, _)| *c == check.name);
            let mut labels = asked.flat_map(|(_, l)| l).peekable();
            (labels.peek().is_some() && !labels.any(|l| l == spec.label))
                .then_some("asked for on other kernels only (`--check NAME@KERNEL`)")
        })
    }

    fn guest_timeout(&self) -> Duration {
        self.timeout.unwrap_or_else(|| {
            let checks: u64 = self.checks.iter().map(|c| c.timeout_s).sum();
            Duration::from_secs((BOOT_ALLOWANCE_S + checks).min(GUEST_TIMEOUT_CAP_S))
        })
    }
}

// ---------------------------------------------------------------- artifacts

/// The host binaries the guests run, by absolute path (the guest sees
/// the host's `/` at the same place).
struct Artifacts {
    tracer: PathBuf,
    tests: BTreeMap<String, PathBuf>,
    /// The tests crate: cargo runs integration tests from there.
    tests_dir: PathBuf,
}

impl Artifacts {
    /// Builds the static release tracer and the test executables; both are
    /// no-ops after `cargo xtask build` / `cargo xtask test`. The tests
    /// are built as `cargo xtask test` builds them (`--workspace`), so
    /// that feature unification does not make the two rebuild each other.
    fn build(root: &Path) -> Result<Artifacts> {
        // The static binary users install (`cargo xtask dist`), in every
        // guest: the one release build `cargo xtask test` already made,
        // where a dynamic release build would be a second one.
        let tracer = crate::dist::build_static(root)?;
        let tests = crate::testbins::integration(&crate::testbins::build(root)?);
        let tests_dir = root.join("tests");
        Ok(Artifacts {
            tracer,
            tests,
            tests_dir,
        })
    }

    fn argv(&self, cmd: &Cmd, tracer: &str) -> Result<Vec<String>> {
        Ok(match cmd {
            Cmd::Tracer(args) => std::iter::once(tracer.to_string())
                .chain(args.iter().map(|a| a.to_string()))
                .collect(),
            Cmd::Script(script) => vec!["sh".into(), "-c".into(), script.to_string()],
            Cmd::Test(name, skip) => {
                let exe = self
                    .tests
                    .get(*name)
                    .with_context(|| format!("no test executable tests/tests/{name}.rs"))?;
                // Each test's time in its log (libtest's `--report-time`,
                // allowed by RUSTC_BOOTSTRAP in stage 2): the matrix is
                // most of the test command's time, and this says where.
                let mut argv = vec![
                    path_str(exe)?.to_string(),
                    "-Zunstable-options".to_string(),
                    "--report-time".to_string(),
                ];
                for t in *skip {
                    argv.extend(["--skip".to_string(), t.to_string()]);
                }
                argv
            }
        })
    }
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("path is not UTF-8: {}", p.display()))
}

// ---------------------------------------------------------------- apt

/// apt under a configuration of its own: a private sources list, lists
/// and cache (and lock files) in `dir`. The host's apt.conf.d still
/// applies, for whatever it says about reaching the mirror.
struct Apt {
    dir: PathBuf,
    updated: bool,
}

impl Apt {
    fn new(dir: &Path) -> Result<Apt> {
        for sub in ["lists/partial", "cache/archives/partial", "sources.list.d"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        let mirror = crate::userspace::host_mirror()?;
        let mut list = String::from(
            "# Written by `cargo xtask kernels`: the suites of the kernels it boots,\n\
             # from the host's own mirror. Only the package indexes are needed.\n",
        );
        let suites: BTreeSet<&str> = KERNELS.iter().map(|k| k.suite).collect();
        for suite in suites {
            list += &format!("deb [signed-by={KEYRING} target=Packages] {mirror} {suite} main\n");
        }
        fs::write(dir.join("sources.list"), list)?;
        Ok(Apt {
            dir: dir.to_path_buf(),
            updated: false,
        })
    }

    fn command(&self, tool: &str) -> Command {
        let mut cmd = Command::new(tool);
        let d = &self.dir;
        for (key, value) in [
            ("Dir::Etc::sourcelist", d.join("sources.list")),
            ("Dir::Etc::sourceparts", d.join("sources.list.d")),
            ("Dir::State::Lists", d.join("lists")),
            ("Dir::Cache", d.join("cache")),
        ] {
            cmd.arg("-o").arg(format!("{key}={}", value.display()));
        }
        // No translations; and no download sandbox, whose `_apt` user
        // cannot write into root's target/ (apt would warn and go on).
        cmd.args(["-o", "Acquire::Languages=none"])
            .args(["-o", "APT::Sandbox::User=root"]);
        cmd
    }

    /// Refreshes the lists once per run, and only when a kernel is missing.
    fn update(&mut self) -> Result<()> {
        if !self.updated {
            crate::run(self.command("apt-get").args(["update", "-q"]))?;
            self.updated = true;
        }
        Ok(())
    }

    fn newest(&mut self, spec: &KernelSpec) -> Result<String> {
        self.update()?;
        let out = self
            .command("apt-cache")
            .args(["pkgnames", "linux-image-"])
            .output()
            .context("cannot start apt-cache")?;
        if !out.status.success() {
            bail!("apt-cache pkgnames failed: {}", out.status);
        }
        let names = String::from_utf8_lossy(&out.stdout);
        let Some(name) = newest_package(spec, names.lines()) else {
            bail!(
                "no {}V{} package in {}",
                spec.prefix,
                spec.suffix,
                spec.suite
            );
        };
        // A whole version in the name (unstable's): it must still be the
        // kernel the label says, or the table would misname it.
        let kver = name.trim_start_matches("linux-image-");
        // `kernel` may carry a distinction after a dash (6.12-deb13).
        let series = spec.kernel.split('-').next().unwrap_or(spec.kernel);
        if !kver.starts_with(&format!("{series}.")) {
            bail!(
                "{} now ships {name}, not {}: update its KernelSpec",
                spec.suite,
                spec.kernel
            );
        }
        Ok(name.to_string())
    }

    /// The packages that make up kernel package `pkg`: itself, and those of
    /// its dependencies that carry its version. Up to 6.12 the image
    /// package holds the kernel and its modules; in unstable (7.x) it is a
    /// metapackage depending on linux-base-KVER, linux-binary-KVER (the
    /// vmlinuz) and linux-modules-KVER.
    fn parts(&mut self, pkg: &str) -> Result<Vec<String>> {
        let out = self
            .command("apt-cache")
            .args(["show", "--no-all-versions", pkg])
            .output()
            .context("cannot start apt-cache")?;
        if !out.status.success() {
            bail!("apt-cache show {pkg} failed: {}", out.status);
        }
        let kver = pkg.trim_start_matches("linux-image-");
        Ok(kernel_parts(
            pkg,
            kver,
            &String::from_utf8_lossy(&out.stdout),
        ))
    }

    /// Downloads `pkgs` from `suite` into the empty directory `into`.
    fn download(&mut self, pkgs: &[String], suite: &str, into: &Path) -> Result<Vec<PathBuf>> {
        let _ = fs::remove_dir_all(into);
        fs::create_dir_all(into)?;
        crate::run(
            self.command("apt-get")
                .current_dir(into)
                .args(["download", "-q"])
                .args(pkgs.iter().map(|p| format!("{p}/{suite}"))),
        )?;
        let debs: Vec<PathBuf> = fs::read_dir(into)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "deb"))
            .collect();
        if debs.len() != pkgs.len() {
            bail!(
                "apt-get download {} left {} .deb(s)",
                pkgs.join(" "),
                debs.len()
            );
        }
        Ok(debs)
    }
}

/// A version in a package name, compared part by part: `7.2.13` >
/// `7.2.9`, and a plain ABI number is a one-part version.
fn dotted(v: &str) -> Option<Vec<u64>> {
    v.split('.').map(|p| p.parse().ok()).collect()
}

/// The newest of `names` that are `prefix V suffix`.
fn newest_package<'a>(spec: &KernelSpec, names: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    names
        .filter_map(|name| {
            let v = name.strip_prefix(spec.prefix)?.strip_suffix(spec.suffix)?;
            Some((dotted(v)?, name))
        })
        .max()
        .map(|(_, name)| name)
}

/// `pkg` and the dependencies in its `apt-cache show` text named
/// `linux-PART-KVER` (alternatives and version constraints dropped).
fn kernel_parts(pkg: &str, kver: &str, show: &str) -> Vec<String> {
    let mut parts = vec![pkg.to_string()];
    let depends = show
        .lines()
        .filter_map(|l| l.strip_prefix("Depends:"))
        .flat_map(|l| l.split([',', '|']))
        .filter_map(|d| d.split_whitespace().next());
    for dep in depends {
        let ours = dep.starts_with("linux-") && dep.ends_with(&format!("-{kver}"));
        if ours && !parts.iter().any(|p| p == dep) {
            parts.push(dep.to_string());
        }
    }
    parts
}

// ---------------------------------------------------------------- kernels

/// A kernel unpacked on the host.
struct Kernel {
    /// The guest's label (see KernelSpec).
    label: &'static str,
    spec: &'static KernelSpec,
    /// `uname -r`, e.g. 6.12.95+deb12-amd64.
    kver: String,
    /// target/kernels/KERNEL, shared by the guests of one kernel.
    dir: PathBuf,
    /// The package's files: boot/vmlinuz-KVER, lib/modules/KVER.
    tree: PathBuf,
}

impl Kernel {
    /// boot/vmlinuz-KVER up to 6.12; unstable's packages (7.x) put it
    /// next to the modules, in usr/lib/modules/KVER/vmlinuz.
    fn vmlinuz(&self) -> PathBuf {
        let boot = self.tree.join(format!("boot/vmlinuz-{}", self.kver));
        if boot.exists() {
            boot
        } else {
            self.modules().join("vmlinuz")
        }
    }

    /// lib/modules/KVER, or usr/lib/modules/KVER in packages made for a
    /// merged /usr (7.x). The real directory, not through the lib
    /// symlink prepare_kernel adds, as qemu shares it.
    fn modules(&self) -> PathBuf {
        let usr = self.tree.join("usr/lib/modules").join(&self.kver);
        if usr.exists() {
            usr
        } else {
            self.tree.join("lib/modules").join(&self.kver)
        }
    }
}

/// The kernel from the cache, else downloaded and unpacked. `kver` is
/// written last, so an interrupted unpack is redone.
fn prepare_kernel(spec: &'static KernelSpec, dir: &Path, apt: &mut Apt) -> Result<Kernel> {
    let kdir = dir.join(spec.kernel);
    let stamp = kdir.join("kver");
    let kernel = |kver: String| Kernel {
        label: spec.label,
        spec,
        kver,
        dir: kdir.clone(),
        tree: kdir.join("tree"),
    };
    if let Ok(kver) = fs::read_to_string(&stamp) {
        let k = kernel(kver.trim().to_string());
        if k.vmlinuz().exists() && k.modules().join("modules.dep").exists() {
            return Ok(k);
        }
    }
    let pkg = apt.newest(spec)?;
    let parts = apt.parts(&pkg)?;
    eprintln!(
        "kernels: {}: fetching {} from {}",
        spec.label,
        parts.join(" "),
        spec.suite
    );
    let debs = apt.download(&parts, spec.suite, &kdir.join("deb"))?;
    let k = kernel(pkg.trim_start_matches("linux-image-").to_string());
    let _ = fs::remove_dir_all(&k.tree);
    for deb in &debs {
        crate::run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&k.tree))?;
    }
    // depmod -b and modprobe -d look in DIR/lib/modules: give a
    // merged-/usr package that path.
    if !k.tree.join("lib").exists() && k.tree.join("usr/lib/modules").exists() {
        std::os::unix::fs::symlink("usr/lib", k.tree.join("lib"))?;
    }
    if !k.vmlinuz().exists() || !k.modules().exists() {
        bail!("{pkg} has no vmlinuz or modules for {}", k.kver);
    }
    crate::run(Command::new("depmod").arg("-b").arg(&k.tree).arg(&k.kver))?;
    fs::write(&stamp, &k.kver)?;
    Ok(k)
}

// ---------------------------------------------------------------- initramfs

/// Writes target/kernels/LABEL/initramfs.cpio. Rebuilt on every run: it
/// takes well under a second, and follows any change to the init script.
fn build_initramfs(kernel: &Kernel) -> Result<PathBuf> {
    let mut cpio = Newc::default();
    for dir in [
        "bin", "dev", "proc", "sys", "host", "rw", "newroot", "modules",
    ] {
        cpio.dir(dir);
    }
    // init's stdio: the kernel opens /dev/console before devtmpfs exists.
    cpio.char_dev("dev/console", 0o600, 5, 1);
    let busybox = fs::read("/bin/busybox").context("reading /bin/busybox (busybox-static)")?;
    cpio.file("bin/busybox", 0o755, &busybox);
    let mut order = String::new();
    for ko in initramfs_modules(kernel)? {
        let plain = read_module(&ko)?;
        let name = ko.file_name().unwrap_or_default().to_string_lossy();
        let name = name.trim_end_matches(".xz").trim_end_matches(".zst");
        cpio.file(&format!("modules/{name}"), 0o644, &plain);
        order += name;
        order += "\n";
    }
    cpio.file("modules/order", 0o644, order.as_bytes());
    cpio.file("init", 0o755, stage1_script(kernel).as_bytes());
    let path = kernel.dir.join("initramfs.cpio");
    fs::write(&path, cpio.finish())?;
    Ok(path)
}

/// The .ko files to insmod, dependencies first, each once.
fn initramfs_modules(kernel: &Kernel) -> Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = Vec::new();
    for module in INITRAMFS_MODULES {
        let out = Command::new("modprobe")
            .arg("-d")
            .arg(&kernel.tree)
            .args(["-S", &kernel.kver, "--show-depends", module])
            .output()
            .context("cannot start modprobe")?;
        if !out.status.success() {
            bail!(
                "modprobe --show-depends {module} for {}: {}",
                kernel.kver,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        // Lines are `insmod PATH [OPTIONS]` or `builtin NAME`.
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(path) = line
                .strip_prefix("insmod ")
                .and_then(|l| l.split_whitespace().next())
            {
                let path = PathBuf::from(path);
                if !paths.contains(&path) {
                    paths.push(path);
                }
            }
        }
    }
    Ok(paths)
}

fn read_module(path: &Path) -> Result<Vec<u8>> {
    let tool = match path.extension().and_then(|e| e.to_str()) {
        Some("xz") => "xz",
        Some("zst") => "zstd",
        _ => return fs::read(path).with_context(|| format!("reading {}", path.display())),
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .with_context(|| format!("cannot start {tool}"))?;
    if !out.status.success() {
        bail!("{tool} -dc {} failed: {}", path.display(), out.status);
    }
    Ok(out.stdout)
}

/// A cpio archive in the "new ASCII" (newc) format, the one the kernel
/// unpacks as an initramfs: per entry a 110-byte header of hex fields,
/// the NUL-terminated name and the data, each padded to 4 bytes.
#[derive(Default)]
struct Newc {
    buf: Vec<u8>,
    next_ino: u32,
}

impl Newc {
    fn dir(&mut self, name: &str) {
        self.entry(name, libc::S_IFDIR | 0o755, 2, (0, 0), &[]);
    }

    fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, libc::S_IFREG | perm, 1, (0, 0), data);
    }

    fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) {
        self.entry(name, libc::S_IFCHR | perm, 1, (major, minor), &[]);
    }

    fn entry(&mut self, name: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) {
        self.next_ino += 1;
        let fields = [
            self.next_ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            data.len() as u32,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check (only for the crc format)
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, 1, (0, 0), &[]);
        self.buf
    }
}

// ---------------------------------------------------------------- guest scripts

/// Quotes `s` as one shell word.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Stage 1, /init in the initramfs (busybox sh). `@KVER@` and
/// `@MODULES@` are replaced by quoted words.
const STAGE1: &str = r#"#!/bin/busybox sh
# Stage 1, from the initramfs of `cargo xtask kernels`: mount the guest's
# root (the host's /, or a debootstrap root) read-only over 9p under a
# tmpfs overlay, put this kernel's modules where modprobe looks for them,
# switch_root into it and run stage 2.
/bin/busybox --install -s /bin
export PATH=/bin
die() {
    echo "xtask-guest: stage 1: $*"
    # Powering off ends qemu now rather than at the host's timeout.
    echo o >/proc/sysrq-trigger
    sleep 60
}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
while read -r ko; do
    insmod "/modules/$ko" || die "insmod $ko failed"
done </modules/order
# A large msize: the default (8 KiB on 5.10) makes every read a round trip.
opts=trans=virtio,version=9p2000.L,msize=262144
# cache=loose: nothing changes the host's / under a guest that matters to
# it, and caching lookups makes the host's binaries start much faster.
mount -t 9p -o "$opts,ro,cache=loose" hostroot /host || die "cannot mount the host's / over 9p"
mount -t tmpfs -o mode=0755 tmpfs /rw
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work /newroot ||
    die "cannot mount the overlay"
# /lib/modules: where modprobe looks, with or without a merged /usr.
mkdir -p /newroot/lib/modules/@KVER@ /newroot/xtask-results
mount -t 9p -o "$opts,ro,cache=loose" modules /newroot/lib/modules/@KVER@ ||
    die "cannot mount the modules share"
mount -t 9p -o "$opts" results /newroot/xtask-results || die "cannot mount the results share"
umount /proc /sys /dev
exec switch_root /newroot /bin/sh /xtask-results/guest.sh
"#;

fn stage1_script(kernel: &Kernel) -> String {
    STAGE1.replace("@KVER@", &sh_quote(&kernel.kver))
}

/// Stage 2, guest.sh in the results share, run by the host's /bin/sh as
/// the guest's PID 1. `@...@` are replaced by quoted words or lines.
const STAGE2: &str = r#"#!/bin/sh
# Stage 2 of `cargo xtask kernels`, PID 1 in the guest (the host's / under
# a tmpfs overlay): mount what the tools need, load the network modules,
# run the checks into the results share, power off.
R=/xtask-results
die() {
    echo "xtask-guest: stage 2: $*"
    echo o >/proc/sysrq-trigger
    sleep 60
}
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TMPDIR=/tmp LANG=C.UTF-8 NO_COLOR=1
export TRACER_BIN=@TRACER@
# Lets the test executables take `--report-time` (see `argv`).
export RUSTC_BOOTSTRAP=1
# The tests' waits are sized for a real machine; emulation on a shared
# 2-core host is several times slower (tests/src/lib.rs scales by this).
export TRACER_TEST_TIME_SCALE=4
# The marker guest-only tests (tests/tests/exhaustion.rs) require before
# they change host-wide sysctls, and where they leave their recordings.
export TRACER_IN_GUEST=1 TRACER_GUEST_RESULTS="$R"
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
# Over the host's: its /run/netns names namespaces that do not exist here.
# (Not over /tmp, where the project itself may live; writes go to the
# overlay's tmpfs anyway.)
mount -t tmpfs tmpfs /run
ip link set lo up
for m in @MODULES@; do
    modprobe "$m" || echo "modprobe $m failed"
done >"$R/modules.log" 2>&1
uname -r >"$R/booted"
check() {
    name=$1 secs=$2
    shift 2
    start=$(date +%s)
    timeout -k 5 "$secs" "$@" >"$R/$name.log" 2>&1 </dev/null
    rc=$?
    # NAME.rc appears whole: the host polls for it.
    echo "$rc $(($(date +%s) - start))" >"$R/$name.rc.tmp"
    mv "$R/$name.rc.tmp" "$R/$name.rc"
}
cd @TESTS_DIR@ || die "cannot cd to @TESTS_DIR@"
@CHECKS@
touch "$R/done"
sync
echo o >/proc/sysrq-trigger
sleep 60
"#;

/// The tracer a guest runs, and where its checks run from.
struct GuestTools {
    tracer: String,
    tests_dir: String,
}

fn stage2_script(artifacts: &Artifacts, tools: &GuestTools, checks: &[&Check]) -> Result<String> {
    let mut lines = String::new();
    for check in checks {
        let argv: Vec<String> = artifacts
            .argv(&check.cmd, &tools.tracer)?
            .iter()
            .map(|a| sh_quote(a))
            .collect();
        lines += &format!(
            "check {} {} {}\n",
            check.name,
            check.timeout_s,
            argv.join(" ")
        );
    }
    let modules: Vec<String> = GUEST_MODULES.iter().map(|m| sh_quote(m)).collect();
    Ok(STAGE2
        .replace("@TRACER@", &sh_quote(&tools.tracer))
        .replace("@MODULES@", &modules.join(" "))
        .replace("@TESTS_DIR@", &sh_quote(&tools.tests_dir))
        .replace("@CHECKS@\n", &lines))
}

// ---------------------------------------------------------------- qemu

/// In a qemu option list a comma is written twice.
fn qemu_escape(s: &str) -> String {
    s.replace(',', ",,")
}

/// vCPUs per guest. Four guests of two vCPUs on a 2-core host made eight
/// emulated CPUs on two: a guest kernel spun on locks held by a vCPU the
/// host had descheduled, and TCG's exclusive sections waited for every
/// vCPU thread. With one vCPU each the same matrix took 628 s instead of
/// 838 s (the watch suites 301-369 s instead of 356-478 s, each lab about
/// half), all checks passing.
const GUEST_CPUS: u32 = 1;

/// The emulated CPU: qemu's baseline x86-64, with RDRAND for the guest
/// kernel's entropy. `max` offers every feature TCG emulates (AVX2 among
/// them), which glibc, the static tracer and the guest kernel then use,
/// at a higher cost per instruction than the baseline code paths. The
/// 6.1 guest alone, same checks: the watch suite 166-168 s instead of
/// 193-210 s, `tracer check` 9-11 s instead of 15-18 s. (Booting with
/// `mitigations=off` changed neither.) Nothing tracer does depends on
/// a CPU feature.
const GUEST_CPU_MODEL: &str = "qemu64,+rdrand";

fn qemu_command(
    kernel: &Kernel,
    initrd: &Path,
    rootfs: &Path,
    results: &Path,
    cpus: u32,
) -> Result<Command> {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-accel",
        "tcg,thread=multi",
        "-cpu",
        GUEST_CPU_MODEL,
        "-smp",
        &cpus.to_string(),
        "-m",
        "3G",
    ])
    .args(["-nic", "none", "-nographic", "-no-reboot"])
    .arg("-kernel")
    .arg(kernel.vmlinuz())
    .arg("-initrd")
    .arg(initrd)
    // panic=-1: a panicking guest reboots at once, which -no-reboot
    // turns into qemu exiting.
    .args(["-append", "console=ttyS0 panic=-1"])
    // multidevs=remap: the host's / spans several filesystems, whose
    // inode numbers would otherwise collide in the guest.
    .arg("-fsdev")
    .arg(format!(
        "local,id=hostroot,path={},security_model=none,readonly=on,multidevs=remap",
        qemu_escape(path_str(rootfs)?)
    ))
    .args(["-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot"])
    .arg("-fsdev")
    .arg(format!(
        "local,id=modules,path={},security_model=none,readonly=on",
        qemu_escape(path_str(&kernel.modules())?)
    ))
    .args(["-device", "virtio-9p-pci,fsdev=modules,mount_tag=modules"])
    .arg("-fsdev")
    .arg(format!(
        "local,id=results,path={},security_model=none",
        qemu_escape(path_str(results)?)
    ))
    .args(["-device", "virtio-9p-pci,fsdev=results,mount_tag=results"]);
    // qemu must not outlive the harness (killed, or a panic in it).
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    Ok(cmd)
}

/// A running qemu, killed when dropped (on timeout, error or Ctrl-C).
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How a guest ended.
enum End {
    /// Stage 2 ran every check and powered off.
    Done,
    /// qemu exited first: stage 1 failed, or the kernel panicked.
    Stopped(ExitStatus),
    TimedOut,
}

struct GuestResult {
    label: &'static str,
    /// The kernel's label, as EXPECTED_TO_DIFFER names it.
    kernel: &'static str,
    kver: String,
    secs: f64,
    booted_after: Option<f64>,
    end: End,
    dir: PathBuf,
    checks: Vec<CheckResult>,
}

struct CheckResult {
    name: &'static str,
    /// Its output is a libtest executable's.
    libtest: bool,
    outcome: Outcome,
    secs: Option<u64>,
}

#[derive(PartialEq)]
enum Outcome {
    Pass,
    /// Failed cleanly where EXPECTED_TO_DIFFER says it does.
    Differs,
    Fail(String),
    /// The guest never got to it.
    NotRun,
    /// Not run in this guest, and why (see skip_reason).
    Skipped(&'static str),
}

/// What one guest boots.
struct Guest<'a> {
    kernel: &'a Kernel,
    initrd: &'a Path,
    /// Its `/`: the host's, or a debootstrap root.
    rootfs: &'a Path,
    /// The static dist binary, for a userspace other than the host's.
    static_tracer: Option<&'a Path>,
}

impl Guest<'_> {
    /// The tracer the guest runs and where its checks start: the host's
    /// own, at their host paths; or, in another userspace, the static
    /// binary copied into the results share.
    fn tools(&self, artifacts: &Artifacts, dir: &Path) -> Result<GuestTools> {
        match (self.kernel.spec.userspace, self.static_tracer) {
            (None, _) => Ok(GuestTools {
                tracer: path_str(&artifacts.tracer)?.to_string(),
                tests_dir: path_str(&artifacts.tests_dir)?.to_string(),
            }),
            (Some(_), Some(bin)) => {
                fs::copy(bin, dir.join("tracer"))?;
                Ok(GuestTools {
                    tracer: "/xtask-results/tracer".into(),
                    tests_dir: "/".into(),
                })
            }
            (Some(suite), None) => bail!("no static tracer for the {suite} userspace"),
        }
    }
}

fn boot(guest: &Guest, dir: &Path, artifacts: &Artifacts, opts: &Options) -> Result<GuestResult> {
    let (kernel, initrd) = (guest.kernel, guest.initrd);
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir)?;
    let all = opts;
    let opts = &Options {
        checks: all
            .checks
            .iter()
            .copied()
            .filter(|c| all.skip(kernel.spec, c).is_none())
            .collect(),
        ..all.clone()
    };
    let tools = guest.tools(artifacts, dir)?;
    fs::write(
        dir.join("guest.sh"),
        stage2_script(artifacts, &tools, &opts.checks)?,
    )?;
    let console = fs::File::create(dir.join("console.log"))?;
    let timeout = opts.guest_timeout();
    eprintln!(
        "kernels: {}: booting {} (timeout {} s)",
        kernel.label,
        kernel.kver,
        timeout.as_secs()
    );
    let start = Instant::now();
    let mut qemu = Qemu(
        qemu_command(kernel, initrd, guest.rootfs, dir, opts.cpus)?
            .stdin(Stdio::null())
            .stdout(console.try_clone()?)
            .stderr(console)
            .spawn()
            .context("cannot start qemu-system-x86_64")?,
    );
    let (end, booted_after) = follow(&mut qemu, kernel, dir, opts, start + timeout)?;
    drop(qemu);
    let checks = all
        .checks
        .iter()
        .map(|c| {
            let not_run = |outcome| CheckResult {
                name: c.name,
                libtest: matches!(c.cmd, Cmd::Test(..)),
                outcome,
                secs: None,
            };
            if let Some(why) = all.skip(kernel.spec, c) {
                return not_run(Outcome::Skipped(why));
            }
            read_result(kernel.spec.kernel, c, dir).unwrap_or_else(|| not_run(Outcome::NotRun))
        })
        .collect();
    Ok(GuestResult {
        label: kernel.label,
        kernel: kernel.spec.kernel,
        kver: kernel.kver.clone(),
        secs: start.elapsed().as_secs_f64(),
        booted_after,
        end,
        dir: dir.to_path_buf(),
        checks,
    })
}

/// Follows a guest until it powers off, stops or reaches `deadline`,
/// reporting its boot and each check as they finish. Returns how it
/// ended and when it booted.
fn follow(
    qemu: &mut Qemu,
    kernel: &Kernel,
    dir: &Path,
    opts: &Options,
    deadline: Instant,
) -> Result<(End, Option<f64>)> {
    let start = Instant::now();
    let label = kernel.label;
    let mut booted_after = None;
    let mut reported = 0;
    loop {
        let status = qemu.0.try_wait()?;
        if booted_after.is_none() && dir.join("booted").exists() {
            let secs = start.elapsed().as_secs_f64();
            eprintln!("kernels: {label}: booted in {secs:.0} s");
            booted_after = Some(secs);
        }
        // Checks run in order: report each as its NAME.rc appears.
        while let Some(check) = opts.checks.get(reported) {
            let Some(result) = read_result(kernel.spec.kernel, check, dir) else {
                break;
            };
            let cell = outcome_cell(&result.outcome);
            let secs = result.secs.unwrap_or(0);
            eprintln!("kernels: {label}: {:<9} {cell} ({secs} s)", check.name);
            reported += 1;
        }
        if let Some(status) = status {
            let end = if dir.join("done").exists() {
                End::Done
            } else {
                End::Stopped(status)
            };
            return Ok((end, booted_after));
        }
        if Instant::now() > deadline {
            return Ok((End::TimedOut, booted_after));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A finished check's result, or None while it has not finished.
fn read_result(kernel: &str, check: &Check, dir: &Path) -> Option<CheckResult> {
    let rc = fs::read_to_string(dir.join(format!("{}.rc", check.name))).ok()?;
    let mut words = rc.split_whitespace();
    let code: i32 = words.next()?.parse().ok()?;
    let secs: Option<u64> = words.next().and_then(|s| s.parse().ok());
    let log = fs::read_to_string(dir.join(format!("{}.log", check.name))).unwrap_or_default();
    Some(CheckResult {
        name: check.name,
        libtest: matches!(check.cmd, Cmd::Test(..)),
        outcome: evaluate(kernel, check, code, &log),
        secs,
    })
}

fn expected_difference(kernel: &str, check: &str) -> Option<&'static Differs> {
    EXPECTED_TO_DIFFER
        .iter()
        .find(|d| d.kernel == kernel && d.check == check)
}

fn evaluate(kernel: &str, check: &Check, code: i32, log: &str) -> Outcome {
    // timeout(1) exits 124 when it stopped the command, 137 when it had
    // to kill it.
    if code == 124 || code == 137 {
        return Outcome::Fail(format!("timed out after {} s", check.timeout_s));
    }
    let differs = expected_difference(kernel, check.name);
    // `tracer check` exits 0 while one drop hook attaches, as a user
    // needs; here every program of the object must load: a route probe
    // refused by one kernel's verifier once passed this way unnoticed.
    if code == 0 && check.name == "check" {
        if let Some(l) = log.lines().find(|l| l.contains("did not load")) {
            return Outcome::Fail(format!("a program did not load: {}", l.trim()));
        }
    }
    match (code, differs) {
        (0, None) => Outcome::Pass,
        (0, Some(_)) => Outcome::Fail("passed, but is expected to differ here".into()),
        (_, Some(_)) if log.contains("panicked at") => Outcome::Fail(format!("exit {code}, panic")),
        (_, Some(_)) if log.trim().is_empty() => {
            Outcome::Fail(format!("exit {code} without a message"))
        }
        (_, Some(_)) => Outcome::Differs,
        (_, None) => Outcome::Fail(format!("exit {code}")),
    }
}

// ---------------------------------------------------------------- report

fn outcome_cell(o: &Outcome) -> &'static str {
    match o {
        Outcome::Pass => "PASS",
        Outcome::Differs => "xfail",
        Outcome::Fail(_) => "FAIL",
        Outcome::NotRun => "-",
        Outcome::Skipped(_) => "skip",
    }
}

/// Prints each failure with the tail of its output, then the table.
/// Returns how many failures there were.
fn report(results: &[GuestResult], checks: &[&Check]) -> usize {
    let mut failures = 0;
    for g in results {
        failures += report_guest_failures(g);
    }
    println!();
    print!("{:<11} {:<22} {:<5}", "guest", "kernel", "boot");
    for c in checks {
        print!(" {:<10}", c.name);
    }
    println!(" time");
    for g in results {
        let boot = if g.booted_after.is_some() {
            "ok"
        } else {
            "FAIL"
        };
        print!("{:<11} {:<22} {:<5}", g.label, g.kver, boot);
        for c in &g.checks {
            print!(" {:<10}", outcome_cell(&c.outcome));
        }
        println!(" {:.0} s", g.secs);
    }
    for g in results {
        for c in &g.checks {
            if let (Outcome::Differs, Some(d)) = (&c.outcome, expected_difference(g.kernel, c.name))
            {
                println!(
                    "xfail {}/{}: expected to differ: {}",
                    g.label, c.name, d.why
                );
            }
            if let Outcome::Skipped(why) = &c.outcome {
                println!("skip {}/{}: {why}", g.label, c.name);
            }
        }
    }
    println!("logs: target/kernels/results/KERNEL/ (CHECK.log, console.log, modules.log)");
    failures
}

fn report_guest_failures(g: &GuestResult) -> usize {
    let head = format!("{} ({})", g.label, g.kver);
    let mut failures = 0;
    for c in &g.checks {
        if let Outcome::Fail(why) = &c.outcome {
            failures += 1;
            println!(
                "\n--- {head} / {}: FAIL ({why}, {} s)",
                c.name,
                c.secs.unwrap_or(0)
            );
            print_excerpt(&g.dir.join(format!("{}.log", c.name)), c.libtest);
        }
    }
    // The check that was running when the guest ended, if any: its log
    // is there up to that moment.
    let cut = g.checks.iter().find(|c| c.outcome == Outcome::NotRun);
    let during = cut
        .map(|c| format!(" during {}", c.name))
        .unwrap_or_default();
    match &g.end {
        End::Done => return failures,
        End::TimedOut => {
            println!(
                "\n--- {head}: guest killed at its timeout ({:.0} s){during}",
                g.secs
            )
        }
        End::Stopped(status) => {
            println!("\n--- {head}: guest stopped early{during} (qemu: {status})")
        }
    }
    let partial = cut.map(|c| g.dir.join(format!("{}.log", c.name)));
    if let Some(log) = partial.filter(|l| fs::metadata(l).is_ok_and(|m| m.len() > 0)) {
        print_tail(&log);
    }
    print_console(&g.dir.join("console.log"));
    failures + 1
}

/// The guest's console: its kernel crash report if it has one (the tail
/// would cut it to its last registers), else its tail.
fn print_console(path: &Path) {
    let text = fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).replace('\r', ""))
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let Some(report) = crash_report(&lines) else {
        return print_tail(path);
    };
    println!("    {} (kernel crash):", path.display());
    for line in report {
        println!("    | {line}");
    }
}

/// TAIL_LINES lines from the first Oops, BUG or panic on a console.
fn crash_report<'a>(lines: &'a [&'a str]) -> Option<&'a [&'a str]> {
    let markers = ["] Oops: ", "] BUG: ", "] Kernel panic - "];
    let first = lines
        .iter()
        .position(|l| markers.iter().any(|m| l.contains(m)))?;
    Some(&lines[first..lines.len().min(first + TAIL_LINES)])
}

fn print_tail(path: &Path) {
    print_excerpt(path, false)
}

/// Prints what matters of a log: see `excerpt`.
fn print_excerpt(path: &Path, libtest: bool) {
    let text = fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).replace('\r', ""))
        .unwrap_or_default();
    println!("    {}:", path.display());
    for line in excerpt(&text, libtest) {
        println!("    | {line}");
    }
}

/// For a libtest executable, each failed test's section (its start, with
/// the panic message, and its end, where a tracer's stderr ends with the
/// verifier log's tail) and the result line; for anything else (or
/// libtest output cut short), the last TAIL_LINES lines.
fn excerpt(text: &str, libtest: bool) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let result = lines.iter().rev().find(|l| l.starts_with("test result:"));
    let (true, Some(result)) = (libtest, result) else {
        let from = lines.len().saturating_sub(TAIL_LINES);
        return lines[from..].iter().map(|l| l.to_string()).collect();
    };
    let starts: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].starts_with("---- ") && lines[i].ends_with(" ----"))
        .collect();
    let mut out = Vec::new();
    for (n, &start) in starts.iter().enumerate() {
        // A section ends at the next one, or at the list of failed names.
        let end = starts.get(n + 1).copied().unwrap_or_else(|| {
            (start..lines.len())
                .find(|&i| lines[i] == "failures:")
                .unwrap_or(lines.len())
        });
        let mut section = &lines[start..end];
        while section.last().is_some_and(|l| l.trim().is_empty()) {
            section = &section[..section.len() - 1];
        }
        if section.len() <= SECTION_HEAD + SECTION_TAIL {
            out.extend(section.iter().map(|l| l.to_string()));
        } else {
            let (head, rest) = section.split_at(SECTION_HEAD);
            let (cut, tail) = rest.split_at(rest.len() - SECTION_TAIL);
            out.extend(head.iter().map(|l| l.to_string()));
            out.push(format!("[... {} lines ...]", cut.len()));
            out.extend(tail.iter().map(|l| l.to_string()));
        }
        out.push(String::new());
    }
    out.push(result.to_string());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_entries_are_aligned_and_end_with_the_trailer() {
        let mut cpio = Newc::default();
        cpio.dir("bin");
        cpio.file("bin/x", 0o755, b"hello");
        cpio.char_dev("dev/console", 0o600, 5, 1);
        let out = cpio.finish();
        assert_eq!(out.len() % 4, 0);
        assert!(out.starts_with(b"070701"));
        // Second entry: after the 110-byte header, "bin\0" and padding to 4.
        let second = 116; // 110 + 4, rounded up to a multiple of 4
        let header = std::str::from_utf8(&out[second..second + 110]).unwrap();
        let field = |i: usize| u32::from_str_radix(&header[6 + 8 * i..14 + 8 * i], 16).unwrap();
        assert_eq!(field(1), libc::S_IFREG | 0o755); // mode
        assert_eq!(field(6), 5); // file size
        assert_eq!(field(11), 6); // name size, with its NUL
        let name_end = second + 110 + 6;
        assert_eq!(&out[second + 110..name_end], b"bin/x\0");
        assert!(out.windows(11).any(|w| w == b"TRAILER!!!\0"));
    }

    #[test]
    fn quoting_for_the_shell_and_qemu() {
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(qemu_escape("/a,b"), "/a,,b");
    }

    fn check(name: &str) -> &'static Check {
        CHECKS.iter().find(|c| c.name == name).unwrap()
    }

    #[test]
    fn expected_differences_must_fail_cleanly() {
        let reasons = check("reasons");
        assert!(evaluate("6.12", reasons, 0, "") == Outcome::Pass);
        assert!(matches!(
            evaluate("6.12", reasons, 1, "x"),
            Outcome::Fail(_)
        ));
        assert!(evaluate("5.10", reasons, 1, "no drop reasons") == Outcome::Differs);
        for (code, log) in [(0, "list"), (101, "panicked at x"), (1, ""), (124, "x")] {
            let o = evaluate("5.10", reasons, code, log);
            assert!(matches!(o, Outcome::Fail(_)), "{code} {log}");
        }
    }

    #[test]
    fn check_fails_when_any_program_does_not_load() {
        let c = check("check");
        let ok = "ok       routes tp_btf fib_table_lookup             loads and attaches\n";
        assert!(evaluate("5.10", c, 0, ok) == Outcome::Pass);
        let refused = format!(
            "{ok}missing  routes tp_btf fib_table_lookup             diagnose works without it: \
             tracepoint fib_table_lookup (tp_btf) did not load: Permission denied (os error 13)\n"
        );
        assert!(
            matches!(evaluate("5.10", c, 0, &refused), Outcome::Fail(m) if m.contains("fib_table_lookup"))
        );
    }

    #[test]
    fn a_test_log_is_cut_to_its_failures() {
        let mut log =
            String::from("running 2 tests\ntest a ... ok\ntest b ... FAILED\n\nfailures:\n\n");
        log +=
            "---- b stdout ----\n\nthread 'b' panicked at x.rs:1:1:\ntracer never became ready\n";
        for i in 0..40 {
            log += &format!("verifier line {i}\n");
        }
        log += "\n\nfailures:\n    b\n\ntest result: FAILED. 1 passed; 1 failed\n";
        let out = excerpt(&log, true);
        assert_eq!(out[0], "---- b stdout ----");
        assert!(out.contains(&"thread 'b' panicked at x.rs:1:1:".to_string()));
        assert!(out.contains(&"verifier line 39".to_string()));
        assert!(!out.contains(&"verifier line 20".to_string()));
        assert!(out.iter().any(|l| l.starts_with("[... ")));
        assert_eq!(
            out.last().unwrap(),
            "test result: FAILED. 1 passed; 1 failed"
        );
        // Not libtest's: the tail.
        let tail = excerpt(&log, false);
        assert_eq!(tail.len(), TAIL_LINES);
        assert_eq!(
            tail.last().unwrap(),
            "test result: FAILED. 1 passed; 1 failed"
        );
    }

    #[test]
    fn a_kernel_crash_is_shown_from_its_start() {
        let console = [
            "[ 1.0] boot",
            "[ 2.0] Oops: int3: 0000 [#1]",
            "[ 2.1] RIP: x",
        ];
        assert_eq!(crash_report(&console).unwrap(), &console[1..]);
        assert!(crash_report(&console[..1]).is_none());
    }

    fn spec(label: &str) -> &'static KernelSpec {
        KERNELS.iter().find(|k| k.label == label).unwrap()
    }

    #[test]
    fn the_newest_package_compares_dotted_versions() {
        // 7.2.9 sorts after 7.2.13 as text: the versions must be compared
        // as numbers, part by part. Flavours and -dbg packages do not match.
        let unstable = [
            "linux-image-7.2.9+deb14-amd64",
            "linux-image-7.2.13+deb14-amd64",
            "linux-image-7.2.13+deb14-amd64-dbg",
            "linux-image-7.2.14+deb14-rt-amd64",
            "linux-image-7.2.13+deb14-cloud-amd64",
            "linux-image-amd64",
        ];
        assert_eq!(
            newest_package(spec("7.2"), unstable.into_iter()),
            Some("linux-image-7.2.13+deb14-amd64")
        );
        // One-number versions as before: the ABI number, not the text.
        let bookworm = [
            "linux-image-6.1.0-9-amd64",
            "linux-image-6.1.0-28-amd64",
            "linux-image-6.1.0-28-rt-amd64",
        ];
        assert_eq!(
            newest_package(spec("6.1"), bookworm.into_iter()),
            Some("linux-image-6.1.0-28-amd64")
        );
        assert_eq!(newest_package(spec("6.1"), unstable.into_iter()), None);
    }

    #[test]
    fn a_metapackage_kernel_brings_its_parts() {
        // As `apt-cache show` prints unstable's 7.2 image package.
        let show = "Package: linux-image-7.2.13+deb14-amd64\n\
                    Depends: dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, \
                    linux-base-7.2.13+deb14-amd64 (= 7.2.13-1), linux-binary-7.2.13+deb14-amd64 \
                    (= 7.2.13-1), linux-modules-7.2.13+deb14-amd64 (= 7.2.13-1)\n\
                    Pre-Depends: linux-base (>= 4.17~)\n";
        let kver = "7.2.13+deb14-amd64";
        assert_eq!(
            kernel_parts(&format!("linux-image-{kver}"), kver, show),
            [
                format!("linux-image-{kver}"),
                format!("linux-base-{kver}"),
                format!("linux-binary-{kver}"),
                format!("linux-modules-{kver}"),
            ]
        );
        // 6.12's image package is the whole kernel: nothing else to fetch.
        let show = "Depends: kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) \
                    | linux-initramfs-tool\n";
        let pkg = "linux-image-6.12.57+deb12-amd64";
        assert_eq!(kernel_parts(pkg, "6.12.57+deb12-amd64", show), [pkg]);
    }

    #[test]
    fn options() {
        let o = Options::parse(&["--kernel", "6.1", "--kernel=5.10", "--check", "lab"]).unwrap();
        let labels: Vec<_> = o.kernels.iter().map(|k| k.label).collect();
        assert_eq!(labels, ["6.1", "5.10"]);
        assert_eq!(o.checks.len(), 1);
        assert_eq!(
            o.guest_timeout(),
            Duration::from_secs(BOOT_ALLOWANCE_S + check("lab").timeout_s)
        );
        let all = Options::parse(&[]).unwrap();
        // Unstable's kernel only when named.
        let labels: Vec<_> = all.kernels.iter().map(|k| k.label).collect();
        assert_eq!(labels, ["5.10", "5.10-deb11", "6.1", "6.12"]);
        let named = Options::parse(&["--kernel", "7.2"]).unwrap();
        assert_eq!(named.kernels[0].suite, "unstable");
        assert_eq!(
            all.guest_timeout(),
            Duration::from_secs(GUEST_TIMEOUT_CAP_S)
        );
        assert!(Options::parse(&["--kernel", "4.19"]).is_err());
        assert!(Options::parse(&["--timeout"]).is_err());
        assert!(Options::parse(&["--bogus"]).is_err());
    }

    #[test]
    fn a_check_can_be_asked_for_on_some_kernels_only() {
        let o = Options::parse(&["--check", "lab-pmtu@5.10,6.1", "--check", "exhaustion@6.12"])
            .unwrap();
        let spec = |l| KERNELS.iter().find(|k| k.label == l).unwrap();
        let (pmtu, ex) = (check("lab-pmtu"), check("exhaustion"));
        assert_eq!(o.skip(spec("6.1"), pmtu), None);
        assert!(o.skip(spec("6.12"), pmtu).is_some());
        assert_eq!(o.skip(spec("6.12"), ex), None);
        assert!(o.skip(spec("6.1"), ex).is_some());
        // Unscoped, a check runs everywhere it can.
        let o = Options::parse(&["--check", "lab-pmtu"]).unwrap();
        assert_eq!(o.skip(spec("6.12"), pmtu), None);
        assert!(Options::parse(&["--check", "lab-pmtu@4.19"]).is_err());
    }
}
