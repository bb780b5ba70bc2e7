//! Upgrading warren itself, phase 2 (issue 18): `warren upgrade` hands every ESTABLISHED
//! connection to the new process too. Each test runs the built binary as an operator does,
//! with clients that send a pseudorandom stream (xorshift, seeded per connection) and compare
//! every byte that comes back: 1,000 and 5,000 echo connections during an upgrade, a bulk
//! transfer cut in the middle on the splice path and on the copy path, a failing new binary, a
//! config that fails to load and a new process that dies while taking connections (the old
//! process keeps them all), and a drain deadline carried over. Each test states its criterion
//! as numbers; times (the hand-over, the longest pause a client saw) are printed, not asserted.
//! The tests take turns: each is thousands of sockets and two warren processes on a 2-core box.
#![cfg(target_os = "linux")]

mod common;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use common::*;

/// One test at a time.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The deterministic byte stream of one connection: xorshift64* words, eight bytes each, so
/// the sender and the checker agree on every byte whatever the chunking.
struct StreamGen {
    rng: XorShift,
    word: [u8; 8],
    used: usize,
}

impl StreamGen {
    fn new(seed: u64) -> StreamGen {
        StreamGen {
            rng: XorShift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
            word: [0; 8],
            used: 8,
        }
    }

    fn next_byte(&mut self) -> u8 {
        if self.used == 8 {
            self.word = self.rng.next_u64().to_le_bytes();
            self.used = 0;
        }
        self.used += 1;
        self.word[self.used - 1]
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.next_byte();
        }
    }

    /// The offset (from `at`) of the first byte of `got` that differs from the stream.
    fn check(&mut self, got: &[u8], at: u64) -> Option<u64> {
        let mut first = None;
        for (i, &b) in got.iter().enumerate() {
            if self.next_byte() != b && first.is_none() {
                first = Some(at + i as u64);
            }
        }
        first
    }
}

// ---------------------------------------------------------------------------------------------
// Echo streams: many connections, each sending small chunks and checking the echo.

/// What one echo-stream connection saw.
#[derive(Debug, Default)]
struct StreamReport {
    sent: u64,
    echoed: u64,
    /// The first offset where the echo differed from what was sent (lost, reordered, foreign).
    mismatch: Option<u64>,
    /// Why the connection stopped before every byte sent came back.
    ended: Option<String>,
    /// The longest wait from a chunk's send to the echo of its last byte, and when it was sent,
    /// per [`Phase`] (setup excluded).
    longest: [Duration; 2],
    longest_at: [Option<Instant>; 2],
}

/// What the test is doing when a chunk is sent: pauses are measured per phase.
#[derive(Clone, Copy, PartialEq)]
#[repr(u8)]
enum Phase {
    /// Opening connections (a storm of connects): not measured.
    Setup = 0,
    /// Steady traffic before the upgrade: the baseline.
    Before = 1,
    /// From the upgrade's start on.
    Upgrade = 2,
}

/// Connections sending a checksummed stream to an echo backend through warren.
struct EchoStreams {
    /// Set: send no more, wait for the echo of what was sent.
    stop: Arc<AtomicBool>,
    /// The current [`Phase`].
    phase: Arc<AtomicU8>,
    tasks: Vec<JoinHandle<(StreamReport, TcpStream)>>,
}

/// Longest wait for the echo of the last chunks once sending stops.
const ECHO_DRAIN: Duration = Duration::from_secs(20);

