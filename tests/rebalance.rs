//! Rebalancing end to end, in process: long-lived clients that reconnect when closed (as AMQP
//! clients with automatic recovery do) pile onto one backend while the other is drained; when
//! it returns, warren moves the excess back at the configured pace, never closing a client
//! younger than `min_age`, and stops once both are within the tolerance. An undrain may hold
//! the pool (what `warren ctl upgrade` does between nodes), and `POST .../rebalance` starts a
//! pass on demand. The backends have no management API here, so closes are over TCP; the
//! graceful AMQP close of a rebalance is checked on a real cluster (`tests/cluster.rs`).

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;
use warren::config::{Balance, Config, RebalanceConfig, RebalanceMode};
use warren::state::AdminState;

const SECOND: Duration = Duration::from_secs(1);
const TOKEN: &str = "rebalance-token";
const RATE: f64 = 8.0;

fn rebalance_config(dir: &TempDir, backends: [SocketAddr; 2], mode: RebalanceMode) -> Config {
    let mut cfg = config(
        Balance::LeastConn,
        vec![backend("a", backends[0]), backend("b", backends[1])],
    );
    cfg.pools[0].rebalance = RebalanceConfig {
        mode,
        tolerance: 0.1,
        max_closes_per_second: RATE,
        min_age: Duration::from_secs(2),
    };
    cfg.admin = Some(admin_with_token(dir, TOKEN));
    cfg
}

/// What the clients saw: connections per backend now, and each close by warren (its time and
/// how old the connection was).
#[derive(Default)]
struct Seen {
    per_backend: [usize; 2],
    closes: Vec<(Instant, Duration)>,
}

/// `n` clients through `proxy`, each reconnecting at once when its connection is closed, until
/// `stop` (bounded by `within`).
fn clients(
    proxy: SocketAddr,
    n: usize,
    seen: &Arc<Mutex<Seen>>,
    stop: &tokio_util::sync::CancellationToken,
    within: Duration,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|_| {
            let (seen, stop) = (seen.clone(), stop.clone());
            tokio::spawn(async move {
                let end = Instant::now() + within;
                while Instant::now() < end && !stop.is_cancelled() {
                    let (id, mut s) = which_backend(proxy).await;
                    let since = Instant::now();
                    seen.lock().unwrap().per_backend[usize::from(id)] += 1;
                    let mut buf = [0u8; 64];
                    let closed = tokio::select! {
                        () = stop.cancelled() => false,
                        () = tokio::time::sleep_until(end) => false,
                        r = s.read(&mut buf) => matches!(r, Ok(0) | Err(_)),
                    };
                    let mut seen = seen.lock().unwrap();
                    seen.per_backend[usize::from(id)] -= 1;
                    if closed {
                        seen.closes.push((Instant::now(), since.elapsed()));
                    }
                }
            })
        })
        .collect()
}

fn counts(seen: &Arc<Mutex<Seen>>) -> [usize; 2] {
    seen.lock().unwrap().per_backend
}

