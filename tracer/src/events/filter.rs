//! Compiles a tcpdump-like filter expression into the postfix program that
//! the kernel runs (`tracer_abi::filter`).
//!
//! The compiler emits postfix directly while parsing (recursive descent):
//! operands first, then `OP_AND` / `OP_OR` / `OP_NOT`. Userspace evaluates
//! compiled filters with the very `eval` the eBPF program runs, so a filter
//! that passes the tests here behaves the same in the kernel.
//!
//! # Grammar
//!
//! Keywords are case-insensitive. As in tcpdump (libpcap), `not` binds
//! tightest and `and` / `or` have EQUAL precedence, left-associative:
//! `a or b and c` means `(a or b) and c`. A filter pasted from tcpdump or
//! pwru therefore matches exactly what it matched there.
//!
//! ```text
//! expr    := unary ( ('and' | '&&' | 'or' | '||') unary )*
//! unary   := ('not' | '!') unary | primary
//! primary := '(' expr ')'
//!          | pqual                          -- tcp, udp, icmp, icmp6, ip, ip6 alone
//!          | [pqual] [dqual] kind           -- tcp dst port 53, src net 10.0.0.0/8
//!          | [pqual] dqual ADDR             -- src 10.0.0.1 (host, or net with '/')
//!          | ['ip' | 'ip6'] 'proto' PROTO   -- proto 17, ip6 proto tcp
//!          | VALUE                          -- reuses the previous primitive's qualifiers
//! pqual   := tcp | udp | icmp | icmp6 | ip | ip6
//! dqual   := src | dst | src or dst | dst or src | src and dst | dst and src
//! kind    := host ADDR | net NET | port N | portrange A-B
//! NET     := ADDR/LEN | ADDR | 10.1 (leading octets, /8 each) | ADDR mask MASK
//! PROTO   := 0..=255 | tcp | udp | icmp | icmp6   (a leading '\' is allowed, as in tcpdump)
//! ```
//!
//! A protocol directly followed by a primitive is an implicit `and`:
//! `tcp port 443` is `tcp and port 443`. As in tcpdump, a bare value after an
//! operator reuses every qualifier of the previous primitive, protocol
//! included: `tcp port 80 or 443` is `tcp port 80 or tcp port 443`, and
//! `host 10.0.0.1 and not 10.0.0.2` is `host 10.0.0.1 and not host 10.0.0.2`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use tracer_abi::filter::{
    FilterOp, DIR_ANY, DIR_DST, DIR_SRC, MAX_OPS, OP_AND, OP_FAMILY, OP_NET, OP_NOT, OP_OR,
    OP_PORT, OP_PORTS, OP_PROTO, PORT_SET,
};
use tracer_abi::{
    Flow, FAMILY_V4, FAMILY_V6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_SCTP, IPPROTO_TCP,
    IPPROTO_UDP,
};

/// A compiled filter: the kernel program and the expression it came from.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub ops: Vec<FilterOp>,
    pub text: String,
}

/// Why an expression did not compile, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError {
    /// 1-based character column in the expression.
    pub column: usize,
    pub message: String,
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad filter at column {}: {}", self.column, self.message)
    }
}

impl std::error::Error for FilterError {}

/// Compiles `expr`. An empty or all-whitespace expression gives the empty
/// filter, which matches everything.
pub fn compile(expr: &str) -> Result<Filter, FilterError> {
    let text = expr.trim();
    if text.is_empty() {
        return Ok(Filter::default());
    }
    // Lex the untrimmed text so columns count from the user's first character.
    let mut p = Parser::new(lex(expr)?);
    p.parse_or()?;
    let t = p.peek();
    match t.tok {
        Tok::End => {}
        Tok::RParen => return Err(error(t.col, "unexpected ')'")),
        _ => {
            return Err(error(
                t.col,
                format!("expected 'and' or 'or' before '{}'", t.text),
            ))
        }
    }
    if p.ops.len() > MAX_OPS {
        return Err(error(
            1,
            format!(
                "filter too long: {} operations, the kernel takes at most {MAX_OPS}; \
                 a portrange A-B or a net A/N can replace a list",
                p.ops.len()
            ),
        ));
    }
    Ok(Filter {
        ops: p.ops,
        text: text.to_string(),
    })
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The fixed-size array and length the kernel global takes.
    ///
    /// # Panics
    /// If `ops` was set by hand to more than `MAX_OPS` operations; `compile`
    /// never produces such a filter, and truncating it would silently change
    /// what it matches.
    pub fn to_kernel(&self) -> ([FilterOp; MAX_OPS], u32) {
        assert!(
            self.ops.len() <= MAX_OPS,
            "filter has {} operations, the kernel takes at most {MAX_OPS}",
            self.ops.len()
        );
        let mut ops = [FilterOp::END; MAX_OPS];
        ops[..self.ops.len()].copy_from_slice(&self.ops);
        (ops, self.ops.len() as u32)
    }

    /// Same evaluation as the kernel: calls `tracer_abi::filter::eval` on
    /// `to_kernel()`.
    pub fn matches(&self, flow: &Flow) -> bool {
        let (ops, len) = self.to_kernel();
        tracer_abi::filter::eval(&ops, len, flow, &tracer_abi::filter::Plain)
    }
}

fn error(column: usize, message: impl Into<String>) -> FilterError {
    FilterError {
        column,
        message: message.into(),
    }
}

// ---------------------------------------------------------------- lexer

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tok {
    Word,
    LParen,
    RParen,
    And,
    Or,
    Not,
    End,
}

#[derive(Clone, Debug)]
struct Token {
    tok: Tok,
    /// As the user wrote it, for messages.
    text: String,
    /// 1-based character column.
    col: usize,
}

/// Splits on whitespace and the operator characters. Everything else is
/// one word, so addresses with ':' '/' '.' and ranges with '-' stay whole
/// and the parser decides what they are.
fn lex(expr: &str) -> Result<Vec<Token>, FilterError> {
    let chars: Vec<char> = expr.chars().collect();
    let is_operator = |c: char| matches!(c, '(' | ')' | '!' | '&' | '|');
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let col = i + 1;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let (tok, len) = match c {
            '(' => (Tok::LParen, 1),
            ')' => (Tok::RParen, 1),
            '!' => (Tok::Not, 1),
            '&' | '|' => {
                if chars.get(i + 1) != Some(&c) {
                    let word = if c == '&' { "and" } else { "or" };
                    return Err(error(
                        col,
                        format!("unexpected '{c}'; write '{c}{c}' or '{word}'"),
                    ));
                }
                (if c == '&' { Tok::And } else { Tok::Or }, 2)
            }
            _ => {
                let len = chars[i..]
                    .iter()
                    .take_while(|&&c| !c.is_whitespace() && !is_operator(c))
                    .count();
                let word: String = chars[i..i + len].iter().collect();
                let tok = match word.to_ascii_lowercase().as_str() {
                    "and" => Tok::And,
                    "or" => Tok::Or,
                    "not" => Tok::Not,
                    _ => Tok::Word,
                };
                (tok, len)
            }
        };
        out.push(Token {
            tok,
            text: chars[i..i + len].iter().collect(),
            col,
        });
        i += len;
    }
    // Errors at the end point just past the last character typed.
    let end = out.last().map_or(1, |t| t.col + t.text.chars().count());
    out.push(Token {
        tok: Tok::End,
        text: String::new(),
        col: end,
    });
    Ok(out)
}

// ---------------------------------------------------------------- qualifiers

/// A protocol word: alone it is a primitive, before another primitive it
/// qualifies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    Tcp,
    Udp,
    Sctp,
    Icmp,
    Icmp6,
    Ip,
    Ip6,
}

