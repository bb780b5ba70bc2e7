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
//! - the storm's backends and clients: two tokio runtimes in this process, N threads each;
//! - the TLS clients (rustls, full handshakes and echoed bulk): a tokio runtime of N threads in
//!   this process, against the echo backend behind each proxy's TLS listener (the certificate
//!   made with `openssl` in the scratch directory);
//! - the AMQP backend: one RabbitMQ node for the whole run (`scripts/rabbitmq.sh start`, stopped
//!   by a guard); its clients (lapin publishers and consumers) on a tokio runtime in this process.
//!
//! Everything binds 127.0.0.1 only; every loop is bounded by a deadline or a count.
//!
//! The rooms, in the order a run goes through them: `cli` (flags → [`cli::Opts`]), `procs`
//! (child processes and what /proc says of them), `peers` (the echo and iperf3 backends and the
//! three proxies' configs), `workloads` (bulk, churn, latency, idle clients), `amqp` (the
//! RabbitMQ node and the lapin clients), `storm` (the reconnect storm: its backends and
//! clients), `tls` (the certificate and the TLS clients), `run` (rounds of slots into
//! [`stats::Results`]), `stats` (medians and table cells)
//! and `report` (the Markdown that goes into BENCHMARKS.md).

mod amqp;
mod cli;
mod peers;
mod procs;
mod report;
mod run;
mod stats;
mod storm;
mod tls;
mod workloads;

use std::sync::atomic::{AtomicBool, Ordering};

/// Set by SIGINT/SIGTERM; every loop of the run checks it.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

pub type Res<T> = Result<T, String>;

pub fn check_interrupted() -> Res<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        Err("interrupted".into())
    } else {
        Ok(())
    }
}

/// What a workload goes through: no proxy, or one of the three proxies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Balancer {
    Direct,
    Warren,
    Haproxy,
    Nginx,
}

pub const TARGETS: [Balancer; 4] = [
    Balancer::Direct,
    Balancer::Warren,
    Balancer::Haproxy,
    Balancer::Nginx,
];
pub const PROXIES: [Balancer; 3] = [Balancer::Warren, Balancer::Haproxy, Balancer::Nginx];

impl Balancer {
    pub fn name(self) -> &'static str {
        match self {
            Balancer::Direct => "direct",
            Balancer::Warren => "warren",
            Balancer::Haproxy => "haproxy",
            Balancer::Nginx => "nginx",
        }
    }
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
        peers::echo_server(threads);
    }
    // For profiling one target by hand: `peers --probe churn PORT CLIENTS SECS` or
    // `peers --probe latency PORT SIZE SECS` (see "What bounds the missed targets" in BENCHMARKS.md).
    if let Some(i) = args.iter().position(|a| a == "--probe") {
        probe(&args[i + 1..]);
        return;
    }
    let opts = match cli::parse_args() {
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
    procs::raise_nofile();
    match run::run(&opts) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("peers: {e}");
            std::process::exit(1);
        }
    }
}

/// `--probe churn|latency PORT N SECS`: one workload against one port, printed.
fn probe(args: &[String]) {
    let arg = |k: usize| {
        args.get(k)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let (port, n, secs) = (arg(1) as u16, arg(2) as usize, arg(3).max(0.1));
    match args.first().map(String::as_str) {
        Some("churn") => {
            let (rate, errors, _) = workloads::churn(port, n.max(1), secs);
            println!("churn {port} clients {n}: {rate:.0} conn/s, {errors} errors");
        }
        Some("latency") => match workloads::latency(port, n.max(1), secs) {
            Ok((p, k)) => println!(
                "latency {port} {n} B: p50 {:.1} p99 {:.1} p99.9 {:.1} µs ({k} samples)",
                p[0], p[1], p[2]
            ),
            Err(e) => println!("latency: {e}"),
        },
        _ => eprintln!("--probe churn|latency PORT N SECS"),
    }
}
