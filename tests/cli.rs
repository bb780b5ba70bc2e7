//! The `warren` binary as an operator uses it: `--version`, `check` on good and broken files,
//! the quick start, a graceful stop on SIGTERM, a listen port already taken, a bad log level.
//! Every warren here is a child process, killed by a guard also when a test panics.
#![cfg(unix)]

mod common;

use std::io::{ErrorKind, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::free_port;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WARREN: &str = env!("CARGO_BIN_EXE_warren");

/// How long a short-lived `warren` command (check, --version, a failed start) may take.
const SHORT_RUN: Duration = Duration::from_secs(20);

/// A file in the temp dir, removed on drop; the name is unique per process and per call.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, bytes: &[u8]) -> TempFile {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("warren-cli-{}-{n}-{name}", std::process::id()));
        std::fs::write(&path, bytes).expect("write temp file");
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Text with terminal colour sequences (`ESC [ ... letter`) removed, for matching log fields.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        if chars.next() == Some('[') {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        }
    }
    out
}

/// A pipe drained into a string by a thread, so the child never blocks on a full pipe.
fn collect(mut pipe: impl Read + Send + 'static) -> (Arc<Mutex<String>>, JoinHandle<()>) {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    let thread = std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        // Ends at EOF, i.e. when the child exits or is killed.
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    (text, thread)
}

/// A `warren` child process with its stdout and stderr collected; killed and reaped on drop,
/// and its stderr printed when the test is failing, so the failure shows what warren said.
struct WarrenProcess {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl WarrenProcess {
    fn spawn(args: &[&str]) -> WarrenProcess {
        let mut child = Command::new(WARREN)
            .args(args)
            // The log must look the same whatever the developer's environment says.
            .env_remove("RUST_LOG")
            .env_remove("NO_COLOR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn warren");
        let (stdout, out_thread) = collect(child.stdout.take().expect("stdout piped"));
        let (stderr, err_thread) = collect(child.stderr.take().expect("stderr piped"));
        WarrenProcess {
            child,
            stdout,
            stderr,
            readers: vec![out_thread, err_thread],
        }
    }

    fn pid(&self) -> libc::pid_t {
        libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t")
    }

    /// stderr as written (colour codes included).
    fn raw_stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// stderr without colour codes.
    fn stderr(&self) -> String {
        strip_ansi(&self.raw_stderr())
    }

    fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    fn sigterm(&self) {
        // SAFETY: kill(2) with a valid signal number only sends a signal; the pid is our own
        // child, not yet reaped (the guard reaps it), so it cannot name another process.
        let rc = unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM): {}", std::io::Error::last_os_error());
    }

    /// Wait (polling, from async code) until the process exits; panics after `within`.
    async fn exited(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.join_readers();
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "warren did not exit within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Wait (blocking) until the process exits; panics after `within`.
    fn exited_blocking(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.join_readers();
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "warren did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// After exit the pipes reach EOF, so the readers finish and the output is complete.
    fn join_readers(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }

    /// Wait until stderr (colour codes removed) contains `needle`; panics after `within`.
    async fn logged(&self, needle: &str, within: Duration) {
        let what = format!("warren to log {needle:?}");
        common::wait_for(&what, within, || self.stderr().contains(needle)).await;
    }
}

impl Drop for WarrenProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- warren stderr ---\n{}", self.stderr());
        }
    }
}

/// Run `warren ARGS` to completion (killed after [`SHORT_RUN`]).
fn run_to_end(args: &[&str]) -> (ExitStatus, String, String) {
    let mut warren = WarrenProcess::spawn(args);
    let status = warren.exited_blocking(SHORT_RUN);
    (status, warren.stdout(), warren.stderr())
}

/// The message a panicking Rust program prints; never acceptable as an operator error.
fn assert_no_panic(stderr: &str) {
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "warren panicked: {stderr}"
    );
}

/// An echo backend, in this test's runtime.
async fn echo_backend() -> common::Backend {
    common::spawn_backend(common::echo).await
}

/// Send `payload` and read the same bytes back, within 5 s.
async fn echo_round_trip(stream: &mut TcpStream, payload: &[u8]) {
    stream.write_all(payload).await.expect("write to warren");
    let mut back = vec![0u8; payload.len()];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut back))
        .await
        .expect("echo within 5s")
        .expect("echo read");
    assert_eq!(back, payload, "the echo must be byte-exact");
}

// ---------------------------------------------------------------------------------------------
// --version, check, --log-level

