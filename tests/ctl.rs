//! `warren ctl` as an operator runs it, against a fake admin API: an HTTP/1.1 responder on
//! 127.0.0.1 port 0 in a thread, serving the `/v1` JSON contract with scripted state changes and
//! recording every request. Each `warren ctl` is a child process with a deadline.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const WARREN: &str = env!("CARGO_BIN_EXE_warren");

/// How long one `warren ctl` may run before the test kills it and fails.
const RUN_LIMIT: Duration = Duration::from_secs(30);

/// What the fake saw of one request.
#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    path: String,
    /// Header names lower-cased.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Recorded {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }

    fn is(&self, method: &str, path: &str) -> bool {
        self.method == method && self.path == path
    }
}

type Handler = dyn Fn(&Recorded) -> (u16, Value) + Send + Sync;

/// The fake admin API. Dropping it stops the thread.
struct FakeAdmin {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeAdmin {
    /// Serve `handler`'s answers; a handler sees every request (including `Authorization`).
    fn start(handler: impl Fn(&Recorded) -> (u16, Value) + Send + Sync + 'static) -> FakeAdmin {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let thread = {
            let (requests, stop) = (requests.clone(), stop.clone());
            std::thread::spawn(move || {
                // Ends when `Drop` sets `stop` and connects once to wake `accept`.
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    if let Some(request) = answer(stream, &*handler) {
                        requests.lock().unwrap().push(request);
                    }
                }
            })
        };
        FakeAdmin {
            addr,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for FakeAdmin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Read one request from `stream`, answer it with `Connection: close`; `None` if it was not HTTP.
fn answer(stream: TcpStream, handler: &Handler) -> Option<Recorded> {
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut headers = Vec::new();
    // A request head has a bounded number of lines; stop at the blank one.
    for _ in 0..100 {
        line.clear();
        reader.read_line(&mut line).ok()?;
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        let (name, value) = trimmed.split_once(':')?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map_or(0, |(_, v)| v.parse().unwrap_or(0));
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    let request = Recorded {
        method,
        path,
        headers,
        body,
    };
    let (code, json) = handler(&request);
    let body = json.to_string();
    let reason = match code {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        409 => "Conflict",
        _ => "Other",
    };
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {code} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.flush();
    Some(request)
}

/// Answers 401 unless the request carries `Bearer <token>`, else defers to `handler`.
fn with_token(
    token: &'static str,
    handler: impl Fn(&Recorded) -> (u16, Value) + Send + Sync + 'static,
) -> impl Fn(&Recorded) -> (u16, Value) + Send + Sync + 'static {
    move |r: &Recorded| {
        if r.header("authorization") == Some(format!("Bearer {token}").as_str()) {
            handler(r)
        } else {
            (401, json!({"error": "missing or wrong bearer token"}))
        }
    }
}

fn not_found(r: &Recorded) -> (u16, Value) {
    (
        404,
        json!({"error": format!("no such endpoint: {} {}", r.method, r.path)}),
    )
}

/// One backend as `/v1/status` shows it.
fn backend(name: &str, health: &str, admin: &str, conns: u64) -> Value {
    json!({
        "name": name, "addr": format!("10.0.0.{}:5672", name.len()), "weight": 1, "backup": false,
        "health": health, "admin": admin,
        "available": health != "down" && admin == "active",
        "active_connections": conns,
        "health_changed_at": "2026-11-21T23:59:00Z",
        "drain_deadline": null,
        "last_probe": {"up": health == "up",
                       "reason": if health == "up" { "Connection.Start received (RabbitMQ 3.12.1)" } else { "connection refused" },
                       "duration_ms": 1.2, "at": "2026-11-21T23:59:01Z"}
    })
}

/// A `/v1/status` answer with these pools.
fn status(pools: Vec<(&str, Vec<Value>)>) -> Value {
    let pools: Vec<Value> = pools
        .into_iter()
        .map(|(name, backends)| {
            let available = backends.iter().filter(|b| b["available"] == true).count();
            json!({"name": name, "balance": "least_conn", "min_available": 1,
                   "available": available, "total": backends.len(), "backends": backends})
        })
        .collect();
    json!({
        "version": "0.1.0",
        "listeners": [{"name": "amqp", "listen": "0.0.0.0:5672", "pool": "rabbitmq", "active_connections": 3}],
        "pools": pools
    })
}

/// rabbitmq: rabbit-a, shared; other: shared.
fn two_pools() -> Value {
    status(vec![
        (
            "rabbitmq",
            vec![
                backend("rabbit-a", "up", "active", 1),
                backend("shared", "up", "active", 0),
            ],
        ),
        ("other", vec![backend("shared", "up", "active", 0)]),
    ])
}

/// A finished `warren ctl`.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

/// Run `warren ctl --admin URL ARGS...` with a 50 ms poll, no inherited token or admin URL.
fn ctl(admin: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    let started = Instant::now();
    let mut child = Command::new(WARREN)
        .arg("ctl")
        .arg("--admin")
        .arg(admin)
        .args(args)
        .env_remove("WARREN_TOKEN")
        .env_remove("WARREN_ADMIN")
        .env("WARREN_CTL_POLL_MS", "50")
        .env("COLUMNS", "200")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn warren ctl");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for warren ctl") {
            break status;
        }
        if started.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("warren ctl {args:?} still running after {RUN_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let elapsed = started.elapsed();
    Run {
        code: status.code(),
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
        elapsed,
    }
}

/// A token file, removed on drop.
struct TokenFile(PathBuf);

impl TokenFile {
    fn new(contents: &str) -> TokenFile {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("warren-ctl-{}-{n}.token", std::process::id()));
        std::fs::write(&path, contents).expect("write token file");
        TokenFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("temp path is UTF-8")
    }
}

impl Drop for TokenFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn status_prints_a_header_per_pool_and_an_aligned_row_per_backend() {
    let mut served = two_pools();
    served["pools"][0]["backends"]
        .as_array_mut()
        .unwrap()
        .push(json!({
            "name": "rabbit-backup-1", "addr": "10.0.0.100:5672", "weight": 1, "backup": true,
            "health": "unknown", "admin": "drained", "available": false, "active_connections": 0,
            "health_changed_at": null, "drain_deadline": null, "last_probe": null
        }));
    served["pools"][0]["total"] = json!(3);
    let reply = served.clone();
    let fake = FakeAdmin::start(with_token("t0ken", move |r| {
        if r.is("GET", "/v1/status") {
            (200, reply.clone())
        } else {
            not_found(r)
        }
    }));
    let run = ctl(&fake.url(), &["status"], &[("WARREN_TOKEN", "t0ken")]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run
        .stdout
        .contains("pool rabbitmq (least_conn): 2/3 available, min_available 1\n"));
    assert!(run
        .stdout
        .contains("pool other (least_conn): 1/1 available, min_available 1\n"));
    let lines: Vec<&str> = run.stdout.lines().collect();
    let headers: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].trim_start().starts_with("NAME "))
        .collect();
    assert_eq!(headers.len(), 2, "one table per pool: {}", run.stdout);
    let expected: [&[[&str; 5]]; 2] = [
        &[
            ["rabbit-a", "10.0.0.8:5672", "up", "active", "1"],
            ["shared", "10.0.0.6:5672", "up", "active", "0"],
            [
                "rabbit-backup-1 (backup)",
                "10.0.0.100:5672",
                "unknown",
                "drained",
                "0",
            ],
        ],
        &[["shared", "10.0.0.6:5672", "up", "active", "0"]],
    ];
    for (&header, rows) in headers.iter().zip(expected) {
        let columns: Vec<usize> = ["NAME", "ADDR", "HEALTH", "ADMIN", "CONNS", "LAST PROBE"]
            .iter()
            .map(|c| lines[header].find(c).expect("column title"))
            .collect();
        for (i, cells) in rows.iter().enumerate() {
            let row = lines[header + 1 + i];
            for (&at, cell) in columns.iter().zip(cells) {
                assert_eq!(row.get(at..at + cell.len()), Some(*cell), "{row:?}");
                assert_eq!(row.as_bytes().get(at + cell.len()), Some(&b' '), "{row:?}");
            }
            let probe = &row[columns[5]..];
            if cells[0].contains("backup") {
                assert_eq!(probe, "-");
            } else {
                assert!(
                    probe.starts_with("up 1.2ms ")
                        && probe.ends_with(" ago: Connection.Start received (RabbitMQ 3.12.1)"),
                    "{row:?}"
                );
            }
        }
    }
    // The status, then the fleet (404 here: a warren without [fleet]), each with the token.
    let requests = fake.requests();
    assert_eq!(requests.len(), 2);
    assert!(requests[1].is("GET", "/v1/fleet"));
    for r in &requests {
        assert_eq!(r.header("authorization"), Some("Bearer t0ken"));
    }
    assert!(!run.stdout.contains("fleet"), "{}", run.stdout);
    assert!(!run.stdout.contains("t0ken") && !run.stderr.contains("t0ken"));
}

