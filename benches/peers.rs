//! warren against its peers: the same workloads through no proxy (`direct`), warren, HAProxy
//! (`mode tcp`, splice both ways) and NGINX (`stream`, `proxy_half_close on`), interleaved in
//! rounds, with the ratios taken inside each round. The results go into BENCHMARKS.md.
//!
//! Run it with `bash scripts/bench.sh` (builds warren, installs the peers, runs this), or
//! `cargo bench --bench peers -- --run [--rounds N] [--quick]` when everything is in place.
//! Without `--run` it prints how to run it and exits 0, so plain `cargo bench` and
//! `cargo test --all-targets` do not start a 20-minute run that needs root.
//!
//! What runs where (this machine has 2 cores, and every load generator competes for them):
//! - the proxies, as user `nobody` (`setpriv`), each in its own process group, killed at the end
//!   of its slot (a guard, also on error and on Ctrl-C);
//! - the echo backend: this binary re-run with `--echo-server`, a tokio runtime with as many
//!   threads as the proxies' workers, in its own process;
//! - the bulk backend and client: `iperf3 -s` / `iperf3 -c` (single-threaded in 3.12);
//! - the churn, latency and idle clients: plain blocking threads in this process;
//! - the AMQP backend: one RabbitMQ node for the whole run (`scripts/rabbitmq.sh start`, stopped
//!   by a guard); its clients (lapin publishers and consumers) on a tokio runtime in this process.
//!
//! Everything binds 127.0.0.1 only; every loop is bounded by a deadline or a count.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// uid/gid of `nobody`: the proxies run as a normal user, as in production.
const NOBODY: &str = "65534";
const NGINX_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";
/// Latency message sizes.
const SIZES: [usize; 3] = [64, 1024, 16 * 1024];
/// Concurrent clients of the churn workload.
const CHURN_CLIENTS: [usize; 2] = [1, 8];
/// An AMQP heartbeat frame: what an idle AMQP connection sends now and then.
const HEARTBEAT: [u8; 8] = [8, 0, 0, 0, 0, 0, 0, 0xCE];
/// AMQP message sizes.
const AMQP_SIZES: [usize; 2] = [100, 64 * 1024];
/// Publisher connections of the AMQP workload, each with one confirm channel.
const AMQP_PUBLISHERS: usize = 4;
/// Consumer connections of the AMQP workload, all on the same queue.
const AMQP_CONSUMERS: usize = 2;
/// Unconfirmed publishes per publisher: enough in flight that the measure is throughput, not
/// one round trip (and one fsync) per message.
const AMQP_WINDOW: usize = 64;
/// Unacked deliveries per consumer.
const AMQP_PREFETCH: u16 = 200;
/// The package's server script; its absence means RabbitMQ is not installed.
const RABBITMQ_SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
/// Every workload, in the order they run.
const WORKLOADS: [&str; 5] = ["bulk", "churn", "latency", "amqp", "idle"];
const RESULTS_BEGIN: &str =
    "<!-- peers:results:begin (written by benches/peers.rs; edit outside) -->";
const RESULTS_END: &str = "<!-- peers:results:end -->";

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

type Res<T> = Result<T, String>;

fn check_interrupted() -> Res<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        Err("interrupted".into())
    } else {
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Target {
    Direct,
    Warren,
    Haproxy,
    Nginx,
}

const TARGETS: [Target; 4] = [
    Target::Direct,
    Target::Warren,
    Target::Haproxy,
    Target::Nginx,
];
const PROXIES: [Target; 3] = [Target::Warren, Target::Haproxy, Target::Nginx];

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Warren => "warren",
            Target::Haproxy => "haproxy",
            Target::Nginx => "nginx",
        }
    }
}

#[derive(Clone, Debug)]
struct Opts {
    rounds: usize,
    quick: bool,
    workers: usize,
    warren: PathBuf,
    out: PathBuf,
    workloads: Vec<String>,
    bulk_secs: u64,
    churn_secs: f64,
    latency_secs: f64,
    idle_connections: usize,
    /// AMQP: unmeasured seconds after the clients connect, then measured seconds, per slot.
    amqp_warmup: Duration,
    amqp_secs: Duration,
    command: String,
}

fn usage() -> &'static str {
    "peers: warren vs HAProxy vs NGINX on loopback.\n\
     Run: bash scripts/bench.sh [--rounds N] [--quick] [--workers N] [--workloads bulk,churn,latency,amqp,idle]\n\
     or:  cargo bench --bench peers -- --run [same flags] [--warren PATH] [--out FILE]"
}

fn parse_args() -> Res<Option<Opts>> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut args = std::env::args().skip(1).peekable();
    let mut run = false;
    let mut rounds = None;
    let mut quick = false;
    let mut workers = 2;
    let mut warren = manifest.join("target/release/warren");
    let mut out = manifest.join("BENCHMARKS.md");
    let mut workloads: Vec<String> = WORKLOADS.map(String::from).to_vec();
    let mut command = "bash scripts/bench.sh".to_string();
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--bench" => {}
            "--run" => run = true,
            "--quick" => quick = true,
            "--rounds" => {
                rounds = Some(
                    value("--rounds")?
                        .parse()
                        .map_err(|e| format!("--rounds: {e}"))?,
                )
            }
            "--workers" => {
                workers = value("--workers")?
                    .parse()
                    .map_err(|e| format!("--workers: {e}"))?
            }
            "--warren" => warren = PathBuf::from(value("--warren")?),
            "--out" => out = PathBuf::from(value("--out")?),
            "--command" => command = value("--command")?,
            "--workloads" => {
                workloads = value("--workloads")?
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .collect();
                for w in &workloads {
                    if !WORKLOADS.contains(&w.as_str()) {
                        return Err(format!("unknown workload {w:?}"));
                    }
                }
            }
            "-h" | "--help" => {
                println!("{}", usage());
                return Ok(None);
            }
            // Filters and flags that cargo test/bench may pass on.
            other if !other.starts_with("--") => {}
            other => return Err(format!("unknown flag {other}\n{}", usage())),
        }
    }
    if !run {
        println!("{}\n(skipped: pass --run)", usage());
        return Ok(None);
    }
    let rounds = rounds.unwrap_or(if quick { 2 } else { 5 }).max(1);
    Ok(Some(Opts {
        rounds,
        quick,
        workers: workers.max(1),
        warren,
        out,
        workloads,
        bulk_secs: if quick { 1 } else { 3 },
        churn_secs: if quick { 1.0 } else { 3.0 },
        latency_secs: if quick { 0.5 } else { 2.0 },
        idle_connections: 5000,
        amqp_warmup: Duration::from_secs(1),
        amqp_secs: Duration::from_secs(if quick { 3 } else { 10 }),
        command,
    }))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--echo-server") {
        let threads = args
            .iter()
            .position(|a| a == "--threads")
            .and_then(|i| args.get(i + 1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(2);
        echo_server(threads);
    }
    // For profiling one target by hand: `peers --probe churn PORT CLIENTS SECS` or
    // `peers --probe latency PORT SIZE SECS` (see "What bounds the missed targets" in BENCHMARKS.md).
    if let Some(i) = args.iter().position(|a| a == "--probe") {
        let arg = |k: usize| {
            args.get(i + k)
                .and_then(|s| s.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let (port, n, secs) = (arg(2) as u16, arg(3) as usize, arg(4).max(0.1));
        match args.get(i + 1).map(String::as_str) {
            Some("churn") => {
                let (rate, errors, _) = churn(port, n.max(1), secs);
                println!("churn {port} clients {n}: {rate:.0} conn/s, {errors} errors");
            }
            Some("latency") => match latency(port, n.max(1), secs) {
                Ok((p, k)) => println!(
                    "latency {port} {n} B: p50 {:.1} p99 {:.1} p99.9 {:.1} µs ({k} samples)",
                    p[0], p[1], p[2]
                ),
                Err(e) => println!("latency: {e}"),
            },
            _ => eprintln!("--probe churn|latency PORT N SECS"),
        }
        return;
    }
    let opts = match parse_args() {
        Ok(Some(o)) => o,
        Ok(None) => return,
        Err(e) => {
            eprintln!("peers: {e}");
            std::process::exit(2);
        }
    };
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
    raise_nofile();
    match run(&opts) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("peers: {e}");
            std::process::exit(1);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The echo backend (its own process).

fn echo_server(threads: usize) -> ! {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    raise_nofile();
    // Exit when the harness closes our stdin (or dies).
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        std::process::exit(0);
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .expect("echo runtime");
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("echo bind");
        println!("{}", listener.local_addr().expect("addr").port());
        let _ = std::io::stdout().flush();
        loop {
            match listener.accept().await {
                Ok((mut s, _)) => {
                    let _ = s.set_nodelay(true);
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if s.write_all(&buf[..n]).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Processes.

fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit for getrlimit/setrlimit to read and write.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// A child in its own process group; the whole group is stopped when dropped.
struct Proc {
    what: String,
    child: Child,
    stdin: Option<ChildStdin>,
    log: Option<PathBuf>,
}

impl Proc {
    fn spawn(what: &str, mut cmd: Command, log: Option<PathBuf>) -> Res<Proc> {
        cmd.process_group(0).stdin(Stdio::piped());
        if let Some(log) = &log {
            let f = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
            let f2 = f.try_clone().map_err(|e| e.to_string())?;
            cmd.stdout(f).stderr(f2);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("start {what}: {e} ({cmd:?})"))?;
        let stdin = child.stdin.take();
        Ok(Proc {
            what: what.to_string(),
            child,
            stdin,
            log,
        })
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn log_tail(&self) -> String {
        let text = self
            .log
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    fn ensure_running(&mut self) -> Res<()> {
        match self.child.try_wait() {
            Ok(Some(st)) => Err(format!(
                "{} exited ({st}); log:\n{}",
                self.what,
                self.log_tail()
            )),
            _ => Ok(()),
        }
    }

    /// Every process of the group (NGINX's master and workers; one for the others).
    fn pids(&self) -> Vec<i32> {
        group_pids(self.pid())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let pgid = self.pid();
        // SAFETY: signalling our own child's process group.
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let reaped = matches!(self.child.try_wait(), Ok(Some(_)));
            if reaped && group_pids(pgid).is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(String::from).collect())
}

fn group_pids(pgid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if let Some(f) = stat_fields(pid) {
                // After the comm: state, ppid, pgrp, ...
                if f.get(2).and_then(|g| g.parse::<i32>().ok()) == Some(pgid) && f[0] != "Z" {
                    out.push(pid);
                }
            }
        }
    }
    out
}

/// utime + stime of these processes (all their threads), in seconds.
fn cpu_seconds(pids: &[i32]) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    pids.iter()
        .filter_map(|&p| stat_fields(p))
        .map(|f| {
            let u: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
            let s: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
            (u + s) / tck
        })
        .sum()
}

fn rss_kib(pids: &[i32]) -> u64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum()
}

fn free_port() -> Res<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind 127.0.0.1:0: {e}"))?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn wait_listening(proc_: &mut Proc, ports: &[u16]) -> Res<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    for &p in ports {
        loop {
            proc_.ensure_running()?;
            if TcpStream::connect_timeout(&addr(p), Duration::from_millis(200)).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} does not listen on {p}; log:\n{}",
                    proc_.what,
                    proc_.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

/// Run a command to completion, killed after `limit`; returns (status ok, stdout, stderr).
fn run_bounded(mut cmd: Command, limit: Duration) -> Res<(bool, String, String)> {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().map_err(|e| format!("{cmd:?}: {e}"))?;
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let to = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let te = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break Some(st);
        }
        if Instant::now() > deadline || INTERRUPTED.load(Ordering::SeqCst) {
            // SAFETY: our own child's process group.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let (o, e) = (to.join().unwrap_or_default(), te.join().unwrap_or_default());
    match status {
        Some(st) => Ok((st.success(), o, e)),
        None => Err(format!("{cmd:?} took longer than {limit:?}; stderr: {e}")),
    }
}

fn as_nobody(program: &Path) -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        format!("--reuid={NOBODY}"),
        format!("--regid={NOBODY}"),
        "--clear-groups".into(),
        "--".into(),
    ]);
    c.arg(program);
    c
}

fn which(name: &str) -> Res<PathBuf> {
    for dir in [
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
        "/usr/local/sbin",
        "/usr/local/bin",
    ] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return Ok(p);
        }
    }
    Err(format!(
        "{name} not found; run `bash scripts/bench.sh`, which installs it"
    ))
}

