//! HAProxy PROXY protocol, versions 1 and 2 (haproxy `doc/proxy-protocol.txt`): this module owns
//! encoding the header warren sends to a backend and strictly parsing the header a balancer in
//! front sends to warren. It is pure: no sockets, no clock, no configuration. Deciding whether a
//! listener expects a header, reading bytes and applying timeouts belong to the proxy module.
//!
//! The parser never guesses: a connection that does not start with a valid header is an error,
//! because accepting headerless traffic on a PROXY listener would let anyone spoof addresses.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// A PROXY header's meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// A proxied TCP connection: the original client (source) and the address it connected to (destination).
    Proxied {
        /// The original client's address.
        source: SocketAddr,
        /// The address the client connected to.
        destination: SocketAddr,
    },
    /// v2 LOCAL command, v1 "UNKNOWN", or a v2 family/protocol warren does not carry (AF_UNIX, UDP, UNSPEC): use the real peer address.
    Local,
}

/// Longest v1 line the spec allows, CRLF included ("PROXY UNKNOWN" with two full IPv6 addresses).
pub const V1_MAX_LEN: usize = 107;

/// The 12 bytes every v2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Length of the fixed v2 part: signature, version/command, family/protocol, length.
pub const V2_FIXED_LEN: usize = 16;

/// Largest v2 address block plus TLVs warren accepts.
///
/// The wire format allows 65535, but every byte must be buffered before the header is complete,
/// so this bounds memory per half-open connection. It still holds an AF_UNIX block (216 bytes)
/// plus the TLVs cloud balancers send (VPC endpoint ids, SSL info, unique id ≤ 128 bytes).
pub const V2_MAX_ADDRESS_AND_TLV_LEN: usize = 1024;

/// Largest v2 header warren accepts (fixed part + address block + TLVs); longer is an error.
pub const V2_MAX_LEN: usize = V2_FIXED_LEN + V2_MAX_ADDRESS_AND_TLV_LEN;

const V1_PREFIX: &[u8] = b"PROXY ";
const V1_PROTOCOLS: [&[u8]; 3] = [b"TCP4", b"TCP6", b"UNKNOWN"];

const V2_VERSION: u8 = 2;
const V2_CMD_LOCAL: u8 = 0x0;
const V2_CMD_PROXY: u8 = 0x1;
const V2_TCP4: u8 = 0x11;
const V2_UDP4: u8 = 0x12;
const V2_TCP6: u8 = 0x21;
const V2_UDP6: u8 = 0x22;
const V2_UNIX_STREAM: u8 = 0x31;
const V2_UNIX_DGRAM: u8 = 0x32;
const V2_INET_ADDR_LEN: u16 = 12;
const V2_INET6_ADDR_LEN: u16 = 36;
const V2_UNIX_ADDR_LEN: u16 = 216;

/// Result of looking at the first bytes a client sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// Need more bytes; the prefix is consistent with a header so far.
    Incomplete,
    /// A complete header of `len` bytes at the start of the buffer; bytes after it are payload.
    Complete {
        /// What the header says.
        header: Header,
        /// Header length in bytes; the caller must drop exactly this many before forwarding.
        len: usize,
    },
}

/// Why the bytes at the start of a connection are not an acceptable PROXY header.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// The first bytes match neither "PROXY " nor the v2 signature.
    #[error("connection does not start with a PROXY protocol header (neither \"PROXY \" nor the v2 signature)")]
    NotProxyProtocol,
    /// No CRLF within the first 107 bytes of a v1 line.
    #[error("PROXY v1 line has no CRLF within the first {V1_MAX_LEN} bytes")]
    V1TooLong,
    /// The v1 line does not match the spec's grammar.
    #[error("malformed PROXY v1 line: {reason}")]
    V1Malformed {
        /// Which rule the line broke.
        reason: &'static str,
    },
    /// The v2 version nibble is not 2.
    #[error("PROXY v2 header has version {0}, only 2 is accepted")]
    V2BadVersion(u8),
    /// The v2 command nibble is neither LOCAL (0) nor PROXY (1).
    #[error("PROXY v2 header has unassigned command {0:#x} (expected 0 LOCAL or 1 PROXY)")]
    V2BadCommand(u8),
    /// A v2 PROXY command names an unassigned address family or transport protocol.
    #[error("PROXY v2 header has unassigned address family/protocol byte {0:#04x}")]
    V2BadFamily(u8),
    /// The v2 length does not cover the address block its family requires.
    #[error("PROXY v2 address length {len} is shorter than the {needed} bytes family/protocol {family:#04x} requires")]
    V2AddressTooShort {
        /// The family/protocol byte.
        family: u8,
        /// The declared length of address block plus TLVs.
        len: u16,
        /// The address block size that family requires.
        needed: u16,
    },
    /// The v2 header (fixed part + declared length) exceeds [`V2_MAX_LEN`].
    #[error("PROXY v2 header of {0} bytes exceeds warren's limit of {V2_MAX_LEN} bytes")]
    V2TooLong(usize),
}

