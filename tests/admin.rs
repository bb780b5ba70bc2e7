//! The admin API and drain/undrain as an operator uses them during a rolling upgrade: every
//! route with its errors, drain semantics with and without a deadline, min_available, the state
//! file across a restart, and `warren ctl drain --wait` against a real server.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;

use tokio::net::TcpStream;
use tokio::time::Instant;
use warren::config::{Balance, Config};

const SECOND: Duration = Duration::from_secs(1);
const TOKEN: &str = "s3cret-token";

/// Two echo backends a and b behind warren with an admin API (token, state file).
fn admin_config(dir: &TempDir, a: SocketAddr, b: SocketAddr) -> Config {
    let mut cfg = config(Balance::RoundRobin, vec![backend("a", a), backend("b", b)]);
    cfg.admin = Some(admin_with_token(dir, TOKEN));
    cfg
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_and_refuses_what_it_should() {
    let dir = TempDir::new("routes");
    let (a, b) = (spawn_backend(echo).await, spawn_backend(echo).await);
    let warren = Warren::start(admin_config(&dir, a.addr, b.addr), quick());
    let admin = warren.admin.unwrap();
    let t = Some(TOKEN);

    assert_eq!(http(admin, "GET", "/healthz", None, b"").await.0, 200);
    assert_eq!(http(admin, "GET", "/readyz", None, b"").await.0, 200);
    let metrics = scrape_metrics(admin).await;
    assert!(metrics.contains("warren_build_info"));

    let (code, body) = http(admin, "GET", "/v1/status", t, b"").await;
    assert_eq!(code, 200, "{body}");
    let status = json(&body);
    assert_eq!(status["pools"][0]["name"], "default");
    assert_eq!(status["pools"][0]["backends"][1]["name"], "b");
    assert_eq!(status["pools"][0]["backends"][0]["admin"], "active");
    assert_eq!(status["listeners"][0]["pool"], "default");

    // Token: missing and wrong are 401 on every /v1 route, and the token is not echoed back.
    for (method, path) in [
        ("GET", "/v1/status"),
        ("POST", "/v1/pools/default/backends/a/drain"),
        ("POST", "/v1/pools/default/backends/a/undrain"),
        ("POST", "/v1/reload"),
    ] {
        let (code, body) = http(admin, method, path, None, b"").await;
        assert_eq!(code, 401, "{method} {path} without token: {body}");
        let (code, body) = http(admin, method, path, Some("wrong"), b"").await;
        assert_eq!(code, 401, "{method} {path} with a wrong token: {body}");
        assert!(!body.contains(TOKEN));
    }
    // 404s: unknown path, pool, backend.
    assert_eq!(http(admin, "GET", "/nope", None, b"").await.0, 404);
    let (code, body) = http(admin, "POST", "/v1/pools/nope/backends/a/drain", t, b"").await;
    assert_eq!(code, 404, "{body}");
    assert!(json(&body)["error"].as_str().unwrap().contains("nope"));
    assert_eq!(
        http(
            admin,
            "POST",
            "/v1/pools/default/backends/zz/undrain",
            t,
            b""
        )
        .await
        .0,
        404
    );
    // 405: wrong method.
    assert_eq!(http(admin, "POST", "/healthz", None, b"").await.0, 405);
    assert_eq!(
        http(admin, "GET", "/v1/pools/default/backends/a/drain", t, b"")
            .await
            .0,
        405
    );
    // 413: oversized body; 400: malformed JSON, unknown field, bad duration.
    let big = vec![b'x'; 100 * 1024];
    assert_eq!(
        http(admin, "POST", "/v1/pools/default/backends/a/drain", t, &big)
            .await
            .0,
        413
    );
    for bad in [
        &b"{"[..],
        b"{\"deadlin\":\"5m\"}",
        b"{\"deadline\":\"5 parsecs\"}",
    ] {
        let (code, body) = http(admin, "POST", "/v1/pools/default/backends/a/drain", t, bad).await;
        assert_eq!(code, 400, "{}: {body}", String::from_utf8_lossy(bad));
        assert!(json(&body)["error"].is_string());
    }
    // Nothing above drained anything.
    assert_eq!(
        warren.metric(r#"warren_backend_admin_state{backend="a",pool="default",state="active"}"#),
        1.0
    );
    // Drain and undrain succeed; undrain is idempotent.
    let (code, body) = http(admin, "POST", "/v1/pools/default/backends/a/drain", t, b"").await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(json(&body)["admin"], "draining");
    wait_for("a drained", 5 * SECOND, || {
        warren.metric(r#"warren_backend_admin_state{backend="a",pool="default",state="drained"}"#)
            == 1.0
    })
    .await;
    for _ in 0..2 {
        let (code, body) = http(
            admin,
            "POST",
            "/v1/pools/default/backends/a/undrain",
            t,
            b"",
        )
        .await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(json(&body)["admin"], "active");
    }
    warren.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_moves_new_connections_keeps_old_ones_and_closes_them_at_the_deadline() {
    let dir = TempDir::new("drain");
    let (a, b) = (spawn_backend(echo).await, spawn_backend(echo).await);
    let mut cfg = admin_config(&dir, a.addr, b.addr);
    let hooks = HookRecorder::new(&dir.0, "$WARREN_EVENT $WARREN_BACKEND");
    let hooks_log = &hooks.log;
    cfg.hooks = vec![hooks.hook(
        &[
            warren::config::HookEvent::DrainStarted,
            warren::config::HookEvent::DrainComplete,
        ],
        5 * SECOND,
    )];
    let warren = Warren::start(cfg, quick());
    let admin = warren.admin.unwrap();

    // 100 connections round robin: 50 on a.
    let mut open = Vec::new();
    for i in 0..100u8 {
        let mut s = TcpStream::connect(warren.addr).await.unwrap();
        assert!(echo_once(&mut s, i).await);
        open.push(s);
    }
    assert_eq!(a.open.load(Ordering::SeqCst), 50);

    let (code, body) = http(
        admin,
        "POST",
        "/v1/pools/default/backends/a/drain",
        Some(TOKEN),
        br#"{"deadline":"2s"}"#,
    )
    .await;
    let drained_at = Instant::now();
    assert_eq!(code, 202, "{body}");
    assert_eq!(json(&body)["active_connections"], 50);

    // The next 200 connections all go to b.
    let before = a.accepted.load(Ordering::SeqCst);
    let mut fresh = Vec::new();
    for i in 0..200u32 {
        let mut s = TcpStream::connect(warren.addr).await.unwrap();
        assert!(echo_once(&mut s, i as u8).await);
        fresh.push(s);
    }
    assert_eq!(
        a.accepted.load(Ordering::SeqCst),
        before,
        "no new connection on a"
    );
    // The 50 on a keep passing bytes.
    for (i, s) in open.iter_mut().enumerate() {
        assert!(
            echo_once(s, i as u8).await,
            "connection {i} must still work while draining"
        );
    }
    // At the deadline, a's connections are closed (both sides) and the drain completes.
    wait_for("a's connections closed", 10 * SECOND, || {
        a.open.load(Ordering::SeqCst) == 0
    })
    .await;
    let took = drained_at.elapsed();
    println!("a's connections closed {took:?} after a drain with a 2s deadline");
    // Not before the deadline (a timer cannot fire early under load); the upper bound is
    // generous: closed before twice the deadline, so a drain that ignored it still fails.
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(4),
        "closed {took:?} after a drain with a 2s deadline"
    );
    wait_for("drained", 5 * SECOND, || {
        warren.metric(r#"warren_backend_admin_state{backend="a",pool="default",state="drained"}"#)
            == 1.0
    })
    .await;
    assert_eq!(
        warren.metric(r#"warren_connections_closed_total{listener="default",reason="drain"}"#),
        50.0
    );
    let mut closed_clients = 0;
    for s in open.iter_mut() {
        if !echo_once(s, 1).await {
            closed_clients += 1;
        }
    }
    assert_eq!(closed_clients, 50, "the clients of a were closed too");
    wait_for("drain hooks ran", 5 * SECOND, || {
        std::fs::read_to_string(hooks_log).is_ok_and(|l| l.lines().count() == 2)
    })
    .await;
    assert_eq!(
        std::fs::read_to_string(hooks_log).unwrap(),
        "drain_started a\ndrain_complete a\n"
    );
    // b's connections were untouched.
    for (i, s) in fresh.iter_mut().enumerate() {
        assert!(echo_once(s, i as u8).await);
    }
    warren.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_available_refuses_the_last_primary_unless_forced() {
    let dir = TempDir::new("min");
    let (a, b) = (spawn_backend(echo).await, spawn_backend(echo).await);
    let warren = Warren::start(admin_config(&dir, a.addr, b.addr), quick());
    let admin = warren.admin.unwrap();
    let drain = |name: &'static str, body: &'static [u8]| {
        let path = format!("/v1/pools/default/backends/{name}/drain");
        async move { http(admin, "POST", &path, Some(TOKEN), body).await }
    };
    assert_eq!(drain("a", b"").await.0, 202);
    let (code, body) = drain("b", b"").await;
    assert_eq!(code, 409, "{body}");
    let message = json(&body)["error"].as_str().unwrap().to_owned();
    assert!(
        message.contains("min_available") && message.contains("force"),
        "{message}"
    );
    let (code, body) = drain("b", br#"{"force":true}"#).await;
    assert_eq!(code, 202, "{body}");
    wait_for("b drained", 5 * SECOND, || {
        warren.metric(r#"warren_backend_admin_state{backend="b",pool="default",state="drained"}"#)
            == 1.0
    })
    .await;
    assert_eq!(http(admin, "GET", "/readyz", None, b"").await.0, 503);
    warren.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_state_survives_a_restart_and_a_corrupt_file_is_moved_aside() {
    let dir = TempDir::new("state");
    let (a, b) = (spawn_backend(echo).await, spawn_backend(echo).await);
    let warren = Warren::start(admin_config(&dir, a.addr, b.addr), quick());
    let admin = warren.admin.unwrap();
    let (code, _) = http(
        admin,
        "POST",
        "/v1/pools/default/backends/a/drain",
        Some(TOKEN),
        b"",
    )
    .await;
    assert_eq!(code, 202);
    wait_for("state file written", 5 * SECOND, || {
        std::fs::read_to_string(dir.0.join("state.json")).is_ok_and(|s| s.contains("\"a\""))
    })
    .await;
    warren.stop().await;

    // Restart: a is still drained, and takes no connection.
    let warren = Warren::start(admin_config(&dir, a.addr, b.addr), quick());
    assert_eq!(
        warren.metric(r#"warren_backend_admin_state{backend="a",pool="default",state="drained"}"#),
        1.0
    );
    let before = a.accepted.load(Ordering::SeqCst);
    for i in 0..10 {
        let mut s = TcpStream::connect(warren.addr).await.unwrap();
        assert!(echo_once(&mut s, i).await);
    }
    assert_eq!(a.accepted.load(Ordering::SeqCst), before);
    warren.stop().await;

    // A corrupt file: warren starts with everything active, reports it, moves the file aside.
    std::fs::write(dir.0.join("state.json"), b"{ not json").unwrap();
    let warren = Warren::start(admin_config(&dir, a.addr, b.addr), quick());
    assert_eq!(warren.metric("warren_state_file_errors_total"), 1.0);
    assert_eq!(
        warren.metric(r#"warren_backend_admin_state{backend="a",pool="default",state="active"}"#),
        1.0
    );
    let aside = std::fs::read_dir(&dir.0)
        .unwrap()
        .filter_map(Result::ok)
        .any(|e| e.file_name().to_string_lossy().contains("corrupt"));
    assert!(aside, "the corrupt file is kept for the operator");
    warren.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_drain_wait_returns_when_the_last_connection_closes() {
    let dir = TempDir::new("ctl");
    let (a, b) = (spawn_backend(echo).await, spawn_backend(echo).await);
    let warren = Warren::start(admin_config(&dir, a.addr, b.addr), quick());
    let admin = warren.admin.unwrap();
    let mut first = TcpStream::connect(warren.addr).await.unwrap();
    assert!(echo_once(&mut first, 1).await);
    assert_eq!(
        a.open.load(Ordering::SeqCst),
        1,
        "round robin put the first on a"
    );

    let mut ctl = tokio::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["ctl", "--admin", &format!("http://{admin}"), "--token-file"])
        .arg(dir.0.join("token"))
        .args(["drain", "a", "--wait"])
        .env("WARREN_CTL_POLL_MS", "50")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_for("a draining", 5 * SECOND, || {
        warren.metric(r#"warren_backend_admin_state{backend="a",pool="default",state="draining"}"#)
            == 1.0
    })
    .await;
    // ctl is still waiting while the connection is open.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        ctl.try_wait().unwrap().is_none(),
        "ctl returned while a connection was open"
    );
    let closed = Instant::now();
    drop(first);
    let status = tokio::time::timeout(5 * SECOND, ctl.wait())
        .await
        .expect("ctl returns after the last connection closed")
        .unwrap();
    println!(
        "ctl drain --wait returned {:?} after the last close",
        closed.elapsed()
    );
    assert!(status.success());
    warren.stop().await;
}

/// The admin API and the probes run on their own thread: while real traffic through warren keeps
/// every data-plane worker (`warren-worker-N`) saturated, `/healthz` and `/v1/status` answer and
/// probes keep running. warren runs as its own process, so its threads are the only workers read.
///
/// "Saturated" is measured, not assumed: a worker is saturated over a window when it was
/// running or waiting for a CPU (never asleep in epoll) for at least 80 % of it, from the
/// scheduler's own accounting (`/proc/PID/task/TID/schedstat`). That holds on a loaded machine
/// too, where a CPU-time share would not: waiting for a CPU counts as busy.
#[test]
fn admin_and_probes_stay_responsive_while_warrens_workers_are_saturated() {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicBool, AtomicU64};
    use std::sync::Arc;
    const STREAMS: usize = 8;
    let dir = TempDir::new("saturated");
    let stop = Arc::new(AtomicBool::new(false));
    // Backends that write as fast as the socket takes it, one thread per connection.
    let firehose = || {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = stop.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let (Ok(mut conn), false) = (conn, stop.load(Ordering::SeqCst)) else {
                    return;
                };
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let chunk = vec![7u8; 64 * 1024];
                    while !stop.load(Ordering::SeqCst) && conn.write_all(&chunk).is_ok() {}
                });
            }
        });
        addr
    };
    let backends = [firehose(), firehose()];
    let (admin_port, listen_port) = (free_port(), free_port());
    let config = dir.0.join("warren.toml");
    let text = process_config(admin_port, None, listen_port, &backends, "")
        + "[pool.rabbitmq.health]\nkind = \"tcp\"\ninterval = \"100ms\"\ntimeout = \"1s\"\n";
    std::fs::write(&config, text).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The copy path (no splice) costs the workers the most per byte.
    let mut warren = WarrenProc::spawn(
        &[
            "run",
            "--config",
            config.to_str().unwrap(),
            "--workers",
            "2",
            "--no-splice",
        ],
        dir.0.join("warren.log"),
    );
    runtime.block_on(warren.logged("warren started", 10 * SECOND));
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let listen: SocketAddr = format!("127.0.0.1:{listen_port}").parse().unwrap();

    // Clients that read and drop everything, each bounded to 60 s.
    let received: Arc<Vec<AtomicU64>> = Arc::new((0..STREAMS).map(|_| AtomicU64::new(0)).collect());
    let clients: Vec<_> = (0..STREAMS)
        .map(|i| {
            let (stop, received) = (stop.clone(), received.clone());
            std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(listen).unwrap();
                s.set_read_timeout(Some(5 * SECOND)).unwrap();
                let until = std::time::Instant::now() + 60 * SECOND;
                let mut buf = vec![0u8; 64 * 1024];
                while !stop.load(Ordering::SeqCst) && std::time::Instant::now() < until {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => received[i].fetch_add(n as u64, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    let deadline = std::time::Instant::now() + 20 * SECOND;
    while received.iter().any(|r| r.load(Ordering::Relaxed) < 4 << 20) {
        assert!(
            std::time::Instant::now() < deadline,
            "every stream carried 4 MiB within 20 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    // Only a window over which both workers were measured saturated shows anything. On a loaded
    // machine the clients and backends (threads of this process) can fall behind for a moment
    // and leave a worker asleep in epoll for want of bytes (one window of 0.3 s measured a
    // worker 48 % busy while two other test binaries ran): then the window is measured again,
    // for up to 10 s, instead of failing on what says nothing of warren. Every window's admin
    // answers and probes are checked all the same.
    let mut windows = Vec::new();
    let deadline = std::time::Instant::now() + 10 * SECOND;
    let saturated = loop {
        let window = measure_window(&runtime, warren.pid(), admin);
        let saturated = window.busy.iter().all(|(_, share)| *share >= 0.8);
        windows.push(window);
        if saturated || std::time::Instant::now() >= deadline {
            break saturated;
        }
    };
    let carried: u64 = received.iter().map(|r| r.load(Ordering::Relaxed)).sum();
    stop.store(true, Ordering::SeqCst);
    drop(warren);
    for client in clients {
        client.join().unwrap();
    }
    for w in &windows {
        println!(
            "workers busy {:?} over {:?}; slowest admin answer {:?}; {} probes",
            w.busy, w.elapsed, w.slowest_admin_answer, w.probes
        );
    }
    println!("{} MiB carried", carried >> 20);
    assert!(
        saturated,
        "no window in which every worker was saturated (running or runnable for 80 % of it): \
         {windows:?}"
    );
}

/// One measuring window of the saturation test: how busy each warren worker was over it, the
/// slowest of its admin answers and the probes counted meanwhile.
#[derive(Debug)]
struct Window {
    busy: Vec<(String, f64)>,
    elapsed: Duration,
    slowest_admin_answer: Duration,
    probes: f64,
}

/// Ask warren's admin API `/healthz` and `/v1/status` (each must answer 200) and wait for 3
/// probes of b0 (each 100 ms; they must come within 10 s), reading the workers' scheduler
/// accounting before and after.
fn measure_window(runtime: &tokio::runtime::Runtime, pid: u32, admin: SocketAddr) -> Window {
    use std::io::{Read, Write};
    let probes = || {
        runtime.block_on(admin_metric(
            admin,
            r#"warren_health_checks_total{backend="b0",pool="rabbitmq",result="ok"}"#,
        ))
    };
    let workers_before = worker_schedstats(pid);
    assert_eq!(
        workers_before.len(),
        2,
        "warren's worker threads: {workers_before:?}"
    );
    let window = std::time::Instant::now();
    let probes_before = probes();
    let mut slowest_admin_answer = Duration::ZERO;
    for path in [
        "/healthz",
        "/v1/status",
        "/v1/status",
        "/v1/status",
        "/healthz",
    ] {
        let asked = std::time::Instant::now();
        let mut s = std::net::TcpStream::connect(admin).unwrap();
        s.set_read_timeout(Some(10 * SECOND)).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: w\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "{path}: {reply}");
        slowest_admin_answer = slowest_admin_answer.max(asked.elapsed());
    }
    // Probes (every 100 ms) keep running meanwhile.
    let deadline = std::time::Instant::now() + 10 * SECOND;
    while probes() - probes_before < 3.0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let probes_during = probes() - probes_before;
    let workers_after = worker_schedstats(pid);
    let elapsed = window.elapsed();
    assert!(probes_during >= 3.0, "probes kept running: {probes_during}");
    let busy = workers_before
        .iter()
        .map(|(name, before)| {
            let after = workers_after[name];
            let busy_ns = (after.0 - before.0) + (after.1 - before.1);
            (name.clone(), busy_ns as f64 / elapsed.as_nanos() as f64)
        })
        .collect();
    Window {
        busy,
        elapsed,
        slowest_admin_answer,
        probes: probes_during,
    }
}

/// `warren-worker-N` threads of process `pid`: (time on a CPU, time runnable waiting for
/// one), in nanoseconds, from the scheduler's accounting.
fn worker_schedstats(pid: u32) -> std::collections::HashMap<String, (u64, u64)> {
    let mut workers = std::collections::HashMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = task.unwrap().path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let name = name.trim();
        if !name.starts_with("warren-worker-") {
            continue;
        }
        let stat = std::fs::read_to_string(path.join("schedstat")).unwrap();
        let fields: Vec<u64> = stat
            .split_whitespace()
            .map(|f| f.parse().unwrap())
            .collect();
        workers.insert(name.to_owned(), (fields[0], fields[1]));
    }
    workers
}

/// `warren ctl` against `admin` with the test token; returns (exit code, stdout, stderr).
async fn run_ctl(dir: &TempDir, admin: SocketAddr, args: &[&str]) -> (Option<i32>, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["ctl", "--admin", &format!("http://{admin}"), "--token-file"])
        .arg(dir.0.join("token"))
        .args(args)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(10 * SECOND, out)
        .await
        .expect("ctl answers within 10 s")
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The admin state of backend `name` in `GET /v1/status` (which must answer 200).
async fn admin_state(admin: SocketAddr, name: &str) -> String {
    let (code, body) = http(admin, "GET", "/v1/status", Some(TOKEN), b"").await;
    assert_eq!(code, 200, "GET /v1/status: {body}");
    json(&body)["pools"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == name)
        .map(|b| b["admin"].as_str().unwrap().to_owned())
        .unwrap()
}

/// Criterion: 4 of 4 deadlines past one year (`8000y`, `9999y`, `18446744073709551615s`,
/// `366days`) get 400 naming the limit from the API and exit 1 printing it from `ctl drain`;
/// the backend stays active and `GET /v1/status` answers 200 after each; `1year` is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_deadlines_past_the_limit_are_refused_and_change_nothing() {
    let dir = TempDir::new("deadline");
    let (a, b) = (spawn_backend(echo).await, spawn_backend(echo).await);
    let warren = Warren::start(admin_config(&dir, a.addr, b.addr), quick());
    let admin = warren.admin.unwrap();
    for deadline in ["8000y", "9999y", "18446744073709551615s", "366days"] {
        let body = format!("{{\"deadline\": \"{deadline}\"}}");
        let path = "/v1/pools/default/backends/a/drain";
        let (code, answer) = http(admin, "POST", path, Some(TOKEN), body.as_bytes()).await;
        assert_eq!(code, 400, "{deadline}: {answer}");
        assert!(json(&answer)["error"]
            .as_str()
            .unwrap()
            .contains("too long: at most 1year"));
        assert_eq!(admin_state(admin, "a").await, "active", "{deadline}");
        let (code, out, err) = run_ctl(&dir, admin, &["drain", "a", "--deadline", deadline]).await;
        assert_eq!(code, Some(1), "{deadline}: {out}{err}");
        assert!(err.contains("at most 1year"), "{deadline}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert_eq!(admin_state(admin, "a").await, "active", "{deadline}");
    }
    let (code, out, err) = run_ctl(&dir, admin, &["drain", "a", "--deadline", "1year"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert_ne!(admin_state(admin, "a").await, "active");
    warren.stop().await;
}

/// Criterion: when the state file cannot be written (a directory took its place), a drain and an
/// undrain still take effect and answer with `persisted: false` and the reason naming the file;
/// `ctl drain` and `ctl undrain` print it as a warning and exit 0; `state_file_errors_total`
/// counts at least 3; no temp file is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_whose_state_cannot_be_saved_says_so() {
    let dir = TempDir::new("state-save");
    let (a, b) = (spawn_backend(echo).await, spawn_backend(echo).await);
    let warren = Warren::start(admin_config(&dir, a.addr, b.addr), quick());
    let admin = warren.admin.unwrap();
    let path = "/v1/pools/default/backends/a/drain";
    let (code, answer) = http(admin, "POST", path, Some(TOKEN), b"").await;
    assert_eq!(code, 202, "{answer}");
    assert_eq!(json(&answer)["persisted"], true, "{answer}");
    let (code, _) = http(
        admin,
        "POST",
        "/v1/pools/default/backends/a/undrain",
        Some(TOKEN),
        b"",
    )
    .await;
    assert_eq!(code, 200);

    std::fs::remove_file(dir.0.join("state.json")).unwrap();
    std::fs::create_dir(dir.0.join("state.json")).unwrap();
    let (code, answer) = http(admin, "POST", path, Some(TOKEN), b"").await;
    assert_eq!(code, 202, "{answer}");
    let answer = json(&answer);
    assert_ne!(answer["admin"], "active");
    assert_eq!(answer["persisted"], false, "{answer}");
    let why = answer["persist_error"].as_str().unwrap();
    assert!(
        why.contains("state.json") && why.contains("will not survive a restart"),
        "{why}"
    );
    assert!(warren.metric("warren_state_file_errors_total") >= 1.0);

    let (code, out, err) = run_ctl(&dir, admin, &["undrain", "a"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("warning: cannot write the state file"),
        "{out}"
    );
    let (code, out, err) = run_ctl(&dir, admin, &["drain", "a"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("warning: cannot write the state file"),
        "{out}"
    );
    assert_ne!(admin_state(admin, "a").await, "active");
    // 3 answered saves, plus the drain-complete saves of the watcher (logged and counted too).
    assert!(warren.metric("warren_state_file_errors_total") >= 3.0);
    // No temp file is left behind by the failed writes.
    let temps: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(temps.is_empty(), "{temps:?}");
    warren.stop().await;
}

/// Criterion: a state file that cannot be read (a directory in its place: EISDIR, even as root)
/// stops the start with an error naming the file; a corrupt one does not (see
/// `drain_state_survives_a_restart_and_a_corrupt_file_is_moved_aside`); temp files a kill -9 left
/// next to it (2 here) are removed at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_state_file_stops_the_start() {
    let dir = TempDir::new("state-unreadable");
    let (a, b) = (spawn_backend(echo).await, spawn_backend(echo).await);
    std::fs::create_dir(dir.0.join("state.json")).unwrap();
    let config = admin_config(&dir, a.addr, b.addr);
    let e = match warren::Server::bind(&config, quick()) {
        Ok(_) => panic!("warren started with an unreadable state file"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("state.json") && e.contains("cannot read"), "{e}");

    std::fs::remove_dir(dir.0.join("state.json")).unwrap();
    for stale in [".state.json.tmp-4242", ".state.json.tmp-77-00aa"] {
        std::fs::write(dir.0.join(stale), "{").unwrap();
    }
    let warren = Warren::start(config, quick());
    let left: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(left.is_empty(), "stale temp files left: {left:?}");
    warren.stop().await;
}

/// README: "with `admin.state_file`, drains survive a warren restart", here a restart of the
/// process: the first warren is killed (SIGKILL, as a crash) after the drain, and a second
/// process on the same config starts with b0 drained and sends it nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_state_survives_a_process_restart() {
    let dir = TempDir::new("process-restart");
    let (b0, b1) = (spawn_backend(echo).await, spawn_backend(echo).await);
    let token_file = dir.0.join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let state_file = dir.0.join("state.json");
    let (admin_port, listen_port) = (free_port(), free_port());
    let text = process_config(
        admin_port,
        Some(&token_file),
        listen_port,
        &[b0.addr, b1.addr],
        "",
    )
    .replacen(
        "[admin]\n",
        &format!("[admin]\nstate_file = \"{}\"\n", state_file.display()),
        1,
    );
    let config = dir.0.join("warren.toml");
    std::fs::write(&config, text).unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let listen: SocketAddr = format!("127.0.0.1:{listen_port}").parse().unwrap();
    let drained = r#"warren_backend_admin_state{backend="b0",pool="rabbitmq",state="drained"}"#;

    let mut first = WarrenProc::run_config(&config, dir.0.join("first.log")).await;
    let (code, body) = http(
        admin,
        "POST",
        "/v1/pools/rabbitmq/backends/b0/drain",
        Some(TOKEN),
        b"",
    )
    .await;
    assert_eq!(code, 202, "{body}");
    wait_for("state file written", 5 * SECOND, || {
        std::fs::read_to_string(&state_file).is_ok_and(|s| s.contains("\"b0\""))
    })
    .await;
    first.child.kill().unwrap();
    first.wait_exit(5 * SECOND).await;

    let _second = WarrenProc::run_config(&config, dir.0.join("second.log")).await;
    assert_eq!(
        admin_metric(admin, drained).await,
        1.0,
        "b0 drained in the new process"
    );
    let before = b0.accepted.load(Ordering::SeqCst);
    for i in 0..10 {
        let mut s = TcpStream::connect(listen).await.unwrap();
        assert!(echo_once(&mut s, i).await);
    }
    assert_eq!(
        b0.accepted.load(Ordering::SeqCst),
        before,
        "no new connection on drained b0"
    );
}

/// The pool event of a drain is planned work, logged at INFO with `planned=true`; the same
/// event from a backend dying while active is logged at WARN with `planned=false`. No log line
/// shows a Rust debug value (`Some(10s)`, `None`, `Up`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drains_pool_event_is_logged_as_planned_and_an_outages_as_a_warning() {
    let dir = TempDir::new("planned-log");
    let (a, b) = (spawn_backend(echo).await, spawn_backend(echo).await);
    let c = spawn_backend(echo).await;
    let (admin_port, listen_port) = (free_port(), free_port());
    let config = dir.0.join("warren.toml");
    let text = process_config(admin_port, None, listen_port, &[a.addr, b.addr, c.addr], "")
        + "[pool.rabbitmq.health]\nkind = \"tcp\"\ninterval = \"100ms\"\ntimeout = \"1s\"\n\
           rise = 1\nfall = 1\n";
    std::fs::write(&config, text).unwrap();
    let mut warren = WarrenProc::spawn(
        &["run", "--config", config.to_str().unwrap()],
        dir.0.join("warren.log"),
    );
    warren.logged("warren started", 10 * SECOND).await;
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let (code, body) = http(
        admin,
        "POST",
        "/v1/pools/rabbitmq/backends/b0/drain",
        None,
        b"",
    )
    .await;
    assert_eq!(code, 202, "{body}");
    warren.logged("pool event", 5 * SECOND).await;
    drop(b);
    warren.logged("planned=false", 5 * SECOND).await;
    let log = warren.log_text();
    let events: Vec<&str> = log.lines().filter(|l| l.contains("pool event")).collect();
    assert_eq!(events.len(), 2, "{log}");
    assert!(
        events[0].contains("INFO")
            && events[0].contains("pool_degraded")
            && events[0].contains("planned=true"),
        "{log}"
    );
    assert!(
        events[1].contains("WARN")
            && events[1].contains("pool_degraded")
            && events[1].contains("planned=false"),
        "{log}"
    );
    // Values read as an operator writes them, never as Rust debug output.
    assert!(
        log.contains("drain started pool=rabbitmq backend=b0 deadline=none force=false"),
        "{log}"
    );
    for debug in ["Some(", "=None", "=Up", "=Down", "=Unknown", "{ "] {
        assert!(!log.contains(debug), "{debug} in the log:\n{log}");
    }
    drop((a, c));
}

/// At start nothing is confirmed: with a probe configured, `/readyz` waits for a backend a
/// probe found `up` (two refusing backends stay `unknown` for `fall` probes, and must not make
/// warren look ready), and a pool whose backend answers is ready after its first probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_waits_for_a_backend_a_probe_confirmed_up() {
    let probed = |interval: Duration| warren::config::HealthConfig {
        probe: warren::config::Probe::Tcp,
        interval,
        timeout: Duration::from_millis(500),
        rise: 1,
        fall: 3,
    };
    // Both refuse, but with a long interval no probe has said so yet.
    let mut cfg = config(
        Balance::RoundRobin,
        vec![backend("a", refused_addr()), backend("b", refused_addr())],
    );
    cfg.pools[0].health = Some(probed(Duration::from_secs(3600)));
    let warren = Warren::start(with_admin_api(cfg, None), quick());
    let admin = warren.admin.unwrap();
    // No probe has said so yet (the first comes within half an interval; and one failure is
    // below fall 3 anyway): both are unknown, and count as available.
    for name in ["a", "b"] {
        let record = warren.health.backend("default", name).unwrap();
        assert_eq!(record.health, warren::state::Health::Unknown);
    }
    let (code, body) = http(admin, "GET", "/readyz", None, b"").await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("no backend confirmed up by a probe yet in pool(s): default"),
        "{body}"
    );
    warren.stop().await;

    // One backend answers: ready once its first probe passed.
    let up = spawn_backend(echo).await;
    let mut cfg = config(
        Balance::RoundRobin,
        vec![backend("a", up.addr), backend("b", refused_addr())],
    );
    cfg.pools[0].health = Some(probed(Duration::from_millis(100)));
    let warren = Warren::start(with_admin_api(cfg, None), quick());
    let admin = warren.admin.unwrap();
    let mut last = (0, String::new());
    let deadline = Instant::now() + 5 * SECOND;
    while Instant::now() < deadline {
        last = http(admin, "GET", "/readyz", None, b"").await;
        if last.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(last.0, 200, "{}", last.1);
    warren.stop().await;
}

/// A set is drained as one decision: `min_available` counts the whole set (two backends that
/// may each go alone are refused together), all or none are drained, tags show in status, and
/// the set is undrained in one request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_drain_counts_min_available_over_the_whole_set() {
    let (a, b, c) = (
        spawn_backend(echo).await,
        spawn_backend(echo).await,
        spawn_backend(echo).await,
    );
    let mut cfg = config(
        Balance::RoundRobin,
        vec![
            backend("a", a.addr),
            backend("b", b.addr),
            backend("c", c.addr),
        ],
    );
    cfg.pools[0].min_available = 2;
    cfg.pools[0].backends[0].tags = vec!["updating".into()];
    cfg.pools[0].backends[1].tags = vec!["updating".into()];
    let warren = Warren::start(with_admin_api(cfg, None), quick());
    let admin = warren.admin.unwrap();
    let set = br#"{"backends": [{"pool": "default", "backend": "a"}, {"pool": "default", "backend": "b"}]}"#;

    let (code, body) = http(admin, "POST", "/v1/drain", None, set).await;
    assert_eq!(code, 409, "{body}");
    assert_eq!(
        json(&body)["error"],
        "draining a, b together would leave 1 available primary backend(s) in pool default, \
         fewer than min_available = 2; drain fewer at once, or force it (force: true in the \
         API, --force in warren ctl)"
    );
    // None of the set was drained.
    let (_, status) = http(admin, "GET", "/v1/status", None, b"").await;
    let status = json(&status);
    let backends = status["pools"][0]["backends"].as_array().unwrap();
    assert!(backends.iter().all(|b| b["admin"] == "active"), "{status}");
    assert_eq!(backends[0]["tags"], serde_json::json!(["updating"]));
    assert!(
        backends[2].get("tags").is_none(),
        "no tags, no field: {status}"
    );

    // Forced, both go at once; one undrain request brings both back.
    let forced = br#"{"backends": [{"pool": "default", "backend": "a"}, {"pool": "default", "backend": "b"}], "force": true}"#;
    let (code, body) = http(admin, "POST", "/v1/drain", None, forced).await;
    assert_eq!(code, 202, "{body}");
    let answers = json(&body)["backends"].as_array().unwrap().clone();
    assert_eq!(answers.len(), 2);
    assert!(
        answers
            .iter()
            .all(|a| a["quorum_check"] == "skipped (force)"),
        "{body}"
    );
    let (code, body) = http(admin, "POST", "/v1/undrain", None, set).await;
    assert_eq!(code, 200, "{body}");
    assert!(json(&body)["backends"]
        .as_array()
        .unwrap()
        .iter()
        .all(|a| a["admin"] == "active"));

    // Unknown members refuse the whole set; an empty set is a bad request.
    let unknown = br#"{"backends": [{"pool": "default", "backend": "a"}, {"pool": "default", "backend": "zz"}]}"#;
    let (code, body) = http(admin, "POST", "/v1/drain", None, unknown).await;
    assert_eq!(code, 404, "{body}");
    let (code, _) = http(admin, "POST", "/v1/drain", None, br#"{"backends": []}"#).await;
    assert_eq!(code, 400);
    let (_, status) = http(admin, "GET", "/v1/status", None, b"").await;
    assert!(json(&status)["pools"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .all(|b| b["admin"] == "active"));
    warren.stop().await;
}

/// A listener whose accept queue is full: a connect to it hangs (Linux drops the SYN) until
/// `open_up` accepts the queued connections, after which the next SYN retransmit (about 1 s,
/// then 3 s, after the first) completes it.
struct StalledBackend {
    addr: SocketAddr,
    listener: socket2::Socket,
    fillers: Vec<std::net::TcpStream>,
}

impl StalledBackend {
    fn new() -> StalledBackend {
        use socket2::{Domain, Socket, Type};
        let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        listener
            .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        listener.listen(0).unwrap();
        let addr = listener.local_addr().unwrap().as_socket().unwrap();
        let mut fillers = Vec::new();
        for _ in 0..16 {
            match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Ok(s) => fillers.push(s),
                Err(_) => break,
            }
        }
        StalledBackend {
            addr,
            listener,
            fillers,
        }
    }

    /// Empty the accept queue, so the next connect attempt completes.
    fn open_up(&mut self) -> Vec<socket2::Socket> {
        self.listener.set_nonblocking(true).unwrap();
        let mut accepted = Vec::new();
        while let Ok((s, _)) = self.listener.accept() {
            accepted.push(s);
        }
        self.fillers.clear();
        accepted
    }
}

async fn backend_status(admin: SocketAddr, name: &str) -> serde_json::Value {
    let (code, body) = http(admin, "GET", "/v1/status", Some(TOKEN), b"").await;
    assert_eq!(code, 200, "{body}");
    let status = json(&body);
    status["pools"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no backend {name}: {body}"))
}

/// A connection counts against its backend from the moment it is chosen: a drain whose
/// deadline passes while a connect to the backend is still under way is not complete (status
/// shows it `connecting`); once the connect completes, the connection is closed at once
/// (the deadline has passed) and only then is the backend drained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_under_way_holds_the_drain_open_and_is_closed_once_it_completes() {
    let dir = TempDir::new("connecting");
    let mut stalled = StalledBackend::new();
    let mut cfg = config(Balance::RoundRobin, vec![backend("a", stalled.addr)]);
    cfg.listeners[0].connect_timeout = 10 * SECOND;
    cfg.pools[0].min_available = 0;
    let token_file = dir.0.join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let cfg = with_admin_api(cfg, Some(token_file));
    let warren = Warren::start(cfg, quick());
    let admin = warren.admin.unwrap();

    let mut client = TcpStream::connect(warren.addr).await.unwrap();
    let series = r#"warren_backend_connections_connecting{backend="a",pool="default"}"#;
    wait_for("the connect to a under way", 5 * SECOND, || {
        warren.metric_or_zero(series) == 1.0
    })
    .await;
    let (code, body) = http(
        admin,
        "POST",
        "/v1/pools/default/backends/a/drain",
        Some(TOKEN),
        br#"{"deadline":"300ms"}"#,
    )
    .await;
    assert_eq!(code, 202, "{body}");
    let answer = json(&body);
    assert_eq!(
        (answer["admin"].as_str(), answer["connecting"].as_i64()),
        (Some("draining"), Some(1)),
        "{body}"
    );
    // Well past the deadline, the connect still hangs: not drained.
    tokio::time::sleep(SECOND).await;
    let a = backend_status(admin, "a").await;
    assert_eq!(
        (a["admin"].as_str(), a["connecting"].as_i64()),
        (Some("draining"), Some(1)),
        "{a}"
    );
    let _accepted = stalled.open_up();
    // The SYN retransmit completes the connect; the connection is closed at once.
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(
        8 * SECOND,
        tokio::io::AsyncReadExt::read(&mut client, &mut buf),
    )
    .await
    .expect("the client is closed within 8s of the backend opening up");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    wait_for("drained", 5 * SECOND, || {
        warren.metric(r#"warren_backend_admin_state{backend="a",pool="default",state="drained"}"#)
            == 1.0
    })
    .await;
    assert_eq!(
        warren.metric(r#"warren_backend_connections_total{backend="a",pool="default"}"#),
        1.0
    );
    assert_eq!(
        warren.metric(r#"warren_connections_closed_total{listener="default",reason="drain"}"#),
        1.0
    );
    assert_eq!(warren.metric(series), 0.0);
    warren.stop().await;
}

/// A reconnect storm with least_conn: 600 connections at once, onto one backend holding 100
/// and one holding none, end within 10 % of even (350 each), because a connection counts
/// against its backend from the moment it is chosen, not once its connect completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_storm_with_least_conn_ends_even() {
    // The backends listen with tokio's backlog of 128: warren's 350 connects at once to each
    // overflow it, and the dropped SYNs are sent again after 1 s, 3 s, 7 s... (measured: about
    // 40 of a storm waited 1 s on an idle machine). That only widens the race judged here.
    let (a, b) = (spawn_backend(echo).await, spawn_backend(echo).await);
    let cfg = config(
        Balance::LeastConn,
        vec![backend("a", a.addr), backend("b", b.addr)],
    );
    let warren = Warren::start(cfg, quick());
    // b starts out holding 100 (as a node that kept its clients while a was restarted).
    let mut held = Vec::new();
    let routing = warren.routing.clone();
    routing.update("default", "a", |b| {
        b.admin = warren::state::AdminState::Draining
    });
    for i in 0..100u32 {
        let mut s = TcpStream::connect(warren.addr).await.unwrap();
        assert!(echo_once(&mut s, i as u8).await);
        held.push(s);
    }
    routing.update("default", "a", |b| {
        b.admin = warren::state::AdminState::Active
    });
    assert_eq!(b.open.load(Ordering::SeqCst), 100);
    // The storm: every client connects at once and sends one byte. What is judged is where the
    // connections end up, not how fast: with SYNs sent again (above) and a loaded machine slow
    // to accept, an echo can take past echo_once's 5 s, so each gets 30 s.
    let started = Instant::now();
    let tasks: Vec<_> = (0..600u32)
        .map(|i| {
            let addr = warren.addr;
            tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                assert!(
                    echo_within(&mut s, i as u8, 30 * SECOND).await,
                    "storm connection {i} echoed its byte within 30 s"
                );
                s
            })
        })
        .collect();
    let mut storm = Vec::new();
    for t in tasks {
        storm.push(t.await.unwrap());
    }
    let (on_a, on_b) = (a.open.load(Ordering::SeqCst), b.open.load(Ordering::SeqCst));
    println!(
        "after the storm ({:?}): a {on_a}, b {on_b}",
        started.elapsed()
    );
    assert_eq!(on_a + on_b, 700);
    for (name, n) in [("a", on_a), ("b", on_b)] {
        assert!(
            (315..=385).contains(&n),
            "{name} holds {n} of 700: not within 10 % of 350 (a {on_a}, b {on_b})"
        );
    }
    drop(storm);
    drop(held);
    warren.stop().await;
}

/// A set drain's quorum checks run at once and within one budget: three nodes whose
/// management APIs accept connections but never answer (each check's timeout is 3 s) answer
/// the drain well inside `warren ctl`'s 10 s request timeout, with a warning for each, instead
/// of one timeout after the other (9 s, then the set's check).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_drains_quorum_checks_answer_within_ctls_timeout() {
    let (a, b, c) = (
        spawn_backend(echo).await,
        spawn_backend(echo).await,
        spawn_backend(echo).await,
    );
    let silent: Vec<SilentPeer> = (0..3).map(|_| silent_peer()).collect();
    let names = ["a", "b", "c"];
    let mut backends = vec![
        backend("a", a.addr),
        backend("b", b.addr),
        backend("c", c.addr),
    ];
    for (backend, peer) in backends.iter_mut().zip(&silent) {
        backend.management = Some(warren::config::ManagementEndpoint {
            url: warren::http_client::HttpUrl::parse(&format!("http://{}", peer.addr)).unwrap(),
            user: Some("guest".into()),
            password: Some(warren::config::Secret("guest".into())),
            password_file: None,
            timeout: 3 * SECOND,
        });
    }
    let mut cfg = config(Balance::RoundRobin, backends);
    cfg.pools[0].min_available = 0;
    let warren = Warren::start(with_admin_api(cfg, None), quick());
    let admin = warren.admin.unwrap();
    let set = br#"{"backends": [{"pool": "default", "backend": "a"}, {"pool": "default", "backend": "b"}, {"pool": "default", "backend": "c"}]}"#;
    let started = Instant::now();
    let (code, body) = http(admin, "POST", "/v1/drain", None, set).await;
    let took = started.elapsed();
    println!("a set drain with 3 silent management APIs answered in {took:?}");
    assert_eq!(code, 202, "{body}");
    assert!(took < 9 * SECOND, "answered after {took:?}");
    let answer = json(&body);
    for (i, name) in names.iter().enumerate() {
        let b = &answer["backends"][i];
        assert_eq!(b["quorum_check"], "unknown", "{name}: {b}");
        assert!(
            b["warnings"][0]
                .as_str()
                .is_some_and(|w| w.contains("was not answered")),
            "{name}: {b}"
        );
    }
    warren.stop().await;
}
