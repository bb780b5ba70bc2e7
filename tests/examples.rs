//! The examples in config/ as an operator would use them: every `config/**/*.toml` passes
//! `warren check`; the Prometheus alert rules parse, use only series warren exports, and pass
//! `promtool` when it is installed; the keepalived check script follows a real warren's `/readyz`.
#![cfg(unix)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use warren::config::{AdminConfig, Balance};

const WARREN: &str = env!("CARGO_BIN_EXE_warren");

/// How long one short command (warren check, promtool, the check script) may take.
const SHORT_RUN: Duration = Duration::from_secs(30);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Run a command to completion, killing it at the deadline.
fn run(cmd: &mut Command) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let deadline = Instant::now() + SHORT_RUN;
    // Outputs here are a few KiB at most, below a pipe's capacity, so polling cannot block.
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{cmd:?} did not finish within {SHORT_RUN:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("collect output")
}

/// Every file under `dir` whose name ends with `suffix`, sorted.
fn files_under(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.to_string_lossy().ends_with(suffix) {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

#[test]
fn every_config_example_passes_warren_check() {
    let configs = files_under(&repo().join("config"), ".toml");
    let names: Vec<String> = configs
        .iter()
        .map(|p| p.strip_prefix(repo()).unwrap().display().to_string())
        .collect();
    for expected in [
        "config/warren.toml",
        "config/quickstart-nginx-equivalent.toml",
        "config/active-passive-hooks.toml",
        "config/proxy-protocol.toml",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing: {names:?}"
        );
    }
    for (path, name) in configs.iter().zip(&names) {
        let out = run(Command::new(WARREN)
            .args(["check", "--config", name])
            .current_dir(repo()));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "warren check {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.starts_with(&format!("{name}: ok: ")), "{stdout}");
        // The same file through the library, to look at what the examples promise.
        warren::config::load(path).unwrap();
    }

    let hooks = warren::config::load(&repo().join("config/active-passive-hooks.toml")).unwrap();
    let pool = hooks.pool("rabbitmq").unwrap();
    assert_eq!((pool.primary_count(), pool.backends.len()), (2, 4));
    assert!(pool.health.is_some());
    // Each exec hook names a script that is shipped in config/hooks/.
    for hook in &hooks.hooks {
        if let warren::config::HookAction::Exec(argv) = &hook.action {
            let script = Path::new(&argv[0]).file_name().unwrap();
            let shipped = repo().join("config/hooks").join(script);
            assert!(shipped.is_file(), "{} is not shipped", shipped.display());
            let syntax = run(Command::new("sh").arg("-n").arg(&shipped));
            assert!(syntax.status.success(), "{}", shipped.display());
        }
    }

    let pp = warren::config::load(&repo().join("config/proxy-protocol.toml")).unwrap();
    assert!(pp
        .listeners
        .iter()
        .all(|l| l.proxy_protocol != warren::config::ProxyProtocol::Off));
    assert!(pp.listeners.iter().any(|l| l.accept_proxy_protocol));
    let text = std::fs::read_to_string(repo().join("config/proxy-protocol.toml")).unwrap();
    assert!(
        text.contains("proxy_protocol = true"),
        "the rabbitmq.conf side is explained"
    );
    // The fleet examples: two instances of one site, the same pools, etcd and prefix; their own
    // names and ports, so both can run on one machine.
    let fleet = |name: &str| warren::config::load(&repo().join("config/fleet").join(name)).unwrap();
    let (a, b) = (fleet("warren-a.toml"), fleet("warren-b.toml"));
    let (fa, fb) = (a.fleet.clone().unwrap(), b.fleet.clone().unwrap());
    assert_eq!(
        (fa.instance.as_str(), fb.instance.as_str()),
        ("warren-a", "warren-b")
    );
    assert_eq!((fa.endpoints.len(), &fa.prefix), (3, &fb.prefix));
    assert_eq!(fa.endpoints, fb.endpoints);
    assert_eq!(a.pools, b.pools);
    assert_ne!(a.listeners[0].listen, b.listeners[0].listen);
    assert_ne!(
        a.admin.as_ref().unwrap().listen,
        b.admin.as_ref().unwrap().listen
    );
    assert!(
        a.summary()
            .ends_with(", fleet etcd (3 endpoints) as instance warren-a"),
        "{}",
        a.summary()
    );
}

/// Metric names the modules of `src/` register through `metrics.rs`'s helpers (with the
/// `warren_` prefix), plus the log writer's counter; histograms also as their `_bucket`, `_sum`
/// and `_count` series. Each module registers its own families (README, "Layout"), so every
/// file of `src/` is read.
fn exported_metrics() -> BTreeSet<String> {
    let mut files = vec![repo().join("src")];
    let mut sources = Vec::new();
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if path.extension().is_some_and(|e| e == "rs") {
            sources.push(std::fs::read_to_string(&path).unwrap());
        }
    }
    let mut names = BTreeSet::new();
    for source in &sources {
        names.extend(registered_names(source));
    }
    names
}