#[test]
fn version_prints_name_and_version() {
    let (status, stdout, stderr) = run_to_end(&["--version"]);
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
    assert_eq!(
        stdout.trim_end(),
        format!("warren {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn check_example_config_prints_one_ok_line() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/warren.toml");
    let path = path.to_str().expect("UTF-8 path");
    let (status, stdout, stderr) = run_to_end(&["check", "--config", path]);
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line: {stdout:?}");
    assert!(lines[0].contains("ok"), "{stdout:?}");
    assert!(
        lines[0].contains(path),
        "the line names the file: {stdout:?}"
    );
    assert!(stderr.is_empty(), "nothing on stderr: {stderr:?}");
}

#[test]
fn check_rabbitmq_config_prints_each_nodes_lines_or_exits_1_without_the_section() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let streams = repo.join("config/streams.toml");
    let streams = streams.to_str().expect("UTF-8 path");
    let (status, stdout, stderr) = run_to_end(&["check", "--config", streams, "--rabbitmq-config"]);
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
    let ports: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("stream.advertised_port = "))
        .collect();
    assert_eq!(ports, ["5561", "5562", "5570"], "{stdout}");
    assert_eq!(
        stdout
            .matches("stream.advertised_host = rabbit.example.com\n")
            .count(),
        3,
        "{stdout}"
    );
    assert!(
        stdout.starts_with("# node rabbit-1 (10.0.0.1:5552): "),
        "{stdout}"
    );
    assert!(
        stderr.contains(": ok: 4 listeners"),
        "the summary on stderr: {stderr}"
    );

    let plain = repo.join("config/warren.toml");
    let plain = plain.to_str().expect("UTF-8 path");
    let (status, stdout, stderr) = run_to_end(&["check", "--config", plain, "--rabbitmq-config"]);
    assert_eq!(status.code(), Some(1), "stdout: {stdout}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains("no pool has [pool.NAME.per_backend_listeners]"),
        "{stderr}"
    );
}

#[test]
fn check_reports_every_problem_and_exits_1() {
    let bad = TempFile::new(
        "two-problems.toml",
        br#"
[[listener]]
name = "amqp"
listen = "127.0.0.1:5672"
pool = "missing"

[pool.rabbitmq]

[[pool.rabbitmq.backend]]
name = "rabbit-a"
addr = "127.0.0.1:0"
"#,
    );
    let path = bad.0.to_str().expect("UTF-8 path");
    let (status, stdout, stderr) = run_to_end(&["check", "--config", path]);
    assert_eq!(status.code(), Some(1), "stderr: {stderr}");
    assert!(stdout.is_empty(), "nothing on stdout: {stdout:?}");
    assert!(
        stderr.contains("listener[0].pool"),
        "names the listener's pool key: {stderr}"
    );
    assert!(
        stderr.contains("pool.rabbitmq.backend[0].addr"),
        "names the backend's addr key: {stderr}"
    );
    assert!(stderr.contains(path), "names the file: {stderr}");
    assert_no_panic(&stderr);
}

#[test]
fn check_missing_file_exits_1_naming_it() {
    let path = std::env::temp_dir().join(format!(
        "warren-cli-{}-does-not-exist.toml",
        std::process::id()
    ));
    let path = path.to_str().expect("UTF-8 path");
    let (status, _, stderr) = run_to_end(&["check", "--config", path]);
    assert_eq!(status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains(path), "names the file: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one error line: {stderr}");
    assert_no_panic(&stderr);
}

/// `warren check` on `file` gives one clear line: exit 1, names the file, short, no panic.
/// Returns that line.
fn assert_one_clear_error(file: &TempFile, what: &str) -> String {
    let path = file.0.to_str().expect("UTF-8 path");
    let (status, stdout, stderr) = run_to_end(&["check", "--config", path]);
    assert_eq!(status.code(), Some(1), "{what}: stderr: {stderr}");
    assert!(stdout.is_empty(), "{what}: nothing on stdout");
    assert_no_panic(&stderr);
    assert_eq!(
        stderr.lines().count(),
        1,
        "{what}: one error line, got {} bytes: {:.300}",
        stderr.len(),
        stderr
    );
    assert!(
        stderr.len() < 1024,
        "{what}: the error must not echo the file ({} bytes): {:.300}",
        stderr.len(),
        stderr
    );
    assert!(stderr.contains(path), "{what}: names the file: {stderr}");
    stderr
}

