//! Helpers the probe kinds share: where a URL probe connects, and error texts that are short,
//! printable and never show a secret.

use super::*;

/// Where a URL probe connects: the backend's resolved address when the URL names the backend's
/// host (the usual `{host}` template, no DNS lookup per probe), else the URL's host resolved now.
pub(super) async fn resolve(
    url: &str,
    port: u16,
    target: &ProbeTarget,
) -> Result<SocketAddr, String> {
    let Some(host) = url_host(url) else {
        return Err(format!("{url} has no host"));
    };
    if host == target.host {
        return Ok(SocketAddr::new(target.addr.ip(), port));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let resolved = tokio::net::lookup_host((host.as_str(), port)).await;
    match resolved {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("{host} resolves to no address")),
        Err(e) => Err(format!("cannot resolve {host}: {e}")),
    }
}

/// "connection refused" and friends, for a failed connect.
pub(super) fn connect_error(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        _ => format!("connect failed: {}", io_error(e)),
    }
}

/// An I/O error without the "(os error N)" noise.
pub(super) fn io_error(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        io::ErrorKind::ConnectionReset => "connection reset by the backend".into(),
        io::ErrorKind::BrokenPipe => "connection closed by the backend".into(),
        _ => {
            let text = e.to_string();
            match text.find(" (os error") {
                Some(i) => text[..i].to_string(),
                None => text,
            }
        }
    }
}

/// Remove userinfo (`user:password@`) from every URL in `text` and mask each of `secrets`
/// (passwords, URIs that hold them, basic-auth tokens), so a reason can be logged as is.
pub(super) fn redact(text: &str, secrets: &[&str]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        out.push_str(&rest[..i + 3]);
        rest = &rest[i + 3..];
        let end = rest
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace() || c == '"')
            .unwrap_or(rest.len());
        if let Some(at) = rest[..end].rfind('@') {
            rest = &rest[at + 1..];
        }
    }
    out.push_str(rest);
    for secret in secrets {
        if let Some(password) = uri_password(secret) {
            out = out.replace(password, "***");
        }
    }
    for secret in secrets {
        // Short secrets would mask ordinary words; the URI and token forms are long.
        if secret.len() >= 4 && !secret.contains("://") {
            out = out.replace(secret, "***");
        }
    }
    out
}

/// The password in `scheme://user:password@host`, if `text` is such a URL.
pub(super) fn uri_password(text: &str) -> Option<&str> {
    let rest = &text[text.find("://")? + 3..];
    let userinfo = &rest[..rest.rfind('@')?];
    let (_, password) = userinfo.split_once(':')?;
    (!password.is_empty()).then_some(password)
}

/// At most `max` bytes of `text` (cut at a character boundary), control characters as spaces.
pub(super) fn sanitize(text: &str, max: usize) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(if c.is_control() { ' ' } else { c });
    }
    out.trim_end().to_string()
}

/// Up to `max` bytes as text when printable, else as hex, for a reason about garbage.
pub(super) fn printable_prefix(bytes: &[u8], max: usize) -> String {
    let bytes = &bytes[..bytes.len().min(max)];
    if bytes
        .iter()
        .all(|b| b.is_ascii_graphic() || *b == b' ' || *b == b'\r' || *b == b'\n')
    {
        format!("{:?}", sanitize(&String::from_utf8_lossy(bytes), max))
    } else {
        let mut hex = String::new();
        for b in bytes {
            let _ = write!(hex, "{b:02x} ");
        }
        format!("bytes {}", hex.trim_end())
    }
}
