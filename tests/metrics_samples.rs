//! `/metrics`'s shape, series by series: a warren with an admin API, two listeners, a probed pool
//! of three backends (two up, one refusing) and a passive pool, and a hook, is scraped after
//! traffic and refused admin tokens, after a drain, and after a reload that removes a backend,
//! a pool and its listener (plus a reload that fails). Each scrape is reduced to its sorted
//! `# HELP` and `# TYPE` lines and its series (name and labels, no values; `process_*` left
//! out, as their presence depends on the platform) and compared with the sample stored under
//! `tests/samples/metrics/`. So a family, a help text, a label name or value, a bucket, or a
//! series that appears or disappears at another moment than before shows up as a difference.
//!
//! `WARREN_BLESS_SAMPLES=1 cargo test --test metrics_samples` rewrites the samples (after a
//! change of the metrics that README.md documents).

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use tokio::net::TcpStream;
use warren::{Options, Server};

const TOKEN: &str = "metrics-samples-token";
const SECOND: Duration = Duration::from_secs(1);

/// The scrape's shape: sorted, deduplicated `# HELP`/`# TYPE` lines and series without their
/// values; the version label of `warren_build_info` masked.
fn shape(text: &str) -> String {
    let version = format!("version=\"{}\"", env!("CARGO_PKG_VERSION"));
    let lines: BTreeSet<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| {
            let name = l
                .strip_prefix("# HELP ")
                .or_else(|| l.strip_prefix("# TYPE "))
                .unwrap_or(l);
            if name.starts_with("process_") {
                return None;
            }
            let kept = if l.starts_with('#') {
                l
            } else {
                l.rsplit_once(' ').map_or(l, |(series, _value)| series)
            };
            Some(kept.replace(&version, "version=\"<version>\""))
        })
        .collect();
    lines.into_iter().collect::<Vec<_>>().join("\n") + "\n"
}

fn samples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/samples/metrics")
}

/// Compares (or with `WARREN_BLESS_SAMPLES=1` writes) one scrape's shape; returns the sample's
/// name when it differs, after printing the lines only one side has.
fn check_sample(name: &str, shape: &str) -> Option<String> {
    let path = samples_dir().join(format!("{name}.txt"));
    if std::env::var_os("WARREN_BLESS_SAMPLES").is_some() {
        std::fs::create_dir_all(samples_dir()).unwrap();
        std::fs::write(&path, shape).unwrap();
        return None;
    }
    let stored = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (WARREN_BLESS_SAMPLES=1 writes it)", path.display()));
    if stored == shape {
        return None;
    }
    let (old, new): (BTreeSet<&str>, BTreeSet<&str>) =
        (stored.lines().collect(), shape.lines().collect());
    eprintln!("sample {name} differs ({})", path.display());
    for gone in old.difference(&new) {
        eprintln!("  only stored: {gone}");
    }
    for added in new.difference(&old) {
        eprintln!("  only live:   {added}");
    }
    Some(name.to_string())
}

/// The config; `with_spare` adds what the reload takes away (backend c, listener and pool "spare").
fn config_text(
    dir: &Path,
    listen: [SocketAddr; 3],
    backends: [SocketAddr; 4],
    with_spare: bool,
) -> String {
    let [admin, amqp, spare_listen] = listen;
    let [a, b, c, d] = backends;
    let mut text = format!(
        r#"[admin]
listen = "{admin}"
token_file = "{token}"
state_file = "{state}"

[[listener]]
name = "amqp"
listen = "{amqp}"
pool = "rabbitmq"

[pool.rabbitmq]
balance = "round_robin"
min_available = 1

[pool.rabbitmq.health]
kind = "tcp"
interval = "50ms"
timeout = "1s"
rise = 1
fall = 1

[[pool.rabbitmq.backend]]
name = "a"
addr = "{a}"

[[pool.rabbitmq.backend]]
name = "b"
addr = "{b}"

[[hook]]
on = ["drain_started", "drain_complete", "backend_down"]
exec = ["/bin/sh", "-c", "true"]
"#,
        token = dir.join("token").display(),
        state = dir.join("state.json").display(),
    );
    if with_spare {
        text += &format!(
            r#"
[[pool.rabbitmq.backend]]
name = "c"
addr = "{c}"

[[listener]]
name = "spare"
listen = "{spare_listen}"
pool = "spare"

[pool.spare]
min_available = 0

[[pool.spare.backend]]
name = "d"
addr = "{d}"
"#
        );
    }
    text
}