/// Append a v1 header ("PROXY TCP4 ...\r\n"). IPv4-mapped IPv6 addresses are written as IPv4; if source and destination still differ in family, write both as IPv6 (v4-mapped). `Header::Local` → "PROXY UNKNOWN\r\n".
///
/// IPv6 addresses are written as eight 4-digit hex groups: the spec's literal format, and unlike
/// `Ipv6Addr`'s `Display` it never falls back to a dotted quad for v4-mapped addresses.
/// Flow info and scope ids are not carried by the protocol and are dropped.
pub fn encode_v1(header: &Header, out: &mut Vec<u8>) {
    let Header::Proxied {
        source,
        destination,
    } = header
    else {
        out.extend_from_slice(b"PROXY UNKNOWN\r\n");
        return;
    };
    let (source, destination) = normalise(*source, *destination);
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            write_infallible(out, format_args!("PROXY TCP4 {src} {dst} "));
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            out.extend_from_slice(b"PROXY TCP6 ");
            write_ipv6_full(out, src);
            out.push(b' ');
            write_ipv6_full(out, dst);
            out.push(b' ');
        }
        _ => unreachable!("normalise returns addresses of one family"),
    }
    write_infallible(
        out,
        format_args!("{} {}\r\n", source.port(), destination.port()),
    );
}

/// Append a v2 header (signature, version 2, PROXY command with AF_INET/AF_INET6 + STREAM, or LOCAL command with AF_UNSPEC and zero length for Header::Local). Same address normalisation as v1.
pub fn encode_v2(header: &Header, out: &mut Vec<u8>) {
    out.extend_from_slice(&V2_SIGNATURE);
    let Header::Proxied {
        source,
        destination,
    } = header
    else {
        out.extend_from_slice(&[(V2_VERSION << 4) | V2_CMD_LOCAL, 0x00, 0x00, 0x00]);
        return;
    };
    let (source, destination) = normalise(*source, *destination);
    out.push((V2_VERSION << 4) | V2_CMD_PROXY);
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            out.push(V2_TCP4);
            out.extend_from_slice(&V2_INET_ADDR_LEN.to_be_bytes());
            out.extend_from_slice(&src.octets());
            out.extend_from_slice(&dst.octets());
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            out.push(V2_TCP6);
            out.extend_from_slice(&V2_INET6_ADDR_LEN.to_be_bytes());
            out.extend_from_slice(&src.octets());
            out.extend_from_slice(&dst.octets());
        }
        _ => unreachable!("normalise returns addresses of one family"),
    }
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&destination.port().to_be_bytes());
}

/// Strict parser: given all bytes received so far, decide. Never reads past the header.
///
/// Errors are reported as soon as the bytes seen so far rule out a valid header, so the caller
/// can drop a bad connection without waiting for a timeout.
pub fn parse(buf: &[u8]) -> Result<Parsed, ParseError> {
    if is_prefix_consistent(buf, &V2_SIGNATURE) {
        if buf.len() < V2_SIGNATURE.len() {
            return Ok(Parsed::Incomplete);
        }
        parse_v2(buf)
    } else if is_prefix_consistent(buf, V1_PREFIX) {
        if buf.len() < V1_PREFIX.len() {
            return Ok(Parsed::Incomplete);
        }
        parse_v1(buf)
    } else {
        Err(ParseError::NotProxyProtocol)
    }
}

/// True when `buf` and `expected` agree on their common length.
fn is_prefix_consistent(buf: &[u8], expected: &[u8]) -> bool {
    let n = buf.len().min(expected.len());
    buf[..n] == expected[..n]
}

/// `buf` starts with "PROXY ".
fn parse_v1(buf: &[u8]) -> Result<Parsed, ParseError> {
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    // The line ends at the first LF; the spec forbids a lone CR or LF as a terminator.
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        if buf.len() >= V1_MAX_LEN {
            return Err(ParseError::V1TooLong);
        }
        check_v1_protocol_prefix(&buf[V1_PREFIX.len()..])?;
        return Ok(Parsed::Incomplete);
    };
    if buf[lf - 1] != b'\r' {
        return Err(malformed("line ends with LF without CR"));
    }
    let header = parse_v1_line(&buf[V1_PREFIX.len()..lf - 1])?;
    Ok(Parsed::Complete {
        header,
        len: lf + 1,
    })
}

