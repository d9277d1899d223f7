//! What the running kernel's BTF tells us: the drop-reason names (the enum
//! differs between kernels, so no table is compiled in) and the member
//! offsets the eBPF programs need (so no struct layout is compiled in).

use anyhow::{anyhow, bail, Context, Result};
use btf_rs::{Btf, Type};
use fallible_iterator::FallibleIterator;
use std::collections::BTreeMap;
use std::path::Path;
use tracer_abi::{Offsets, NO_OFFSET};

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// The kernel's BTF, parsed once.
pub struct KernelBtf {
    btf: Btf,
    /// Structs found by name: with the mmap backend each lookup by name
    /// walks every type, and start-up resolves some 60 member paths in 15
    /// structs (issue 22: a share of the time to `ready`).
    structs: std::sync::Mutex<std::collections::HashMap<String, btf_rs::Struct>>,
}

/// `path`'s BTF, mmapped lazily from an in-memory copy (see `from_file`).
fn lazy_copy(path: &Path) -> Result<Btf> {
    use rustix::fs::{memfd_create, MemfdFlags};
    use std::io::Write;
    let bytes = std::fs::read(path)?;
    // Sealed against exec, as 6.3 and later ask (vm.memfd_noexec=2
    // refuses a memfd without it); earlier kernels refuse the flag.
    let fd = memfd_create("tracer-btf", MemfdFlags::CLOEXEC | MemfdFlags::NOEXEC_SEAL)
        .or_else(|_| memfd_create("tracer-btf", MemfdFlags::CLOEXEC))?;
    let mut file = std::fs::File::from(fd);
    file.write_all(&bytes)?;
    // btf-rs maps a path; the memfd's stays valid while `file` is open,
    // and the mapping outlives it.
    let btf = Btf::from_file_with_backend(
        format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&file)),
        btf_rs::Backend::Mmap,
    )?;
    Ok(btf)
}

impl KernelBtf {
    pub fn load() -> Result<Self> {
        Self::from_file(Path::new(VMLINUX))
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.exists() {
            bail!(
                "no kernel BTF at {}: this kernel was built without CONFIG_DEBUG_INFO_BTF, \
                 which tracer needs",
                path.display()
            );
        }
        // Mmap parses lazily: start-up pays only for the types we resolve.
        // Sysfs BTF can be mmapped only since about 6.16 (older kernels
        // answer ENODEV). There the bytes are copied once into a memfd,
        // which can be: parsing the whole file instead (btf-rs's cache
        // backend) was half of start-up in the 6.12 guest, 1.5-1.8 s of
        // its 3.3 s.
        // Should the copy fail (no memfd, no /proc), the whole parse.
        let btf = match Btf::from_file_with_backend(path, btf_rs::Backend::Mmap) {
            Ok(b) => b,
            Err(mapped) => match lazy_copy(path) {
                Ok(b) => b,
                Err(copied) => Btf::from_file_with_backend(path, btf_rs::Backend::Cache)
                    .map_err(|e| {
                        anyhow!(
                            "cannot parse kernel BTF {}: {e} (mapped: {mapped}; copied: {copied:#})",
                            path.display()
                        )
                    })?,
            },
        };
        Ok(KernelBtf {
            btf,
            structs: Default::default(),
        })
    }

    /// Every drop reason of this kernel: `enum skb_drop_reason` (prefix
    /// stripped) plus subsystem reasons (`enum *_drop_reason` whose values
    /// carry a subsystem id in their upper 16 bits), among them, after
    /// 6.18, `enum qdisc_drop_reason` (see `Reasons::from_enums`).
    pub fn drop_reasons(&self) -> Result<Reasons> {
        if !self.has_drop_reasons() {
            bail!("this kernel has no drop reasons (enum skb_drop_reason arrived in Linux 5.17): drops still show their location, netns, devices and flow");
        }
        let core = self.enum_members("skb_drop_reason")?;
        // Subsystem enums exist only when their subsystem is built in.
        let subsys = self
            .enum_members("skb_drop_reason_subsys")
            .unwrap_or_default();
        let mut others = Vec::new();
        let mut types = self.btf.type_iter();
        while let Ok(Some(t)) = types.next() {
            let Type::Enum(e) = t else { continue };
            let Ok(name) = self.btf.resolve_name(&e) else {
                continue;
            };
            if name == "skb_drop_reason" || !name.ends_with("_drop_reason") {
                continue;
            }
            let members = e
                .members
                .iter()
                .filter_map(|m| Some((self.btf.resolve_name(m).ok()?, m.val())))
                .collect();
            others.push((name, members));
        }
        let r = Reasons::from_enums(&core, &subsys, &others);
        if r.is_empty() {
            bail!("this kernel's BTF has no enum skb_drop_reason: drop reasons need Linux 5.17 or later");
        }
        Ok(r)
    }

