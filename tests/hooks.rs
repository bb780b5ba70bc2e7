//! Hooks end to end: exec hooks as small shell scripts in a scratch directory, webhooks against
//! an in-process HTTP server on port 0. Every wait polls a file or a metric with a deadline.
#![cfg(unix)]

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{exec_hook, file_lines, metric_or_zero, wait_for, write_hook_script};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use warren::api::AdminState;
use warren::config::{HookAction, HookConfig, HookEvent};
use warren::hooks::{Event, HookMetrics, Hooks, HOOK_PATH, QUEUE_CAPACITY};
use warren::http_client::HttpUrl;
use warren::metrics::Metrics;

/// A fresh directory for one test's script and the files it writes.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "warren-hooks-{}-{test}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `body` as a shell script; `{dir}` in it becomes the scratch directory. Returns the
    /// argv that runs it (see [`write_hook_script`]).
    fn script(&self, body: &str) -> Vec<String> {
        write_hook_script(
            &self.path("hook.sh"),
            &body.replace("{dir}", &self.0.display().to_string()),
        )
    }

    fn lines(&self, name: &str) -> Vec<String> {
        file_lines(&self.path(name))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn webhook(url: String, timeout: Duration) -> HookConfig {
    HookConfig {
        on: vec![HookEvent::BackendDown, HookEvent::PoolDown],
        action: HookAction::Webhook(HttpUrl::parse(&url).expect("a valid webhook URL")),
        timeout,
    }
}

fn backend_event(kind: HookEvent, backend: &str, available: usize) -> Event {
    Event {
        kind,
        pool: "rabbitmq".to_string(),
        backend: Some(backend.to_string()),
        backend_addr: Some("10.0.0.1:5672".to_string()),
        available,
        total: 2,
        admin_state: Some(AdminState::Active),
        planned: false,
    }
}

/// `hook_runs_total{event,result}` as exported (0 while absent).
fn runs(metrics: &Metrics, kind: HookEvent, result: &str) -> u64 {
    let series = format!(
        "warren_hook_runs_total{{event=\"{}\",result=\"{result}\"}}",
        kind.as_str()
    );
    metric_or_zero(&metrics.encode(), &series) as u64
}

const LONG: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_hook_gets_exactly_the_documented_environment() {
    let dir = Scratch::new("env");
    let argv = dir.script("env > {dir}/env.tmp && mv {dir}/env.tmp {dir}/env");
    let metrics = Arc::new(Metrics::new());
    let hooks = Hooks::start(
        &[exec_hook(&[HookEvent::BackendDown], argv, LONG)],
        HookMetrics::register(metrics.registry()),
    );
    hooks.emit(backend_event(HookEvent::BackendDown, "rabbit-a", 1));
    wait_for("the env file", LONG, || dir.path("env").exists()).await;

    let mut env: BTreeMap<String, String> = dir
        .lines("env")
        .iter()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    // The shell itself may export these; nothing else may appear.
    for shell_own in ["PWD", "SHLVL", "_", "OLDPWD"] {
        env.remove(shell_own);
    }
    let expected: BTreeMap<String, String> = [
        ("PATH", HOOK_PATH),
        ("WARREN_EVENT", "backend_down"),
        ("WARREN_POOL", "rabbitmq"),
        ("WARREN_BACKEND", "rabbit-a"),
        ("WARREN_BACKEND_ADDR", "10.0.0.1:5672"),
        ("WARREN_AVAILABLE", "1"),
        ("WARREN_TOTAL", "2"),
        ("WARREN_ADMIN_STATE", "active"),
        ("WARREN_PLANNED", "false"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(env, expected);
    assert!(!env.contains_key("WARREN_TOKEN") && !env.contains_key("HOME"));
    assert!(!env.keys().any(|k| k.starts_with("CARGO")));

    wait_for("the ok count", LONG, || {
        runs(&metrics, HookEvent::BackendDown, "ok") == 1
    })
    .await;
    hooks.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_events_get_empty_backend_variables() {
    let dir = Scratch::new("pool-env");
    let argv = dir.script(
        "echo \"[$WARREN_EVENT][$WARREN_BACKEND][$WARREN_BACKEND_ADDR][$WARREN_AVAILABLE]\" \\
         >> {dir}/out",
    );
    let metrics = Arc::new(Metrics::new());
    let hooks = Hooks::start(
        &[exec_hook(&[HookEvent::PoolDown], argv, LONG)],
        HookMetrics::register(metrics.registry()),
    );
    hooks.emit(Event {
        kind: HookEvent::PoolDown,
        pool: "rabbitmq".to_string(),
        backend: None,
        backend_addr: None,
        available: 0,
        total: 2,
        admin_state: None,
        planned: false,
    });
    wait_for("the run", LONG, || {
        runs(&metrics, HookEvent::PoolDown, "ok") == 1
    })
    .await;
    assert_eq!(dir.lines("out"), vec!["[pool_down][][][0]"]);
    hooks.shutdown().await;
}

/// The state letter and process group of every live process, from /proc.
fn processes() -> Vec<(u32, char, u32)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) S ppid pgrp ...": comm may hold spaces and parentheses.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if let (Some(state), Some(pgrp)) = (fields.first(), fields.get(2)) {
            let state = state.chars().next().unwrap_or('?');
            found.push((pid, state, pgrp.parse().unwrap_or(0)));
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_hook_is_killed_with_its_group_and_the_next_event_runs() {
    let dir = Scratch::new("hang");
    let argv = dir.script(
        "echo $$ > {dir}/pid.tmp && mv {dir}/pid.tmp {dir}/pid.$WARREN_BACKEND\n\
         if [ \"$WARREN_BACKEND\" = hang ]; then sleep 1000 & sleep 1000; wait; fi\n\
         echo \"$WARREN_BACKEND\" >> {dir}/ran",
    );
    let metrics = Arc::new(Metrics::new());
    let timeout = Duration::from_millis(300);
    let hooks = Hooks::start(
        &[exec_hook(&[HookEvent::BackendDown], argv, timeout)],
        HookMetrics::register(metrics.registry()),
    );
    let started = Instant::now();
    hooks.emit(backend_event(HookEvent::BackendDown, "hang", 1));
    wait_for("the hanging hook to start", LONG, || {
        dir.path("pid.hang").exists()
    })
    .await;
    hooks.emit(backend_event(HookEvent::BackendDown, "next", 1));

    wait_for("the timeout", LONG, || {
        runs(&metrics, HookEvent::BackendDown, "timeout") == 1
    })
    .await;
    assert!(
        started.elapsed() >= timeout,
        "killed before its timeout: {:?}",
        started.elapsed()
    );
    wait_for("the next event's run", LONG, || {
        runs(&metrics, HookEvent::BackendDown, "ok") == 1
    })
    .await;
    assert_eq!(
        dir.lines("ran"),
        vec!["next"],
        "the hung run must not finish"
    );

    let pgid: u32 = dir.lines("pid.hang")[0].trim().parse().expect("a pid");
    // Reaped: no zombie of ours is left (the pid is gone from /proc altogether).
    assert!(
        !Path::new(&format!("/proc/{pgid}")).exists(),
        "the killed hook {pgid} was not reaped"
    );
    // The background `sleep` died with the group. Once orphaned it is init's to reap, so a
    // zombie of it is not ours; a live member would be.
    wait_for(
        "the hook's process group to die",
        Duration::from_secs(2),
        || {
            !processes()
                .iter()
                .any(|&(_, state, pgrp)| pgrp == pgid && state != 'Z')
        },
    )
    .await;
    hooks.shutdown().await;
}

/// A `MakeWriter` that keeps everything logged.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_hook_is_counted_and_its_output_logged() {
    let dir = Scratch::new("fail");
    let argv = dir.script(
        "echo \"paging on-call\"\n\
         echo \"boom: $WARREN_BACKEND unreachable\" >&2\n\
         exit 1",
    );
    let log = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer({
            let log = log.clone();
            move || log.clone()
        })
        .finish();
    // The workers inherit the subscriber that is current when they start.
    let _guard = tracing::subscriber::set_default(subscriber);
    let metrics = Arc::new(Metrics::new());
    let hooks = Hooks::start(
        &[exec_hook(&[HookEvent::BackendDown], argv, LONG)],
        HookMetrics::register(metrics.registry()),
    );
    hooks.emit(backend_event(HookEvent::BackendDown, "rabbit-a", 1));
    wait_for("the failed run", LONG, || {
        runs(&metrics, HookEvent::BackendDown, "failed") == 1
    })
    .await;
    wait_for("the log line", LONG, || log.text().contains("hook failed")).await;
    let text = log.text();
    for expected in [
        "WARN",
        "result=\"failed\"",
        "status=\"exit 1\"",
        "boom: rabbit-a unreachable",
        "paging on-call",
        "event=\"backend_down\"",
        "backend=\"rabbit-a\"",
        "duration_ms=",
    ] {
        assert!(text.contains(expected), "{expected:?} not in log: {text}");
    }
    assert_eq!(runs(&metrics, HookEvent::BackendDown, "ok"), 0);
    hooks.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hook_that_cannot_start_is_failed() {
    let metrics = Arc::new(Metrics::new());
    let argv = vec!["/nonexistent/warren-hook".to_string()];
    let hooks = Hooks::start(
        &[exec_hook(&[HookEvent::BackendDown], argv, LONG)],
        HookMetrics::register(metrics.registry()),
    );
    hooks.emit(backend_event(HookEvent::BackendDown, "rabbit-a", 1));
    wait_for("the failed run", LONG, || {
        runs(&metrics, HookEvent::BackendDown, "failed") == 1
    })
    .await;
    hooks.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_are_sequential_and_identical_events_coalesce() {
    let dir = Scratch::new("coalesce");
    // mkdir is atomic: it fails if another run holds the lock, i.e. if runs overlap.
    let argv = dir.script(
        "mkdir {dir}/lock 2>/dev/null || echo overlap >> {dir}/out\n\
         echo started >> {dir}/started\n\
         sleep 0.3\n\
         echo \"$WARREN_EVENT $WARREN_BACKEND $WARREN_AVAILABLE\" >> {dir}/out\n\
         rmdir {dir}/lock",
    );
    let metrics = Arc::new(Metrics::new());
    let hooks = Hooks::start(
        &[exec_hook(
            &[HookEvent::BackendDown, HookEvent::BackendUp],
            argv,
            LONG,
        )],
        HookMetrics::register(metrics.registry()),
    );
    hooks.emit(backend_event(HookEvent::BackendDown, "rabbit-a", 0));
    wait_for("the first run to start", LONG, || {
        dir.path("started").exists()
    })
    .await;
    for available in 1..=10 {
        hooks.emit(backend_event(HookEvent::BackendDown, "rabbit-a", available));
    }
    hooks.emit(backend_event(HookEvent::BackendUp, "rabbit-a", 2));

    wait_for("three runs", LONG, || {
        runs(&metrics, HookEvent::BackendDown, "ok") == 2
            && runs(&metrics, HookEvent::BackendUp, "ok") == 1
    })
    .await;
    assert_eq!(
        dir.lines("out"),
        vec![
            "backend_down rabbit-a 0",
            "backend_down rabbit-a 10",
            "backend_up rabbit-a 2"
        ]
    );
    assert_eq!(dir.lines("started").len(), 3);
    hooks.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_is_bounded_and_overflow_is_counted_as_dropped() {
    let dir = Scratch::new("bound");
    // The first run blocks until the test releases it (bounded: 10 s).
    let argv = dir.script(
        "if [ \"$WARREN_BACKEND\" = first ]; then\n\
           echo started > {dir}/started\n\
           i=0\n\
           while [ ! -e {dir}/release ] && [ $i -lt 500 ]; do sleep 0.02; i=$((i+1)); done\n\
         fi\n\
         echo \"$WARREN_BACKEND\" >> {dir}/out",
    );
    let metrics = Arc::new(Metrics::new());
    let hooks = Hooks::start(
        &[exec_hook(
            &[HookEvent::BackendDown],
            argv,
            Duration::from_secs(30),
        )],
        HookMetrics::register(metrics.registry()),
    );
    hooks.emit(backend_event(HookEvent::BackendDown, "first", 1));
    wait_for("the first run to start", LONG, || {
        dir.path("started").exists()
    })
    .await;

    let emitting = Instant::now();
    for i in 0..100 {
        hooks.emit(backend_event(HookEvent::BackendDown, &format!("b{i}"), 1));
    }
    assert!(
        emitting.elapsed() < Duration::from_secs(1),
        "emit waited on the blocked hook: {:?}",
        emitting.elapsed()
    );
    let dropped = (100 - QUEUE_CAPACITY) as u64;
    assert_eq!(runs(&metrics, HookEvent::BackendDown, "dropped"), dropped);

    std::fs::write(dir.path("release"), "").expect("release the hook");
    wait_for("the queued runs", Duration::from_secs(30), || {
        runs(&metrics, HookEvent::BackendDown, "ok") == 1 + QUEUE_CAPACITY as u64
    })
    .await;
    let expected: Vec<String> = std::iter::once("first".to_string())
        .chain((dropped as usize..100).map(|i| format!("b{i}")))
        .collect();
    assert_eq!(dir.lines("out"), expected, "the oldest events are dropped");
    hooks.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hook_runs_only_on_subscribed_events() {
    let dir = Scratch::new("subscribed");
    let argv = dir.script("echo \"$WARREN_EVENT\" >> {dir}/out");
    let metrics = Arc::new(Metrics::new());
    let hooks = Hooks::start(
        &[exec_hook(&[HookEvent::PoolFailover], argv, LONG)],
        HookMetrics::register(metrics.registry()),
    );
    hooks.emit(backend_event(HookEvent::BackendDown, "rabbit-a", 1));
    hooks.emit(Event {
        kind: HookEvent::PoolFailover,
        pool: "rabbitmq".to_string(),
        backend: None,
        backend_addr: None,
        available: 1,
        total: 3,
        admin_state: None,
        planned: false,
    });
    // Runs are in order, so a queued backend_down would have run before this.
    wait_for("the failover run", LONG, || {
        runs(&metrics, HookEvent::PoolFailover, "ok") == 1
    })
    .await;
    assert_eq!(dir.lines("out"), vec!["pool_failover"]);
    for result in ["ok", "failed", "timeout", "dropped"] {
        assert_eq!(runs(&metrics, HookEvent::BackendDown, result), 0);
    }
    hooks.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_kills_a_hanging_run_within_its_timeout() {
    let dir = Scratch::new("shutdown");
    // Every run records its backend; only backend "a" hangs, every other run ends `ok` at once.
    let argv = dir.script(
        "echo \"$WARREN_BACKEND\" >> {dir}/out\n\
         if [ \"$WARREN_BACKEND\" = a ]; then echo started > {dir}/started; sleep 1000; fi",
    );
    let metrics = Arc::new(Metrics::new());
    let timeout = Duration::from_millis(300);
    let hooks = Hooks::start(
        &[exec_hook(&[HookEvent::BackendDown], argv, timeout)],
        HookMetrics::register(metrics.registry()),
    );
    // The hook can end `ok`: so the `ok` count below could move if a discarded event ran.
    hooks.emit(backend_event(HookEvent::BackendDown, "z", 1));
    wait_for("the quick run", LONG, || {
        runs(&metrics, HookEvent::BackendDown, "ok") == 1
    })
    .await;
    hooks.emit(backend_event(HookEvent::BackendDown, "a", 1));
    wait_for("the run to start", LONG, || dir.path("started").exists()).await;
    hooks.emit(backend_event(HookEvent::BackendDown, "b", 1));
    let other_handle = hooks.clone();

    let stopping = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), hooks.shutdown())
        .await
        .expect("shutdown is bounded by the hook's timeout");
    assert!(stopping.elapsed() < Duration::from_secs(2));
    assert_eq!(runs(&metrics, HookEvent::BackendDown, "timeout"), 1);
    // The queued event was discarded, and a clone can no longer queue: neither "b" nor "c" runs,
    // though either would end `ok` within milliseconds. Nothing is left to wait on after
    // shutdown, so watch for 1 s (a run of this script takes a few ms).
    other_handle.emit(backend_event(HookEvent::BackendDown, "c", 1));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(runs(&metrics, HookEvent::BackendDown, "ok"), 1);
    assert_eq!(dir.lines("out"), vec!["z", "a"]);
}

/// One request as the test server saw it.
struct Received {
    head: String,
    body: String,
}

/// An HTTP/1.1 server on 127.0.0.1:0 answering every request with `status`; `None` never
/// answers (but keeps the connection open).
async fn http_server(status: Option<u16>) -> (u16, mpsc::UnboundedReceiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            match status {
                Some(status) => {
                    tokio::spawn(answer(socket, status, tx.clone()));
                }
                None => held.push(socket),
            }
        }
    });
    (port, rx)
}

async fn answer(mut socket: TcpStream, status: u16, tx: mpsc::UnboundedSender<Received>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head, body_start) = loop {
        let n = socket.read(&mut chunk).await.expect("read request");
        assert!(n > 0, "request ended early");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break (String::from_utf8_lossy(&buf[..end]).into_owned(), end + 4);
        }
        assert!(buf.len() < 64 * 1024, "request head too long");
    };
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .expect("a content-length");
    while buf.len() < body_start + length {
        let n = socket.read(&mut chunk).await.expect("read body");
        assert!(n > 0, "body ended early");
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[body_start..body_start + length]).into_owned();
    let reply_body = if status == 200 { "" } else { "queue exploded" };
    let reply = format!(
        "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply_body}",
        reply_body.len()
    );
    socket.write_all(reply.as_bytes()).await.expect("reply");
    let _ = tx.send(Received { head, body });
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_posts_the_event_as_json() {
    let (port, mut requests) = http_server(Some(200)).await;
    let metrics = Arc::new(Metrics::new());
    let url = format!("http://127.0.0.1:{port}/warren-events");
    let hooks = Hooks::start(
        &[webhook(url, LONG)],
        HookMetrics::register(metrics.registry()),
    );
    hooks.emit(backend_event(HookEvent::BackendDown, "rabbit-a", 1));
    hooks.emit(Event {
        kind: HookEvent::PoolDown,
        pool: "rabbitmq".to_string(),
        backend: None,
        backend_addr: None,
        available: 0,
        total: 2,
        admin_state: None,
        planned: false,
    });

    let first = tokio::time::timeout(LONG, requests.recv())
        .await
        .expect("a request within 10s")
        .expect("the server is running");
    assert!(
        first.head.starts_with("POST /warren-events HTTP/1.1\r\n"),
        "{}",
        first.head
    );
    assert_eq!(
        header(&first.head, "content-type"),
        Some("application/json")
    );
    assert_eq!(
        header(&first.head, "user-agent"),
        Some(concat!("warren/", env!("CARGO_PKG_VERSION")))
    );
    assert_eq!(
        header(&first.head, "host"),
        Some(format!("127.0.0.1:{port}").as_str())
    );
    assert_eq!(
        first.body,
        r#"{"event":"backend_down","pool":"rabbitmq","backend":"rabbit-a","backend_addr":"10.0.0.1:5672","available":1,"total":2,"admin_state":"active","planned":false}"#
    );
    let second = tokio::time::timeout(LONG, requests.recv())
        .await
        .expect("a second request within 10s")
        .expect("the server is running");
    assert_eq!(
        second.body,
        r#"{"event":"pool_down","pool":"rabbitmq","backend":null,"backend_addr":null,"available":0,"total":2,"admin_state":null,"planned":false}"#
    );
    wait_for("both runs counted", LONG, || {
        runs(&metrics, HookEvent::BackendDown, "ok") == 1
            && runs(&metrics, HookEvent::PoolDown, "ok") == 1
    })
    .await;
    hooks.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_error_status_is_failed() {
    let (port, mut requests) = http_server(Some(500)).await;
    let metrics = Arc::new(Metrics::new());
    // A host name, so the URL goes through the resolver.
    let url = format!("http://localhost:{port}/hook");
    let hooks = Hooks::start(
        &[webhook(url, LONG)],
        HookMetrics::register(metrics.registry()),
    );
    hooks.emit(backend_event(HookEvent::BackendDown, "rabbit-a", 1));
    tokio::time::timeout(LONG, requests.recv())
        .await
        .expect("a request within 10s")
        .expect("the server is running");
    wait_for("the failed run", LONG, || {
        runs(&metrics, HookEvent::BackendDown, "failed") == 1
    })
    .await;
    assert_eq!(runs(&metrics, HookEvent::BackendDown, "ok"), 0);
    hooks.shutdown().await;
}

/// `user:pass@` in a webhook URL is accepted at load and sent as HTTP basic authentication
/// (percent-decoded); the password appears in no log line. It used to be refused at load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_sends_the_urls_user_info_as_basic_auth() {
    let (port, mut requests) = http_server(Some(200)).await;
    let metrics = Arc::new(Metrics::new());
    let text = format!(
        "[[listener]]\nname = \"amqp\"\nlisten = \"127.0.0.1:5672\"\npool = \"p\"\n\n\
         [pool.p]\n[[pool.p.backend]]\nname = \"a\"\naddr = \"127.0.0.1:1\"\n\n\
         [[hook]]\non = [\"backend_down\"]\n\
         webhook = \"http://ops:hunter%402@127.0.0.1:{port}/warren-events\"\n"
    );
    let config = warren::config::from_toml_offline(&text, Path::new("hooks.toml"))
        .expect("a webhook URL with user info loads");
    let log = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer({
            let log = log.clone();
            move || log.clone()
        })
        .finish();
    // The workers inherit the subscriber that is current when they start.
    let _guard = tracing::subscriber::set_default(subscriber);
    let hooks = Hooks::start(&config.hooks, HookMetrics::register(metrics.registry()));
    hooks.emit(backend_event(HookEvent::BackendDown, "rabbit-a", 1));
    let request = tokio::time::timeout(LONG, requests.recv())
        .await
        .expect("a request within 10s")
        .expect("the server is running");
    // base64("ops:hunter@2")
    assert_eq!(
        header(&request.head, "authorization"),
        Some("Basic b3BzOmh1bnRlckAy")
    );
    assert_eq!(
        header(&request.head, "host"),
        Some(format!("127.0.0.1:{port}").as_str())
    );
    wait_for("the run counted", LONG, || {
        runs(&metrics, HookEvent::BackendDown, "ok") == 1
    })
    .await;
    wait_for("the log line", LONG, || log.text().contains("hook ran")).await;
    let text = log.text();
    assert!(
        text.contains(&format!("hook=\"http://127.0.0.1:{port}/warren-events\"")),
        "{text}"
    );
    for secret in ["hunter", "b3BzOmh1bnRlckAy"] {
        assert!(!text.contains(secret), "{secret} logged: {text}");
    }
    hooks.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_without_answer_times_out() {
    let (port, _requests) = http_server(None).await;
    let metrics = Arc::new(Metrics::new());
    let timeout = Duration::from_millis(300);
    let url = format!("http://127.0.0.1:{port}/hook");
    let hooks = Hooks::start(
        &[webhook(url, timeout)],
        HookMetrics::register(metrics.registry()),
    );
    let started = Instant::now();
    hooks.emit(backend_event(HookEvent::BackendDown, "rabbit-a", 1));
    wait_for("the timeout", LONG, || {
        runs(&metrics, HookEvent::BackendDown, "timeout") == 1
    })
    .await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= timeout && elapsed < Duration::from_secs(3),
        "timed out after {elapsed:?}"
    );
    hooks.shutdown().await;
}

/// A reload keeps an unchanged hook running: its run in progress goes on, its queued events
/// run (none discarded), nothing runs twice. A changed hook takes over the queue of the one
/// it replaces and starts only after that one's run in progress ended (never both at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_unchanged_hooks_and_hands_a_changed_hooks_queue_over() {
    let dir = Scratch::new("reload");
    // `sh hook.sh VERSION`: a run for a backend named block* waits for {dir}/release-NAME.
    let argv = dir.script(
        "echo \"$1:$WARREN_BACKEND:start\" >> {dir}/out\n\
         case \"$WARREN_BACKEND\" in block*)\n\
           i=0\n\
           while [ ! -e {dir}/release-$WARREN_BACKEND ] && [ $i -lt 1000 ]; do sleep 0.01; i=$((i+1)); done;;\n\
         esac\n\
         echo \"$1:$WARREN_BACKEND:end\" >> {dir}/out",
    );
    let version = |v: &str| {
        let mut argv = argv.clone();
        argv.push(v.to_string());
        exec_hook(&[HookEvent::BackendDown], argv, Duration::from_secs(30))
    };
    let metrics = Arc::new(Metrics::new());
    let down = |name: &str| backend_event(HookEvent::BackendDown, name, 1);
    let hooks = Hooks::start(&[version("v1")], HookMetrics::register(metrics.registry()));
    hooks.emit(down("block1"));
    wait_for("the first run", LONG, || dir.lines("out").len() == 1).await;
    hooks.emit(down("a"));
    hooks.emit(down("b"));

    // The same config: the same hook carries on.
    let (hooks, retired) = hooks.reload(&[version("v1")]);
    tokio::spawn(retired);
    hooks.emit(down("c"));
    std::fs::write(dir.path("release-block1"), "").unwrap();
    wait_for("the queued runs", LONG, || {
        runs(&metrics, HookEvent::BackendDown, "ok") == 4
    })
    .await;
    let expected: Vec<String> = ["block1", "a", "b", "c"]
        .iter()
        .flat_map(|b| [format!("v1:{b}:start"), format!("v1:{b}:end")])
        .collect();
    assert_eq!(
        dir.lines("out"),
        expected,
        "an unchanged hook across a reload"
    );

    // A changed hook: v2 replaces v1 while v1 runs, with an event queued.
    std::fs::remove_file(dir.path("out")).unwrap();
    hooks.emit(down("block2"));
    wait_for("v1's run", LONG, || dir.lines("out").len() == 1).await;
    hooks.emit(down("d"));
    let (hooks, retired) = hooks.reload(&[version("v2")]);
    tokio::spawn(retired);
    hooks.emit(down("e"));
    std::fs::write(dir.path("release-block2"), "").unwrap();
    wait_for("the handed-over runs", LONG, || {
        runs(&metrics, HookEvent::BackendDown, "ok") == 7
    })
    .await;
    assert_eq!(
        dir.lines("out"),
        vec![
            "v1:block2:start",
            "v1:block2:end",
            "v2:d:start",
            "v2:d:end",
            "v2:e:start",
            "v2:e:end"
        ],
        "a changed hook: the old run ends first, then the queue runs on the new version"
    );
    assert_eq!(runs(&metrics, HookEvent::BackendDown, "dropped"), 0);
    hooks.shutdown().await;
}
