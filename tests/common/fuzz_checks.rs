//! The properties the fuzz targets (fuzz/fuzz_targets/*.rs) check, shared with the corpus
//! replay test (tests/reliability_fuzz_corpus.rs) so both run exactly the same code. Each
//! returns `Err(why)` for a broken property; a panic inside warren is a failure too.
//! Only std and warren: the fuzz crate includes this file by path.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use warren::proxy_protocol::{self, Header, Parsed};

/// Config bytes: UTF-8 text is parsed and validated (offline, no DNS) and either succeeds or
/// gives a non-empty error that names the file; other bytes go through `warren::config::load`
/// from a file, which must refuse them as not UTF-8, naming the file and the byte offset where
/// UTF-8 breaks. Never a panic.
pub fn config(data: &[u8]) -> Result<(), String> {
    let text = match std::str::from_utf8(data) {
        Ok(text) => text,
        Err(e) => return config_not_utf8(data, e.valid_up_to()),
    };
    let file = Path::new("fuzz.toml");
    match warren::config::from_toml_offline(text, file) {
        Ok(config) => {
            // A valid config summarises without panicking and names at least one listener.
            let summary = config.summary();
            if config.listeners.is_empty() {
                return Err(format!(
                    "a config without listeners was accepted: {summary}"
                ));
            }
            Ok(())
        }
        Err(e) => {
            let message = e.to_string();
            if message.is_empty() || !message.contains("fuzz.toml") {
                return Err(format!("error does not name the file: {message:?}"));
            }
            Ok(())
        }
    }
}

/// Non-UTF-8 bytes written to a file of this process and thread, then loaded as warren loads
/// its config: refused as `NotUtf8` at `valid_up_to`, naming the file.
fn config_not_utf8(data: &[u8], valid_up_to: usize) -> Result<(), String> {
    let thread = format!("{:?}", std::thread::current().id());
    let thread: String = thread.chars().filter(char::is_ascii_digit).collect();
    let file = std::env::temp_dir().join(format!(
        "warren-fuzz-config-{}-{thread}.toml",
        std::process::id()
    ));
    std::fs::write(&file, data).map_err(|e| format!("write {}: {e}", file.display()))?;
    let loaded = warren::config::load(&file);
    let _ = std::fs::remove_file(&file);
    match loaded {
        Err(e @ warren::config::ConfigError::NotUtf8 { .. }) => {
            let message = e.to_string();
            let at = format!("(byte offset {valid_up_to})");
            if !message.contains(&file.display().to_string()) || !message.contains(&at) {
                return Err(format!(
                    "error does not name the file and {at}: {message:?}"
                ));
            }
            Ok(())
        }
        Err(e) => Err(format!(
            "non-UTF-8 bytes (valid up to {valid_up_to}) gave {e:?}, not NotUtf8"
        )),
        Ok(_) => Err(format!(
            "non-UTF-8 bytes (valid up to {valid_up_to}) were accepted"
        )),
    }
}

/// Inbound PROXY header bytes: a complete header never claims more bytes than it was given and
/// parses the same from exactly its own bytes; "incomplete" only below the size limit; a v2
/// re-encoding of what was parsed parses back to the same header.
pub fn proxy_header(data: &[u8]) -> Result<(), String> {
    match proxy_protocol::parse(data) {
        Err(_) => Ok(()),
        Ok(Parsed::Incomplete) if data.len() < proxy_protocol::V2_MAX_LEN => Ok(()),
        Ok(Parsed::Incomplete) => Err(format!("incomplete after {} bytes", data.len())),
        Ok(Parsed::Complete { header, len }) => {
            if len == 0 || len > data.len() {
                return Err(format!("header length {len} of {} bytes", data.len()));
            }
            let again = proxy_protocol::parse(&data[..len]);
            if again != Ok(Parsed::Complete { header, len }) {
                return Err(format!("its own {len} bytes parse as {again:?}"));
            }
            if let Header::Proxied { .. } = header {
                let mut encoded = Vec::new();
                proxy_protocol::encode_v2(&header, &mut encoded);
                let back = proxy_protocol::parse(&encoded);
                let expected = Ok(Parsed::Complete {
                    header,
                    len: encoded.len(),
                });
                if back != expected {
                    return Err(format!("{header:?} re-encoded as v2 parses as {back:?}"));
                }
            }
            Ok(())
        }
    }
}

/// A client's first bytes on a `[[listener.sni]]` listener: `warren::sni::parse` decides, or
/// asks for more only below `MAX_PEEK` bytes; a server name is non-empty lowercase printable
/// ASCII that the bytes hold (case aside; checked when the hello is in one record); every
/// prefix parses without a panic too.
pub fn client_hello(data: &[u8]) -> Result<(), String> {
    use warren::sni::{parse, Hello, MAX_PEEK};
    for end in [data.len() / 3, data.len() / 2, data.len().saturating_sub(1)] {
        let _ = parse(&data[..end]);
    }
    match parse(data) {
        Hello::Incomplete if data.len() >= MAX_PEEK => {
            Err(format!("still incomplete after {} bytes", data.len()))
        }
        Hello::ServerName(name) => {
            let normal = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !b.is_ascii_uppercase());
            // Contiguous in the bytes when the hello sits in one record.
            let one_record = usize::from(u16::from_be_bytes([data[3], data[4]])) + 5 >= data.len();
            let lower = data.to_ascii_lowercase();
            let held = !one_record || lower.windows(name.len()).any(|w| w == name.as_bytes());
            if normal && held {
                Ok(())
            } else {
                Err(format!(
                    "server name {name:?} is not normalised or not in the bytes"
                ))
            }
        }
        _ => Ok(()),
    }
}

/// Raw bytes to a live admin listener at `addr` (the client then half-closes): the answer is
/// empty (a clean close) or starts with an HTTP/1.x status line with a code in 100..=599, and
/// comes within 5 s.
/// How long a raw admin request may take to be answered or closed.
pub const ADMIN_ANSWER_WITHIN: Duration =
    Duration::from_secs(warren::admin::AUTH_HOLD_MAX.as_secs() + 5);

pub fn admin_request(addr: SocketAddr, data: &[u8]) -> Result<(), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    // A wrong token may be held up to AUTH_HOLD_MAX before its 429 (the guessing limiter, which
    // the corpus's token guesses run into): the bound is that plus 5 s for the answer itself.
    s.set_read_timeout(Some(ADMIN_ANSWER_WITHIN)).unwrap();
    // The server may answer and close before reading everything: write errors are fine.
    let _ = s.write_all(data);
    let _ = s.shutdown(Shutdown::Write);
    let mut answer = Vec::new();
    if let Err(e) = s.read_to_end(&mut answer) {
        if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut {
            return Err(format!(
                "no answer nor close within {}s",
                ADMIN_ANSWER_WITHIN.as_secs()
            ));
        }
        // A reset after a refused request is a clean enough end.
    }
    if answer.is_empty() {
        return Ok(());
    }
    let head = String::from_utf8_lossy(&answer[..answer.len().min(64)]).into_owned();
    let code = head
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| head.strip_prefix("HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|c| c.parse::<u16>().ok());
    match code {
        Some(100..=599) => Ok(()),
        _ => Err(format!("not an HTTP/1.x answer: {head:?}")),
    }
}
