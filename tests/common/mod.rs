//! Helpers for integration tests: in-process warren servers, in-process backends on port 0,
//! waiting on conditions with deadlines, reading `/metrics` ([`metrics`]), hook scripts
//! ([`hook_scripts`]), a fake management API ([`fake_api`]), a real systemd booted in
//! namespaces ([`systemd_box`]), a real etcd ([`etcd`]), and test certificates made by openssl
//! ([`certs`]).
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use warren::config::{BackendConfig, Balance, Config, ListenerConfig, OnDown, PoolConfig};
use warren::metrics::Metrics;
use warren::state::Routing;
use warren::{Options, Server};

pub mod certs;
pub mod etcd;
mod fake_api;
mod hook_scripts;
mod metrics;
#[cfg(target_os = "linux")]
pub mod systemd_box;
// Each test binary uses only part of common (hence also the dead_code allow above).
#[allow(unused_imports)]
pub use fake_api::*;
#[allow(unused_imports)]
pub use hook_scripts::*;
pub use metrics::*;

/// A running in-process warren.
pub struct Warren {
    pub addr: SocketAddr,
    /// The admin API's address, when the config has `[admin]`.
    pub admin: Option<SocketAddr>,
    pub metrics: Arc<Metrics>,
    pub routing: Arc<Routing>,
    pub health: Arc<warren::health::Controller>,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<()>,
}

impl Warren {
    /// Start warren for `config` (listener addresses should use port 0).
    pub fn start(config: Config, options: Options) -> Warren {
        let server = Server::bind(&config, options).expect("warren binds");
        let addr = server.listener_addrs()[0].1;
        let admin = server.admin_addr();
        let metrics = server.metrics();
        let routing = server.routing();
        let health = server.health();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.run(shutdown.clone()));
        Warren {
            addr,
            admin,
            metrics,
            routing,
            health,
            shutdown,
            task,
        }
    }

    /// The value of one metric series in the text exposition, e.g.
    /// `warren_listener_rejected_total{listener="default",reason="max_connections"}`.
    /// Panics when the series is absent (see [`metric_value`]).
    pub fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics.encode(), series)
    }

    /// The value of one metric series, 0 when it is absent: only where absence is expected.
    pub fn metric_or_zero(&self, series: &str) -> f64 {
        metric_or_zero(&self.metrics.encode(), series)
    }

    /// Stop and wait for `run` to return.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("warren stops within 10s")
            .expect("warren task did not panic");
    }
}

/// `program` on `PATH`. When it is missing: as root (CI, where scripts/test.sh installs it) the
/// test fails; otherwise it prints a SKIP line for `test` and gets `None`.
pub fn tool_or_skip(program: &str, test: &str) -> Option<std::path::PathBuf> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    tool_or_skip_as(program, test, root)
}

/// [`tool_or_skip`] as root or not.
pub fn tool_or_skip_as(program: &str, test: &str, root: bool) -> Option<std::path::PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            !root,
            "{test}: {program} is not installed: run scripts/test.sh as root (it installs it)"
        );
        eprintln!("SKIP {test}: {program} is not installed (scripts/test.sh installs it as root)");
    }
    found
}

/// A backend pool entry for a config.
pub fn backend(name: &str, addr: SocketAddr) -> BackendConfig {
    BackendConfig {
        name: name.to_string(),
        host: addr.ip().to_string(),
        port: addr.port(),
        addr,
        weight: 1,
        backup: false,
        management: None,
        tags: Vec::new(),
        dns_name: None,
        expanded_from: None,
        tls: None,
    }
}

/// One listener "default" on 127.0.0.1:0 → pool "default" with these backends.
pub fn config(balance: Balance, backends: Vec<BackendConfig>) -> Config {
    let listener =
        ListenerConfig::default_for("default", "127.0.0.1:0".parse().unwrap(), "default");
    Config {
        source: None,
        admin: None,
        listeners: vec![listener],
        pools: vec![PoolConfig {
            name: "default".into(),
            balance,
            min_available: 1,
            slow_start: Duration::ZERO,
            on_down: OnDown::Keep,
            rebalance: Default::default(),
            health: None,
            resolve_interval: None,
            backends,
        }],
        hooks: vec![],
        fleet: None,
        resolver: Default::default(),
    }
}