/// Poll the admin API's `/metrics` until `cond` holds for it (within 10 s).
async fn wait_scrape(admin: SocketAddr, what: &str, cond: impl Fn(&str) -> bool) {
    let deadline = tokio::time::Instant::now() + SECOND * 10;
    loop {
        let text = scrape_metrics(admin).await;
        if cond(&text) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} within 10 s; /metrics:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `warren_hook_runs_total` of `event` with result ok.
fn hook_ok(event: &str) -> String {
    format!("warren_hook_runs_total{{event=\"{event}\",result=\"ok\"}}")
}

/// `n` echo exchanges on fresh connections to `listener`, each closed by the client.
async fn traffic(listener: SocketAddr, n: u8) {
    for i in 0..n {
        let mut s = TcpStream::connect(listener).await.unwrap();
        assert!(echo_once(&mut s, i).await, "echo {i} through {listener}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_series_match_the_stored_samples() {
    let dir = TempDir::new("metrics-samples");
    std::fs::write(dir.0.join("token"), TOKEN).unwrap();
    let (a, b, d) = (
        spawn_backend(echo).await,
        spawn_backend(echo).await,
        spawn_backend(echo).await,
    );
    let (_c_socket, c) = held_refusing_port();
    let port = |_| SocketAddr::from(([127, 0, 0, 1], free_port()));
    let listen: [SocketAddr; 3] = [0, 1, 2].map(port);
    let backends = [a.addr, b.addr, c, d.addr];
    let config_file = dir.0.join("warren.toml");
    std::fs::write(&config_file, config_text(&dir.0, listen, backends, true)).unwrap();
    let config = warren::config::load(&config_file).unwrap_or_else(|e| panic!("{e}"));
    let options = Options {
        config_path: Some(config_file.clone()),
        ..quick()
    };
    let server = Server::bind(&config, options).expect("warren binds");
    let addrs: std::collections::HashMap<String, SocketAddr> =
        server.listener_addrs().into_iter().collect();
    let admin = server.admin_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(server.run(stop.clone()));
    let mut differ = Vec::new();

    // Probes settled (a and b probed up, c down) and c's backend_down hook run.
    wait_scrape(admin, "probes of a, b and c, and c's hook", |text| {
        let checks = |backend: &str, result: &str| {
            metric_or_zero(
                text,
                &format!(
                    "warren_health_checks_total{{backend=\"{backend}\",pool=\"rabbitmq\",result=\"{result}\"}}"
                ),
            )
        };
        checks("a", "ok") >= 1.0
            && checks("b", "ok") >= 1.0
            && checks("c", "failed") >= 1.0
            && metric_or_zero(text, &hook_ok("backend_down")) == 1.0
    })
    .await;
    traffic(addrs["amqp"], 4).await;
    traffic(addrs["spare"], 1).await;
    wait_scrape(admin, "five connections closed by their client", |text| {
        let closed = |listener: &str| {
            metric_or_zero(
                text,
                &format!(
                    "warren_connections_closed_total{{listener=\"{listener}\",reason=\"client\"}}"
                ),
            )
        };
        closed("amqp") == 4.0 && closed("spare") == 1.0
    })
    .await;
    // Refused tokens: one missing, one wrong.
    let (code, _) = http(admin, "GET", "/v1/status", None, b"").await;
    assert_eq!(code, 401);
    let (code, _) = http(admin, "GET", "/v1/status", Some("not-the-token"), b"").await;
    assert_eq!(code, 401);
    let text = scrape_metrics(admin).await;
    differ.extend(check_sample("01-after-traffic", &shape(&text)));

    // A drain of b (no connection left on it): draining, then drained, both hooks run.
    let (code, body) = http(
        admin,
        "POST",
        "/v1/pools/rabbitmq/backends/b/drain",
        Some(TOKEN),
        b"",
    )
    .await;
    assert_eq!(code, 202, "{body}");
    wait_scrape(admin, "b drained and both drain hooks run", |text| {
        metric_opt(
            text,
            "warren_backend_admin_state{backend=\"b\",pool=\"rabbitmq\",state=\"drained\"}",
        ) == Some(1.0)
            && metric_or_zero(text, &hook_ok("drain_started")) == 1.0
            && metric_or_zero(text, &hook_ok("drain_complete")) == 1.0
    })
    .await;
    let text = scrape_metrics(admin).await;
    differ.extend(check_sample("02-after-drain", &shape(&text)));

    // A reload that removes backend c, listener and pool "spare"; then one that fails.
    std::fs::write(&config_file, config_text(&dir.0, listen, backends, false)).unwrap();
    let (code, body) = http(admin, "POST", "/v1/reload", Some(TOKEN), b"").await;
    assert_eq!(code, 200, "{body}");
    std::fs::write(&config_file, "[[listener]]\nname = 1\n").unwrap();
    let (code, body) = http(admin, "POST", "/v1/reload", Some(TOKEN), b"").await;
    assert_eq!(code, 400, "{body}");
    traffic(addrs["amqp"], 2).await;
    wait_scrape(
        admin,
        "two more connections closed by their client",
        |text| {
            metric_or_zero(
                text,
                "warren_connections_closed_total{listener=\"amqp\",reason=\"client\"}",
            ) == 6.0
        },
    )
    .await;
    let text = scrape_metrics(admin).await;
    differ.extend(check_sample("03-after-reloads", &shape(&text)));

    stop.cancel();
    tokio::time::timeout(SECOND * 10, task)
        .await
        .expect("warren stops within 10 s")
        .unwrap();
    assert!(
        differ.is_empty(),
        "/metrics differs from the stored samples: {differ:?}"
    );
}

#[test]
fn shape_keeps_help_type_and_series_without_values_or_process_metrics() {
    let text = format!(
        "# HELP warren_x_total X.\n# TYPE warren_x_total counter\nwarren_x_total{{a=\"1\"}} 7\n\
         warren_build_info{{version=\"{}\"}} 1\n# HELP process_open_fds Fds.\nprocess_open_fds 9\n",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(
        shape(&text),
        "# HELP warren_x_total X.\n# TYPE warren_x_total counter\n\
         warren_build_info{version=\"<version>\"}\nwarren_x_total{a=\"1\"}\n"
    );
}