#[test]
fn check_non_utf8_file_is_one_clear_error() {
    let file = TempFile::new(
        "latin1.toml",
        b"[[listener]]\nname = \"caf\xe9\"\nlisten = \"127.0.0.1:5672\"\n",
    );
    let stderr = assert_one_clear_error(&file, "non-UTF-8 file");
    assert!(stderr.contains("UTF-8"), "says what is wrong: {stderr}");
    assert!(stderr.contains(":2:"), "points at line 2: {stderr}");
}

/// Deterministic pseudo-random bytes (xorshift64), so a failure reproduces.
fn garbage(len: usize, printable: bool) -> Vec<u8> {
    const ALPHABET: &[u8] = b"abcxyz019 =[]{}\".,'#+-/\\";
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let byte = (state >> 24) as u8;
            if printable {
                ALPHABET[usize::from(byte) % ALPHABET.len()]
            } else {
                byte
            }
        })
        .collect()
}

#[test]
fn check_ten_megabytes_of_garbage_is_one_clear_error() {
    const TEN_MB: usize = 10 * 1024 * 1024;
    let binary = TempFile::new("garbage.bin.toml", &garbage(TEN_MB, false));
    assert_one_clear_error(&binary, "10 MB of random bytes");
    // Valid UTF-8 on a single line: the parser runs, and its message quotes the line.
    let text = TempFile::new("garbage.txt.toml", &garbage(TEN_MB, true));
    assert_one_clear_error(&text, "10 MB of printable garbage on one line");
}

#[test]
fn bad_log_level_exits_2() {
    let (status, _, stderr) = run_to_end(&["run", "--log-level", "nonsense=="]);
    assert_eq!(status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains("bad log level"), "{stderr}");
    assert_no_panic(&stderr);
}

// ---------------------------------------------------------------------------------------------
// run

/// `run --listen … --backend … --admin ADDR`: the quick start gets the admin API, so a newcomer
/// can drain, see status and scrape metrics without writing a config.
#[tokio::test]
async fn quick_start_with_admin_serves_status_and_drain() {
    let backend = echo_backend().await;
    let (port, admin_port) = (free_port(), free_port());
    let listen = format!("127.0.0.1:{port}");
    let admin = format!("127.0.0.1:{admin_port}");
    let backend_addr = backend.addr.to_string();
    let mut warren = WarrenProcess::spawn(&[
        "run",
        "--listen",
        &listen,
        "--backend",
        &backend_addr,
        "--admin",
        &admin,
    ]);
    warren
        .logged("warren started", Duration::from_secs(10))
        .await;
    let admin: SocketAddr = admin.parse().unwrap();
    let (code, body) = common::http(admin, "GET", "/v1/status", None, b"").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(r#""name":"backend-1""#), "{body}");
    let (code, body) = common::http(
        admin,
        "POST",
        "/v1/pools/default/backends/backend-1/drain",
        None,
        br#"{"force": true}"#,
    )
    .await;
    assert_eq!(code, 202, "{body}");
    let (code, _) = common::http(admin, "GET", "/metrics", None, b"").await;
    assert_eq!(code, 200);
    warren.sigterm();
    let status = warren.exited(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn quick_start_forwards_logs_each_close_and_stops_on_sigterm() {
    let backend = echo_backend().await;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let backend_addr = backend.addr.to_string();
    let mut warren =
        WarrenProcess::spawn(&["run", "--listen", &listen, "--backend", &backend_addr]);
    warren
        .logged("warren started", Duration::from_secs(10))
        .await;

    let mut client = TcpStream::connect(&listen)
        .await
        .expect("connect to warren");
    let client_addr = client.local_addr().unwrap();
    echo_round_trip(&mut client, b"hello, rabbit").await;
    drop(client);
    warren
        .logged("connection closed", Duration::from_secs(5))
        .await;

    let stop = Instant::now();
    warren.sigterm();
    let status = warren.exited(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0), "exit code after SIGTERM");
    println!("exited {:?} after SIGTERM", stop.elapsed());

    let log = warren.stderr();
    let closed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("connection closed"))
        .collect();
    assert_eq!(closed.len(), 1, "one line per closed connection: {log}");
    let line = closed[0];
    for field in [
        format!("client={client_addr}"),
        "listener=\"default\"".to_string(),
        "backend=backend-1".to_string(),
        format!("backend_addr={backend_addr}"),
        "bytes_to_backend=13".to_string(),
        "bytes_to_client=13".to_string(),
        "duration_ms=".to_string(),
        "reason=\"client\"".to_string(),
    ] {
        assert!(line.contains(&field), "missing {field} in {line}");
    }
}

#[tokio::test]
async fn log_to_a_pipe_has_no_colour_codes() {
    let backend = echo_backend().await;
    let listen = format!("127.0.0.1:{}", free_port());
    let backend_addr = backend.addr.to_string();
    let mut warren =
        WarrenProcess::spawn(&["run", "--listen", &listen, "--backend", &backend_addr]);
    warren
        .logged("warren started", Duration::from_secs(10))
        .await;
    warren.sigterm();
    let status = warren.exited(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0));
    // journald and log files get the bytes as written: `grep bytes_to_backend=` must work.
    let raw = warren.raw_stderr();
    assert!(
        !raw.contains('\u{1b}'),
        "stderr is not a terminal, yet the log has ANSI escape codes: {raw:?}"
    );
}

