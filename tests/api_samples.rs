//! The admin API's JSON, byte for byte: a warren with a representative config (three pools,
//! http, tcp and passive health, a backup, a backend drained by the state file, health up, down
//! and unknown, a hook) answers `/v1/status`, drains (accepted, refused by the quorum check, by
//! `min_available`, not found, bad deadline), undrains and a reload, and each answer is compared
//! with the sample stored under `tests/samples/admin_api/`. Only what differs from run to run is
//! masked first: addresses, times, probe durations and probe counters. Each answer must also
//! read into `warren::api`'s types and write back to the same bytes.
//!
//! `WARREN_BLESS_SAMPLES=1 cargo test --test api_samples` rewrites the samples (after a change
//! of the contract that README.md documents).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warren::{Options, Server};

const TOKEN: &str = "samples-token";
const SECOND: Duration = Duration::from_secs(1);

const CRITICAL_BODY: &str = r#"{"status":"failed","reason":"There are quorum queues that would lose their quorum if the target node is shut down","queues":[{"name":"orders","readable_name":"queue 'orders' in vhost '/'","virtual_host":"/"}]}"#;

/// How a fake RabbitMQ management API answers the quorum check.
#[derive(Clone, Copy)]
enum Quorum {
    Safe,
    Critical,
    /// 401, as for wrong probe credentials.
    Unauthorized,
}