/// Rejects an incomplete line early when its protocol token already cannot be valid.
fn check_v1_protocol_prefix(rest: &[u8]) -> Result<(), ParseError> {
    let ok = match rest.iter().position(|&b| b == b' ' || b == b'\r') {
        Some(end) => V1_PROTOCOLS.contains(&&rest[..end]),
        None => V1_PROTOCOLS.iter().any(|p| p.starts_with(rest)),
    };
    if ok {
        Ok(())
    } else {
        Err(malformed("protocol must be TCP4, TCP6 or UNKNOWN"))
    }
}

/// `line` is everything after "PROXY " and before the CRLF.
fn parse_v1_line(line: &[u8]) -> Result<Header, ParseError> {
    // The spec makes the receiver ignore whatever follows UNKNOWN.
    if line == b"UNKNOWN" || line.starts_with(b"UNKNOWN ") {
        return Ok(Header::Local);
    }
    let mut fields = line.split(|&b| b == b' ');
    let is_tcp6 = match fields.next() {
        Some(b"TCP4") => false,
        Some(b"TCP6") => true,
        _ => return Err(malformed("protocol must be TCP4, TCP6 or UNKNOWN")),
    };
    let mut next_field = || match fields.next() {
        None => Err(malformed(
            "TCP4/TCP6 need source address, destination address, source port, destination port",
        )),
        Some([]) => Err(malformed("fields must be separated by exactly one space")),
        Some(field) => Ok(field),
    };
    let (src_ip, dst_ip) = (next_field()?, next_field()?);
    let (src_port, dst_port) = (next_field()?, next_field()?);
    if fields.next().is_some() {
        return Err(malformed("extra field after destination port"));
    }
    let (src_ip, dst_ip) = if is_tcp6 {
        (
            IpAddr::V6(parse_v1_ipv6(src_ip)?),
            IpAddr::V6(parse_v1_ipv6(dst_ip)?),
        )
    } else {
        (
            IpAddr::V4(parse_v1_ipv4(src_ip)?),
            IpAddr::V4(parse_v1_ipv4(dst_ip)?),
        )
    };
    Ok(Header::Proxied {
        source: SocketAddr::new(src_ip, parse_v1_port(src_port)?),
        destination: SocketAddr::new(dst_ip, parse_v1_port(dst_port)?),
    })
}

fn parse_v1_ipv4(field: &[u8]) -> Result<Ipv4Addr, ParseError> {
    let text = std::str::from_utf8(field).map_err(|_| malformed("address is not ASCII"))?;
    // std rejects leading zeros in octets, as the spec requires.
    text.parse().map_err(|_| {
        if text.parse::<Ipv6Addr>().is_ok() {
            malformed("IPv6 address on a TCP4 line")
        } else {
            malformed("invalid IPv4 address")
        }
    })
}

fn parse_v1_ipv6(field: &[u8]) -> Result<Ipv6Addr, ParseError> {
    // The spec allows only hex groups and colons; std would also take an embedded dotted quad.
    if !field.iter().all(|&b| b == b':' || b.is_ascii_hexdigit()) {
        return Err(if field.contains(&b'.') && !field.contains(&b':') {
            malformed("IPv4 address on a TCP6 line")
        } else {
            malformed("invalid IPv6 address")
        });
    }
    let text = std::str::from_utf8(field).map_err(|_| malformed("address is not ASCII"))?;
    text.parse().map_err(|_| malformed("invalid IPv6 address"))
}

/// Decimal 0..=65535 without sign or leading zeros (std's `u16::from_str` accepts "+80" and "080").
fn parse_v1_port(field: &[u8]) -> Result<u16, ParseError> {
    if !field.iter().all(u8::is_ascii_digit) {
        return Err(malformed("port is not a decimal number"));
    }
    if field.len() > 1 && field[0] == b'0' {
        return Err(malformed("port has a leading zero"));
    }
    if field.len() > 5 {
        return Err(malformed("port out of range 0..=65535"));
    }
    let value = field
        .iter()
        .fold(0u32, |acc, &d| acc * 10 + u32::from(d - b'0'));
    u16::try_from(value).map_err(|_| malformed("port out of range 0..=65535"))
}

fn malformed(reason: &'static str) -> ParseError {
    ParseError::V1Malformed { reason }
}

