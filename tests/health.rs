//! Health end to end, in process: probes mark a killed backend down within
//! `fall × interval + timeout` and back up after `rise` successes, hooks run once per real
//! change with the documented environment, a flapping backend changes nothing it should not,
//! and backups take over (and give back) new connections while old ones stay untouched.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use warren::config::{Balance, HealthConfig, HookEvent, OnDown, Probe};
use warren::state::Health;

const SECOND: Duration = Duration::from_secs(1);

fn tcp_health(interval_ms: u64, timeout_ms: u64, rise: u32, fall: u32) -> HealthConfig {
    HealthConfig {
        probe: Probe::Tcp,
        interval: Duration::from_millis(interval_ms),
        timeout: Duration::from_millis(timeout_ms),
        rise,
        fall,
    }
}

/// What the tests' hook records per run: "EVENT POOL BACKEND ADDR AVAILABLE TOTAL".
const HOOK_LINE: &str =
    "$WARREN_EVENT $WARREN_POOL $WARREN_BACKEND $WARREN_BACKEND_ADDR $WARREN_AVAILABLE $WARREN_TOTAL";
const HOOK_TIMEOUT: Duration = Duration::from_secs(5);

/// An echo backend on a fixed address that can be killed and brought back.
struct Revivable {
    addr: SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Revivable {
    async fn start() -> Revivable {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut r = Revivable { addr, task: None };
        r.serve(listener);
        r
    }

    fn serve(&mut self, listener: TcpListener) {
        self.task = Some(tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(echo(s));
            }
        }));
    }

    async fn kill(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    async fn revive(&mut self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }
}