#[test]
fn status_json_prints_what_the_api_served() {
    let served = two_pools();
    let reply = served.clone();
    let fake = FakeAdmin::start(move |r| {
        if r.is("GET", "/v1/status") {
            (200, reply.clone())
        } else {
            not_found(r)
        }
    });
    // `--json` is accepted after the subcommand too.
    let run = ctl(&fake.url(), &["status", "--json"], &[]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let printed: Value = serde_json::from_str(&run.stdout).expect("stdout is JSON");
    assert_eq!(printed, served);
    assert!(run.stdout.contains("\n  "), "pretty-printed");
}

/// The drain script: POST answers 3 open; polls see 3, then 1, then drained.
fn draining_fake(polls: Arc<AtomicUsize>) -> FakeAdmin {
    FakeAdmin::start(with_token("s3cret", move |r| {
        if r.is("POST", "/v1/pools/rabbitmq/backends/rabbit-a/drain") {
            return (
                202,
                json!({"pool": "rabbitmq", "backend": "rabbit-a", "admin": "draining",
                       "active_connections": 3, "drain_deadline": "2026-11-22T00:05:00Z"}),
            );
        }
        if !r.is("GET", "/v1/status") {
            return not_found(r);
        }
        let (admin, conns) = match polls.fetch_add(1, Ordering::SeqCst) {
            0 => ("draining", 3),
            1 => ("draining", 1),
            _ => ("drained", 0),
        };
        let served = status(vec![(
            "rabbitmq",
            vec![
                backend("rabbit-a", "up", admin, conns),
                backend("rabbit-b", "up", "active", 5),
            ],
        )]);
        (200, served)
    }))
}

#[test]
fn drain_wait_reports_progress_until_drained() {
    let polls = Arc::new(AtomicUsize::new(0));
    let fake = draining_fake(polls.clone());
    let token = TokenFile::new("  s3cret\n");
    let run = ctl(
        &fake.url(),
        &[
            "--token-file",
            token.path(),
            "drain",
            "rabbit-a",
            "--pool",
            "rabbitmq",
            "--deadline",
            "5m",
            "--force",
            "--wait",
        ],
        &[],
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "draining rabbit-a (pool rabbitmq): 3 connections open; the rest are closed at 2026-11-22T00:05:00Z",
            "rabbit-a: 1 connection left",
            "rabbit-a (pool rabbitmq) is drained",
        ],
        "{run:?}"
    );
    assert_eq!(polls.load(Ordering::SeqCst), 3);
    let requests = fake.requests();
    assert!(requests[0].is("POST", "/v1/pools/rabbitmq/backends/rabbit-a/drain"));
    assert_eq!(requests[0].json(), json!({"deadline": "5m", "force": true}));
    assert_eq!(requests[0].header("content-type"), Some("application/json"));
    assert!(requests
        .iter()
        .all(|r| r.header("authorization") == Some("Bearer s3cret")));
    assert!(!run.stdout.contains("s3cret") && !run.stderr.contains("s3cret"));
}

