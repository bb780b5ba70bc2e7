//! Upgrading warren itself (issue 18, phase 2) under real AMQP clients: a one-node RabbitMQ
//! (`scripts/rabbitmq.sh`, on its own loopback address) behind a warren process, ten lapin
//! publishers with 2 s heartbeats and publisher confirms, and `warren upgrade` twice in a row.
//! Every connection must go through both hand-overs as if nothing happened: no connection or
//! channel error, every confirmed message in the queue. Skipped with a SKIP line when RabbitMQ
//! is missing; kept apart from tests/handover_conns.rs so CI can run it with the cluster suites.
#![cfg(target_os = "linux")]

mod common;
// Only part of the cluster helpers is used here.
#[allow(dead_code)]
#[path = "common/rabbit.rs"]
mod rabbit;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::{Connection, ConnectionProperties};
use tokio_util::sync::CancellationToken;

use common::*;
use rabbit::Cluster;

const QUEUE: &str = "warren-handover";
const CLIENTS: u64 = 10;

/// What one publisher saw: its confirmed ids with when, and every error.
#[derive(Default)]
struct Ledger {
    confirmed: Vec<(u64, Instant)>,
    errors: Vec<String>,
}

impl Ledger {
    fn confirms_since(&self, since: Instant) -> usize {
        self.confirmed.iter().filter(|(_, at)| *at > since).count()
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// Connect through `addr` with a 2 s heartbeat: a hand-over that stalls a connection for two
/// missed heartbeats (4 s) ends it.
async fn connect(addr: SocketAddr, name: &str) -> lapin::Result<Connection> {
    Connection::connect(
        &format!("amqp://guest:guest@{addr}/%2f?heartbeat=2"),
        ConnectionProperties::default().with_connection_name(name.into()),
    )
    .await
}

/// One publisher: one connection, one confirm channel, ids `client << 32 | n`, a publish every
/// 20 ms until `stop` (at most 3 minutes); any error is noted and ends it.
async fn publisher(
    addr: SocketAddr,
    client: u64,
    ledger: Arc<Mutex<Ledger>>,
    stop: CancellationToken,
) {
    let note = |e: String| ledger.lock().unwrap().errors.push(e);
    let connection = match connect(addr, &format!("warren-handover-{client}")).await {
        Ok(c) => c,
        Err(e) => return note(format!("connect: {e}")),
    };
    let mut events = connection.events_listener();
    let errors = ledger.clone();
    let watch = tokio::spawn(async move {
        while let Some(event) = events.next().await {
            if let lapin::Event::Error(e) = event {
                errors
                    .lock()
                    .unwrap()
                    .errors
                    .push(format!("connection: {e}"));
            }
        }
    });
    let channel = match rabbit::confirm_channel(&connection).await {
        Ok(c) => c,
        Err(e) => return note(format!("confirm channel: {e}")),
    };
    let started = Instant::now();
    for n in 0u64.. {
        if stop.is_cancelled() || started.elapsed() > Duration::from_secs(180) {
            break;
        }
        let id = client << 32 | n;
        let sent = tokio::time::timeout(
            rabbit::CLIENT_TIMEOUT,
            rabbit::publish_confirmed(&channel, QUEUE, &id.to_le_bytes()),
        )
        .await;
        match sent {
            Ok(Ok(true)) => ledger.lock().unwrap().confirmed.push((id, Instant::now())),
            Ok(Ok(false)) => return note(format!("id {id} nacked")),
            Ok(Err(e)) => return note(format!("id {id}: {e}")),
            Err(_) => {
                return note(format!(
                    "id {id}: no confirm within {:?}",
                    rabbit::CLIENT_TIMEOUT
                ))
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Err(e) = connection.close(200, "client done".into()).await {
        note(format!("close: {e}"));
    }
    watch.abort();
}

/// Wait until every client has at least `n` confirms after `since`; panics after 30 s.
async fn every_client_confirms(ledgers: &[Arc<Mutex<Ledger>>], n: usize, since: Instant) {
    wait_for(
        &format!("{n} confirms from every client"),
        Duration::from_secs(30),
        || {
            ledgers.iter().all(|l| {
                let l = l.lock().unwrap();
                assert!(l.errors.is_empty(), "a client failed: {:?}", l.errors);
                l.confirms_since(since) >= n
            })
        },
    )
    .await;
}

/// Consume the queue straight from the node until every id in `confirmed` came or nothing came
/// for 10 s (at most 2 minutes); the ids consumed.
async fn consume_everything(node: SocketAddr, confirmed: &HashSet<u64>) -> HashSet<u64> {
    let connection = rabbit::connect(node, "warren-handover-check")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut deliveries = rabbit::consume(&channel, QUEUE, 1000).await.unwrap();
    let mut consumed = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !confirmed.is_subset(&consumed) && Instant::now() < deadline {
        let next = tokio::time::timeout(Duration::from_secs(10), deliveries.next()).await;
        let Ok(Some(Ok(delivery))) = next else { break };
        consumed.insert(u64::from_le_bytes(delivery.data[..8].try_into().unwrap()));
        rabbit::ack(&delivery).await.unwrap();
    }
    let _ = connection.close(200, "done".into()).await;
    consumed
}

/// Criterion: 10 lapin connections (heartbeat 2 s) publishing with confirms through warren, and
/// `warren upgrade` twice in a row (old → new → newer): both commands exit 0 and the processes
/// they replace exit within 10 s; each upgrade logs 10 connections handed over and adopted;
/// 0 connection or channel errors; every client has ≥ 20 confirms after each upgrade and keeps
/// publishing ≥ 5 s (two heartbeat timeouts) past the second; every confirmed message is in the
/// queue (consumed straight from the node).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_publishers_with_confirms_go_through_two_upgrades_without_an_error() {
    if !rabbit::available("amqp_publishers_with_confirms_go_through_two_upgrades_without_an_error")
    {
        return;
    }
    let cluster = Arc::new(blocking(|| Cluster::start("hv", 1, &[])).await);
    let node = cluster.nodes[0].clone();
    {
        let direct = rabbit::connect(node.amqp, "warren-handover-setup")
            .await
            .unwrap();
        let channel = direct.create_channel().await.unwrap();
        rabbit::declare(&channel, QUEUE, false).await.unwrap();
        let _ = direct.close(200, "declared".into()).await;
    }
    let dir = TempDir::new("handover-rabbit");
    let (admin_port, port) = (free_port(), free_port());
    let config = dir.0.join("warren.toml");
    std::fs::write(
        &config,
        process_config(admin_port, None, port, &[node.amqp], ""),
    )
    .unwrap();
    let (addr, admin): (SocketAddr, SocketAddr) = (
        ([127, 0, 0, 1], port).into(),
        ([127, 0, 0, 1], admin_port).into(),
    );
    let mut warren = WarrenProc::run_config(&config, dir.0.join("warren.log")).await;

    let stop = CancellationToken::new();
    let ledgers: Vec<Arc<Mutex<Ledger>>> = (0..CLIENTS).map(|_| Arc::default()).collect();
    let clients: Vec<_> = ledgers
        .iter()
        .enumerate()
        .map(|(i, l)| tokio::spawn(publisher(addr, i as u64, l.clone(), stop.clone())))
        .collect();
    let start = Instant::now();
    every_client_confirms(&ledgers, 20, start).await;

    let first = Instant::now();
    let (ok, stdout, stderr) = warren_upgrade(admin).await;
    assert!(ok, "first upgrade: {stderr}");
    let new = Adopted(upgraded_pid(&stdout));
    let took1 = first.elapsed();
    warren.wait_exit(Duration::from_secs(10)).await;
    every_client_confirms(&ledgers, 20, first + took1).await;

    let second = Instant::now();
    let (ok, stdout, stderr) = warren_upgrade(admin).await;
    assert!(ok, "second upgrade: {stderr}");
    let _newer = Adopted(upgraded_pid(&stdout));
    let took2 = second.elapsed();
    wait_gone(new.0, Duration::from_secs(10)).await;
    every_client_confirms(&ledgers, 20, second + took2).await;
    wait_for(
        "5 s past the second upgrade",
        Duration::from_secs(10),
        || second.elapsed() > took2 + Duration::from_secs(5),
    )
    .await;
    every_client_confirms(&ledgers, 1, second + took2 + Duration::from_secs(4)).await;

    stop.cancel();
    for client in clients {
        tokio::time::timeout(Duration::from_secs(30), client)
            .await
            .expect("a publisher stops within 30 s")
            .unwrap();
    }
    let mut confirmed = HashSet::new();
    for (i, ledger) in ledgers.iter().enumerate() {
        let l = ledger.lock().unwrap();
        assert!(l.errors.is_empty(), "client {i}: {:?}", l.errors);
        confirmed.extend(l.confirmed.iter().map(|(id, _)| *id));
    }
    let log = warren.log_text();
    let count = |needle: &str| log.matches(needle).count();
    assert_eq!(
        (
            count("upgrade: handed over 10 connections"),
            count("upgrade: adopted 10 connections")
        ),
        (2, 2),
        "hand-over log lines"
    );
    let consumed = consume_everything(node.amqp, &confirmed).await;
    let missing = confirmed.difference(&consumed).count();
    eprintln!(
        "{} confirmed, {} consumed, {missing} missing; upgrades took {took1:?} and {took2:?}",
        confirmed.len(),
        consumed.len()
    );
    assert_eq!(missing, 0, "confirmed messages not in the queue");
}