// ---------------------------------------------------------------------------------------------
// Backends and proxies.

/// Where a target accepts the two kinds of traffic.
#[derive(Clone, Copy, Debug)]
struct Ports {
    /// Forwarded to the echo server.
    echo: u16,
    /// Forwarded to the iperf3 server.
    bulk: u16,
    /// Forwarded to the RabbitMQ node's AMQP port; only when the amqp workload runs.
    amqp: Option<u16>,
}

struct Workdir(PathBuf);

impl Workdir {
    fn new() -> Res<Workdir> {
        let p = std::env::temp_dir().join(format!("warren-peers-{}", std::process::id()));
        std::fs::create_dir_all(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        // The proxies run as nobody and write their logs and pid files here.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o777))
            .map_err(|e| e.to_string())?;
        Ok(Workdir(p))
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        if std::env::var_os("PEERS_KEEP_TMP").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn start_echo(opts: &Opts, dir: &Path) -> Res<(Proc, u16)> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(exe);
    cmd.args(["--echo-server", "--threads", &opts.workers.to_string()]);
    cmd.process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    cmd.stderr(std::fs::File::create(dir.join("echo.log")).map_err(|e| e.to_string())?);
    let mut child = cmd.spawn().map_err(|e| format!("echo server: {e}"))?;
    let stdin = child.stdin.take();
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let proc_ = Proc {
        what: "echo server".into(),
        child,
        stdin,
        log: Some(dir.join("echo.log")),
    };
    let port = line
        .trim()
        .parse()
        .map_err(|_| format!("echo server printed {line:?}"))?;
    Ok((proc_, port))
}

fn start_iperf_server(dir: &Path, tag: &str) -> Res<(Proc, u16)> {
    let port = free_port()?;
    let mut cmd = Command::new(which("iperf3")?);
    cmd.args(["-s", "-B", "127.0.0.1", "-p", &port.to_string()]);
    let mut p = Proc::spawn(
        "iperf3 server",
        cmd,
        Some(dir.join(format!("iperf3-{tag}.log"))),
    )?;
    wait_listening(&mut p, &[port])?;
    Ok((p, port))
}

fn write_file(path: &Path, text: &str) -> Res<()> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
        .map_err(|e| e.to_string())
}

struct Running {
    proc_: Proc,
    ports: Ports,
    /// warren's admin port, for /metrics.
    admin: Option<u16>,
}

/// Start one proxy (fresh), as nobody, forwarding to the given backends, and wait until it listens.
fn start_proxy(t: Target, opts: &Opts, dir: &Path, backends: Ports, tag: &str) -> Res<Running> {
    let ports = Ports {
        echo: free_port()?,
        bulk: free_port()?,
        amqp: backends.amqp.map(|_| free_port()).transpose()?,
    };
    // (name, listen port, backend port) of every listener the proxy gets.
    let mut forwards = vec![
        ("echo", ports.echo, backends.echo),
        ("bulk", ports.bulk, backends.bulk),
    ];
    if let (Some(port), Some(backend)) = (ports.amqp, backends.amqp) {
        forwards.push(("amqp", port, backend));
    }
    let n = opts.workers;
    let log = dir.join(format!("{}-{tag}.log", t.name()));
    let mut admin = None;
    let cmd = match t {
        Target::Direct => unreachable!("direct has no proxy"),
        Target::Warren => {
            let a = free_port()?;
            admin = Some(a);
            let conf = dir.join(format!("warren-{tag}.toml"));
            let mut text = format!("[admin]\nlisten = \"127.0.0.1:{a}\"\n\n");
            for &(name, port, backend) in &forwards {
                write!(
                    text,
                    "[[listener]]\nname = \"{name}\"\nlisten = \"127.0.0.1:{port}\"\npool = \"{name}\"\n\
                     connect_timeout = \"5s\"\nidle_timeout = \"120s\"\n\n\
                     [pool.{name}]\n\n[[pool.{name}.backend]]\nname = \"{name}-1\"\naddr = \"127.0.0.1:{backend}\"\n\n"
                )
                .unwrap();
            }
            write_file(&conf, &text)?;
            let mut c = as_nobody(&opts.warren);
            c.args([
                "--log-level",
                "warn",
                "run",
                "--workers",
                &n.to_string(),
                "--config",
            ]);
            c.arg(&conf);
            c
        }
        Target::Haproxy => {
            let conf = dir.join(format!("haproxy-{tag}.cfg"));
            let mut text = format!(
                "global\n  nbthread {n}\n  maxconn 7500\n\n\
                 defaults\n  mode tcp\n  maxconn 7500\n  timeout connect 5s\n  timeout client 120s\n  \
                 timeout server 120s\n  option splice-request\n  option splice-response\n"
            );
            for &(name, port, backend) in &forwards {
                write!(
                    text,
                    "\nlisten {name}\n  bind 127.0.0.1:{port}\n  server {name}1 127.0.0.1:{backend}\n"
                )
                .unwrap();
            }
            write_file(&conf, &text)?;
            let mut c = as_nobody(&which("haproxy")?);
            c.arg("-db").arg("-f").arg(&conf);
            c
        }
        Target::Nginx => {
            let conf = dir.join(format!("nginx-{tag}.conf"));
            let err = dir.join(format!("nginx-{tag}-error.log"));
            let mut text = format!(
                "load_module {NGINX_STREAM_MODULE};\nworker_processes {n};\nworker_rlimit_nofile 20000;\n\
                 error_log {} warn;\nevents {{ worker_connections 9000; }}\n\
                 stream {{\n  proxy_timeout 120s;\n  proxy_connect_timeout 5s;\n  proxy_half_close on;\n",
                err.display(),
            );
            for &(_, port, backend) in &forwards {
                writeln!(
                    text,
                    "  server {{ listen 127.0.0.1:{port}; proxy_pass 127.0.0.1:{backend}; }}"
                )
                .unwrap();
            }
            text.push_str("}\n");
            write_file(&conf, &text)?;
            let mut c = as_nobody(&which("nginx")?);
            c.arg("-e")
                .arg(&err)
                .arg("-c")
                .arg(&conf)
                .arg("-g")
                .arg(format!(
                    "daemon off; pid {};",
                    dir.join(format!("nginx-{tag}.pid")).display()
                ));
            c
        }
    };
    let mut proc_ = Proc::spawn(t.name(), cmd, Some(log))?;
    let mut wait_for: Vec<u16> = forwards.iter().map(|f| f.1).collect();
    wait_for.extend(admin);
    wait_listening(&mut proc_, &wait_for)?;
    Ok(Running {
        proc_,
        ports,
        admin,
    })
}

/// `warren_splice_pipes_leased` from warren's admin /metrics.
fn warren_pipes(admin: u16) -> Res<f64> {
    let mut s = TcpStream::connect_timeout(&addr(admin), Duration::from_secs(2))
        .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut body = String::new();
    s.read_to_string(&mut body).map_err(|e| e.to_string())?;
    body.lines()
        .find(|l| l.starts_with("warren_splice_pipes_leased"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| "no warren_splice_pipes_leased in /metrics".to_string())
}

// ---------------------------------------------------------------------------------------------
// Workloads.

struct Bulk {
    gbps: f64,
    bytes: f64,
}

fn iperf(port: u16, secs: u64, streams: usize, reverse: bool) -> Res<Bulk> {
    let mut cmd = Command::new(which("iperf3")?);
    cmd.args([
        "-c",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-t",
        &secs.to_string(),
    ]);
    cmd.args([
        "-P",
        &streams.to_string(),
        "-J",
        "--connect-timeout",
        "5000",
    ]);
    if reverse {
        cmd.arg("-R");
    }
    let (ok, out, err) = run_bounded(cmd, Duration::from_secs(secs + 20))?;
    let v: serde_json::Value =
        serde_json::from_str(&out).map_err(|e| format!("iperf3 output: {e}; stderr: {err}"))?;
    if !ok || v.get("error").is_some() {
        return Err(format!(
            "iperf3 failed: {}",
            v.get("error").unwrap_or(&serde_json::Value::Null)
        ));
    }
    let r = &v["end"]["sum_received"];
    let bps = r["bits_per_second"]
        .as_f64()
        .ok_or("iperf3: no sum_received")?;
    let bytes = r["bytes"].as_f64().ok_or("iperf3: no bytes")?;
    Ok(Bulk {
        gbps: bps / 1e9,
        bytes,
    })
}

/// Connections per second with `clients` threads doing connect → 1 byte → echo → close.
/// Connect → 1 byte → echo → close by `clients` threads for `secs`: (connections/s, failed
/// connections, completed connections).
fn churn(port: u16, clients: usize, secs: f64) -> (f64, u64, u64) {
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (ok, errors) = (ok.clone(), errors.clone());
            std::thread::spawn(move || {
                let mut byte = [0u8; 1];
                while Instant::now() < deadline {
                    let mut one = || -> std::io::Result<()> {
                        let mut s =
                            TcpStream::connect_timeout(&addr(port), Duration::from_secs(5))?;
                        s.set_nodelay(true)?;
                        s.set_read_timeout(Some(Duration::from_secs(5)))?;
                        s.write_all(b"x")?;
                        s.read_exact(&mut byte)?;
                        Ok(())
                    };
                    match one() {
                        Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let done = ok.load(Ordering::Relaxed);
    (done as f64 / elapsed, errors.load(Ordering::Relaxed), done)
}

/// Round trips of `size`-byte messages on one connection: (p50, p99, p99.9) in µs, samples.
fn latency(port: u16, size: usize, secs: f64) -> Res<([f64; 3], usize)> {
    let mut s = TcpStream::connect_timeout(&addr(port), Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let msg = vec![0x5au8; size];
    let mut back = vec![0u8; size];
    let mut rtt = |s: &mut TcpStream| -> Res<f64> {
        let t0 = Instant::now();
        s.write_all(&msg).map_err(|e| e.to_string())?;
        s.read_exact(&mut back).map_err(|e| e.to_string())?;
        Ok(t0.elapsed().as_secs_f64() * 1e6)
    };
    for _ in 0..200 {
        rtt(&mut s)?;
    }
    let mut samples = Vec::with_capacity(200_000);
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < deadline && samples.len() < 200_000 {
        samples.push(rtt(&mut s)?);
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let pct =
        |p: f64| samples[((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1];
    Ok(([pct(0.50), pct(0.99), pct(0.999)], samples.len()))
}

struct Idle {
    rss_per_conn: f64,
    alive: usize,
    pipes: Option<f64>,
    baseline_kib: u64,
    loaded_kib: u64,
}

/// Hold `n` connections through a freshly started proxy; each exchanges one heartbeat (so its
/// backend leg exists) and then idles.
fn idle(running: &mut Running, n: usize) -> Res<Idle> {
    const BATCH: usize = 250;
    let pids = running.proc_.pids();
    let baseline_kib = rss_kib(&pids);
    let mut conns: Vec<TcpStream> = Vec::with_capacity(n);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut buf = [0u8; 8];
    while conns.len() < n {
        check_interrupted()?;
        if Instant::now() > deadline {
            return Err(format!(
                "idle: only {} of {n} connections in 60 s",
                conns.len()
            ));
        }
        let from = conns.len();
        for _ in 0..BATCH.min(n - from) {
            let s = TcpStream::connect_timeout(&addr(running.ports.echo), Duration::from_secs(5))
                .map_err(|e| format!("idle connect #{}: {e}", conns.len()))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .map_err(|e| e.to_string())?;
            conns.push(s);
        }
        for s in &mut conns[from..] {
            s.write_all(&HEARTBEAT)
                .map_err(|e| format!("idle write: {e}"))?;
        }
        for s in &mut conns[from..] {
            s.read_exact(&mut buf)
                .map_err(|e| format!("idle echo: {e}"))?;
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    running.proc_.ensure_running()?;
    let loaded_kib = rss_kib(&running.proc_.pids());
    let pipes = running.admin.map(warren_pipes).transpose()?;
    // Are they all still there? One more heartbeat each.
    let mut alive = 0;
    for s in &mut conns {
        if s.write_all(&HEARTBEAT).is_ok() && s.read_exact(&mut buf).is_ok() {
            alive += 1;
        }
    }
    Ok(Idle {
        rss_per_conn: (loaded_kib.saturating_sub(baseline_kib) * 1024) as f64 / n as f64,
        alive,
        pipes,
        baseline_kib,
        loaded_kib,
    })
}

// ---------------------------------------------------------------------------------------------
// The AMQP workload: lapin publishers with confirms and consumers, against a real RabbitMQ node.

/// One RabbitMQ node for the whole run, started by `scripts/rabbitmq.sh`; stopped and its
/// directory removed on drop (also on error and Ctrl-C), so no node outlives the harness.
struct RabbitNode {
    /// Everything of the node (data, logs, config, cookie) lives under it; `cleanup` removes it.
    basedir: PathBuf,
    /// The node's AMQP port on 127.0.0.1: direct's target and every proxy's backend.
    amqp: u16,
}

impl RabbitNode {
    fn start(dir: &Path) -> Res<RabbitNode> {
        if !Path::new(RABBITMQ_SERVER).exists() {
            return Err(format!(
                "{RABBITMQ_SERVER} missing: run `bash scripts/rabbitmq.sh install` (scripts/bench.sh does)"
            ));
        }
        let mut ports = Vec::new();
        while ports.len() < 3 {
            let p = free_port()?;
            if !ports.contains(&p) {
                ports.push(p);
            }
        }
        // The guard exists before the node does: a node that half-booted is cleaned up too.
        let node = RabbitNode {
            basedir: dir.join("rabbitmq"),
            amqp: ports[0],
        };
        let mut cmd = Command::new("bash");
        cmd.arg(rabbitmq_script())
            .arg("start")
            .arg(format!("peers{}", std::process::id()));
        cmd.args(ports.iter().map(u16::to_string))
            .arg(&node.basedir);
        let (ok, out, err) = run_bounded(cmd, Duration::from_secs(150))?;
        if !ok {
            return Err(format!("scripts/rabbitmq.sh start failed:\n{out}{err}"));
        }
        Ok(node)
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        // Not run_bounded: it gives up at once after Ctrl-C, and this must still run then.
        // The script bounds its own waits (rabbitmqctl stop, then kill -9).
        let out = Command::new("bash")
            .arg(rabbitmq_script())
            .arg("cleanup")
            .arg(&self.basedir)
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "peers: scripts/rabbitmq.sh cleanup {} failed: {}",
                self.basedir.display(),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("peers: scripts/rabbitmq.sh cleanup: {e}"),
        }
    }
}

fn rabbitmq_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/rabbitmq.sh")
}

/// What one AMQP slot measured.
struct Amqp {
    /// Messages consumed and acked per second inside the measured window: end to end.
    delivered: f64,
    /// Publishes confirmed (acked by the broker) per second inside the window.
    confirmed: f64,
    /// Confirm latency (basic.publish → its confirm) p50 and p99, ms, of messages published
    /// inside the window.
    confirm_ms: [f64; 2],
    samples: usize,
    /// Confirms that came back as nacks or errors.
    failed: u64,
    /// The proxy's CPU (all its processes and threads) per delivered message inside the
    /// window, µs; `None` for direct.
    proxy_cpu_us: Option<f64>,
    /// How busy the whole machine was inside the window, % of all CPUs (from /proc/stat).
    machine_busy: f64,
}

/// (busy, total) jiffies of all CPUs, from the first line of /proc/stat.
fn machine_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().take(8).sum();
    // idle and iowait are the 4th and 5th fields.
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// Counters shared by one slot's publishers and consumers.
#[derive(Default)]
struct AmqpCounters {
    confirmed: AtomicU64,
    failed: AtomicU64,
    delivered: AtomicU64,
    /// Confirm latencies (µs) of the messages published inside the measured window.
    latencies: std::sync::Mutex<Vec<f64>>,
}

/// The measured window of a slot, `from` → `to`; publishing starts a warm-up before `from`.
#[derive(Clone, Copy)]
struct Window {
    from: Instant,
    to: Instant,
}

/// Longest wait for one AMQP step (connect, publish, confirm, ack, delete) before the slot is
/// called stuck.
const AMQP_STEP: Duration = Duration::from_secs(30);

fn amqp_uri(port: u16) -> String {
    format!("amqp://guest:guest@127.0.0.1:{port}/%2f?heartbeat=30&connection_timeout=10000")
}

async fn bounded<T, E: std::fmt::Display>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Res<T> {
    match tokio::time::timeout(AMQP_STEP, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer in {AMQP_STEP:?}")),
    }
}

async fn amqp_channel(port: u16, name: &str) -> Res<(lapin::Connection, lapin::Channel)> {
    let conn = bounded(
        &format!("connect {name} to 127.0.0.1:{port}"),
        lapin::Connection::connect(
            &amqp_uri(port),
            lapin::ConnectionProperties::default().with_connection_name(name.into()),
        ),
    )
    .await?;
    let channel = bounded(&format!("{name}: open a channel"), conn.create_channel()).await?;
    Ok((conn, channel))
}

async fn amqp_close(conn: lapin::Connection) {
    // Best effort: a connection that does not close in time is dropped with the runtime's task.
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.close(200, "done".into())).await;
}

/// One publisher: persistent messages on a confirm channel, at most `AMQP_WINDOW` unconfirmed,
/// until the window ends (or `stop`); then waits for every outstanding confirm.
async fn amqp_publisher(
    conn: lapin::Connection,
    channel: lapin::Channel,
    queue: String,
    size: usize,
    window: Window,
    stop: Arc<AtomicBool>,
    counters: Arc<AmqpCounters>,
) -> Res<()> {
    use lapin::options::BasicPublishOptions;
    let payload = vec![0x5au8; size];
    let unconfirmed = Arc::new(tokio::sync::Semaphore::new(AMQP_WINDOW));
    while Instant::now() < window.to
        && !stop.load(Ordering::Relaxed)
        && !INTERRUPTED.load(Ordering::Relaxed)
    {
        let permit = bounded("wait for a confirm", unconfirmed.clone().acquire_owned()).await?;
        let t0 = Instant::now();
        let confirm = bounded(
            "basic.publish",
            channel.basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                &payload,
                lapin::BasicProperties::default().with_delivery_mode(2),
            ),
        )
        .await?;
        let counters = counters.clone();
        tokio::spawn(async move {
            let result = confirm.await;
            let took = t0.elapsed();
            drop(permit);
            match result {
                Ok(c) if c.is_ack() => {
                    counters.confirmed.fetch_add(1, Ordering::Relaxed);
                    if t0 >= window.from && t0 < window.to {
                        counters
                            .latencies
                            .lock()
                            .expect("latencies")
                            .push(took.as_secs_f64() * 1e6);
                    }
                }
                _ => {
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    // All permits back = every confirm arrived.
    let _all = bounded(
        "wait for the last confirms",
        unconfirmed.acquire_many(AMQP_WINDOW as u32),
    )
    .await?;
    amqp_close(conn).await;
    Ok(())
}

/// One consumer: manual acks, prefetch `AMQP_PREFETCH`, until `stop`.
async fn amqp_consumer(
    conn: lapin::Connection,
    channel: lapin::Channel,
    queue: String,
    stop: Arc<AtomicBool>,
    counters: Arc<AmqpCounters>,
) -> Res<()> {
    use futures_lite::StreamExt;
    use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
    bounded(
        "basic.qos",
        channel.basic_qos(AMQP_PREFETCH, BasicQosOptions::default()),
    )
    .await?;
    let mut deliveries = bounded(
        "basic.consume",
        channel.basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            lapin::types::FieldTable::default(),
        ),
    )
    .await?;
    while !stop.load(Ordering::Relaxed) {
        // A short wait, so that `stop` is seen while the queue is empty.
        match tokio::time::timeout(Duration::from_millis(100), deliveries.next()).await {
            Err(_) => continue,
            Ok(None) => return Err("the broker cancelled the consumer".into()),
            Ok(Some(Err(e))) => return Err(format!("delivery: {e}")),
            Ok(Some(Ok(d))) => {
                bounded("basic.ack", d.ack(BasicAckOptions::default())).await?;
                counters.delivered.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    amqp_close(conn).await;
    Ok(())
}

/// One slot: a fresh durable classic queue on the node, `AMQP_PUBLISHERS` publishers and
/// `AMQP_CONSUMERS` consumers (each its own connection) through `port`, `warmup` unmeasured,
/// then `secs` measured; the queue is deleted afterwards (through the node, also on error).
/// `proxy_pids`: the target's processes, whose CPU inside the window is reported.
#[allow(clippy::too_many_arguments)]
fn amqp(
    rt: &tokio::runtime::Runtime,
    node: &RabbitNode,
    port: u16,
    queue: &str,
    size: usize,
    warmup: Duration,
    secs: Duration,
    proxy_pids: Option<&[i32]>,
) -> Res<Amqp> {
    use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
    rt.block_on(async {
        let (control, admin) = amqp_channel(node.amqp, "peers-control").await?;
        let mut args = lapin::types::FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            lapin::types::AMQPValue::LongString("classic".into()),
        );
        let declare = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        bounded(
            "queue.declare",
            admin.queue_declare(queue.into(), declare, args),
        )
        .await?;
        let result = amqp_load(port, queue, size, warmup, secs, proxy_pids).await;
        let deleted = bounded(
            "queue.delete",
            admin.queue_delete(queue.into(), QueueDeleteOptions::default()),
        )
        .await;
        amqp_close(control).await;
        let measured = result?;
        deleted?;
        Ok(measured)
    })
}

async fn amqp_load(
    port: u16,
    queue: &str,
    size: usize,
    warmup: Duration,
    secs: Duration,
    proxy_pids: Option<&[i32]>,
) -> Res<Amqp> {
    use lapin::options::ConfirmSelectOptions;
    let counters = Arc::new(AmqpCounters::default());
    let stop = Arc::new(AtomicBool::new(false));
    // Every connection is up before the clock starts: the window measures traffic, not setup.
    let mut publishers = Vec::new();
    for i in 0..AMQP_PUBLISHERS {
        let (conn, channel) = amqp_channel(port, &format!("peers-publisher-{i}")).await?;
        bounded(
            "confirm.select",
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        publishers.push((conn, channel));
    }
    let mut consumers = Vec::new();
    for i in 0..AMQP_CONSUMERS {
        consumers.push(amqp_channel(port, &format!("peers-consumer-{i}")).await?);
    }
    let from = Instant::now() + warmup;
    let window = Window {
        from,
        to: from + secs,
    };
    let consumers: Vec<_> = consumers
        .into_iter()
        .map(|(conn, channel)| {
            tokio::spawn(amqp_consumer(
                conn,
                channel,
                queue.to_string(),
                stop.clone(),
                counters.clone(),
            ))
        })
        .collect();
    let publishers: Vec<_> = publishers
        .into_iter()
        .map(|(conn, channel)| {
            tokio::spawn(amqp_publisher(
                conn,
                channel,
                queue.to_string(),
                size,
                window,
                stop.clone(),
                counters.clone(),
            ))
        })
        .collect();
    let snapshot = |c: &AmqpCounters| {
        (
            Instant::now(),
            c.delivered.load(Ordering::Relaxed),
            c.confirmed.load(Ordering::Relaxed),
            proxy_pids.map(cpu_seconds),
            machine_jiffies(),
        )
    };
    tokio::time::sleep_until(window.from.into()).await;
    let (t0, d0, c0, cpu0, m0) = snapshot(&counters);
    tokio::time::sleep_until(window.to.into()).await;
    let (t1, d1, c1, cpu1, m1) = snapshot(&counters);
    let mut errors = Vec::new();
    for p in publishers {
        match p.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(format!("publisher: {e}")),
            Err(e) => errors.push(format!("publisher task: {e}")),
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in consumers {
        match c.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(format!("consumer: {e}")),
            Err(e) => errors.push(format!("consumer task: {e}")),
        }
    }
    if !errors.is_empty() {
        return Err(errors.join("; "));
    }
    let mut lat = std::mem::take(&mut *counters.latencies.lock().expect("latencies"));
    if lat.is_empty() {
        return Err("no confirm inside the measured window".into());
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| lat[((p * lat.len() as f64).ceil() as usize).clamp(1, lat.len()) - 1] / 1e3;
    let elapsed = (t1 - t0).as_secs_f64();
    Ok(Amqp {
        delivered: (d1 - d0) as f64 / elapsed,
        confirmed: (c1 - c0) as f64 / elapsed,
        confirm_ms: [pct(0.50), pct(0.99)],
        samples: lat.len(),
        failed: counters.failed.load(Ordering::Relaxed),
        proxy_cpu_us: match (cpu0, cpu1) {
            (Some(a), Some(b)) if d1 > d0 => Some((b - a) * 1e6 / (d1 - d0) as f64),
            _ => None,
        },
        machine_busy: 100.0 * (m1.0 - m0.0) as f64 / (m1.1 - m0.1).max(1) as f64,
    })
}

// ---------------------------------------------------------------------------------------------
// Results.

#[derive(Default)]
struct Results {
    rounds: usize,
    /// (metric, target) → one value per round.
    data: HashMap<(String, Target), Vec<Option<f64>>>,
    notes: Vec<String>,
    /// 1-minute load average at the start of each round: other work on the machine.
    loads: Vec<String>,
}

impl Results {
    fn put(&mut self, key: &str, t: Target, round: usize, v: f64) {
        let rounds = self.rounds;
        let e = self
            .data
            .entry((key.to_string(), t))
            .or_insert_with(|| vec![None; rounds]);
        e[round] = Some(v);
    }

    fn values(&self, key: &str, t: Target) -> Vec<f64> {
        self.data
            .get(&(key.to_string(), t))
            .map(|v| v.iter().flatten().copied().collect())
            .unwrap_or_default()
    }

    fn per_round(&self, key: &str, t: Target) -> Vec<Option<f64>> {
        self.data
            .get(&(key.to_string(), t))
            .cloned()
            .unwrap_or_else(|| vec![None; self.rounds])
    }

    /// Median over rounds of f(values of the targets in that round), rounds with all values only.
    fn round_median(&self, key: &str, ts: &[Target], f: impl Fn(&[f64]) -> f64) -> Option<f64> {
        let cols: Vec<Vec<Option<f64>>> = ts.iter().map(|&t| self.per_round(key, t)).collect();
        let vals: Vec<f64> = (0..self.rounds)
            .filter_map(|r| {
                let row: Option<Vec<f64>> = cols.iter().map(|c| c[r]).collect();
                row.map(|row| f(&row))
            })
            .collect();
        median(&vals)
    }
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let m = s.len() / 2;
    Some(if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    })
}

fn fmt_num(x: f64) -> String {
    let a = x.abs();
    if a >= 1000.0 {
        format!("{x:.0}")
    } else if a >= 100.0 {
        format!("{x:.1}")
    } else if a >= 10.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

fn cell(res: &Results, key: &str, t: Target) -> String {
    let v = res.values(key, t);
    match median(&v) {
        None => "–".into(),
        Some(m) => {
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            format!("{} ({}–{})", fmt_num(m), fmt_num(lo), fmt_num(hi))
        }
    }
}

fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "**met**",
        Some(false) => "**missed**",
        None => "n/a",
    }
}

// ---------------------------------------------------------------------------------------------
// The run.

fn run(opts: &Opts) -> Res<()> {
    let started = Instant::now();
    if !opts.warren.exists() {
        return Err(format!(
            "{} missing: cargo build --release first",
            opts.warren.display()
        ));
    }
    for tool in ["haproxy", "nginx", "iperf3", "setpriv"] {
        which(tool)?;
    }
    if !Path::new(NGINX_STREAM_MODULE).exists() {
        return Err(format!(
            "{NGINX_STREAM_MODULE} missing: apt-get install libnginx-mod-stream"
        ));
    }
    let machine = machine_info(opts);
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let dir = Workdir::new()?;
    let mut res = Results {
        rounds: opts.rounds,
        ..Default::default()
    };
    let (mut echo, echo_port) = start_echo(opts, &dir.0)?;
    let has = |w: &str| opts.workloads.iter().any(|x| x == w);
    // Declared after `dir`, so the node is stopped before its directory goes.
    let rabbit = if has("amqp") {
        eprintln!("peers: starting a RabbitMQ node (scripts/rabbitmq.sh)");
        Some(RabbitNode::start(&dir.0)?)
    } else {
        None
    };
    // The AMQP clients' runtime, as many threads as the echo server has.
    let amqp_rt = match rabbit {
        Some(_) => Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(opts.workers)
                .enable_all()
                .build()
                .map_err(|e| format!("AMQP client runtime: {e}"))?,
        ),
        None => None,
    };
    eprintln!(
        "peers: {} rounds, {} workers, workloads {:?}, temp dir {}",
        opts.rounds,
        opts.workers,
        opts.workloads,
        dir.0.display()
    );
    for round in 0..opts.rounds {
        check_interrupted()?;
        eprintln!(
            "== round {}/{} ({:.0} s so far)",
            round + 1,
            opts.rounds,
            started.elapsed().as_secs_f64()
        );
        echo.ensure_running()?;
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        res.loads
            .push(load.split_whitespace().next().unwrap_or("?").to_string());
        let (mut iperf_srv, iperf_port) = start_iperf_server(&dir.0, &format!("r{round}"))?;
        let backends = Ports {
            echo: echo_port,
            bulk: iperf_port,
            amqp: rabbit.as_ref().map(|r| r.amqp),
        };
        let mut proxies: Vec<(Target, Running)> = Vec::new();
        if has("bulk") || has("churn") || has("latency") || has("amqp") {
            for t in PROXIES {
                proxies.push((
                    t,
                    start_proxy(t, opts, &dir.0, backends, &format!("r{round}"))?,
                ));
            }
        }
        let ports_of = |t: Target, proxies: &[(Target, Running)]| -> Ports {
            proxies
                .iter()
                .find(|(p, _)| *p == t)
                .map(|(_, r)| r.ports)
                .unwrap_or(backends)
        };
        // The processes of a proxy target, whose CPU is measured; `None` for direct.
        let pids_of = |t: Target, proxies: &[(Target, Running)]| -> Option<Vec<i32>> {
            proxies
                .iter()
                .find(|(p, _)| *p == t)
                .map(|(_, r)| r.proc_.pids())
        };

        if has("bulk") {
            for streams in [1usize, 4] {
                for reverse in [false, true] {
                    let key = bulk_key(streams, reverse);
                    for t in TARGETS {
                        check_interrupted()?;
                        let pids = pids_of(t, &proxies);
                        let cpu0 = pids.as_deref().map(cpu_seconds);
                        match iperf(ports_of(t, &proxies).bulk, opts.bulk_secs, streams, reverse) {
                            Ok(b) => {
                                res.put(&format!("{key} gbps"), t, round, b.gbps);
                                if let (Some(p), Some(c0)) = (&pids, cpu0) {
                                    let cpu = cpu_seconds(p) - c0;
                                    res.put(&format!("{key} cpu"), t, round, cpu / (b.bytes / 1e9));
                                }
                                eprintln!(
                                    "   bulk {key:<14} {:<8} {:7.2} Gbit/s",
                                    t.name(),
                                    b.gbps
                                );
                            }
                            Err(e) => {
                                let note =
                                    format!("round {} bulk {key} {}: {e}", round + 1, t.name());
                                eprintln!("   {note}");
                                res.notes.push(note);
                                // A failed client can leave iperf3's server busy: start a new one
                                // only when it died; otherwise the next test reuses it.
                                iperf_srv.ensure_running()?;
                            }
                        }
                    }
                }
            }
            if let Some((_, w)) = proxies.iter().find(|(p, _)| *p == Target::Warren) {
                if let Some(a) = w.admin {
                    std::thread::sleep(Duration::from_millis(200));
                    res.put("pipes after bulk", Target::Warren, round, warren_pipes(a)?);
                }
            }
        }
        if has("churn") {
            for clients in CHURN_CLIENTS {
                for t in TARGETS {
                    check_interrupted()?;
                    let pids = pids_of(t, &proxies);
                    let cpu0 = pids.as_deref().map(cpu_seconds);
                    let (rate, errors, done) =
                        churn(ports_of(t, &proxies).echo, clients, opts.churn_secs);
                    res.put(&format!("churn c{clients}"), t, round, rate);
                    if let (Some(p), Some(c0)) = (&pids, cpu0) {
                        if done > 0 {
                            let cpu = cpu_seconds(p) - c0;
                            res.put(
                                &format!("churn c{clients} cpu"),
                                t,
                                round,
                                cpu * 1e6 / done as f64,
                            );
                        }
                    }
                    eprintln!(
                        "   churn c{clients:<2} {:<8} {rate:8.0} conn/s ({errors} errors)",
                        t.name()
                    );
                    if errors > 0 {
                        res.notes.push(format!(
                            "round {} churn c{clients} {}: {errors} failed connections",
                            round + 1,
                            t.name()
                        ));
                    }
                    // Let TIME_WAIT and the proxies' close work settle before the next slot.
                    std::thread::sleep(Duration::from_millis(300));
                }
            }
        }
        if has("latency") {
            for size in SIZES {
                for t in TARGETS {
                    check_interrupted()?;
                    match latency(ports_of(t, &proxies).echo, size, opts.latency_secs) {
                        Ok((p, n)) => {
                            for (q, v) in ["p50", "p99", "p99.9"].iter().zip(p) {
                                res.put(&format!("lat {size} {q}"), t, round, v);
                            }
                            eprintln!(
                                "   lat {size:>5} B {:<8} p50 {:6.1} p99 {:6.1} p99.9 {:7.1} µs ({n} samples)",
                                t.name(),
                                p[0],
                                p[1],
                                p[2]
                            );
                        }
                        Err(e) => res.notes.push(format!(
                            "round {} latency {size} {}: {e}",
                            round + 1,
                            t.name()
                        )),
                    }
                }
            }
        }
        if let (Some(node), Some(rt)) = (&rabbit, &amqp_rt) {
            for size in AMQP_SIZES {
                for t in TARGETS {
                    check_interrupted()?;
                    let port = ports_of(t, &proxies)
                        .amqp
                        .ok_or("no AMQP listener: the node is not running")?;
                    let queue = format!("peers-r{round}-{}-{size}", t.name());
                    let pids = pids_of(t, &proxies);
                    match amqp(
                        rt,
                        node,
                        port,
                        &queue,
                        size,
                        opts.amqp_warmup,
                        opts.amqp_secs,
                        pids.as_deref(),
                    ) {
                        Ok(a) => {
                            if let Some(cpu) = a.proxy_cpu_us {
                                res.put(&format!("amqp {size} cpu"), t, round, cpu);
                            }
                            res.put(&format!("amqp {size} busy"), t, round, a.machine_busy);
                            res.put(&format!("amqp {size} delivered"), t, round, a.delivered);
                            res.put(&format!("amqp {size} confirmed"), t, round, a.confirmed);
                            res.put(&format!("amqp {size} p50"), t, round, a.confirm_ms[0]);
                            res.put(&format!("amqp {size} p99"), t, round, a.confirm_ms[1]);
                            eprintln!(
                                "   amqp {:>6} {:<8} {:7.0} msg/s delivered, {:7.0} confirmed, \
                                 confirm p50 {:6.2} p99 {:6.2} ms ({} samples), proxy {} µs CPU/msg, \
                                 machine {:.0} % busy",
                                size_label(size),
                                t.name(),
                                a.delivered,
                                a.confirmed,
                                a.confirm_ms[0],
                                a.confirm_ms[1],
                                a.samples,
                                a.proxy_cpu_us.map_or("–".into(), |c| format!("{c:.1}")),
                                a.machine_busy
                            );
                            if a.failed > 0 {
                                res.notes.push(format!(
                                    "round {} amqp {} {}: {} publishes nacked or failed",
                                    round + 1,
                                    size_label(size),
                                    t.name(),
                                    a.failed
                                ));
                            }
                        }
                        Err(e) => {
                            let note = format!(
                                "round {} amqp {} {}: {e}",
                                round + 1,
                                size_label(size),
                                t.name()
                            );
                            eprintln!("   {note}");
                            res.notes.push(note);
                        }
                    }
                }
            }
        }
        for (_, r) in &mut proxies {
            r.proc_.ensure_running()?;
        }
        drop(proxies);
        drop(iperf_srv);

        if has("idle") {
            for t in PROXIES {
                check_interrupted()?;
                // Without the AMQP listener: the idle baseline stays what it was before amqp.
                let idle_backends = Ports {
                    amqp: None,
                    ..backends
                };
                let mut r = start_proxy(t, opts, &dir.0, idle_backends, &format!("r{round}-idle"))?;
                match idle(&mut r, opts.idle_connections) {
                    Ok(i) => {
                        res.put("idle rss", t, round, i.rss_per_conn);
                        res.put("idle alive", t, round, i.alive as f64);
                        if let Some(p) = i.pipes {
                            res.put("idle pipes", t, round, p);
                        }
                        eprintln!(
                            "   idle {:<8} {:6.0} B/conn (RSS {} → {} KiB), {} alive, pipes {:?}",
                            t.name(),
                            i.rss_per_conn,
                            i.baseline_kib,
                            i.loaded_kib,
                            i.alive,
                            i.pipes
                        );
                    }
                    Err(e) => {
                        let note = format!("round {} idle {}: {e}", round + 1, t.name());
                        eprintln!("   {note}");
                        res.notes.push(note);
                    }
                }
                // The clients closed with the function; the proxy goes now.
                drop(r);
            }
        }
    }
    drop(echo);
    drop(amqp_rt);
    drop(rabbit);
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let report = render(
        opts,
        &res,
        &machine,
        load_before.trim(),
        load_after.trim(),
        started.elapsed(),
    );
    write_report(&opts.out, &report)?;
    println!("{report}");
    eprintln!(
        "peers: wrote {} in {:.0} s",
        opts.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn size_label(size: usize) -> String {
    if size >= 1024 {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

fn bulk_key(streams: usize, reverse: bool) -> String {
    format!("bulk {} P{streams}", if reverse { "-R" } else { "fwd" })
}

fn first_line(mut cmd: Command) -> String {
    cmd.stdin(Stdio::null());
    match cmd.output() {
        Ok(o) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            text.lines().next().unwrap_or("").trim().to_string()
        }
        Err(e) => format!("({e})"),
    }
}

fn machine_info(opts: &Opts) -> Vec<(String, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_string();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map(|k| format!("{:.1} GiB", k as f64 / 1048576.0))
        .unwrap_or_default();
    let cmd = |p: &str, a: &[&str]| {
        let mut c = Command::new(p);
        c.args(a);
        first_line(c)
    };
    let repo = env!("CARGO_MANIFEST_DIR");
    let rev = cmd("git", &["-C", repo, "rev-parse", "--short", "HEAD"]);
    let dirty = Command::new("git")
        .args([
            "-C",
            repo,
            "status",
            "--porcelain",
            "--untracked-files=no",
            "src",
        ])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    let mut warren_v = Command::new(&opts.warren);
    warren_v.arg("--version");
    vec![
        ("date (UTC)".into(), cmd("date", &["-u", "+%Y-%m-%d %H:%M"])),
        ("command".into(), format!("`{}`", opts.command)),
        ("machine".into(), format!("{model}, {cpus} CPUs, {mem} RAM")),
        ("kernel".into(), cmd("uname", &["-sr"])),
        ("OS".into(), {
            std::fs::read_to_string("/etc/os-release")
                .unwrap_or_default()
                .lines()
                .find(|l| l.starts_with("PRETTY_NAME="))
                .map(|l| {
                    l.trim_start_matches("PRETTY_NAME=")
                        .trim_matches('"')
                        .to_string()
                })
                .unwrap_or_default()
        }),
        (
            "warren".into(),
            format!(
                "{} (git {rev}{}), release build",
                first_line(warren_v),
                if dirty { ", src/ modified" } else { "" }
            ),
        ),
        ("HAProxy".into(), cmd("haproxy", &["-v"])),
        ("NGINX".into(), cmd("nginx", &["-v"])),
        ("iperf3".into(), cmd("iperf3", &["--version"])),
        (
            "RabbitMQ".into(),
            format!(
                "{} (Debian package)",
                cmd("dpkg-query", &["-W", "-f=${Version}\\n", "rabbitmq-server"])
            ),
        ),
        ("rustc".into(), cmd("rustc", &["-V"])),
    ]
}

fn render(
    opts: &Opts,
    res: &Results,
    machine: &[(String, String)],
    load_before: &str,
    load_after: &str,
    took: Duration,
) -> String {
    use Target::*;
    let mut o = String::new();
    let w = &mut o;
    writeln!(w, "| | |\n|---|---|").unwrap();
    for (k, v) in machine {
        writeln!(w, "| {k} | {v} |").unwrap();
    }
    writeln!(
        w,
        "| settings | {} rounds{}, {} worker threads/processes per proxy, bulk {} s per slot, churn {} s, latency {} s, amqp {} s warm-up + {} s, idle {} connections; workloads {} |",
        opts.rounds,
        if opts.quick { " (`--quick`)" } else { "" },
        opts.workers,
        opts.bulk_secs,
        opts.churn_secs,
        opts.latency_secs,
        opts.amqp_warmup.as_secs_f64(),
        opts.amqp_secs.as_secs_f64(),
        opts.idle_connections,
        opts.workloads.join(", ")
    )
    .unwrap();
    writeln!(
        w,
        "| load average before / after | {load_before} / {load_after} |"
    )
    .unwrap();
    writeln!(
        w,
        "| 1-min load average at the start of each round | {} |",
        res.loads.join(", ")
    )
    .unwrap();
    writeln!(w, "| run time | {:.0} s |\n", took.as_secs_f64()).unwrap();
    writeln!(
        w,
        "Cells: median over rounds (min–max). Ratios: computed inside each round, then the median \
         over rounds; **w/h** = warren ÷ HAProxy, **w/n** = warren ÷ NGINX.\n"
    )
    .unwrap();

    let mut targets: Vec<(String, String, &'static str)> = Vec::new(); // (what, value, verdict)

    // Bulk.
    let bulk_keys: Vec<String> = [1usize, 4]
        .iter()
        .flat_map(|&s| [false, true].map(|r| bulk_key(s, r)))
        .collect();
    if bulk_keys
        .iter()
        .any(|k| !res.values(&format!("{k} gbps"), Direct).is_empty())
    {
        writeln!(w, "### Bulk throughput (iperf3), Gbit/s\n").unwrap();
        writeln!(
            w,
            "`fwd` = client → server, `-R` = server → client; P1/P4 = streams.\n"
        )
        .unwrap();
        writeln!(
            w,
            "| workload | direct | warren | HAProxy | NGINX | w/h (≥ 1.15) | w/n (≥ 1.8) |"
        )
        .unwrap();
        writeln!(w, "|---|---|---|---|---|---|---|").unwrap();
        for k in &bulk_keys {
            let key = format!("{k} gbps");
            let rh = res.round_median(&key, &[Warren, Haproxy], |v| v[0] / v[1]);
            let rn = res.round_median(&key, &[Warren, Nginx], |v| v[0] / v[1]);
            writeln!(
                w,
                "| {k} | {} | {} | {} | {} | {} {} | {} {} |",
                cell(res, &key, Direct),
                cell(res, &key, Warren),
                cell(res, &key, Haproxy),
                cell(res, &key, Nginx),
                rh.map(fmt_num).unwrap_or_default(),
                verdict(rh.map(|r| r >= 1.15)),
                rn.map(fmt_num).unwrap_or_default(),
                verdict(rn.map(|r| r >= 1.8)),
            )
            .unwrap();
            targets.push((
                format!("{k} throughput ≥ 1.15 × HAProxy"),
                rh.map(fmt_num).unwrap_or_default(),
                verdict(rh.map(|r| r >= 1.15)),
            ));
            targets.push((
                format!("{k} throughput ≥ 1.8 × NGINX"),
                rn.map(fmt_num).unwrap_or_default(),
                verdict(rn.map(|r| r >= 1.8)),
            ));
        }
        writeln!(w, "\n### Bulk: proxy CPU seconds per GB moved (utime+stime of all its processes/threads)\n").unwrap();
        writeln!(
            w,
            "| workload | warren | HAProxy | NGINX | w/h (≤ 1.0) | w/n (≤ 0.4) |"
        )
        .unwrap();
        writeln!(w, "|---|---|---|---|---|---|").unwrap();
        for k in &bulk_keys {
            let key = format!("{k} cpu");
            let rh = res.round_median(&key, &[Warren, Haproxy], |v| v[0] / v[1]);
            let rn = res.round_median(&key, &[Warren, Nginx], |v| v[0] / v[1]);
            writeln!(
                w,
                "| {k} | {} | {} | {} | {} {} | {} {} |",
                cell(res, &key, Warren),
                cell(res, &key, Haproxy),
                cell(res, &key, Nginx),
                rh.map(fmt_num).unwrap_or_default(),
                verdict(rh.map(|r| r <= 1.0)),
                rn.map(fmt_num).unwrap_or_default(),
                verdict(rn.map(|r| r <= 0.4)),
            )
            .unwrap();
            targets.push((
                format!("{k} CPU/GB ≤ HAProxy"),
                rh.map(fmt_num).unwrap_or_default(),
                verdict(rh.map(|r| r <= 1.0)),
            ));
            targets.push((
                format!("{k} CPU/GB ≤ 0.4 × NGINX"),
                rn.map(fmt_num).unwrap_or_default(),
                verdict(rn.map(|r| r <= 0.4)),
            ));
        }
        let pipes = res.values("pipes after bulk", Warren);
        if !pipes.is_empty() {
            writeln!(
                w,
                "\nwarren `warren_splice_pipes_leased` after the bulk tests, per round: {:?}",
                pipes.iter().map(|p| *p as i64).collect::<Vec<_>>()
            )
            .unwrap();
        }
        writeln!(w).unwrap();
    }

    // Churn.
    if !res.values("churn c1", Direct).is_empty() {
        writeln!(
            w,
            "### Connection churn (connect → 1 byte → echo → close), connections/s\n"
        )
        .unwrap();
        writeln!(w, "| clients | direct | warren | HAProxy | NGINX | w/h | w/n | w / best of h,n (≥ 1.2 at 8) |").unwrap();
        writeln!(w, "|---|---|---|---|---|---|---|---|").unwrap();
        for c in CHURN_CLIENTS {
            let key = format!("churn c{c}");
            let rh = res.round_median(&key, &[Warren, Haproxy], |v| v[0] / v[1]);
            let rn = res.round_median(&key, &[Warren, Nginx], |v| v[0] / v[1]);
            let rb = res.round_median(&key, &[Warren, Haproxy, Nginx], |v| v[0] / v[1].max(v[2]));
            let v = if c == 8 {
                verdict(rb.map(|r| r >= 1.2))
            } else {
                ""
            };
            writeln!(
                w,
                "| {c} | {} | {} | {} | {} | {} | {} | {} {v} |",
                cell(res, &key, Direct),
                cell(res, &key, Warren),
                cell(res, &key, Haproxy),
                cell(res, &key, Nginx),
                rh.map(fmt_num).unwrap_or_default(),
                rn.map(fmt_num).unwrap_or_default(),
                rb.map(fmt_num).unwrap_or_default(),
            )
            .unwrap();
            if c == 8 {
                targets.push((
                    "churn, 8 clients ≥ 1.2 × best of HAProxy, NGINX".into(),
                    rb.map(fmt_num).unwrap_or_default(),
                    v,
                ));
            }
        }
        writeln!(
            w,
            "\n### Churn: proxy CPU µs per connection (utime+stime of all its processes/threads ÷ connections completed)\n"
        )
        .unwrap();
        writeln!(w, "| clients | warren | HAProxy | NGINX | w/h | w/n |").unwrap();
        writeln!(w, "|---|---|---|---|---|---|").unwrap();
        for c in CHURN_CLIENTS {
            let key = format!("churn c{c} cpu");
            let rh = res.round_median(&key, &[Warren, Haproxy], |v| v[0] / v[1]);
            let rn = res.round_median(&key, &[Warren, Nginx], |v| v[0] / v[1]);
            writeln!(
                w,
                "| {c} | {} | {} | {} | {} | {} |",
                cell(res, &key, Warren),
                cell(res, &key, Haproxy),
                cell(res, &key, Nginx),
                rh.map(fmt_num).unwrap_or_default(),
                rn.map(fmt_num).unwrap_or_default(),
            )
            .unwrap();
        }
        writeln!(w).unwrap();
    }

    // Latency.
    if !res.values("lat 64 p50", Direct).is_empty() {
        writeln!(
            w,
            "### Latency (ping-pong on one connection), round trip in µs\n"
        )
        .unwrap();
        writeln!(
            w,
            "\"added\" = proxy − direct in the same round. Target: warren's added ≤ the smaller of \
             HAProxy's and NGINX's added, at p50 and p99; the last column is the median over rounds \
             of (warren added − best peer added), ≤ 0 meets it.\n"
        )
        .unwrap();
        writeln!(w, "| size | pct | direct | warren | HAProxy | NGINX | added: warren | HAProxy | NGINX | warren − best |").unwrap();
        writeln!(w, "|---|---|---|---|---|---|---|---|---|---|").unwrap();
        for size in SIZES {
            for q in ["p50", "p99", "p99.9"] {
                let key = format!("lat {size} {q}");
                let added = |t| res.round_median(&key, &[t, Direct], |v| v[0] - v[1]);
                let diff = res.round_median(&key, &[Warren, Haproxy, Nginx, Direct], |v| {
                    (v[0] - v[3]) - (v[1] - v[3]).min(v[2] - v[3])
                });
                let v = if q == "p99.9" {
                    ""
                } else {
                    verdict(diff.map(|d| d <= 0.0))
                };
                let f = |x: Option<f64>| x.map(fmt_num).unwrap_or_default();
                writeln!(
                    w,
                    "| {} | {q} | {} | {} | {} | {} | {} | {} | {} | {} {v} |",
                    if size >= 1024 {
                        format!("{} KiB", size / 1024)
                    } else {
                        format!("{size} B")
                    },
                    cell(res, &key, Direct),
                    cell(res, &key, Warren),
                    cell(res, &key, Haproxy),
                    cell(res, &key, Nginx),
                    f(added(Warren)),
                    f(added(Haproxy)),
                    f(added(Nginx)),
                    f(diff),
                )
                .unwrap();
                if q != "p99.9" {
                    targets.push((
                        format!("latency {size} B {q}: added ≤ best peer (µs over)"),
                        f(diff),
                        v,
                    ));
                }
            }
        }
        writeln!(w).unwrap();
    }

    // AMQP.
    if AMQP_SIZES.iter().any(|s| {
        !res.values(&format!("amqp {s} delivered"), Direct)
            .is_empty()
    }) {
        writeln!(
            w,
            "### AMQP (lapin → real RabbitMQ node), messages/s\n\n\
             {AMQP_PUBLISHERS} publishers (own connection, confirm channel, persistent messages, \
             ≤ {AMQP_WINDOW} unconfirmed each) and {AMQP_CONSUMERS} consumers (own connection, \
             manual ack, prefetch {AMQP_PREFETCH}) on one fresh durable classic queue per slot. \
             \"delivered\" = consumed and acked per second (end to end), \"confirmed\" = publishes \
             confirmed per second, both over the measured window. **w/d** = warren ÷ direct.\n"
        )
        .unwrap();
        writeln!(
            w,
            "| size | msgs/s | direct | warren | HAProxy | NGINX | w/d (≥ 0.97) | w/h | w/n |"
        )
        .unwrap();
        writeln!(w, "|---|---|---|---|---|---|---|---|---|").unwrap();
        for size in AMQP_SIZES {
            for what in ["delivered", "confirmed"] {
                let key = format!("amqp {size} {what}");
                let rd = res.round_median(&key, &[Warren, Direct], |v| v[0] / v[1]);
                let rh = res.round_median(&key, &[Warren, Haproxy], |v| v[0] / v[1]);
                let rn = res.round_median(&key, &[Warren, Nginx], |v| v[0] / v[1]);
                let v = if what == "delivered" {
                    verdict(rd.map(|r| r >= 0.97))
                } else {
                    ""
                };
                let f = |x: Option<f64>| x.map(fmt_num).unwrap_or_default();
                writeln!(
                    w,
                    "| {} | {what} | {} | {} | {} | {} | {} {v} | {} | {} |",
                    size_label(size),
                    cell(res, &key, Direct),
                    cell(res, &key, Warren),
                    cell(res, &key, Haproxy),
                    cell(res, &key, Nginx),
                    f(rd),
                    f(rh),
                    f(rn),
                )
                .unwrap();
                if what == "delivered" {
                    targets.push((
                        format!("AMQP {} messages/s ≥ 0.97 × direct", size_label(size)),
                        f(rd),
                        v,
                    ));
                }
            }
        }
        writeln!(
            w,
            "\n**Confirm latency** (basic.publish → its confirm, messages published inside the \
             window, nearest rank), ms:\n"
        )
        .unwrap();
        writeln!(w, "| size | pct | direct | warren | HAProxy | NGINX |").unwrap();
        writeln!(w, "|---|---|---|---|---|---|").unwrap();
        for size in AMQP_SIZES {
            for q in ["p50", "p99"] {
                let key = format!("amqp {size} {q}");
                writeln!(
                    w,
                    "| {} | {q} | {} | {} | {} | {} |",
                    size_label(size),
                    cell(res, &key, Direct),
                    cell(res, &key, Warren),
                    cell(res, &key, Haproxy),
                    cell(res, &key, Nginx),
                )
                .unwrap();
            }
        }
        writeln!(
            w,
            "\n**Where the CPU goes** inside the measured window: the proxy's CPU (utime+stime of \
             all its processes/threads) per delivered message, µs, and how busy the whole machine \
             was, % of all CPUs (/proc/stat):\n"
        )
        .unwrap();
        writeln!(
            w,
            "| size | | direct | warren | HAProxy | NGINX | w/h | w/n |"
        )
        .unwrap();
        writeln!(w, "|---|---|---|---|---|---|---|---|").unwrap();
        for size in AMQP_SIZES {
            let key = format!("amqp {size} cpu");
            let rh = res.round_median(&key, &[Warren, Haproxy], |v| v[0] / v[1]);
            let rn = res.round_median(&key, &[Warren, Nginx], |v| v[0] / v[1]);
            writeln!(
                w,
                "| {} | proxy CPU µs/msg | – | {} | {} | {} | {} | {} |",
                size_label(size),
                cell(res, &key, Warren),
                cell(res, &key, Haproxy),
                cell(res, &key, Nginx),
                rh.map(fmt_num).unwrap_or_default(),
                rn.map(fmt_num).unwrap_or_default(),
            )
            .unwrap();
            let key = format!("amqp {size} busy");
            writeln!(
                w,
                "| {} | machine busy % | {} | {} | {} | {} | | |",
                size_label(size),
                cell(res, &key, Direct),
                cell(res, &key, Warren),
                cell(res, &key, Haproxy),
                cell(res, &key, Nginx),
            )
            .unwrap();
        }
        writeln!(w).unwrap();
    }

    // Idle.
    if !res.values("idle rss", Warren).is_empty() {
        writeln!(
            w,
            "### Idle: {} connections, each proxy freshly started as user nobody\n",
            opts.idle_connections
        )
        .unwrap();
        writeln!(
            w,
            "RSS per connection = (VmRSS of all the proxy's processes with the connections open − \
             VmRSS just after start) ÷ connections; each connection exchanged one 8-byte heartbeat \
             first, so its backend leg exists. \"alive\" = connections that still echoed a heartbeat after the measurement.\n"
        )
        .unwrap();
        writeln!(w, "| | warren | HAProxy | NGINX |\n|---|---|---|---|").unwrap();
        writeln!(
            w,
            "| RSS per connection, bytes | {} | {} | {} |",
            cell(res, "idle rss", Warren),
            cell(res, "idle rss", Haproxy),
            cell(res, "idle rss", Nginx)
        )
        .unwrap();
        writeln!(
            w,
            "| alive | {} | {} | {} |",
            cell(res, "idle alive", Warren),
            cell(res, "idle alive", Haproxy),
            cell(res, "idle alive", Nginx)
        )
        .unwrap();
        let pipes = res.values("idle pipes", Warren);
        let max_pipes = pipes.iter().copied().fold(0.0, f64::max);
        writeln!(w, "| pipes held (`warren_splice_pipes_leased`) | max {max_pipes:.0} over {} rounds | – | – |\n", pipes.len()).unwrap();
        let rss = median(&res.values("idle rss", Warren));
        targets.push((
            "idle RSS per connection ≤ 2048 B".into(),
            rss.map(|r| format!("{r:.0} B")).unwrap_or_default(),
            verdict(rss.map(|r| r <= 2048.0)),
        ));
        targets.push((
            "idle: 0 pipes held".into(),
            format!("{max_pipes:.0}"),
            verdict((!pipes.is_empty()).then_some(max_pipes == 0.0)),
        ));
    }

    writeln!(
        w,
        "### Targets\n\n| target | measured (median of per-round ratios) | |\n|---|---|---|"
    )
    .unwrap();
    for (what, val, v) in &targets {
        writeln!(w, "| {what} | {val} | {v} |").unwrap();
    }
    if !res.notes.is_empty() {
        writeln!(w, "\nErrors during the run:\n").unwrap();
        for n in &res.notes {
            writeln!(w, "- {n}").unwrap();
        }
    }
    o
}

/// Replace the generated section of BENCHMARKS.md, keeping what people wrote around it.
fn write_report(path: &Path, report: &str) -> Res<()> {
    let generated = format!("{RESULTS_BEGIN}\n{report}\n{RESULTS_END}");
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let text = match (old.find(RESULTS_BEGIN), old.find(RESULTS_END)) {
        (Some(a), Some(b)) if a < b => {
            format!("{}{generated}{}", &old[..a], &old[b + RESULTS_END.len()..])
        }
        _ => format!(
            "# Benchmarks: warren vs HAProxy vs NGINX\n\nRun `bash scripts/bench.sh` \
             (see benches/peers.rs).\n\n## Results\n\n{generated}\n"
        ),
    };
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}