/// Change the single listener of a config.
pub fn with_listener(mut config: Config, f: impl FnOnce(&mut ListenerConfig)) -> Config {
    f(&mut config.listeners[0]);
    config
}

/// An in-process backend on 127.0.0.1:0.
pub struct Backend {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
    /// Connections open now.
    pub open: Arc<AtomicUsize>,
    pub task: JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A backend that runs `serve` for each accepted connection.
pub async fn spawn_backend<F, Fut>(serve: F) -> Backend
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(AtomicUsize::new(0));
    let serve = Arc::new(serve);
    let (a, o) = (accepted.clone(), open.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                // EMFILE and friends: pause rather than spin (fd_limit lowers the limit).
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            a.fetch_add(1, Ordering::SeqCst);
            o.fetch_add(1, Ordering::SeqCst);
            let (serve, o) = (serve.clone(), o.clone());
            tokio::spawn(async move {
                serve(socket).await;
                o.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    Backend {
        addr,
        accepted,
        open,
        task,
    }
}

/// Echo every byte back; on EOF from the client, shut down the write side.
pub async fn echo(mut socket: TcpStream) {
    let (mut r, mut w) = socket.split();
    let _ = tokio::io::copy(&mut r, &mut w).await;
    let _ = w.shutdown().await;
}

/// A backend that writes its one-byte `id` on connect, then echoes.
pub async fn spawn_tagged(id: u8) -> Backend {
    spawn_backend(move |mut s| async move {
        if s.write_all(&[id]).await.is_ok() {
            echo(s).await;
        }
    })
    .await
}

/// Connect through warren and read the backend's id byte.
pub async fn which_backend(addr: SocketAddr) -> (u8, TcpStream) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut id = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut id))
        .await
        .expect("backend id within 5s")
        .expect("backend id read");
    (id[0], s)
}

/// Poll `cond` every 10 ms until it holds or `within` passes; panics with `what` on timeout.
pub async fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A port on 127.0.0.1 where nothing listens (bound then closed, so connects are refused).
pub fn refused_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr
}

/// A port on 127.0.0.1 that refuses connections and stays ours: bound but not listening, so no
/// other process can start listening there while the test runs (a port bound and closed can
/// be taken by anyone and then answer).
pub fn held_refusing_port() -> (socket2::Socket, SocketAddr) {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    (socket, addr)
}

/// A peer that never answers SYN: a listener whose accept queue is full and never drained.
/// Linux drops SYNs to a listener with a full queue, so connects hang as against a dropped packet.
pub struct SilentPeer {
    pub addr: SocketAddr,
    _listener: socket2::Socket,
    _fillers: Vec<std::net::TcpStream>,
}

pub fn silent_peer() -> SilentPeer {
    use socket2::{Domain, Socket, Type};
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    listener
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    listener.listen(0).unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    // Fill the queue: connect until a connect no longer completes quickly.
    for _ in 0..16 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(s) => fillers.push(s),
            Err(_) => break,
        }
    }
    SilentPeer {
        addr,
        _listener: listener,
        _fillers: fillers,
    }
}

/// Options for tests: a short grace period so `stop()` does not wait for held connections.
pub fn quick() -> Options {
    Options {
        shutdown_grace: Duration::from_millis(200),
        ..Options::default()
    }
}

/// One HTTP/1.1 request on a fresh connection; returns the status and the body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: warren\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // A refused request may be answered before the whole body is read.
    let _ = s.write_all(body).await;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("admin answers within 10s")
        .ok();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// An `[admin]` section on 127.0.0.1:0 whose bearer token `token` is written to a file in
/// `dir`, with a state file there too.
#[allow(dead_code)]
pub fn admin_with_token(dir: &TempDir, token: &str) -> warren::config::AdminConfig {
    let token_file = dir.0.join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    warren::config::AdminConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        token_file: Some(token_file),
        state_file: Some(dir.0.join("state.json")),
        ..Default::default()
    }
}

