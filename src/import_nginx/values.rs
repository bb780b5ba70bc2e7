//! NGINX values (durations, `listen` addresses, `server` targets, ports) read into warren's
//! terms, and names and strings written as TOML.

use super::*;

pub(super) fn invalid(d: &Directive, message: impl Into<String>) -> ImportError {
    ImportError::Invalid {
        at: d.loc.clone(),
        directive: d.shown(),
        message: message.into(),
    }
}

/// NGINX time: "120s", "5m", "1h30m", "500ms", "90" (seconds); units ms s m h d w M y.
pub(super) fn nginx_duration(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!("{s:?} is not an NGINX time; expected a number with a unit, like \"5s\", \"2m\" or \"500ms\"")
    };
    let mut total: u64 = 0;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit_ms, len): (u64, usize) = if rest.starts_with("ms") {
            (1, 2)
        } else {
            match rest.chars().next() {
                None => (1000, 0),
                Some('s') => (1000, 1),
                Some('m') => (60_000, 1),
                Some('h') => (3_600_000, 1),
                Some('d') => (86_400_000, 1),
                Some('w') => (7 * 86_400_000, 1),
                Some('M') => (30 * 86_400_000, 1),
                Some('y') => (365 * 86_400_000, 1),
                Some(_) => return Err(bad()),
            }
        };
        rest = rest[len..].trim_start();
        total = n
            .checked_mul(unit_ms)
            .and_then(|ms| total.checked_add(ms))
            .ok_or_else(bad)?;
    }
    Ok(Duration::from_millis(total))
}

/// A duration as warren writes it: "120s", "250ms", "2h".
pub(super) fn warren_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 != 0 {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    if s >= 3600 && s % 3600 == 0 {
        format!("{}h", s / 3600)
    } else {
        format!("{s}s")
    }
}

pub(super) fn parse_port(port: &str) -> Result<u16, String> {
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("invalid port {port:?}: expected 1-65535")),
        Ok(p) => Ok(p),
    }
}

/// Where a `listen` goes in warren.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ListenAddr {
    /// An address warren's `listen` accepts, e.g. "0.0.0.0:5672", plus a note for the operator.
    Addr(String, Option<String>),
    /// Cannot be taken; why.
    Unsupported(String),
}

/// A `listen` address: "5672", "*:5672", "10.0.0.5:5672", "[::]:5672", "localhost:5672".
pub(super) fn listen_addr(s: &str) -> Result<ListenAddr, String> {
    if s.starts_with("unix:") {
        return Ok(ListenAddr::Unsupported(
            "unix sockets are not supported; warren listens on TCP only".to_string(),
        ));
    }
    if s.contains('$') {
        return Ok(ListenAddr::Unsupported(
            "variables are not supported".to_string(),
        ));
    }
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(ListenAddr::Addr(
            format!("0.0.0.0:{}", parse_port(s)?),
            None,
        ));
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{s:?}: missing ']'"))?;
        let ip: Ipv6Addr = host
            .parse()
            .map_err(|_| format!("{host:?} is not an IPv6 address"))?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| format!("{s:?}: no port"))?;
        return Ok(ListenAddr::Addr(
            format!("[{ip}]:{}", parse_port(port)?),
            None,
        ));
    }
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?}: no port (a stream listen needs one)"))?;
    let port = parse_port(port)?;
    if host == "*" {
        return Ok(ListenAddr::Addr(format!("0.0.0.0:{port}"), None));
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(ListenAddr::Addr(format!("{ip}:{port}"), None));
    }
    if host == "localhost" {
        return Ok(ListenAddr::Addr(
            format!("127.0.0.1:{port}"),
            Some("warren listens on IP addresses only: \"localhost\" became 127.0.0.1".to_string()),
        ));
    }
    Ok(ListenAddr::Unsupported(format!(
        "warren listens on IP addresses only, not on host name {host:?}; write the address"
    )))
}

/// A backend address from `server` or `proxy_pass`.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ServerTarget {
    /// Host as written (IPv6 without brackets), port, and warren's `addr`.
    Addr { host: String, addr: String },
    /// Cannot be taken; why.
    Unsupported(String),
}

/// `10.0.0.1:5672`, `rabbit-a:5672`, `[fd00::1]:5672`; `unix:` and variables are unsupported.
pub(super) fn target(s: &str) -> Result<ServerTarget, String> {
    if s.starts_with("unix:") {
        return Ok(ServerTarget::Unsupported(
            "unix sockets are not supported; warren connects over TCP only".to_string(),
        ));
    }
    if s.contains('$') {
        return Ok(ServerTarget::Unsupported(
            "variables are not supported".to_string(),
        ));
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{s:?}: missing ']'"))?;
        let ip: Ipv6Addr = host
            .parse()
            .map_err(|_| format!("{host:?} is not an IPv6 address"))?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| format!("no port in {s:?} (a stream upstream needs one)"))?;
        let port = parse_port(port)?;
        return Ok(ServerTarget::Addr {
            host: ip.to_string(),
            addr: format!("[{ip}]:{port}"),
        });
    }
    let (host, port) = s
        .split_once(':')
        .ok_or_else(|| format!("no port in {s:?} (a stream upstream needs one)"))?;
    if port.contains(':') {
        return Err(format!(
            "{s:?}: IPv6 addresses need brackets, like \"[fd00::1]:5672\""
        ));
    }
    let port = parse_port(port)?;
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return Err(format!("{host:?} is not a host name or IP address"));
    }
    Ok(ServerTarget::Addr {
        host: host.to_string(),
        addr: format!("{host}:{port}"),
    })
}

/// A name warren accepts (letters, digits, '.', '_', '-'), made from an NGINX name or address.
pub(super) fn sanitize(s: &str) -> String {
    let out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let out = out.trim_matches('-');
    if out.is_empty() {
        "unnamed".to_string()
    } else {
        out.to_string()
    }
}

/// `base`, or `base-2`, `base-3`, ... when taken; the result is marked taken.
pub(super) fn unique(base: &str, taken: &mut HashSet<String>) -> String {
    let mut name = base.to_string();
    let mut n = 2;
    while taken.contains(&name) {
        name = format!("{base}-{n}");
        n += 1;
    }
    taken.insert(name.clone());
    name
}

/// A TOML basic string.
pub(super) fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A TOML key: bare when it can be, quoted otherwise (a '.' would split it into tables).
pub(super) fn toml_key(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
    {
        s.to_string()
    } else {
        toml_str(s)
    }
}
