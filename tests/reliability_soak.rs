//! Reliability, soaks: 1,000,000 connect/close cycles (20,000 without `WARREN_SOAK=1`) with
//! warren's memory and descriptors back at their baseline after; and 5,000 idle connections through warren running as an unprivileged user:
//! all stay open, none holds a splice pipe (read from warren's own gauge), the memory each one
//! costs is measured and printed, and a heartbeat-sized soak (every connection, every second;
//! 10 s, or 5 minutes with `WARREN_SOAK=1`) drops none.
//!
//! Descriptors are the constraint: the hard limit here is 20,000 per process and warren holds two
//! per connection, so warren, the backend and the clients are three processes. warren is the
//! built binary (run through `setpriv` as user nobody when the test runs as root); the backend is
//! this test binary re-run with `backend_process` selected; the clients live in the test itself.
#![cfg(target_os = "linux")]

mod common;

use std::ffi::OsStr;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use common::free_port;

const WARREN: &str = env!("CARGO_BIN_EXE_warren");
/// Set for the re-run test binary: where `backend_process` writes its port.
const BACKEND_PORT_FILE_ENV: &str = "WARREN_IDLE_BACKEND_PORT_FILE";

const CONNECTIONS: usize = 5_000;
/// The heartbeat soak: always this long, and `SOAK_LONG` with `WARREN_SOAK=1`.
const SOAK_SHORT: Duration = Duration::from_secs(10);
const SOAK_LONG: Duration = Duration::from_secs(300);
/// Connections opened (or probed) together before waiting for their echoes.
const BATCH: usize = 250;
/// The README's claim is 1.6 KiB per idle connection (1,650 bytes measured); the bound is the
/// 2 KiB product target, so a connection that grows a buffer or a task of its own fails it.
const MAX_RSS_PER_CONNECTION: u64 = 2 * 1024;
/// An AMQP 0-9-1 heartbeat frame: type 8, channel 0, size 0, frame-end 0xCE.
const HEARTBEAT: [u8; 8] = [8, 0, 0, 0, 0, 0, 0, 0xCE];
/// The uid and gid of `nobody`, which warren runs as when the test runs as root.
const NOBODY: u32 = 65534;
/// The listener's name in the config, and so in metric labels.
const LISTENER: &str = "idle";
/// Descriptors warren may hold after all clients left beyond what it held before any came
/// (pipes kept for reuse, an extra epoll/eventfd of a thread started late).
const FD_SLACK: usize = 16;

/// A child process killed and reaped on drop, also when the test panics; the tail of its log
/// is printed on a panic.
struct ChildGuard {
    what: &'static str,
    child: Child,
    /// Closing it tells the backend process to stop.
    stdin: Option<ChildStdin>,
    /// Where its stdout and stderr go; removed when the guard is dropped.
    log: Option<TempPath>,
}

