//! `-w FILE` / `-w -`: the dropped packets as pcapng, for Wireshark and
//! tshark. Each packet is one Enhanced Packet Block:
//!
//! - bytes: copied in the kernel from the MAC header (link type Ethernet)
//!   or, when the packet has no Ethernet header, the IP header (raw IP,
//!   101), up to `--snaplen`; `orig_len` is the packet's full length;
//! - interface: one Interface Description Block per (netns, device, link
//!   type), named `netns/ifname` (`host/eth0`, `web-1/eth0`), described
//!   with the netns inode and ifindex;
//! - `opt_comment`s (Wireshark's `frame.comment`): the reason, location,
//!   netns and device; each verdict proven at this drop; storm counts;
//! - a copyable custom string option (code 2988) holding the event's JSON
//!   as `-o json` prints it, under PEN 32473 (IANA's documentation
//!   number: tracer has no enterprise number of its own).
//!
//! Storms: drops the kernel counted by key instead of sending (see
//! `aggregate`) have no bytes. Their counts become a comment
//! (`storm: N more drops ...`) on the next packet written; counts left at
//! the end go into the comment of an Interface Statistics Block.

use crate::events::aggregate::AggregateRecord;
use crate::events::decode::Extra;
use crate::events::record::DropRecord;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use tracer_abi::{LINK_ETHERNET, LINK_RAW_IP};

/// Copyable custom string option (pcapng spec).
pub const CUSTOM_UTF8_COPYABLE: u16 = 2988;
/// IANA's Private Enterprise Number for documentation (RFC 5612).
pub const PEN: u32 = 32473;
/// An option's length is a u16; longer JSON is left out, never cut.
const MAX_OPTION: usize = 65000;

const SHB: u32 = 0x0A0D_0D0A;
const IDB: u32 = 1;
const ISB: u32 = 5;
const EPB: u32 = 6;
const OPT_END: u16 = 0;
const OPT_COMMENT: u16 = 1;
const IF_NAME: u16 = 2;
const IF_DESCRIPTION: u16 = 3;
const IF_TSRESOL: u16 = 9;
const SHB_USERAPPL: u16 = 4;
const ISB_USRDELIV: u16 = 8;
/// pcapng link types.
const LINKTYPE_ETHERNET: u16 = 1;
const LINKTYPE_RAW: u16 = 101;

/// The options of one block, encoded (pcapng §3.5: code, length, value
/// padded to 32 bits; the list ends with opt_endofopt).
#[derive(Default)]
struct Options(Vec<u8>);

impl Options {
    fn add(&mut self, code: u16, value: &[u8]) {
        let len = value.len().min(u16::MAX as usize);
        self.0.extend_from_slice(&code.to_le_bytes());
        self.0.extend_from_slice(&(len as u16).to_le_bytes());
        self.0.extend_from_slice(&value[..len]);
        self.0.resize(self.0.len().next_multiple_of(4), 0);
    }

    fn text(&mut self, code: u16, s: &str) {
        self.add(code, s.as_bytes());
    }

    fn custom_text(&mut self, code: u16, pen: u32, s: &str) {
        let mut v = pen.to_le_bytes().to_vec();
        v.extend_from_slice(s.as_bytes());
        self.add(code, &v);
    }

    fn finish(mut self) -> Vec<u8> {
        if !self.0.is_empty() {
            self.0.extend_from_slice(&OPT_END.to_le_bytes());
            self.0.extend_from_slice(&0u16.to_le_bytes());
        }
        self.0
    }
}

/// Writes one block: type, total length, body (padded), options, length.
fn block(w: &mut dyn Write, kind: u32, body: &[u8], opts: Options) -> std::io::Result<()> {
    let opts = opts.finish();
    let padded = body.len().next_multiple_of(4);
    let total = (12 + padded + opts.len()) as u32;
    let mut b = Vec::with_capacity(total as usize);
    b.extend_from_slice(&kind.to_le_bytes());
    b.extend_from_slice(&total.to_le_bytes());
    b.extend_from_slice(body);
    b.resize(8 + padded, 0);
    b.extend_from_slice(&opts);
    b.extend_from_slice(&total.to_le_bytes());
    w.write_all(&b)
}

pub struct PcapSink {
    w: Box<dyn Write + Send>,
    /// (netns, ifindex, link type) to interface id.
    ifaces: HashMap<(u32, i32, u32), u32>,
    /// Storm counts and verdicts waiting for the next packet.
    notes: Vec<String>,
    pub packets: u64,
    /// The file is stdout (`-w -`).
    pub stdout: bool,
}

impl PcapSink {
    /// `-` is stdout; a file is opened by the rules of `sinks::file`.
    pub fn create(path: &Path, existing: crate::sinks::file::Existing) -> anyhow::Result<Self> {
        let stdout = path.as_os_str() == "-";
        let out: Box<dyn Write + Send> = if stdout {
            Box::new(std::io::BufWriter::with_capacity(
                1 << 16,
                std::io::stdout(),
            ))
        } else {
            let f = crate::sinks::file::open(path, existing)?;
            Box::new(std::io::BufWriter::with_capacity(1 << 16, f))
        };
        Self::to_writer(out, stdout)
    }

    /// Starts the file: a Section Header Block (little-endian, version 1.0).
    pub fn to_writer(mut out: Box<dyn Write + Send>, stdout: bool) -> anyhow::Result<Self> {
        let mut body = Vec::new();
        body.extend_from_slice(&0x1A2B_3C4Du32.to_le_bytes());
        body.extend_from_slice(&1u16.to_le_bytes());
        body.extend_from_slice(&0u16.to_le_bytes());
        body.extend_from_slice(&(-1i64).to_le_bytes());
        let mut o = Options::default();
        o.text(
            SHB_USERAPPL,
            &format!("tracer {} (kernel packet drops)", env!("CARGO_PKG_VERSION")),
        );
        block(&mut out, SHB, &body, o).map_err(|e| anyhow::anyhow!("cannot write pcapng: {e}"))?;
        Ok(PcapSink {
            w: out,
            ifaces: HashMap::new(),
            notes: Vec::new(),
            packets: 0,
            stdout,
        })
    }