#[test]
fn drain_refused_by_min_available_exits_1_with_the_server_message() {
    const REFUSAL: &str = "draining rabbit-a would leave 0 available backends in pool rabbitmq \
                           (min_available 1); pass force to drain anyway";
    let fake = FakeAdmin::start(|r| {
        if r.is("POST", "/v1/pools/rabbitmq/backends/rabbit-a/drain") {
            (409, json!({"error": REFUSAL}))
        } else {
            not_found(r)
        }
    });
    let run = ctl(
        &fake.url(),
        &["drain", "rabbit-a", "--pool", "rabbitmq", "--wait"],
        &[],
    );
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.starts_with("warren ctl: "), "{run:?}");
    assert!(run.stderr.contains(REFUSAL), "{run:?}");
    assert!(run.stderr.contains("409"), "{run:?}");
    let requests = fake.requests();
    assert_eq!(requests.len(), 1, "no wait after a refusal");
    // --wait without --deadline sends the default one (issue 16).
    assert_eq!(
        requests[0].json(),
        json!({"deadline": "60s", "force": false})
    );
    assert_eq!(requests[0].header("authorization"), None);
}

/// Serves [`two_pools`] and accepts any drain or undrain, answering for the path's pool.
fn two_pools_fake() -> FakeAdmin {
    FakeAdmin::start(|r| {
        if r.is("GET", "/v1/status") {
            return (200, two_pools());
        }
        let parts: Vec<&str> = r.path.split('/').collect();
        match (r.method.as_str(), parts.as_slice()) {
            ("POST", ["", "v1", "pools", pool, "backends", name, "drain"]) => (
                202,
                json!({"pool": pool, "backend": name, "admin": "drained",
                       "active_connections": 0, "drain_deadline": null}),
            ),
            ("POST", ["", "v1", "pools", pool, "backends", name, "undrain"]) => (
                200,
                json!({"pool": pool, "backend": name, "admin": "active"}),
            ),
            // Sets: every backend of the request, drained at once or active again.
            ("POST", ["", "v1", set @ ("drain" | "undrain")]) => {
                let admin = if *set == "drain" { "drained" } else { "active" };
                let backends: Vec<Value> = r.json()["backends"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|b| {
                        json!({"pool": b["pool"], "backend": b["backend"], "admin": admin,
                               "active_connections": 0, "drain_deadline": null})
                    })
                    .collect();
                (
                    if admin == "drained" { 202 } else { 200 },
                    json!({ "backends": backends }),
                )
            }
            _ => not_found(r),
        }
    })
}