/// The names registered in one source file: calls `counter_vec(registry, "name", ...)` (and
/// `gauge_vec`, `histogram_vec`, `counter`, `gauge`), and `Opts::new("name", ...)`. A call
/// whose first arguments are not a registry and a string literal is a definition or a helper's
/// own body, and is skipped.
fn registered_names(source: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let calls = [
        ("counter_vec(", true, false),
        ("gauge_vec(", true, false),
        ("histogram_vec(", true, true),
        ("counter(", true, false),
        ("gauge(", true, false),
        ("Opts::new(", false, false),
    ];
    for (call, takes_registry, histogram) in calls {
        for (i, _) in source.match_indices(call) {
            let mut after = source[i + call.len()..].trim_start();
            if takes_registry {
                let end = after
                    .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '&' || c == '.'))
                    .unwrap_or(after.len());
                let Some(rest) = after[end..].strip_prefix(',') else {
                    continue;
                };
                after = rest.trim_start();
            }
            let Some(rest) = after.strip_prefix('"') else {
                continue;
            };
            let name = &rest[..rest.find('"').unwrap()];
            names.insert(format!("warren_{name}"));
            if histogram {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("warren_{name}{suffix}"));
                }
            }
        }
    }
    names
}

/// The metric names a PromQL expression reads: identifiers that are not functions, keywords,
/// label names (in `{...}`, `by (...)`, `on (...)`, ...) or inside strings and ranges.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "offset",
        "inf",
        "nan",
        // Aggregations may take their `by (...)` before the parenthesis.
        "sum",
        "avg",
        "count",
        "min",
        "max",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
        "group",
    ];
    // Blank out strings, label matchers and ranges, keeping positions simple.
    let mut plain = String::with_capacity(expr.len());
    let mut closing: Option<char> = None;
    for c in expr.chars() {
        match closing {
            Some(end) if c == end => {
                closing = None;
                plain.push(' ');
            }
            Some(_) => plain.push(' '),
            None => match c {
                '"' => {
                    closing = Some('"');
                    plain.push(' ');
                }
                '{' => {
                    closing = Some('}');
                    plain.push(' ');
                }
                '[' => {
                    closing = Some(']');
                    plain.push(' ');
                }
                c => plain.push(c),
            },
        }
    }
    let chars: Vec<char> = plain.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    // Set after a grouping keyword: the next parenthesised list holds label names.
    let mut skip_list = false;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '_' | ':'))
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| !c.is_whitespace());
            if KEYWORDS.contains(&word.as_str()) {
                skip_list = matches!(
                    word.as_str(),
                    "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
                );
            } else if next != Some(&'(') {
                names.insert(word);
            }
        } else if c == '(' && skip_list {
            while i < chars.len() && chars[i] != ')' {
                i += 1;
            }
            skip_list = false;
            i += 1;
        } else {
            if !c.is_whitespace() {
                skip_list = false;
            }
            i += 1;
        }
    }
    names
}

