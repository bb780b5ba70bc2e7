//! The command line: `--run` and its flags into [`Opts`], or the usage text. Owns nothing else;
//! `--echo-server` and `--probe` are read by `main` before these flags.

use std::path::PathBuf;
use std::time::Duration;

use crate::Res;

/// Every workload, in the order they run.
pub const WORKLOADS: [&str; 7] = ["bulk", "churn", "latency", "amqp", "idle", "storm", "tls"];

/// What a run does: the flags, and the slot lengths they imply.
#[derive(Clone, Debug)]
pub struct Opts {
    pub rounds: usize,
    pub quick: bool,
    pub workers: usize,
    pub warren: PathBuf,
    pub out: PathBuf,
    pub workloads: Vec<String>,
    pub bulk_secs: u64,
    pub churn_secs: f64,
    pub latency_secs: f64,
    pub idle_connections: usize,
    /// Clients of the reconnect storm.
    pub storm_clients: usize,
    /// AMQP: unmeasured seconds after the clients connect, then measured seconds, per slot.
    pub amqp_warmup: Duration,
    pub amqp_secs: Duration,
    pub command: String,
}

pub fn usage() -> &'static str {
    "peers: warren vs HAProxy vs NGINX on loopback.\n\
     Run: bash scripts/bench.sh [--rounds N] [--quick] [--workers N] [--workloads bulk,churn,latency,amqp,idle,storm,tls]\n\
     or:  cargo bench --bench peers -- --run [same flags] [--warren PATH] [--out FILE]"
}

pub fn parse_args() -> Res<Option<Opts>> {
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
        storm_clients: if quick { 200 } else { 500 },
        amqp_warmup: Duration::from_secs(1),
        amqp_secs: Duration::from_secs(if quick { 3 } else { 10 }),
        command,
    }))
}
