//! Packets and filter expressions for comparing tracer's filter with
//! tcpdump's: a seeded generator of IPv4/IPv6 packets (TCP, UDP, SCTP,
//! ICMP, ICMPv6, AH, others; fragments, extension-header chains, cut
//! headers, edge ports) and of expressions from the grammar both accept.
//! The libpcap oracle (tests/filter_oracle.rs) and the kernel corpus
//! (tests/filter_corpus.rs) share them.

/// xorshift64*: a fixed seed gives the same packets and expressions on
/// every run and machine.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// True with probability `pct` percent.
    pub fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
}

pub const V4_ADDRS: &[[u8; 4]] = &[
    [10, 77, 0, 1],
    [10, 77, 0, 9],
    [10, 77, 1, 5],
    [192, 168, 3, 4],
    [0, 0, 0, 0],
    [255, 255, 255, 255],
];

pub const V6_ADDRS: &[&str] = &[
    "fd00::1",
    "fd00::9",
    "fd00:1::5",
    "2001:db8::1",
    "::ffff:10.77.0.1",
    "::",
];

pub const PORTS: &[u16] = &[0, 1, 22, 53, 79, 80, 81, 123, 443, 8080, 65535];

fn v6(s: &str) -> [u8; 16] {
    s.parse::<std::net::Ipv6Addr>()
        .expect("a listed address")
        .octets()
}

fn port(r: &mut Rng) -> u16 {
    if r.chance(85) {
        *r.pick(PORTS)
    } else {
        r.next_u64() as u16
    }
}

/// A transport header (or 8 bytes of anything for other protocols).
pub fn transport(r: &mut Rng, proto: u8) -> Vec<u8> {
    let (s, d) = (port(r), port(r));
    let mut h = Vec::new();
    match proto {
        6 => {
            h.extend(s.to_be_bytes());
            h.extend(d.to_be_bytes());
            h.extend((r.next_u64() as u32).to_be_bytes());
            h.extend(0u32.to_be_bytes());
            h.push(5 << 4);
            h.push(r.next_u64() as u8 & 0x3f);
            h.extend([0xff, 0xff, 0, 0, 0, 0]);
        }
        17 => {
            h.extend(s.to_be_bytes());
            h.extend(d.to_be_bytes());
            h.extend([0, 8, 0, 0]);
        }
        132 => {
            h.extend(s.to_be_bytes());
            h.extend(d.to_be_bytes());
            h.extend((r.next_u64() as u32).to_be_bytes());
            h.extend([0, 0, 0, 0]);
        }
        1 | 58 => {
            h.push(*r.pick(&[0, 3, 8, 11, 128, 129, 135]));
            h.push(r.below(4) as u8);
            h.extend([0, 0, 0, 0, 0, 0]);
        }
        _ => h.extend(r.next_u64().to_be_bytes()),
    }
    h
}

/// The final protocol of a packet.
fn final_proto(r: &mut Rng, v6: bool) -> u8 {
    let icmp = if v6 { 58 } else { 1 };
    let any = r.next_u64() as u8;
    *r.pick(&[
        6, 6, 6, 17, 17, 17, 132, 132, icmp, icmp, 58, 1, 0, 47, 59, any,
    ])
}

/// An extension header (`kind`) announcing `next`.
fn extension(r: &mut Rng, kind: u8, next: u8) -> Vec<u8> {
    match kind {
        44 => {
            let off: u16 = if r.chance(35) {
                (1 + r.below(200) as u16) << 3
            } else {
                0
            };
            let mf = r.below(2) as u16;
            let mut h = vec![next, 0];
            h.extend((off | mf).to_be_bytes());
            h.extend((r.next_u64() as u32).to_be_bytes());
            h
        }
        51 => {
            // AH: length in 4-byte words minus 2.
            let words = 1 + r.below(3) as u8;
            let mut h = vec![next, words];
            h.resize((words as usize + 2) * 4, 0);
            h
        }
        _ => {
            let units = r.below(3) as u8;
            let mut h = vec![next, units];
            // PadN over the rest.
            let len = (units as usize + 1) * 8;
            h.extend([1, (len - 4) as u8]);
            h.resize(len, 0);
            h
        }
    }
}

/// Extension headers then a transport header: (first header number, bytes).
fn chain(r: &mut Rng, kinds: &[u8], last: u8) -> (u8, Vec<u8>) {
    let mut bytes = transport(r, last);
    let mut next = last;
    for &k in kinds.iter().rev() {
        let mut h = extension(r, k, next);
        h.extend(bytes);
        bytes = h;
        next = k;
    }
    (next, bytes)
}