    /// QDISC_DROP's value where the kernel also has `qdisc:qdisc_drop`
    /// (after 6.18), else 0: there kfree_skb reports every qdisc drop as
    /// QDISC_DROP, and qdisc_drop has the finer reason (see
    /// `Config::qdisc_drop`).
    pub fn qdisc_drop_code(&self) -> u32 {
        let has_tp = self
            .btf
            .resolve_types_by_name("btf_trace_qdisc_drop")
            .is_ok_and(|ts| !ts.is_empty());
        if !has_tp {
            return 0;
        }
        self.enum_members("skb_drop_reason")
            .ok()
            .and_then(|m| {
                m.into_iter()
                    .find(|(n, _)| n == "SKB_DROP_REASON_QDISC_DROP")
            })
            .map_or(0, |(_, v)| v)
    }

    /// Whether `kfree_skb` reports why (Linux 5.17+): the enum and the
    /// tracepoint's `reason` argument arrived together.
    pub fn has_drop_reasons(&self) -> bool {
        self.btf
            .resolve_types_by_name("skb_drop_reason")
            .map(|ts| ts.iter().any(|t| matches!(t, Type::Enum(_))))
            .unwrap_or(false)
    }

    /// The running kernel's drop reasons, or an empty table before 5.17.
    pub fn drop_reasons_or_none(&self) -> Result<Reasons> {
        if self.has_drop_reasons() {
            self.drop_reasons()
        } else {
            Ok(Reasons::default())
        }
    }

    fn enum_members(&self, name: &str) -> Result<Vec<(String, u32)>> {
        let types = self
            .btf
            .resolve_types_by_name(name)
            .map_err(|_| anyhow!("no enum {name} in the kernel BTF"))?;
        for t in types {
            if let Type::Enum(e) = t {
                let mut out = Vec::with_capacity(e.members.len());
                for m in &e.members {
                    out.push((self.btf.resolve_name(m).unwrap_or_default(), m.val()));
                }
                return Ok(out);
            }
        }
        bail!("no enum {name} in the kernel BTF")
    }

    fn strukt(&self, name: &str) -> Result<btf_rs::Struct> {
        let mut memo = self.structs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = memo.get(name) {
            return Ok(s.clone());
        }
        let s = self.strukt_uncached(name)?;
        memo.insert(name.to_string(), s.clone());
        Ok(s)
    }

    fn strukt_uncached(&self, name: &str) -> Result<btf_rs::Struct> {
        let types = self
            .btf
            .resolve_types_by_name(name)
            .map_err(|_| anyhow!("no struct {name} in the kernel BTF"))?;
        for t in types {
            match t {
                Type::Struct(s) | Type::Union(s) if !s.members.is_empty() => return Ok(s),
                _ => {}
            }
        }
        bail!("no struct {name} in the kernel BTF")
    }

    /// Skips typedefs and qualifiers down to a struct or union, if any.
    fn as_struct(&self, mut t: Type) -> Option<btf_rs::Struct> {
        for _ in 0..16 {
            match t {
                Type::Struct(s) | Type::Union(s) => return Some(s),
                Type::Typedef(_)
                | Type::Const(_)
                | Type::Volatile(_)
                | Type::Restrict(_)
                | Type::TypeTag(_) => {
                    t = self.btf.resolve_chained_type(t.as_btf_type()?).ok()?;
                }
                _ => return None,
            }
        }
        None
    }

    /// Byte offset of `member` inside `s`, looking through anonymous
    /// structs and unions (the kernel nests many fields in them).
    fn member_in(&self, s: &btf_rs::Struct, member: &str) -> Option<(u32, Type)> {
        for m in &s.members {
            let name = self.btf.resolve_name(m).unwrap_or_default();
            // Only the members looked at have their type resolved.
            if name == member {
                return Some((m.bit_offset() / 8, self.btf.resolve_chained_type(m).ok()?));
            }
            if name.is_empty() {
                let ty = self.btf.resolve_chained_type(m).ok();
                if let Some(inner) = ty.and_then(|t| self.as_struct(t)) {
                    if let Some((off, t)) = self.member_in(&inner, member) {
                        return Some((m.bit_offset() / 8 + off, t));
                    }
                }
            }
        }
        None
    }