/// `buf` starts with the full v2 signature.
fn parse_v2(buf: &[u8]) -> Result<Parsed, ParseError> {
    let Some(&ver_cmd) = buf.get(12) else {
        return Ok(Parsed::Incomplete);
    };
    let version = ver_cmd >> 4;
    if version != V2_VERSION {
        return Err(ParseError::V2BadVersion(version));
    }
    let command = ver_cmd & 0x0f;
    if command != V2_CMD_LOCAL && command != V2_CMD_PROXY {
        return Err(ParseError::V2BadCommand(command));
    }
    let Some(&family) = buf.get(13) else {
        return Ok(Parsed::Incomplete);
    };
    // LOCAL ignores the family entirely, per spec; PROXY must name an assigned one.
    if command == V2_CMD_PROXY && (family >> 4 > 0x3 || family & 0x0f > 0x2) {
        return Err(ParseError::V2BadFamily(family));
    }
    let Some(&[len_hi, len_lo]) = buf.get(14..16) else {
        return Ok(Parsed::Incomplete);
    };
    let addr_len = u16::from_be_bytes([len_hi, len_lo]);
    let total = V2_FIXED_LEN + usize::from(addr_len);
    if total > V2_MAX_LEN {
        return Err(ParseError::V2TooLong(total));
    }
    if command == V2_CMD_PROXY {
        let needed = match family {
            V2_TCP4 | V2_UDP4 => V2_INET_ADDR_LEN,
            V2_TCP6 | V2_UDP6 => V2_INET6_ADDR_LEN,
            V2_UNIX_STREAM | V2_UNIX_DGRAM => V2_UNIX_ADDR_LEN,
            _ => 0,
        };
        if addr_len < needed {
            return Err(ParseError::V2AddressTooShort {
                family,
                len: addr_len,
                needed,
            });
        }
    }
    let Some(block) = buf.get(V2_FIXED_LEN..total) else {
        return Ok(Parsed::Incomplete);
    };
    let header = match (command, family) {
        (V2_CMD_PROXY, V2_TCP4) => {
            let ip =
                |at: usize| Ipv4Addr::new(block[at], block[at + 1], block[at + 2], block[at + 3]);
            let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
            Header::Proxied {
                source: SocketAddr::new(IpAddr::V4(ip(0)), port(8)),
                destination: SocketAddr::new(IpAddr::V4(ip(4)), port(10)),
            }
        }
        (V2_CMD_PROXY, V2_TCP6) => {
            let ip = |at: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&block[at..at + 16]);
                Ipv6Addr::from(octets)
            };
            let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
            Header::Proxied {
                source: SocketAddr::new(IpAddr::V6(ip(0)), port(32)),
                destination: SocketAddr::new(IpAddr::V6(ip(16)), port(34)),
            }
        }
        // LOCAL, and families warren does not forward (UNSPEC, UDP, UNIX): the spec lets the
        // receiver fall back to the real endpoints. TLVs after the block are skipped unread.
        _ => Header::Local,
    };
    Ok(Parsed::Complete { header, len: total })
}

/// Unmaps v4-mapped addresses, then puts a mixed pair into one family (IPv6) as the header needs.
fn normalise(source: SocketAddr, destination: SocketAddr) -> (SocketAddr, SocketAddr) {
    let (src, dst) = (source.ip().to_canonical(), destination.ip().to_canonical());
    let (src, dst) = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V6(d)) => (IpAddr::V6(s.to_ipv6_mapped()), IpAddr::V6(d)),
        (IpAddr::V6(s), IpAddr::V4(d)) => (IpAddr::V6(s), IpAddr::V6(d.to_ipv6_mapped())),
        same_family => same_family,
    };
    (
        SocketAddr::new(src, source.port()),
        SocketAddr::new(dst, destination.port()),
    )
}

fn write_ipv6_full(out: &mut Vec<u8>, ip: Ipv6Addr) {
    for (i, segment) in ip.segments().iter().enumerate() {
        if i > 0 {
            out.push(b':');
        }
        write_infallible(out, format_args!("{segment:04x}"));
    }
}