#[tokio::test]
async fn sigterm_stops_accepting_and_closes_open_connections_after_the_grace_period() {
    let backend = echo_backend().await;
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let backend_addr = backend.addr.to_string();
    let mut warren = WarrenProcess::spawn(&[
        "run",
        "--listen",
        &listen.to_string(),
        "--backend",
        &backend_addr,
        "--shutdown-grace",
        "3s",
    ]);
    // The grace is long enough that the steps below fit in it on a loaded machine; the
    // deadlines are generous, and the order of events is what is asserted.
    let grace = Duration::from_secs(3);
    warren
        .logged("warren started", Duration::from_secs(10))
        .await;
    let mut client = TcpStream::connect(listen).await.expect("connect to warren");
    echo_round_trip(&mut client, b"before").await;

    let sigterm = Instant::now();
    warren.sigterm();
    warren
        .logged("listener stopped accepting", Duration::from_secs(5))
        .await;
    // The accept loop logs just before it drops the socket, so allow it a moment.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match TcpStream::connect(listen).await {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => break,
            other => assert!(
                Instant::now() < deadline,
                "a new connect must be refused once SIGTERM arrived, got {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let refused_after = sigterm.elapsed();

    echo_round_trip(&mut client, b"during the grace period").await;
    let echoed_after = sigterm.elapsed();
    assert!(
        echoed_after < grace,
        "the echo must come back within the grace period ({echoed_after:?})"
    );

    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(grace + Duration::from_secs(5), client.read(&mut buf))
        .await
        .expect("warren closes the connection within 8s of SIGTERM");
    let closed_after = sigterm.elapsed();
    assert_eq!(read.expect("a clean close, not a reset"), 0, "EOF");
    println!(
        "after SIGTERM: new connects refused at {refused_after:?}, echo at {echoed_after:?}, \
         EOF at {closed_after:?}"
    );
    // Not before the grace (a timer cannot fire early under load); the upper bound is the
    // generous deadline of the read above.
    assert!(
        closed_after >= grace - Duration::from_millis(100),
        "closed {closed_after:?} after SIGTERM, before the 3s grace"
    );

    let status = warren.exited(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0), "exit code after a graceful stop");
    let log = warren.stderr();
    assert!(
        log.lines()
            .any(|l| l.contains("connection closed") && l.contains("reason=\"shutdown\"")),
        "the connection closed by the stop is logged with reason shutdown: {log}"
    );
}

#[test]
fn listen_port_in_use_fails_naming_the_listener_and_leaves_nothing_bound() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().unwrap();
    let (first_port, admin_port, backend_port) = (free_port(), free_port(), free_port());
    let config = TempFile::new(
        "port-in-use.toml",
        format!(
            r#"
[admin]
listen = "127.0.0.1:{admin_port}"

[[listener]]
name = "first"
listen = "127.0.0.1:{first_port}"
pool = "rabbitmq"

[[listener]]
name = "second"
listen = "{taken_addr}"
pool = "rabbitmq"

[pool.rabbitmq]

[[pool.rabbitmq.backend]]
name = "rabbit-a"
addr = "127.0.0.1:{backend_port}"
"#
        )
        .as_bytes(),
    );
    let path = config.0.to_str().expect("UTF-8 path");
    // warren's stderr is a full pipe: it stays alive, blocked writing its error, while the test
    // looks at what it listens on (nothing) and whether the other ports are free.
    let mut warren = common::BlockedOnStderr::spawn(&["run", "--config", path]);
    warren.wait_blocked(Duration::from_secs(20));
    let held = common::listening_ports_of(warren.child.id());
    assert!(held.is_empty(), "warren listens on {held:?} while failing");
    for port in [first_port, admin_port] {
        std::net::TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("port {port} taken while warren fails: {e}"));
    }
    let (status, stderr) = warren.finish(Duration::from_secs(20));
    assert!(!status.success(), "must fail: {status:?}, stderr: {stderr}");
    assert!(status.code().is_some(), "an exit, not a signal: {status:?}");
    assert_no_panic(&stderr);
    let taken_addr = taken_addr.to_string();
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("listener second") && l.contains(&taken_addr)),
        "one line names the listener and the address: {stderr}"
    );
    drop(taken);
}