    /// Offset of a dotted member path, e.g. `sock.__sk_common.skc_family`.
    pub fn offset_of(&self, path: &str) -> Result<u32> {
        let mut parts = path.split('.');
        let root = parts.next().unwrap_or_default();
        let mut s = self.strukt(root)?;
        let mut total = 0;
        let mut rest = parts.peekable();
        while let Some(member) = rest.next() {
            let (off, ty) = self
                .member_in(&s, member)
                .ok_or_else(|| anyhow!("kernel struct has no member {path}"))?;
            total += off;
            if rest.peek().is_some() {
                s = self
                    .as_struct(ty)
                    .ok_or_else(|| anyhow!("{member} in {path} is not a struct"))?;
            }
        }
        Ok(total)
    }

    /// `nf_conn` offsets for the NAT tuple: status, the original-direction
    /// tuple (`tuplehash` is an array; element 0 is IP_CT_DIR_ORIGINAL),
    /// and the tuple's members. None when any is missing.
    fn conntrack_offsets(&self) -> Option<[u32; 8]> {
        let o = |p: &str| self.offset_of(p).ok();
        let tuple = o("nf_conn.tuplehash")? + o("nf_conntrack_tuple_hash.tuple")?;
        Some([
            o("nf_conn.status")?,
            tuple,
            o("nf_conntrack_tuple.src.u3")?,
            o("nf_conntrack_tuple.src.u")?,
            o("nf_conntrack_tuple.src.l3num")?,
            o("nf_conntrack_tuple.dst.u3")?,
            o("nf_conntrack_tuple.dst.u")?,
            o("nf_conntrack_tuple.dst.protonum")?,
        ])
    }

    /// Every offset the eBPF programs read. Members that the drop path
    /// cannot work without are errors; optional ones become `NO_OFFSET`.
    pub fn offsets(&self) -> Result<Offsets> {
        let need = |p: &str| self.offset_of(p).with_context(|| format!("resolving {p}"));
        let opt = |p: &str| self.offset_of(p).unwrap_or(NO_OFFSET);
        let ct = self.conntrack_offsets();
        Ok(Offsets {
            skb_dev: need("sk_buff.dev")?,
            skb_sk: need("sk_buff.sk")?,
            skb_len: need("sk_buff.len")?,
            skb_iif: need("sk_buff.skb_iif")?,
            skb_head: need("sk_buff.head")?,
            skb_end: need("sk_buff.end")?,
            skb_protocol: need("sk_buff.protocol")?,
            skb_network_header: need("sk_buff.network_header")?,
            shinfo_gso_size: opt("skb_shared_info.gso_size"),
            shinfo_gso_segs: opt("skb_shared_info.gso_segs"),
            dev_ifindex: need("net_device.ifindex")?,
            dev_mtu: opt("net_device.mtu"),
            dev_nd_net: need("net_device.nd_net")?,
            net_inum: need("net.ns.inum")?,
            sk_family: opt("sock.__sk_common.skc_family"),
            sk_protocol: opt("sock.sk_protocol"),
            sk_daddr: opt("sock.__sk_common.skc_daddr"),
            sk_rcv_saddr: opt("sock.__sk_common.skc_rcv_saddr"),
            sk_dport: opt("sock.__sk_common.skc_dport"),
            sk_num: opt("sock.__sk_common.skc_num"),
            sk_v6_daddr: opt("sock.__sk_common.skc_v6_daddr"),
            sk_v6_rcv_saddr: opt("sock.__sk_common.skc_v6_rcv_saddr"),
            sk_net: opt("sock.__sk_common.skc_net"),
            fl4_oif: opt("flowi4.__fl_common.flowic_oif"),
            fl4_iif: opt("flowi4.__fl_common.flowic_iif"),
            fl4_saddr: opt("flowi4.saddr"),
            fl4_daddr: opt("flowi4.daddr"),
            fl4_dport: opt("flowi4.uli.ports.dport"),
            fl6_oif: opt("flowi6.__fl_common.flowic_oif"),
            fl6_iif: opt("flowi6.__fl_common.flowic_iif"),
            fl6_saddr: opt("flowi6.saddr"),
            fl6_daddr: opt("flowi6.daddr"),
            nhc_dev: opt("fib_nh_common.nhc_dev"),
            f6res_nh: opt("fib6_result.nh"),
            f6nh_dev: opt("fib6_nh.nh_common.nhc_dev"),
            f6res_type: opt("fib6_result.fib6_type"),
            f6table_id: opt("fib6_table.tb6_id"),
            neigh_dev: opt("neighbour.dev"),
            neigh_state: opt("neighbour.nud_state"),
            neigh_key: opt("neighbour.primary_key"),
            neigh_tbl: opt("neighbour.tbl"),
            tbl_family: opt("neigh_table.family"),
            tp_skbaddr: NO_OFFSET,
            tp_location: NO_OFFSET,
            tp_reason: NO_OFFSET,
            skb_mac_header: opt("sk_buff.mac_header"),
            skb_tail: opt("sk_buff.tail"),
            skb_data: opt("sk_buff.data"),
            // Conntrack (CONFIG_NF_CONNTRACK): all or nothing.
            skb_nfct: if ct.is_some() {
                opt("sk_buff._nfct")
            } else {
                NO_OFFSET
            },
            ct_status: ct.map_or(NO_OFFSET, |c| c[0]),
            ct_tuple: ct.map_or(NO_OFFSET, |c| c[1]),
            tuple_src_u3: ct.map_or(NO_OFFSET, |c| c[2]),
            tuple_src_port: ct.map_or(NO_OFFSET, |c| c[3]),
            tuple_l3num: ct.map_or(NO_OFFSET, |c| c[4]),
            tuple_dst_u3: ct.map_or(NO_OFFSET, |c| c[5]),
            tuple_dst_port: ct.map_or(NO_OFFSET, |c| c[6]),
            tuple_protonum: ct.map_or(NO_OFFSET, |c| c[7]),
        })
    }
}