/// A directory under the system temp dir, unique per process and name, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("warren-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Send one byte on a connection to an echo backend and read it back within 5 s.
pub async fn echo_once(s: &mut TcpStream, byte: u8) -> bool {
    echo_within(s, byte, Duration::from_secs(5)).await
}

/// [`echo_once`] with its own time limit (a storm of connections at once may want longer).
pub async fn echo_within(s: &mut TcpStream, byte: u8, within: Duration) -> bool {
    if s.write_all(&[byte]).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 1];
    matches!(
        tokio::time::timeout(within, s.read_exact(&mut buf)).await,
        Ok(Ok(_)) if buf[0] == byte
    )
}

// ---------------------------------------------------------------------------------------------
// Reliability suite helpers (tests/reliability_*.rs): warren as a child process, /proc readings
// of a process, a deterministic RNG, and a config file writer. Added for issue 8.

/// The built `warren` binary.
pub const WARREN_BIN: &str = env!("CARGO_BIN_EXE_warren");

/// Run `warren ctl --admin http://ADMIN ARGS` (progress polled every 100 ms); (exit code,
/// stdout, stderr).
pub async fn run_ctl(admin: SocketAddr, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(WARREN_BIN)
        .arg("ctl")
        .arg("--admin")
        .arg(format!("http://{admin}"))
        .args(args)
        .env("WARREN_CTL_POLL_MS", "100")
        .kill_on_drop(true)
        .output();
    // Far above what any step here takes, far below what would stall CI.
    let out = tokio::time::timeout(Duration::from_secs(300), out)
        .await
        .unwrap_or_else(|_| panic!("warren ctl {args:?} still running after 300s"))
        .expect("run warren ctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A port on 127.0.0.1 that was free a moment ago (configs for a warren process need a real one).
pub fn free_port() -> u16 {
    // Below the ephemeral range (32768 and up on Linux): a port bound and released there can
    // be handed to any test's outgoing connection before warren binds it (a reload test failed
    // 1 in 6 so); ports here are only ever taken by an explicit bind. Each process walks the
    // range from its own starting point, never handing out a port twice.
    use std::sync::atomic::AtomicU32;
    const FIRST: u32 = 12_000;
    const COUNT: u32 = 8_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7_919) % COUNT,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..COUNT {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::SeqCst) % COUNT) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + COUNT);
}

/// A deterministic xorshift64* generator, so a failing input reproduces from the test alone.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

/// One line of /proc/PID/stat split after the command name: field 3 (state) is index 0.
fn proc_stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 2..];
    Some(after_comm.split_whitespace().map(str::to_owned).collect())
}

/// User + system CPU seconds a process has used so far.
pub fn cpu_seconds_of(pid: u32) -> f64 {
    let f = proc_stat_fields(pid).expect("/proc/PID/stat readable");
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let utime: f64 = f[11].parse().unwrap();
    let stime: f64 = f[12].parse().unwrap();
    (utime + stime) / ticks
}

/// Threads of a process.
pub fn threads_of(pid: u32) -> usize {
    proc_stat_fields(pid).expect("/proc/PID/stat readable")[17]
        .parse()
        .unwrap()
}

