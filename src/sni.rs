//! The server name a TLS client asks for, read from the start of its byte stream (the
//! ClientHello's `server_name` extension, RFC 6066 §3), for routing a connection without
//! terminating its TLS. Pure: it looks at bytes already received and says whether more are
//! needed; reading (peeking) the socket is the data plane's (`crate::proxy::sni`), matching the
//! name against routes is the config's (`crate::config::SniRoutes`).
//!
//! Written by hand rather than taken from a crate (rule 12 prefers a crate): only the record
//! layer, the handshake header and the extensions list are walked, about a hundred lines with
//! no allocation but the name. `tls-parser` would bring `nom` and parse every extension;
//! rustls's `server::Acceptor` parses a whole ClientHello, but it reads (consumes) from its
//! input and builds a connection's state for the handshake it means to continue; fed copies of
//! peeked bytes it would do that again at every segment, and its errors do not separate "not
//! TLS" from "malformed", which the operator sees as metric reasons here.

use std::borrow::Cow;

/// Longest ClientHello message looked at (its body, without the record headers): the 16 KiB of
/// one record's payload, which any hello fits (post-quantum key shares take about 1.2 KiB).
pub const MAX_HELLO: usize = 16 * 1024;

/// Most bytes [`parse`] may need before it decides: a [`MAX_HELLO`]-long hello cut into
/// records, each with its 5-byte header (at least 64 bytes of payload per record assumed, past
/// which it is called malformed).
pub const MAX_PEEK: usize = MAX_HELLO + 4 + (MAX_HELLO / 64 + 1) * 5;

/// What the bytes received so far say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// More bytes are needed to decide.
    Incomplete,
    /// The first bytes are not a TLS handshake record (plain AMQP, HTTP, ...).
    NotTls,
    /// A TLS handshake that is not a well-formed ClientHello; says what is wrong.
    Malformed(&'static str),
    /// A complete ClientHello without a `server_name` extension (or with no host name in it).
    NoServerName,
    /// The host name asked for: ASCII lowercase, without a trailing dot (an IDN arrives as its
    /// `xn--` A-labels).
    ServerName(String),
}

/// TLS record content type of handshake messages.
const HANDSHAKE: u8 = 22;
/// Handshake message type of a ClientHello.
const CLIENT_HELLO: u8 = 1;
/// Extension type of `server_name`.
const SERVER_NAME: u16 = 0;
/// `NameType` of a host name in the `server_name` list.
const HOST_NAME: u8 = 0;
/// Longest record payload a client may send (2^14 bytes of plaintext).
const MAX_RECORD: usize = 16 * 1024;

/// Read the server name from the first bytes a client sent. `Incomplete` asks for more bytes;
/// every other answer is final, and is given as soon as the bytes decide it (the name once its
/// extension is complete, not the whole hello).
pub fn parse(bytes: &[u8]) -> Hello {
    let message = match reassemble(bytes) {
        Ok(found) => found,
        Err(hello) => return hello,
    };
    // The handshake header: type, 24-bit length.
    if message.len() < 4 {
        return Hello::Incomplete;
    }
    if message[0] != CLIENT_HELLO {
        return Hello::Malformed("the first handshake message is not a ClientHello");
    }
    let length =
        usize::from(message[1]) << 16 | usize::from(message[2]) << 8 | usize::from(message[3]);
    if length > MAX_HELLO {
        return Hello::Malformed("ClientHello longer than 16 KiB");
    }
    let body = &message[4..message.len().min(4 + length)];
    let whole = body.len() == length;
    match client_hello(&mut Reader(body), whole) {
        Ok(hello) => hello,
        Err(Short) if whole => Hello::Malformed("a ClientHello field runs past its end"),
        Err(Short) => Hello::Incomplete,
    }
}