/// Reason names that never come with a drop.
const NOT_DROPS: [&str; 4] = [
    "SKB_NOT_DROPPED_YET",
    "SKB_CONSUMED",
    "NOT_DROPPED_YET",
    "CONSUMED",
];

/// Drop reason codes and names of the running kernel.
#[derive(Clone, Debug, Default)]
pub struct Reasons {
    by_code: BTreeMap<u32, String>,
}

/// A subsystem's reasons sit in the upper 16 bits of the value
/// (`SKB_DROP_REASON_SUBSYS_SHIFT`); core reasons have 0 there.
const SUBSYS_SHIFT: u32 = 16;

/// A type's enum: its name and its (member, value) pairs.
pub type EnumTable = (String, Vec<(String, u32)>);

impl Reasons {
    /// The table from the kernel's enums: `core` is `enum
    /// skb_drop_reason`, `subsys` is `enum skb_drop_reason_subsys`, and
    /// `others` are the other `enum *_drop_reason`. A subsystem member is
    /// kept when its upper 16 bits name a subsystem, under its own name
    /// (`OVS_DROP_LAST_ACTION`, `QDISC_DROP_CONGESTED`), minus what marks
    /// the enum's range and is never a drop: the base (`__QDISC_DROP_REASON`,
    /// `___RX_DROP_UNUSABLE`) and the bound (`QDISC_DROP_MAX`).
    ///
    /// Kernels after 6.18 moved QDISC_OVERLIMIT, QDISC_CONGESTED,
    /// CAKE_FLOOD and FQ_* out of `enum skb_drop_reason` into `enum
    /// qdisc_drop_reason` (subsystem SKB_DROP_REASON_SUBSYS_QDISC, 3 on
    /// 7.2): qdiscs record those in the skb, and the kernel frees the
    /// packet with core QDISC_DROP unless one reaches kfree_skb as it is,
    /// which this table names.
    pub fn from_enums(
        core: &[(String, u32)],
        subsys: &[(String, u32)],
        others: &[EnumTable],
    ) -> Self {
        let mut by_code = BTreeMap::new();
        for (name, value) in core {
            if name == "SKB_DROP_REASON_MAX" {
                continue;
            }
            let short = name.strip_prefix("SKB_DROP_REASON_").unwrap_or(name);
            by_code.insert(*value, short.to_string());
        }
        let ids: Vec<u32> = subsys
            .iter()
            .filter(|(n, v)| *v != 0 && !n.ends_with("_NUM"))
            .map(|(_, v)| *v)
            .collect();
        for (_, members) in others {
            for (name, value) in members {
                let bookkeeping = name.starts_with("__") || name.ends_with("_MAX");
                if ids.contains(&(value >> SUBSYS_SHIFT)) && !bookkeeping {
                    by_code.entry(*value).or_insert_with(|| name.clone());
                }
            }
        }
        Reasons { by_code }
    }