/// Resident memory of a process in KiB.
pub fn rss_kib_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Open descriptors of a process.
pub fn fds_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Processes whose parent is `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| proc_stat_fields(p).is_some_and(|f| f[1] == pid.to_string()))
        .collect()
}

/// CPU share (1.0 = one core) a process uses over `window` of wall time.
pub async fn cpu_share_over(pid: u32, window: Duration) -> f64 {
    let (cpu, wall) = (cpu_seconds_of(pid), std::time::Instant::now());
    tokio::time::sleep(window).await;
    (cpu_seconds_of(pid) - cpu) / wall.elapsed().as_secs_f64()
}

/// The lowest CPU share of this test process over up to three `window`s, stopping at the first
/// below `limit`. The other tests of the binary run in the same process and may be busy in one
/// window; a spinning loop is busy in every one.
pub async fn idle_cpu_share(window: Duration, limit: f64) -> f64 {
    let mut lowest = f64::MAX;
    for _ in 0..3 {
        lowest = lowest.min(cpu_share_over(std::process::id(), window).await);
        if lowest < limit {
            break;
        }
    }
    lowest
}

/// A config file for a warren process: admin on `admin_port` (with `token_file` when given), one
/// listener "amqp" on `listen_port` → pool "rabbitmq" with these backends (named b0, b1, ...),
/// and `extra` TOML appended to the listener table (e.g. `connect_timeout = "1s"`).
pub fn process_config(
    admin_port: u16,
    token_file: Option<&std::path::Path>,
    listen_port: u16,
    backends: &[SocketAddr],
    extra: &str,
) -> String {
    let token = token_file
        .map(|t| format!("token_file = \"{}\"\n", t.display()))
        .unwrap_or_default();
    let mut text = format!(
        "[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n{token}\n[[listener]]\nname = \"amqp\"\n\
         listen = \"127.0.0.1:{listen_port}\"\npool = \"rabbitmq\"\n{extra}\n\n[pool.rabbitmq]\n\n"
    );
    for (i, b) in backends.iter().enumerate() {
        text += &format!("[[pool.rabbitmq.backend]]\nname = \"b{i}\"\naddr = \"{b}\"\n\n");
    }
    text
}

/// The `warren` binary as a child process, its stdout and stderr going to a log file. Killed
/// and reaped on drop; the log's tail is printed when the test is failing.
pub struct WarrenProc {
    pub child: std::process::Child,
    pub log: std::path::PathBuf,
}

impl WarrenProc {
    /// Start `warren ARGS` (with `RUST_LOG` removed), logging to `log`.
    pub fn spawn(args: &[&str], log: std::path::PathBuf) -> WarrenProc {
        WarrenProc::spawn_with(std::process::Command::new(WARREN_BIN), args, log)
    }

    /// Start `command` (the warren binary, or a wrapper such as setpriv that execs it) with `args`.
    pub fn spawn_with(
        mut command: std::process::Command,
        args: &[&str],
        log: std::path::PathBuf,
    ) -> WarrenProc {
        let file = std::fs::File::create(&log).expect("create warren log");
        let child = command
            .args(args)
            .env_remove("RUST_LOG")
            .env("RUST_BACKTRACE", "0")
            .stdin(std::process::Stdio::null())
            .stdout(file.try_clone().expect("dup log"))
            .stderr(file)
            .spawn()
            .expect("spawn warren");
        WarrenProc { child, log }
    }

    /// `warren run --config CONFIG`, once it has logged "warren started" (within 10 s).
    pub async fn run_config(config: &std::path::Path, log: std::path::PathBuf) -> WarrenProc {
        WarrenProc::run_config_with(std::process::Command::new(WARREN_BIN), config, log).await
    }

    /// [`WarrenProc::run_config`] through `command` (see [`WarrenProc::spawn_with`]).
    pub async fn run_config_with(
        command: std::process::Command,
        config: &std::path::Path,
        log: std::path::PathBuf,
    ) -> WarrenProc {
        let mut warren =
            WarrenProc::spawn_with(command, &["run", "--config", config.to_str().unwrap()], log);
        warren
            .logged("warren started", Duration::from_secs(10))
            .await;
        warren
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send a signal (e.g. `libc::SIGHUP`).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) only sends a signal; the pid is our child, not yet reaped.
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// Everything logged so far.
    pub fn log_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// Whether the process has exited (reaping it if so).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Wait until the process exits; panics after `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "warren did not exit within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Wait until the log contains `needle`; panics after `within` or if warren exits first.
    pub async fn logged(&mut self, needle: &str, within: Duration) {
        let deadline = std::time::Instant::now() + within;
        while !self.log_text().contains(needle) {
            if let Some(status) = self.exited() {
                panic!("warren exited ({status}) before logging {needle:?}");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "warren did not log {needle:?} within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for WarrenProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- warren log, last lines ---");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// Give an in-process config an admin API on 127.0.0.1:0 with `token_file` (no state file).
pub fn with_admin_api(mut config: Config, token_file: Option<std::path::PathBuf>) -> Config {
    config.admin = Some(warren::config::AdminConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        token_file,
        state_file: None,
        ..Default::default()
    });
    config
}

/// Connect to `addr` and echo one byte (see [`echo_once`]); `None` if either fails.
pub async fn connect_echo(addr: SocketAddr, byte: u8) -> Option<TcpStream> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    echo_once(&mut s, byte).await.then_some(s)
}