#[test]
fn metric_names_reads_promql() {
    let cases: &[(&str, &[&str])] = &[
        ("warren_backend_up == 0", &["warren_backend_up"]),
        (
            "sum by (job, pool) (rate(warren_x_total{reason=\"a b\"}[5m])) > 0.1",
            &["warren_x_total"],
        ),
        (
            "(count by (pool) (a == 0)) unless on (pool) (b == 0)",
            &["a", "b"],
        ),
        ("up{job=\"warren\"} == 0", &["up"]),
        ("c > 0.9 * 100000", &["c"]),
    ];
    for (expr, want) in cases {
        let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
        assert_eq!(metric_names(expr), want, "{expr}");
    }
}

#[test]
fn alert_rules_use_only_exported_metrics() {
    let exported = exported_metrics();
    for name in [
        "warren_build_info",
        "warren_backend_up",
        "warren_pool_available_backends",
        "warren_listener_rejected_total",
        "warren_backend_connect_duration_seconds_bucket",
    ] {
        assert!(exported.contains(name), "reading src/ found no {name}");
    }

    let path = repo().join("config/prometheus/alerts.yml");
    let text = std::fs::read_to_string(&path).unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let rules: Vec<&serde_yaml::Value> = doc["groups"]
        .as_sequence()
        .expect("groups is a list")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules is a list"))
        .collect();
    let mut alerts = Vec::new();
    for rule in rules {
        let alert = rule["alert"].as_str().expect("every rule is an alert");
        let expr = rule["expr"].as_str().expect("expr is a string");
        let severity = rule["labels"]["severity"].as_str();
        assert!(
            matches!(severity, Some("warning" | "critical")),
            "{alert}: severity {severity:?}"
        );
        for key in ["summary", "description"] {
            assert!(
                rule["annotations"][key]
                    .as_str()
                    .is_some_and(|s| !s.is_empty()),
                "{alert}: no {key}"
            );
        }
        let used = metric_names(expr);
        assert!(!used.is_empty(), "{alert}: reads no metric: {expr}");
        for name in &used {
            // `up` is Prometheus' own series for the scrape of warren.
            assert!(
                name == "up" || exported.contains(name),
                "{alert}: {name} is not a metric warren exports ({expr})"
            );
        }
        alerts.push(alert.to_string());
    }
    assert_eq!(
        alerts,
        [
            "WarrenDown",
            "WarrenBackendDown",
            "WarrenPoolDegraded",
            "WarrenPoolDown",
            "WarrenNoBackendRejections",
            "WarrenBackendConnectFailures",
            "WarrenPoolUnbalanced",
            "WarrenHookFailures",
            "WarrenReloadFailed",
            "WarrenNearMaxConnections",
        ]
    );
}

#[test]
fn alert_rules_pass_promtool_when_installed() {
    if tool_or_skip("promtool", "alert_rules_pass_promtool_when_installed").is_none() {
        return;
    }
    let dir = repo().join("config/prometheus");
    let check = run(Command::new("promtool")
        .args(["check", "rules", "alerts.yml"])
        .current_dir(&dir));
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(String::from_utf8_lossy(&check.stdout).contains("SUCCESS: 10 rules found"));
    let tests = run(Command::new("promtool")
        .args(["test", "rules", "alerts.test.yml"])
        .current_dir(&dir));
    assert!(
        tests.status.success(),
        "{}{}",
        String::from_utf8_lossy(&tests.stdout),
        String::from_utf8_lossy(&tests.stderr)
    );
}