    pub fn from_pairs<I: IntoIterator<Item = (u32, String)>>(pairs: I) -> Self {
        Reasons {
            by_code: pairs.into_iter().collect(),
        }
    }

    /// The name of a code; unknown codes read `REASON_<n>` rather than fail.
    pub fn name(&self, code: u32) -> String {
        match self.by_code.get(&code) {
            Some(n) => n.clone(),
            None => format!("REASON_{code}"),
        }
    }

    /// Code for a user-typed name: case-insensitive, with or without the
    /// `SKB_DROP_REASON_` prefix, or a number.
    pub fn code(&self, name: &str) -> Option<u32> {
        let n = name.trim();
        if let Ok(v) = n.parse::<u32>() {
            return Some(v);
        }
        let up = n.to_ascii_uppercase();
        let short = up.strip_prefix("SKB_DROP_REASON_").unwrap_or(&up);
        self.by_code
            .iter()
            .find(|(_, v)| v.as_str() == short)
            .map(|(k, _)| *k)
    }

    pub fn iter(&self) -> impl Iterator<Item = (u32, &str)> {
        self.by_code.iter().map(|(k, v)| (*k, v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.by_code.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_code.is_empty()
    }

    /// Parses the comma-separated lists given to `flag`; an unknown, empty
    /// or never-a-drop name is an error naming it.
    pub fn parse_list(&self, flag: &str, list: &[String]) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        if self.is_empty() && !list.is_empty() {
            bail!("this kernel has no drop reasons (they need Linux 5.17), so {flag} cannot filter; use a filter expression, --netns or -i");
        }
        for item in list.iter().flat_map(|s| s.split(',')) {
            let item = item.trim();
            if item.is_empty() {
                bail!("empty reason in {flag}: give names separated by single commas, e.g. {flag} IP_RPFILTER,NO_SOCKET");
            }
            match self.code(item) {
                // These mark frees that are not drops; filtering on them
                // would silently match nothing.
                Some(c) if NOT_DROPS.contains(&self.name(c).as_str()) => bail!(
                    "{} in {flag} is never a drop (the kernel frees such packets with consume_skb, not kfree_skb)",
                    self.name(c)
                ),
                Some(c) => out.push(c),
                None => bail!(
                    "unknown drop reason '{item}' in {flag}: `tracer reasons` lists this kernel's reasons"
                ),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The kernel BTF is always present on the machines tracer targets (and
    // CI); these tests read the real thing rather than a fixture.
    #[test]
    fn reasons_come_from_the_running_kernel() {
        let btf = KernelBtf::load().unwrap();
        let r = btf.drop_reasons().unwrap();
        assert_eq!(r.name(2), "NOT_SPECIFIED");
        let rp = r
            .code("IP_RPFILTER")
            .expect("IP_RPFILTER exists since 5.17");
        assert_eq!(r.name(rp), "IP_RPFILTER");
        assert_eq!(r.code("skb_drop_reason_ip_rpfilter"), Some(rp));
        assert!(r.code("NO_SUCH_REASON").is_none());
        assert!(r.len() > 50);
        assert_eq!(r.name(0xfff_ffff), "REASON_268435455");
    }

    /// Before 6.16 sysfs BTF cannot be mmapped, and the copy in a memfd
    /// stands in for it: the same reasons and offsets as a whole parse.
    #[test]
    fn the_memfd_copy_reads_as_the_file_does() {
        let direct = KernelBtf {
            btf: Btf::from_file_with_backend(VMLINUX, btf_rs::Backend::Cache).unwrap(),
            structs: Default::default(),
        };
        let copy = KernelBtf {
            btf: lazy_copy(Path::new(VMLINUX)).unwrap(),
            structs: Default::default(),
        };
        let (a, b) = (direct.drop_reasons().unwrap(), copy.drop_reasons().unwrap());
        assert_eq!(a.len(), b.len());
        let rp = a.code("IP_RPFILTER").unwrap();
        assert_eq!(b.code("IP_RPFILTER"), Some(rp));
        let (oa, ob) = (direct.offsets().unwrap(), copy.offsets().unwrap());
        assert_eq!(oa.skb_dev, ob.skb_dev);
        assert_eq!(oa.fl4_daddr, ob.fl4_daddr);
        assert_eq!(oa.sk_family, ob.sk_family);
    }

    #[test]
    fn offsets_resolve_through_anonymous_members() {
        let btf = KernelBtf::load().unwrap();
        let o = btf.offsets().unwrap();
        // sk_buff.dev sits in an anonymous union after next/prev (16 bytes).
        assert_eq!(o.skb_dev, 16);
        assert!(o.skb_protocol > o.skb_dev);
        assert_ne!(o.sk_family, NO_OFFSET);
        assert_ne!(o.fl4_daddr, NO_OFFSET);
        assert_eq!(o.fl4_daddr, o.fl4_saddr + 4);
        assert!(btf.offset_of("sk_buff.no_such_member").is_err());
        // Conntrack, where the kernel has it: the original tuple's members
        // in the order struct nf_conntrack_tuple declares them.
        if o.skb_nfct != NO_OFFSET {
            assert!(o.ct_tuple > 0 && o.ct_status > o.ct_tuple);
            assert_eq!(o.tuple_src_u3, 0);
            assert_eq!(o.tuple_src_port, 16);
            assert!(o.tuple_dst_u3 > o.tuple_l3num);
            assert_eq!(o.tuple_dst_port, o.tuple_dst_u3 + 16);
        }
        assert!(btf.offset_of("no_such_struct.x").is_err());
    }

    fn members(pairs: &[(&str, u32)]) -> Vec<(String, u32)> {
        pairs.iter().map(|(n, v)| (n.to_string(), *v)).collect()
    }

    /// `enum skb_drop_reason_subsys` as 6.18 and 7.2 have it.
    fn subsys(with_qdisc: bool) -> Vec<(String, u32)> {
        let mut s = vec![
            ("SKB_DROP_REASON_SUBSYS_CORE", 0),
            ("SKB_DROP_REASON_SUBSYS_MAC80211_UNUSABLE", 1),
            ("SKB_DROP_REASON_SUBSYS_OPENVSWITCH", 2),
        ];
        if with_qdisc {
            s.push(("SKB_DROP_REASON_SUBSYS_QDISC", 3));
        }
        s.push(("SKB_DROP_REASON_SUBSYS_NUM", s.len() as u32));
        members(&s)
    }

    fn ovs() -> EnumTable {
        let m = [
            ("__OVS_DROP_REASON", 0x2_0000),
            ("OVS_DROP_LAST_ACTION", 0x2_0001),
            ("OVS_DROP_MAX", 0x2_0002),
        ];
        ("ovs_drop_reason".into(), members(&m))
    }

    #[test]
    fn qdisc_reasons_of_6_18_are_core_reasons() {
        // 6.18: the qdisc reasons are skb_drop_reason members.
        let core = members(&[
            ("SKB_NOT_DROPPED_YET", 0),
            ("SKB_CONSUMED", 1),
            ("SKB_DROP_REASON_NOT_SPECIFIED", 2),
            ("SKB_DROP_REASON_QDISC_DROP", 64),
            ("SKB_DROP_REASON_QDISC_OVERLIMIT", 65),
            ("SKB_DROP_REASON_QDISC_CONGESTED", 66),
            ("SKB_DROP_REASON_FQ_FLOW_LIMIT", 70),
            ("SKB_DROP_REASON_MAX", 120),
        ]);
        let r = Reasons::from_enums(&core, &subsys(false), &[ovs()]);
        assert_eq!(r.name(64), "QDISC_DROP");
        assert_eq!(r.name(66), "QDISC_CONGESTED");
        assert_eq!(r.name(70), "FQ_FLOW_LIMIT");
        assert_eq!(r.name(0x2_0001), "OVS_DROP_LAST_ACTION");
        // The range markers are not reasons, and MAX is not either.
        assert_eq!(r.name(0x2_0000), "REASON_131072");
        assert_eq!(r.name(0x2_0002), "REASON_131074");
        assert_eq!(r.name(120), "REASON_120");
    }

    #[test]
    fn qdisc_reasons_after_6_18_come_from_their_own_enum() {
        // As 7.2.13's BTF has them (read from Debian's
        // linux-binary-7.2.13+deb14-amd64): the finer reasons left enum
        // skb_drop_reason for enum qdisc_drop_reason, whose values carry
        // SKB_DROP_REASON_SUBSYS_QDISC (3) in their upper 16 bits.
        let core = members(&[
            ("SKB_NOT_DROPPED_YET", 0),
            ("SKB_CONSUMED", 1),
            ("SKB_DROP_REASON_NOT_SPECIFIED", 2),
            ("SKB_DROP_REASON_QDISC_DROP", 64),
            ("SKB_DROP_REASON_QDISC_BURST_DROP", 65),
            ("SKB_DROP_REASON_MAX", 126),
        ]);
        let qdisc = members(&[
            ("QDISC_DROP_UNSPEC", 0),
            ("__QDISC_DROP_REASON", 0x3_0000),
            ("QDISC_DROP_GENERIC", 0x3_0001),
            ("QDISC_DROP_OVERLIMIT", 0x3_0002),
            ("QDISC_DROP_CONGESTED", 0x3_0003),
            ("QDISC_DROP_FLOW_LIMIT", 0x3_0008),
            ("QDISC_DROP_MAX", 0x3_000a),
        ]);
        let others = [ovs(), ("qdisc_drop_reason".into(), qdisc)];
        let r = Reasons::from_enums(&core, &subsys(true), &others);
        assert_eq!(r.name(64), "QDISC_DROP");
        assert_eq!(r.name(0x3_0002), "QDISC_DROP_OVERLIMIT");
        assert_eq!(r.name(0x3_0003), "QDISC_DROP_CONGESTED");
        assert_eq!(r.name(0x3_0008), "QDISC_DROP_FLOW_LIMIT");
        // UNSPEC is 0, the core's SKB_NOT_DROPPED_YET: it must not rename it.
        assert_eq!(r.name(0), "SKB_NOT_DROPPED_YET");
        assert_eq!(r.name(0x3_0000), "REASON_196608");
        assert_eq!(r.name(0x3_000a), "REASON_196618");
        // --reason takes them like any other.
        assert_eq!(r.code("qdisc_drop_congested"), Some(0x3_0003));
        // Without the QDISC subsystem id, the same enum names nothing.
        let r = Reasons::from_enums(&core, &subsys(false), &others);
        assert_eq!(r.name(0x3_0003), "REASON_196611");
    }

    /// A raw BTF blob (the format of /sys/kernel/btf/vmlinux) holding an
    /// `int`, these enums and these typedefs (of `int`).
    fn btf_blob(enums: &[(&str, &[(&str, u32)])], typedefs: &[&str]) -> Vec<u8> {
        let mut strings = vec![0u8];
        let mut name = |n: &str| {
            let off = strings.len() as u32;
            strings.extend_from_slice(n.as_bytes());
            strings.push(0);
            off
        };
        let mut types: Vec<u32> = Vec::new();
        // Type 1: int, 32 bits (BTF_KIND_INT = 1).
        types.extend([name("int"), 1 << 24, 4, 32]);
        for (e, members) in enums {
            // BTF_KIND_ENUM = 6, vlen members of (name, value).
            types.extend([name(e), 6 << 24 | members.len() as u32, 4]);
            for (m, v) in members.iter() {
                types.extend([name(m), *v]);
            }
        }
        for t in typedefs {
            // BTF_KIND_TYPEDEF = 8, of type 1.
            types.extend([name(t), 8 << 24, 1]);
        }
        let type_len = types.len() as u32 * 4;
        let mut out = Vec::new();
        out.extend_from_slice(&0xeb9f_u16.to_le_bytes());
        out.extend_from_slice(&[1, 0]); // version, flags
        for w in [24, 0, type_len, type_len, strings.len() as u32] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        for w in types {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&strings);
        out
    }

    fn parse_blob(tag: &str, blob: &[u8]) -> KernelBtf {
        let path = std::env::temp_dir().join(format!("tracer-btf-{tag}-{}", std::process::id()));
        std::fs::write(&path, blob).unwrap();
        let btf = KernelBtf::from_file(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        btf
    }

    const SUBSYS_72: &[(&str, u32)] = &[
        ("SKB_DROP_REASON_SUBSYS_CORE", 0),
        ("SKB_DROP_REASON_SUBSYS_OPENVSWITCH", 2),
        ("SKB_DROP_REASON_SUBSYS_QDISC", 3),
        ("SKB_DROP_REASON_SUBSYS_NUM", 4),
    ];
    const CORE_72: &[(&str, u32)] = &[
        ("SKB_NOT_DROPPED_YET", 0),
        ("SKB_DROP_REASON_NOT_SPECIFIED", 2),
        ("SKB_DROP_REASON_QDISC_DROP", 64),
        ("SKB_DROP_REASON_MAX", 126),
    ];
    const QDISC_72: &[(&str, u32)] = &[
        ("QDISC_DROP_UNSPEC", 0),
        ("__QDISC_DROP_REASON", 0x3_0000),
        ("QDISC_DROP_GENERIC", 0x3_0001),
        ("QDISC_DROP_CONGESTED", 0x3_0003),
        ("QDISC_DROP_MAX", 0x3_000a),
    ];

    #[test]
    fn a_7_2_shaped_btf_names_qdisc_reasons_and_asks_for_qdisc_drop() {
        let blob = btf_blob(
            &[
                ("skb_drop_reason", CORE_72),
                ("skb_drop_reason_subsys", SUBSYS_72),
                ("qdisc_drop_reason", QDISC_72),
            ],
            &["btf_trace_kfree_skb", "btf_trace_qdisc_drop"],
        );
        let btf = parse_blob("72", &blob);
        let r = btf.drop_reasons().unwrap();
        assert_eq!(r.name(64), "QDISC_DROP");
        assert_eq!(r.name(0x3_0003), "QDISC_DROP_CONGESTED");
        assert_eq!(r.name(0x3_0000), "REASON_196608");
        // kfree_skb says QDISC_DROP there: the drop program must swap in
        // qdisc_drop's reason for that code.
        assert_eq!(btf.qdisc_drop_code(), 64);
    }

    #[test]
    fn without_the_qdisc_drop_tracepoint_nothing_is_swapped() {
        // 6.18 and before: no qdisc:qdisc_drop, the finer reasons are core
        // reasons that kfree_skb gives itself.
        let core = [
            ("SKB_NOT_DROPPED_YET", 0),
            ("SKB_DROP_REASON_QDISC_DROP", 64),
            ("SKB_DROP_REASON_QDISC_CONGESTED", 66),
        ];
        let blob = btf_blob(&[("skb_drop_reason", &core)], &["btf_trace_kfree_skb"]);
        let btf = parse_blob("618", &blob);
        assert_eq!(btf.drop_reasons().unwrap().name(66), "QDISC_CONGESTED");
        assert_eq!(btf.qdisc_drop_code(), 0);
        // Nor before 5.17, with no reasons at all.
        let btf = parse_blob("510", &btf_blob(&[], &["btf_trace_kfree_skb"]));
        assert!(btf.drop_reasons().is_err());
        assert_eq!(btf.qdisc_drop_code(), 0);
    }

    #[test]
    fn reason_lists_name_the_bad_item() {
        let r = Reasons::from_pairs([
            (1, "SKB_CONSUMED".into()),
            (2, "NOT_SPECIFIED".into()),
            (3, "NO_SOCKET".into()),
        ]);
        let e = r
            .parse_list("--exclude-reason", &["skb_consumed".into()])
            .unwrap_err();
        assert!(e.to_string().contains("never a drop"), "{e}");
        assert_eq!(
            r.parse_list("--reason", &["no_socket,NOT_SPECIFIED".into()])
                .unwrap(),
            vec![3, 2]
        );
        let e = r
            .parse_list("--reason", &["NO_SOCKET,BOGUS".into()])
            .unwrap_err();
        assert!(e.to_string().contains("'BOGUS'"), "{e}");
        for bad in ["", "NO_SOCKET,,NOT_SPECIFIED", "NO_SOCKET,"] {
            let e = r.parse_list("--reason", &[bad.into()]).unwrap_err();
            assert!(e.to_string().contains("empty reason in --reason"), "{e}");
        }
    }
}
