//! A backend that dies while a client's AMQP handshake goes through warren: while warren's
//! connect to it is in progress, after it accepted but before its first byte, and mid-handshake
//! after Connection.Start or Connection.Tune, each by FIN and by RST (what the kernel sends for
//! a SIGKILLed process's socket: FIN when nothing was left unread, RST otherwise), and a
//! backend host gone silent (no FIN, no RST). In every case warren must end the client's
//! connection within a bound, pass on exactly the broker's bytes and how it ended, and never
//! replay the client's bytes to another backend once one accepted them. A raw TCP client checks
//! that; lapin shows what a real client makes of it (its connect can hang by itself, see
//! [`lapin_alone_can_hang_when_the_broker_dies_right_after_connection_tune`]).
//!
//! The fake broker speaks just the first frames of AMQP 0-9-1, hand-encoded (a few bytes).

mod common;

use std::io;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use warren::config::{Balance, Config};

const SECOND: Duration = Duration::from_secs(1);
/// What every client in this file must see its connection end within.
const BOUND: Duration = Duration::from_secs(5);
const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

/// A method frame on channel 0.
fn method_frame(class: u16, method: u16, args: &[u8]) -> Vec<u8> {
    let mut payload = Vec::new();
    payload.extend_from_slice(&class.to_be_bytes());
    payload.extend_from_slice(&method.to_be_bytes());
    payload.extend_from_slice(args);
    let mut frame = vec![1, 0, 0];
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&payload);
    frame.push(0xCE);
    frame
}

fn long_string(s: &str) -> Vec<u8> {
    let mut out = (s.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(s.as_bytes());
    out
}

/// Connection.Start: 0-9, no server properties, PLAIN, en_US.
fn connection_start() -> Vec<u8> {
    let mut args = vec![0, 9];
    args.extend_from_slice(&0u32.to_be_bytes());
    args.extend_from_slice(&long_string("PLAIN"));
    args.extend_from_slice(&long_string("en_US"));
    method_frame(10, 10, &args)
}

/// Connection.Tune: channel_max 2047, frame_max 128 KiB, heartbeat 0.
fn connection_tune() -> Vec<u8> {
    let mut args = 2047u16.to_be_bytes().to_vec();
    args.extend_from_slice(&131_072u32.to_be_bytes());
    args.extend_from_slice(&0u16.to_be_bytes());
    method_frame(10, 30, &args)
}

/// Read one whole frame; its (class, method) when it is a method frame.
async fn read_frame(s: &mut TcpStream) -> io::Result<(u16, u16)> {
    let mut header = [0u8; 7];
    s.read_exact(&mut header).await?;
    let size = u32::from_be_bytes(header[3..7].try_into().unwrap()) as usize;
    let mut rest = vec![0u8; size + 1];
    s.read_exact(&mut rest).await?;
    let class = u16::from_be_bytes([rest[0], rest[1]]);
    let method = u16::from_be_bytes([rest[2], rest[3]]);
    Ok((class, method))
}

/// Where in the handshake the fake broker dies.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stage {
    /// Accepted and read the protocol header, sent nothing.
    BeforeStart,
    /// Sent Connection.Start.
    AfterStart,
    /// Read Start-Ok and sent Connection.Tune.
    AfterTune,
}

/// How it dies: what the kernel sends for a killed process's socket.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Death {
    /// Its socket closed with nothing unread: a FIN (bytes that come later get a RST).
    Fin,
    /// Closed with SO_LINGER 0, as with bytes left unread: a RST.
    Reset,
}

/// A fake broker that runs the handshake up to `stage`, then dies by `death` at once.
async fn dying_broker(stage: Stage, death: Death) -> Backend {
    spawn_backend(move |mut s| async move {
        let mut header = [0u8; 8];
        if s.read_exact(&mut header).await.is_err() || &header != PROTOCOL_HEADER {
            return;
        }
        if stage != Stage::BeforeStart {
            s.write_all(&connection_start()).await.unwrap();
        }
        if stage == Stage::AfterTune {
            assert_eq!(read_frame(&mut s).await.unwrap(), (10, 11), "Start-Ok");
            s.write_all(&connection_tune()).await.unwrap();
        }
        if death == Death::Reset {
            socket2::SockRef::from(&s)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
        }
    })
    .await
}

