//! Reliability, signals: a storm of SIGHUPs, SIGHUP while warren is starting, SIGTERM while a
//! reload runs. warren is the built binary, signalled as an init system or an operator would.
//! Each test states its pass criterion as a number; RELIABILITY.md lists them.
#![cfg(target_os = "linux")]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// Replace `path` atomically, so a reload never reads half a file.
fn write_atomically(path: &Path, text: &str) {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, text).unwrap();
    std::fs::rename(&partial, path).unwrap();
}

/// Backend names in `GET /v1/status`.
async fn backend_names(admin: SocketAddr) -> Vec<String> {
    let (code, body) = http(admin, "GET", "/v1/status", None, b"").await;
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    status["pools"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Criterion: 50 SIGHUPs within 1 s, the file changing halfway: 0 failed connects during the
/// storm (listeners never unbound), 0 failed reloads, between 1 and 50 reloads in all, the
/// final file's 2 backends in force, no child process, and at most 2 more threads than before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_sighups_in_a_second_end_in_the_final_config_without_unbinding() {
    let (b0, b1) = (spawn_backend(echo).await, spawn_backend(echo).await);
    let dir = TempDir::new("signals-storm");
    let (admin_port, port) = (free_port(), free_port());
    let path = dir.0.join("warren.toml");
    write_atomically(
        &path,
        &process_config(admin_port, None, port, &[b0.addr], ""),
    );
    let mut warren = WarrenProc::run_config(&path, dir.0.join("warren.log")).await;
    let (addr, admin): (SocketAddr, SocketAddr) = (
        ([127, 0, 0, 1], port).into(),
        ([127, 0, 0, 1], admin_port).into(),
    );
    assert!(connect_echo(addr, 1).await.is_some());
    let threads_before = threads_of(warren.pid());

    let stop = Arc::new(AtomicBool::new(false));
    let client = keep_connecting(addr, stop.clone(), Duration::from_millis(5));
    let storm = Instant::now();
    for n in 0..50 {
        if n == 25 {
            write_atomically(
                &path,
                &process_config(admin_port, None, port, &[b0.addr, b1.addr], ""),
            );
        }
        warren.signal(libc::SIGHUP);
        tokio::time::sleep(Duration::from_millis(18)).await;
    }
    let storm_took = storm.elapsed();
    // Reloads run one after another; wait until the count stops moving. A result's series
    // appears with its first reload: absent is 0 while waiting, and for "failed" at the end.
    let reloads = |text: &str, result: &str| {
        metric_or_zero(
            text,
            &format!("warren_config_reloads_total{{result=\"{result}\"}}"),
        )
    };
    let mut last = (-1.0, Instant::now());
    loop {
        let (_, text) = http(admin, "GET", "/metrics", None, b"").await;
        let now = reloads(&text, "ok") + reloads(&text, "failed");
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_millis(500) {
            break;
        }
        assert!(
            storm.elapsed() < Duration::from_secs(30),
            "reloads still running after 30s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let (ok, failed) = client.await.unwrap();
    let text = scrape_metrics(admin).await;
    // "ok" must be exported (so the family is not renamed); no failed reload, no "failed" series.
    let done = metric_value(&text, "warren_config_reloads_total{result=\"ok\"}");
    let bad = reloads(&text, "failed");
    let threads_after = threads_of(warren.pid());
    println!(
        "50 SIGHUPs in {storm_took:?}: {done} reloads ok, {bad} failed; clients {ok} ok, {failed} \
         failed; threads {threads_before} -> {threads_after}"
    );
    assert_eq!(failed, 0, "connects failed during the SIGHUP storm");
    assert!(ok > 0);
    assert_eq!(bad, 0.0);
    assert!(
        (1.0..=50.0).contains(&done),
        "{done} reloads for 50 SIGHUPs"
    );
    assert_eq!(
        backend_names(admin).await,
        ["b0", "b1"],
        "the final file is in force"
    );
    assert!(
        children_of(warren.pid()).is_empty(),
        "warren has child processes"
    );
    assert!(
        threads_after <= threads_before + 2,
        "threads {threads_before} -> {threads_after}"
    );
    warren.signal(libc::SIGTERM);
    assert_eq!(
        warren.wait_exit(Duration::from_secs(5)).await.code(),
        Some(0)
    );
}

/// Write `text` into the FIFO at `path` from a thread (the open blocks until warren reads).
fn feed_fifo(path: &Path, text: String) -> std::thread::JoinHandle<()> {
    let path = path.to_owned();
    std::thread::spawn(move || std::fs::write(&path, text).expect("write to the FIFO"))
}

/// Criterion: 1, 3 and 10 SIGHUPs sent while warren is starting (its config file is a FIFO, so
/// it is provably mid-start, blocked reading it): 3 of 3 starts survive, the held SIGHUP reloads
/// once started (at least 1 reload, the second file's 2 backends in force), warren serves and
/// exits 0 on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_while_starting_does_not_kill_warren() {
    let (b0, b1) = (spawn_backend(echo).await, spawn_backend(echo).await);
    let dir = TempDir::new("signals-start");
    for signals in [1, 3, 10] {
        let (admin_port, port) = (free_port(), free_port());
        let path = dir.0.join(format!("warren-{signals}.toml"));
        let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo reads a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
        let mut warren = WarrenProc::spawn(
            &["run", "--config", path.to_str().unwrap()],
            dir.0.join(format!("warren-{signals}.log")),
        );
        // Its first act in `main` is to hold SIGHUP; then it blocks reading the FIFO.
        wait_for("warren to hold SIGHUP", Duration::from_secs(5), || {
            holds_sighup(warren.pid())
        })
        .await;
        for _ in 0..signals {
            warren.signal(libc::SIGHUP);
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(
            warren.exited().is_none(),
            "{signals} SIGHUPs while starting ended warren"
        );
        let first = feed_fifo(
            &path,
            process_config(admin_port, None, port, &[b0.addr], ""),
        );
        warren
            .logged("warren started", Duration::from_secs(10))
            .await;
        first.join().unwrap();
        // The held SIGHUP reloads: it reads the FIFO again, and gets the second config.
        let second = feed_fifo(
            &path,
            process_config(admin_port, None, port, &[b0.addr, b1.addr], ""),
        );
        let admin: SocketAddr = ([127, 0, 0, 1], admin_port).into();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        wait_for_async(
            &format!("the second config in force ({signals} SIGHUPs)"),
            Duration::from_secs(5),
            || async { backend_names(admin).await == ["b0", "b1"] },
        )
        .await;
        second.join().unwrap();
        assert!(
            connect_echo(addr, 2).await.is_some(),
            "serves after {signals} SIGHUPs"
        );
        warren.signal(libc::SIGTERM);
        let status = warren.wait_exit(Duration::from_secs(5)).await;
        assert_eq!(
            status.code(),
            Some(0),
            "{signals} SIGHUPs while starting: {status}"
        );
        let log = warren.log_text();
        println!(
            "{signals} SIGHUPs while starting: survived, {} reload(s)",
            log.matches("config reloaded").count()
        );
    }
}

/// Whether the main thread of `pid` blocks SIGHUP (signal 1: bit 0 of `SigBlk`).
fn holds_sighup(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let mask = s
                .lines()
                .find_map(|l| l.strip_prefix("SigBlk:"))?
                .trim()
                .to_owned();
            u64::from_str_radix(&mask, 16).ok()
        })
        .is_some_and(|mask| mask & 1 == 1)
}

/// Poll an async condition every 20 ms; panics naming `what` after `within`.
async fn wait_for_async<F, Fut>(what: &str, within: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !cond().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Processes whose command line mentions `marker`.
fn processes_mentioning(marker: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
        })
        .collect()
}