#[test]
fn keepalived_example_tracks_readyz() {
    let dir = repo().join("config/keepalived");
    let conf = std::fs::read_to_string(dir.join("keepalived.conf")).unwrap();
    assert!(conf.contains("script \"/etc/keepalived/check-warren.sh readyz\""));
    assert!(conf.contains("script \"/etc/keepalived/check-warren.sh healthz\""));
    let script = dir.join("check-warren.sh");
    let syntax = run(Command::new("sh").arg("-n").arg(&script));
    assert!(syntax.status.success());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&script).unwrap().permissions().mode();
        assert!(mode & 0o111 != 0, "check-warren.sh is not executable");
    }
    if tool_or_skip("keepalived", "keepalived_example_tracks_readyz").is_none() {
        return;
    }
    // keepalived disables a track script it cannot find, so point it at the shipped one.
    let tmp = TempDir::new("keepalived-conf");
    let conf_path = tmp.0.join("keepalived.conf");
    let local = conf.replace(
        "/etc/keepalived/check-warren.sh",
        &script.display().to_string(),
    );
    std::fs::write(&conf_path, local).unwrap();
    let out = run(Command::new("keepalived")
        .arg("--config-test")
        .arg("-f")
        .arg(&conf_path));
    assert!(
        out.status.success(),
        "keepalived --config-test: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The check script against a running warren: ready while a backend is available, not ready
/// once the only backend is drained, and alive throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalived_check_script_follows_readyz() {
    if tool_or_skip("curl", "keepalived_check_script_follows_readyz").is_none() {
        return;
    }
    let rabbit = spawn_backend(echo).await;
    let mut cfg = config(Balance::RoundRobin, vec![backend("rabbit-a", rabbit.addr)]);
    cfg.admin = Some(AdminConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        token_file: None,
        state_file: None,
        ..Default::default()
    });
    let warren = Warren::start(cfg, quick());
    let admin = warren.admin.expect("admin API");
    let url = format!("http://{admin}");
    let script = repo().join("config/keepalived/check-warren.sh");
    let check = |endpoint: &'static str| {
        let script = script.clone();
        let url = url.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                run(Command::new("sh").arg(&script).arg(endpoint).arg(&url))
                    .status
                    .code()
            })
            .await
            .unwrap()
        }
    };
    assert_eq!(check("healthz").await, Some(0));
    assert_eq!(check("readyz").await, Some(0));
    assert_eq!(
        check("metrics").await,
        Some(2),
        "unknown endpoints are a usage error"
    );

    let (code, body) = http(
        admin,
        "POST",
        "/v1/pools/default/backends/rabbit-a/drain",
        None,
        br#"{"force": true}"#,
    )
    .await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(http(admin, "GET", "/readyz", None, b"").await.0, 503);
    assert_eq!(check("readyz").await, Some(1));
    assert_eq!(check("healthz").await, Some(0));
    warren.stop().await;
}

