//! The recursive-descent parser, which emits the postfix program as it
//! goes (see the grammar in the module above).

use super::error;
use super::lex::{Tok, Token};
use super::net::{bad_address, partial_v4, prefix_mask, Net};
use super::ports::{port_leaf, service_port, Service};
use super::quals::{
    all_digits, is_keyword, looks_like_value, op, Dir, Kind, Proto, Quals, UNSUPPORTED,
};
use super::sets::{fold_or, Members};
use super::FilterError;
use std::net::{IpAddr, Ipv4Addr};
use tracer_abi::filter::{
    FilterOp, DIR_ANY, DIR_DST, DIR_SRC, OP_AND, OP_NOT, OP_OR, OP_PROTO, OP_PROTOCHAIN,
};
use tracer_abi::{FAMILY_V4, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP};

pub(super) struct Parser {
    toks: Vec<Token>,
    pos: usize,
    pub(super) ops: Vec<FilterOp>,
    /// The members of the set ops, by their `value` (see `sets`).
    pub(super) sets: Vec<Members>,
    /// Qualifiers of the latest primitive, for value lists.
    last: Option<Quals>,
    /// Open parentheses, to tell "unexpected ')'" from a missing operand.
    depth: usize,
}

pub(super) type PResult<T> = Result<T, FilterError>;

impl Parser {
    pub(super) fn new(toks: Vec<Token>) -> Parser {
        Parser {
            toks,
            pos: 0,
            ops: Vec::new(),
            sets: Vec::new(),
            last: None,
            depth: 0,
        }
    }

    pub(super) fn peek(&self) -> &Token {
        &self.toks[self.pos]
    }

    pub(super) fn peek_word(&self, offset: usize) -> Option<String> {
        self.toks
            .get(self.pos + offset)
            .filter(|t| t.tok == Tok::Word)
            .map(|t| t.text.to_ascii_lowercase())
    }

    /// "expected X after 'prev', found 'tok'" pointing at token `idx`.
    pub(super) fn expected(&self, idx: usize, what: &str) -> FilterError {
        let t = &self.toks[idx];
        let mut msg = format!("expected {what}");
        if idx > 0 {
            msg += &format!(" after '{}'", self.toks[idx - 1].text);
        }
        if t.tok != Tok::End {
            msg += &format!(", found '{}'", t.text);
        }
        error(t.col, msg)
    }

    /// `and` and `or` at one level, left to right, as libpcap does.
    pub(super) fn parse_or(&mut self) -> PResult<()> {
        let lhs = self.ops.len();
        // Where the right side of the last OR is.
        let mut prev_rhs: Option<usize> = None;
        self.parse_unary()?;
        loop {
            let code = match self.peek().tok {
                Tok::And => OP_AND,
                Tok::Or => OP_OR,
                _ => break,
            };
            self.pos += 1;
            let rhs = self.ops.len();
            self.parse_unary()?;
            // `port 1 or 2 or ...`, `host a or b`: tests of one field
            // become one set op, which the verifier walks once instead of
            // once per value (see `sets`). The left side is the whole left
            // operand, or (OR being associative) the right side of the OR
            // just before.
            if code == OP_OR {
                let sets = &mut self.sets;
                if fold_or(&mut self.ops, lhs..rhs, rhs, sets)
                    || prev_rhs.is_some_and(|t| fold_or(&mut self.ops, t..rhs - 1, rhs, sets))
                {
                    continue;
                }
            }
            self.ops.push(op(code));
            prev_rhs = (code == OP_OR).then_some(rhs);
        }
        Ok(())
    }

    pub(super) fn parse_unary(&mut self) -> PResult<()> {
        if self.peek().tok != Tok::Not {
            return self.parse_primary();
        }
        self.pos += 1;
        self.parse_unary()?;
        // The operand's program ends with its own last op, so a trailing
        // NOT there means "not not x": cancel it and save two kernel ops.
        if self.ops.last().is_some_and(|o| o.code == OP_NOT) {
            self.ops.pop();
        } else {
            self.ops.push(op(OP_NOT));
        }
        Ok(())
    }