/// A fake node: its management API on 127.0.0.1:0 (the backend's own address, so the probe
/// URL `http://{host}:{port}/api/...` reaches it). The health probe's path gets 200.
async fn fake_node(quorum: Quorum) -> Backend {
    spawn_backend(move |mut socket: TcpStream| async move {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
            match tokio::time::timeout(SECOND * 5, socket.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
                _ => return,
            }
        }
        let head = String::from_utf8_lossy(&head);
        let path = head.split(' ').nth(1).unwrap_or("");
        let (status, body) = if path.ends_with("/node-is-quorum-critical") {
            match quorum {
                Quorum::Safe => ("200 OK", r#"{"status":"ok"}"#),
                Quorum::Critical => ("503 Service Unavailable", CRITICAL_BODY),
                Quorum::Unauthorized => (
                    "401 Unauthorized",
                    r#"{"error":"not_authorized","reason":"Login failed"}"#,
                ),
            }
        } else {
            ("200 OK", r#"{"status":"ok"}"#)
        };
        let answer = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = socket.write_all(answer.as_bytes()).await;
        let _ = socket.shutdown().await;
    })
    .await
}

/// Masks what differs from run to run: the given addresses (as `<name>`), RFC 3339 times, the
/// version, probe durations and probe counters.
fn mask(text: &str, addrs: &[(String, SocketAddr)]) -> String {
    let mut addrs: Vec<(String, String)> = addrs
        .iter()
        .map(|(name, addr)| (format!("<{name}>"), addr.to_string()))
        .collect();
    // Longest first: 127.0.0.1:4000 must not eat the start of 127.0.0.1:40001.
    addrs.sort_by_key(|(_, addr)| std::cmp::Reverse(addr.len()));
    let mut text = text.to_string();
    for (name, addr) in &addrs {
        text = text.replace(addr.as_str(), name);
    }
    text = text.replace(
        &format!("\"version\":\"{}\"", env!("CARGO_PKG_VERSION")),
        "\"version\":\"<version>\"",
    );
    text = mask_times(&text);
    for key in ["duration_ms", "probes_run", "probes_ok_in_a_row"] {
        text = mask_number(&text, &format!("\"{key}\":"));
    }
    text
}

/// `2026-11-29T19:25:27Z` → `<time>`.
fn mask_times(text: &str) -> String {
    const SHAPE: &[u8] = b"dddd-dd-ddTdd:dd:ddZ";
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        let is_time = bytes.len() - i >= SHAPE.len()
            && SHAPE.iter().zip(&bytes[i..]).all(|(&s, &b)| match s {
                b'd' => b.is_ascii_digit(),
                _ => s == b,
            });
        if is_time {
            out.push_str("<time>");
            i += SHAPE.len();
        } else {
            let c = text[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// The number after each `key` → `<n>`.
fn mask_number(text: &str, key: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(key) {
        let after = &rest[at + key.len()..];
        let len = after
            .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '-' | 'e' | 'E' | '+')))
            .unwrap_or(after.len());
        out.push_str(&rest[..at + key.len()]);
        out.push_str(if len == 0 { "" } else { "<n>" });
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

fn samples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/samples/admin_api")
}

/// Compares (or with `WARREN_BLESS_SAMPLES=1` writes) one exchange's masked sample; returns
/// the name of a sample that differs, after printing both.
fn check_sample(name: &str, request: &str, code: u16, masked_body: &str) -> Option<String> {
    let text = format!("{request}\nHTTP {code}\n{masked_body}");
    let path = samples_dir().join(format!("{name}.txt"));
    if std::env::var_os("WARREN_BLESS_SAMPLES").is_some() {
        std::fs::create_dir_all(samples_dir()).unwrap();
        std::fs::write(&path, &text).unwrap();
        return None;
    }
    let stored = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (WARREN_BLESS_SAMPLES=1 writes it)", path.display()));
    if stored == text {
        return None;
    }
    eprintln!(
        "sample {name} differs\n--- stored {}\n{stored}\n--- live\n{text}",
        path.display()
    );
    Some(name.to_string())
}

struct Exchanges {
    admin: SocketAddr,
    /// The test's directory (in reload errors), masked as `<dir>`.
    dir: String,
    addrs: Vec<(String, SocketAddr)>,
    differ: Vec<String>,
}

impl Exchanges {
    /// One request; its answer checked against sample `name`; the answer's raw body.
    async fn check(&mut self, name: &str, method: &str, path: &str, body: &str) -> String {
        let (code, answer) = http(self.admin, method, path, Some(TOKEN), body.as_bytes()).await;
        let request = format!("{method} {path} {body}");
        round_trips(path, code, &answer);
        let masked = mask(&answer.replace(&self.dir, "<dir>"), &self.addrs);
        if let Some(differs) = check_sample(name, request.trim_end(), code, &masked) {
            self.differ.push(differs);
        }
        answer
    }

    async fn status(&self) -> serde_json::Value {
        let (code, body) = http(self.admin, "GET", "/v1/status", Some(TOKEN), b"").await;
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Poll `/v1/status` until `cond` holds (within 10 s).
    async fn wait_status(&self, what: &str, cond: impl Fn(&serde_json::Value) -> bool) {
        let deadline = tokio::time::Instant::now() + SECOND * 10;
        loop {
            let status = self.status().await;
            if cond(&status) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what} within 10 s: {status:#}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The answer read with `warren::api`'s types (as `warren ctl` reads it) and written again is
/// the same bytes: the types are the whole contract, nothing is lost or reordered.
fn round_trips(path: &str, code: u16, answer: &str) {
    fn again<T: serde::de::DeserializeOwned + serde::Serialize>(answer: &str) -> String {
        let typed: T = serde_json::from_str(answer).unwrap_or_else(|e| {
            panic!("{} does not read {answer}: {e}", std::any::type_name::<T>())
        });
        serde_json::to_string(&typed).unwrap() + "\n"
    }
    let written = match (path, code) {
        (_, 400..) => again::<warren::api::ErrorBody>(answer),
        ("/v1/status", _) => again::<warren::api::Status>(answer),
        ("/v1/reload", _) => again::<warren::api::ReloadAnswer>(answer),
        (p, _) if p.ends_with("/rebalance") => again::<warren::api::RebalanceAnswer>(answer),
        _ => again::<warren::api::DrainAnswer>(answer),
    };
    // Probe durations are left out: serde_json reads floats to the nearest value only (its
    // `float_roundtrip` is off), so the last digit may move; the server writes them as before.
    let key = "\"duration_ms\":";
    assert_eq!(
        mask_number(&written, key),
        mask_number(answer, key),
        "{path} ({code})"
    );
}

fn backend_of<'s>(status: &'s serde_json::Value, pool: &str, name: &str) -> &'s serde_json::Value {
    status["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == pool)
        .and_then(|p| {
            p["backends"]
                .as_array()
                .unwrap()
                .iter()
                .find(|b| b["name"] == name)
        })
        .unwrap_or_else(|| panic!("no backend {pool}/{name} in {status:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_answers_match_the_stored_samples() {
    let dir = TempDir::new("api-samples");
    let (safe, critical, confused, backup) = (
        fake_node(Quorum::Safe).await,
        fake_node(Quorum::Critical).await,
        fake_node(Quorum::Unauthorized).await,
        fake_node(Quorum::Safe).await,
    );
    let (gone_socket, gone) = held_refusing_port();
    let (tcp_a, tcp_b) = (spawn_backend(echo).await, spawn_backend(echo).await);
    let (tcp_down_socket, tcp_down) = held_refusing_port();
    let (p_a, p_b) = (spawn_backend(echo).await, spawn_backend(echo).await);
    // The config wants fixed ports: free ones (bound, then released).
    let port = |_| SocketAddr::from(([127, 0, 0, 1], free_port()));
    let [admin_listen, passive_listen, amqp_listen, tcp_listen]: [SocketAddr; 4] =
        [0, 1, 2, 3].map(port);
    let addrs: Vec<(String, SocketAddr)> = [
        ("admin", admin_listen),
        ("listener-passive", passive_listen),
        ("listener-amqp", amqp_listen),
        ("listener-tcp", tcp_listen),
        ("rabbit-safe", safe.addr),
        ("rabbit-critical", critical.addr),
        ("rabbit-confused", confused.addr),
        ("rabbit-gone", gone),
        ("rabbit-backup", backup.addr),
        ("tcp-a", tcp_a.addr),
        ("tcp-b", tcp_b.addr),
        ("tcp-down", tcp_down),
        ("p-a", p_a.addr),
        ("p-b", p_b.addr),
    ]
    .into_iter()
    .map(|(n, a)| (n.to_string(), a))
    .collect();

    std::fs::write(dir.0.join("token"), TOKEN).unwrap();
    let state_file = dir.0.join("state.json");
    // p-b was drained before this start: it comes back drained.
    std::fs::write(
        &state_file,
        r#"{"version":1,"backends":[{"pool":"passive","backend":"p-b","admin":"drained"}]}"#,
    )
    .unwrap();
    let backend = |name: &str, addr: SocketAddr, extra: &str| {
        format!("name = \"{name}\"\naddr = \"{addr}\"\n{extra}")
    };
    let text = format!(
        r#"[admin]
listen = "{admin_listen}"
token_file = "{token}"
state_file = "{state}"

[[listener]]
name = "passive"
listen = "{passive_listen}"
pool = "passive"

[[listener]]
name = "amqp"
listen = "{amqp_listen}"
pool = "rabbitmq"

[[listener]]
name = "tcp"
listen = "{tcp_listen}"
pool = "tcp"

[pool.rabbitmq]
balance = "least_conn"
min_available = 1

[pool.rabbitmq.health]
kind = "http"
url = "http://{{host}}:{{port}}/api/health/checks/alarms"
user = "monitoring"
password = "not-a-secret"
interval = "50ms"
timeout = "1s"
rise = 1
fall = 1

[[pool.rabbitmq.backend]]
{safe}
[[pool.rabbitmq.backend]]
{critical}
[[pool.rabbitmq.backend]]
{confused}
[[pool.rabbitmq.backend]]
{gone}
[[pool.rabbitmq.backend]]
{backup}
[pool.tcp]
balance = "round_robin"
min_available = 2

[pool.tcp.health]
kind = "tcp"
interval = "50ms"
timeout = "1s"
rise = 1
fall = 1

[[pool.tcp.backend]]
{tcp_a}
[[pool.tcp.backend]]
{tcp_b}
[[pool.tcp.backend]]
{tcp_down}
[pool.passive]
balance = "random_two"
min_available = 0

[[pool.passive.backend]]
{p_a}
[[pool.passive.backend]]
{p_b}
[[hook]]
on = ["drain_started", "drain_complete", "backend_down"]
exec = ["/bin/sh", "-c", "true"]
"#,
        token = dir.0.join("token").display(),
        state = state_file.display(),
        safe = backend("rabbit-safe", safe.addr, ""),
        critical = backend("rabbit-critical", critical.addr, ""),
        confused = backend("rabbit-confused", confused.addr, ""),
        gone = backend("rabbit-gone", gone, ""),
        backup = backend("rabbit-backup", backup.addr, "weight = 2\nbackup = true\n"),
        tcp_a = backend("tcp-a", tcp_a.addr, ""),
        tcp_b = backend("tcp-b", tcp_b.addr, "weight = 3\n"),
        tcp_down = backend("tcp-down", tcp_down, ""),
        p_a = backend("p-a", p_a.addr, ""),
        p_b = backend("p-b", p_b.addr, ""),
    );
    let config_file = dir.0.join("warren.toml");
    std::fs::write(&config_file, &text).unwrap();
    let config = warren::config::load(&config_file).unwrap_or_else(|e| panic!("{e}"));
    let options = Options {
        config_path: Some(config_file.clone()),
        ..quick()
    };
    let server = Server::bind(&config, options).expect("warren binds");
    let passive_listener = server.listener_addrs()[0].1;
    let admin = server.admin_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(server.run(stop.clone()));
    let mut x = Exchanges {
        admin,
        dir: dir.0.display().to_string(),
        addrs,
        differ: Vec::new(),
    };

    // Health settled: every probed backend up or down, with a probe behind it.
    let expected = [
        ("rabbitmq", "rabbit-safe", "up"),
        ("rabbitmq", "rabbit-critical", "up"),
        ("rabbitmq", "rabbit-confused", "up"),
        ("rabbitmq", "rabbit-gone", "down"),
        ("rabbitmq", "rabbit-backup", "up"),
        ("tcp", "tcp-a", "up"),
        ("tcp", "tcp-b", "up"),
        ("tcp", "tcp-down", "down"),
    ];
    x.wait_status("health settled", |s| {
        expected.iter().all(|(pool, name, health)| {
            let b = backend_of(s, pool, name);
            b["health"] == *health && !b["last_probe"].is_null()
        })
    })
    .await;
    // One client on p-a (p-b is drained): it keeps p-a draining, not drained, below.
    let mut client = TcpStream::connect(passive_listener).await.unwrap();
    assert!(echo_once(&mut client, 7).await);
    x.wait_status("one connection on p-a", |s| {
        backend_of(s, "passive", "p-a")["active_connections"] == 1
    })
    .await;

    x.check("01-status", "GET", "/v1/status", "").await;
    let drain = |pool: &str, name: &str| format!("/v1/pools/{pool}/backends/{name}/drain");
    let undrain = |pool: &str, name: &str| format!("/v1/pools/{pool}/backends/{name}/undrain");
    x.check(
        "02-drain-refused-quorum-critical",
        "POST",
        &drain("rabbitmq", "rabbit-critical"),
        "",
    )
    .await;
    x.check(
        "03-drain-refused-quorum-check-failed",
        "POST",
        &drain("rabbitmq", "rabbit-confused"),
        r#"{"deadline": "5m"}"#,
    )
    .await;
    x.check(
        "04-drain-refused-min-available",
        "POST",
        &drain("tcp", "tcp-a"),
        "",
    )
    .await;
    x.check("05-drain-not-found", "POST", &drain("rabbitmq", "nope"), "")
        .await;
    x.check(
        "06-drain-deadline-too-long",
        "POST",
        &drain("rabbitmq", "rabbit-safe"),
        r#"{"deadline": "8000years"}"#,
    )
    .await;
    x.check(
        "07-drain-malformed-body",
        "POST",
        &drain("rabbitmq", "rabbit-safe"),
        r#"{"deadline": 5}"#,
    )
    .await;
    x.check(
        "08-drain-safe",
        "POST",
        &drain("rabbitmq", "rabbit-safe"),
        r#"{"deadline": "5m", "force": false}"#,
    )
    .await;
    x.wait_status("rabbit-safe drained", |s| {
        backend_of(s, "rabbitmq", "rabbit-safe")["admin"] == "drained"
    })
    .await;
    x.check(
        "09-drain-again-drained",
        "POST",
        &drain("rabbitmq", "rabbit-safe"),
        "",
    )
    .await;
    x.check(
        "10-drain-not-answered",
        "POST",
        &drain("rabbitmq", "rabbit-gone"),
        "",
    )
    .await;
    x.check(
        "11-drain-forced",
        "POST",
        &drain("tcp", "tcp-a"),
        r#"{"force": true}"#,
    )
    .await;
    x.check(
        "12-drain-not-applicable-with-connection",
        "POST",
        &drain("passive", "p-a"),
        r#"{"deadline": "1h"}"#,
    )
    .await;
    x.check(
        "13-undrain",
        "POST",
        &undrain("rabbitmq", "rabbit-safe"),
        "",
    )
    .await;
    x.check(
        "14-undrain-again",
        "POST",
        &undrain("rabbitmq", "rabbit-safe"),
        "",
    )
    .await;
    x.check(
        "15-undrain-not-found",
        "POST",
        &undrain("nope", "rabbit-safe"),
        "",
    )
    .await;
    x.wait_status("drains settled", |s| {
        backend_of(s, "rabbitmq", "rabbit-gone")["admin"] == "drained"
            && backend_of(s, "tcp", "tcp-a")["admin"] == "drained"
            && backend_of(s, "rabbitmq", "rabbit-safe")["health"] == "up"
    })
    .await;
    x.check("16-status-after-drains", "GET", "/v1/status", "")
        .await;
    x.check("17-reload", "POST", "/v1/reload", "").await;
    std::fs::write(
        &config_file,
        text.replace("min_available = 2", "min_available = -2"),
    )
    .unwrap();
    x.check("18-reload-refused", "POST", "/v1/reload", "").await;
    x.check(
        "19-rebalance-balanced",
        "POST",
        "/v1/pools/passive/rebalance",
        "",
    )
    .await;
    x.check(
        "20-rebalance-not-found",
        "POST",
        "/v1/pools/nope/rebalance",
        "",
    )
    .await;

    drop((client, gone_socket, tcp_down_socket));
    stop.cancel();
    tokio::time::timeout(SECOND * 10, task)
        .await
        .expect("warren stops within 10 s")
        .unwrap();
    assert!(
        x.differ.is_empty(),
        "answers differ from the stored samples: {:?}",
        x.differ
    );
}

#[test]
fn masking_keeps_everything_but_what_varies() {
    let addrs = vec![
        ("a".to_string(), "127.0.0.1:4000".parse().unwrap()),
        ("b".to_string(), "127.0.0.1:40001".parse().unwrap()),
    ];
    let text = r#"{"addr":"127.0.0.1:40001","at":"2026-11-29T19:25:27Z","duration_ms":1.25,"probes_run":12,"x":"127.0.0.1:4000 ok"}"#;
    assert_eq!(
        mask(text, &addrs),
        r#"{"addr":"<b>","at":"<time>","duration_ms":<n>,"probes_run":<n>,"x":"<a> ok"}"#
    );
}