/// Cut a payload short, sometimes: at 0 to 4 bytes into its last part or
/// anywhere.
fn cut(r: &mut Rng, mut payload: Vec<u8>) -> Vec<u8> {
    if r.chance(22) && !payload.is_empty() {
        let len = payload.len();
        let at = if r.chance(50) {
            r.below(len as u64) as usize
        } else {
            // Near the end, where the transport header's fields are.
            len - (1 + r.below(24) as usize).min(len)
        };
        payload.truncate(at);
    }
    payload
}

pub fn gen_v4(r: &mut Rng) -> Vec<u8> {
    let opts = if r.chance(15) {
        1 + r.below(3) as usize
    } else {
        0
    };
    let ihl = 5 + opts;
    let last = final_proto(r, false);
    let kinds: Vec<u8> = if r.chance(10) {
        vec![51; 1 + r.below(2) as usize]
    } else {
        vec![]
    };
    let (first, payload) = chain(r, &kinds, last);
    let frag: u16 = match r.below(20) {
        0..=1 => 0x2000,
        2..=4 => (1 + r.below(400) as u16) | if r.chance(50) { 0x2000 } else { 0 },
        _ => 0x4000 * r.below(2) as u16,
    };
    let payload = cut(r, payload);
    let mut h = vec![0x40 | ihl as u8, 0];
    h.extend(((ihl * 4 + payload.len()) as u16).to_be_bytes());
    h.extend((r.next_u64() as u16).to_be_bytes());
    h.extend(frag.to_be_bytes());
    h.extend([64, first, 0, 0]);
    h.extend(r.pick(V4_ADDRS));
    h.extend(r.pick(V4_ADDRS));
    if opts > 0 {
        // NOPs, then the end of the list.
        h.extend(vec![1u8; opts * 4 - 1]);
        h.push(0);
    }
    h.extend(payload);
    h
}

pub fn gen_v6(r: &mut Rng) -> Vec<u8> {
    let n = match r.below(100) {
        0..=54 => 0,
        55..=79 => 1,
        80..=93 => 2 + r.below(2),
        94..=98 => 4 + r.below(3),
        _ => 9 + r.below(2),
    };
    let kinds: Vec<u8> = (0..n)
        .map(|_| *r.pick(&[0u8, 60, 43, 44, 44, 51]))
        .collect();
    let last = final_proto(r, true);
    let (first, payload) = chain(r, &kinds, last);
    let payload = cut(r, payload);
    let mut h = vec![0x60, 0, 0, 0];
    h.extend((payload.len() as u16).to_be_bytes());
    h.extend([first, 64]);
    h.extend(v6(r.pick::<&str>(V6_ADDRS)));
    h.extend(v6(r.pick::<&str>(V6_ADDRS)));
    h.extend(payload);
    h
}

/// A random IP packet behind an Ethernet header.
pub fn gen_packet(r: &mut Rng) -> Vec<u8> {
    let v6 = r.chance(50);
    let ip = if v6 { gen_v6(r) } else { gen_v4(r) };
    frame(&ip, v6)
}

/// `ip` behind an Ethernet header (02:00:00:00:00:02 from :01).
pub fn frame(ip: &[u8], v6: bool) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
    f.extend(if v6 { [0x86, 0xdd] } else { [0x08, 0x00] });
    f.extend(ip);
    f
}