impl EchoStreams {
    /// Open `n` connections through warren at `addr` to `backend`, each sending a chunk of
    /// 1-64 bytes every `every` (at a random phase); panics if a connect fails. At most 100
    /// connect at once, each batch reaching the backend before the next starts: a burst of
    /// thousands overflows a listen queue (syncookies, a SYN retransmitted after 1 s, a reset).
    async fn open(addr: SocketAddr, backend: &Backend, n: usize, every: Duration) -> EchoStreams {
        let stop = Arc::new(AtomicBool::new(false));
        let phase = Arc::new(AtomicU8::new(Phase::Setup as u8));
        let mut tasks = Vec::with_capacity(n);
        let already = backend.open.load(Ordering::SeqCst);
        for batch in (0..n).collect::<Vec<_>>().chunks(100) {
            let connects: Vec<_> = batch
                .iter()
                .map(|_| tokio::spawn(tokio::time::timeout(ECHO_DRAIN, TcpStream::connect(addr))))
                .collect();
            for (&id, connect) in batch.iter().zip(connects) {
                let socket = connect
                    .await
                    .unwrap()
                    .unwrap_or_else(|_| panic!("connect {id} timed out"))
                    .unwrap_or_else(|e| panic!("connect {id}: {e}"));
                let (stop, phase) = (stop.clone(), phase.clone());
                tasks.push(tokio::spawn(echo_stream(
                    socket, id as u64, every, stop, phase,
                )));
            }
            let want = already + tasks.len();
            let deadline = Instant::now() + ECHO_DRAIN;
            while backend.open.load(Ordering::SeqCst) < want {
                let open = backend.open.load(Ordering::SeqCst) - already;
                assert!(
                    Instant::now() < deadline,
                    "{open} of {} connections reached the backend within {ECHO_DRAIN:?}",
                    tasks.len()
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        EchoStreams { stop, phase, tasks }
    }

    fn enter(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::SeqCst);
    }

    /// Stop sending, wait for every echo; the reports and the still open connections.
    async fn finish(self) -> (Vec<StreamReport>, Vec<TcpStream>) {
        self.stop.store(true, Ordering::SeqCst);
        let mut reports = Vec::new();
        let mut sockets = Vec::new();
        for task in self.tasks {
            let (report, socket) = task.await.unwrap();
            reports.push(report);
            sockets.push(socket);
        }
        (reports, sockets)
    }
}

/// One connection of [`EchoStreams`].
async fn echo_stream(
    mut socket: TcpStream,
    id: u64,
    every: Duration,
    stop: Arc<AtomicBool>,
    phase: Arc<AtomicU8>,
) -> (StreamReport, TcpStream) {
    let (mut out, mut back) = (StreamGen::new(id), StreamGen::new(id));
    let mut lengths = XorShift(id.wrapping_mul(0x2545_f491) + 7);
    let mut pending: VecDeque<(u64, Instant, u8)> = VecDeque::new();
    let mut report = StreamReport::default();
    let mut buf = vec![0u8; 4096];
    let mut chunk = [0u8; 64];
    let mut next = Instant::now() + every.mul_f64((lengths.below(1000) as f64) / 1000.0);
    let mut stopped_at = None;
    let (mut r, mut w) = socket.split();
    loop {
        if stop.load(Ordering::SeqCst) {
            if report.echoed >= report.sent {
                break;
            }
            let since = *stopped_at.get_or_insert_with(Instant::now);
            next = since + ECHO_DRAIN;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {
                if stopped_at.is_some() {
                    report.ended = Some(format!("no echo of the last bytes within {ECHO_DRAIN:?}"));
                    break;
                }
                let len = 1 + lengths.below(64);
                out.fill(&mut chunk[..len]);
                if let Err(e) = w.write_all(&chunk[..len]).await {
                    report.ended = Some(format!("write: {e}"));
                    break;
                }
                report.sent += len as u64;
                pending.push_back((report.sent, Instant::now(), phase.load(Ordering::SeqCst)));
                next = (next + every).max(Instant::now());
            }
            read = r.read(&mut buf) => {
                let n = match read {
                    Ok(0) => { report.ended = Some("closed by the peer (EOF)".into()); break }
                    Err(e) => { report.ended = Some(format!("read: {e}")); break }
                    Ok(n) => n,
                };
                if let Some(at) = back.check(&buf[..n], report.echoed) {
                    report.mismatch.get_or_insert(at);
                }
                report.echoed += n as u64;
                if report.echoed > report.sent {
                    report.ended = Some(format!("{} bytes echoed of {} sent", report.echoed, report.sent));
                    break;
                }
                let now = Instant::now();
                while pending.front().is_some_and(|&(end, _, _)| end <= report.echoed) {
                    let (_, sent_at, phase) = pending.pop_front().unwrap();
                    let Some(p) = (phase as usize).checked_sub(1) else { continue };
                    if now - sent_at > report.longest[p] {
                        report.longest[p] = now - sent_at;
                        report.longest_at[p] = Some(sent_at);
                    }
                }
            }
        }
    }
    (report, socket)
}

/// Every connection intact: none ended, no byte differs, every byte sent came back; panics
/// naming the first few that failed. Returns the longest pause before the upgrade, and from its
/// start on with when its chunk was sent.
fn assert_intact(reports: &[StreamReport]) -> (Duration, Duration, Option<Instant>) {
    let bad: Vec<String> = reports
        .iter()
        .enumerate()
        .filter(|(_, r)| r.ended.is_some() || r.mismatch.is_some() || r.echoed != r.sent)
        .map(|(i, r)| {
            format!(
                "#{i}: sent {} echoed {} mismatch at {:?} ended {:?}",
                r.sent, r.echoed, r.mismatch, r.ended
            )
        })
        .collect();
    assert!(
        bad.is_empty(),
        "{} of {} connections broken, first: {:#?}",
        bad.len(),
        reports.len(),
        &bad[..bad.len().min(5)]
    );
    let idle: Vec<usize> = (0..reports.len())
        .filter(|&i| reports[i].sent == 0)
        .collect();
    assert!(idle.is_empty(), "connections that never sent: {idle:?}");
    let before = reports.iter().map(|r| r.longest[0]).max().unwrap();
    let worst = reports.iter().max_by_key(|r| r.longest[1]).unwrap();
    (before, worst.longest[1], worst.longest_at[1])
}

// ---------------------------------------------------------------------------------------------
// One warren process under test.

/// A config file for listener "amqp" → pool "rabbitmq" with these backends (b0, b1, ...).
struct Setup {
    dir: TempDir,
    config: PathBuf,
    addr: SocketAddr,
    admin: SocketAddr,
}

fn setup(name: &str, backends: &[SocketAddr]) -> Setup {
    let dir = TempDir::new(name);
    let (admin_port, port) = (free_port(), free_port());
    let config = dir.0.join("warren.toml");
    std::fs::write(
        &config,
        process_config(admin_port, None, port, backends, ""),
    )
    .unwrap();
    Setup {
        dir,
        config,
        addr: ([127, 0, 0, 1], port).into(),
        admin: ([127, 0, 0, 1], admin_port).into(),
    }
}

impl Setup {
    /// `EXE run --config CONFIG EXTRA...` with `env`, once it has logged "warren started".
    async fn start(&self, exe: &Path, extra: &[&str], env: &[(&str, &str)]) -> WarrenProc {
        let mut command = std::process::Command::new(exe);
        command.envs(env.iter().copied());
        let mut args = vec!["run", "--config", self.config.to_str().unwrap()];
        args.extend_from_slice(extra);
        let mut warren = WarrenProc::spawn_with(command, &args, self.dir.0.join("warren.log"));
        warren
            .logged("warren started", Duration::from_secs(10))
            .await;
        warren
    }

    /// The old process serves on: a new connect is echoed, the admin API answers, and it still
    /// holds the listening port.
    async fn still_served_by(&self, warren: &mut WarrenProc) {
        assert!(warren.exited().is_none(), "the old process exited");
        assert!(
            connect_echo(self.addr, 7).await.is_some(),
            "a new connect is not echoed"
        );
        let (code, _) = http(self.admin, "GET", "/v1/status", None, b"").await;
        assert_eq!(code, 200);
        assert!(listening_ports_of(warren.pid()).contains(&self.addr.port()));
    }
}

/// `at` − `from` in seconds, negative when `at` is earlier.
fn seconds_from(from: Instant, at: Instant) -> f64 {
    if at >= from {
        (at - from).as_secs_f64()
    } else {
        -(from - at).as_secs_f64()
    }
}

/// Sleep `d` (a phase of a test: traffic keeps flowing meanwhile).
async fn let_run(d: Duration) {
    tokio::time::sleep(d).await;
}

/// A successful upgrade (its first line printed): the new pid (killed when the guard drops),
/// how long the command took, and how long until the old process was gone (within 10 s).
async fn upgrade_ok(s: &Setup, warren: &mut WarrenProc) -> (Adopted, Duration, Duration) {
    let started = Instant::now();
    let (ok, stdout, stderr) = warren_upgrade(s.admin).await;
    let took = started.elapsed();
    assert!(ok, "warren upgrade failed: {stderr}");
    let pid = upgraded_pid(&stdout);
    let adopted = Adopted(pid);
    eprintln!("warren upgrade: {}", stdout.lines().next().unwrap_or(""));
    assert_ne!(pid, warren.pid());
    assert!(took < Duration::from_secs(30), "the upgrade took {took:?}");
    warren.wait_exit(Duration::from_secs(10)).await;
    (adopted, took, started.elapsed())
}

/// The connections the old process handed over and the new one adopted, from the log.
fn handed_and_adopted(warren: &WarrenProc) -> (u64, u64) {
    let log = warren.log_text();
    let handed = logged_number(&log, "upgrade: handed over ", " connections");
    let adopted = logged_number(&log, "upgrade: adopted ", " connections");
    match (handed, adopted) {
        (Some(h), Some(a)) => (h, a),
        _ => panic!(
            "no `upgrade: handed over N connections` / `upgrade: adopted N connections` in the log"
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Many connections during an upgrade.

/// `n` echo streams (a chunk every `every` each) and a connect loop through `warren upgrade`;
/// asserts the criterion of the two tests below and prints the times.
async fn many_connections_survive_an_upgrade(name: &str, n: usize, every: Duration) {
    let _turn = TURN.lock().await;
    let backend = spawn_backend(echo).await;
    let s = setup(name, &[backend.addr]);
    let mut warren = s.start(Path::new(WARREN_BIN), &[], &[]).await;
    let opened = Instant::now();
    let streams = EchoStreams::open(s.addr, &backend, n, every).await;
    assert_eq!(backend.open.load(Ordering::SeqCst), n);
    eprintln!("{n} connections open in {:?}", opened.elapsed());
    let_run(every * 3).await;
    streams.enter(Phase::Before);
    let stop = Arc::new(AtomicBool::new(false));
    let client = keep_connecting(s.addr, stop.clone(), Duration::from_millis(1));
    let_run(Duration::from_secs(1).max(every * 3)).await;
    streams.enter(Phase::Upgrade);
    let upgrade_started = Instant::now();
    let (adopted, took, old_gone) = upgrade_ok(&s, &mut warren).await;
    let_run(Duration::from_secs(1).max(every * 3)).await;
    stop.store(true, Ordering::SeqCst);
    let (connects, refused) = client.await.unwrap();
    let (reports, sockets) = streams.finish().await;
    let (baseline, longest, at) = assert_intact(&reports);
    let bytes: u64 = reports.iter().map(|r| r.echoed).sum();
    eprintln!(
        "{n} connections: upgrade command took {took:?}, old process gone after {old_gone:?}; \
         longest pause a client saw {longest:?} (its chunk sent {:+.3}s from the upgrade's \
         start; before the upgrade: {baseline:?}); {bytes} bytes echoed; {connects} connects ok, {refused} refused",
        at.map_or(0.0, |a| seconds_from(upgrade_started, a))
    );
    assert_eq!(
        refused, 0,
        "connects refused or unanswered during the upgrade"
    );
    assert!(connects > 10, "only {connects} connects in the loop");
    let listener = "warren_listener_connections_active{listener=\"amqp\"}";
    let per_backend = "warren_backend_connections_active{backend=\"b0\",pool=\"rabbitmq\"}";
    let mut seen = (0.0, 0.0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen != (n as f64, n as f64) && Instant::now() < deadline {
        let text = scrape_metrics(s.admin).await;
        seen = (
            metric_value(&text, listener),
            metric_value(&text, per_backend),
        );
        let_run(Duration::from_millis(100)).await;
    }
    assert_eq!(
        seen,
        (n as f64, n as f64),
        "the new process's active gauges (listener, backend)"
    );
    assert!(alive(adopted.0));
    let (handed, taken) = handed_and_adopted(&warren);
    assert_eq!(handed, taken, "handed over vs adopted");
    assert!(
        (n as u64..=n as u64 + 5).contains(&handed),
        "{handed} connections handed over, {n} open"
    );
    eprintln!("{n} connections: {handed} handed over, {taken} adopted");
    drop(sockets);
}

/// Criterion: 1,000 connections each sending a checksummed stream (1-64 bytes every 100 ms)
/// through `warren upgrade`, with a connect loop running: 0 connections closed, 0 bytes lost,
/// duplicated or reordered (every byte echoed once, in order), 0 connects refused; the command
/// exits 0 within 30 s, the old process exits within 10 s, both log 1,000 (≤ 1,005 with the
/// connect loop's) connections, and the new process's listener and backend active gauges read
/// 1,000. Prints the hand-over time and the longest pause a client saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_streaming_connections_survive_an_upgrade_byte_exact() {
    many_connections_survive_an_upgrade("conns-1000", 1_000, Duration::from_millis(100)).await;
}

/// Criterion: as for 1,000, with 5,000 connections (a chunk every 500 ms each): 0 closed, 0
/// bytes lost, duplicated or reordered, 0 connects refused, the gauges read 5,000, the command
/// exits 0 within 30 s. Prints the hand-over time and the longest pause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_streaming_connections_survive_an_upgrade_byte_exact() {
    many_connections_survive_an_upgrade("conns-5000", 5_000, Duration::from_millis(500)).await;
}

// ---------------------------------------------------------------------------------------------
// A bulk transfer cut in the middle.

/// Bytes each way.
const BULK: u64 = 256 << 20;
/// Each sender is paced to this rate, so the transfer lasts about 4 s and the upgrade (started
/// once a quarter has passed) lands in its middle.
const BULK_RATE: f64 = 64.0 * 1024.0 * 1024.0;
const UPLOAD_SEED: u64 = 0xdead_beef;
const DOWNLOAD_SEED: u64 = 0xfeed_face;

/// Write `BULK` bytes of the stream `seed`, paced, counting into `progress`; the CRC-32 sent.
async fn paced_send(
    w: &mut (impl AsyncWriteExt + Unpin),
    seed: u64,
    progress: &AtomicU64,
) -> std::io::Result<u32> {
    let mut stream = StreamGen::new(seed);
    let mut crc = crc32fast::Hasher::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < BULK {
        let due = started + Duration::from_secs_f64(sent as f64 / BULK_RATE);
        tokio::time::sleep_until(due).await;
        stream.fill(&mut chunk);
        crc.update(&chunk);
        w.write_all(&chunk).await?;
        sent += chunk.len() as u64;
        progress.store(sent, Ordering::SeqCst);
    }
    w.shutdown().await?;
    Ok(crc.finalize())
}

/// Read to EOF, checking every byte against the stream `seed`, counting into `progress`:
/// (length, CRC-32, first differing offset).
async fn checked_receive(
    r: &mut (impl AsyncReadExt + Unpin),
    seed: u64,
    progress: &AtomicU64,
) -> std::io::Result<(u64, u32, Option<u64>)> {
    let mut stream = StreamGen::new(seed);
    let mut crc = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    let (mut len, mut mismatch) = (0u64, None);
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok((len, crc.finalize(), mismatch));
        }
        crc.update(&buf[..n]);
        if let Some(at) = stream.check(&buf[..n], len) {
            mismatch.get_or_insert(at);
        }
        len += n as u64;
        progress.store(len, Ordering::SeqCst);
    }
}

/// The bulk backend: the first byte says which way. `U`: read to EOF, check, answer
/// length (8 bytes), CRC-32 (4) and the first differing offset (8, `u64::MAX` for none). `D`:
/// send the download stream, paced, then its CRC-32 is known to the client by recomputing it.
async fn bulk_backend(mut socket: TcpStream) {
    let mut mode = [0u8; 1];
    if socket.read_exact(&mut mode).await.is_err() {
        return;
    }
    let unused = AtomicU64::new(0);
    if mode[0] == b'U' {
        let Ok((len, crc, mismatch)) = checked_receive(&mut socket, UPLOAD_SEED, &unused).await
        else {
            return;
        };
        let mut answer = len.to_le_bytes().to_vec();
        answer.extend_from_slice(&crc.to_le_bytes());
        answer.extend_from_slice(&mismatch.unwrap_or(u64::MAX).to_le_bytes());
        let _ = socket.write_all(&answer).await;
        let _ = socket.shutdown().await;
    } else {
        let _ = paced_send(&mut socket, DOWNLOAD_SEED, &unused).await;
    }
}

/// The CRC-32 of the whole stream `seed` (what the receiver must have seen).
fn stream_crc(seed: u64) -> u32 {
    let mut stream = StreamGen::new(seed);
    let mut crc = crc32fast::Hasher::new();
    let mut chunk = vec![0u8; 64 * 1024];
    for _ in 0..BULK / chunk.len() as u64 {
        stream.fill(&mut chunk);
        crc.update(&chunk);
    }
    crc.finalize()
}

/// A 256 MiB upload and a 256 MiB download through warren forwarding by `method` (`splice`, or
/// `copy` with `--no-splice`), with `warren upgrade` once a quarter of each has passed: both
/// byte-exact (length, CRC-32, every byte compared), the upgrade over before either transfer,
/// and all but 1 MiB of each stream counted as forwarded by that method.
async fn a_bulk_transfer_survives_an_upgrade(name: &str, method: &str) {
    let extra: &[&str] = if method == "copy" {
        &["--no-splice"]
    } else {
        &[]
    };
    let _turn = TURN.lock().await;
    let backend = spawn_backend(bulk_backend).await;
    let s = setup(name, &[backend.addr]);
    let mut warren = s.start(Path::new(WARREN_BIN), extra, &[]).await;
    let (up, down) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut upload = TcpStream::connect(s.addr).await.unwrap();
    upload.write_all(b"U").await.unwrap();
    let progress = up.clone();
    let upload = tokio::spawn(async move {
        let crc = paced_send(&mut upload, UPLOAD_SEED, &progress).await;
        let mut answer = [0u8; 20];
        let read = upload.read_exact(&mut answer).await.map(|_| answer);
        (crc, read, Instant::now())
    });
    let mut download = TcpStream::connect(s.addr).await.unwrap();
    download.write_all(b"D").await.unwrap();
    let progress = down.clone();
    let download = tokio::spawn(async move {
        let got = checked_receive(&mut download, DOWNLOAD_SEED, &progress).await;
        (got, Instant::now())
    });
    wait_for(
        "a quarter of each transfer",
        Duration::from_secs(60),
        || up.load(Ordering::SeqCst) >= BULK / 4 && down.load(Ordering::SeqCst) >= BULK / 4,
    )
    .await;
    let at = (up.load(Ordering::SeqCst), down.load(Ordering::SeqCst));
    let before = Instant::now();
    let (_adopted, took, old_gone) = upgrade_ok(&s, &mut warren).await;
    let upgraded = before + took;
    let (crc, answer, upload_done) = tokio::time::timeout(Duration::from_secs(60), upload)
        .await
        .expect("the upload ends within 60 s")
        .unwrap();
    let sent_crc = crc.expect("the upload's writes");
    let answer = answer.expect("the backend's answer to the upload");
    let len = u64::from_le_bytes(answer[..8].try_into().unwrap());
    let backend_crc = u32::from_le_bytes(answer[8..12].try_into().unwrap());
    let mismatch = u64::from_le_bytes(answer[12..].try_into().unwrap());
    assert_eq!(
        (len, backend_crc, mismatch),
        (BULK, sent_crc, u64::MAX),
        "upload: (length, CRC-32, first differing offset) at the backend"
    );
    let (got, download_done) = tokio::time::timeout(Duration::from_secs(60), download)
        .await
        .expect("the download ends within 60 s")
        .unwrap();
    let (len, crc, mismatch) = got.expect("the download's reads");
    assert_eq!(
        (len, crc, mismatch),
        (BULK, stream_crc(DOWNLOAD_SEED), None),
        "download: (length, CRC-32, first differing offset) at the client"
    );
    eprintln!(
        "{name}: upgrade started at {} / {} MiB (up/down) of {} MiB, command took {took:?}, old \
         process gone after {old_gone:?}; transfers ended {:.2}s / {:.2}s after the upgrade; both \
         byte-exact",
        at.0 >> 20,
        at.1 >> 20,
        BULK >> 20,
        seconds_from(upgraded, upload_done),
        seconds_from(upgraded, download_done),
    );
    assert!(
        upgraded < upload_done && upgraded < download_done,
        "the upgrade ended after a transfer did"
    );
    let (handed, taken) = handed_and_adopted(&warren);
    assert_eq!((handed, taken), (2, 2), "connections handed over, adopted");
    // Counters continue across an upgrade (the old process's are carried), so the series count
    // the whole transfer: all but the first reads by `method`, the new process's three quarters
    // included.
    let text = scrape_metrics(s.admin).await;
    for direction in ["to_backend", "to_client"] {
        let bytes = |method: &str| {
            metric_or_zero(
                &text,
                &format!(
                    "warren_forwarded_bytes_total{{direction=\"{direction}\",method=\"{method}\"}}"
                ),
            )
        };
        let (ours, other) = if method == "splice" {
            (bytes("splice"), bytes("copy"))
        } else {
            (bytes("copy"), bytes("splice"))
        };
        eprintln!("new process {direction}: {ours} bytes by {method}, {other} by the other method");
        assert!(
            ours >= (BULK - (1 << 20)) as f64,
            "only {ours} bytes forwarded {direction} by {method}"
        );
        if method == "copy" {
            assert_eq!(other, 0.0, "splice used with --no-splice");
        }
    }
}

/// Criterion: a 256 MiB upload and a 256 MiB download (paced to 64 MiB/s each) on the splice
/// path, `warren upgrade` started once 64 MiB of each has passed and over before either ends:
/// both arrive byte-exact (length 268,435,456, same CRC-32, 0 bytes differing), 2 connections
/// handed over and adopted, ≥ 255 MiB each way counted as forwarded by splice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_transfer_on_the_splice_path_survives_an_upgrade() {
    a_bulk_transfer_survives_an_upgrade("bulk-splice", "splice").await;
}

/// Criterion: as on the splice path, with warren started with `--no-splice` (the copy path):
/// both transfers byte-exact, 2 connections handed over and adopted, the new process forwarded
/// ≥ 255 MiB each way counted as forwarded by copy and 0 bytes by splice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_transfer_on_the_copy_path_survives_an_upgrade() {
    a_bulk_transfer_survives_an_upgrade("bulk-copy", "copy").await;
}