fn write_infallible(out: &mut Vec<u8>, args: std::fmt::Arguments<'_>) {
    out.write_fmt(args)
        .expect("io::Write for Vec<u8> never fails");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxied(source: &str, destination: &str) -> Header {
        Header::Proxied {
            source: source.parse().unwrap(),
            destination: destination.parse().unwrap(),
        }
    }

    fn v1(header: &Header) -> Vec<u8> {
        let mut out = Vec::new();
        encode_v1(header, &mut out);
        out
    }

    fn v2(header: &Header) -> Vec<u8> {
        let mut out = Vec::new();
        encode_v2(header, &mut out);
        out
    }

    /// A v2 header with arbitrary ver/cmd, family and length fields, followed by `rest`.
    fn v2_raw(ver_cmd: u8, family: u8, len: u16, rest: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.extend_from_slice(&[ver_cmd, family]);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(rest);
        out
    }

    const TCP4_BLOCK: [u8; 12] = [192, 168, 0, 1, 192, 168, 0, 11, 0xdc, 0x04, 0x01, 0xbb];

    #[test]
    fn encode_v1_matches_expected_lines() {
        let full_v6 = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let cases: &[(&str, Header, String)] = &[
            (
                "spec TCP4 example",
                proxied("192.168.0.1:56324", "192.168.0.11:443"),
                "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n".into(),
            ),
            (
                "max-length TCP6 (104 bytes)",
                proxied(&format!("[{full_v6}]:65535"), &format!("[{full_v6}]:65535")),
                format!("PROXY TCP6 {full_v6} {full_v6} 65535 65535\r\n"),
            ),
            (
                "IPv6 written as full groups",
                proxied("[2001:db8::1]:5672", "[::1]:0"),
                "PROXY TCP6 2001:0db8:0000:0000:0000:0000:0000:0001 \
                 0000:0000:0000:0000:0000:0000:0000:0001 5672 0\r\n"
                    .into(),
            ),
            (
                "v4-mapped pair written as TCP4",
                proxied("[::ffff:10.0.0.1]:40000", "[::ffff:10.0.0.2]:5672"),
                "PROXY TCP4 10.0.0.1 10.0.0.2 40000 5672\r\n".into(),
            ),
            (
                "mixed families written as TCP6 with v4-mapped source",
                proxied("10.0.0.1:40000", "[2001:db8::2]:5672"),
                "PROXY TCP6 0000:0000:0000:0000:0000:ffff:0a00:0001 \
                 2001:0db8:0000:0000:0000:0000:0000:0002 40000 5672\r\n"
                    .into(),
            ),
            ("local", Header::Local, "PROXY UNKNOWN\r\n".into()),
        ];
        for (name, header, expected) in cases {
            let out = v1(header);
            assert_eq!(String::from_utf8(out.clone()).unwrap(), *expected, "{name}");
            assert!(out.len() <= V1_MAX_LEN, "{name}");
        }
    }

    #[test]
    fn encode_v2_matches_expected_bytes() {
        let sig = V2_SIGNATURE;
        let mut tcp4 = sig.to_vec();
        tcp4.extend_from_slice(&[0x21, 0x11, 0x00, 0x0c]);
        tcp4.extend_from_slice(&TCP4_BLOCK);

        let mut tcp6 = sig.to_vec();
        tcp6.extend_from_slice(&[0x21, 0x21, 0x00, 0x24]);
        tcp6.extend_from_slice(&[
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, // source
            0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0x12, 0x34, 0, 0, 0, 0, 0xab, 0xcd, // destination
            0x9c, 0x40, // 40000
            0x16, 0x28, // 5672
        ]);

        let mut mapped = sig.to_vec();
        mapped.extend_from_slice(&[0x21, 0x11, 0x00, 0x0c, 10, 0, 0, 1, 10, 0, 0, 2]);
        mapped.extend_from_slice(&[0x9c, 0x40, 0x16, 0x28]);

        let mut local = sig.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);

        let cases: &[(&str, Header, Vec<u8>)] = &[
            (
                "TCP4",
                proxied("192.168.0.1:56324", "192.168.0.11:443"),
                tcp4,
            ),
            (
                "TCP6",
                proxied("[2001:db8::1]:40000", "[fe80::1234:0:0:abcd]:5672"),
                tcp6,
            ),
            (
                "v4-mapped pair written as TCP4",
                proxied("[::ffff:10.0.0.1]:40000", "[::ffff:10.0.0.2]:5672"),
                mapped,
            ),
            ("local", Header::Local, local),
        ];
        for (name, header, expected) in cases {
            assert_eq!(v2(header), *expected, "{name}");
        }
        assert_eq!(
            &V2_SIGNATURE,
            &[0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]
        );
    }

    #[test]
    fn parse_accepts_valid_headers() {
        let full_v6 = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let tcp6_max = format!("PROXY TCP6 {full_v6} {full_v6} 65535 65535\r\n");
        let worst_case = format!("PROXY UNKNOWN {full_v6} {full_v6} 65535 65535\r\n");
        assert_eq!(tcp6_max.len(), 104);
        assert_eq!(worst_case.len(), V1_MAX_LEN);
        let max_v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::from(u128::MAX)), 65535);

        let mut tlvs = v2_raw(0x21, 0x11, 12 + 7, &TCP4_BLOCK);
        tlvs.extend_from_slice(&[0x04, 0x00, 0x04, 1, 2, 3, 4]); // PP2_TYPE_NOOP
        let mut v2_max = v2_raw(0x21, 0x11, V2_MAX_ADDRESS_AND_TLV_LEN as u16, &TCP4_BLOCK);
        v2_max.resize(V2_MAX_LEN, 0);

        let spec_v4 = proxied("192.168.0.1:56324", "192.168.0.11:443");
        let cases: Vec<(&str, Vec<u8>, Header, usize)> = vec![
            (
                "spec v1 TCP4 example, HTTP payload after it",
                b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n".to_vec(),
                spec_v4,
                47,
            ),
            (
                "spec v1 TCP6 max-length example",
                tcp6_max.clone().into_bytes(),
                Header::Proxied {
                    source: max_v6,
                    destination: max_v6,
                },
                104,
            ),
            (
                "v1 TCP6 compressed form",
                b"PROXY TCP6 2001:db8::1 ::1 0 65535\r\n".to_vec(),
                proxied("[2001:db8::1]:0", "[::1]:65535"),
                36,
            ),
            (
                "v1 UNKNOWN short form",
                b"PROXY UNKNOWN\r\n".to_vec(),
                Header::Local,
                15,
            ),
            (
                "v1 UNKNOWN worst case 107 bytes",
                worst_case.into_bytes(),
                Header::Local,
                107,
            ),
            (
                "v1 UNKNOWN with garbage ignored",
                b"PROXY UNKNOWN what  ever\r\nAMQP".to_vec(),
                Header::Local,
                26,
            ),
            (
                "v2 TCP4 with AMQP payload",
                v2_raw(
                    0x21,
                    0x11,
                    12,
                    &[&TCP4_BLOCK[..], b"AMQP\0\0\x09\x01"].concat(),
                ),
                spec_v4,
                28,
            ),
            ("v2 TCP4 with a TLV skipped", tlvs, spec_v4, 35),
            ("v2 at V2_MAX_LEN", v2_max, spec_v4, V2_MAX_LEN),
            (
                "v2 LOCAL",
                v2_raw(0x20, 0x00, 0, b"AMQP"),
                Header::Local,
                16,
            ),
            (
                "v2 LOCAL skips its address block",
                v2_raw(0x20, 0x11, 12, &TCP4_BLOCK),
                Header::Local,
                28,
            ),
            (
                "v2 LOCAL ignores an unassigned family",
                v2_raw(0x20, 0xff, 0, b""),
                Header::Local,
                16,
            ),
            (
                "v2 PROXY UNSPEC",
                v2_raw(0x21, 0x00, 0, b""),
                Header::Local,
                16,
            ),
            (
                "v2 PROXY UDP4",
                v2_raw(0x21, 0x12, 12, &TCP4_BLOCK),
                Header::Local,
                28,
            ),
            (
                "v2 PROXY UDP6",
                v2_raw(0x21, 0x22, 36, &[0; 36]),
                Header::Local,
                52,
            ),
            (
                "v2 PROXY UNIX stream",
                v2_raw(0x21, 0x31, 216, &[0; 216]),
                Header::Local,
                232,
            ),
        ];
        for (name, input, header, len) in cases {
            assert_eq!(
                parse(&input),
                Ok(Parsed::Complete { header, len }),
                "{name}"
            );
        }
    }

    #[test]
    fn parse_rejects_malformed_headers() {
        let bad = |reason| ParseError::V1Malformed { reason };
        let fields_err = bad(
            "TCP4/TCP6 need source address, destination address, source port, destination port",
        );
        let mut long_line = b"PROXY UNKNOWN ".to_vec();
        long_line.resize(108, b'a');
        let mut last_sig_byte = V2_SIGNATURE;
        last_sig_byte[11] = b'X';

        let cases: Vec<(&str, Vec<u8>, ParseError)> = vec![
            (
                "HTTP request",
                b"GET / HTTP/1.1\r\n".to_vec(),
                ParseError::NotProxyProtocol,
            ),
            (
                "decided from the first byte",
                b"G".to_vec(),
                ParseError::NotProxyProtocol,
            ),
            (
                "AMQP protocol header",
                b"AMQP\0\0\x09\x01".to_vec(),
                ParseError::NotProxyProtocol,
            ),
            (
                "lowercase proxy",
                b"proxy TCP4".to_vec(),
                ParseError::NotProxyProtocol,
            ),
            (
                "PROXY without space",
                b"PROXYTCP4".to_vec(),
                ParseError::NotProxyProtocol,
            ),
            (
                "signature differs in the last byte",
                last_sig_byte.to_vec(),
                ParseError::NotProxyProtocol,
            ),
            (
                "missing field",
                b"PROXY TCP4 1.2.3.4 5.6.7.8 80\r\n".to_vec(),
                fields_err,
            ),
            (
                "extra field",
                b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443 x\r\n".to_vec(),
                bad("extra field after destination port"),
            ),
            (
                "double space",
                b"PROXY TCP4 1.2.3.4  5.6.7.8 80 443\r\n".to_vec(),
                bad("fields must be separated by exactly one space"),
            ),
            (
                "trailing space",
                b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443 \r\n".to_vec(),
                bad("extra field after destination port"),
            ),
            (
                "double space after PROXY",
                b"PROXY  TCP4 1.2.3.4 5.6.7.8 80 443\r\n".to_vec(),
                bad("protocol must be TCP4, TCP6 or UNKNOWN"),
            ),
            (
                "TCP5",
                b"PROXY TCP5 1.2.3.4 5.6.7.8 80 443\r\n".to_vec(),
                bad("protocol must be TCP4, TCP6 or UNKNOWN"),
            ),
            (
                "TCP5 rejected before the CRLF",
                b"PROXY TCP5".to_vec(),
                bad("protocol must be TCP4, TCP6 or UNKNOWN"),
            ),
            (
                "UNKNOWN glued to more text",
                b"PROXY UNKNOWNX\r\n".to_vec(),
                bad("protocol must be TCP4, TCP6 or UNKNOWN"),
            ),
            (
                "IPv6 address on a TCP4 line",
                b"PROXY TCP4 ::1 5.6.7.8 80 443\r\n".to_vec(),
                bad("IPv6 address on a TCP4 line"),
            ),
            (
                "IPv4 address on a TCP6 line",
                b"PROXY TCP6 1.2.3.4 ::1 80 443\r\n".to_vec(),
                bad("IPv4 address on a TCP6 line"),
            ),
            (
                "dotted quad inside TCP6 address",
                b"PROXY TCP6 ::ffff:1.2.3.4 ::1 80 443\r\n".to_vec(),
                bad("invalid IPv6 address"),
            ),
            (
                "IPv4 octet with leading zero",
                b"PROXY TCP4 01.2.3.4 5.6.7.8 80 443\r\n".to_vec(),
                bad("invalid IPv4 address"),
            ),
            (
                "IPv4 octet out of range",
                b"PROXY TCP4 1.2.3.256 5.6.7.8 80 443\r\n".to_vec(),
                bad("invalid IPv4 address"),
            ),
            (
                "port 65536",
                b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 443\r\n".to_vec(),
                bad("port out of range 0..=65535"),
            ),
            (
                "port 080",
                b"PROXY TCP4 1.2.3.4 5.6.7.8 80 080\r\n".to_vec(),
                bad("port has a leading zero"),
            ),
            (
                "port with plus sign",
                b"PROXY TCP4 1.2.3.4 5.6.7.8 +80 443\r\n".to_vec(),
                bad("port is not a decimal number"),
            ),
            (
                "missing CR",
                b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443\n".to_vec(),
                bad("line ends with LF without CR"),
            ),
            (
                "lone CR before the end",
                b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443\rx\r\n".to_vec(),
                bad("port is not a decimal number"),
            ),
            ("108 bytes without CRLF", long_line, ParseError::V1TooLong),
            (
                "v2 version 1",
                v2_raw(0x11, 0x11, 12, &TCP4_BLOCK),
                ParseError::V2BadVersion(1),
            ),
            (
                "v2 version decided from byte 13",
                v2_raw(0x31, 0x11, 12, &[])[..13].to_vec(),
                ParseError::V2BadVersion(3),
            ),
            (
                "v2 command 0x2F",
                v2_raw(0x2f, 0x11, 12, &TCP4_BLOCK),
                ParseError::V2BadCommand(0xf),
            ),
            (
                "v2 unassigned family",
                v2_raw(0x21, 0x41, 12, &TCP4_BLOCK),
                ParseError::V2BadFamily(0x41),
            ),
            (
                "v2 unassigned transport protocol",
                v2_raw(0x21, 0x13, 12, &TCP4_BLOCK),
                ParseError::V2BadFamily(0x13),
            ),
            (
                "v2 TCP4 with length 8",
                v2_raw(0x21, 0x11, 8, &TCP4_BLOCK[..8]),
                ParseError::V2AddressTooShort {
                    family: 0x11,
                    len: 8,
                    needed: 12,
                },
            ),
            (
                "v2 TCP6 with length 12",
                v2_raw(0x21, 0x21, 12, &TCP4_BLOCK),
                ParseError::V2AddressTooShort {
                    family: 0x21,
                    len: 12,
                    needed: 36,
                },
            ),
            (
                "v2 longer than V2_MAX_LEN, decided from the fixed part",
                v2_raw(0x21, 0x11, V2_MAX_ADDRESS_AND_TLV_LEN as u16 + 1, &[]),
                ParseError::V2TooLong(V2_MAX_LEN + 1),
            ),
            (
                "v2 maximum wire length",
                v2_raw(0x21, 0x11, u16::MAX, &[]),
                ParseError::V2TooLong(16 + 65535),
            ),
        ];
        for (name, input, expected) in cases {
            assert_eq!(parse(&input), Err(expected), "{name}");
        }
    }

    #[test]
    fn round_trip_through_both_versions() {
        let cases: &[(&str, Header, Header)] = &[
            (
                "IPv4",
                proxied("10.1.2.3:40000", "10.0.0.5:5672"),
                proxied("10.1.2.3:40000", "10.0.0.5:5672"),
            ),
            (
                "IPv6",
                proxied("[2001:db8::7]:1", "[fd00::1]:5671"),
                proxied("[2001:db8::7]:1", "[fd00::1]:5671"),
            ),
            (
                "port zero and max",
                proxied("0.0.0.0:0", "255.255.255.255:65535"),
                proxied("0.0.0.0:0", "255.255.255.255:65535"),
            ),
            (
                "v4-mapped pair becomes IPv4",
                proxied("[::ffff:192.0.2.1]:40000", "[::ffff:192.0.2.9]:5672"),
                proxied("192.0.2.1:40000", "192.0.2.9:5672"),
            ),
            (
                "v4-mapped source with IPv4 destination becomes IPv4",
                proxied("[::ffff:192.0.2.1]:40000", "192.0.2.9:5672"),
                proxied("192.0.2.1:40000", "192.0.2.9:5672"),
            ),
            (
                "mixed families become IPv6",
                proxied("192.0.2.1:40000", "[2001:db8::9]:5672"),
                proxied("[::ffff:192.0.2.1]:40000", "[2001:db8::9]:5672"),
            ),
            ("local", Header::Local, Header::Local),
        ];
        for (name, header, expected) in cases {
            for (version, bytes) in [("v1", v1(header)), ("v2", v2(header))] {
                assert_eq!(
                    parse(&bytes),
                    Ok(Parsed::Complete {
                        header: *expected,
                        len: bytes.len()
                    }),
                    "{name} {version}"
                );
            }
        }
    }

    #[test]
    fn incremental_bytes_are_incomplete_until_the_last() {
        let header = proxied("[2001:db8::7]:40000", "[fd00::1]:5672");
        let v4 = proxied("192.168.0.1:56324", "192.168.0.11:443");
        let mut with_tlv = v2_raw(0x21, 0x11, 12 + 3, &TCP4_BLOCK);
        with_tlv.extend_from_slice(&[0x04, 0x00, 0x00]);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("v1 TCP4", v1(&v4)),
            ("v1 TCP6", v1(&header)),
            ("v1 UNKNOWN", v1(&Header::Local)),
            ("v2 TCP4", v2(&v4)),
            ("v2 TCP6", v2(&header)),
            ("v2 LOCAL", v2(&Header::Local)),
            ("v2 TCP4 with TLV", with_tlv),
        ];
        for (name, bytes) in cases {
            for end in 0..bytes.len() {
                assert_eq!(
                    parse(&bytes[..end]),
                    Ok(Parsed::Incomplete),
                    "{name}: prefix of {end} bytes"
                );
            }
            let expected = parse(&bytes).unwrap();
            let Parsed::Complete { len, .. } = expected else {
                panic!("{name}: full header is incomplete");
            };
            assert_eq!(len, bytes.len(), "{name}");
            let mut with_payload = bytes.clone();
            with_payload.extend_from_slice(b"AMQP\0\0\x09\x01");
            assert_eq!(parse(&with_payload), Ok(expected), "{name} with payload");
        }
    }

    #[test]
    fn mutated_headers_never_panic() {
        let v4 = proxied("192.168.0.1:56324", "192.168.0.11:443");
        let v6 = proxied("[2001:db8::7]:40000", "[fd00::1]:5672");
        let seeds = [v1(&v4), v1(&v6), v1(&Header::Local), v2(&v4), v2(&v6)];
        for seed in seeds {
            for at in 0..seed.len() {
                for value in [0x00, b' ', b'\r', b'\n', b'0', b':', b'.', 0x7f, 0xff] {
                    let mut bytes = seed.clone();
                    bytes[at] = value;
                    for end in 0..=bytes.len() {
                        // Only the absence of panics is under test here.
                        let _ = parse(&bytes[..end]);
                    }
                }
            }
        }
    }

    #[test]
    fn errors_say_what_was_wrong() {
        let cases: &[(ParseError, &str)] = &[
            (
                ParseError::V1Malformed {
                    reason: "port has a leading zero",
                },
                "malformed PROXY v1 line: port has a leading zero",
            ),
            (
                ParseError::V1TooLong,
                "PROXY v1 line has no CRLF within the first 107 bytes",
            ),
            (
                ParseError::V2BadCommand(0xf),
                "PROXY v2 header has unassigned command 0xf (expected 0 LOCAL or 1 PROXY)",
            ),
            (
                ParseError::V2AddressTooShort {
                    family: 0x11,
                    len: 8,
                    needed: 12,
                },
                "PROXY v2 address length 8 is shorter than the 12 bytes family/protocol 0x11 requires",
            ),
            (
                ParseError::V2TooLong(2000),
                "PROXY v2 header of 2000 bytes exceeds warren's limit of 1040 bytes",
            ),
        ];
        for (error, expected) in cases {
            assert_eq!(error.to_string(), *expected);
        }
    }
}