/// An expression: primitives (with value lists inside) joined by the
/// operators.
#[derive(Clone, Debug)]
pub enum Expr {
    Prim(String),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

pub fn render(e: &Expr) -> String {
    let group = |c: &Expr| match c {
        Expr::And(..) | Expr::Or(..) => format!("({})", render(c)),
        Expr::Prim(p) if p.contains(" or ") => format!("({p})"),
        _ => render(c),
    };
    match e {
        Expr::Prim(p) => p.clone(),
        Expr::Not(c) => format!("not {}", group(c)),
        // The left side needs no parentheses: `and`/`or` are left-associative.
        Expr::And(a, b) => format!("{} and {}", left(a), group(b)),
        Expr::Or(a, b) => format!("{} or {}", left(a), group(b)),
    }
}

fn left(e: &Expr) -> String {
    match e {
        Expr::Prim(p) if p.contains(" or ") => format!("({p})"),
        _ => render(e),
    }
}

fn addr(r: &mut Rng, v6_: bool) -> String {
    if v6_ {
        r.pick(V6_ADDRS).to_string()
    } else {
        let a = r.pick(V4_ADDRS);
        format!("{}.{}.{}.{}", a[0], a[1], a[2], a[3])
    }
}

fn net(r: &mut Rng, v6_: bool) -> String {
    if v6_ {
        let len = *r.pick(&[0u32, 16, 32, 64, 127, 128]);
        let a = u128::from_be_bytes(v6(r.pick::<&str>(V6_ADDRS)));
        let mask = if len == 0 {
            0
        } else {
            u128::MAX << (128 - len)
        };
        format!("{}/{len}", std::net::Ipv6Addr::from(a & mask))
    } else {
        let len = *r.pick(&[0u32, 8, 16, 24, 31, 32]);
        let a = u32::from_be_bytes(*r.pick(V4_ADDRS));
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        format!("{}/{len}", std::net::Ipv4Addr::from(a & mask))
    }
}

fn port_word(r: &mut Rng) -> String {
    match r.below(10) {
        0 => format!("0x{:x}", port(r)),
        1 => r
            .pick(&["http", "domain", "https", "ntp", "ssh"])
            .to_string(),
        _ => port(r).to_string(),
    }
}

const PROTO_NUMBERS: &[u8] = &[0, 1, 6, 17, 43, 44, 47, 51, 58, 59, 60, 132, 255];

/// One primitive of the grammar, in a form tcpdump also takes.
pub fn gen_prim(r: &mut Rng) -> String {
    let fam = || ["", "ip ", "ip6 "];
    let dir = ["", "src ", "dst ", "src or dst ", "src and dst "];
    match r.below(12) {
        0 => r
            .pick(&["tcp", "udp", "sctp", "icmp", "icmp6", "ip", "ip6"])
            .to_string(),
        1 => format!("{}proto {}", r.pick(&fam()), r.pick(PROTO_NUMBERS)),
        2 => format!("{}protochain {}", r.pick(&fam()), r.pick(PROTO_NUMBERS)),
        3..=5 => {
            let p = r.pick(&["", "", "tcp ", "udp ", "sctp "]);
            let d = r.pick(&dir);
            let mut s = format!("{p}{d}port {}", port_word(r));
            if r.chance(20) {
                s += &format!(" or {}", port(r));
            }
            s
        }
        6 => {
            let (a, b) = (port(r), port(r));
            let p = r.pick(&["", "tcp ", "udp ", "sctp "]);
            let d = r.pick(&dir);
            if r.chance(20) {
                format!("{p}{d}portrange {a}")
            } else {
                format!("{p}{d}portrange {a}-{b}")
            }
        }
        7 | 8 => {
            let v6_ = r.chance(50);
            let d = r.pick(&dir);
            let mut s = format!("{d}host {}", addr(r, v6_));
            if r.chance(20) {
                s += &format!(" or {}", addr(r, v6_));
            }
            s
        }
        9 => {
            let v6_ = r.chance(50);
            format!("{}net {}", r.pick(&dir), net(r, v6_))
        }
        10 => {
            let v6_ = r.chance(50);
            format!("{}{}", r.pick(&["src ", "dst "]), addr(r, v6_))
        }
        _ => {
            let a = r.pick(&["10.77", "10.77.0", "192.168", "10"]);
            format!("{}net {a}", r.pick(&dir))
        }
    }
}

/// An expression of at most `depth` levels of operators.
pub fn gen_expr(r: &mut Rng, depth: u32) -> Expr {
    if depth == 0 || r.chance(30) {
        return Expr::Prim(gen_prim(r));
    }
    match r.below(5) {
        0 => Expr::Not(Box::new(gen_expr(r, depth - 1))),
        1 | 2 => Expr::And(
            Box::new(gen_expr(r, depth - 1)),
            Box::new(gen_expr(r, depth - 1)),
        ),
        _ => Expr::Or(
            Box::new(gen_expr(r, depth - 1)),
            Box::new(gen_expr(r, depth - 1)),
        ),
    }
}

/// The smallest part of `e` for which `bad` still holds (`bad(e)` must).
pub fn shrink(e: &Expr, bad: &dyn Fn(&Expr) -> bool) -> Expr {
    let mut cur = e.clone();
    loop {
        let parts: Vec<Expr> = match &cur {
            Expr::Prim(_) => return cur,
            Expr::Not(c) => vec![(**c).clone()],
            Expr::And(a, b) | Expr::Or(a, b) => vec![(**a).clone(), (**b).clone()],
        };
        match parts.into_iter().find(|p| bad(p)) {
            Some(p) => cur = p,
            None => return cur,
        }
    }
}