// ---------------------------------------------------------------------------------------------
// Failed upgrades leave every connection with the old process.

/// `n` echo streams through a failing upgrade (`expect` in its stderr): every stream intact in
/// the old process, which serves on.
async fn a_failed_upgrade_keeps_every_connection(
    s: &Setup,
    backend: &Backend,
    warren: &mut WarrenProc,
    n: usize,
    expect: &[&str],
) {
    let streams = EchoStreams::open(s.addr, backend, n, Duration::from_millis(20)).await;
    let_run(Duration::from_millis(300)).await;
    streams.enter(Phase::Upgrade);
    let (ok, stdout, stderr) = warren_upgrade(s.admin).await;
    let _adopted = ok.then(|| Adopted(upgraded_pid(&stdout)));
    assert!(!ok, "warren upgrade succeeded: {stdout}");
    for needle in expect {
        assert!(stderr.contains(needle), "{needle:?} not in: {stderr}");
    }
    let_run(Duration::from_secs(1)).await;
    let (reports, sockets) = streams.finish().await;
    let (_, longest, _) = assert_intact(&reports);
    s.still_served_by(warren).await;
    eprintln!("{n} connections kept by the old process; longest pause {longest:?}");
    drop(sockets);
}

/// Criterion: with 50 echo streams open, the binary at warren's path exits 3 at once: the
/// command exits non-zero naming exit status 3; all 50 streams intact (0 closed, 0 bytes lost
/// or out of order); a new connect is echoed by the old process, which still listens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_binary_that_exits_at_once_leaves_every_connection_with_the_old_one() {
    let _turn = TURN.lock().await;
    let backend = spawn_backend(echo).await;
    let s = setup("conns-exit", &[backend.addr]);
    let exe = installed_copy("conns-exit");
    let mut warren = s.start(&exe, &[], &[]).await;
    install_script(&exe, "exit 3");
    a_failed_upgrade_keeps_every_connection(&s, &backend, &mut warren, 50, &["exit status: 3"])
        .await;
}