impl Drop for Revivable {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

fn health_of(warren: &Warren, backend: &str) -> Health {
    warren
        .health
        .backend("default", backend)
        .expect("backend is tracked")
        .health
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backend_goes_down_in_time_and_comes_back_after_rise() {
    let dir = TempDir::new("health-kill");
    let hooks = HookRecorder::new(&dir.0, HOOK_LINE);
    let mut a = Revivable::start().await;
    let b = spawn_backend(echo).await;
    let (interval, timeout, rise, fall) = (200, 100, 2, 3);
    let mut cfg = config(
        Balance::RoundRobin,
        vec![backend("a", a.addr), backend("b", b.addr)],
    );
    cfg.pools[0].health = Some(tcp_health(interval, timeout, rise, fall));
    cfg.hooks = vec![hooks.hook(
        &[HookEvent::BackendDown, HookEvent::BackendUp],
        HOOK_TIMEOUT,
    )];
    let warren = Warren::start(cfg, quick());

    wait_for("a up", 5 * SECOND, || health_of(&warren, "a") == Health::Up).await;
    let probes_at_kill = warren.health.backend("default", "a").unwrap().probes_run;
    let killed = Instant::now();
    a.kill().await;
    // Counted in probes, not milliseconds, so a loaded machine that delays the probe timer
    // cannot fail it: down on the `fall`-th failed probe after the kill, or the one after it
    // when a probe was in flight at the kill. Polled every millisecond so the record seen is
    // almost always the one the flip left (its last probe is the flipping one).
    let deadline = Instant::now() + 10 * SECOND;
    let down = loop {
        let record = warren.health.backend("default", "a").unwrap();
        if record.health == Health::Down {
            break record;
        }
        assert!(Instant::now() < deadline, "a not down 10 s after the kill");
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let took = killed.elapsed();
    let probes = down.probes_run - probes_at_kill;
    let flip_seen = down
        .last_probe
        .as_ref()
        .is_some_and(|p| p.at <= down.changed_at);
    // fall × interval (+10% jitter) + timeout, plus the probe in flight at the kill.
    let bound = Duration::from_millis((fall as u64 + 1) * interval * 11 / 10 + timeout);
    println!("down after {took:?} and {probes} probes (unloaded bound {bound:?})");
    assert!(probes >= fall as u64, "down after only {probes} probes");
    if flip_seen {
        assert!(
            probes <= fall as u64 + 1,
            "down only after {probes} probes (fall {fall})"
        );
    }
    // Generous: the probe timer itself is checked by the count above; this only catches a
    // backend that goes down far later than fall × interval (five times the unloaded bound).
    assert!(took <= 5 * bound, "down after {took:?}, bound {bound:?}");

    wait_for("backend_down hook ran", 5 * SECOND, || {
        !hooks.lines().is_empty()
    })
    .await;
    assert_eq!(
        hooks.lines(),
        vec![format!("backend_down default a {} 1 2", a.addr)]
    );
    // Down: new connections all go to b.
    for _ in 0..10 {
        let mut s = TcpStream::connect(warren.addr).await.unwrap();
        s.write_all(b"x").await.unwrap();
        let mut buf = [0u8; 1];
        s.read_exact(&mut buf).await.unwrap();
    }
    assert_eq!(
        warren.metric(r#"warren_backend_connections_total{backend="a",pool="default"}"#),
        0.0,
        "no new connection goes to a backend that is down"
    );

    let revived = Instant::now();
    a.revive().await;
    wait_for("a up again", 5 * SECOND, || {
        health_of(&warren, "a") == Health::Up
    })
    .await;
    let took = revived.elapsed();
    println!("up after {took:?} (rise {rise} × interval {interval}ms)");
    assert!(took >= Duration::from_millis((rise as u64 - 1) * interval * 9 / 10));
    wait_for("backend_up hook ran", 5 * SECOND, || {
        hooks.lines().len() == 2
    })
    .await;
    assert_eq!(
        hooks.lines()[1],
        format!("backend_up default a {} 2 2", a.addr)
    );
    let record = warren.health.backend("default", "a").unwrap();
    assert!(record.last_probe.as_ref().is_some_and(|p| p.up));
    assert_eq!(
        warren.metric(r#"warren_backend_up{backend="a",pool="default"}"#),
        1.0
    );
    assert!(
        warren.metric(r#"warren_health_checks_total{backend="a",pool="default",result="failed"}"#)
            >= fall as f64
    );
    warren.stop().await;
}

/// A fake broker that alternates: a real Connection.Start on one connection, garbage on the next.
async fn flapping_broker() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut good = true;
        while let Ok((mut s, _)) = listener.accept().await {
            let reply = if good {
                connection_start()
            } else {
                b"HTTP/1.1 400 nope\r\n\r\n".to_vec()
            };
            good = !good;
            tokio::spawn(async move {
                let mut header = [0u8; 8];
                if s.read_exact(&mut header).await.is_ok() {
                    let _ = s.write_all(&reply).await;
                }
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, task)
}

/// A minimal, valid AMQP 0-9-1 Connection.Start frame.
fn connection_start() -> Vec<u8> {
    let mut payload = vec![0, 10, 0, 10, 0, 9];
    payload.extend_from_slice(&0u32.to_be_bytes()); // empty server-properties table
    for s in [&b"PLAIN AMQPLAIN"[..], b"en_US"] {
        payload.extend_from_slice(&(s.len() as u32).to_be_bytes());
        payload.extend_from_slice(s);
    }
    let mut frame = vec![1, 0, 0];
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&payload);
    frame.push(0xCE);
    frame
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_backend_changes_state_only_as_rise_and_fall_allow() {
    let dir = TempDir::new("health-flap");
    let hooks = HookRecorder::new(&dir.0, HOOK_LINE);
    let (addr, _broker) = flapping_broker().await;
    let mut cfg = config(Balance::RoundRobin, vec![backend("flappy", addr)]);
    cfg.pools[0].health = Some(HealthConfig {
        probe: Probe::Amqp,
        interval: Duration::from_millis(50),
        timeout: Duration::from_millis(200),
        rise: 2,
        fall: 2,
    });
    cfg.hooks = vec![hooks.hook(
        &[HookEvent::BackendDown, HookEvent::BackendUp],
        HOOK_TIMEOUT,
    )];
    let warren = Warren::start(cfg, quick());
    let series = r#"warren_health_checks_total{backend="flappy",pool="default",result="failed"}"#;
    wait_for("20 failed probes", 10 * SECOND, || {
        // Absent until the prober starts; only >= 20 passes.
        warren.metric_or_zero(series) >= 20.0
    })
    .await;
    let ok =
        warren.metric(r#"warren_health_checks_total{backend="flappy",pool="default",result="ok"}"#);
    println!(
        "after {ok} good and {} bad alternating probes",
        warren.metric(series)
    );
    // Alternating results never give two failures (or two successes) in a row.
    assert_eq!(health_of(&warren, "flappy"), Health::Up);
    assert!(hooks.lines().is_empty(), "hooks ran: {:?}", hooks.lines());
    warren.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_take_over_when_primaries_fail_and_give_back_when_one_returns() {
    let dir = TempDir::new("health-failover");
    let hooks = HookRecorder::new(&dir.0, HOOK_LINE);
    let mut primary = Revivable::start().await;
    let spare = spawn_tagged(2).await;
    let mut spare_cfg = backend("spare", spare.addr);
    spare_cfg.backup = true;
    let mut cfg = config(
        Balance::RoundRobin,
        vec![backend("primary", primary.addr), spare_cfg],
    );
    cfg.pools[0].health = Some(tcp_health(100, 100, 2, 2));
    cfg.hooks = vec![hooks.hook(
        &[HookEvent::PoolFailover, HookEvent::PoolFailback],
        HOOK_TIMEOUT,
    )];
    let warren = Warren::start(cfg, quick());
    wait_for("primary up", 5 * SECOND, || {
        health_of(&warren, "primary") == Health::Up
    })
    .await;

    // An open connection through the primary: it must survive every health change.
    let mut old = TcpStream::connect(warren.addr).await.unwrap();
    old.write_all(b"1").await.unwrap();
    let mut buf = [0u8; 1];
    old.read_exact(&mut buf).await.unwrap();

    // Take the primary's listener away (its open connection stays) → failover.
    primary.kill().await;
    wait_for("pool_failover hook", 5 * SECOND, || {
        !hooks.lines().is_empty()
    })
    .await;
    assert_eq!(
        hooks.lines(),
        vec!["pool_failover default   1 2".to_owned()]
    );
    for _ in 0..5 {
        let (id, _) = which_backend(warren.addr).await;
        assert_eq!(id, 2, "new connections go to the backup");
    }
    old.write_all(b"2").await.unwrap();
    old.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"2", "the old connection is untouched by failover");

    primary.revive().await;
    wait_for("pool_failback hook", 5 * SECOND, || {
        hooks.lines().len() == 2
    })
    .await;
    assert_eq!(hooks.lines()[1], "pool_failback default   2 2");
    let mut s = TcpStream::connect(warren.addr).await.unwrap();
    s.write_all(b"p").await.unwrap();
    let mut got = [0u8; 1];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(
        &got, b"p",
        "the primary (an echo, no id byte) takes new connections again"
    );
    old.write_all(b"3").await.unwrap();
    old.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"3", "the old connection is untouched by failback");
    warren.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_connects_count_as_failed_checks() {
    // The probe interval is long, so only passive failures can take the backend down.
    let dead = refused_addr();
    let live = spawn_tagged(1).await;
    let mut cfg = config(
        Balance::RoundRobin,
        vec![backend("dead", dead), backend("live", live.addr)],
    );
    cfg.pools[0].health = Some(tcp_health(60_000, 100, 2, 2));
    let warren = Warren::start(cfg, quick());
    for _ in 0..6 {
        let (id, _) = which_backend(warren.addr).await;
        assert_eq!(id, 1);
    }
    wait_for("dead marked down by passive checks", 5 * SECOND, || {
        health_of(&warren, "dead") == Health::Down
    })
    .await;
    warren.stop().await;
}

/// An HTTP health target that answers 200 after `delay`; counts requests and the most that were
/// in flight at once. A request is out of flight before its answer is written, so a probe that
/// starts only after the previous one ended is never counted as overlapping.
struct SlowHealthTarget {
    addr: SocketAddr,
    served: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    max_in_flight: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

async fn slow_health_target(delay: Duration) -> SlowHealthTarget {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let max_in_flight = Arc::new(AtomicUsize::new(0));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let (s, m) = (served.clone(), max_in_flight.clone());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (served, max, in_flight) = (s.clone(), m.clone(), in_flight.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                max.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                served.fetch_add(1, Ordering::SeqCst);
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    SlowHealthTarget {
        addr,
        served,
        max_in_flight,
    }
}

/// Criterion: a pool with `interval = "100ms"` and `timeout = "1s"` (timeout past interval, as
/// HAProxy allows) loads from TOML; against a target that takes 300 ms per answer, at least 4
/// probes run and at most 1 is ever in flight (the next starts after the previous ends), and
/// the backend stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_with_a_timeout_past_the_interval_never_overlap() {
    use std::sync::atomic::Ordering;
    let backend = spawn_backend(echo).await;
    let target = slow_health_target(Duration::from_millis(300)).await;
    let text = format!(
        "[[listener]]\nname = \"amqp\"\nlisten = \"127.0.0.1:{}\"\npool = \"default\"\n\n\
         [pool.default]\n[pool.default.health]\nkind = \"http\"\nurl = \"http://{}/ready\"\n\
         interval = \"100ms\"\ntimeout = \"1s\"\nrise = 1\nfall = 1\n\n\
         [[pool.default.backend]]\nname = \"a\"\naddr = \"{}\"\n",
        free_port(),
        target.addr,
        backend.addr
    );
    let config = warren::config::from_toml(&text, std::path::Path::new("overlap.toml"))
        .expect("timeout >= interval loads");
    let warren = Warren::start(config, quick());
    wait_for("4 probes answered", 10 * SECOND, || {
        target.served.load(Ordering::SeqCst) >= 4
    })
    .await;
    let served = target.served.load(Ordering::SeqCst);
    assert_eq!(
        target.max_in_flight.load(Ordering::SeqCst),
        1,
        "probes of one backend overlapped ({served} served)"
    );
    assert_eq!(
        warren.metric(r#"warren_backend_up{backend="a",pool="default"}"#),
        1.0
    );
    println!("{served} slow probes, never more than 1 in flight");
    warren.stop().await;
}

/// Criterion: a backend that accepts and closes at once (0 bytes to the client, as a broken
/// broker that still listens) is marked down after `fall` = 3 such connections, although the
/// tcp probe succeeds against it; each counts as
/// `backend_connect_failures_total{reason="closed_early"}`; then 10 of 10 clients reach the
/// healthy backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_closes_at_once_is_taken_out() {
    const FALL: u32 = 3;
    let closer = spawn_backend(|s| async move { drop(s) }).await;
    let live = spawn_tagged(1).await;
    let mut cfg = config(
        Balance::RoundRobin,
        vec![backend("closer", closer.addr), backend("live", live.addr)],
    );
    // The probe interval is long, so only what the data path sees can take it down (a tcp
    // probe would pass: the port accepts).
    cfg.pools[0].health = Some(tcp_health(60_000, 500, 1, FALL));
    let warren = Warren::start(cfg, quick());
    let counted = || {
        warren.metric(
            r#"warren_backend_connect_failures_total{backend="closer",pool="default",reason="closed_early"}"#,
        )
    };
    let mut early_eofs = 0u32;
    for _ in 0..(4 * FALL) {
        if early_eofs == FALL {
            break;
        }
        let mut s = TcpStream::connect(warren.addr).await.unwrap();
        s.write_all(b"AMQP\x00\x00\x09\x01").await.unwrap();
        let mut id = [0u8; 1];
        match tokio::time::timeout(5 * SECOND, s.read(&mut id)).await {
            Ok(Ok(0)) | Ok(Err(_)) => early_eofs += 1,
            Ok(Ok(_)) => {
                assert_eq!(id[0], 1);
                continue;
            }
            Err(_) => panic!("no answer nor close within 5 s"),
        }
        drop(s);
        wait_for("the early close to be counted", 2 * SECOND, || {
            counted() == f64::from(early_eofs)
        })
        .await;
        if early_eofs < FALL {
            assert_ne!(
                health_of(&warren, "closer"),
                Health::Down,
                "down after {early_eofs} of fall = {FALL}"
            );
        }
    }
    assert_eq!(early_eofs, FALL, "clients never reached the closer");
    wait_for("closer marked down", 2 * SECOND, || {
        health_of(&warren, "closer") == Health::Down
    })
    .await;
    println!("closer down after {early_eofs} early closes");
    for _ in 0..10 {
        let (id, _) = which_backend(warren.addr).await;
        assert_eq!(id, 1, "a client went to the backend that closes at once");
    }
    warren.stop().await;
}

/// `on_down`: when probes mark a backend down (here its port stops accepting while the
/// connections it has stay up and keep echoing, as a broker whose listener died), `"close"`
/// closes its client connections within `fall × interval + timeout + 1 s`, each counted as
/// `connections_closed_total{reason="backend_down"}`; `"keep"` leaves them open and working.
/// The other backend's connections are untouched either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_down_close_closes_the_connections_of_a_backend_marked_down() {
    let (interval, timeout, fall) = (200, 100, 2);
    let bound = Duration::from_millis(fall * interval + timeout) + SECOND;
    for on_down in [OnDown::Close, OnDown::Keep] {
        let a = spawn_tagged(0).await;
        let b = spawn_tagged(1).await;
        let mut cfg = config(
            Balance::RoundRobin,
            vec![backend("a", a.addr), backend("b", b.addr)],
        );
        cfg.pools[0].health = Some(tcp_health(interval, timeout, 1, fall as u32));
        cfg.pools[0].on_down = on_down;
        let warren = Warren::start(cfg, quick());
        wait_for("a up", 5 * SECOND, || health_of(&warren, "a") == Health::Up).await;
        let (mut to_a, mut to_b) = (Vec::new(), Vec::new());
        while to_a.len() < 3 || to_b.len() < 3 {
            let (id, s) = which_backend(warren.addr).await;
            if id == 0 { &mut to_a } else { &mut to_b }.push(s);
        }
        let open_on_a = a.open.clone();
        let stopped = Instant::now();
        // Stops accepting (the listener goes with the accept task); accepted connections live on.
        drop(a);
        let deadline = stopped + bound;
        for (i, s) in to_a.iter_mut().enumerate() {
            let mut byte = [0u8; 1];
            let read = tokio::time::timeout_at(deadline, s.read(&mut byte)).await;
            match (on_down, read) {
                (OnDown::Close, Ok(Ok(0) | Err(_))) => {}
                (OnDown::Keep, Err(_)) => {}
                (_, other) => panic!("{on_down:?}: connection {i} to a: {other:?}"),
            }
        }
        println!(
            "{on_down:?}: connections to a settled {:?} after a stopped accepting",
            stopped.elapsed()
        );
        assert_eq!(health_of(&warren, "a"), Health::Down, "{on_down:?}");
        let closed = r#"warren_connections_closed_total{listener="default",reason="backend_down"}"#;
        match on_down {
            OnDown::Close => {
                wait_for("3 closes counted", 2 * SECOND, || {
                    warren.metric(closed) == 3.0
                })
                .await;
                wait_for("a's side closed", 2 * SECOND, || {
                    open_on_a.load(std::sync::atomic::Ordering::SeqCst) == 0
                })
                .await;
            }
            OnDown::Keep => {
                assert_eq!(warren.metric(closed), 0.0);
                for s in &mut to_a {
                    assert!(echo_once(s, 7).await, "kept connection to a still echoes");
                }
            }
        }
        for s in &mut to_b {
            assert!(
                echo_once(s, 9).await,
                "{on_down:?}: b's connections are untouched"
            );
        }
        warren.stop().await;
    }
}

/// Planned work must not look like an outage: hooks are told the backend's admin state and
/// whether the event is planned. A drain (and the `pool_degraded` it causes) is planned, and so
/// is a drained node that then stops; a node that dies while active is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_tell_planned_work_from_an_outage() {
    let dir = TempDir::new("health-planned");
    let hooks = HookRecorder::new(
        &dir.0,
        "$WARREN_EVENT $WARREN_BACKEND/$WARREN_ADMIN_STATE planned=$WARREN_PLANNED",
    );
    let mut a = Revivable::start().await;
    let mut b = Revivable::start().await;
    let c = spawn_backend(echo).await;
    let mut cfg = config(
        Balance::RoundRobin,
        vec![
            backend("a", a.addr),
            backend("b", b.addr),
            backend("c", c.addr),
        ],
    );
    cfg.pools[0].health = Some(tcp_health(100, 100, 1, 2));
    cfg.hooks = vec![hooks.hook(
        &[
            HookEvent::BackendDown,
            HookEvent::BackendUp,
            HookEvent::PoolDegraded,
            HookEvent::DrainStarted,
            HookEvent::DrainComplete,
        ],
        HOOK_TIMEOUT,
    )];
    let warren = Warren::start(with_admin_api(cfg, None), quick());
    let admin = warren.admin.expect("admin API");
    for name in ["a", "b", "c"] {
        wait_for(name, 5 * SECOND, || health_of(&warren, name) == Health::Up).await;
    }
    let lines_reach = |n: usize| {
        let hooks = &hooks;
        move || hooks.lines().len() >= n
    };

    // The upgrade of a: drain it (no connection, so it is drained at once), then stop it.
    let (code, body) = http(
        admin,
        "POST",
        "/v1/pools/default/backends/a/drain",
        None,
        b"",
    )
    .await;
    assert_eq!(code, 202, "{body}");
    wait_for("drain events", 5 * SECOND, lines_reach(3)).await;
    a.kill().await;
    wait_for("a down", 5 * SECOND, lines_reach(4)).await;
    // Its node back after the upgrade, still drained.
    a.revive().await;
    wait_for("a up", 5 * SECOND, lines_reach(5)).await;
    // b dies while it takes traffic: an outage.
    b.kill().await;
    wait_for("b down", 5 * SECOND, lines_reach(7)).await;
    assert_eq!(
        hooks.lines(),
        [
            "drain_started a/draining planned=true",
            "pool_degraded / planned=true",
            "drain_complete a/drained planned=true",
            "backend_down a/drained planned=true",
            "backend_up a/drained planned=true",
            "backend_down b/active planned=false",
            "pool_degraded / planned=false",
        ]
    );
    // The pool event of a drain is logged as information, of an outage as a warning (the log
    // itself is covered in tests/cli.rs; here, the events are enough).
    b.revive().await;
    warren.stop().await;
}

/// A backend that failed client connects took down says so: the reason of the change is the
/// failed connect, not the last probe's result (here no probe has run yet), in the health
/// record and in `/v1/status`'s `health_reason`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_failed_connects_took_down_says_why() {
    let up = spawn_backend(echo).await;
    let mut cfg = config(
        Balance::RoundRobin,
        vec![backend("gone", refused_addr()), backend("up", up.addr)],
    );
    // Probes too rare to run during the test: only failed connects can flip "gone".
    cfg.pools[0].health = Some(tcp_health(3_600_000, 500, 1, 1));
    let warren = Warren::start(with_admin_api(cfg, None), quick());
    let admin = warren.admin.expect("admin API");
    // Round robin: one of the first two clients is sent to "gone", fails over to "up".
    for i in 0..2 {
        assert!(connect_echo(warren.addr, i).await.is_some());
    }
    wait_for("gone down", 5 * SECOND, || {
        health_of(&warren, "gone") == Health::Down
    })
    .await;
    let record = warren.health.backend("default", "gone").unwrap();
    assert_eq!(
        record.changed_reason.as_deref(),
        Some("failed connect from the data path (refused)")
    );
    let (code, body) = http(admin, "GET", "/v1/status", None, b"").await;
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains(r#""health":"down","health_changed_at":"#)
            && body.contains(r#""health_reason":"failed connect from the data path (refused)""#),
        "{body}"
    );
    warren.stop().await;
}

/// `on_down = "close"` closes connections only on a probe's verdict: failed client connects
/// count toward `fall` too, but they say a node is full or slow, and closing its healthy
/// connections would push a reconnect storm on. Here probes are too rare to run during the
/// test, and two refused client connects take a down: its open connections stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_down_close_ignores_a_down_that_client_connects_caused() {
    let a = spawn_tagged(0).await;
    let b = spawn_tagged(1).await;
    let mut cfg = config(
        Balance::RoundRobin,
        vec![backend("a", a.addr), backend("b", b.addr)],
    );
    // Probes every hour: none runs during the test (backends start `unknown`, taking
    // connections), so only client connects can take a down.
    cfg.pools[0].health = Some(tcp_health(3_600_000, 500, 1, 2));
    cfg.pools[0].on_down = OnDown::Close;
    let warren = Warren::start(cfg, quick());
    let mut to_a = Vec::new();
    while to_a.len() < 2 {
        let (id, s) = which_backend(warren.addr).await;
        if id == 0 {
            to_a.push(s);
        }
    }
    // a stops accepting: the next client connects to it are refused (then fail over to b).
    drop(a);
    let mut tries = 0;
    while health_of(&warren, "a") != Health::Down {
        tries += 1;
        assert!(tries <= 20, "a never marked down by failed connects");
        let _ = which_backend(warren.addr).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for s in &mut to_a {
        assert!(echo_once(s, 5).await, "a's open connections are kept");
    }
    assert_eq!(
        warren.metric_or_zero(
            r#"warren_connections_closed_total{listener="default",reason="backend_down"}"#
        ),
        0.0
    );
    warren.stop().await;
}

/// The RabbitMQ maintenance lookup (README, "RabbitMQ's own maintenance mode") is asked at the
/// first refused probe of a backend and then reused while its probes stay refused the same way,
/// not repeated at every probe: a stopped node must not cost its cluster's management APIs
/// requests at every interval for as long as it is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_maintenance_lookup_is_not_repeated_at_every_refused_probe() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    // A management API that knows nothing (404 to every request), counting the requests.
    let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_addr = api.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = requests.clone();
    let server = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = api.accept().await else {
                continue;
            };
            counted.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(
                    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await;
        }
    });
    let b = spawn_tagged(1).await;
    let mut backends = vec![backend("a", refused_addr()), backend("b", b.addr)];
    for backend in &mut backends {
        backend.management = Some(warren::config::ManagementEndpoint {
            url: warren::http_client::HttpUrl::parse(&format!("http://{api_addr}")).unwrap(),
            user: None,
            password: None,
            password_file: None,
            timeout: Duration::from_millis(500),
        });
    }
    let mut cfg = config(Balance::RoundRobin, backends);
    cfg.pools[0].health = Some(tcp_health(100, 100, 1, 1));
    let warren = Warren::start(cfg, quick());
    let probes = r#"warren_health_checks_total{backend="a",pool="default",result="failed"}"#;
    wait_for("15 refused probes of a", 10 * SECOND, || {
        warren.metric_or_zero(probes) >= 15.0
    })
    .await;
    let asked = requests.load(Ordering::SeqCst);
    println!("15 refused probes, {asked} management requests");
    // One lookup is at most 3 requests (the node's is-in-service, a peer's overview and its
    // node); asked at the 1st and the 12th probe at most.
    assert!(
        asked <= 6,
        "{asked} management requests for 15 refused probes"
    );
    assert!(asked >= 1, "the lookup ran");
    server.abort();
    warren.stop().await;
}

/// A TLS server with `certs`' server certificate that answers AMQP's protocol header with
/// `Connection.Start`, for probes of a pool with `[pool.NAME.tls]`.
async fn tls_broker(certs: &certs::Certs) -> Backend {
    use warren::tls::{parse_certificates, parse_private_key, read_file, FileRole};
    let chain = read_file(&certs.server_cert, FileRole::Certificate).unwrap();
    let chain = parse_certificates(&certs.server_cert, FileRole::Certificate, &chain).unwrap();
    let key = read_file(&certs.server_key, FileRole::Key).unwrap();
    let key = parse_private_key(&certs.server_key, &key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(warren::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    spawn_backend(move |stream| {
        let acceptor = acceptor.clone();
        async move {
            // A client that refuses the certificate ends here.
            let Ok(mut tls) = acceptor.accept(stream).await else {
                return;
            };
            let mut header = [0u8; 8];
            if tls.read_exact(&mut header).await.is_ok() {
                let _ = tls.write_all(&connection_start()).await;
                let _ = tls.flush().await;
            }
        }
    })
    .await
}

/// With `[pool.NAME.tls]`, the `amqp` probe speaks TLS: up with the CA that signed the
/// backend's certificate; with another CA down, the handshake's failure being the reason in
/// the health record and in `/v1/status` (`health_reason`, `last_probe.reason`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_probes_are_up_with_the_right_ca_and_say_why_with_another() {
    let Some(certs) = certs::Certs::generate("health-tls-probe") else {
        return;
    };
    let broker = tls_broker(&certs).await;
    let tls = |ca: &std::path::Path| {
        Some(warren::config::BackendTls {
            client: warren::tls::ClientTls::load(ca, None).unwrap(),
            server_name: rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            encrypt: warren::config::Encrypt::Terminated,
        })
    };
    let mut right = backend("right", broker.addr);
    right.tls = tls(&certs.ca);
    let mut wrong = backend("wrong", broker.addr);
    wrong.tls = tls(&certs.other_ca);
    let mut cfg = config(Balance::RoundRobin, vec![right, wrong]);
    cfg.pools[0].health = Some(HealthConfig {
        probe: Probe::Amqp,
        ..tcp_health(100, 1_000, 1, 1)
    });
    let warren = Warren::start(with_admin_api(cfg, None), quick());
    let admin = warren.admin.expect("admin API");
    wait_for("right up, wrong down", 10 * SECOND, || {
        health_of(&warren, "right") == Health::Up && health_of(&warren, "wrong") == Health::Down
    })
    .await;
    let reason = "TLS handshake failed: invalid peer certificate: UnknownIssuer";
    let record = warren.health.backend("default", "wrong").unwrap();
    assert_eq!(record.changed_reason.as_deref(), Some(reason));
    let (code, body) = http(admin, "GET", "/v1/status", None, b"").await;
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains(&format!(r#""health_reason":"{reason}""#))
            && body.contains(&format!(r#""reason":"{reason}""#))
            && body.contains("over TLS 1.3"),
        "{body}"
    );
    warren.stop().await;
}