    pub(super) fn parse_primary(&mut self) -> PResult<()> {
        let t = self.peek().clone();
        match t.tok {
            Tok::LParen => {
                self.pos += 1;
                if self.peek().tok == Tok::RParen {
                    return Err(error(t.col, "empty parentheses"));
                }
                self.depth += 1;
                self.parse_or()?;
                self.depth -= 1;
                let close = self.peek();
                match close.tok {
                    Tok::RParen => {
                        self.pos += 1;
                        Ok(())
                    }
                    Tok::End => Err(error(
                        close.col,
                        format!("unclosed '(' opened at column {}", t.col),
                    )),
                    _ => Err(error(
                        close.col,
                        format!("expected 'and', 'or' or ')' before '{}'", close.text),
                    )),
                }
            }
            Tok::RParen if self.depth == 0 => Err(error(t.col, "unexpected ')'")),
            Tok::Word => self.parse_word(&t),
            _ => Err(self.expected(self.pos, "an expression")),
        }
    }

    pub(super) fn parse_word(&mut self, t: &Token) -> PResult<()> {
        let word = t.text.to_ascii_lowercase();
        if let Some(proto) = Proto::from_word(&word) {
            self.pos += 1;
            let qualifies = matches!(
                self.peek_word(0).as_deref(),
                Some(
                    "src" | "dst" | "host" | "net" | "port" | "portrange" | "proto" | "protochain"
                )
            );
            if qualifies {
                return self.parse_qualified(Some(proto), t.col);
            }
            self.ops.push(proto.op());
            // A lone protocol has no value to repeat: `tcp or 80` is an error,
            // not `tcp or tcp 80`.
            self.last = None;
            return Ok(());
        }
        match word.as_str() {
            "src" | "dst" | "host" | "net" | "port" | "portrange" | "proto" | "protochain" => {
                self.parse_qualified(None, t.col)
            }
            "mask" => Err(error(
                t.col,
                "'mask' must follow a network, as in 'net 10.0.0.0 mask 255.0.0.0'",
            )),
            _ if looks_like_value(&t.text) => match self.last {
                Some(q) => {
                    let idx = self.pos;
                    self.pos += 1;
                    self.emit_value(q, idx)
                }
                None => Err(error(t.col, needs_qualifier(&t.text))),
            },
            _ if UNSUPPORTED.contains(&word.as_str()) => Err(error(
                t.col,
                format!(
                    "tcpdump's '{}' is not supported here; use host, net, port, portrange, \
                     proto, protochain, tcp, udp, sctp, icmp, icmp6, ip or ip6",
                    t.text
                ),
            )),
            _ => Err(error(t.col, format!("unknown word '{}'", t.text))),
        }
    }

    /// `[dqual] [kind] VALUE`, after an optional protocol qualifier at
    /// column `proto_col`.
    pub(super) fn parse_qualified(
        &mut self,
        proto: Option<Proto>,
        proto_col: usize,
    ) -> PResult<()> {
        let dir_col = self.peek().col;
        let dir = self.parse_dir();
        let kind_tok = self.peek().clone();
        let kind = match self.peek_word(0).as_deref() {
            Some("host") => Kind::Host,
            Some("net") => Kind::Net,
            Some("port") => Kind::Port,
            Some("portrange") => Kind::PortRange,
            Some("proto") => Kind::Proto,
            Some("protochain") => Kind::Protochain,
            _ => Kind::Addr,
        };
        if kind != Kind::Addr {
            self.pos += 1;
        }
        if matches!(kind, Kind::Proto | Kind::Protochain) {
            let word = &kind_tok.text;
            if dir.is_some() {
                return Err(error(dir_col, format!("'{word}' takes no direction")));
            }
            if let Some(p) = proto.filter(|p| p.family().is_none()) {
                return Err(error(
                    proto_col,
                    format!("'{word}' can only follow 'ip' or 'ip6', not '{}'", p.name()),
                ));
            }
        }
        if matches!(kind, Kind::Port | Kind::PortRange) {
            if let Some(p @ (Proto::Icmp | Proto::Icmp6)) = proto {
                return Err(error(
                    kind_tok.col,
                    format!(
                        "'{}' only applies to tcp, udp and sctp, not '{}'",
                        kind_tok.text,
                        p.name()
                    ),
                ));
            }
        }
        let q = Quals {
            proto,
            dir: dir.unwrap_or(Dir::Any),
            kind,
        };
        let idx = self.pos;
        let v = &self.toks[idx];
        // Protocol names are keywords but valid after 'proto'.
        let takes_proto = matches!(kind, Kind::Proto | Kind::Protochain);
        if v.tok != Tok::Word || (!takes_proto && is_keyword(v)) {
            return Err(self.expected(idx, kind.what()));
        }
        self.pos += 1;
        self.emit_value(q, idx)?;
        self.last = Some(q);
        Ok(())
    }

