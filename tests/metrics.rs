//! Prometheus metrics end to end: warren runs in process with an admin API, a test drives a known
//! workload (connections with exact byte counts, held connections, refused backends, a full
//! listener, probes, a drain, hooks), then scrapes the real `/metrics` over HTTP and compares
//! exact values, plus the `# TYPE` of every DESIGN.md metric that has a sample.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warren::config::{AdminConfig, Balance, Config, HealthConfig, HookEvent, Probe};

const SECOND: Duration = Duration::from_secs(1);
const TOKEN: &str = "metrics-token";

/// Every metric of DESIGN.md's "Metrics" list with its Prometheus type.
const DESIGN_METRICS: &[(&str, &str)] = &[
    ("warren_build_info", "gauge"),
    ("warren_listener_connections_active", "gauge"),
    ("warren_listener_connections_total", "counter"),
    ("warren_listener_rejected_total", "counter"),
    ("warren_backend_connections_active", "gauge"),
    ("warren_backend_connections_total", "counter"),
    ("warren_backend_connect_failures_total", "counter"),
    ("warren_backend_connect_duration_seconds", "histogram"),
    ("warren_backend_bytes_total", "counter"),
    ("warren_backend_up", "gauge"),
    ("warren_backend_admin_state", "gauge"),
    ("warren_health_checks_total", "counter"),
    ("warren_health_check_duration_seconds", "histogram"),
    ("warren_pool_available_backends", "gauge"),
    ("warren_connections_closed_total", "counter"),
    ("warren_hook_runs_total", "counter"),
    ("warren_config_reloads_total", "counter"),
];

/// Add an `[admin]` section on 127.0.0.1:0 with a bearer token written to a token file.
fn with_admin(mut cfg: Config, dir: &TempDir) -> Config {
    cfg.admin = Some(AdminConfig {
        state_file: None,
        ..admin_with_token(dir, TOKEN)
    });
    cfg
}

/// One sample of the text exposition.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed `/metrics` scrape.
struct Scrape {
    text: String,
    samples: Vec<Sample>,
    /// `# TYPE name type` lines.
    types: BTreeMap<String, String>,
}

impl Scrape {
    fn parse(text: String) -> Scrape {
        let mut samples = Vec::new();
        let mut types = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE line has a type");
                types.insert(name.to_owned(), kind.to_owned());
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("sample has a value");
            let value: f64 = value
                .parse()
                .unwrap_or_else(|e| panic!("bad value in {line:?}: {e}"));
            let (name, labels) = match series.split_once('{') {
                None => (series.to_owned(), BTreeMap::new()),
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}').expect("labels end with }");
                    let mut labels = BTreeMap::new();
                    // Our label values never contain `",` or escapes.
                    for pair in body.split("\",").filter(|p| !p.is_empty()) {
                        let (k, v) = pair.split_once("=\"").expect("label is k=\"v\"");
                        labels.insert(k.to_owned(), v.trim_end_matches('"').to_owned());
                    }
                    (name.to_owned(), labels)
                }
            };
            samples.push(Sample {
                name,
                labels,
                value,
            });
        }
        Scrape {
            text,
            samples,
            types,
        }
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// Sum of every sample of `name` whose labels include `labels` (0 when there is none).
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// The value of the one sample of `name` with exactly these labels; panics if absent.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<&Sample> = self
            .matching(name, labels)
            .filter(|s| s.labels.len() == labels.len())
            .collect();
        assert_eq!(
            found.len(),
            1,
            "expected exactly one sample {name}{labels:?}, found {found:?}\n{}",
            self.text
        );
        found[0].value
    }

    fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }

    /// Every DESIGN.md metric with a sample has its documented type; `expected` must have one.
    fn check_types(&self, expected: &[&str]) {
        for name in expected {
            let sampled = self.has(name) || self.has(&format!("{name}_count"));
            assert!(sampled, "{name} has no sample\n{}", self.text);
        }
        for (name, kind) in DESIGN_METRICS {
            let sampled = self.has(name) || self.has(&format!("{name}_count"));
            if sampled {
                assert_eq!(
                    self.types.get(*name).map(String::as_str),
                    Some(*kind),
                    "# TYPE of {name}"
                );
            }
        }
    }
}

/// Scrape the real `/metrics` endpoint over HTTP.
async fn scrape(warren: &Warren) -> Scrape {
    let admin = warren.admin.expect("the test config has [admin]");
    Scrape::parse(scrape_metrics(admin).await)
}