impl ChildGuard {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Panics, with the child's log, if it has exited.
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            panic!(
                "{} exited early with {status}; log:\n{}",
                self.what,
                self.log_text()
            );
        }
    }

    fn log_text(&self) -> String {
        self.log
            .as_ref()
            .and_then(|p| std::fs::read(&p.0).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- {} log, last lines ---", self.what);
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// A path in the temp dir, unique to this process; the file is removed on drop.
struct TempPath(PathBuf);

impl TempPath {
    fn new(name: &str) -> TempPath {
        TempPath(std::env::temp_dir().join(format!("warren-idle-{}-{name}", std::process::id())))
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Raise this process's soft RLIMIT_NOFILE to its hard limit; returns the new soft limit.
/// Only getrlimit/setrlimit, so it is also safe to call between fork and exec.
fn raise_nofile_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit for getrlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: `limit` is a valid rlimit; raising the soft limit up to the hard one is always allowed.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(limit.rlim_cur)
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// A file under /proc/PID, or `None` if it cannot be read (gone, or another user's).
fn proc_file(pid: u32, name: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/{name}")).ok()
}

/// A `Key:  value ...` line of /proc/PID/status, first number of the value.
fn status_field(pid: u32, key: &str) -> u64 {
    let status = proc_file(pid, "status").expect("/proc/PID/status is world-readable");
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

fn rss_kib(pid: u32) -> u64 {
    status_field(pid, "VmRSS")
}

/// Open descriptors of `pid`, or `None` if /proc/PID/fd is not readable to us.
fn fd_count(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// A minimal HTTP/1.1 GET on the admin port: (status code, body).
fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no header end in {response:?}")))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {head:?}")))?;
    Ok((code, body.to_string()))
}

/// warren's /metrics text.
fn metrics(admin_port: u16) -> String {
    let (code, body) = http_get(admin_port, "/metrics").expect("GET /metrics");
    assert_eq!(code, 200, "/metrics: {body}");
    body
}

/// Poll `cond` every `every` until it holds; panics naming `what` after `within`.
fn wait_until(what: &str, within: Duration, every: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(every);
    }
}

// ---------------------------------------------------------------------------------------------
// The backend process.

/// Not a test: the echo backend of `five_thousand_idle_connections_stay_open_and_hold_no_pipe`,
/// run in a process of its own by that test (which sets the environment variable). Run
/// without it, it returns at once.
#[test]
#[ignore = "helper process, started by five_thousand_idle_connections_stay_open_and_hold_no_pipe"]
fn backend_process() {
    let Some(port_file) = std::env::var_os(BACKEND_PORT_FILE_ENV) else {
        return;
    };
    raise_nofile_limit().expect("raise RLIMIT_NOFILE");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("backend runtime");
    runtime.block_on(serve_echo(Path::new(&port_file)));
    // Connection tasks may still be parked on their sockets; the process ends here anyway.
    runtime.shutdown_background();
}

/// Echo on 127.0.0.1:0 until stdin closes (the test ended or died) or 10 minutes pass.
async fn serve_echo(port_file: &Path) {
    // A deep accept queue: with the default (128) a batch of connects overflows it and the
    // dropped SYNs cost warren a one-second retransmit.
    let socket = tokio::net::TcpSocket::new_v4().expect("backend socket");
    socket
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("backend binds");
    let listener = socket.listen(4096).expect("backend listens");
    let port = listener.local_addr().expect("local addr").port();
    // Write then rename, so the test never reads a half-written port.
    let partial = port_file.with_extension("partial");
    std::fs::write(&partial, port.to_string()).expect("write port file");
    std::fs::rename(&partial, port_file).expect("rename port file");

    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
    // A plain thread: a blocking stdin read must not hold up the runtime's shutdown.
    std::thread::spawn(move || {
        let mut sink = [0u8; 64];
        while matches!(std::io::stdin().read(&mut sink), Ok(n) if n > 0) {}
        let _ = closed_tx.send(());
    });
    let accept_loop = async {
        loop {
            match listener.accept().await {
                Ok((socket, _)) => {
                    tokio::spawn(echo(socket));
                }
                // Out of descriptors or similar: pause instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    };
    tokio::select! {
        () = accept_loop => {}
        _ = closed_rx => {}
        () = tokio::time::sleep(Duration::from_secs(600)) => {}
    }
}

/// Echo with a small buffer: the backend's memory must not be what limits the test.
async fn echo(mut socket: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = socket.set_nodelay(true);
    let mut buf = [0u8; 256];
    loop {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if socket.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Start the backend process and wait for its port.
fn start_backend() -> (ChildGuard, SocketAddr) {
    let port_file = TempPath::new("backend.port");
    let exe = std::env::current_exe().expect("current_exe");
    let log = TempPath::new("backend.log");
    let log_file = std::fs::File::create(&log.0).expect("create backend log");
    let mut child = Command::new(exe)
        .args(["--exact", "backend_process", "--ignored", "--nocapture"])
        .env(BACKEND_PORT_FILE_ENV, &port_file.0)
        .stdin(Stdio::piped())
        .stdout(log_file.try_clone().expect("dup log"))
        .stderr(log_file)
        .spawn()
        .expect("spawn the backend process");
    let stdin = child.stdin.take();
    let mut guard = ChildGuard {
        what: "backend process",
        child,
        stdin,
        log: Some(log),
    };
    let mut port = None;
    wait_until(
        "the backend process to write its port",
        Duration::from_secs(30),
        Duration::from_millis(20),
        || {
            guard.assert_running();
            port = std::fs::read_to_string(&port_file.0)
                .ok()
                .and_then(|p| p.trim().parse::<u16>().ok());
            port.is_some()
        },
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], port.expect("port read")));
    (guard, addr)
}

// ---------------------------------------------------------------------------------------------
// The warren process.

/// Start warren for `config` as an unprivileged user, with its soft descriptor limit raised.
fn start_warren(config: &Path) -> ChildGuard {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let mut command = if root {
        let setpriv = find_in_path("setpriv").unwrap_or_else(|| {
            panic!(
                "running as root, and `setpriv` (util-linux) is not in PATH: it is needed to run \
                 warren as user nobody ({NOBODY}). Install util-linux or run the test as a \
                 non-root user."
            )
        });
        let mut c = Command::new(setpriv);
        c.arg(format!("--reuid={NOBODY}"))
            .arg(format!("--regid={NOBODY}"))
            .args(["--clear-groups", "--", WARREN]);
        c
    } else {
        Command::new(WARREN)
    };
    let log = TempPath::new("warren.log");
    let log_file = std::fs::File::create(&log.0).expect("create warren log");
    command
        .args([
            OsStr::new("run"),
            OsStr::new("--config"),
            config.as_os_str(),
        ])
        .env_remove("RUST_LOG")
        // A panic's message and location, not a page of frames, in the log tail we print.
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("dup log"))
        .stderr(log_file);
    // SAFETY: the closure only calls getrlimit/setrlimit, which are async-signal-safe, and
    // allocates nothing, as code between fork and exec must.
    unsafe {
        command.pre_exec(|| raise_nofile_limit().map(|_| ()));
    }
    let child = command.spawn().expect("spawn warren");
    ChildGuard {
        what: "warren",
        child,
        stdin: None,
        log: Some(log),
    }
}

/// The echo backend process and warren (as nobody) in front of it, once `/healthz` answers:
/// (backend, warren, listen port, admin port, the config file).
fn start_stack() -> (ChildGuard, ChildGuard, u16, u16, TempPath) {
    let (backend, backend_addr) = start_backend();
    let (listen_port, admin_port) = (free_port(), free_port());
    let config = TempPath::new("warren.toml");
    write_config(&config.0, listen_port, admin_port, backend_addr);
    let mut warren = start_warren(&config.0);
    wait_until(
        "warren's /healthz to answer 200",
        Duration::from_secs(30),
        Duration::from_millis(20),
        || {
            warren.assert_running();
            matches!(http_get(admin_port, "/healthz"), Ok((200, _)))
        },
    );
    (backend, warren, listen_port, admin_port, config)
}

fn write_config(path: &Path, listen_port: u16, admin_port: u16, backend: SocketAddr) {
    let text = format!(
        r#"
[admin]
listen = "127.0.0.1:{admin_port}"

[[listener]]
name = "{LISTENER}"
listen = "127.0.0.1:{listen_port}"
pool = "rabbitmq"
connect_timeout = "5s"
idle_timeout = "10m"

[pool.rabbitmq]

[[pool.rabbitmq.backend]]
name = "echo"
addr = "{backend}"
"#
    );
    std::fs::write(path, text).expect("write warren config");
    // warren may run as nobody: it must be able to read the file.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
        .expect("chmod warren config");
}

// ---------------------------------------------------------------------------------------------
// The clients.

/// Write each stream its frame, then read every echo back, `BATCH` streams at a time.
fn round_trip(streams: &mut [TcpStream], frame: impl Fn(usize) -> [u8; 8], deadline: Instant) {
    for (b, batch) in streams.chunks_mut(BATCH).enumerate() {
        for (i, stream) in batch.iter_mut().enumerate() {
            let n = b * BATCH + i;
            stream
                .write_all(&frame(n))
                .unwrap_or_else(|e| panic!("write on connection {n}: {e}"));
        }
        for (i, stream) in batch.iter_mut().enumerate() {
            let n = b * BATCH + i;
            let mut back = [0u8; 8];
            stream
                .read_exact(&mut back)
                .unwrap_or_else(|e| panic!("echo on connection {n}: {e}"));
            assert_eq!(back, frame(n), "connection {n} got another's bytes");
        }
        assert!(Instant::now() < deadline, "round trips took too long");
    }
}

/// Open `CONNECTIONS` connections to `addr`, `BATCH` at a time, each echoing its own index.
fn connect_all(addr: SocketAddr, deadline: Instant) -> Vec<TcpStream> {
    let mut streams = Vec::with_capacity(CONNECTIONS);
    while streams.len() < CONNECTIONS {
        let start = streams.len();
        for n in start..(start + BATCH).min(CONNECTIONS) {
            let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("connect {n}: {e}"));
            stream.set_nodelay(true).expect("nodelay");
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .expect("read timeout");
            streams.push(stream);
        }
        round_trip(
            &mut streams[start..],
            |i| ((start + i) as u64).to_be_bytes(),
            deadline,
        );
    }
    streams
}

/// The index of the first stream that is not open and silent (EOF, reset or unexpected bytes).
fn first_not_open(streams: &[TcpStream]) -> Option<(usize, String)> {
    let mut byte = [0u8; 1];
    for (n, stream) in streams.iter().enumerate() {
        stream.set_nonblocking(true).expect("nonblocking");
        let state = stream.peek(&mut byte);
        stream.set_nonblocking(false).expect("blocking");
        match state {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Ok(0) => return Some((n, "closed (EOF)".into())),
            Ok(_) => return Some((n, "unexpected bytes".into())),
            Err(e) => return Some((n, e.to_string())),
        }
    }
    None
}

/// The soaks take turns: each needs the machine's descriptors and cores to itself, and they
/// share the temp file names of the backend and warren processes.
static ONE_SOAK_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn five_thousand_idle_connections_stay_open_and_hold_no_pipe() {
    let _turn = ONE_SOAK_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let limit = raise_nofile_limit().expect("raise RLIMIT_NOFILE");
    assert!(
        limit >= CONNECTIONS as u64 + 512,
        "the test process needs {CONNECTIONS} client sockets; RLIMIT_NOFILE is {limit}"
    );

    let (mut backend, mut warren, listen_port, admin_port, _config) = start_stack();
    let pid = warren.pid();
    assert_eq!(
        proc_file(pid, "comm").as_deref().map(str::trim),
        Some("warren"),
        "the pid is warren itself (setpriv execs it)"
    );
    let uid = status_field(pid, "Uid");
    assert_ne!(uid, 0, "warren must not run as root");
    let fds_before = fd_count(pid);
    let rss_before = rss_kib(pid);

    let listen_addr = SocketAddr::from(([127, 0, 0, 1], listen_port));
    let connect_started = Instant::now();
    let mut clients = connect_all(listen_addr, Instant::now() + Duration::from_secs(120));
    let connect_took = connect_started.elapsed();

    let listener_active = format!("warren_listener_connections_active{{listener=\"{LISTENER}\"}}");
    let backend_active =
        "warren_backend_connections_active{backend=\"echo\",pool=\"rabbitmq\"}".to_string();
    // Every client had its echo, so warren accepted and connected them all already.
    let text = metrics(admin_port);
    let rss_after = rss_kib(pid);
    let fds_with = fd_count(pid);
    let per_connection = rss_after.saturating_sub(rss_before) * 1024 / CONNECTIONS as u64;
    println!(
        "RSS per connection: {per_connection} bytes (baseline {rss_before} KiB, with \
         {CONNECTIONS} connections {rss_after} KiB); warren uid {uid}; descriptors {fds_before:?} \
         -> {fds_with:?}; {CONNECTIONS} connects with echo took {connect_took:?}"
    );
    assert_eq!(
        common::metric_value(&text, "warren_splice_pipes_leased"),
        0.0,
        "idle connections must hold no pipe"
    );
    assert_eq!(
        common::metric_value(&text, &listener_active),
        CONNECTIONS as f64,
        "{listener_active}"
    );
    assert_eq!(
        common::metric_value(&text, &backend_active),
        CONNECTIONS as f64,
        "{backend_active}"
    );
    assert!(
        per_connection < MAX_RSS_PER_CONNECTION,
        "{per_connection} bytes of RSS per idle connection (bound {MAX_RSS_PER_CONNECTION})"
    );

    // Idle for 2 s, checking every 200 ms that nothing was closed under us.
    let idle_until = Instant::now() + Duration::from_secs(2);
    for _ in 0..20 {
        if let Some((n, why)) = first_not_open(&clients) {
            panic!("connection {n} did not stay open while idle: {why}");
        }
        if Instant::now() >= idle_until {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    // The soak: a heartbeat each way on every connection every second, as AMQP clients with a
    // 1 s heartbeat would send, for SOAK (10 s; 5 minutes with WARREN_SOAK=1). Zero drops.
    let soak = if std::env::var_os("WARREN_SOAK").is_some() {
        SOAK_LONG
    } else {
        SOAK_SHORT
    };
    let soak_started = Instant::now();
    let mut rounds = 0;
    while soak_started.elapsed() < soak {
        let round = Instant::now();
        round_trip(
            &mut clients,
            |_| HEARTBEAT,
            Instant::now() + Duration::from_secs(60),
        );
        rounds += 1;
        if let Some((n, why)) = first_not_open(&clients) {
            panic!("connection {n} dropped during the heartbeat soak (round {rounds}): {why}");
        }
        std::thread::sleep(Duration::from_secs(1).saturating_sub(round.elapsed()));
    }
    let text = metrics(admin_port);
    println!(
        "heartbeat soak: {rounds} rounds x {CONNECTIONS} connections in {:?}, 0 drops; RSS {} KiB",
        soak_started.elapsed(),
        rss_kib(pid)
    );
    assert_eq!(
        common::metric_value(&text, &listener_active),
        CONNECTIONS as f64
    );
    backend.assert_running();
    warren.assert_running();

    // Each connection still works: a heartbeat each way.
    round_trip(
        &mut clients,
        |_| HEARTBEAT,
        Instant::now() + Duration::from_secs(60),
    );
    let text = metrics(admin_port);
    assert_eq!(
        common::metric_value(&text, "warren_splice_pipes_leased"),
        0.0,
        "heartbeats go through the copy path and lease no pipe"
    );
    assert_eq!(
        common::metric_value(&text, &listener_active),
        CONNECTIONS as f64
    );

    drop(clients);
    wait_until(
        "every connection to be closed in warren",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || {
            let text = metrics(admin_port);
            common::metric_value(&text, &listener_active) == 0.0
                && common::metric_value(&text, &backend_active) == 0.0
        },
    );
    let rss_closed = rss_kib(pid);
    match fds_before {
        Some(before) => {
            let mut now = None;
            wait_until(
                "warren's descriptors to return to their baseline",
                Duration::from_secs(10),
                Duration::from_millis(50),
                || {
                    now = fd_count(pid);
                    now.is_some_and(|n| n <= before + FD_SLACK)
                },
            );
            println!(
                "descriptors back to {now:?} (baseline {before}); RSS after close {rss_closed} KiB"
            );
        }
        None => println!(
            "note: /proc/{pid}/fd is not readable by this user; descriptor check skipped \
             (RSS after close {rss_closed} KiB)"
        ),
    }
    println!("idle test took {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// Connect/close churn.

/// Cycles run always, and with `WARREN_SOAK=1`.
const CYCLES_SHORT: usize = 20_000;
const CYCLES_LONG: usize = 1_000_000;
/// Cycles before the baseline is taken (allocator arenas and thread caches settle).
const WARM_UP: usize = 2_000;
/// Client threads cycling at once.
const CHURN_THREADS: usize = 8;
/// RSS warren may keep after the cycles beyond its baseline: 10% plus 4 MiB.
fn rss_bound_kib(baseline: u64) -> u64 {
    baseline + baseline / 10 + 4 * 1024
}

/// `cycles` connect → one-byte echo → close cycles to `addr` from `CHURN_THREADS` threads;
/// returns how many failed.
fn churn(addr: SocketAddr, cycles: usize) -> usize {
    let threads: Vec<_> = (0..CHURN_THREADS)
        .map(|t| {
            let share = cycles / CHURN_THREADS + usize::from(t < cycles % CHURN_THREADS);
            std::thread::spawn(move || {
                let mut failed = 0;
                for n in 0..share {
                    let byte = [(n % 251) as u8];
                    let ok = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                        .and_then(|mut s| {
                            s.set_read_timeout(Some(Duration::from_secs(5)))?;
                            s.write_all(&byte)?;
                            let mut back = [0u8; 1];
                            s.read_exact(&mut back)?;
                            Ok(back == byte)
                        })
                        .unwrap_or(false);
                    failed += usize::from(!ok);
                }
                failed
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).sum()
}

/// Criterion: 20,000 connect/close cycles (1,000,000 with `WARREN_SOAK=1`) through warren as
/// user nobody: 0 fail; afterwards no connection is open, warren's descriptors are back within
/// 16 of their baseline (taken after a 2,000-cycle warm-up) and its RSS within 10% + 4 MiB.
#[test]
fn connect_close_cycles_leave_memory_and_descriptors_at_their_baseline() {
    let _turn = ONE_SOAK_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    raise_nofile_limit().expect("raise RLIMIT_NOFILE");
    let cycles = if std::env::var_os("WARREN_SOAK").is_some() {
        CYCLES_LONG
    } else {
        CYCLES_SHORT
    };
    let (mut backend, mut warren, listen_port, admin_port, _config) = start_stack();
    let pid = warren.pid();
    let addr = SocketAddr::from(([127, 0, 0, 1], listen_port));
    let listener_active = format!("warren_listener_connections_active{{listener=\"{LISTENER}\"}}");
    let all_closed = || {
        let text = metrics(admin_port);
        common::metric_value(&text, &listener_active) == 0.0
            && common::metric_value(
                &text,
                "warren_backend_connections_active{backend=\"echo\",pool=\"rabbitmq\"}",
            ) == 0.0
    };

    assert_eq!(churn(addr, WARM_UP), 0, "warm-up cycles failed");
    wait_until(
        "warm-up connections to close",
        Duration::from_secs(10),
        Duration::from_millis(20),
        all_closed,
    );
    let (rss_before, fds_before) = (rss_kib(pid), fd_count(pid));

    let started = Instant::now();
    let failed = churn(addr, cycles);
    let took = started.elapsed();
    warren.assert_running();
    backend.assert_running();
    wait_until(
        "every cycled connection to close in warren",
        Duration::from_secs(10),
        Duration::from_millis(20),
        all_closed,
    );
    let total = common::metric_value(
        &metrics(admin_port),
        &format!("warren_listener_connections_total{{listener=\"{LISTENER}\"}}"),
    );
    let mut rss_after = rss_kib(pid);
    // Freed memory goes back to the system in the background (jemalloc's decay): allow it time.
    wait_until(
        "warren's RSS to return to its baseline",
        Duration::from_secs(15),
        Duration::from_millis(100),
        || {
            rss_after = rss_kib(pid);
            rss_after <= rss_bound_kib(rss_before)
        },
    );
    let mut fds_after = fds_before;
    if let Some(before) = fds_before {
        wait_until(
            "warren's descriptors to return to their baseline",
            Duration::from_secs(10),
            Duration::from_millis(50),
            || {
                fds_after = fd_count(pid);
                fds_after.is_some_and(|n| n <= before + FD_SLACK)
            },
        );
    }
    println!(
        "{cycles} connect/close cycles in {took:?} ({:.0}/s), {failed} failed, {total} accepted in all; \
         RSS {rss_before} -> {rss_after} KiB; descriptors {fds_before:?} -> {fds_after:?}",
        cycles as f64 / took.as_secs_f64()
    );
    assert_eq!(failed, 0, "{failed} of {cycles} cycles failed");
    assert_eq!(
        total,
        (WARM_UP + cycles) as f64,
        "every cycle went through warren"
    );
}
