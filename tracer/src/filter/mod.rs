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
//!          | ['ip' | 'ip6'] 'protochain' PROTO -- ip6 protochain 6
//!          | VALUE                          -- reuses the previous primitive's qualifiers
//! pqual   := tcp | udp | sctp | icmp | icmp6 | ip | ip6
//! dqual   := src | dst | src or dst | dst or src | src and dst | dst and src
//! kind    := host ADDR | net NET | port N | portrange A-B
//! NET     := ADDR/LEN | ADDR | 10.1 (leading octets, /8 each) | ADDR mask MASK
//! PROTO   := 0..=255 | tcp | udp | sctp | icmp | icmp6   (a leading '\' is allowed, as in tcpdump)
//! ```
//!
//! A protocol directly followed by a primitive is an implicit `and`:
//! `tcp port 443` is `tcp and port 443`. As in tcpdump, a bare value after an
//! operator reuses every qualifier of the previous primitive, protocol
//! included: `tcp port 80 or 443` is `tcp port 80 or tcp port 443`, and
//! `host 10.0.0.1 and not 10.0.0.2` is `host 10.0.0.1 and not host 10.0.0.2`.

pub mod differences;
mod lex;
mod net;
mod parse;
mod ports;
mod quals;
mod sets;
#[cfg(test)]
mod tests;

use lex::{lex, Tok};
use parse::Parser;
use std::fmt;
use tracer_abi::filter::{
    FilterOp, NetRange, Program, MAX_DEPTH, MAX_NETS, MAX_OPS, MAX_PORT_RANGES, OP_AND, OP_END,
    OP_NOT, OP_OR,
};
use tracer_abi::Flow;

/// A compiled filter: the kernel program and the expression it came from.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub ops: Vec<FilterOp>,
    /// The ranges and networks the set ops search (`Program::ports`, `nets`).
    pub ports: Vec<u32>,
    pub nets: Vec<NetRange>,
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
    let depth = max_depth(&p.ops);
    if depth > MAX_DEPTH {
        return Err(error(
            1,
            format!(
                "filter nested too deep: {depth} operands wait at once, the kernel takes at \
                 most {MAX_DEPTH}; fewer parentheses or a list of values can replace a nesting"
            ),
        ));
    }
    let mut ops = p.ops;
    let (ports, nets) = sets::layout(&mut ops, &p.sets)?;
    Ok(Filter {
        ops,
        ports,
        nets,
        text: text.to_string(),
    })
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The program as the kernel global takes it.
    ///
    /// # Panics
    /// If `ops`, `ports` or `nets` were set by hand beyond the kernel's
    /// room; `compile` never produces such a filter, and truncating it
    /// would silently change what it matches.
    pub fn to_kernel(&self) -> Box<Program> {
        assert!(
            self.ops.len() <= MAX_OPS
                && self.ports.len() <= MAX_PORT_RANGES
                && self.nets.len() <= MAX_NETS,
            "filter has {} operations, {} port ranges and {} networks, the kernel takes at \
             most {MAX_OPS}, {MAX_PORT_RANGES} and {MAX_NETS}",
            self.ops.len(),
            self.ports.len(),
            self.nets.len()
        );
        let mut p = Box::new(Program::EMPTY);
        p.len = self.ops.len() as u32;
        p.ops[..self.ops.len()].copy_from_slice(&self.ops);
        p.ports[..self.ports.len()].copy_from_slice(&self.ports);
        p.nets[..self.nets.len()].copy_from_slice(&self.nets);
        p
    }

    /// Same evaluation as the kernel: calls `tracer_abi::filter::eval` on
    /// `to_kernel()`.
    pub fn matches(&self, flow: &Flow) -> bool {
        tracer_abi::filter::eval(&self.to_kernel(), flow, &tracer_abi::filter::Plain)
    }
}

/// The most operands the kernel's evaluation stack holds at once for `ops`.
fn max_depth(ops: &[FilterOp]) -> u32 {
    let (mut depth, mut max) = (0u32, 0u32);
    for o in ops {
        match o.code {
            OP_AND | OP_OR => depth = depth.saturating_sub(1),
            OP_NOT | OP_END => {}
            _ => depth += 1,
        }
        max = max.max(depth);
    }
    max
}

fn error(column: usize, message: impl Into<String>) -> FilterError {
    FilterError {
        column,
        message: message.into(),
    }
}