/// How a client's connection ended.
#[derive(Debug, PartialEq)]
enum Ended {
    Eof,
    Reset,
}

/// Read until the connection ends; panics unless it ends within [`BOUND`]. Returns what was
/// read and how it ended.
async fn read_until_closed(s: &mut TcpStream) -> (Vec<u8>, Ended) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + BOUND;
    loop {
        let read = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the client's connection still open after {BOUND:?} ({} bytes read)",
                    got.len()
                )
            });
        match read {
            Ok(0) => return (got, Ended::Eof),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return (got, Ended::Reset),
            Err(e) => panic!("unexpected read error {e}"),
        }
    }
}

/// A pool of `primary`, and a backup `spare` that a failover would go to.
fn with_spare(primary: &Backend, spare: &Backend) -> Config {
    let mut spare = backend("spare", spare.addr);
    spare.backup = true;
    config(Balance::RoundRobin, vec![backend("b", primary.addr), spare])
}

/// Wait until warren has ended every connection of its listener (its side too, not only
/// half-closed towards the client).
async fn no_connection_left(warren: &Warren) {
    wait_for("warren to end the connection", BOUND, || {
        warren.metric(r#"warren_listener_connections_active{listener="default"}"#) == 0.0
    })
    .await;
}

/// A raw client through warren to a broker dying at `stage` by `death`: it sees exactly the
/// broker's frames, then the end of the connection, of the same kind (FIN as EOF, RST as a
/// reset); the spare never hears of it.
async fn raw_client_sees_the_death(stage: Stage, death: Death) {
    let broker = dying_broker(stage, death).await;
    let spare = spawn_tagged(9).await;
    let warren = Warren::start(with_spare(&broker, &spare), quick());
    let mut client = TcpStream::connect(warren.addr).await.unwrap();
    client.write_all(PROTOCOL_HEADER).await.unwrap();
    let mut want = Vec::new();
    if stage != Stage::BeforeStart {
        want = connection_start();
    }
    if stage == Stage::AfterTune {
        let mut start = vec![0u8; want.len()];
        client.read_exact(&mut start).await.unwrap();
        assert_eq!(start, want);
        let start_ok = method_frame(10, 11, b"a Start-Ok the fake does not parse");
        client.write_all(&start_ok).await.unwrap();
        want = connection_tune();
    }
    let started = Instant::now();
    let (got, ended) = read_until_closed(&mut client).await;
    println!(
        "{stage:?} {death:?}: {} bytes, then {ended:?} after {:?}",
        got.len(),
        started.elapsed()
    );
    assert_eq!(
        got, want,
        "{stage:?} {death:?}: the broker's bytes, exactly"
    );
    let expected = match death {
        Death::Fin => Ended::Eof,
        Death::Reset => Ended::Reset,
    };
    assert_eq!(ended, expected, "{stage:?} {death:?}");
    drop(client);
    no_connection_left(&warren).await;
    assert_eq!(broker.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(
        spare.accepted.load(Ordering::SeqCst),
        0,
        "no second backend after one accepted the client's bytes"
    );
    warren.stop().await;
}

#[tokio::test]
async fn a_broker_dying_before_any_byte_ends_the_client_by_fin() {
    raw_client_sees_the_death(Stage::BeforeStart, Death::Fin).await;
}

#[tokio::test]
async fn a_broker_dying_before_any_byte_ends_the_client_by_reset() {
    raw_client_sees_the_death(Stage::BeforeStart, Death::Reset).await;
}

#[tokio::test]
async fn a_broker_dying_after_connection_start_ends_the_client_by_fin() {
    raw_client_sees_the_death(Stage::AfterStart, Death::Fin).await;
}

#[tokio::test]
async fn a_broker_dying_after_connection_start_ends_the_client_by_reset() {
    raw_client_sees_the_death(Stage::AfterStart, Death::Reset).await;
}

#[tokio::test]
async fn a_broker_dying_after_connection_tune_ends_the_client_by_fin() {
    raw_client_sees_the_death(Stage::AfterTune, Death::Fin).await;
}

#[tokio::test]
async fn a_broker_dying_after_connection_tune_ends_the_client_by_reset() {
    raw_client_sees_the_death(Stage::AfterTune, Death::Reset).await;
}

/// The node dies while warren's connect to it is in progress: the SYN is unanswered (a full
/// accept queue drops it), then the listener goes away with the process, so the retransmitted
/// SYN is refused. warren has read nothing of the client yet: the client's protocol header,
/// sent before warren connected, reaches the spare whole and once.
#[tokio::test]
async fn a_broker_dying_during_the_connect_fails_over_with_the_clients_bytes_intact() {
    let dying = silent_peer();
    let spare = spawn_backend(|mut s| async move {
        let mut header = [0u8; 8];
        s.read_exact(&mut header).await.unwrap();
        s.write_all(&header).await.unwrap();
        // Anything more than the header would be a replay.
        let mut more = Vec::new();
        let _ = s.read_to_end(&mut more).await;
        assert!(more.is_empty(), "bytes after the header: {more:?}");
    })
    .await;
    let mut cfg = with_spare(&spare, &spare);
    cfg.pools[0].backends[0] = backend("b", dying.addr);
    let cfg = with_listener(cfg, |l| l.connect_timeout = 10 * SECOND);
    let warren = Warren::start(cfg, quick());
    let mut client = TcpStream::connect(warren.addr).await.unwrap();
    client.write_all(PROTOCOL_HEADER).await.unwrap();
    let connecting = r#"warren_backend_connections_connecting{backend="b",pool="default"}"#;
    wait_for(
        "warren's connect to the node to be in progress",
        BOUND,
        || warren.metric(connecting) == 1.0,
    )
    .await;
    let started = Instant::now();
    drop(dying);
    let mut echoed = [0u8; 8];
    tokio::time::timeout(BOUND, client.read_exact(&mut echoed))
        .await
        .expect("the spare answers within the bound, long before connect_timeout")
        .unwrap();
    println!("failed over {:?} after the node died", started.elapsed());
    assert_eq!(&echoed, PROTOCOL_HEADER);
    assert_eq!(
        warren.metric(
            r#"warren_backend_connect_failures_total{backend="b",pool="default",reason="refused"}"#
        ),
        1.0
    );
    client.shutdown().await.unwrap();
    assert_eq!(
        read_until_closed(&mut client).await,
        (Vec::new(), Ended::Eof)
    );
    assert_eq!(spare.accepted.load(Ordering::SeqCst), 1);
    warren.stop().await;
}

/// The node's host is gone without a word (no FIN, no RST) after it accepted: warren's
/// `idle_timeout` is what ends the client, the only bound there is before heartbeats are tuned.
#[tokio::test]
async fn a_broker_gone_silent_after_accepting_is_ended_by_idle_timeout() {
    let silent = spawn_backend(|mut s| async move {
        let mut all = Vec::new();
        let _ = s.read_to_end(&mut all).await;
    })
    .await;
    let cfg = with_listener(
        config(Balance::RoundRobin, vec![backend("b", silent.addr)]),
        |l| l.idle_timeout = Duration::from_millis(500),
    );
    let warren = Warren::start(cfg, quick());
    let mut client = TcpStream::connect(warren.addr).await.unwrap();
    client.write_all(PROTOCOL_HEADER).await.unwrap();
    let started = Instant::now();
    let (got, _) = read_until_closed(&mut client).await;
    let took = started.elapsed();
    assert!(got.is_empty());
    assert!(took >= Duration::from_millis(450), "ended after {took:?}");
    assert_eq!(
        warren.metric(r#"warren_connections_closed_total{listener="default",reason="idle"}"#),
        1.0
    );
    warren.stop().await;
}

/// A silent host as the only backend (its SYNs go unanswered): the client is closed once
/// `connect_timeout` has passed.
#[tokio::test]
async fn a_broker_host_gone_silent_before_the_connect_closes_the_client_after_connect_timeout() {
    let silent = silent_peer();
    let cfg = with_listener(
        config(Balance::RoundRobin, vec![backend("b", silent.addr)]),
        |l| l.connect_timeout = Duration::from_millis(500),
    );
    let warren = Warren::start(cfg, quick());
    let mut client = TcpStream::connect(warren.addr).await.unwrap();
    client.write_all(PROTOCOL_HEADER).await.unwrap();
    let started = Instant::now();
    let (got, _) = read_until_closed(&mut client).await;
    let took = started.elapsed();
    assert!(got.is_empty());
    assert!(took >= Duration::from_millis(450), "closed after {took:?}");
    assert_eq!(
        warren.metric(r#"warren_listener_rejected_total{listener="default",reason="no_backend"}"#),
        1.0
    );
    warren.stop().await;
}

/// Try lapin's connect to `addr` (a broker that dies right after Connection.Tune) up to 20
/// times; returns the pending connect of the first try that has not returned within 2 s, with
/// the number of tries, or `None` when every try returned. `after_each` runs once a try is
/// under way long enough to have met the broker's death.
async fn a_hung_lapin_connect(
    addr: std::net::SocketAddr,
    mut after_each: impl AsyncFnMut(),
) -> Option<(
    tokio::task::JoinHandle<lapin::Result<lapin::Connection>>,
    usize,
)> {
    for tries in 1..=20 {
        let uri = format!("amqp://guest:guest@{addr}/%2f");
        let mut connect = tokio::spawn(async move {
            lapin::Connection::connect(&uri, lapin::ConnectionProperties::default()).await
        });
        after_each().await;
        match tokio::time::timeout(2 * SECOND, &mut connect).await {
            Ok(returned) => {
                let error = returned
                    .unwrap()
                    .expect_err("the broker dies: no connection");
                println!("try {tries}: lapin returned {error}");
            }
            Err(_) => return Some((connect, tries)),
        }
    }
    None
}

/// lapin 4.12.3 itself, with no warren in between. When the broker dies right after
/// Connection.Tune and lapin reads the Tune and the EOF in one go, handling the Tune moves the
/// connect's promise into a task that is to send Tune-Ok and Open; the I/O loop then sees the
/// EOF, finds no handshake step to fail (`set_connection_error` → `connection_resolver(0)` is
/// `None`) and poisons the frame queue; the task's Tune-Ok is refused, the task ends, and the
/// promise is dropped unresolved: `Connection::connect` never returns. This is the hang of
/// tests/cluster.rs (whose connects are bounded since 9769f3e).
///
/// The broker behind warren: at every try warren has passed on the Tune and the end of the
/// connection and ended its own side, so in the tries where lapin's connect hangs nothing of
/// warren keeps the client waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warren_ends_its_side_while_lapins_connect_hangs() {
    let broker = dying_broker(Stage::AfterTune, Death::Fin).await;
    let warren = Warren::start(
        config(Balance::RoundRobin, vec![backend("b", broker.addr)]),
        quick(),
    );
    let mut tries = 0usize;
    let hung = a_hung_lapin_connect(warren.addr, async || {
        tries += 1;
        let series = r#"warren_connections_closed_total{listener="default",reason="backend"}"#;
        let want = tries as f64;
        wait_for(
            "warren to count the connection closed by the backend",
            BOUND,
            || warren.metric_or_zero(series) == want,
        )
        .await;
        no_connection_left(&warren).await;
    })
    .await;
    // Warren's side was checked at every try; lapin hangs in most of them (not ours to test).
    if let Some((connect, tries)) = hung {
        println!("lapin's connect hung at try {tries}, warren's side ended");
        connect.abort();
    }
    warren.stop().await;
}