// ---------------------------------------------------------------------------------------------
// `check` refuses what `run` would refuse

/// A valid config on free ports whose `[[listener]]` table gets `listener_extra` and which ends
/// with `tail` (extra tables); `head` goes first (e.g. an `[admin]` table).
fn config_text(head: &str, listener_extra: &str, tail: &str) -> String {
    format!(
        "{head}\n[[listener]]\nname = \"amqp\"\nlisten = \"127.0.0.1:{}\"\npool = \"rabbitmq\"\n\
         {listener_extra}\n\n[pool.rabbitmq]\n\n[[pool.rabbitmq.backend]]\nname = \"a\"\n\
         addr = \"127.0.0.1:1\"\n\n{tail}\n",
        free_port()
    )
}

/// `warren check` and `warren run` on `text` both exit 1 with exactly one line containing each
/// of `fragments` (`check`'s also names the config file); `run` never logs "started".
fn assert_check_and_run_refuse(name: &str, text: &str, fragments: &[&str]) {
    let file = TempFile::new(name, text.as_bytes());
    let path = file.0.to_str().expect("UTF-8 path");
    for command in ["check", "run"] {
        let (status, stdout, stderr) = run_to_end(&[command, "--config", path]);
        assert_eq!(
            status.code(),
            Some(1),
            "{name}: {command}: {stdout}{stderr}"
        );
        assert_no_panic(&stderr);
        assert_eq!(
            stderr.lines().count(),
            1,
            "{name}: {command}: one line: {stderr}"
        );
        // `run` names the file the problem is in (the token file, not the config, for one case).
        if command == "check" {
            assert!(
                stderr.contains(path),
                "{name}: check names the file: {stderr}"
            );
        }
        for fragment in fragments {
            assert!(
                stderr.contains(fragment),
                "{name}: {command}: {fragment:?} missing: {stderr}"
            );
        }
        assert!(
            !stderr.contains("warren started"),
            "{name}: {command} started"
        );
    }
}

/// Criterion: 3 of 3 durations far past their limit (a listener's `next_upstream_timeout`, a
/// hook's `timeout`, a probe's `interval`, each "300000000000y") are refused by both `check` and
/// `run` with one line naming the file, the line, the key, the value and the limit.
#[test]
fn durations_past_their_limit_are_refused_by_check_and_run() {
    let huge = "\"300000000000y\"";
    let cases = [
        (
            config_text("", &format!("next_upstream_timeout = {huge}"), ""),
            ":6: listener[0].next_upstream_timeout = \"300000000000y\": too long: at most 1day",
        ),
        (
            config_text(
                "",
                "",
                &format!(
                    "[[hook]]\non = [\"backend_down\"]\nexec = [\"/bin/true\"]\ntimeout = {huge}"
                ),
            ),
            ":17: hook[0].timeout = \"300000000000y\": too long: at most 1day",
        ),
        (
            config_text(
                "",
                "",
                &format!("[pool.rabbitmq.health]\nkind = \"tcp\"\ninterval = {huge}"),
            ),
            ":16: pool.rabbitmq.health.interval = \"300000000000y\": too long: at most 1h",
        ),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        assert_check_and_run_refuse(&format!("duration-{i}.toml"), text, &[expected]);
    }
}

