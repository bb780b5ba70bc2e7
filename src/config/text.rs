//! Pure helpers on text: host:port and ports, the characters names and hosts may use, and
//! turning a TOML parse error into a line, a column and the key path it happened under.

use super::*;

/// A `host:port` split and checked, before any resolution. The host has no brackets.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct HostPort {
    pub(super) host: String,
    pub(super) port: u16,
}

pub(super) const EXPECTED_ADDR: &str =
    "expected HOST:PORT, e.g. \"10.0.0.1:5672\", \"rabbit-a:5672\" or \"[::1]:5672\"";

pub(super) fn split_host_port(s: &str) -> Result<HostPort, String> {
    if s.is_empty() {
        return Err(format!("empty address; {EXPECTED_ADDR}"));
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err(format!(
                "missing ']' after the IPv6 address; {EXPECTED_ADDR}"
            ));
        };
        if host.parse::<Ipv6Addr>().is_err() {
            return Err(format!("{} is not an IPv6 address", quote(host)));
        }
        let Some(port) = after.strip_prefix(':') else {
            return Err(format!("missing port after ']'; {EXPECTED_ADDR}"));
        };
        (host, port)
    } else {
        match s.split_once(':') {
            None => return Err(format!("missing port; {EXPECTED_ADDR}")),
            Some((_, port)) if port.contains(':') => return Err(unbracketed_ipv6(s)),
            Some(split) => split,
        }
    };
    if host.is_empty() {
        return Err(format!("missing host; {EXPECTED_ADDR}"));
    }
    Ok(HostPort {
        host: host.to_string(),
        port: parse_port(port)?,
    })
}

/// Several colons without brackets: almost always an IPv6 address, so suggest the fix.
pub(super) fn unbracketed_ipv6(s: &str) -> String {
    if let Some((host, port)) = s.rsplit_once(':') {
        let port_ok = !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
        if port_ok && host.parse::<Ipv6Addr>().is_ok() {
            return format!("IPv6 addresses need brackets: write \"[{host}]:{port}\"");
        }
    }
    if s.parse::<Ipv6Addr>().is_ok() {
        return format!("IPv6 addresses need brackets and a port: write \"[{s}]:PORT\"");
    }
    format!("too many ':'; {EXPECTED_ADDR}")
}

pub(super) fn parse_port(port: &str) -> Result<u16, String> {
    if port.is_empty() {
        return Err(format!("missing port; {EXPECTED_ADDR}"));
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("port {} is not a number", quote(port)));
    }
    match port.parse::<u32>() {
        Ok(0) => Err("port 0 is not allowed: a fixed port is needed".to_string()),
        Ok(n) => u16::try_from(n).map_err(|_| format!("port {n} is out of range 1-65535")),
        Err(_) => Err(format!("port {port} is out of range 1-65535")),
    }
}

pub(super) fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a == b
        || (a.port() == b.port()
            && a.is_ipv4() == b.is_ipv4()
            && (a.ip().is_unspecified() || b.ip().is_unspecified()))
}

pub(super) fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

pub(super) fn is_host_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

pub(super) fn quote(s: &str) -> String {
    format!("{s:?}")
}

/// 1-based line and column (in characters) of a byte offset.
pub(super) fn line_col(bytes: &[u8], offset: usize) -> (usize, usize) {
    let offset = offset.min(bytes.len());
    let before = &bytes[..offset];
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let tail = &bytes[line_start..offset];
    let column = std::str::from_utf8(tail).map_or(tail.len(), |s| s.chars().count()) + 1;
    (line, column)
}

pub(super) fn parse_error(file: &Path, text: &str, err: &toml::de::Error) -> ConfigError {
    let offset = err.span().map_or(0, |span| span.start);
    let (line, column) = line_col(text.as_bytes(), offset);
    let message: Vec<&str> = err.message().lines().map(str::trim).collect();
    let source_line = text.lines().nth(line - 1).unwrap_or("").trim();
    ConfigError::Parse {
        file: file.to_path_buf(),
        line,
        column,
        key: key_path_at(text, line),
        message: message.join("; "),
        source_line: truncate(source_line, SOURCE_LINE_MAX),
    }
}

/// Longest piece of the offending line a parse error quotes; a long inline table is noise.
pub(super) const SOURCE_LINE_MAX: usize = 100;

pub(super) fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((end, _)) => format!("{}...", &s[..end]),
        None => s.to_string(),
    }
}

/// Best-effort key path of a 1-based line, e.g. `pool.rabbitmq.backend[1].weight`, from the
/// table headers above it. toml's errors carry only a span, and an operator needs to know which
/// of several `[[listener]]` tables is wrong.
pub(super) fn key_path_at(text: &str, line: usize) -> Option<String> {
    let mut section = String::new();
    let mut arrays: HashMap<String, usize> = HashMap::new();
    for (n, content) in text.lines().enumerate() {
        let code = content.split('#').next().unwrap_or("").trim();
        let header = table_header(code);
        if let Some((name, is_array)) = &header {
            section = if *is_array {
                let index = arrays.entry(name.clone()).or_insert(0);
                *index += 1;
                format!("{name}[{}]", *index - 1)
            } else {
                name.clone()
            };
        }
        if n + 1 == line {
            let key = match header {
                Some(_) => None,
                None => line_key(content),
            };
            return match (key, section.is_empty()) {
                (Some(key), true) => Some(key),
                (Some(key), false) => Some(format!("{section}.{key}")),
                (None, true) => None,
                (None, false) => Some(section),
            };
        }
    }
    None
}

pub(super) fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '"' | '\'' | ' ')
}

pub(super) fn normalize_key(key: &str) -> Option<String> {
    let key = key.trim();
    if key.is_empty() || !key.chars().all(is_key_char) {
        return None;
    }
    let parts: Vec<&str> = key.split('.').map(str::trim).collect();
    Some(parts.join("."))
}

/// `[a.b]` → ("a.b", false); `[[a.b]]` → ("a.b", true).
pub(super) fn table_header(code: &str) -> Option<(String, bool)> {
    if let Some(inner) = code.strip_prefix("[[").and_then(|r| r.strip_suffix("]]")) {
        return normalize_key(inner).map(|k| (k, true));
    }
    let inner = code.strip_prefix('[')?.strip_suffix(']')?;
    normalize_key(inner).map(|k| (k, false))
}

/// The key of a `key = value` line.
pub(super) fn line_key(content: &str) -> Option<String> {
    let (key, _) = content.split_once('=')?;
    normalize_key(key)
}