    fn iface(&mut self, netns: u32, ifindex: i32, link: u32, name: String) -> std::io::Result<u32> {
        if let Some(id) = self.ifaces.get(&(netns, ifindex, link)) {
            return Ok(*id);
        }
        let id = self.ifaces.len() as u32;
        let linktype = if link == LINK_ETHERNET {
            LINKTYPE_ETHERNET
        } else {
            LINKTYPE_RAW
        };
        let mut body = Vec::new();
        body.extend_from_slice(&linktype.to_le_bytes());
        body.extend_from_slice(&0u16.to_le_bytes());
        body.extend_from_slice(&0u32.to_le_bytes()); // snaplen: no limit
        let mut o = Options::default();
        o.text(IF_NAME, &name);
        o.text(
            IF_DESCRIPTION,
            &format!("netns inode {netns}, ifindex {ifindex}"),
        );
        o.add(IF_TSRESOL, &[9]); // nanoseconds
        block(&mut self.w, IDB, &body, o)?;
        self.ifaces.insert((netns, ifindex, link), id);
        Ok(id)
    }

    /// One dropped packet. `netns` is its label (name, `host`, or inode);
    /// `verdicts` the verdicts proven at this drop, one line each.
    pub fn packet(
        &mut self,
        rec: &DropRecord,
        extra: Option<&Extra>,
        netns: &str,
        verdicts: &[String],
    ) -> std::io::Result<()> {
        let dev = crate::sinks::dev_label(rec);
        let ifname = match (&rec.ifname, rec.ifindex) {
            (Some(n), _) => n.clone(),
            (None, 0) => "-".to_string(),
            (None, i) => format!("if{i}"),
        };
        let (link, data, orig) = match extra {
            Some(x) if x.hdr.link == LINK_ETHERNET || x.hdr.link == LINK_RAW_IP => (
                x.hdr.link,
                x.data.as_slice(),
                x.hdr.orig_len.max(x.data.len() as u32),
            ),
            _ => (LINK_RAW_IP, &[][..], rec.len),
        };
        let id = self.iface(rec.netns, rec.ifindex, link, format!("{netns}/{ifname}"))?;
        let reason = crate::sinks::reason_label(rec);
        let mut o = Options::default();
        o.text(
            OPT_COMMENT,
            &format!("{reason} at {} in netns {netns} dev {dev}", rec.location),
        );
        for v in verdicts {
            o.text(OPT_COMMENT, v);
        }
        for n in self.notes.drain(..) {
            o.text(OPT_COMMENT, &n);
        }
        if let Ok(json) = serde_json::to_string(rec) {
            if json.len() <= MAX_OPTION {
                o.custom_text(CUSTOM_UTF8_COPYABLE, PEN, &json);
            }
        }
        let mut body = Vec::with_capacity(20 + data.len());
        body.extend_from_slice(&id.to_le_bytes());
        body.extend_from_slice(&((rec.ts_ns >> 32) as u32).to_le_bytes());
        body.extend_from_slice(&(rec.ts_ns as u32).to_le_bytes());
        body.extend_from_slice(&(data.len() as u32).to_le_bytes());
        body.extend_from_slice(&orig.to_le_bytes());
        body.extend_from_slice(data);
        block(&mut self.w, EPB, &body, o)?;
        self.packets += 1;
        Ok(())
    }

    /// A comment for the next packet written (or the statistics block).
    pub fn note(&mut self, s: String) {
        self.notes.push(s);
    }

    /// Storm counts: a comment on the next packet written.
    pub fn aggregates(
        &mut self,
        recs: &[AggregateRecord],
        label: impl Fn(&AggregateRecord) -> String,
    ) {
        for r in recs {
            let d = &r.as_drop;
            let flow = match (d.src, d.dst) {
                (Some(s), Some(t)) if !s.is_unspecified() => format!(" {s} > {t}"),
                _ => String::new(),
            };
            self.notes.push(format!(
                "storm: {} more drops of {} at {} in netns {} dev {}{}{} counted in the kernel, not captured",
                r.count,
                crate::sinks::reason_label(d),
                d.location,
                label(r),
                crate::sinks::dev_label(d),
                d.proto.map(|p| format!(" {}", p.to_string().to_uppercase())).unwrap_or_default(),
                flow,
            ));
        }
    }

    /// Storm counts that no packet followed go into an Interface
    /// Statistics Block comment; then everything is flushed.
    pub fn finish(&mut self) -> std::io::Result<()> {
        if !self.notes.is_empty() {
            let id = match self.ifaces.values().min() {
                Some(id) => *id,
                None => self.iface(0, 0, LINK_RAW_IP, "tracer/storms".to_string())?,
            };
            let mut o = Options::default();
            for n in self.notes.drain(..) {
                o.text(OPT_COMMENT, &n);
            }
            o.add(ISB_USRDELIV, &self.packets.to_le_bytes());
            let now = crate::kernel::clock::wall_now_ns();
            let mut body = Vec::new();
            body.extend_from_slice(&id.to_le_bytes());
            body.extend_from_slice(&((now >> 32) as u32).to_le_bytes());
            body.extend_from_slice(&(now as u32).to_le_bytes());
            block(&mut self.w, ISB, &body, o)?;
        }
        self.flush()
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.w.flush()
    }
}