/// Criterion: 6 of 6 configs that `run` refuses are refused by `check` too, each with one line
/// naming the file and what is wrong: `admin.listen` on a listener's address, a missing
/// `token_file`, a listener on `[::ffff:127.0.0.1]:P` (refused, with the IPv4 form to write),
/// 2 unusable webhook URLs, and an unusable webhook URL with `user:pass@` (masked in the
/// message; a usable one is accepted and its credentials sent, see tests/hooks.rs).
#[test]
fn check_refuses_what_run_would_refuse() {
    let port = free_port();
    let missing = std::env::temp_dir().join(format!("warren-cli-{}-no-token", std::process::id()));
    let hook = |url: &str| format!("[[hook]]\non = [\"backend_down\"]\nwebhook = \"{url}\"");
    let clash = format!(
        "[admin]\nlisten = \"127.0.0.1:{port}\"\n\n[[listener]]\nname = \"amqp\"\n\
         listen = \"127.0.0.1:{port}\"\npool = \"p\"\n\n[pool.p]\n[[pool.p.backend]]\n\
         name = \"a\"\naddr = \"127.0.0.1:1\"\n"
    );
    let mapped = format!(
        "[[listener]]\nname = \"amqp\"\nlisten = \"[::ffff:127.0.0.1]:{port}\"\npool = \"p\"\n\n\
         [pool.p]\n[[pool.p.backend]]\nname = \"a\"\naddr = \"127.0.0.1:1\"\n"
    );
    let ipv4_form = format!("write the IPv4 address: \"127.0.0.1:{port}\"");
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            clash,
            vec!["admin.listen", "takes the address of listener[0].listen"],
        ),
        (
            config_text(
                &format!(
                    "[admin]\nlisten = \"127.0.0.1:{}\"\ntoken_file = \"{}\"\n",
                    free_port(),
                    missing.display()
                ),
                "",
                "",
            ),
            vec!["cannot read token_file", "no-token"],
        ),
        (mapped, vec!["listener[0].listen", &ipv4_form]),
        (
            config_text("", "", &hook("http://bad host/")),
            vec!["hook[0].webhook", "not a valid URL"],
        ),
        (
            config_text("", "", &hook("http://h:70000/")),
            vec!["hook[0].webhook", "1 to 65535"],
        ),
        (
            config_text("", "", &hook("http://ops:hunter2@h:80800/x")),
            vec!["hook[0].webhook = \"http://***@h:80800/x\"", "1 to 65535"],
        ),
    ];
    for (i, (text, fragments)) in cases.iter().enumerate() {
        assert_check_and_run_refuse(&format!("refused-{i}.toml"), text, fragments);
    }
    let file = TempFile::new(
        "userinfo.toml",
        config_text("", "", &hook("http://ops:hunter2@h/")).as_bytes(),
    );
    let (_, stdout, stderr) = run_to_end(&["check", "--config", file.0.to_str().unwrap()]);
    assert!(
        !stderr.contains("hunter2") && !stdout.contains("hunter2"),
        "the password is masked: {stdout}{stderr}"
    );
}

/// Probe URLs are parsed at load as every probe will use them (`{host}` and `{port}` filled
/// in): `check` and `run` refuse one that would fail every probe, naming the key and the value
/// (its user info masked). Before, only the scheme was checked.
#[test]
fn check_refuses_unusable_probe_urls() {
    let probe = |url: &str, extra: &str| {
        format!("[pool.rabbitmq.health]\nkind = \"http\"\nurl = \"{url}\"\n{extra}")
    };
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            config_text(
                "",
                "",
                &probe("http://{host}:99999/api/health/checks/alarms", ""),
            ),
            vec![
                "pool.rabbitmq.health.url = \"http://{host}:99999/api/health/checks/alarms\"",
                "1 to 65535",
            ],
        ),
        (
            config_text("", "", &probe("http://mgmt host:15672/api", "")),
            vec![
                "pool.rabbitmq.health.url = \"http://mgmt host:15672/api\"",
                "not a valid URL",
            ],
        ),
        (
            config_text(
                "",
                "",
                &probe("http://mon:hunter2@{host}:15672/api", "user = \"mon\""),
            ),
            vec![
                "pool.rabbitmq.health.url = \"http://***@{host}:15672/api\"",
                "mutually exclusive",
            ],
        ),
    ];
    for (i, (text, fragments)) in cases.iter().enumerate() {
        assert_check_and_run_refuse(&format!("probe-url-{i}.toml"), text, fragments);
    }
}

/// Criterion: `check --config /dev/zero` and `run --config /dev/zero` exit 1 within 20 s with one
/// line naming the file and the 16 MiB limit (they used to read until memory ran out).
#[test]
fn an_endless_config_file_is_refused_at_the_size_limit() {
    for command in ["check", "run"] {
        let (status, _, stderr) = run_to_end(&[command, "--config", "/dev/zero"]);
        assert_eq!(status.code(), Some(1), "{command}: {stderr}");
        assert_no_panic(&stderr);
        assert_eq!(stderr.lines().count(), 1, "{command}: {stderr}");
        assert!(
            stderr.contains("/dev/zero: too large: a config file may have at most 16777216 bytes"),
            "{command}: {stderr}"
        );
    }
}