/// One in-process value of a series (for waiting; assertions use the HTTP scrape).
fn sum_now(warren: &Warren, name: &str, labels: &[(&str, &str)]) -> f64 {
    Scrape::parse(warren.metrics.encode()).sum(name, labels)
}

/// Send exactly `n` bytes through `s` and read the `n`-byte echo back.
async fn exchange(s: &mut TcpStream, n: usize) {
    let sent: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
    s.write_all(&sent).await.unwrap();
    let mut got = vec![0u8; n];
    tokio::time::timeout(5 * SECOND, s.read_exact(&mut got))
        .await
        .expect("echo within 5s")
        .expect("echo read");
    assert_eq!(got, sent);
}

const L: (&str, &str) = ("listener", "default");
const P: (&str, &str) = ("pool", "default");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_info_types_and_process_metrics() {
    let dir = TempDir::new("types");
    let a = spawn_backend(echo).await;
    let cfg = with_admin(
        config(Balance::RoundRobin, vec![backend("a", a.addr)]),
        &dir,
    );
    let warren = Warren::start(cfg, quick());
    let mut s = TcpStream::connect(warren.addr).await.unwrap();
    exchange(&mut s, 10).await;
    drop(s);
    wait_for("the connection to close", 5 * SECOND, || {
        sum_now(&warren, "warren_connections_closed_total", &[]) == 1.0
    })
    .await;

    let m = scrape(&warren).await;
    assert_eq!(m.get("warren_build_info", &[("version", "0.1.0")]), 1.0);
    assert_eq!(
        m.sum("warren_build_info", &[]),
        1.0,
        "one build_info series"
    );
    m.check_types(&[
        "warren_build_info",
        "warren_listener_connections_active",
        "warren_listener_connections_total",
        "warren_listener_rejected_total",
        "warren_backend_connections_active",
        "warren_backend_connections_total",
        "warren_backend_connect_failures_total",
        "warren_backend_connect_duration_seconds",
        "warren_backend_bytes_total",
        "warren_backend_up",
        "warren_backend_admin_state",
        "warren_pool_available_backends",
        "warren_connections_closed_total",
    ]);
    // Histograms export buckets, a sum and a count.
    assert!(m.has("warren_backend_connect_duration_seconds_bucket"));
    assert!(m.has("warren_backend_connect_duration_seconds_sum"));
    assert_eq!(
        m.get(
            "warren_backend_connect_duration_seconds_bucket",
            &[P, ("backend", "a"), ("le", "+Inf")]
        ),
        1.0
    );
    // Process metrics.
    assert!(m.get("process_resident_memory_bytes", &[]) > 0.0);
    assert!(m.get("process_open_fds", &[]) > 0.0);
    assert_eq!(
        m.types.get("process_open_fds").map(String::as_str),
        Some("gauge")
    );
    warren.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seven_connections_of_1000_bytes_are_counted_exactly() {
    const N: usize = 7;
    const BYTES: usize = 1000;
    let dir = TempDir::new("seven");
    let (a, b) = (spawn_backend(echo).await, spawn_backend(echo).await);
    let cfg = with_admin(
        config(
            Balance::RoundRobin,
            vec![backend("a", a.addr), backend("b", b.addr)],
        ),
        &dir,
    );
    let warren = Warren::start(cfg, quick());
    for _ in 0..N {
        let mut s = TcpStream::connect(warren.addr).await.unwrap();
        exchange(&mut s, BYTES).await;
        drop(s);
    }
    wait_for("every connection to close", 5 * SECOND, || {
        sum_now(&warren, "warren_connections_closed_total", &[]) == N as f64
            && sum_now(&warren, "warren_listener_connections_active", &[]) == 0.0
    })
    .await;

    let m = scrape(&warren).await;
    let n = N as f64;
    let bytes = (N * BYTES) as f64;
    assert_eq!(m.get("warren_listener_connections_total", &[L]), n);
    assert_eq!(m.get("warren_listener_connections_active", &[L]), 0.0);
    for reason in ["max_connections", "no_backend", "accept_error"] {
        assert_eq!(
            m.sum("warren_listener_rejected_total", &[L, ("reason", reason)]),
            0.0,
            "rejected {reason}"
        );
    }
    // Round robin over two backends: 4 and 3, in some order.
    let per_backend = |name, backend| m.get(name, &[P, ("backend", backend)]);
    let (ta, tb) = (
        per_backend("warren_backend_connections_total", "a"),
        per_backend("warren_backend_connections_total", "b"),
    );
    assert_eq!(ta + tb, n);
    let mut split = [ta, tb];
    split.sort_by(f64::total_cmp);
    assert_eq!(split, [3.0, 4.0], "round robin split a={ta} b={tb}");
    assert_eq!(m.sum("warren_backend_connections_active", &[P]), 0.0);
    // Bytes per backend follow the connections: 1000 each way per connection.
    for (backend, conns) in [("a", ta), ("b", tb)] {
        for direction in ["to_backend", "to_client"] {
            assert_eq!(
                m.get(
                    "warren_backend_bytes_total",
                    &[P, ("backend", backend), ("direction", direction)]
                ),
                conns * BYTES as f64,
                "{backend} {direction}"
            );
        }
        assert_eq!(
            per_backend("warren_backend_connect_duration_seconds_count", backend),
            conns,
            "connect durations observed for {backend}"
        );
    }
    assert_eq!(
        m.sum("warren_backend_bytes_total", &[("direction", "to_backend")]),
        bytes
    );
    assert_eq!(
        m.sum("warren_backend_bytes_total", &[("direction", "to_client")]),
        bytes
    );
    assert_eq!(
        m.sum("warren_backend_connect_duration_seconds_count", &[P]),
        n
    );
    assert!(m.sum("warren_backend_connect_duration_seconds_sum", &[P]) > 0.0);
    // Data plane counters: splice + copy per direction.
    for direction in ["to_backend", "to_client"] {
        assert_eq!(
            m.sum("warren_forwarded_bytes_total", &[("direction", direction)]),
            bytes,
            "forwarded {direction}"
        );
    }
    // Every connection was closed by its client; no other reason.
    assert_eq!(
        m.get(
            "warren_connections_closed_total",
            &[L, ("reason", "client")]
        ),
        n
    );
    assert_eq!(m.sum("warren_connections_closed_total", &[L]), n);
    for reason in ["backend", "idle", "drain", "shutdown", "error"] {
        assert_eq!(
            m.get("warren_connections_closed_total", &[L, ("reason", reason)]),
            0.0,
            "closed {reason}"
        );
    }
    // No failures, both backends up and available.
    assert_eq!(m.sum("warren_backend_connect_failures_total", &[P]), 0.0);
    for backend in ["a", "b"] {
        assert_eq!(per_backend("warren_backend_up", backend), 1.0);
    }
    assert_eq!(m.get("warren_pool_available_backends", &[P]), 2.0);
    warren.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_connections_are_active_gauges() {
    let dir = TempDir::new("held");
    let (a, b) = (spawn_backend(echo).await, spawn_backend(echo).await);
    let cfg = with_admin(
        config(
            Balance::RoundRobin,
            vec![backend("a", a.addr), backend("b", b.addr)],
        ),
        &dir,
    );
    let warren = Warren::start(cfg, quick());
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(warren.addr).await.unwrap();
        exchange(&mut s, 100).await;
        held.push(s);
    }
    let m = scrape(&warren).await;
    assert_eq!(m.get("warren_listener_connections_active", &[L]), 3.0);
    assert_eq!(m.sum("warren_backend_connections_active", &[P]), 3.0);
    let (aa, ab) = (
        m.get("warren_backend_connections_active", &[P, ("backend", "a")]),
        m.get("warren_backend_connections_active", &[P, ("backend", "b")]),
    );
    let mut split = [aa, ab];
    split.sort_by(f64::total_cmp);
    assert_eq!(split, [1.0, 2.0], "round robin: a={aa} b={ab}");
    assert_eq!(m.get("warren_listener_connections_total", &[L]), 3.0);
    assert_eq!(m.sum("warren_connections_closed_total", &[L]), 0.0);

    drop(held);
    wait_for("the gauges to fall back to 0", 5 * SECOND, || {
        sum_now(&warren, "warren_listener_connections_active", &[]) == 0.0
            && sum_now(&warren, "warren_backend_connections_active", &[]) == 0.0
    })
    .await;
    let m = scrape(&warren).await;
    assert_eq!(m.get("warren_listener_connections_active", &[L]), 0.0);
    assert_eq!(m.sum("warren_backend_connections_active", &[P]), 0.0);
    assert_eq!(
        m.get(
            "warren_connections_closed_total",
            &[L, ("reason", "client")]
        ),
        3.0
    );
    warren.stop().await;
}

/// A client connection that warren turns away: it ends (EOF or reset) without data.
async fn expect_turned_away(addr: SocketAddr) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(5 * SECOND, s.read(&mut buf))
        .await
        .expect("turned away within 5s");
    assert!(matches!(read, Ok(0) | Err(_)), "got data: {read:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_refused_connect_counts_once() {
    // Only a refused backend: every client connection is exactly one failed attempt (when the
    // backend is held down, the admin-active one is still offered rather than refusing all).
    let dir = TempDir::new("refused-only");
    let dead = refused_addr();
    let cfg = with_admin(config(Balance::RoundRobin, vec![backend("x", dead)]), &dir);
    let warren = Warren::start(cfg, quick());
    let failures = |m: &Scrape| {
        m.get(
            "warren_backend_connect_failures_total",
            &[P, ("backend", "x"), ("reason", "refused")],
        )
    };
    let m = scrape(&warren).await;
    assert_eq!(failures(&m), 0.0);
    assert_eq!(m.get("warren_pool_available_backends", &[P]), 1.0);
    assert_eq!(m.get("warren_backend_up", &[P, ("backend", "x")]), 1.0);
    for attempt in 1..=3 {
        expect_turned_away(warren.addr).await;
        wait_for("the failed attempt to be counted", 5 * SECOND, || {
            sum_now(&warren, "warren_listener_rejected_total", &[]) == attempt as f64
        })
        .await;
        let m = scrape(&warren).await;
        assert_eq!(failures(&m), attempt as f64, "after attempt {attempt}");
        assert_eq!(
            m.get(
                "warren_listener_rejected_total",
                &[L, ("reason", "no_backend")]
            ),
            attempt as f64
        );
        for reason in ["timeout", "other"] {
            assert_eq!(
                m.get(
                    "warren_backend_connect_failures_total",
                    &[P, ("backend", "x"), ("reason", reason)]
                ),
                0.0
            );
        }
        assert_eq!(m.get("warren_backend_up", &[P, ("backend", "x")]), 0.0);
        assert_eq!(m.get("warren_pool_available_backends", &[P]), 0.0);
        assert_eq!(
            m.get("warren_backend_connections_total", &[P, ("backend", "x")]),
            0.0
        );
        assert_eq!(
            m.sum("warren_backend_connect_duration_seconds_count", &[P]),
            0.0,
            "failed connects are not observed as connect durations"
        );
    }
    // The turned-away connection's task leaves the gauge just after the client sees its close:
    // on a loaded machine a scrape can fall in between.
    wait_for(
        "the last turned-away connection to leave",
        5 * SECOND,
        || sum_now(&warren, "warren_listener_connections_active", &[L]) == 0.0,
    )
    .await;
    let m = scrape(&warren).await;
    assert_eq!(m.get("warren_listener_connections_total", &[L]), 3.0);
    assert_eq!(m.get("warren_listener_connections_active", &[L]), 0.0);
    assert_eq!(m.sum("warren_connections_closed_total", &[L]), 0.0);
    warren.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_backend_is_held_down_and_leaves_the_pool() {
    let dir = TempDir::new("refused-mixed");
    let live = spawn_backend(echo).await;
    let dead = refused_addr();
    let cfg = with_admin(
        config(
            Balance::RoundRobin,
            vec![backend("live", live.addr), backend("dead", dead)],
        ),
        &dir,
    );
    let warren = Warren::start(cfg, quick());
    let m = scrape(&warren).await;
    assert_eq!(m.get("warren_pool_available_backends", &[P]), 2.0);
    assert_eq!(m.get("warren_backend_up", &[P, ("backend", "dead")]), 1.0);

    // Round robin reaches the dead backend within two connections; each fails over to live.
    for _ in 0..2 {
        let mut s = TcpStream::connect(warren.addr).await.unwrap();
        exchange(&mut s, 100).await;
    }
    let m = scrape(&warren).await;
    let refused = [P, ("backend", "dead"), ("reason", "refused")];
    assert_eq!(
        m.get("warren_backend_connect_failures_total", &refused),
        1.0
    );
    assert_eq!(m.get("warren_backend_up", &[P, ("backend", "dead")]), 0.0);
    assert_eq!(m.get("warren_backend_up", &[P, ("backend", "live")]), 1.0);
    assert_eq!(m.get("warren_pool_available_backends", &[P]), 1.0);

    // Held down (10 s by default): further connections do not try it again.
    for _ in 0..4 {
        let mut s = TcpStream::connect(warren.addr).await.unwrap();
        exchange(&mut s, 100).await;
    }
    let m = scrape(&warren).await;
    assert_eq!(
        m.get("warren_backend_connect_failures_total", &refused),
        1.0
    );
    assert_eq!(
        m.get(
            "warren_backend_connections_total",
            &[P, ("backend", "live")]
        ),
        6.0
    );
    assert_eq!(
        m.get(
            "warren_backend_connections_total",
            &[P, ("backend", "dead")]
        ),
        0.0
    );
    assert_eq!(m.get("warren_listener_connections_total", &[L]), 6.0);
    assert_eq!(
        m.get(
            "warren_listener_rejected_total",
            &[L, ("reason", "no_backend")]
        ),
        0.0
    );
    warren.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_rejection_is_counted() {
    let dir = TempDir::new("maxconn");
    let a = spawn_backend(echo).await;
    let cfg = with_listener(
        with_admin(
            config(Balance::RoundRobin, vec![backend("a", a.addr)]),
            &dir,
        ),
        |l| l.max_connections = 2,
    );
    let warren = Warren::start(cfg, quick());
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(warren.addr).await.unwrap();
        exchange(&mut s, 10).await;
        held.push(s);
    }
    expect_turned_away(warren.addr).await;
    wait_for("the rejection to be counted", 5 * SECOND, || {
        sum_now(&warren, "warren_listener_rejected_total", &[]) == 1.0
    })
    .await;
    let m = scrape(&warren).await;
    assert_eq!(
        m.get(
            "warren_listener_rejected_total",
            &[L, ("reason", "max_connections")]
        ),
        1.0
    );
    assert_eq!(m.sum("warren_listener_rejected_total", &[L]), 1.0);
    // A rejected connection is neither accepted nor active.
    assert_eq!(m.get("warren_listener_connections_total", &[L]), 2.0);
    assert_eq!(m.get("warren_listener_connections_active", &[L]), 2.0);
    assert_eq!(
        m.get("warren_backend_connections_active", &[P, ("backend", "a")]),
        2.0
    );
    drop(held);
    warren.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_probes_are_counted_and_timed() {
    let dir = TempDir::new("probes");
    let a = spawn_backend(echo).await;
    let mut cfg = with_admin(
        config(Balance::RoundRobin, vec![backend("a", a.addr)]),
        &dir,
    );
    cfg.pools[0].health = Some(HealthConfig {
        probe: Probe::Tcp,
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(500),
        rise: 1,
        fall: 1,
    });
    let warren = Warren::start(cfg, quick());
    let ok = [P, ("backend", "a"), ("result", "ok")];
    wait_for("three probes", 5 * SECOND, || {
        sum_now(&warren, "warren_health_checks_total", &ok) >= 3.0
    })
    .await;
    // The duration is observed just before the result is counted: look for a scrape taken
    // between two probes (100 ms apart), where both agree.
    let deadline = tokio::time::Instant::now() + 5 * SECOND;
    let m = loop {
        let m = scrape(&warren).await;
        let count = m.get(
            "warren_health_check_duration_seconds_count",
            &[P, ("backend", "a")],
        );
        let checks = m.sum("warren_health_checks_total", &[P, ("backend", "a")]);
        if count == checks {
            break m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "probe count {checks} never matched the duration count {count}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let checks_ok = m.get("warren_health_checks_total", &ok);
    assert!(checks_ok >= 3.0, "{checks_ok} ok probes");
    assert_eq!(
        m.sum(
            "warren_health_checks_total",
            &[P, ("backend", "a"), ("result", "failed")]
        ),
        0.0
    );
    assert_eq!(
        m.get(
            "warren_health_check_duration_seconds_count",
            &[P, ("backend", "a")]
        ),
        checks_ok
    );
    assert!(
        m.get(
            "warren_health_check_duration_seconds_sum",
            &[P, ("backend", "a")]
        ) > 0.0
    );
    assert_eq!(m.get("warren_backend_up", &[P, ("backend", "a")]), 1.0);
    assert_eq!(m.get("warren_pool_available_backends", &[P]), 1.0);
    m.check_types(&[
        "warren_health_checks_total",
        "warren_health_check_duration_seconds",
    ]);
    warren.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_sets_admin_state_and_hooks_are_counted() {
    let dir = TempDir::new("drain");
    let (a, b) = (spawn_backend(echo).await, spawn_backend(echo).await);
    let mut cfg = with_admin(
        config(
            Balance::RoundRobin,
            vec![backend("a", a.addr), backend("b", b.addr)],
        ),
        &dir,
    );
    let hook = |argv: &str| {
        exec_hook(
            &[HookEvent::DrainStarted],
            vec![argv.to_owned()],
            5 * SECOND,
        )
    };
    cfg.hooks = vec![hook("/bin/true"), hook("/bin/false")];
    let warren = Warren::start(cfg, quick());
    let admin = warren.admin.unwrap();

    let state = |m: &Scrape, backend: &str, state: &str| {
        m.get(
            "warren_backend_admin_state",
            &[P, ("backend", backend), ("state", state)],
        )
    };
    let m = scrape(&warren).await;
    for backend in ["a", "b"] {
        assert_eq!(state(&m, backend, "active"), 1.0);
        assert_eq!(state(&m, backend, "draining"), 0.0);
        assert_eq!(state(&m, backend, "drained"), 0.0);
    }
    assert!(!m.has("warren_hook_runs_total"), "no hook has run yet");

    let (code, body) = http(
        admin,
        "POST",
        "/v1/pools/default/backends/b/drain",
        Some(TOKEN),
        b"",
    )
    .await;
    assert_eq!(code, 202, "{body}");
    wait_for("b to be drained and both hooks to run", 10 * SECOND, || {
        let m = Scrape::parse(warren.metrics.encode());
        m.sum(
            "warren_backend_admin_state",
            &[("backend", "b"), ("state", "drained")],
        ) == 1.0
            && m.sum("warren_hook_runs_total", &[]) == 2.0
    })
    .await;

    let m = scrape(&warren).await;
    assert_eq!(state(&m, "b", "drained"), 1.0);
    assert_eq!(state(&m, "b", "draining"), 0.0);
    assert_eq!(state(&m, "b", "active"), 0.0);
    assert_eq!(state(&m, "a", "active"), 1.0);
    assert_eq!(state(&m, "a", "draining"), 0.0);
    assert_eq!(state(&m, "a", "drained"), 0.0);
    assert_eq!(m.get("warren_pool_available_backends", &[P]), 1.0);
    // Health is separate from admin state: b is still up.
    assert_eq!(m.get("warren_backend_up", &[P, ("backend", "b")]), 1.0);
    let runs = |result| {
        m.get(
            "warren_hook_runs_total",
            &[("event", "drain_started"), ("result", result)],
        )
    };
    assert_eq!(runs("ok"), 1.0, "/bin/true");
    assert_eq!(runs("failed"), 1.0, "/bin/false");
    assert_eq!(m.sum("warren_hook_runs_total", &[]), 2.0);
    m.check_types(&["warren_backend_admin_state", "warren_hook_runs_total"]);

    // New connections go to a only.
    for _ in 0..3 {
        let mut s = TcpStream::connect(warren.addr).await.unwrap();
        exchange(&mut s, 10).await;
    }
    let m = scrape(&warren).await;
    assert_eq!(
        m.get("warren_backend_connections_total", &[P, ("backend", "a")]),
        3.0
    );
    assert_eq!(
        m.get("warren_backend_connections_total", &[P, ("backend", "b")]),
        0.0
    );
    warren.stop().await;
}

/// Wait until `conn` is closed by warren (EOF or reset), reading and discarding anything else.
async fn expect_closed_by_warren(conn: &mut TcpStream, within: Duration) {
    let mut buf = [0u8; 64];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Err(_) => panic!("warren did not close the connection within {within:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_reasons_backend_idle_drain_and_shutdown() {
    let reason =
        |m: &Scrape, r: &str| m.get("warren_connections_closed_total", &[L, ("reason", r)]);
    let only = |m: &Scrape, expected: &str| {
        for r in ["client", "backend", "idle", "drain", "shutdown", "error"] {
            let want = if r == expected { 1.0 } else { 0.0 };
            assert_eq!(reason(m, r), want, "closed {r} (expected one {expected})");
        }
    };

    // The backend closes first.
    let dir = TempDir::new("close-backend");
    let closer = spawn_backend(|mut s: TcpStream| async move {
        let _ = s.write_all(b"bye").await;
    })
    .await;
    let warren = Warren::start(
        with_admin(
            config(Balance::RoundRobin, vec![backend("a", closer.addr)]),
            &dir,
        ),
        quick(),
    );
    let mut s = TcpStream::connect(warren.addr).await.unwrap();
    expect_closed_by_warren(&mut s, 5 * SECOND).await;
    drop(s);
    wait_for("the close to be counted", 5 * SECOND, || {
        sum_now(&warren, "warren_connections_closed_total", &[]) == 1.0
    })
    .await;
    let m = scrape(&warren).await;
    only(&m, "backend");
    assert_eq!(
        m.get(
            "warren_backend_bytes_total",
            &[P, ("backend", "a"), ("direction", "to_client")]
        ),
        3.0
    );
    warren.stop().await;

    // Idle timeout.
    let dir = TempDir::new("close-idle");
    let a = spawn_backend(echo).await;
    let cfg = with_listener(
        with_admin(
            config(Balance::RoundRobin, vec![backend("a", a.addr)]),
            &dir,
        ),
        |l| l.idle_timeout = Duration::from_millis(300),
    );
    let warren = Warren::start(cfg, quick());
    let mut s = TcpStream::connect(warren.addr).await.unwrap();
    exchange(&mut s, 10).await;
    expect_closed_by_warren(&mut s, 5 * SECOND).await;
    wait_for("the close to be counted", 5 * SECOND, || {
        sum_now(&warren, "warren_connections_closed_total", &[]) == 1.0
    })
    .await;
    only(&scrape(&warren).await, "idle");
    warren.stop().await;

    // A drain whose deadline passes with the connection still open.
    let dir = TempDir::new("close-drain");
    let a = spawn_backend(echo).await;
    let warren = Warren::start(
        with_admin(
            config(Balance::RoundRobin, vec![backend("a", a.addr)]),
            &dir,
        ),
        quick(),
    );
    let mut s = TcpStream::connect(warren.addr).await.unwrap();
    exchange(&mut s, 10).await;
    let (code, body) = http(
        warren.admin.unwrap(),
        "POST",
        "/v1/pools/default/backends/a/drain",
        Some(TOKEN),
        br#"{"deadline":"300ms","force":true}"#,
    )
    .await;
    assert_eq!(code, 202, "{body}");
    let m = scrape(&warren).await;
    assert_eq!(
        m.get(
            "warren_backend_admin_state",
            &[P, ("backend", "a"), ("state", "draining")]
        ),
        1.0,
        "draining while a connection is open"
    );
    assert_eq!(m.get("warren_pool_available_backends", &[P]), 0.0);
    expect_closed_by_warren(&mut s, 5 * SECOND).await;
    wait_for(
        "the close to be counted and the drain to complete",
        5 * SECOND,
        || {
            let m = Scrape::parse(warren.metrics.encode());
            m.sum("warren_connections_closed_total", &[]) == 1.0
                && m.sum("warren_backend_admin_state", &[("state", "drained")]) == 1.0
        },
    )
    .await;
    let m = scrape(&warren).await;
    only(&m, "drain");
    assert_eq!(
        m.get(
            "warren_backend_admin_state",
            &[P, ("backend", "a"), ("state", "draining")]
        ),
        0.0
    );
    warren.stop().await;

    // Shutdown with a connection still open past the grace period (200 ms in `quick`).
    let dir = TempDir::new("close-shutdown");
    let a = spawn_backend(echo).await;
    let warren = Warren::start(
        with_admin(
            config(Balance::RoundRobin, vec![backend("a", a.addr)]),
            &dir,
        ),
        quick(),
    );
    let mut s = TcpStream::connect(warren.addr).await.unwrap();
    exchange(&mut s, 10).await;
    // The admin API stops with warren: read the same registry in process afterwards.
    let metrics = warren.metrics.clone();
    warren.stop().await;
    expect_closed_by_warren(&mut s, 5 * SECOND).await;
    let m = Scrape::parse(metrics.encode());
    only(&m, "shutdown");
    assert_eq!(m.get("warren_listener_connections_active", &[L]), 0.0);
    assert_eq!(m.sum("warren_backend_connections_active", &[P]), 0.0);
}