/// The handshake bytes carried by the leading handshake records, joined (borrowed when they sit
/// in one record). An `Err` is the final answer for bytes that are not a TLS handshake.
fn reassemble(bytes: &[u8]) -> Result<Cow<'_, [u8]>, Hello> {
    let mut joined: Option<Vec<u8>> = None;
    let mut first: &[u8] = &[];
    let mut at = 0;
    while at < bytes.len() {
        let header = &bytes[at..];
        if at == 0 && (header[0] != HANDSHAKE || header.get(1).is_some_and(|&v| v != 3)) {
            // Not even the start of a TLS record: decided on one or two bytes, so a plain
            // protocol is routed at once.
            return Err(Hello::NotTls);
        }
        if header.len() < 5 {
            break;
        }
        if header[0] != HANDSHAKE {
            // A record of another kind before the hello was complete.
            return Err(Hello::Malformed(
                "a non-handshake record inside the ClientHello",
            ));
        }
        let length = usize::from(header[3]) << 8 | usize::from(header[4]);
        if length == 0 || length > MAX_RECORD {
            return Err(Hello::Malformed("a TLS record of impossible length"));
        }
        let payload = &header[5..header.len().min(5 + length)];
        match (&mut joined, at) {
            (None, 0) => first = payload,
            (None, _) => joined = Some([first, payload].concat()),
            (Some(j), _) => j.extend_from_slice(payload),
        }
        // Whatever follows a whole hello is not the hello's: a TLS 1.3 client sending early
        // data puts a ChangeCipherSpec and application data records right behind it, in the
        // same segment (RFC 8446, D.4).
        if payload.len() < length || whole_message(joined.as_deref().unwrap_or(first)) {
            break;
        }
        at += 5 + length;
        if at > MAX_PEEK {
            return Err(Hello::Malformed(
                "ClientHello cut into too many small records",
            ));
        }
    }
    Ok(joined.map_or(Cow::Borrowed(first), Cow::Owned))
}

/// Whether `message` holds at least one whole handshake message (its 4-byte header and the
/// length that header gives).
fn whole_message(message: &[u8]) -> bool {
    let [_, a, b, c, ..] = *message else {
        return false;
    };
    message.len() >= 4 + (usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c))
}

/// The fields of a ClientHello body up to the `server_name` extension; `whole` when the body
/// is all there.
fn client_hello(r: &mut Reader<'_>, whole: bool) -> Result<Hello, Short> {
    r.skip(2 + 32)?; // legacy_version, random
    let session_id = r.u8()?;
    r.skip(usize::from(session_id))?;
    let suites = r.u16()?;
    r.skip(usize::from(suites))?;
    let compression = r.u8()?;
    r.skip(usize::from(compression))?;
    if r.0.is_empty() {
        // No extensions at all (an SSL 3.0-style hello), or they are still to come.
        return if whole {
            Ok(Hello::NoServerName)
        } else {
            Err(Short)
        };
    }
    let extensions = usize::from(r.u16()?);
    let mut left = extensions;
    while left > 0 {
        if left < 4 {
            return Ok(Hello::Malformed(
                "an extension header runs past the extensions",
            ));
        }
        let kind = r.u16()?;
        let length = usize::from(r.u16()?);
        if length > left - 4 {
            return Ok(Hello::Malformed("an extension runs past the extensions"));
        }
        let data = r.take(length)?;
        if kind == SERVER_NAME {
            return Ok(server_name(data));
        }
        left -= 4 + length;
    }
    Ok(Hello::NoServerName)
}

/// The host name in a complete `server_name` extension.
fn server_name(data: &[u8]) -> Hello {
    let mut r = Reader(data);
    let Ok(list) = r.u16() else {
        return Hello::Malformed("server_name extension too short");
    };
    let Ok(mut names) = r.take(usize::from(list)).map(Reader) else {
        return Hello::Malformed("server_name list runs past its extension");
    };
    while !names.0.is_empty() {
        let (Ok(kind), Ok(length)) = (names.u8(), names.u16()) else {
            return Hello::Malformed("server_name entry cut short");
        };
        let Ok(name) = names.take(usize::from(length)) else {
            return Hello::Malformed("server_name entry runs past its list");
        };
        if kind == HOST_NAME {
            return host_name(name);
        }
    }
    Hello::NoServerName
}

/// A host name as sent, checked and normalised: ASCII (RFC 6066: IDNs as A-labels), no NUL or
/// space, lowercase, without the trailing dot of an absolute name.
fn host_name(name: &[u8]) -> Hello {
    let name = name.strip_suffix(b".").unwrap_or(name);
    if name.is_empty() {
        return Hello::Malformed("empty server name");
    }
    if !name.iter().all(|b| b.is_ascii_graphic()) {
        return Hello::Malformed("server name is not printable ASCII");
    }
    Hello::ServerName(String::from_utf8_lossy(name).to_ascii_lowercase())
}