    pub(super) fn parse_dir(&mut self) -> Option<Dir> {
        let first = match self.peek_word(0).as_deref() {
            Some("src") => Dir::Src,
            Some("dst") => Dir::Dst,
            _ => return None,
        };
        self.pos += 1;
        // `src or dst` / `src and dst` only when the other direction follows
        // the operator; `src` itself needs a value, so nothing else can mean
        // an operator here and the value check will report it.
        let other = if first == Dir::Src { "dst" } else { "src" };
        let op = self.peek().tok;
        if matches!(op, Tok::Or | Tok::And) && self.peek_word(1).as_deref() == Some(other) {
            self.pos += 2;
            return Some(if op == Tok::Or { Dir::Any } else { Dir::Both });
        }
        Some(first)
    }

    /// Parses the value at token `idx` for qualifiers `q` and emits the
    /// primitive. May consume a following `mask MASK`.
    pub(super) fn emit_value(&mut self, q: Quals, idx: usize) -> PResult<()> {
        let v = self.toks[idx].clone();
        // The one protocol a service name's port is for (libpcap's).
        let mut only = None;
        let (leaf, family) = match q.kind {
            Kind::Host => {
                let n = self.parse_host(idx)?;
                (n.leaf(), Some(n.family))
            }
            Kind::Net => {
                let n = self.parse_net(idx)?;
                (n.leaf(), Some(n.family))
            }
            Kind::Addr if v.text.contains('/') => {
                let n = self.parse_net(idx)?;
                (n.leaf(), Some(n.family))
            }
            Kind::Addr => {
                let Ok(ip) = v.text.parse::<IpAddr>() else {
                    let mut e = self.expected(idx, "an address");
                    if all_digits(&v.text) {
                        e.message += &format!(" (for a port write 'port {}')", v.text);
                    } else if looks_like_value(&v.text) {
                        e.message = bad_address(&v.text);
                    }
                    return Err(e);
                };
                let n = Net::host(ip);
                (n.leaf(), Some(n.family))
            }
            Kind::Port => {
                let p = self.parse_port(idx)?;
                only = p.only;
                (port_leaf(p.port, p.port), None)
            }
            Kind::PortRange => {
                let (a, b) = self.parse_range(idx)?;
                (port_leaf(a, b), None)
            }
            Kind::Proto | Kind::Protochain => {
                let p = self.parse_proto(idx)?;
                let code = if q.kind == Kind::Proto {
                    OP_PROTO
                } else {
                    OP_PROTOCHAIN
                };
                (
                    FilterOp {
                        value: p as u16,
                        ..op(code)
                    },
                    None,
                )
            }
        };

        // `ip host 10.0.0.1`: OP_NET already checks the family, so the
        // qualifier costs nothing, unless it contradicts the address.
        let mut qualifier = q.proto.map(Proto::op);
        if let Some(p) = only {
            let name = if p == IPPROTO_TCP { "tcp" } else { "udp" };
            match q.proto {
                None => qualifier = Proto::from_word(name).map(Proto::op),
                Some(Proto::Ip | Proto::Ip6) => {}
                Some(want) if want.name() == name => {}
                Some(want) => {
                    return Err(error(
                        v.col,
                        format!("port '{}' is {name}, not {}", v.text, want.name()),
                    ))
                }
            }
        }
        if let (Some(p), Some(fam)) = (q.proto, family) {
            if let Some(want) = p.family() {
                if want != fam {
                    let (is, wants, use_) = if fam == FAMILY_V4 {
                        ("IPv4", "IPv6", "ip")
                    } else {
                        ("IPv6", "IPv4", "ip6")
                    };
                    return Err(error(
                        v.col,
                        format!(
                            "'{}' is {is}, but '{}' asks for {wants}; use '{use_}'",
                            v.text,
                            p.name()
                        ),
                    ));
                }
                qualifier = None;
            }
        }

        let has_qualifier = qualifier.is_some();
        self.ops.extend(qualifier);
        let with_dir = |dir| FilterOp { dir, ..leaf };
        match q.dir {
            Dir::Any => self.ops.push(with_dir(DIR_ANY)),
            Dir::Src => self.ops.push(with_dir(DIR_SRC)),
            Dir::Dst => self.ops.push(with_dir(DIR_DST)),
            Dir::Both => {
                self.ops.push(with_dir(DIR_SRC));
                self.ops.push(with_dir(DIR_DST));
                self.ops.push(op(OP_AND));
            }
        }
        if has_qualifier {
            self.ops.push(op(OP_AND));
        }
        Ok(())
    }