/// Criterion: SIGTERM 0, 1, 5 and 20 ms after a SIGHUP, with a hook hanging in `sleep`: 4 of 4
/// runs exit 0 within 5 s, leave 0 processes behind (the hook is killed) and 0 ports bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_reload_stops_cleanly_and_leaves_nothing_behind() {
    let b0 = spawn_backend(echo).await;
    let dir = TempDir::new("signals-term");
    let hook = dir.0.join("hang.sh");
    // The shell and its sleep both carry a marker in their command line.
    let sleep_marker = format!("60.{}", std::process::id());
    write_hook_script(&hook, &format!("sleep {sleep_marker}"));
    let dead = refused_addr();
    let marker = hook.to_str().unwrap().to_owned();
    let left_behind = || {
        [
            processes_mentioning(&marker),
            processes_mentioning(&sleep_marker),
        ]
        .concat()
    };
    for gap_ms in [0u64, 1, 5, 20] {
        let (admin_port, port) = (free_port(), free_port());
        let path = dir.0.join("warren.toml");
        let text = process_config(admin_port, None, port, &[b0.addr, dead], "")
            + &format!(
                "[pool.rabbitmq.health]\nkind = \"tcp\"\ninterval = \"100ms\"\ntimeout = \"50ms\"\n\
                 rise = 1\nfall = 1\n\n[[hook]]\non = [\"backend_down\"]\nexec = [\"{marker}\"]\ntimeout = \"2s\"\n"
            );
        write_atomically(&path, &text);
        let mut warren = WarrenProc::run_config(&path, dir.0.join("warren.log")).await;
        let started = Instant::now();
        wait_for("the hook to hang in sleep", Duration::from_secs(5), || {
            left_behind().len() == 2
        })
        .await;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        assert!(connect_echo(addr, 3).await.is_some());
        // Checked while they are alive: warren listens on its two ports, and the hanging hook
        // (the only process that could outlive warren) holds neither socket.
        let mut listening = listening_ports_of(warren.pid());
        listening.sort_unstable();
        listening.dedup();
        let mut expected = vec![port, admin_port];
        expected.sort_unstable();
        assert_eq!(listening, expected, "warren's listening sockets");
        for pid in left_behind() {
            let held = listening_ports_of(pid);
            assert!(
                held.is_empty(),
                "the hook (pid {pid}) holds listening sockets {held:?}"
            );
        }

        warren.signal(libc::SIGHUP);
        std::thread::sleep(Duration::from_millis(gap_ms));
        let sigterm = Instant::now();
        warren.signal(libc::SIGTERM);
        let status = warren.wait_exit(Duration::from_secs(5)).await;
        println!(
            "SIGTERM {gap_ms} ms after SIGHUP: {status} after {:?} (up {:?})",
            sigterm.elapsed(),
            started.elapsed()
        );
        assert_eq!(status.code(), Some(0));
        // Before the hook's processes are known to be gone: a leaked socket would still be
        // listening here.
        for p in [port, admin_port] {
            std::net::TcpListener::bind(("127.0.0.1", p))
                .unwrap_or_else(|e| panic!("port {p} still bound: {e}"));
        }
        wait_for("no process left behind", Duration::from_secs(1), || {
            left_behind().is_empty()
        })
        .await;
    }
}