#[test]
fn a_name_in_one_pool_needs_no_pool_flag() {
    let fake = two_pools_fake();
    let run = ctl(&fake.url(), &["drain", "rabbit-a", "--wait"], &[]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(
        run.stdout,
        "drained rabbit-a (pool rabbitmq): no connection was open\n"
    );
    let posts: Vec<String> = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.path)
        .collect();
    assert_eq!(posts, ["/v1/pools/rabbitmq/backends/rabbit-a/drain"]);

    // With --pool the name may be in several pools, and no status is fetched.
    let fake = two_pools_fake();
    let run = ctl(&fake.url(), &["undrain", "shared", "--pool", "other"], &[]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.stdout, "shared (pool other) is active\n");
    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    assert!(requests[0].is("POST", "/v1/pools/other/backends/shared/undrain"));
}

/// A node in two pools (an AMQP and a management listener) is drained and undrained in both by
/// one command, as one set (`POST /v1/drain`, `POST /v1/undrain`).
#[test]
fn a_name_in_two_pools_is_drained_in_both_as_one_set() {
    let fake = two_pools_fake();
    let run = ctl(&fake.url(), &["drain", "shared"], &[]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(
        run.stdout,
        "drained shared (pool rabbitmq): no connection was open\n\
         drained shared (pool other): no connection was open\n"
    );
    let run = ctl(&fake.url(), &["undrain", "shared"], &[]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(
        run.stdout,
        "shared (pool rabbitmq) is active\nshared (pool other) is active\n"
    );
    let posts: Vec<Recorded> = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    assert_eq!(posts.len(), 2, "one request per command");
    assert!(posts[0].is("POST", "/v1/drain"));
    assert_eq!(
        posts[0].json(),
        json!({"backends": [{"backend": "shared", "pool": "rabbitmq"},
                            {"backend": "shared", "pool": "other"}],
               "force": false})
    );
    assert!(posts[1].is("POST", "/v1/undrain"));
}

/// Several names and a tag in one command; a tag nobody has is an error naming it.
#[test]
fn several_names_and_tags_drain_one_set() {
    let fake = two_pools_fake();
    let run = ctl(
        &fake.url(),
        &[
            "drain",
            "rabbit-a",
            "shared",
            "--pool",
            "rabbitmq",
            "--deadline",
            "30s",
        ],
        &[],
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    let post = fake
        .requests()
        .into_iter()
        .find(|r| r.method == "POST")
        .unwrap();
    assert_eq!(
        post.json(),
        json!({"backends": [{"backend": "rabbit-a", "pool": "rabbitmq"},
                            {"backend": "shared", "pool": "rabbitmq"}],
               "deadline": "30s", "force": false})
    );
    let run = ctl(&fake.url(), &["drain", "--tag", "canary"], &[]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert_eq!(run.stderr, "warren ctl: no backend has tag canary\n");
    let run = ctl(&fake.url(), &["drain"], &[]);
    assert_eq!(run.code, Some(2), "a name or a tag is required: {run:?}");
}

#[test]
fn an_unknown_name_exits_1_listing_the_pools() {
    let fake = two_pools_fake();
    let run = ctl(&fake.url(), &["drain", "rabbit-z"], &[]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert_eq!(
        run.stderr,
        "warren ctl: no backend rabbit-z (pools: rabbitmq, other)\n"
    );
    assert!(fake.requests().iter().all(|r| r.method == "GET"));
}

/// Undrain answers active; polls see `health` from `script(poll number)`.
fn undraining_fake(script: fn(usize) -> &'static str) -> (FakeAdmin, Arc<AtomicUsize>) {
    let polls = Arc::new(AtomicUsize::new(0));
    let counter = polls.clone();
    let fake = FakeAdmin::start(move |r| {
        if r.is("POST", "/v1/pools/rabbitmq/backends/rabbit-a/undrain") {
            return (
                200,
                json!({"pool": "rabbitmq", "backend": "rabbit-a", "admin": "active"}),
            );
        }
        if !r.is("GET", "/v1/status") {
            return not_found(r);
        }
        let health = script(counter.fetch_add(1, Ordering::SeqCst));
        (
            200,
            status(vec![(
                "rabbitmq",
                vec![backend("rabbit-a", health, "active", 0)],
            )]),
        )
    });
    (fake, polls)
}

#[test]
fn undrain_wait_healthy_waits_for_up() {
    let (fake, polls) = undraining_fake(|n| if n < 3 { "down" } else { "up" });
    let run = ctl(&fake.url(), &["undrain", "rabbit-a", "--wait-healthy"], &[]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(
        run.stdout.lines().collect::<Vec<_>>(),
        [
            "rabbit-a (pool rabbitmq) is active",
            "rabbit-a: health down (last probe: connection refused)",
            "rabbit-a (pool rabbitmq) is up and available",
        ]
    );
    // One status to resolve the pool, then two polls see down and the third up.
    assert_eq!(polls.load(Ordering::SeqCst), 4);
}

#[test]
fn undrain_wait_healthy_gives_up_at_the_timeout() {
    let (fake, _polls) = undraining_fake(|_| "down");
    let run = ctl(
        &fake.url(),
        &[
            "undrain",
            "rabbit-a",
            "--pool",
            "rabbitmq",
            "--wait-healthy",
            "--timeout",
            "1s",
        ],
        &[],
    );
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.elapsed >= Duration::from_secs(1) && run.elapsed < Duration::from_secs(4),
        "{:?}",
        run.elapsed
    );
    assert!(
        run.stderr
            .contains("warren ctl: rabbit-a (pool rabbitmq) is not up after 1s (health down)"),
        "{run:?}"
    );
}

#[test]
fn reload_prints_the_summary_or_the_error() {
    let fake = FakeAdmin::start(|r| {
        if r.is("POST", "/v1/reload") {
            (
                200,
                json!({"result": "ok", "summary": "1 listener, 1 pool, 3 backends"}),
            )
        } else {
            not_found(r)
        }
    });
    let run = ctl(&fake.url(), &["reload"], &[]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.stdout, "reloaded: 1 listener, 1 pool, 3 backends\n");

    const BROKEN: &str =
        "/etc/warren/warren.toml: pool.rabbitmq.balance: unknown variant `fastest`";
    let fake = FakeAdmin::start(|r| {
        if r.is("POST", "/v1/reload") {
            (400, json!({"error": BROKEN}))
        } else {
            not_found(r)
        }
    });
    let run = ctl(&fake.url(), &["reload"], &[]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains(BROKEN), "{run:?}");
    assert!(run.stdout.is_empty(), "{run:?}");
}

#[test]
fn nothing_listening_exits_1_with_a_clear_message() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().unwrap().port()
    };
    let admin = format!("http://127.0.0.1:{port}");
    let run = ctl(&admin, &["status"], &[]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr.starts_with(&format!(
            "warren ctl: cannot connect to the admin API at {admin}: "
        )),
        "{run:?}"
    );
    assert!(run.stderr.contains("is warren running"), "{run:?}");
}

#[test]
fn a_refused_or_missing_token_exits_1_and_says_so() {
    let fake = FakeAdmin::start(with_token("right", |r| {
        if r.is("POST", "/v1/reload") {
            (200, json!({"result": "ok", "summary": "fine"}))
        } else {
            not_found(r)
        }
    }));
    let run = ctl(&fake.url(), &["reload"], &[("WARREN_TOKEN", "wrong")]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr
            .contains("the admin API refused the token (HTTP 401): missing or wrong bearer token"),
        "{run:?}"
    );
    assert!(!run.stderr.contains("wrong\n") && !run.stderr.contains("Bearer"));

    let run = ctl(&fake.url(), &["reload"], &[]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr.contains("requires a token") && run.stderr.contains("--token-file"),
        "{run:?}"
    );

    // The file wins over the environment.
    let token = TokenFile::new("right\n");
    let run = ctl(
        &fake.url(),
        &["--token-file", token.path(), "reload"],
        &[("WARREN_TOKEN", "wrong")],
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.stdout, "reloaded: fine\n");
}

#[test]
fn several_admins_each_get_the_drain_and_each_result_is_reported() {
    let (polls_a, polls_b) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (a, b) = (draining_fake(polls_a), draining_fake(polls_b));
    let token = TokenFile::new("s3cret");
    let run = ctl(
        &a.url(),
        &[
            "--admin",
            &b.url(),
            "--token-file",
            token.path(),
            "drain",
            "rabbit-a",
            "--deadline",
            "5m",
            "--wait",
        ],
        &[],
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    for fake in [&a, &b] {
        let url = fake.url();
        assert!(
            run.stdout
                .contains(&format!("[{url}] rabbit-a (pool rabbitmq) is drained")),
            "{run:?}"
        );
        assert!(run.stderr.contains(&format!("[{url}] ok")), "{run:?}");
        let drains = fake
            .requests()
            .iter()
            .filter(|r| r.is("POST", "/v1/pools/rabbitmq/backends/rabbit-a/drain"))
            .count();
        assert_eq!(drains, 1, "one drain per instance");
    }
}

#[test]
fn one_instance_down_of_a_pair_fails_the_command_and_names_it() {
    let polls = Arc::new(AtomicUsize::new(0));
    let up = draining_fake(polls);
    let down = {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port())
    };
    let list = TokenFile::new(&format!(
        "# the pair in front of the cluster\n{}\n\n{down}   # standby\n",
        up.url()
    ));
    let token = TokenFile::new("s3cret");
    let run = ctl(
        &up.url(),
        &[
            "--admin-file",
            list.path(),
            "--token-file",
            token.path(),
            "drain",
            "rabbit-a",
            "--pool",
            "rabbitmq",
        ],
        &[],
    );
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr.contains(&format!("[{}] ok", up.url())),
        "{run:?}"
    );
    assert!(
        run.stderr.contains(&format!(
            "[{down}] failed: cannot connect to the admin API at {down}"
        )),
        "{run:?}"
    );
    assert!(
        run.stderr
            .contains(&format!("warren ctl: failed on 1 of 2 instances: {down}")),
        "{run:?}"
    );
    assert_eq!(up.requests().len(), 1, "the live instance was drained");
}

/// `drain --wait` without `--deadline` sends the 60 s default (AMQP connections never close by
/// themselves, so a wait without one would never end) and says so in its progress line.
#[test]
fn drain_wait_without_a_deadline_sends_the_default_and_says_so() {
    let polls = Arc::new(AtomicUsize::new(0));
    let fake = draining_fake(polls);
    let token = TokenFile::new("s3cret");
    let run = ctl(
        &fake.url(),
        &["--token-file", token.path(), "drain", "rabbit-a", "--wait"],
        &[],
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    let requests = fake.requests();
    let post = requests
        .iter()
        .find(|r| r.method == "POST")
        .expect("a drain request");
    assert_eq!(post.json(), json!({"deadline": "60s", "force": false}));
    let first = run.stdout.lines().next().unwrap_or_default();
    assert!(
        first.ends_with(
            "the rest are closed at 2026-11-22T00:05:00Z (--wait's default deadline, 60s: AMQP \
             clients keep their connections until they are closed; give --deadline to choose)"
        ),
        "{run:?}"
    );

    // Without --wait there is no default: the server keeps open connections until they close.
    let fake = draining_fake(Arc::new(AtomicUsize::new(0)));
    let run = ctl(
        &fake.url(),
        &["--token-file", token.path(), "drain", "rabbit-a"],
        &[],
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    let requests = fake.requests();
    let post = requests.iter().find(|r| r.method == "POST").unwrap();
    assert_eq!(post.json(), json!({"force": false}));
}

/// One warren of a pair during `warren ctl upgrade` of pool rabbitmq (tcp probes, rise 2) with
/// rabbit-a and rabbit-b, both up. A drain answers one connection open and the next status shows
/// the backend drained; an undrain makes it active; every status answer counts one more probe
/// run and passed. With `refuse_drain`, every drain is refused (409) instead.
fn upgrade_fake(refuse_drain: bool, rebalance_mode: &'static str) -> FakeAdmin {
    let admins = Mutex::new(vec![("rabbit-a", "active"), ("rabbit-b", "active")]);
    let probes = AtomicUsize::new(0);
    FakeAdmin::start(move |r| {
        let parts: Vec<&str> = r.path.split('/').collect();
        match (r.method.as_str(), parts.as_slice()) {
            ("GET", ["", "v1", "status"]) => {
                let probes = probes.fetch_add(1, Ordering::SeqCst) + 1;
                let backends = admins
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|(name, admin)| {
                        let mut b = backend(name, "up", admin, 0);
                        b["probes_run"] = json!(probes);
                        b["probes_ok_in_a_row"] = json!(probes);
                        b
                    })
                    .collect();
                let mut served = status(vec![("rabbitmq", backends)]);
                served["pools"][0]["health_check"] = json!("tcp");
                served["pools"][0]["rise"] = json!(2);
                served["pools"][0]["rebalance"] =
                    json!({"imbalance": 0.0, "mode": rebalance_mode, "state": "balanced"});
                (200, served)
            }
            ("POST", ["", "v1", "pools", "rabbitmq", "backends", name, "drain"])
                if refuse_drain =>
            {
                (
                    409,
                    json!({"error": format!("{name} is quorum-critical; pass force to drain anyway")}),
                )
            }
            ("POST", ["", "v1", "pools", "rabbitmq", "rebalance"]) => (
                202,
                json!({"imbalance": 0.5, "max_closes_per_second": 5.0, "pool": "rabbitmq",
                       "started": true, "to_move": 1}),
            ),
            ("POST", ["", "v1", "pools", "rabbitmq", "backends", name, action]) => {
                let drain = *action == "drain";
                for (n, admin) in admins.lock().unwrap().iter_mut() {
                    if n == name {
                        *admin = if drain { "drained" } else { "active" };
                    }
                }
                if drain {
                    (
                        202,
                        json!({"pool": "rabbitmq", "backend": name, "admin": "draining",
                               "active_connections": 1, "drain_deadline": "2026-11-22T00:05:00Z"}),
                    )
                } else {
                    (
                        200,
                        json!({"pool": "rabbitmq", "backend": name, "admin": "active"}),
                    )
                }
            }
            _ => not_found(r),
        }
    })
}

/// The drains and undrains an instance received, as `drain NAME` / `undrain NAME`.
fn drain_calls(fake: &FakeAdmin) -> Vec<String> {
    fake.requests()
        .iter()
        .filter(|r| r.method == "POST")
        .map(|r| {
            let parts: Vec<&str> = r.path.rsplitn(3, '/').collect();
            format!("{} {}", parts[0], parts[1])
        })
        .collect()
}

#[test]
fn upgrade_walks_the_pool_on_both_instances_of_a_pair() {
    let (a, b) = (
        upgrade_fake(false, "on_return"),
        upgrade_fake(false, "on_return"),
    );
    let run = ctl(
        &a.url(),
        &[
            "--admin",
            &b.url(),
            "upgrade",
            "--pool",
            "rabbitmq",
            "--run",
            "echo upgrading {name} at {addr}",
            "--deadline",
            "5m",
        ],
        &[],
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    let mut want = vec!["upgrading pool rabbitmq one backend at a time: rabbit-a, rabbit-b"];
    let steps = |name: &str, of: &str| {
        let twice = |line: String| [line.clone(), line];
        let mut lines = vec![
            format!("== {name} ({of})"),
            format!("[1/5] {name}: check that the pool is healthy"),
            format!("[2/5] {name}: quorum check and drain"),
        ];
        // Both instances drain before either is waited on; each says so.
        lines.extend(twice(format!(
            "draining {name} (pool rabbitmq): 1 connection open; the rest are closed at \
             2026-11-22T00:05:00Z"
        )));
        lines.extend(twice(format!("{name} (pool rabbitmq) is drained")));
        lines.extend([
            format!("[3/5] {name}: run the upgrade command"),
            format!("$ echo upgrading {name} at 10.0.0.8:5672"),
            format!("upgrading {name} at 10.0.0.8:5672"),
            format!("[4/5] {name}: wait until the backend passes its probes"),
            format!("{name}: health up, 1/2 probes passed"),
            format!("{name}: up, 2 probe(s) in a row passed since the command (rise = 2)"),
            format!("[5/5] {name}: undrain"),
        ]);
        lines.extend(twice(format!("{name} (pool rabbitmq) is active")));
        lines
    };
    let (first, second) = (steps("rabbit-a", "1/2"), steps("rabbit-b", "2/2"));
    want.extend(first.iter().chain(&second).map(String::as_str));
    want.push("pool rabbitmq: all 2 backend(s) upgraded, undrained and healthy");
    // One rebalance at the end of the walk, on each instance.
    let rebalancing = "pool rabbitmq: rebalancing, 1 connection(s) above their backend's fair \
                       share (imbalance 50%), moved at most 5 a second";
    want.extend([rebalancing, rebalancing]);
    assert_eq!(run.stdout.lines().collect::<Vec<_>>(), want, "{run:?}");
    let walk = [
        "drain rabbit-a",
        "undrain rabbit-a",
        "drain rabbit-b",
        "undrain rabbit-b",
        "rebalance rabbitmq",
    ];
    assert_eq!(drain_calls(&a), walk);
    assert_eq!(drain_calls(&b), walk);
    // The undrains of the walk start no rebalance of their own.
    for fake in [&a, &b] {
        let undrains: Vec<_> = fake
            .requests()
            .into_iter()
            .filter(|r| r.path.ends_with("/undrain"))
            .map(|r| String::from_utf8(r.body).unwrap())
            .collect();
        assert_eq!(undrains, [r#"{"rebalance":false}"#; 2]);
    }
}

#[test]
fn upgrade_leaves_a_pool_whose_rebalancing_is_off_as_the_walk_left_it() {
    let fake = upgrade_fake(false, "off");
    let run = ctl(
        &fake.url(),
        &["upgrade", "--pool", "rabbitmq", "--run", "true"],
        &[],
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(
        run.stdout.lines().last(),
        Some(
            "pool rabbitmq: not rebalanced (its rebalance mode is off); `warren ctl rebalance \
             rabbitmq` moves connections back into balance"
        ),
        "{run:?}"
    );
    assert!(!drain_calls(&fake)
        .iter()
        .any(|c| c.starts_with("rebalance")));
}

#[test]
fn upgrade_stops_where_the_second_instance_refuses_the_drain() {
    let (a, b) = (
        upgrade_fake(false, "on_return"),
        upgrade_fake(true, "on_return"),
    );
    let run = ctl(
        &a.url(),
        &[
            "--admin",
            &b.url(),
            "upgrade",
            "--pool",
            "rabbitmq",
            "--run",
            "echo upgrading {name}",
        ],
        &[],
    );
    assert_eq!(run.code, Some(1), "{run:?}");
    // The refusal is named with the instance that refused; the walk stops before waiting.
    assert!(
        run.stdout.ends_with(
            "[2/5] rabbit-a: quorum check and drain\n\
             draining rabbit-a (pool rabbitmq): 1 connection open; the rest are closed at \
             2026-11-22T00:05:00Z\n"
        ),
        "{run:?}"
    );
    let stopped = format!(
        "warren ctl: upgrade of pool rabbitmq stopped at rabbit-a, step 2/5 (quorum check and \
         drain): [{}] drain of rabbit-a (pool rabbitmq) refused (HTTP 409 Conflict): rabbit-a is \
         quorum-critical; pass force to drain anyway\n  state: rabbit-a was not drained; not \
         started: rabbit-b\n",
        b.url()
    );
    assert!(run.stderr.starts_with(&stopped), "{run:?}");
    assert_eq!(drain_calls(&a), ["drain rabbit-a"]);
    assert_eq!(drain_calls(&b), ["drain rabbit-a"]);
}

/// With `--json`, a failure is JSON on stdout too (the human line stays on stderr), so a script
/// reading stdout always reads JSON: nothing listening, and a drain the server refused.
#[test]
fn json_mode_prints_errors_as_json() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().unwrap().port()
    };
    let admin = format!("http://127.0.0.1:{port}");
    let run = ctl(&admin, &["--json", "status"], &[]);
    assert_eq!(run.code, Some(1), "{run:?}");
    let answer: Value = serde_json::from_str(&run.stdout).expect("stdout is JSON");
    assert_eq!(answer["exit_code"], 1);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .starts_with(&format!("cannot connect to the admin API at {admin}: ")),
        "{run:?}"
    );
    assert!(
        run.stderr.starts_with("warren ctl: cannot connect"),
        "{run:?}"
    );

    let fake = FakeAdmin::start(|r| {
        if r.is("POST", "/v1/pools/rabbitmq/backends/rabbit-a/drain") {
            (
                409,
                json!({"error": "rabbit-a is quorum-critical", "reason": "quorum_critical"}),
            )
        } else {
            not_found(r)
        }
    });
    let run = ctl(
        &fake.url(),
        &["--json", "drain", "rabbit-a", "--pool", "rabbitmq"],
        &[],
    );
    assert_eq!(run.code, Some(1), "{run:?}");
    let answer: Value = serde_json::from_str(&run.stdout).expect("stdout is JSON");
    assert_eq!(answer["reason"], "quorum_critical", "{run:?}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("rabbit-a is quorum-critical"),
        "{run:?}"
    );
}

/// The wait says why the backend is down: the check that took it down (failed client connects)
/// comes first, and the last probe after it when it says something else.
#[test]
fn undrain_wait_healthy_says_what_took_the_backend_down() {
    let fake = FakeAdmin::start(|r| {
        if r.is("POST", "/v1/pools/rabbitmq/backends/rabbit-a/undrain") {
            return (
                200,
                json!({"pool": "rabbitmq", "backend": "rabbit-a", "admin": "active"}),
            );
        }
        let mut b = backend("rabbit-a", "down", "active", 0);
        b["health_reason"] = json!("failed connect from the data path (refused)");
        b["last_probe"]["reason"] = json!("Connection.Start received (RabbitMQ 3.12.1)");
        (200, status(vec![("rabbitmq", vec![b])]))
    });
    let run = ctl(
        &fake.url(),
        &[
            "undrain",
            "rabbit-a",
            "--pool",
            "rabbitmq",
            "--wait-healthy",
            "--timeout",
            "1s",
        ],
        &[],
    );
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stdout.contains(
            "rabbit-a: health down (failed connect from the data path (refused); last probe: \
             Connection.Start received (RabbitMQ 3.12.1))"
        ),
        "{run:?}"
    );
}