/// Criterion: with 50 echo streams open, the config no longer loads: the command exits
/// non-zero naming the file; all 50 streams intact; a new connect is echoed by the old process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_that_fails_to_load_leaves_every_connection_with_the_old_one() {
    let _turn = TURN.lock().await;
    let backend = spawn_backend(echo).await;
    let s = setup("conns-config", &[backend.addr]);
    let mut warren = s.start(Path::new(WARREN_BIN), &[], &[]).await;
    let good = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &s.config,
        good.replace("pool = \"rabbitmq\"", "pool = \"nosuch\""),
    )
    .unwrap();
    a_failed_upgrade_keeps_every_connection(
        &s,
        &backend,
        &mut warren,
        50,
        &["warren.toml", "nosuch"],
    )
    .await;
}

/// Criterion: `WARREN_HANDOVER_FAULT=exit_during_connections`: the new process exits 70 after
/// the first batch of connections, before confirming. With 300 echo streams flowing, the
/// command exits non-zero naming exit status 70; all 300 intact in the old process (0 closed,
/// 0 bytes lost or out of order); a new connect is echoed by it; it logs `upgrade failed` at
/// WARN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_process_dying_while_taking_connections_leaves_them_all_with_the_old_one() {
    let _turn = TURN.lock().await;
    let backend = spawn_backend(echo).await;
    let s = setup("conns-fault", &[backend.addr]);
    let fault = [("WARREN_HANDOVER_FAULT", "exit_during_connections")];
    let mut warren = s.start(Path::new(WARREN_BIN), &[], &fault).await;
    a_failed_upgrade_keeps_every_connection(&s, &backend, &mut warren, 300, &["exit status: 70"])
        .await;
    let log = warren.log_text();
    assert!(log.contains("WARN") && log.contains("upgrade failed; this process"));
}