/// The local ports of the TCP sockets process `pid` holds in LISTEN state (IPv4 and IPv6):
/// its descriptors' socket inodes matched against /proc/net/tcp and tcp6.
pub fn listening_ports_of(pid: u32) -> Vec<u16> {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|e| {
                let link = std::fs::read_link(e.ok()?.path()).ok()?;
                let link = link.to_str()?;
                Some(
                    link.strip_prefix("socket:[")?
                        .strip_suffix(']')?
                        .to_string(),
                )
            })
            .collect()
        })
        .unwrap_or_default();
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            if fields.len() > 9 && fields[3] == "0A" && inodes.contains(fields[9]) {
                let port = fields[1].rsplit(':').next().unwrap_or("");
                ports.push(u16::from_str_radix(port, 16).expect("hex port"));
            }
        }
    }
    ports
}

/// `warren ARGS` with its stderr a pipe that is already full: warren blocks in its first write
/// to stderr, alive, until the test reads. What it holds at the moment it reports an error can
/// then be looked at before it exits (once it exits, the kernel has closed everything).
pub struct BlockedOnStderr {
    pub child: std::process::Child,
    read: Option<std::fs::File>,
}

/// Bytes put into the pipe before warren starts (a pipe holds 64 KiB by default).
const PIPE_FILLER: u8 = b'\0';

impl BlockedOnStderr {
    pub fn spawn(args: &[&str]) -> BlockedOnStderr {
        use std::io::Write;
        use std::os::fd::{FromRawFd, OwnedFd};
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two descriptors into the array we own; each is owned once below.
        let (read, write) = unsafe {
            assert_eq!(libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC), 0, "pipe2");
            (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))
        };
        let mut write = std::fs::File::from(write);
        let set_nonblocking = |f: &std::fs::File, on: bool| {
            use std::os::fd::AsRawFd;
            // SAFETY: fcntl on a descriptor we own, with valid flags.
            unsafe {
                let flags = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
                let flags = if on {
                    flags | libc::O_NONBLOCK
                } else {
                    flags & !libc::O_NONBLOCK
                };
                assert_eq!(libc::fcntl(f.as_raw_fd(), libc::F_SETFL, flags), 0);
            }
        };
        set_nonblocking(&write, true);
        let chunk = [PIPE_FILLER; 4096];
        for _ in 0..1024 {
            match write.write(&chunk) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("fill the pipe: {e}"),
            }
        }
        // Blocking again: the flag belongs to the open pipe, which warren shares.
        set_nonblocking(&write, false);
        let child = std::process::Command::new(WARREN_BIN)
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::from(OwnedFd::from(write)))
            .spawn()
            .expect("spawn warren");
        BlockedOnStderr {
            child,
            read: Some(std::fs::File::from(read)),
        }
    }

    /// Wait until a thread of warren blocks writing into the full pipe; panics if warren exits
    /// first or `within` passes.
    pub fn wait_blocked(&mut self, within: Duration) {
        let pid = self.child.id();
        let blocked = || {
            std::fs::read_dir(format!("/proc/{pid}/task"))
                .into_iter()
                .flatten()
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("wchan")).ok())
                .any(|wchan| wchan.contains("pipe_write"))
        };
        let deadline = std::time::Instant::now() + within;
        while !blocked() {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!("warren exited ({status}) before writing to stderr");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "warren did not write to stderr within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Read the pipe (the filler, then what warren wrote) until warren closes it, and its exit
    /// status; panics after `within`.
    pub fn finish(mut self, within: Duration) -> (std::process::ExitStatus, String) {
        use std::io::Read;
        let mut read = self.read.take().expect("finish once");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = read.read_to_end(&mut bytes);
            let _ = tx.send(bytes);
        });
        let bytes = rx
            .recv_timeout(within)
            .unwrap_or_else(|_| panic!("warren did not close its stderr within {within:?}"));
        let start = bytes
            .iter()
            .position(|&b| b != PIPE_FILLER)
            .unwrap_or(bytes.len());
        let deadline = std::time::Instant::now() + within;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(std::time::Instant::now() < deadline, "warren did not exit");
            std::thread::sleep(Duration::from_millis(10));
        };
        (
            status,
            String::from_utf8_lossy(&bytes[start..]).into_owned(),
        )
    }
}