/// `warren run --config PATH` with stderr a pipe: returns the child once "warren started" came
/// through the pipe, and the pipe's read end (drop it to break the pipe).
fn spawn_logging_to_a_pipe(
    path: &Path,
    extra: &[&str],
) -> (std::process::Child, std::process::ChildStderr) {
    use std::io::Read;
    let mut child = std::process::Command::new(WARREN_BIN)
        .args(["run", "--config", path.to_str().unwrap()])
        .args(extra)
        .env_remove("RUST_LOG")
        .env("RUST_BACKTRACE", "0")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn warren");
    let mut stderr = child.stderr.take().unwrap();
    let (mut seen, mut buf) = (String::new(), [0u8; 4096]);
    // Bounded: warren either logs the line or exits (EOF) within its start-up.
    while !seen.contains("warren started") {
        let n = stderr.read(&mut buf).expect("read warren's stderr");
        assert!(n > 0, "warren exited before starting: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    (child, stderr)
}

/// Wait for `child` to exit within `within` (polling); `None` if it is still running then.
async fn exit_within(
    child: &mut std::process::Child,
    within: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Criterion: with stderr a pipe whose reader is gone, SIGHUP reloads (reload count +1),
/// `POST /v1/reload` answers 200, data flows, at least 1 dropped log line is counted in
/// `warren_log_write_errors_total`, and SIGTERM ends warren with exit code 0 within 5 s (not 101).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_log_pipe_never_stops_signals_or_reloads() {
    let b0 = spawn_backend(echo).await;
    let dir = TempDir::new("signals-log-pipe");
    let (admin_port, port) = (free_port(), free_port());
    let path = dir.0.join("warren.toml");
    write_atomically(
        &path,
        &process_config(admin_port, None, port, &[b0.addr], ""),
    );
    let (child, stderr) = spawn_logging_to_a_pipe(&path, &[]);
    let mut child = KillOnDrop(child);
    drop(stderr);
    let admin: SocketAddr = ([127, 0, 0, 1], admin_port).into();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let ok_reloads = "warren_config_reloads_total{result=\"ok\"}";

    child.signal(libc::SIGHUP);
    wait_for_async("SIGHUP to reload", Duration::from_secs(5), || async {
        // The series appears with the first reload; only >= 1 passes.
        let (code, body) = http(admin, "GET", "/metrics", None, b"").await;
        code == 200 && metric_or_zero(&body, ok_reloads) >= 1.0
    })
    .await;
    let (code, body) = http(admin, "POST", "/v1/reload", None, b"").await;
    assert_eq!(code, 200, "POST /v1/reload: {body}");
    assert_eq!(admin_metric(admin, ok_reloads).await, 2.0);
    assert!(connect_echo(addr, 7).await.is_some(), "data flows");
    let dropped = admin_metric(admin, "warren_log_write_errors_total").await;
    assert!(dropped >= 1.0, "dropped log lines counted: {dropped}");

    child.signal(libc::SIGTERM);
    let status = exit_within(&mut child.0, Duration::from_secs(5))
        .await
        .expect("SIGTERM ends warren within 5 s");
    assert_eq!(status.code(), Some(0), "{status}");
    println!("broken log pipe: {dropped} log lines dropped, exit {status}");
}

/// A child process killed and reaped on drop, so a failing test leaves no warren behind.
struct KillOnDrop(std::process::Child);

impl KillOnDrop {
    /// Send `signal`; the child must not have been reaped yet.
    fn signal(&mut self, signal: i32) {
        assert!(
            self.0.try_wait().unwrap().is_none(),
            "warren already exited"
        );
        // SAFETY: kill(2) only sends a signal; the pid is our child and not yet reaped.
        let rc = unsafe { libc::kill(self.0.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Criterion: with one connection open and `--shutdown-grace 60s`, a first SIGTERM stops
/// accepting and waits; a second SIGTERM (and, in a second run, SIGINT after SIGTERM) closes the
/// open connection and ends warren with exit code 0 within 5 s, not after 60 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_stop_signal_during_the_grace_period_stops_at_once() {
    use tokio::io::AsyncReadExt;
    let b0 = spawn_backend(echo).await;
    let dir = TempDir::new("signals-fast-stop");
    for (first, second, name) in [
        (libc::SIGTERM, libc::SIGTERM, "SIGTERM, SIGTERM"),
        (libc::SIGTERM, libc::SIGINT, "SIGTERM, SIGINT"),
    ] {
        let (admin_port, port) = (free_port(), free_port());
        let path = dir.0.join("warren.toml");
        write_atomically(
            &path,
            &process_config(admin_port, None, port, &[b0.addr], ""),
        );
        let mut warren = WarrenProc::spawn(
            &[
                "run",
                "--config",
                path.to_str().unwrap(),
                "--shutdown-grace",
                "60s",
            ],
            dir.0.join("warren.log"),
        );
        warren
            .logged("warren started", Duration::from_secs(10))
            .await;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut open = connect_echo(addr, 9).await.expect("a connection open");

        warren.signal(first);
        warren
            .logged("waiting for open ones", Duration::from_secs(5))
            .await;
        assert!(warren.exited().is_none(), "{name}: the grace period runs");
        let second_at = Instant::now();
        warren.signal(second);
        let status = warren.wait_exit(Duration::from_secs(5)).await;
        assert_eq!(status.code(), Some(0), "{name}: {status}");
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(2), open.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "{name}: the open connection is closed: {read:?}"
        );
        println!(
            "{name}: stopped {:?} after the second signal",
            second_at.elapsed()
        );
        assert!(warren
            .log_text()
            .contains("again: closing the open connections now"));
    }
}