async fn post(admin: SocketAddr, path: &str, body: &[u8]) -> (u16, serde_json::Value) {
    let (code, text) = http(admin, "POST", path, Some(TOKEN), body).await;
    (
        code,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

async fn pool_status(admin: SocketAddr) -> serde_json::Value {
    let (code, body) = http(admin, "GET", "/v1/status", Some(TOKEN), b"").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str::<serde_json::Value>(&body).unwrap()["pools"][0].clone()
}

/// Drain b and put `n` clients on a; returns when they are all connected.
async fn pile_onto_a(
    warren: &Warren,
    admin: SocketAddr,
    n: usize,
    seen: &Arc<Mutex<Seen>>,
    stop: &tokio_util::sync::CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    let (code, body) = post(admin, "/v1/pools/default/backends/b/drain", b"").await;
    assert_eq!(code, 202, "{body}");
    wait_for("b drained", 5 * SECOND, || {
        warren.routing.load().pools["default"]
            .backend("b")
            .unwrap()
            .admin
            == AdminState::Drained
    })
    .await;
    let tasks = clients(warren.addr, n, seen, stop, 60 * SECOND);
    wait_for("every client on a", 10 * SECOND, || counts(seen) == [n, 0]).await;
    tasks
}

/// In any one-second window, at most `rate` closes, and one more for timer slack.
fn assert_paced(closes: &[(Instant, Duration)], rate: f64) {
    let mut times: Vec<Instant> = closes.iter().map(|c| c.0).collect();
    times.sort();
    for (i, first) in times.iter().enumerate() {
        let within = times[i..]
            .iter()
            .take_while(|t| **t < *first + SECOND)
            .count();
        assert!(
            within as f64 <= rate + 1.0,
            "{within} closes within one second (rate {rate}): {times:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_backend_gets_its_share_back_at_the_configured_pace() {
    let dir = TempDir::new("rebalance-return");
    let (a, b) = (spawn_tagged(0).await, spawn_tagged(1).await);
    let cfg = rebalance_config(&dir, [a.addr, b.addr], RebalanceMode::OnReturn);
    let warren = Warren::start(cfg, quick());
    let admin = warren.admin.expect("admin configured");
    let (seen, stop) = (Arc::default(), tokio_util::sync::CancellationToken::new());
    let tasks = pile_onto_a(&warren, admin, 40, &seen, &stop).await;
    let pool = pool_status(admin).await;
    assert_eq!(pool["rebalance"]["state"], "balanced", "{pool}");
    assert_eq!(pool["rebalance"]["mode"], "on_return", "{pool}");

    let (code, body) = post(admin, "/v1/pools/default/backends/b/undrain", b"").await;
    assert_eq!(code, 200, "{body}");
    let returned = Instant::now();
    wait_for("a rebalance under way", 3 * SECOND, || {
        warren.metric("warren_pool_imbalance{pool=\"default\"}") > 0.4
    })
    .await;
    let pool = pool_status(admin).await;
    assert_eq!(pool["rebalance"]["state"], "running", "{pool}");
    // Within 10 % of 20 each: a at most 22.
    wait_for("both within the tolerance", 20 * SECOND, || {
        let [on_a, on_b] = counts(&seen);
        on_a + on_b == 40 && on_a <= 22
    })
    .await;
    let took = returned.elapsed();
    // The last round's closes take the pool to its fair share, then the pass ends.
    wait_for("the pass to end", 5 * SECOND, || {
        warren.metric("warren_pool_imbalance{pool=\"default\"}") <= 0.05
    })
    .await;
    let pool = pool_status(admin).await;
    assert_eq!(pool["rebalance"]["state"], "balanced", "{pool}");
    let moved = seen.lock().unwrap().closes.len();
    // Settled: nothing more is moved.
    tokio::time::sleep(2 * SECOND).await;
    stop.cancel();
    for t in tasks {
        t.await.unwrap();
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    println!(
        "balanced after {took:?}: {} closes, {:?}",
        seen.closes.len(),
        seen.per_backend
    );
    assert!(
        (18..=24).contains(&moved),
        "{moved} closes to move 20 connections (least_conn puts each closed client on b)"
    );
    assert_eq!(
        seen.closes.len(),
        moved,
        "closes after the pool was balanced"
    );
    assert_paced(&seen.closes, RATE);
    let youngest = seen.closes.iter().map(|c| c.1).min().unwrap();
    assert!(
        youngest >= 2 * SECOND,
        "a client {youngest:?} old was closed (min_age 2s)"
    );
    assert_eq!(
        warren.metric("warren_backend_rebalance_closes_total{backend=\"a\",pool=\"default\"}"),
        moved as f64
    );
    assert_eq!(
        warren.metric("warren_connections_closed_total{listener=\"default\",reason=\"rebalance\"}"),
        moved as f64
    );
    warren.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undrain_can_hold_rebalancing_until_an_operator_asks() {
    let dir = TempDir::new("rebalance-hold");
    let (a, b) = (spawn_tagged(0).await, spawn_tagged(1).await);
    let cfg = rebalance_config(&dir, [a.addr, b.addr], RebalanceMode::Continuous);
    let warren = Warren::start(cfg, quick());
    let admin = warren.admin.expect("admin configured");
    let (seen, stop) = (Arc::default(), tokio_util::sync::CancellationToken::new());
    let tasks = pile_onto_a(&warren, admin, 20, &seen, &stop).await;
    tokio::time::sleep(2 * SECOND).await;

    let undrain = "/v1/pools/default/backends/b/undrain";
    let (code, body) = post(admin, undrain, br#"{"rebalance": false}"#).await;
    assert_eq!(code, 200, "{body}");
    // Three rounds of a continuous rebalancer, held: nothing moves.
    tokio::time::sleep(3 * SECOND).await;
    assert_eq!(counts(&seen), [20, 0]);
    let pool = pool_status(admin).await;
    assert_eq!(pool["rebalance"]["state"], "held", "{pool}");
    assert_eq!(pool["rebalance"]["imbalance"], 0.5, "{pool}");

    let (code, answer) = post(admin, "/v1/pools/default/rebalance", b"").await;
    assert_eq!(code, 202, "{answer}");
    assert_eq!(answer["started"], true, "{answer}");
    assert_eq!(answer["to_move"], 10, "{answer}");
    wait_for("both within the tolerance", 10 * SECOND, || {
        let [on_a, on_b] = counts(&seen);
        on_a + on_b == 20 && on_a <= 11
    })
    .await;
    // Every close counted is one a client saw (the last slots may still be under way). The
    // operator's pass starts between two rounds: the next round must not take back the closes
    // already handed out (each would be counted twice, and its slot wasted).
    let series = [
        "warren_backend_rebalance_closes_total{backend=\"a\",pool=\"default\"}",
        "warren_connections_closed_total{listener=\"default\",reason=\"rebalance\"}",
    ];
    let deadline = Instant::now() + 5 * SECOND;
    loop {
        let closes = seen.lock().unwrap().closes.len() as f64;
        let counted = series.map(|s| warren.metric(s));
        if counted == [closes; 2] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{closes} rebalance closes seen by the clients, {counted:?} counted (closes, closed)"
        );
        tokio::time::sleep(SECOND / 10).await;
    }
    // Asked again once balanced: nothing to move.
    let (code, answer) = post(admin, "/v1/pools/default/rebalance", b"").await;
    assert_eq!((code, &answer["started"]), (200, &false.into()), "{answer}");
    let (code, answer) = post(admin, "/v1/pools/nope/rebalance", b"").await;
    assert_eq!(code, 404, "{answer}");
    stop.cancel();
    for t in tasks {
        t.await.unwrap();
    }
    assert_paced(&seen.lock().unwrap().closes, RATE);
    warren.stop().await;
}