impl Drop for BlockedOnStderr {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client connecting through `addr` and echoing one byte in a loop, `pause` apart, until
/// `stop` (at most 60 s): (echoed, failed). What a test counts while warren reloads or hands
/// its listeners over.
#[allow(dead_code)]
pub fn keep_connecting(
    addr: SocketAddr,
    stop: Arc<std::sync::atomic::AtomicBool>,
    pause: Duration,
) -> JoinHandle<(usize, usize)> {
    tokio::spawn(async move {
        let (mut ok, mut failed) = (0, 0);
        let started = tokio::time::Instant::now();
        while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(60) {
            match connect_echo(addr, (ok % 251) as u8).await {
                Some(_) => ok += 1,
                None => failed += 1,
            }
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
        (ok, failed)
    })
}

// ---------------------------------------------------------------------------------------------
// Upgrading warren itself (tests/handover_conns.rs, tests/handover_rabbit.rs): the command, the
// process it starts, and a "new binary" installed at warren's path.

/// A process started by an upgrade (not our child): killed when the test ends, pass or fail.
pub struct Adopted(pub u32);

impl Drop for Adopted {
    fn drop(&mut self) {
        // SAFETY: kill(2) only sends a signal; the pid is the warren this test upgraded to.
        unsafe { libc::kill(self.0 as libc::pid_t, libc::SIGKILL) };
    }
}

/// Whether process `pid` runs: it exists and is not a zombie (a warren started by an upgrade
/// is not our child, and whoever adopts it once its parent exits may reap it late).
pub fn alive(pid: u32) -> bool {
    proc_stat_fields(pid).is_some_and(|f| f[0] != "Z")
}

/// `warren upgrade --admin http://ADMIN`: exit success, stdout, stderr.
pub async fn warren_upgrade(admin: SocketAddr) -> (bool, String, String) {
    let out = tokio::process::Command::new(WARREN_BIN)
        .args(["upgrade", "--admin", &format!("http://{admin}")])
        .env_remove("WARREN_ADMIN")
        .output()
        .await
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

/// The pid in `upgraded: pid N serves ...`.
pub fn upgraded_pid(stdout: &str) -> u32 {
    stdout
        .split_whitespace()
        .nth(2)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {stdout:?}"))
}

/// A warren started from its own path in the cargo target dir (a hard link to the built
/// binary), so a test can install a different "new binary" there, as a package upgrade would.
pub fn installed_copy(name: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("handover-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("warren");
    if std::fs::hard_link(WARREN_BIN, &path).is_err() {
        std::fs::copy(WARREN_BIN, &path).unwrap();
    }
    path
}

/// Replace the file at `path` with a shell script, atomically (rename), as a package does.
pub fn install_script(path: &std::path::Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    let new = path.with_extension("new");
    std::fs::write(&new, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&new, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&new, path).unwrap();
}

/// Wait until process `pid` (ours or not) is gone; panics after `within`.
pub async fn wait_gone(pid: u32, within: Duration) {
    wait_for(&format!("process {pid} to exit"), within, || !alive(pid)).await;
}

/// The number N in the first log line containing `before` N `after`, e.g.
/// `("upgrade: handed over ", " connections")`.
pub fn logged_number(log: &str, before: &str, after: &str) -> Option<u64> {
    log.lines().find_map(|line| {
        let rest = &line[line.find(before)? + before.len()..];
        rest.strip_suffix(after)
            .or_else(|| rest.split_once(after).map(|(n, _)| n))?
            .trim()
            .parse()
            .ok()
    })
}