    pub(super) fn parse_host(&self, idx: usize) -> PResult<Net> {
        let v = &self.toks[idx];
        if let Ok(ip) = v.text.parse::<IpAddr>() {
            return Ok(Net::host(ip));
        }
        if v.text.contains('/') {
            return Err(error(
                v.col,
                format!(
                    "'host' takes a single address; for a network write 'net {}'",
                    v.text
                ),
            ));
        }
        if looks_like_value(&v.text) {
            return Err(error(v.col, bad_address(&v.text)));
        }
        Err(self.expected(idx, "an address"))
    }

    /// `ADDR/LEN`, `ADDR`, abbreviated `10.1`, or `ADDR mask MASK` (IPv4).
    pub(super) fn parse_net(&mut self, idx: usize) -> PResult<Net> {
        let v = self.toks[idx].clone();
        let (addr_text, len_text) = match v.text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (v.text.as_str(), None),
        };
        let (mut net, implied) = if let Ok(ip) = addr_text.parse::<IpAddr>() {
            let n = Net::host(ip);
            (n, if n.family == FAMILY_V4 { 32 } else { 128 })
        } else if let Some((b, len)) = partial_v4(addr_text) {
            (Net::v4(b, [0; 4]), len)
        } else if looks_like_value(addr_text) {
            return Err(error(v.col, bad_address(addr_text)));
        } else {
            return Err(self.expected(idx, "a network"));
        };
        let max = if net.family == FAMILY_V4 { 32 } else { 128 };

        let mut spelled = None;
        if let Some(l) = len_text {
            let col = v.col + addr_text.chars().count() + 1;
            let len = match l.parse::<u32>() {
                Ok(len) if all_digits(l) && len <= max => len,
                _ => {
                    let ip = if max == 32 { "IPv4" } else { "IPv6" };
                    return Err(error(
                        col,
                        format!("bad prefix length '{l}': {ip} takes 0-{max}"),
                    ));
                }
            };
            net.mask = prefix_mask(len);
        } else if self.peek_word(0).as_deref() == Some("mask") {
            let mask_col = self.peek().col;
            self.pos += 1;
            if net.family != FAMILY_V4 {
                return Err(error(
                    mask_col,
                    "'mask' only works with IPv4; write the IPv6 network as ADDR/LEN",
                ));
            }
            let m = match self.peek_word(0).map(|w| w.parse::<Ipv4Addr>()) {
                Some(Ok(m)) => m,
                _ => return Err(self.expected(self.pos, "a netmask like 255.255.0.0")),
            };
            self.pos += 1;
            net.mask = Net::v4([0; 4], m.octets()).mask;
            spelled = Some(format!(" mask {m}"));
        } else {
            net.mask = prefix_mask(implied);
        }