/// The bytes ran out before a field's end.
struct Short;

/// A cursor over big-endian fields.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Short> {
        if self.0.len() < n {
            self.0 = &[];
            return Err(Short);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn skip(&mut self, n: usize) -> Result<(), Short> {
        self.take(n).map(drop)
    }

    fn u8(&mut self) -> Result<u8, Short> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Short> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello body with these extensions (type, data).
    fn hello_body(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.push(32);
        body.extend_from_slice(&[9; 32]);
        body.extend_from_slice(&[0, 4, 0x13, 0x01, 0x13, 0x02]);
        body.extend_from_slice(&[1, 0]);
        let mut ext = Vec::new();
        for (kind, data) in extensions {
            ext.extend_from_slice(&kind.to_be_bytes());
            ext.extend_from_slice(&(data.len() as u16).to_be_bytes());
            ext.extend_from_slice(data);
        }
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        body
    }

    fn sni(name: &[u8]) -> (u16, Vec<u8>) {
        let mut entry = vec![HOST_NAME];
        entry.extend_from_slice(&(name.len() as u16).to_be_bytes());
        entry.extend_from_slice(name);
        let mut data = (entry.len() as u16).to_be_bytes().to_vec();
        data.extend_from_slice(&entry);
        (SERVER_NAME, data)
    }

    /// The handshake message of `body`, cut into records of at most `per_record` bytes.
    fn records(body: &[u8], per_record: usize) -> Vec<u8> {
        let mut message = vec![CLIENT_HELLO];
        message.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        message.extend_from_slice(body);
        let mut out = Vec::new();
        for chunk in message.chunks(per_record) {
            out.extend_from_slice(&[HANDSHAKE, 3, 1]);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    fn named(name: &str) -> Hello {
        Hello::ServerName(name.to_string())
    }

    #[test]
    fn a_hello_in_one_record_gives_its_name() {
        let body = hello_body(&[(10, vec![0, 2, 0, 29]), sni(b"orders.example.com")]);
        assert_eq!(parse(&records(&body, 1 << 14)), named("orders.example.com"));
    }

    #[test]
    fn every_prefix_of_a_hello_is_incomplete_until_the_name_is_whole() {
        let body = hello_body(&[
            (10, vec![0, 2, 0, 29]),
            sni(b"a.example.com"),
            (43, vec![2, 3, 4]),
        ]);
        for per_record in [1, 7, 64, 1 << 14] {
            let bytes = records(&body, per_record);
            let decided = (1..=bytes.len())
                .find(|&n| parse(&bytes[..n]) != Hello::Incomplete)
                .unwrap();
            assert_eq!(
                parse(&bytes[..decided]),
                named("a.example.com"),
                "{per_record}"
            );
            // Decided before the last extension arrived.
            assert!(decided < bytes.len(), "{per_record}");
            assert_eq!(parse(&bytes), named("a.example.com"), "{per_record}");
        }
    }

    #[test]
    fn records_after_a_whole_hello_are_not_the_hellos() {
        let body = hello_body(&[(10, vec![0, 2, 0, 29]), sni(b"orders.example.com")]);
        // TLS 1.3 with early data: ChangeCipherSpec and application data right behind.
        let after = [&[20, 3, 3, 0, 1, 1][..], &[23, 3, 3, 0, 3, 7, 7, 7]].concat();
        for per_record in [64, 1 << 14] {
            let bytes = [records(&body, per_record), after.clone()].concat();
            assert_eq!(parse(&bytes), named("orders.example.com"), "{per_record}");
        }
        // Before the hello is whole, another record is still a malformed hello.
        let bytes = records(&body, 64);
        let cut = [&bytes[..69], &after[..]].concat();
        assert!(
            matches!(parse(&cut), Hello::Malformed(_)),
            "{:?}",
            parse(&cut)
        );
    }

    #[test]
    fn a_hello_without_the_extension_has_no_name() {
        let bytes = records(&hello_body(&[(10, vec![0, 2, 0, 29])]), 1 << 14);
        assert_eq!(parse(&bytes[..bytes.len() - 1]), Hello::Incomplete);
        assert_eq!(parse(&bytes), Hello::NoServerName);
        // No extensions block at all.
        let mut body = hello_body(&[]);
        body.truncate(body.len() - 2);
        assert_eq!(parse(&records(&body, 1 << 14)), Hello::NoServerName);
        // A server_name list without a host name.
        let other = (SERVER_NAME, vec![0, 3, 7, 0, 0]);
        assert_eq!(
            parse(&records(&hello_body(&[other]), 100)),
            Hello::NoServerName
        );
    }

    #[test]
    fn names_are_lowercased_and_lose_a_trailing_dot() {
        for (sent, want) in [
            (&b"Orders.EXAMPLE.com"[..], "orders.example.com"),
            (b"XN--BCHER-KVA.example.", "xn--bcher-kva.example"),
            (b"10.0.0.1", "10.0.0.1"),
        ] {
            let bytes = records(&hello_body(&[sni(sent)]), 1 << 14);
            assert_eq!(parse(&bytes), named(want));
        }
        for bad in [&b""[..], b".", b"b\xc3\xbccher.example", b"a b", b"a\0b"] {
            let bytes = records(&hello_body(&[sni(bad)]), 1 << 14);
            assert!(matches!(parse(&bytes), Hello::Malformed(_)), "{bad:?}");
        }
    }

    #[test]
    fn other_protocols_are_not_tls_from_their_first_bytes() {
        assert_eq!(parse(b""), Hello::Incomplete);
        assert_eq!(parse(&[HANDSHAKE]), Hello::Incomplete);
        assert_eq!(parse(b"AMQP\x00\x00\x09\x01"), Hello::NotTls);
        assert_eq!(parse(b"A"), Hello::NotTls);
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Hello::NotTls);
        // SSL 2.0-style hello, and a handshake record of another major version.
        assert_eq!(parse(&[0x80, 0x2e, 1, 3, 1]), Hello::NotTls);
        assert_eq!(parse(&[HANDSHAKE, 2, 0, 0, 5]), Hello::NotTls);
    }

    #[test]
    fn garbage_after_a_record_header_is_malformed_not_a_hang() {
        let malformed = |bytes: &[u8]| matches!(parse(bytes), Hello::Malformed(_));
        // Not a ClientHello (a ServerHello), a zero-length record, an oversized record.
        assert!(malformed(&[HANDSHAKE, 3, 1, 0, 4, 2, 0, 0, 0]));
        assert!(malformed(&[HANDSHAKE, 3, 1, 0, 0]));
        assert!(malformed(&[HANDSHAKE, 3, 1, 0x40, 1]));
        // A hello claiming more than 16 KiB.
        assert!(malformed(&[HANDSHAKE, 3, 1, 0, 4, 1, 1, 0, 0]));
        // An alert record in the middle of a hello cut in two.
        let bytes = records(&hello_body(&[sni(b"x.example")]), 20);
        let mut cut = bytes[..25].to_vec();
        cut.extend_from_slice(&[21, 3, 3, 0, 2, 2, 40]);
        assert!(malformed(&cut));
        // Lengths that run past their container, once the whole hello is there.
        let mut body = hello_body(&[sni(b"x.example")]);
        let n = body.len();
        body[n - 3] = 0xff; // the extension's length
        assert!(malformed(&records(&body, 1 << 14)));
        let mut body = hello_body(&[]);
        body[34] = 200; // session_id longer than the hello
        assert!(malformed(&records(&body, 1 << 14)));
        // Every byte value as a whole input never panics.
        for b in 0..=255u8 {
            let _ = parse(&[b; 300]);
            let _ = parse(&[HANDSHAKE, 3, 3, 1, 44, b, b, b, b]);
        }
    }

    #[test]
    fn a_real_rustls_hello_gives_its_name() {
        use std::sync::Arc;
        let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("Streams.Example.COM").unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut bytes = Vec::new();
        client.write_tls(&mut bytes).unwrap();
        assert_eq!(parse(&bytes), named("streams.example.com"));
        assert_eq!(parse(&bytes[..bytes.len() / 2]), Hello::Incomplete);
    }
}
