//! Hot reload: with 1,000 connections open and new ones arriving, a reload drops none and
//! refuses none; a bad file is rejected with the old config serving; listeners come and go
//! without touching the connections of the others.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

use tokio::net::TcpStream;
use warren::state::Health;
use warren::{Options, Server};

const SECOND: Duration = Duration::from_secs(1);
const TOKEN: &str = "reload-token";

struct Files {
    dir: PathBuf,
    config: PathBuf,
}

impl Files {
    fn new(name: &str) -> Files {
        let dir = std::env::temp_dir().join(format!("warren-reload-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("token"), TOKEN).unwrap();
        let config = dir.join("warren.toml");
        Files { dir, config }
    }

    /// Write a config: an admin section, the listeners (name, port), one pool of backends.
    fn write(&self, admin_port: u16, listeners: &[(&str, u16)], backends: &[SocketAddr]) {
        let listeners: Vec<(&str, String)> = listeners
            .iter()
            .map(|(name, port)| (*name, format!("127.0.0.1:{port}")))
            .collect();
        self.write_addrs(admin_port, &listeners, backends);
    }

    /// [`Files::write`] with each listener's whole address.
    fn write_addrs(&self, admin_port: u16, listeners: &[(&str, String)], backends: &[SocketAddr]) {
        let mut text = format!(
            "[admin]\nlisten = \"127.0.0.1:{admin_port}\"\ntoken_file = \"{}\"\n\n",
            self.dir.join("token").display()
        );
        for (name, addr) in listeners {
            text += &format!(
                "[[listener]]\nname = \"{name}\"\nlisten = \"{addr}\"\npool = \"rabbitmq\"\n\n"
            );
        }
        text += "[pool.rabbitmq]\n\n";
        for (i, b) in backends.iter().enumerate() {
            text += &format!("[[pool.rabbitmq.backend]]\nname = \"b{i}\"\naddr = \"{b}\"\n\n");
        }
        std::fs::write(&self.config, text).unwrap();
    }

    fn start(&self) -> (Warren, SocketAddr) {
        let config = warren::config::load(&self.config).expect("test config loads");
        let options = Options {
            config_path: Some(self.config.clone()),
            ..quick()
        };
        let warren = Warren::start(config, options);
        let admin = warren.admin.unwrap();
        (warren, admin)
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_drops_and_refuses_nothing() {
    let files = Files::new("load");
    let (b0, b1, b2) = (
        spawn_backend(echo).await,
        spawn_backend(echo).await,
        spawn_backend(echo).await,
    );
    let (admin_port, port) = (free_port(), free_port());
    files.write(admin_port, &[("amqp", port)], &[b0.addr, b1.addr]);
    let (warren, admin) = files.start();
    let addr = warren.addr;

    let mut open = Vec::new();
    for i in 0..1000u32 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        assert!(echo_once(&mut s, i as u8).await);
        open.push(s);
    }

    // New connections keep arriving during the reload (bounded: at most 20,000 or 20 s).
    let stop = Arc::new(AtomicBool::new(false));
    let churn = churn(addr, stop.clone());
    wait_for("churn running", 5 * SECOND, || churn.made() > 50).await;

    // Reload: a third backend joins.
    files.write(admin_port, &[("amqp", port)], &[b0.addr, b1.addr, b2.addr]);
    let (code, body) = http(admin, "POST", "/v1/reload", Some(TOKEN), b"").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("3 backends"), "{body}");
    let before = churn.made();
    wait_for("churn after the reload", 10 * SECOND, || {
        churn.made() > before + 100
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let (made, failed) = churn.finish().await;
    println!("{made} new connections during the reload, {failed} failed");
    assert_eq!(failed, 0, "no new connection refused");
    assert!(
        b2.accepted.load(Ordering::SeqCst) > 0,
        "the new backend takes connections"
    );
    let mut dropped = 0;
    for (i, s) in open.iter_mut().enumerate() {
        if !echo_once(s, i as u8).await {
            dropped += 1;
        }
    }
    assert_eq!(dropped, 0, "no existing connection dropped");
    assert_eq!(
        warren.metric(r#"warren_config_reloads_total{result="ok"}"#),
        1.0
    );
    warren.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_reload_is_rejected_and_the_old_config_keeps_serving() {
    let files = Files::new("bad");
    let b0 = spawn_backend(echo).await;
    let (admin_port, port) = (free_port(), free_port());
    files.write(admin_port, &[("amqp", port)], &[b0.addr]);
    let (warren, admin) = files.start();
    std::fs::write(
        &files.config,
        "[[listener]]\nname = \"amqp\"\nlisten = \"nowhere\"\n",
    )
    .unwrap();
    let (code, body) = http(admin, "POST", "/v1/reload", Some(TOKEN), b"").await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("listen"), "the error names the key: {body}");
    let mut s = TcpStream::connect(warren.addr).await.unwrap();
    assert!(echo_once(&mut s, 7).await, "the old config still serves");
    assert_eq!(
        warren.metric(r#"warren_config_reloads_total{result="failed"}"#),
        1.0
    );

    // A listener port already in use: the reload fails whole, nothing changes.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = squatter.local_addr().unwrap().port();
    files.write(admin_port, &[("amqp", port), ("extra", taken)], &[b0.addr]);
    let (code, body) = http(admin, "POST", "/v1/reload", Some(TOKEN), b"").await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("extra"), "{body}");
    assert!(echo_once(&mut s, 8).await);
    warren.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_are_added_and_removed_without_touching_open_connections() {
    let files = Files::new("listeners");
    let b0 = spawn_backend(echo).await;
    let (admin_port, port, extra) = (free_port(), free_port(), free_port());
    files.write(admin_port, &[("amqp", port)], &[b0.addr]);
    let (warren, admin) = files.start();

    files.write(admin_port, &[("amqp", port), ("extra", extra)], &[b0.addr]);
    let (code, body) = http(admin, "POST", "/v1/reload", Some(TOKEN), b"").await;
    assert_eq!(code, 200, "{body}");
    let extra_addr: SocketAddr = format!("127.0.0.1:{extra}").parse().unwrap();
    let mut on_extra = TcpStream::connect(extra_addr).await.unwrap();
    assert!(echo_once(&mut on_extra, 1).await);

    // Remove it again: no new connections there, the open one continues.
    files.write(admin_port, &[("amqp", port)], &[b0.addr]);
    let (code, body) = http(admin, "POST", "/v1/reload", Some(TOKEN), b"").await;
    assert_eq!(code, 200, "{body}");
    wait_for("extra closed for new connections", 5 * SECOND, || {
        std::net::TcpStream::connect_timeout(&extra_addr, Duration::from_millis(100)).is_err()
    })
    .await;
    assert!(
        echo_once(&mut on_extra, 2).await,
        "its open connection continues"
    );
    let mut main = TcpStream::connect(warren.addr).await.unwrap();
    assert!(echo_once(&mut main, 3).await);
    warren.stop().await;
}

/// The quick-start server (no file) refuses a reload with a clear message.
#[tokio::test]
async fn reload_without_a_file_says_so() {
    let b0 = spawn_backend(echo).await;
    let config = warren::config::quick_start("127.0.0.1:0", &[b0.addr.to_string()], None);
    // quick_start validates port 0 away; fall back to the in-process helper config.
    let config = config.unwrap_or_else(|_| {
        common::config(
            warren::config::Balance::RoundRobin,
            vec![backend("b", b0.addr)],
        )
    });
    let server = Server::bind(&config, quick()).unwrap();
    let reloader = server.reloader();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(server.run(shutdown.clone()));
    let err = reloader.reload().await.unwrap_err();
    assert!(err.contains("without a config file"), "{err}");
    shutdown.cancel();
    task.await.unwrap();
}

/// A backend removed by a reload leaves no series behind in `/metrics`: a `backend_up 0` or
/// `backend_admin_state{state="drained"} 1` would otherwise keep an alert firing for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_backend_leaves_no_metric_series_behind() {
    let files = Files::new("series");
    let (b0, b1) = (spawn_backend(echo).await, spawn_backend(echo).await);
    let (admin_port, port) = (free_port(), free_port());
    files.write(admin_port, &[("amqp", port)], &[b0.addr, b1.addr]);
    let (warren, admin) = files.start();
    // Traffic through both, and b1 drained: every kind of per-backend series exists.
    for i in 0..4u8 {
        let mut s = TcpStream::connect(warren.addr).await.unwrap();
        assert!(echo_once(&mut s, i).await);
    }
    let (code, body) = http(
        admin,
        "POST",
        "/v1/pools/rabbitmq/backends/b1/drain",
        Some(TOKEN),
        b"",
    )
    .await;
    assert_eq!(code, 202, "{body}");
    let b1_series = |text: &str| {
        text.lines()
            .filter(|l| !l.starts_with('#') && l.contains(r#"backend="b1""#))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let before = scrape_metrics(admin).await;
    for family in [
        "warren_backend_up{",
        "warren_backend_admin_state{",
        "warren_backend_connections_total{",
        "warren_backend_bytes_total{",
    ] {
        assert!(
            b1_series(&before).iter().any(|l| l.starts_with(family)),
            "{family} of b1 exists before the reload"
        );
    }

    files.write(admin_port, &[("amqp", port)], &[b0.addr]);
    let (code, body) = http(admin, "POST", "/v1/reload", Some(TOKEN), b"").await;
    assert_eq!(code, 200, "{body}");
    let after = scrape_metrics(admin).await;
    assert_eq!(
        b1_series(&after),
        Vec::<String>::new(),
        "b1's series after its removal"
    );
    assert!(
        after.contains(r#"warren_backend_up{backend="b0",pool="rabbitmq"} 1"#),
        "b0 keeps its series"
    );
    warren.stop().await;
}

/// A loop of new connections (connect, echo one byte, close) running as a task; its counters
/// can be read while it runs.
struct Churn {
    /// Connects tried so far.
    made: Arc<AtomicUsize>,
    /// Of those, the ones refused or not echoed.
    failed: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Churn {
    fn made(&self) -> usize {
        self.made.load(Ordering::SeqCst)
    }

    /// Wait for the loop to end (after `stop`, or its bound); (made, failed).
    async fn finish(self) -> (usize, usize) {
        self.task.await.unwrap();
        (
            self.made.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
        )
    }
}

/// Connects to `addr` in a loop until `stop` (bounded: 20,000 or 20 s).
fn churn(addr: SocketAddr, stop: Arc<AtomicBool>) -> Churn {
    let (made, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (m, f) = (made.clone(), failed.clone());
    let task = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + 20 * SECOND;
        for i in 0..20_000u32 {
            if stop.load(Ordering::SeqCst) || tokio::time::Instant::now() > deadline {
                break;
            }
            let ok = match TcpStream::connect(addr).await {
                Ok(mut s) => echo_once(&mut s, i as u8).await,
                Err(_) => false,
            };
            m.fetch_add(1, Ordering::SeqCst);
            f.fetch_add(usize::from(!ok), Ordering::SeqCst);
            tokio::task::yield_now().await;
        }
    });
    Churn { made, failed, task }
}

/// Criterion: renaming a listener and then swapping two listeners' ports, each under a
/// stream of new connects: reloads answer 200, 0 connects refused or failed on either port,
/// open connections keep echoing, and new connections are counted under the new names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_renames_listeners_and_swaps_their_ports_refusing_nothing() {
    let files = Files::new("rename");
    let b0 = spawn_backend(echo).await;
    let (admin_port, p1, p2) = (free_port(), free_port(), free_port());
    files.write(admin_port, &[("a", p1), ("b", p2)], &[b0.addr]);
    let (warren, admin) = files.start();
    let addr = |port: u16| -> SocketAddr { format!("127.0.0.1:{port}").parse().unwrap() };
    let mut open = TcpStream::connect(addr(p1)).await.unwrap();
    assert!(echo_once(&mut open, 1).await);

    let stop = Arc::new(AtomicBool::new(false));
    let churns = [churn(addr(p1), stop.clone()), churn(addr(p2), stop.clone())];
    let reload = |listeners: &[(&str, u16)]| {
        files.write(admin_port, listeners, &[b0.addr]);
        http(admin, "POST", "/v1/reload", Some(TOKEN), b"")
    };
    let (code, body) = reload(&[("a-renamed", p1), ("b", p2)]).await;
    assert_eq!(code, 200, "rename: {body}");
    let (code, body) = reload(&[("a-renamed", p2), ("b", p1)]).await;
    assert_eq!(code, 200, "swap: {body}");
    // Connections after the swap land under the swapped names.
    let (before_renamed, before_b) = (
        warren.metric(r#"warren_listener_connections_total{listener="a-renamed"}"#),
        warren.metric(r#"warren_listener_connections_total{listener="b"}"#),
    );
    for port in [p1, p2] {
        let mut s = TcpStream::connect(addr(port)).await.unwrap();
        assert!(echo_once(&mut s, 2).await);
    }
    assert!(
        warren.metric(r#"warren_listener_connections_total{listener="a-renamed"}"#)
            > before_renamed
    );
    assert!(warren.metric(r#"warren_listener_connections_total{listener="b"}"#) > before_b);
    stop.store(true, Ordering::SeqCst);
    for c in churns {
        let (made, failed) = c.finish().await;
        assert!(made > 0);
        assert_eq!(
            failed, 0,
            "connects refused or failed during the reloads (of {made})"
        );
    }
    assert!(
        echo_once(&mut open, 3).await,
        "the open connection continues"
    );
    warren.stop().await;
}

/// Criterion: widening `127.0.0.1:P` to `0.0.0.0:P` and narrowing it back both answer 200;
/// after the widening another loopback address (127.0.0.2) reaches the listener, after the
/// narrowing it does not; an open connection keeps echoing throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_widens_and_narrows_a_listener_address() {
    let files = Files::new("widen");
    let b0 = spawn_backend(echo).await;
    let (admin_port, port) = (free_port(), free_port());
    let narrow = vec![("amqp", format!("127.0.0.1:{port}"))];
    let wide = vec![("amqp", format!("0.0.0.0:{port}"))];
    files.write_addrs(admin_port, &narrow, &[b0.addr]);
    let (warren, admin) = files.start();
    let mut open = TcpStream::connect(warren.addr).await.unwrap();
    assert!(echo_once(&mut open, 1).await);
    let other: SocketAddr = format!("127.0.0.2:{port}").parse().unwrap();
    assert!(
        TcpStream::connect(other).await.is_err(),
        "not on 127.0.0.2 yet"
    );

    files.write_addrs(admin_port, &wide, &[b0.addr]);
    let (code, body) = http(admin, "POST", "/v1/reload", Some(TOKEN), b"").await;
    assert_eq!(code, 200, "widen: {body}");
    let mut s = TcpStream::connect(other)
        .await
        .expect("0.0.0.0 takes 127.0.0.2");
    assert!(echo_once(&mut s, 2).await);

    files.write_addrs(admin_port, &narrow, &[b0.addr]);
    let (code, body) = http(admin, "POST", "/v1/reload", Some(TOKEN), b"").await;
    assert_eq!(code, 200, "narrow: {body}");
    assert!(
        TcpStream::connect(other).await.is_err(),
        "127.0.0.2 refused again"
    );
    let mut s = TcpStream::connect(warren.addr).await.unwrap();
    assert!(echo_once(&mut s, 3).await);
    assert!(
        echo_once(&mut open, 4).await,
        "the open connection continues"
    );
    warren.stop().await;
}

/// README: "health, drain state and counters of unchanged backends carry over" a reload. A
/// reload that adds a backend leaves b0 `up`, b1 `down` and b2 drained exactly as they were (the
/// same `changed_at`, so no machine started afresh), and no counter starts again from 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_carries_health_drain_state_and_counters_over() {
    let files = Files::new("carry");
    let (b0, b2, b3) = (
        spawn_backend(echo).await,
        spawn_backend(echo).await,
        spawn_backend(echo).await,
    );
    let b1 = refused_addr();
    let (admin_port, port) = (free_port(), free_port());
    // rise 1, fall 1. A health machine started afresh by the reload would read `unknown`, or
    // (re-probed) carry a new `changed_at`: both are checked below.
    let health = "[pool.rabbitmq.health]\nkind = \"tcp\"\ninterval = \"1s\"\ntimeout = \"500ms\"\n\
                  rise = 1\nfall = 1\n";
    let write = |backends: &[SocketAddr]| {
        files.write(admin_port, &[("amqp", port)], backends);
        let text = std::fs::read_to_string(&files.config).unwrap();
        std::fs::write(&files.config, text + health).unwrap();
    };
    write(&[b0.addr, b1, b2.addr]);
    let (warren, admin) = files.start();
    let record = |name: &str| warren.health.backend("rabbitmq", name).unwrap();
    wait_for("b0 and b2 up, b1 down", 10 * SECOND, || {
        record("b0").health == Health::Up
            && record("b1").health == Health::Down
            && record("b2").health == Health::Up
    })
    .await;
    let (code, body) = http(
        admin,
        "POST",
        "/v1/pools/rabbitmq/backends/b2/drain",
        Some(TOKEN),
        b"",
    )
    .await;
    assert_eq!(code, 202, "{body}");
    for i in 0..6u8 {
        let mut s = TcpStream::connect(warren.addr).await.unwrap();
        assert!(echo_once(&mut s, i).await);
    }
    let counters = [
        r#"warren_backend_connections_total{backend="b0",pool="rabbitmq"}"#,
        r#"warren_listener_connections_total{listener="amqp"}"#,
        r#"warren_health_checks_total{backend="b0",pool="rabbitmq",result="ok"}"#,
        r#"warren_health_checks_total{backend="b1",pool="rabbitmq",result="failed"}"#,
    ];
    let before: Vec<f64> = counters.iter().map(|c| warren.metric(c)).collect();
    let changed_before: Vec<_> = ["b0", "b1", "b2"].map(|b| record(b).changed_at).into();
    assert_eq!(
        before[0], 6.0,
        "every connection went to b0 (b1 down, b2 drained)"
    );

    write(&[b0.addr, b1, b2.addr, b3.addr]);
    let (code, body) = http(admin, "POST", "/v1/reload", Some(TOKEN), b"").await;
    assert_eq!(code, 200, "{body}");
    assert!(
        warren.health.backend("rabbitmq", "b3").is_some(),
        "b3 added"
    );

    assert_eq!(
        record("b0").health,
        Health::Up,
        "b0's health after the reload"
    );
    assert_eq!(
        record("b1").health,
        Health::Down,
        "b1's health after the reload"
    );
    let changed_after: Vec<_> = ["b0", "b1", "b2"].map(|b| record(b).changed_at).into();
    assert_eq!(
        changed_after, changed_before,
        "no health machine started afresh"
    );
    assert_eq!(
        warren.metric(r#"warren_backend_up{backend="b1",pool="rabbitmq"}"#),
        0.0
    );
    assert_eq!(
        warren
            .metric(r#"warren_backend_admin_state{backend="b2",pool="rabbitmq",state="drained"}"#),
        1.0,
        "b2 stays drained"
    );
    let after: Vec<f64> = counters.iter().map(|c| warren.metric(c)).collect();
    for ((name, b), a) in counters.iter().zip(&before).zip(&after) {
        assert!(*b > 0.0, "{name} counted before the reload");
        // Probes run on (every second): a counter may only have grown.
        assert!(a >= b, "{name} went from {b} to {a} over the reload");
    }
    assert_eq!(after[..2], before[..2], "no connection was made in between");
    // Drained b2 still gets nothing; b0 and the new b3 share the new connections.
    let b2_before = b2.accepted.load(Ordering::SeqCst);
    for i in 0..6u8 {
        let mut s = TcpStream::connect(warren.addr).await.unwrap();
        assert!(echo_once(&mut s, i).await);
    }
    assert_eq!(
        b2.accepted.load(Ordering::SeqCst),
        b2_before,
        "no new connection on drained b2"
    );
    warren.stop().await;
}