        if net.addr.iter().zip(&net.mask).any(|(a, m)| a & !m != 0) {
            let masked: [u8; 16] = std::array::from_fn(|i| net.addr[i] & net.mask[i]);
            let suffix = spelled.unwrap_or_else(|| {
                let len: u32 = net.mask.iter().map(|m| m.count_ones()).sum();
                format!("/{len}")
            });
            return Err(error(
                v.col,
                format!(
                    "non-network bits set in '{}'; the network is {}{suffix}",
                    v.text,
                    Net::display_addr(&masked, net.family)
                ),
            ));
        }
        Ok(net)
    }

    pub(super) fn port_number(&self, s: &str, col: usize) -> PResult<u16> {
        // Digits only: `u16::from_str` would also take a leading '+'.
        match s.parse::<u64>() {
            Ok(n) if n <= 65535 => Ok(n as u16),
            _ => Err(error(col, format!("port {s} is out of range (0-65535)"))),
        }
    }

    /// A port as tcpdump takes it: decimal, hex (`0x50`) or a service
    /// name from /etc/services (`http`, `domain`).
    /// A name's protocol restriction comes with it (see `Service`).
    pub(super) fn port_value(&self, s: &str, col: usize) -> Option<PResult<Service>> {
        let any = |port| Service { port, only: None };
        if all_digits(s) {
            return Some(self.port_number(s, col).map(any));
        }
        if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            return Some(match u64::from_str_radix(hex, 16) {
                Ok(n) if n <= 65535 && !hex.is_empty() => Ok(any(n as u16)),
                _ => Err(error(col, format!("port {s} is out of range (0-65535)"))),
            });
        }
        service_port(s).map(Ok)
    }

    pub(super) fn parse_port(&self, idx: usize) -> PResult<Service> {
        let v = &self.toks[idx];
        if let Some(p) = self.port_value(&v.text, v.col) {
            return p;
        }
        let mut e = self.expected(idx, "a port number");
        if let Some((a, b)) = v.text.split_once('-') {
            if all_digits(a) && all_digits(b) {
                e.message += &format!(" (for a range write 'portrange {}')", v.text);
            }
        }
        Err(e)
    }

    /// `A-B` in either order (tcpdump swaps them), or one port: each end
    /// a number, hex or a service name.
    pub(super) fn parse_range(&self, idx: usize) -> PResult<(u16, u16)> {
        let v = &self.toks[idx];
        let (a, b) = v.text.split_once('-').unwrap_or((&v.text, &v.text));
        let b_col = if a.len() == v.text.len() {
            v.col
        } else {
            v.col + a.chars().count() + 1
        };
        let (Some(lo), Some(hi)) = (self.port_value(a, v.col), self.port_value(b, b_col)) else {
            return Err(self.expected(idx, Kind::PortRange.what()));
        };
        let (lo, hi) = (lo?.port, hi?.port);
        Ok((lo.min(hi), lo.max(hi)))
    }

    pub(super) fn parse_proto(&self, idx: usize) -> PResult<u8> {
        let v = &self.toks[idx];
        // tcpdump needs `proto \tcp` because `tcp` is a keyword there; take both.
        let name = v.text.strip_prefix('\\').unwrap_or(&v.text);
        match name.to_ascii_lowercase().as_str() {
            "tcp" => Ok(IPPROTO_TCP),
            "udp" => Ok(IPPROTO_UDP),
            "sctp" => Ok(IPPROTO_SCTP),
            "icmp" => Ok(IPPROTO_ICMP),
            "icmp6" | "icmpv6" => Ok(IPPROTO_ICMPV6),
            n if all_digits(n) => match n.parse::<u64>() {
                Ok(p) if p <= 255 => Ok(p as u8),
                _ => Err(error(
                    v.col,
                    format!("protocol number {n} is out of range (0-255)"),
                )),
            },
            _ => Err(self.expected(idx, Kind::Proto.what())),
        }
    }
}

/// For a value with nothing before it to qualify it: suggest the primitive
/// its shape suggests.
pub(super) fn needs_qualifier(text: &str) -> String {
    let kind = if text.starts_with('\\') {
        "proto"
    } else if text.contains('/') {
        "net"
    } else if text.contains(['.', ':']) {
        "host"
    } else if text.contains('-') {
        "portrange"
    } else {
        "port"
    };
    format!("'{text}' needs a qualifier, as in '{kind} {text}'")
}
