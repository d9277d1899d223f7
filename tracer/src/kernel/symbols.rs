//! Kernel text addresses to `function+0xoffset`, from /proc/kallsyms.

use std::io::{BufRead, BufReader, Read};

/// Offsets beyond this are not inside the symbol before them.
const MAX_FUNCTION_SIZE: u64 = 0x10000;

pub struct Symbols {
    /// (address, name), sorted by address; text symbols only.
    syms: Vec<(u64, String)>,
}

impl Symbols {
    /// Reads /proc/kallsyms. When kptr_restrict hides addresses (all zero)
    /// the table is empty and locations print as raw addresses.
    pub fn load() -> Self {
        match std::fs::File::open("/proc/kallsyms") {
            Ok(f) => Self::parse(f),
            Err(_) => Symbols { syms: Vec::new() },
        }
    }

    pub fn parse(r: impl Read) -> Self {
        let mut syms = Vec::with_capacity(200_000);
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            let mut it = line.split_ascii_whitespace();
            let (Some(addr), Some(kind), Some(name)) = (it.next(), it.next(), it.next()) else {
                continue;
            };
            if !matches!(kind, "t" | "T" | "w" | "W") {
                continue;
            }
            let Ok(addr) = u64::from_str_radix(addr, 16) else {
                continue;
            };
            if addr == 0 {
                continue;
            }
            syms.push((addr, name.to_string()));
        }
        syms.sort_unstable_by_key(|s| s.0);
        Symbols { syms }
    }

    pub fn empty() -> Self {
        Symbols { syms: Vec::new() }
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
        let (start, name) = &self.syms[i - 1];
        Some((name.as_str(), addr - start))
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
        assert!(s.syms.iter().any(|(_, n)| n == "ip_rcv_finish_core"));
    }
}