// ---------------------------------------------------------------------------------------------
// A drain deadline carried over.

/// backend `name`'s entry in `/v1/status`.
async fn backend_status(admin: SocketAddr, name: &str) -> serde_json::Value {
    let (code, body) = http(admin, "GET", "/v1/status", None, b"").await;
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    status["pools"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == name)
        .unwrap_or_else(|| panic!("no backend {name} in {body}"))
        .clone()
}

/// Criterion: backends b0 and b1 with 20 connections each; b1 drained with a 6 s deadline and
/// warren upgraded 1 s later: the new process's /v1/status shows b1 `draining` with the same
/// `drain_deadline` string; b1's 20 connections are closed between deadline − 0.5 s and
/// deadline + 2 s; b0's 20 still echo after that; 20 new connects after the upgrade all reach b0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_deadline_in_progress_is_carried_to_the_new_process() {
    let _turn = TURN.lock().await;
    let (b0, b1) = (spawn_tagged(0).await, spawn_tagged(1).await);
    let s = setup("conns-drain", &[b0.addr, b1.addr]);
    let mut warren = s.start(Path::new(WARREN_BIN), &[], &[]).await;
    let (mut on0, mut on1) = (Vec::new(), Vec::new());
    for _ in 0..200 {
        if on0.len() == 20 && on1.len() == 20 {
            break;
        }
        let (id, socket) = which_backend(s.addr).await;
        match id {
            0 if on0.len() < 20 => on0.push(socket),
            1 if on1.len() < 20 => on1.push(socket),
            _ => {}
        }
    }
    assert_eq!((on0.len(), on1.len()), (20, 20));
    // Each of b1's connections: when it ends (EOF or error), or a byte it should not get.
    let closes: Vec<JoinHandle<Result<Instant, String>>> = on1
        .into_iter()
        .map(|mut socket| {
            tokio::spawn(async move {
                let mut buf = [0u8; 1];
                match tokio::time::timeout(Duration::from_secs(30), socket.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => Ok(Instant::now()),
                    Ok(Ok(_)) => Err(format!("got byte {} instead of a close", buf[0])),
                    Err(_) => Err("not closed within 30 s".into()),
                }
            })
        })
        .collect();
    let asked = Instant::now();
    let (code, body) = http(
        s.admin,
        "POST",
        "/v1/pools/rabbitmq/backends/b1/drain",
        None,
        br#"{"deadline": "6s"}"#,
    )
    .await;
    let answered = Instant::now();
    assert_eq!(code, 202, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    let deadline = answer["drain_deadline"].as_str().unwrap().to_owned();
    let_run(Duration::from_secs(1)).await;
    let (_adopted, took, _) = upgrade_ok(&s, &mut warren).await;
    let b1 = backend_status(s.admin, "b1").await;
    assert_eq!(b1["admin"], "draining", "{b1}");
    assert_eq!(b1["drain_deadline"], deadline.as_str(), "{b1}");
    for i in 0..20 {
        let (id, mut socket) = which_backend(s.addr).await;
        assert_eq!(id, 0, "new connection {i} went to b{id}");
        assert!(echo_once(&mut socket, i as u8).await);
    }
    let (earliest, latest) = (
        asked + Duration::from_millis(5_500),
        answered + Duration::from_secs(8),
    );
    for (i, close) in closes.into_iter().enumerate() {
        let at = close
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("b1 connection {i}: {e}"));
        assert!(
            at >= earliest && at <= latest,
            "b1 connection {i} closed {:.2}s after the drain request (deadline 6 s)",
            (at - asked).as_secs_f64()
        );
    }
    for (i, socket) in on0.iter_mut().enumerate() {
        assert!(echo_once(socket, i as u8).await, "b0 connection {i}");
    }
    eprintln!("drain deadline {deadline} carried over; upgrade took {took:?}");
}