impl Proto {
    fn from_word(w: &str) -> Option<Proto> {
        Some(match w {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            "sctp" => Proto::Sctp,
            "icmp" => Proto::Icmp,
            "icmp6" => Proto::Icmp6,
            "ip" => Proto::Ip,
            "ip6" => Proto::Ip6,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
            Proto::Icmp => "icmp",
            Proto::Icmp6 => "icmp6",
            Proto::Ip => "ip",
            Proto::Ip6 => "ip6",
        }
    }

    /// The address family `ip` / `ip6` stand for.
    fn family(self) -> Option<u8> {
        match self {
            Proto::Ip => Some(FAMILY_V4),
            Proto::Ip6 => Some(FAMILY_V6),
            _ => None,
        }
    }

    fn op(self) -> FilterOp {
        match self.family() {
            Some(family) => FilterOp {
                value: family as u16,
                ..op(OP_FAMILY)
            },
            None => {
                // tcpdump: `icmp` is `ip proto 1` and `icmp6` is `ip6 proto
                // 58`, each in its own family; `tcp`, `udp` and `sctp` are
                // in either.
                let (proto, family) = match self {
                    Proto::Tcp => (IPPROTO_TCP, 0),
                    Proto::Udp => (IPPROTO_UDP, 0),
                    Proto::Sctp => (IPPROTO_SCTP, 0),
                    Proto::Icmp => (IPPROTO_ICMP, FAMILY_V4),
                    _ => (IPPROTO_ICMPV6, FAMILY_V6),
                };
                FilterOp {
                    value: proto as u16,
                    family,
                    ..op(OP_PROTO)
                }
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    /// No direction, or `src or dst`.
    Any,
    Src,
    Dst,
    /// `src and dst`: two tests joined by `and`.
    Both,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Host,
    Net,
    Port,
    PortRange,
    Proto,
    /// A direction with no kind (`src 10.0.0.1`): the value decides between
    /// host and net, as in tcpdump.
    Addr,
}

impl Kind {
    /// What the value after this kind must be, for "expected ..." messages.
    fn what(self) -> &'static str {
        match self {
            Kind::Host => "an address",
            Kind::Net => "a network",
            Kind::Port => "a port number",
            Kind::PortRange => "a port range like 1000-2000",
            Kind::Proto => "a protocol number or name (tcp, udp, icmp, icmp6)",
            Kind::Addr => "'host', 'net', 'port', 'portrange' or an address",
        }
    }
}

/// Everything a primitive says besides its value; what a bare value in a
/// list like `port 80 or 443` inherits.
#[derive(Clone, Copy, Debug)]
struct Quals {
    proto: Option<Proto>,
    dir: Dir,
    kind: Kind,
}

const KEYWORDS: &[&str] = &[
    "src",
    "dst",
    "host",
    "net",
    "port",
    "portrange",
    "proto",
    "mask",
    "tcp",
    "udp",
    "icmp",
    "icmp6",
    "ip",
    "ip6",
];

/// tcpdump primitives a user may reasonably try; named so the error says
/// "not supported" rather than "unknown".
const UNSUPPORTED: &[&str] = &[
    "ether",
    "arp",
    "rarp",
    "vlan",
    "mpls",
    "less",
    "greater",
    "len",
    "broadcast",
    "multicast",
    "gateway",
    "inbound",
    "outbound",
    "ifname",
    "on",
    "igmp",
    "ah",
    "esp",
];

fn is_keyword(t: &Token) -> bool {
    t.tok == Tok::Word && KEYWORDS.contains(&t.text.to_ascii_lowercase().as_str())
}

/// Whether a word can only be a value: a bare value reuses the previous
/// qualifiers, while any other unknown word is a typo worth reporting as such.
fn looks_like_value(w: &str) -> bool {
    w.starts_with(|c: char| c.is_ascii_digit() || c == '\\') || w.contains(':')
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn op(code: u8) -> FilterOp {
    FilterOp {
        code,
        ..FilterOp::END
    }
}

/// The kernel's view of 16 address bytes: native-endian words of the
/// network-order bytes, so no byte swapping happens on either side.
fn words(b: &[u8; 16]) -> [u32; 4] {
    std::array::from_fn(|i| {
        u32::from_ne_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
    })
}

fn prefix_mask(len: u32) -> [u8; 16] {
    std::array::from_fn(|i| {
        let bits = len.saturating_sub(8 * i as u32).min(8);
        if bits == 0 {
            0
        } else {
            0xffu8 << (8 - bits)
        }
    })
}

/// tcpdump's abbreviated networks: `net 10` is 10.0.0.0/8, `net 10.1` is
/// 10.1.0.0/16. Returns the address and the prefix the octets imply.
fn partial_v4(s: &str) -> Option<([u8; 4], u32)> {
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() > 3 {
        return None;
    }
    let mut b = [0u8; 4];
    for (i, p) in parts.iter().enumerate() {
        if !all_digits(p) || p.len() > 3 {
            return None;
        }
        b[i] = p.parse().ok()?;
    }
    Some((b, 8 * parts.len() as u32))
}

fn bad_address(text: &str) -> String {
    if text.contains(':') {
        format!("bad IPv6 address '{text}'")
    } else {
        format!("bad IPv4 address '{text}'")
    }
}

/// An address family and 16 bytes, the form the kernel compares.
#[derive(Clone, Copy)]
struct Net {
    family: u8,
    addr: [u8; 16],
    mask: [u8; 16],
}

impl Net {
    fn host(ip: IpAddr) -> Net {
        match ip {
            IpAddr::V4(a) => Net::v4(a.octets(), [0xff; 4]),
            IpAddr::V6(a) => Net {
                family: FAMILY_V6,
                addr: a.octets(),
                mask: [0xff; 16],
            },
        }
    }

    fn v4(addr: [u8; 4], mask: [u8; 4]) -> Net {
        let mut n = Net {
            family: FAMILY_V4,
            addr: [0; 16],
            mask: [0; 16],
        };
        n.addr[..4].copy_from_slice(&addr);
        n.mask[..4].copy_from_slice(&mask);
        n
    }

    fn display_addr(b: &[u8; 16], family: u8) -> String {
        if family == FAMILY_V4 {
            Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string()
        } else {
            Ipv6Addr::from(*b).to_string()
        }
    }

    fn leaf(&self) -> FilterOp {
        FilterOp {
            family: self.family,
            addr: words(&self.addr),
            mask: words(&self.mask),
            ..op(OP_NET)
        }
    }
}

// ---------------------------------------------------------------- parser

struct Parser {
    toks: Vec<Token>,
    pos: usize,
    ops: Vec<FilterOp>,
    /// Qualifiers of the latest primitive, for value lists.
    last: Option<Quals>,
    /// Open parentheses, to tell "unexpected ')'" from a missing operand.
    depth: usize,
}

type PResult<T> = Result<T, FilterError>;

impl Parser {
    fn new(toks: Vec<Token>) -> Parser {
        Parser {
            toks,
            pos: 0,
            ops: Vec::new(),
            last: None,
            depth: 0,
        }
    }

    fn peek(&self) -> &Token {
        &self.toks[self.pos]
    }

    fn peek_word(&self, offset: usize) -> Option<String> {
        self.toks
            .get(self.pos + offset)
            .filter(|t| t.tok == Tok::Word)
            .map(|t| t.text.to_ascii_lowercase())
    }

    /// "expected X after 'prev', found 'tok'" pointing at token `idx`.
    fn expected(&self, idx: usize, what: &str) -> FilterError {
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
    fn parse_or(&mut self) -> PResult<()> {
        let lhs = self.ops.len();
        // Where the right side of the last OR is, when it was one op.
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
            let single = self.ops.len() == rhs + 1;
            // `port 1 or 2 or ...`: two port ops of the same direction
            // become one port-set op, which the verifier walks once instead
            // of once per port. Either the left side is that one op, or
            // (OR being associative) the right side of the OR just before.
            if code == OP_OR && single {
                let target = if rhs == lhs + 1 {
                    Some(lhs)
                } else {
                    prev_rhs.filter(|&i| i + 2 == rhs)
                };
                if let Some(i) = target {
                    if let Some(set) = merge_ports(&self.ops[i], &self.ops[rhs]) {
                        self.ops[i] = set;
                        self.ops.truncate(rhs);
                        continue;
                    }
                }
            }
            self.ops.push(op(code));
            prev_rhs = (code == OP_OR && single).then_some(rhs);
        }
        Ok(())
    }

    fn parse_unary(&mut self) -> PResult<()> {
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

    fn parse_primary(&mut self) -> PResult<()> {
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

    fn parse_word(&mut self, t: &Token) -> PResult<()> {
        let word = t.text.to_ascii_lowercase();
        if let Some(proto) = Proto::from_word(&word) {
            self.pos += 1;
            let qualifies = matches!(
                self.peek_word(0).as_deref(),
                Some("src" | "dst" | "host" | "net" | "port" | "portrange" | "proto")
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
            "src" | "dst" | "host" | "net" | "port" | "portrange" | "proto" => {
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
                     proto, tcp, udp, icmp, icmp6, ip or ip6",
                    t.text
                ),
            )),
            _ => Err(error(t.col, format!("unknown word '{}'", t.text))),
        }
    }

    /// `[dqual] [kind] VALUE`, after an optional protocol qualifier at
    /// column `proto_col`.
    fn parse_qualified(&mut self, proto: Option<Proto>, proto_col: usize) -> PResult<()> {
        let dir_col = self.peek().col;
        let dir = self.parse_dir();
        let kind_tok = self.peek().clone();
        let kind = match self.peek_word(0).as_deref() {
            Some("host") => Kind::Host,
            Some("net") => Kind::Net,
            Some("port") => Kind::Port,
            Some("portrange") => Kind::PortRange,
            Some("proto") => Kind::Proto,
            _ => Kind::Addr,
        };
        if kind != Kind::Addr {
            self.pos += 1;
        }
        if kind == Kind::Proto {
            if dir.is_some() {
                return Err(error(dir_col, "'proto' takes no direction"));
            }
            if let Some(p) = proto.filter(|p| p.family().is_none()) {
                return Err(error(
                    proto_col,
                    format!("'proto' can only follow 'ip' or 'ip6', not '{}'", p.name()),
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
        if v.tok != Tok::Word || (kind != Kind::Proto && is_keyword(v)) {
            return Err(self.expected(idx, kind.what()));
        }
        self.pos += 1;
        self.emit_value(q, idx)?;
        self.last = Some(q);
        Ok(())
    }

    fn parse_dir(&mut self) -> Option<Dir> {
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
    fn emit_value(&mut self, q: Quals, idx: usize) -> PResult<()> {
        let v = self.toks[idx].clone();
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
                (port_leaf(p, p), None)
            }
            Kind::PortRange => {
                let (a, b) = self.parse_range(idx)?;
                (port_leaf(a, b), None)
            }
            Kind::Proto => {
                let p = self.parse_proto(idx)?;
                (
                    FilterOp {
                        value: p as u16,
                        ..op(OP_PROTO)
                    },
                    None,
                )
            }
        };

        // `ip host 10.0.0.1`: OP_NET already checks the family, so the
        // qualifier costs nothing, unless it contradicts the address.
        let mut qualifier = q.proto.map(Proto::op);
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

    fn parse_host(&self, idx: usize) -> PResult<Net> {
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
    fn parse_net(&mut self, idx: usize) -> PResult<Net> {
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

    fn port_number(&self, s: &str, col: usize) -> PResult<u16> {
        // Digits only: `u16::from_str` would also take a leading '+'.
        match s.parse::<u64>() {
            Ok(n) if n <= 65535 => Ok(n as u16),
            _ => Err(error(col, format!("port {s} is out of range (0-65535)"))),
        }
    }

    /// A port as tcpdump takes it: decimal, hex (`0x50`) or a service
    /// name from /etc/services (`http`, `domain`).
    fn port_value(&self, s: &str, col: usize) -> Option<PResult<u16>> {
        if all_digits(s) {
            return Some(self.port_number(s, col));
        }
        if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            return Some(match u64::from_str_radix(hex, 16) {
                Ok(n) if n <= 65535 && !hex.is_empty() => Ok(n as u16),
                _ => Err(error(col, format!("port {s} is out of range (0-65535)"))),
            });
        }
        service_port(s).map(Ok)
    }

    fn parse_port(&self, idx: usize) -> PResult<u16> {
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
    fn parse_range(&self, idx: usize) -> PResult<(u16, u16)> {
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
        let (lo, hi) = (lo?, hi?);
        Ok((lo.min(hi), lo.max(hi)))
    }

    fn parse_proto(&self, idx: usize) -> PResult<u8> {
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

/// The port ranges of a port op.
/// The port of a service name (or alias) in /etc/services, for any of
/// tcp, udp and sctp, as tcpdump resolves `port http`. None when the name
/// is unknown or the file is missing (a scratch container has none).
fn service_port(name: &str) -> Option<u16> {
    let text = std::fs::read_to_string("/etc/services").ok()?;
    services_lookup(&text, name)
}

fn services_lookup(text: &str, name: &str) -> Option<u16> {
    text.lines().find_map(|line| {
        let line = line.split('#').next()?;
        let mut words = line.split_whitespace();
        let service = words.next()?;
        let (port, proto) = words.next()?.split_once('/')?;
        let named = service == name || words.any(|alias| alias == name);
        (named && matches!(proto, "tcp" | "udp" | "sctp"))
            .then(|| port.parse().ok())
            .flatten()
    })
}

fn port_ranges(o: &FilterOp) -> Option<Vec<u32>> {
    match o.code {
        OP_PORT => Some(vec![o.value as u32 | (o.value2 as u32) << 16]),
        OP_PORTS => Some(
            o.addr
                .iter()
                .chain(o.mask.iter())
                .take(o.value as usize)
                .copied()
                .collect(),
        ),
        _ => None,
    }
}

/// `a or b` as one port-set op, if both test ports in the same direction
/// and their ranges fit in one set.
fn merge_ports(a: &FilterOp, b: &FilterOp) -> Option<FilterOp> {
    if a.dir != b.dir {
        return None;
    }
    let mut ranges = port_ranges(a)?;
    ranges.extend(port_ranges(b)?);
    if ranges.len() > PORT_SET {
        return None;
    }
    let mut set = FilterOp {
        dir: a.dir,
        value: ranges.len() as u16,
        ..op(OP_PORTS)
    };
    for (k, r) in ranges.into_iter().enumerate() {
        if k < 4 {
            set.addr[k] = r;
        } else {
            set.mask[k - 4] = r;
        }
    }
    Some(set)
}

fn port_leaf(lo: u16, hi: u16) -> FilterOp {
    FilterOp {
        value: lo,
        value2: hi,
        ..op(OP_PORT)
    }
}

/// For a value with nothing before it to qualify it: suggest the primitive
/// its shape suggests.
fn needs_qualifier(text: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_abi::FLOW_FRAGMENT;

    fn ip(s: &str) -> (u8, [u8; 16]) {
        let mut b = [0u8; 16];
        match s.parse::<IpAddr>().unwrap() {
            IpAddr::V4(a) => {
                b[..4].copy_from_slice(&a.octets());
                (FAMILY_V4, b)
            }
            IpAddr::V6(a) => (FAMILY_V6, a.octets()),
        }
    }

    /// A flow from `src:sport` to `dst:dport`; the family comes from the addresses.
    fn flow(proto: u8, src: &str, sport: u16, dst: &str, dport: u16) -> Flow {
        let (family, src) = ip(src);
        let (family2, dst) = ip(dst);
        assert_eq!(family, family2);
        Flow {
            family,
            proto,
            src,
            dst,
            sport,
            dport,
            ..Flow::default()
        }
    }

    fn tcp4(src: &str, sport: u16, dst: &str, dport: u16) -> Flow {
        flow(IPPROTO_TCP, src, sport, dst, dport)
    }

    fn udp4(src: &str, sport: u16, dst: &str, dport: u16) -> Flow {
        flow(IPPROTO_UDP, src, sport, dst, dport)
    }

    /// Checks what eval's stack checks: every program compile produces is
    /// well formed postfix leaving exactly one value.
    fn well_formed(ops: &[FilterOp]) -> bool {
        let mut depth = 0i32;
        for o in ops {
            match o.code {
                OP_AND | OP_OR => {
                    if depth < 2 {
                        return false;
                    }
                    depth -= 1;
                }
                OP_NOT => {
                    if depth < 1 {
                        return false;
                    }
                }
                _ => depth += 1,
            }
        }
        depth == 1
    }

    fn ok(expr: &str) -> Filter {
        let f = compile(expr).unwrap_or_else(|e| panic!("{expr:?}: {e}"));
        assert!(
            f.ops.is_empty() || well_formed(&f.ops),
            "{expr:?} compiled to {:?}",
            f.ops
        );
        f
    }

    fn m(expr: &str, f: &Flow) -> bool {
        ok(expr).matches(f)
    }

    fn err(expr: &str) -> (usize, String) {
        match compile(expr) {
            Ok(f) => panic!("{expr:?} compiled to {:?}", f.ops),
            Err(e) => (e.column, e.message),
        }
    }

    fn codes(expr: &str) -> Vec<u8> {
        ok(expr).ops.iter().map(|o| o.code).collect()
    }

    /// Two expressions compile to the same program.
    fn same(a: &str, b: &str) {
        assert_eq!(ok(a).ops, ok(b).ops, "{a:?} vs {b:?}");
    }

    // ------------------------------------------------ empty and API

    #[test]
    fn empty_matches_everything() {
        for e in ["", "   ", "\t \n"] {
            let f = ok(e);
            assert!(f.is_empty());
            assert_eq!(f.text, "");
            let (ops, len) = f.to_kernel();
            assert_eq!(len, 0);
            assert!(ops.iter().all(|o| *o == FilterOp::END));
            assert!(f.matches(&tcp4("1.2.3.4", 1, "5.6.7.8", 2)));
            assert!(f.matches(&Flow::default()));
        }
    }

    #[test]
    fn text_is_trimmed_expression() {
        let f = ok("  tcp and port 80 ");
        assert_eq!(f.text, "tcp and port 80");
        assert!(!f.is_empty());
    }

    #[test]
    fn to_kernel_pads_with_end() {
        let f = ok("tcp and port 80");
        let (ops, len) = f.to_kernel();
        assert_eq!(len, 3);
        assert_eq!(&ops[..3], &f.ops[..]);
        assert!(ops[3..].iter().all(|o| *o == FilterOp::END));
    }

    #[test]
    fn matches_is_kernel_eval() {
        let f = ok("tcp port 80 or udp port 53");
        let (ops, len) = f.to_kernel();
        for fl in [
            tcp4("1.1.1.1", 80, "2.2.2.2", 1),
            udp4("1.1.1.1", 1, "2.2.2.2", 53),
            udp4("1.1.1.1", 1, "2.2.2.2", 80),
        ] {
            assert_eq!(
                f.matches(&fl),
                tracer_abi::filter::eval(&ops, len, &fl, &tracer_abi::filter::Plain),
                "{fl:?}"
            );
        }
        assert!(f.matches(&udp4("1.1.1.1", 1, "2.2.2.2", 53)));
        assert!(!f.matches(&udp4("1.1.1.1", 1, "2.2.2.2", 80)));
    }

    #[test]
    #[should_panic(expected = "at most 256")]
    fn to_kernel_refuses_overlong_hand_made_filter() {
        let f = Filter {
            ops: vec![op(OP_PROTO); MAX_OPS + 1],
            text: String::new(),
        };
        f.to_kernel();
    }

    #[test]
    fn error_display_is_one_line() {
        let e = compile("udp port no-such-svc").unwrap_err();
        assert_eq!(
            e.to_string(),
            "bad filter at column 10: expected a port number after 'port', found 'no-such-svc'"
        );
        let boxed: Box<dyn std::error::Error> = Box::new(e);
        assert!(!boxed.to_string().contains('\n'));
    }

    // ------------------------------------------------ encoding

    #[test]
    fn host_v4_encoding() {
        let f = ok("host 10.1.2.3");
        assert_eq!(f.ops.len(), 1);
        let o = f.ops[0];
        assert_eq!(o.code, OP_NET);
        assert_eq!(o.family, FAMILY_V4);
        assert_eq!(o.dir, DIR_ANY);
        assert_eq!(o.addr, [u32::from_ne_bytes([10, 1, 2, 3]), 0, 0, 0]);
        assert_eq!(o.mask, [u32::MAX, 0, 0, 0]);
    }

    #[test]
    fn net_v4_encoding_is_masked_network_order() {
        let o = ok("net 192.168.0.0/20").ops[0];
        assert_eq!(o.addr, [u32::from_ne_bytes([192, 168, 0, 0]), 0, 0, 0]);
        assert_eq!(o.mask, [u32::from_ne_bytes([255, 255, 0xf0, 0]), 0, 0, 0]);
    }

    #[test]
    fn net_v6_encoding() {
        let o = ok("net 2001:db8:ab00::/40").ops[0];
        assert_eq!(o.family, FAMILY_V6);
        assert_eq!(
            o.addr,
            [
                u32::from_ne_bytes([0x20, 0x01, 0x0d, 0xb8]),
                u32::from_ne_bytes([0xab, 0, 0, 0]),
                0,
                0
            ]
        );
        assert_eq!(
            o.mask,
            [u32::MAX, u32::from_ne_bytes([0xff, 0, 0, 0]), 0, 0]
        );
        let h = ok("host fe80::1").ops[0];
        assert_eq!(h.mask, [u32::MAX; 4]);
        assert_eq!(h.addr[3], u32::from_ne_bytes([0, 0, 0, 1]));
    }

    #[test]
    fn port_proto_family_encoding() {
        let p = ok("dst port 443").ops[0];
        assert_eq!(
            (p.code, p.dir, p.value, p.value2),
            (OP_PORT, DIR_DST, 443, 443)
        );
        let r = ok("src portrange 1000-2000").ops[0];
        assert_eq!(
            (r.code, r.dir, r.value, r.value2),
            (OP_PORT, DIR_SRC, 1000, 2000)
        );
        let t = ok("proto 47").ops[0];
        assert_eq!((t.code, t.value), (OP_PROTO, 47));
        let f = ok("ip6").ops[0];
        assert_eq!((f.code, f.value), (OP_FAMILY, 6));
        let f = ok("ip").ops[0];
        assert_eq!((f.code, f.value), (OP_FAMILY, 4));
        for (w, n) in [("tcp", 6), ("udp", 17), ("icmp", 1), ("icmp6", 58)] {
            let o = ok(w).ops[0];
            assert_eq!((o.code, o.value), (OP_PROTO, n), "{w}");
        }
    }

    #[test]
    fn src_and_dst_emits_two_tests_and_and() {
        let f = ok("src and dst host 10.0.0.1");
        assert_eq!(codes("src and dst host 10.0.0.1"), [OP_NET, OP_NET, OP_AND]);
        assert_eq!(f.ops[0].dir, DIR_SRC);
        assert_eq!(f.ops[1].dir, DIR_DST);
        let p = ok("dst and src port 53");
        assert_eq!(
            p.ops.iter().map(|o| (o.code, o.dir)).collect::<Vec<_>>(),
            [(OP_PORT, DIR_SRC), (OP_PORT, DIR_DST), (OP_AND, 0)]
        );
    }

    #[test]
    fn postfix_order() {
        assert_eq!(codes("tcp or udp"), [OP_PROTO, OP_PROTO, OP_OR]);
        assert_eq!(codes("not tcp"), [OP_PROTO, OP_NOT]);
        // Left to right, as libpcap: (tcp or udp) and port 53.
        assert_eq!(
            codes("tcp or udp and port 53"),
            [OP_PROTO, OP_PROTO, OP_OR, OP_PORT, OP_AND]
        );
    }

    // ------------------------------------------------ primitives

    #[test]
    fn host_either_direction() {
        let f = ok("host 10.0.0.1");
        assert!(f.matches(&tcp4("10.0.0.1", 1, "10.0.0.2", 2)));
        assert!(f.matches(&tcp4("10.0.0.2", 1, "10.0.0.1", 2)));
        assert!(!f.matches(&tcp4("10.0.0.2", 1, "10.0.0.3", 2)));
    }

    #[test]
    fn host_v4_does_not_match_v6_flow() {
        // An IPv6 flow whose first four bytes spell 10.0.0.1.
        let fl = flow(IPPROTO_TCP, "a00:1::", 1, "::2", 2);
        assert_eq!(&fl.src[..4], &[10, 0, 0, 1]);
        assert!(!m("host 10.0.0.1", &fl));
    }

    #[test]
    fn directions() {
        let fl = tcp4("10.0.0.1", 1000, "10.0.0.2", 80);
        assert!(m("src host 10.0.0.1", &fl));
        assert!(!m("src host 10.0.0.2", &fl));
        assert!(m("dst host 10.0.0.2", &fl));
        assert!(!m("dst host 10.0.0.1", &fl));
        assert!(m("src or dst host 10.0.0.2", &fl));
        assert!(m("dst or src host 10.0.0.1", &fl));
        assert!(!m("src and dst host 10.0.0.1", &fl));
        let loop_ = tcp4("10.0.0.1", 1, "10.0.0.1", 2);
        assert!(m("src and dst host 10.0.0.1", &loop_));
        assert!(m("dst and src host 10.0.0.1", &loop_));
        same("src or dst host 10.0.0.1", "host 10.0.0.1");
        same("dst or src port 5", "port 5");
    }

    #[test]
    fn direction_shorthand_without_host() {
        let fl = tcp4("10.0.0.1", 1000, "192.168.1.7", 80);
        same("src 10.0.0.1", "src host 10.0.0.1");
        same("dst 192.168.0.0/16", "dst net 192.168.0.0/16");
        same("src or dst 10.0.0.1", "host 10.0.0.1");
        same("src and dst fe80::1", "src and dst host fe80::1");
        assert!(m("src 10.0.0.1", &fl));
        assert!(!m("dst 10.0.0.1", &fl));
        assert!(m("dst 192.168.0.0/16", &fl));
        assert!(m("src 10.0.0.1 and dst 192.168.1.7", &fl));
        assert!(m("src 10.0.0.9 or dst 192.168.1.7", &fl));
        assert!(!m("src 10.0.0.9 or dst 192.168.1.8", &fl));
    }

    #[test]
    fn net_v4() {
        let fl = tcp4("10.1.2.3", 1, "172.16.5.4", 2);
        assert!(m("net 10.0.0.0/8", &fl));
        assert!(m("net 172.16.0.0/12", &fl));
        assert!(!m("net 172.32.0.0/12", &fl));
        assert!(m("src net 10.1.0.0/16", &fl));
        assert!(!m("dst net 10.1.0.0/16", &fl));
        assert!(m("net 0.0.0.0/0", &fl));
        assert!(!m("net 0.0.0.0/0", &flow(IPPROTO_TCP, "::1", 1, "::2", 2)));
    }

    #[test]
    fn net_without_length_is_a_host() {
        same("net 10.0.0.1", "host 10.0.0.1");
        same("net 10.0.0.1/32", "host 10.0.0.1");
        same("net 2001:db8::1", "host 2001:db8::1");
        assert!(!m("net 10.0.0.1", &tcp4("10.0.0.2", 1, "10.0.0.3", 2)));
    }

    #[test]
    fn net_abbreviated_octets() {
        same("net 10", "net 10.0.0.0/8");
        same("net 10.1", "net 10.1.0.0/16");
        same("net 192.168.1", "net 192.168.1.0/24");
        same("net 10/8", "net 10.0.0.0/8");
        same("net 10.1/24", "net 10.1.0.0/24");
        assert!(m("net 192.168.1", &tcp4("192.168.1.9", 1, "1.1.1.1", 2)));
    }

    #[test]
    fn net_mask() {
        same("net 10.0.0.0 mask 255.0.0.0", "net 10.0.0.0/8");
        same("NET 172.16.0.0 MASK 255.240.0.0", "net 172.16.0.0/12");
        // Non-contiguous masks work too: the kernel just ANDs.
        let f = ok("net 10.0.0.1 mask 255.0.0.255");
        assert!(f.matches(&tcp4("10.9.9.1", 1, "1.1.1.1", 2)));
        assert!(!f.matches(&tcp4("10.9.9.2", 1, "1.1.1.1", 2)));
    }

    #[test]
    fn ipv6_host_and_net() {
        let fl = flow(IPPROTO_UDP, "2001:db8::5", 53, "fe80::1", 5353);
        assert!(m("host fe80::1", &fl));
        assert!(m("dst host fe80::1", &fl));
        assert!(!m("src host fe80::1", &fl));
        assert!(m("net 2001:db8::/32", &fl));
        assert!(m("src net 2001:db8::/32", &fl));
        assert!(!m("net 2001:db9::/32", &fl));
        assert!(m("net fe80::/10", &fl));
        assert!(m("HOST FE80::1", &fl));
        assert!(!m("host fe80::2", &fl));
        // An IPv6 filter never matches an IPv4 flow.
        assert!(!m("net ::/0", &tcp4("1.1.1.1", 1, "2.2.2.2", 2)));
        assert!(m("net ::/0", &fl));
    }

    #[test]
    fn ports() {
        let fl = tcp4("1.1.1.1", 40000, "2.2.2.2", 443);
        assert!(m("port 443", &fl));
        assert!(m("port 40000", &fl));
        assert!(!m("port 80", &fl));
        assert!(m("dst port 443", &fl));
        assert!(!m("src port 443", &fl));
        assert!(m("src port 40000", &fl));
        assert!(!m("src and dst port 443", &fl));
        assert!(m(
            "src and dst port 443",
            &tcp4("1.1.1.1", 443, "2.2.2.2", 443)
        ));
        assert!(m("port 0", &tcp4("1.1.1.1", 0, "2.2.2.2", 1)));
        assert!(m("port 65535", &udp4("1.1.1.1", 65535, "2.2.2.2", 1)));
    }

    #[test]
    fn ports_need_tcp_or_udp() {
        let icmp = flow(IPPROTO_ICMP, "1.1.1.1", 443, "2.2.2.2", 443);
        assert!(!m("port 443", &icmp));
        assert!(m("not port 443", &icmp));
    }

    #[test]
    fn portranges() {
        let f = ok("portrange 1000-2000");
        assert!(f.matches(&tcp4("1.1.1.1", 1000, "2.2.2.2", 1)));
        assert!(f.matches(&tcp4("1.1.1.1", 1, "2.2.2.2", 2000)));
        assert!(!f.matches(&tcp4("1.1.1.1", 999, "2.2.2.2", 2001)));
        assert!(m(
            "dst portrange 1-1023",
            &udp4("1.1.1.1", 5000, "2.2.2.2", 53)
        ));
        assert!(!m(
            "src portrange 1-1023",
            &udp4("1.1.1.1", 5000, "2.2.2.2", 53)
        ));
        same("portrange 53-53", "port 53");
    }

    #[test]
    fn protocols() {
        let t = tcp4("1.1.1.1", 1, "2.2.2.2", 2);
        let u = udp4("1.1.1.1", 1, "2.2.2.2", 2);
        let i = flow(IPPROTO_ICMP, "1.1.1.1", 0, "2.2.2.2", 0);
        let i6 = flow(IPPROTO_ICMPV6, "::1", 0, "::2", 0);
        assert!(m("tcp", &t) && !m("tcp", &u));
        assert!(m("udp", &u) && !m("udp", &t));
        assert!(m("icmp", &i) && !m("icmp", &i6));
        assert!(m("icmp6", &i6) && !m("icmp6", &i));
        assert!(m("ip", &t) && !m("ip", &i6));
        assert!(m("ip6", &i6) && !m("ip6", &t));
    }

    #[test]
    fn proto_primitive() {
        same("proto 6", "tcp");
        same("proto tcp", "tcp");
        same("proto \\udp", "udp");
        // `proto N` is either family; `icmp`/`icmp6` each their own.
        same("proto ICMPv6", "proto 58");
        let v4 = flow(IPPROTO_ICMP, "1.1.1.1", 0, "2.2.2.2", 0);
        let v6 = flow(IPPROTO_ICMP, "fd00::1", 0, "fd00::2", 0);
        assert!(m("proto icmp", &v4) && m("proto icmp", &v6));
        assert!(m("icmp", &v4) && !m("icmp", &v6));
        assert!(m("proto 47", &flow(47, "1.1.1.1", 0, "2.2.2.2", 0)));
        assert!(!m("proto 47", &flow(50, "1.1.1.1", 0, "2.2.2.2", 0)));
    }

    #[test]
    fn ip_proto_means_that_family_too() {
        assert_eq!(codes("ip proto 17"), [OP_FAMILY, OP_PROTO, OP_AND]);
        let u4 = udp4("1.1.1.1", 1, "2.2.2.2", 2);
        let u6 = flow(IPPROTO_UDP, "::1", 1, "::2", 2);
        assert!(m("ip proto 17", &u4));
        assert!(!m("ip proto 17", &u6));
        assert!(m("ip6 proto udp", &u6));
        assert!(!m("ip6 proto udp", &u4));
    }

    // ------------------------------------------------ implicit protocol-and

    #[test]
    fn protocol_before_primitive_is_and() {
        same("tcp port 443", "tcp and port 443");
        same("udp dst port 53", "udp and dst port 53");
        same("tcp src portrange 1-1023", "tcp and src portrange 1-1023");
        same("udp host 10.0.0.1", "udp and host 10.0.0.1");
        same("ip6 port 53", "ip6 and port 53");
        let f = ok("tcp port 443");
        assert!(f.matches(&tcp4("1.1.1.1", 1, "2.2.2.2", 443)));
        assert!(!f.matches(&udp4("1.1.1.1", 1, "2.2.2.2", 443)));
        assert!(m("udp dst port 53", &udp4("1.1.1.1", 1, "2.2.2.2", 53)));
        assert!(!m("udp dst port 53", &udp4("1.1.1.1", 53, "2.2.2.2", 1)));
    }

    #[test]
    fn implicit_and_binds_tighter_than_not() {
        // `not tcp port 80` negates the whole primitive, as in tcpdump.
        same("not tcp port 80", "not (tcp and port 80)");
        assert!(m("not tcp port 80", &udp4("1.1.1.1", 1, "2.2.2.2", 80)));
    }

    #[test]
    fn family_qualifier_on_address_is_free() {
        same("ip host 10.0.0.1", "host 10.0.0.1");
        same("ip6 net 2001:db8::/32", "net 2001:db8::/32");
        same("ip src 10.0.0.1", "src host 10.0.0.1");
    }

    // ------------------------------------------------ operators

    #[test]
    fn and_or_not_symbols() {
        same("tcp && port 80", "tcp and port 80");
        same("tcp || udp", "tcp or udp");
        same("!tcp", "not tcp");
        same("! ( tcp||udp )", "not (tcp or udp)");
        same("tcp&&port 80", "tcp and port 80");
    }

    #[test]
    fn not_inverts() {
        let t = tcp4("1.1.1.1", 1, "2.2.2.2", 2);
        assert!(!m("not tcp", &t));
        assert!(m("not udp", &t));
        assert!(m("not not tcp", &t));
        assert!(!m("not not not tcp", &t));
    }

    #[test]
    fn double_not_cancels() {
        assert_eq!(codes("not not tcp"), [OP_PROTO]);
        assert_eq!(codes("! ! ! tcp"), [OP_PROTO, OP_NOT]);
        // Only a NOT that ends the operand cancels: here it is inside.
        assert_eq!(
            codes("not (not tcp and udp)"),
            [OP_PROTO, OP_NOT, OP_PROTO, OP_AND, OP_NOT]
        );
    }

    #[test]
    fn and_and_or_have_equal_precedence_like_tcpdump() {
        // libpcap: (tcp or udp) and port 53
        same("tcp or udp and port 53", "(tcp or udp) and port 53");
        assert!(!m(
            "tcp or udp and port 53",
            &tcp4("1.1.1.1", 1, "2.2.2.2", 80)
        ));
        assert!(m(
            "tcp or udp and port 53",
            &udp4("1.1.1.1", 1, "2.2.2.2", 53)
        ));
        // (port 53 and udp) or tcp
        assert!(m(
            "port 53 and udp or tcp",
            &tcp4("1.1.1.1", 1, "2.2.2.2", 80)
        ));
    }

    #[test]
    fn not_binds_tighter_than_and() {
        same("not tcp and port 80", "(not tcp) and port 80");
        assert!(m("not tcp and port 80", &udp4("1.1.1.1", 1, "2.2.2.2", 80)));
        assert!(!m(
            "not tcp and port 80",
            &udp4("1.1.1.1", 1, "2.2.2.2", 81)
        ));
        assert!(!m("not tcp or udp", &tcp4("1.1.1.1", 1, "2.2.2.2", 80)));
    }

    #[test]
    fn left_associative() {
        assert_eq!(codes("tcp or udp or icmp"), [5, 5, OP_OR, 5, OP_OR]);
        assert_eq!(
            codes("tcp and port 1 and port 2"),
            [5, 7, OP_AND, 7, OP_AND]
        );
    }

    #[test]
    fn parentheses_override_precedence() {
        let t80 = tcp4("1.1.1.1", 1, "2.2.2.2", 80);
        // Without parentheses it is (tcp or udp) and port 53: false here.
        assert!(!m("tcp or udp and port 53", &t80));
        assert!(m("tcp or (udp and port 53)", &t80));
        assert!(m("(tcp or udp) and (port 53 or port 80)", &t80));
        assert!(m("((((tcp))))", &t80));
        assert!(!m("not (tcp or udp)", &t80));
    }

    // ------------------------------------------------ value lists

    #[test]
    fn host_list() {
        same(
            "host 10.0.0.1 or 10.0.0.2",
            "host 10.0.0.1 or host 10.0.0.2",
        );
        let f = ok("host 10.0.0.1 or 10.0.0.2 or 10.0.0.3");
        assert!(f.matches(&tcp4("10.0.0.3", 1, "9.9.9.9", 2)));
        assert!(!f.matches(&tcp4("10.0.0.4", 1, "9.9.9.9", 2)));
    }

    #[test]
    fn port_list() {
        same("port 80 or 443", "port 80 or port 443");
        same("dst port 80 or 443", "dst port 80 or dst port 443");
        same(
            "portrange 1-10 or 20-30",
            "portrange 1-10 or portrange 20-30",
        );
        assert!(m("port 80 or 443", &tcp4("1.1.1.1", 1, "2.2.2.2", 443)));
        assert!(!m(
            "src port 80 or 443",
            &tcp4("1.1.1.1", 1, "2.2.2.2", 443)
        ));
    }

    #[test]
    fn list_reuses_protocol_too() {
        // As in tcpdump: the protocol is one of the qualifiers.
        same("tcp port 80 or 443", "tcp port 80 or tcp port 443");
        assert!(!m(
            "tcp port 80 or 443",
            &udp4("1.1.1.1", 1, "2.2.2.2", 443)
        ));
        assert!(m("tcp port 80 or 443", &tcp4("1.1.1.1", 1, "2.2.2.2", 443)));
    }

    #[test]
    fn list_reuses_direction_and_kind() {
        same(
            "src host 10.0.0.1 or 10.0.0.2",
            "src host 10.0.0.1 or src host 10.0.0.2",
        );
        same(
            "src 10.0.0.1 or 10.0.0.0/8",
            "src host 10.0.0.1 or src net 10.0.0.0/8",
        );
        same(
            "net 10.0.0.0/8 or 192.168.0.0/16",
            "net 10.0.0.0/8 or net 192.168.0.0/16",
        );
        same(
            "src and dst host 10.0.0.1 or 10.0.0.2",
            "src and dst host 10.0.0.1 or src and dst host 10.0.0.2",
        );
        same("proto 6 or 17", "tcp or udp");
        same("proto 6 or \\udp", "tcp or udp");
        same("ip proto 6 or 17", "ip proto 6 or ip proto 17");
        same("host fe80::1 or ::1", "host fe80::1 or host ::1");
    }

    #[test]
    fn list_with_and_not_and_parens() {
        same(
            "host 10.0.0.1 and not 10.0.0.2",
            "host 10.0.0.1 and not host 10.0.0.2",
        );
        same(
            "host 10.0.0.1 or (10.0.0.2 or 10.0.0.3)",
            "host 10.0.0.1 or (host 10.0.0.2 or host 10.0.0.3)",
        );
        same("port 1 and 2", "port 1 and port 2");
        // The most recent primitive wins.
        same(
            "host 10.0.0.1 and port 80 or 443",
            "host 10.0.0.1 and port 80 or port 443",
        );
    }

    // ------------------------------------------------ case and spacing

    #[test]
    fn keywords_case_insensitive() {
        same(
            "TCP PORT 80 AND HOST 10.0.0.1",
            "tcp port 80 and host 10.0.0.1",
        );
        same("Src Or Dst Host 10.0.0.1", "host 10.0.0.1");
        same("NOT Udp OR Ip6", "not udp or ip6");
        same("PortRange 1-2", "portrange 1-2");
        same("IP PROTO \\TCP", "ip proto 6");
    }

    #[test]
    fn spacing_is_free() {
        same("(tcp)and(port 80)", "tcp and port 80");
        same("  tcp\tand\nport 80  ", "tcp and port 80");
    }

    // ------------------------------------------------ length limit

    #[test]
    fn too_long() {
        // Hosts do not merge: 129 of them are 257 ops.
        let list: Vec<String> = (1..=129)
            .map(|i| format!("10.0.{}.{}", i / 200, i % 200))
            .collect();
        let expr = format!("host {}", list.join(" or "));
        assert_eq!(
            err(&expr),
            (
                1,
                "filter too long: 257 operations, the kernel takes at most 256; \
                 a portrange A-B or a net A/N can replace a list"
                    .into()
            )
        );
        // 128 hosts and a not: exactly 256 fits.
        let fits = format!("not (host {})", list[..128].join(" or "));
        let f = ok(&fits);
        assert_eq!(f.ops.len(), MAX_OPS);
    }

    #[test]
    fn port_lists_become_port_sets() {
        let list: Vec<String> = (1..=17).map(|p| (p * 10).to_string()).collect();
        let f = ok(&format!("host 10.1.2.3 and (port {})", list.join(" or ")));
        // host, three sets (8 + 8 + 1 ports), two ORs between them, AND.
        assert_eq!(f.ops.len(), 7, "{:?}", f.ops);
        assert_eq!(f.ops.iter().filter(|o| o.code == OP_PORTS).count(), 2);
        for p in 1..=17u16 {
            assert!(f.matches(&tcp4("10.1.2.3", 5000, "2.2.2.2", p * 10)), "{p}");
            assert!(f.matches(&udp4("2.2.2.2", p * 10, "10.1.2.3", 5000)), "{p}");
            assert!(!f.matches(&tcp4("10.1.2.3", 5000, "2.2.2.2", p * 10 + 1)));
        }
        assert!(!f.matches(&tcp4("10.1.2.4", 5000, "2.2.2.2", 10)));
        // Directions do not mix; ranges merge with single ports.
        let f = ok("src port 1 or dst port 2");
        assert_eq!(f.ops.len(), 3);
        let f = ok("port 1 or portrange 100-200 or port 7");
        assert_eq!(f.ops.len(), 1);
        assert!(f.matches(&tcp4("1.1.1.1", 150, "2.2.2.2", 9)));
        assert!(f.matches(&tcp4("1.1.1.1", 9, "2.2.2.2", 7)));
        assert!(!f.matches(&tcp4("1.1.1.1", 9, "2.2.2.2", 201)));
        // `and` binds as before: (port 1 or port 2) and tcp.
        let f = ok("port 1 or 2 and tcp");
        assert!(!f.matches(&udp4("1.1.1.1", 9, "2.2.2.2", 1)));
        assert!(f.matches(&tcp4("1.1.1.1", 9, "2.2.2.2", 2)));
    }

    // ------------------------------------------------ errors

    fn check(expr: &str, column: usize, message: &str) {
        assert_eq!(err(expr), (column, message.to_string()), "{expr:?}");
    }

    #[test]
    fn error_unknown_words() {
        check("foo", 1, "unknown word 'foo'");
        check("tcp and fooo", 9, "unknown word 'fooo'");
        check(
            "arp",
            1,
            "tcpdump's 'arp' is not supported here; use host, net, port, portrange, \
             proto, tcp, udp, icmp, icmp6, ip or ip6",
        );
        check(
            "tcp and VLAN",
            9,
            "tcpdump's 'VLAN' is not supported here; use host, net, port, portrange, \
             proto, tcp, udp, icmp, icmp6, ip or ip6",
        );
        check(
            "mask 255.0.0.0",
            1,
            "'mask' must follow a network, as in 'net 10.0.0.0 mask 255.0.0.0'",
        );
    }

    #[test]
    fn error_missing_operand() {
        check("host", 5, "expected an address after 'host'");
        check("tcp and host", 13, "expected an address after 'host'");
        check(
            "host and tcp",
            6,
            "expected an address after 'host', found 'and'",
        );
        check(
            "host tcp",
            6,
            "expected an address after 'host', found 'tcp'",
        );
        check(
            "host foo",
            6,
            "expected an address after 'host', found 'foo'",
        );
        check("net", 4, "expected a network after 'net'");
        check("port", 5, "expected a port number after 'port'");
        check(
            "port )",
            6,
            "expected a port number after 'port', found ')'",
        );
        check(
            "portrange",
            10,
            "expected a port range like 1000-2000 after 'portrange'",
        );
        check(
            "proto",
            6,
            "expected a protocol number or name (tcp, udp, icmp, icmp6) after 'proto'",
        );
        check(
            "src",
            4,
            "expected 'host', 'net', 'port', 'portrange' or an address after 'src'",
        );
        check(
            "src or dst",
            11,
            "expected 'host', 'net', 'port', 'portrange' or an address after 'dst'",
        );
        check(
            "tcp src",
            8,
            "expected 'host', 'net', 'port', 'portrange' or an address after 'src'",
        );
        check(
            "src or tcp",
            5,
            "expected 'host', 'net', 'port', 'portrange' or an address after 'src', found 'or'",
        );
    }

    #[test]
    fn error_bad_port() {
        check(
            "port no-such-svc",
            6,
            "expected a port number after 'port', found 'no-such-svc'",
        );
        check("port 0x10000", 6, "port 0x10000 is out of range (0-65535)");
        check("port 65536", 6, "port 65536 is out of range (0-65535)");
        check(
            "port 99999999999999999999",
            6,
            "port 99999999999999999999 is out of range (0-65535)",
        );
        check(
            "port 80 or 70000",
            12,
            "port 70000 is out of range (0-65535)",
        );
        check(
            "port 80-90",
            6,
            "expected a port number after 'port', found '80-90' \
             (for a range write 'portrange 80-90')",
        );
        check(
            "port +80",
            6,
            "expected a port number after 'port', found '+80'",
        );
        check(
            "port -1",
            6,
            "expected a port number after 'port', found '-1'",
        );
    }

    #[test]
    fn error_bad_portrange() {
        check(
            "portrange 1-70000",
            13,
            "port 70000 is out of range (0-65535)",
        );
        check(
            "portrange 70000-70001",
            11,
            "port 70000 is out of range (0-65535)",
        );
        check(
            "portrange 1-",
            11,
            "expected a port range like 1000-2000 after 'portrange', found '1-'",
        );
        check(
            "portrange a-b",
            11,
            "expected a port range like 1000-2000 after 'portrange', found 'a-b'",
        );
    }

    #[test]
    fn error_bad_address() {
        check("host 10.0.0.256", 6, "bad IPv4 address '10.0.0.256'");
        check("host 10.0.0", 6, "bad IPv4 address '10.0.0'");
        check("host fe80::g", 6, "bad IPv6 address 'fe80::g'");
        check(
            "host 1:2:3:4:5:6:7:8:9",
            6,
            "bad IPv6 address '1:2:3:4:5:6:7:8:9'",
        );
        check("net 10.0.0.300/8", 5, "bad IPv4 address '10.0.0.300'");
        check("net 2001:db8:::/32", 5, "bad IPv6 address '2001:db8:::'");
        check("src 10.0.0.256", 5, "bad IPv4 address '10.0.0.256'");
        check(
            "src 80",
            5,
            "expected an address after 'src', found '80' (for a port write 'port 80')",
        );
        check(
            "host 10.0.0.1 or 10.0.0.999",
            18,
            "bad IPv4 address '10.0.0.999'",
        );
        check(
            "host 10.0.0.0/8",
            6,
            "'host' takes a single address; for a network write 'net 10.0.0.0/8'",
        );
        check("net foo", 5, "expected a network after 'net', found 'foo'");
    }

    #[test]
    fn error_bad_prefix() {
        check(
            "net 10.0.0.0/33",
            14,
            "bad prefix length '33': IPv4 takes 0-32",
        );
        check(
            "net 2001:db8::/129",
            16,
            "bad prefix length '129': IPv6 takes 0-128",
        );
        check("net 10.0.0.0/", 14, "bad prefix length '': IPv4 takes 0-32");
        check(
            "net 10.0.0.0/x",
            14,
            "bad prefix length 'x': IPv4 takes 0-32",
        );
        check(
            "net 10.0.0.0/+8",
            14,
            "bad prefix length '+8': IPv4 takes 0-32",
        );
    }

    #[test]
    fn error_non_network_bits() {
        check(
            "net 10.0.0.1/8",
            5,
            "non-network bits set in '10.0.0.1/8'; the network is 10.0.0.0/8",
        );
        check(
            "net 2001:db8::1/32",
            5,
            "non-network bits set in '2001:db8::1/32'; the network is 2001:db8::/32",
        );
        check(
            "net 10.0.0.1 mask 255.0.0.0",
            5,
            "non-network bits set in '10.0.0.1'; the network is 10.0.0.0 mask 255.0.0.0",
        );
        check(
            "net 10.1/8",
            5,
            "non-network bits set in '10.1/8'; the network is 10.0.0.0/8",
        );
    }

    #[test]
    fn error_bad_mask() {
        check(
            "net 10.0.0.0 mask",
            18,
            "expected a netmask like 255.255.0.0 after 'mask'",
        );
        check(
            "net 10.0.0.0 mask 255.0.0",
            19,
            "expected a netmask like 255.255.0.0 after 'mask', found '255.0.0'",
        );
        check(
            "net fe80:: mask ffff::",
            12,
            "'mask' only works with IPv4; write the IPv6 network as ADDR/LEN",
        );
    }

    #[test]
    fn error_bad_proto() {
        check(
            "proto 256",
            7,
            "protocol number 256 is out of range (0-255)",
        );
        check(
            "proto gre",
            7,
            "expected a protocol number or name (tcp, udp, icmp, icmp6) after 'proto', found 'gre'",
        );
        check("src proto 6", 1, "'proto' takes no direction");
        check(
            "tcp proto 6",
            1,
            "'proto' can only follow 'ip' or 'ip6', not 'tcp'",
        );
    }

    #[test]
    fn error_contradictory_qualifiers() {
        check(
            "icmp port 80",
            6,
            "'port' only applies to tcp, udp and sctp, not 'icmp'",
        );
        check(
            "icmp6 dst portrange 1-2",
            11,
            "'portrange' only applies to tcp, udp and sctp, not 'icmp6'",
        );
        check(
            "ip host fe80::1",
            9,
            "'fe80::1' is IPv6, but 'ip' asks for IPv4; use 'ip6'",
        );
        check(
            "ip6 net 10.0.0.0/8",
            9,
            "'10.0.0.0/8' is IPv4, but 'ip6' asks for IPv6; use 'ip'",
        );
    }

    #[test]
    fn error_bare_value_without_qualifier() {
        check(
            "10.0.0.1",
            1,
            "'10.0.0.1' needs a qualifier, as in 'host 10.0.0.1'",
        );
        check("tcp and 80", 9, "'80' needs a qualifier, as in 'port 80'");
        check(
            "fe80::1",
            1,
            "'fe80::1' needs a qualifier, as in 'host fe80::1'",
        );
        check(
            "10.0.0.0/8",
            1,
            "'10.0.0.0/8' needs a qualifier, as in 'net 10.0.0.0/8'",
        );
        check("1-2", 1, "'1-2' needs a qualifier, as in 'portrange 1-2'");
        check("\\udp", 1, "'\\udp' needs a qualifier, as in 'proto \\udp'");
        // A lone protocol ends the list: nothing to repeat.
        check(
            "port 80 or tcp or 443",
            19,
            "'443' needs a qualifier, as in 'port 443'",
        );
    }

    #[test]
    fn error_parentheses() {
        check("(tcp", 5, "unclosed '(' opened at column 1");
        check(
            "tcp and (udp or (icmp)",
            23,
            "unclosed '(' opened at column 9",
        );
        check("tcp)", 4, "unexpected ')'");
        check(")", 1, "unexpected ')'");
        check("(tcp))", 6, "unexpected ')'");
        check("tcp and ()", 9, "empty parentheses");
        check("( )", 1, "empty parentheses");
        check("(tcp udp)", 6, "expected 'and', 'or' or ')' before 'udp'");
        check("(", 2, "expected an expression after '('");
    }

    #[test]
    fn error_dangling_operators() {
        check("tcp and", 8, "expected an expression after 'and'");
        check("tcp or", 7, "expected an expression after 'or'");
        check("tcp &&", 7, "expected an expression after '&&'");
        check("not", 4, "expected an expression after 'not'");
        check("tcp and not", 12, "expected an expression after 'not'");
        check(
            "tcp and or udp",
            9,
            "expected an expression after 'and', found 'or'",
        );
        check("and tcp", 1, "expected an expression, found 'and'");
        check(
            "(tcp or )",
            9,
            "expected an expression after 'or', found ')'",
        );
        check("tcp & udp", 5, "unexpected '&'; write '&&' or 'and'");
        check("tcp | udp", 5, "unexpected '|'; write '||' or 'or'");
    }

    #[test]
    fn error_trailing_garbage() {
        check("tcp udp", 5, "expected 'and' or 'or' before 'udp'");
        check(
            "host 10.0.0.1 10.0.0.2",
            15,
            "expected 'and' or 'or' before '10.0.0.2'",
        );
        check("tcp 80", 5, "expected 'and' or 'or' before '80'");
        check("port 80 (tcp)", 9, "expected 'and' or 'or' before '('");
    }

    #[test]
    fn error_columns_count_characters_not_bytes() {
        // 'é' is two bytes but one column.
        check("tcp and é", 9, "unknown word 'é'");
        check("  foo", 3, "unknown word 'foo'");
    }

    // ------------------------------------------------ robustness

    #[test]
    fn never_panics_and_always_well_formed() {
        // Every sequence of up to three tokens from a mixed vocabulary either
        // fails with an in-range column or compiles to a valid program.
        let vocab = [
            "tcp",
            "udp",
            "ip6",
            "host",
            "net",
            "port",
            "portrange",
            "proto",
            "src",
            "dst",
            "and",
            "or",
            "not",
            "!",
            "(",
            ")",
            "10.0.0.1",
            "10.0.0.0/8",
            "fe80::1",
            "80",
            "1-2",
            "mask",
            "255.0.0.0",
            "&&",
            "foo",
        ];
        let n = vocab.len();
        for i in 0..n * n * n {
            let expr = [vocab[i % n], vocab[i / n % n], vocab[i / n / n]].join(" ");
            match compile(&expr) {
                Ok(f) => assert!(well_formed(&f.ops), "{expr:?}"),
                Err(e) => assert!(
                    e.column >= 1 && e.column <= expr.chars().count() + 1,
                    "{expr:?}: {e}"
                ),
            }
        }
    }

    #[test]
    fn port_on_fragment_flow() {
        // A non-first fragment has no ports: no port test matches it, not
        // even `port 0` (as in tcpdump).
        let mut frag = tcp4("1.1.1.1", 0, "2.2.2.2", 0);
        frag.flags = FLOW_FRAGMENT;
        assert!(!m("port 80", &frag));
        assert!(!m("port 0", &frag));
        assert!(m("not port 80", &frag));
    }

    /// tcpdump's meanings (checked against libpcap 1.10 by hand): named
    /// and hex ports, `portrange` in either order or as one port, `sctp`
    /// and `port` covering SCTP, `icmp`/`icmp6` each in its own family.
    #[test]
    fn tcpdump_port_forms_and_protocol_families() {
        same("portrange 81-79", "portrange 79-81");
        same("portrange 80", "port 80");
        same("port 0x50", "port 80");
        same("portrange 0x50-0x51", "portrange 80-81");
        let sctp = flow(IPPROTO_SCTP, "10.0.0.1", 5000, "10.0.0.2", 80);
        assert!(m("port 80", &sctp));
        assert!(m("sctp port 80", &sctp));
        assert!(m("sctp and dst port 80", &sctp));
        assert!(!m("tcp port 80", &sctp));
        assert!(m("proto 132", &sctp) && m("proto sctp", &sctp));
        // ICMP's number in the other family is not ICMP.
        let v6_proto1 = flow(IPPROTO_ICMP, "fd00::1", 0, "fd00::2", 0);
        assert!(!m("icmp", &v6_proto1));
        assert!(m("proto 1", &v6_proto1), "proto N is either family");
        let v4_proto58 = flow(IPPROTO_ICMPV6, "10.0.0.1", 0, "10.0.0.2", 0);
        assert!(!m("icmp6", &v4_proto58));
        assert!(m("icmp", &flow(IPPROTO_ICMP, "10.0.0.1", 0, "10.0.0.2", 0)));
    }

    #[test]
    fn service_names_come_from_an_etc_services_text() {
        let text = "# comment\nhttp\t\t80/tcp\t\twww # WorldWideWeb\n\
                    domain\t\t53/udp\nfoo\t\t9/ddp\n";
        assert_eq!(services_lookup(text, "http"), Some(80));
        assert_eq!(services_lookup(text, "www"), Some(80));
        assert_eq!(services_lookup(text, "domain"), Some(53));
        assert_eq!(services_lookup(text, "foo"), None, "not tcp, udp or sctp");
        assert_eq!(
            services_lookup(text, "WorldWideWeb"),
            None,
            "comments are not aliases"
        );
    }
}