/// Run config/hooks/page.sh as warren runs a hook (clean environment, PATH and WARREN_*), with
/// a one-shot HTTP server as its alerting webhook; returns the script's output and the request
/// body the webhook got, if any.
fn run_page_hook(env: &[(&str, &str)]) -> (Output, Option<String>) {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hooks/warren", server.local_addr().unwrap());
    server.set_nonblocking(true).unwrap();
    let script_done = Arc::new(AtomicBool::new(false));
    let done = script_done.clone();
    // Answers one request; gives up once the script has ended without sending one.
    let webhook = std::thread::spawn(move || {
        let deadline = Instant::now() + SHORT_RUN;
        let mut conn = loop {
            match server.accept() {
                Ok((conn, _)) => break conn,
                Err(_) if done.load(Ordering::SeqCst) || Instant::now() > deadline => return None,
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        };
        conn.set_nonblocking(false).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = conn.read(&mut buf) {
            request.extend_from_slice(&buf[..n]);
            if n == 0 || request.ends_with(b"}") {
                break;
            }
        }
        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        let text = String::from_utf8_lossy(&request).into_owned();
        text.split_once("\r\n\r\n").map(|(_, body)| body.to_owned())
    });
    let out = run(Command::new("sh")
        .arg(repo().join("config/hooks/page.sh"))
        .arg(&url)
        .env_clear()
        .env("PATH", warren::hooks::HOOK_PATH)
        .envs(env.iter().copied()));
    script_done.store(true, Ordering::SeqCst);
    (out, webhook.join().expect("the webhook thread"))
}

#[test]
fn page_hook_pages_an_outage_and_not_planned_work() {
    if tool_or_skip("curl", "page_hook_pages_an_outage_and_not_planned_work").is_none() {
        return;
    }
    let outage = [
        ("WARREN_EVENT", "backend_down"),
        ("WARREN_POOL", "rabbitmq"),
        ("WARREN_BACKEND", "rabbit-a"),
        ("WARREN_BACKEND_ADDR", "10.0.0.1:5672"),
        ("WARREN_ADMIN_STATE", "active"),
        ("WARREN_AVAILABLE", "1"),
        ("WARREN_TOTAL", "2"),
        ("WARREN_PLANNED", "false"),
    ];
    let (out, body) = run_page_hook(&outage);
    assert!(out.status.success(), "{out:?}");
    let body = body.expect("an outage is paged");
    assert!(
        body.contains("backend_down in pool rabbitmq, backend rabbit-a (10.0.0.1:5672)"),
        "{body}"
    );

    // The same node stopped after its drain, and the pool_degraded of a drain.
    let mut stopped_after_drain = outage;
    stopped_after_drain[4].1 = "drained";
    stopped_after_drain[7].1 = "true";
    let degraded_by_drain = [
        ("WARREN_EVENT", "pool_degraded"),
        ("WARREN_POOL", "rabbitmq"),
        ("WARREN_BACKEND", ""),
        ("WARREN_BACKEND_ADDR", ""),
        ("WARREN_ADMIN_STATE", ""),
        ("WARREN_AVAILABLE", "1"),
        ("WARREN_TOTAL", "2"),
        ("WARREN_PLANNED", "true"),
    ];
    for env in [&stopped_after_drain, &degraded_by_drain] {
        let (out, body) = run_page_hook(env);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(body, None, "planned work paged: {env:?}");
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            said.starts_with("planned: ") && said.contains("not paged"),
            "{said}"
        );
    }
}

/// README's "Run it yourself" command starts the cluster `config/warren.toml` points at: each
/// backend's port is a node's AMQP port in that command, and the command's node specs are
/// valid (`NAME:AMQP:DIST:MGMT`, distribution ports at least 11 apart so each node's
/// rabbitmqctl ports stay clear of the other's).
#[test]
fn readme_cluster_command_starts_what_the_reference_config_points_at() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let command = readme
        .lines()
        .find(|l| l.starts_with("bash scripts/rabbitmq.sh cluster /tmp/warren-rabbit "))
        .expect("README has the cluster command");
    let header = std::fs::read_to_string(repo().join("config/warren.toml")).unwrap();
    let rest = command.trim_start_matches("bash scripts/rabbitmq.sh cluster /tmp/warren-rabbit ");
    assert!(
        header.contains(rest),
        "config/warren.toml names the same command"
    );
    let mut amqp = Vec::new();
    let mut dist = Vec::new();
    for spec in rest.split_whitespace() {
        let fields: Vec<&str> = spec.split(':').collect();
        assert_eq!(fields.len(), 4, "{spec}");
        amqp.push(fields[1].parse::<u16>().unwrap());
        dist.push(fields[2].parse::<u16>().unwrap());
    }
    assert!(dist[0].abs_diff(dist[1]) >= 11, "{dist:?}");
    let config = warren::config::load(&repo().join("config/warren.toml")).unwrap();
    let ports: Vec<u16> = config
        .pool("rabbitmq")
        .unwrap()
        .backends
        .iter()
        .map(|b| b.port)
        .collect();
    assert_eq!(ports, amqp);
}
