//! The AMQP workload: one real RabbitMQ node for the whole run (started and stopped through
//! `scripts/rabbitmq.sh`), and per slot lapin publishers with confirms and consumers with manual
//! acks through one target, measured inside a window after a warm-up.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::procs::{cpu_seconds, free_port, run_bounded};
use crate::stats::nearest_rank;
use crate::{Res, INTERRUPTED};

/// AMQP message sizes.
pub const AMQP_SIZES: [usize; 2] = [100, 64 * 1024];
/// Publisher connections of the AMQP workload, each with one confirm channel.
pub const AMQP_PUBLISHERS: usize = 4;
/// Consumer connections of the AMQP workload, all on the same queue.
pub const AMQP_CONSUMERS: usize = 2;
/// Unconfirmed publishes per publisher: enough in flight that the measure is throughput, not
/// one round trip (and one fsync) per message.
pub const AMQP_WINDOW: usize = 64;
/// Unacked deliveries per consumer.
pub const AMQP_PREFETCH: u16 = 200;
/// The package's server script; its absence means RabbitMQ is not installed.
const RABBITMQ_SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

/// One RabbitMQ node for the whole run, started by `scripts/rabbitmq.sh`; stopped and its
/// directory removed on drop (also on error and Ctrl-C), so no node outlives the harness.
pub struct RabbitNode {
    /// Everything of the node (data, logs, config, cookie) lives under it; `cleanup` removes it.
    pub basedir: PathBuf,
    /// The node's AMQP port on 127.0.0.1: direct's target and every proxy's backend.
    pub amqp: u16,
}

impl RabbitNode {
    /// Start the node (up to 150 s) with its data under `dir`/rabbitmq.
    pub fn start(dir: &Path) -> Res<RabbitNode> {
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

/// `scripts/rabbitmq.sh` of this repository.
fn rabbitmq_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/rabbitmq.sh")
}

/// What one AMQP slot measured.
pub struct Amqp {
    /// Messages consumed and acked per second inside the measured window: end to end.
    pub delivered: f64,
    /// Publishes confirmed (acked by the broker) per second inside the window.
    pub confirmed: f64,
    /// Confirm latency (basic.publish → its confirm) p50 and p99, ms, of messages published
    /// inside the window.
    pub confirm_ms: [f64; 2],
    pub samples: usize,
    /// Confirms that came back as nacks or errors.
    pub failed: u64,
    /// The proxy's CPU (all its processes and threads) per delivered message inside the
    /// window, µs; `None` for direct.
    pub proxy_cpu_us: Option<f64>,
    /// How busy the whole machine was inside the window, % of all CPUs (from /proc/stat).
    pub machine_busy: f64,
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

/// The URI of the node (or a proxy in front of it) on `port`.
fn amqp_uri(port: u16) -> String {
    format!("amqp://guest:guest@127.0.0.1:{port}/%2f?heartbeat=30&connection_timeout=10000")
}

/// `f`, given up after `AMQP_STEP`; its error named with `what`.
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

/// A named connection to `port` and one channel on it.
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
pub fn amqp(
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

/// A publisher's or a consumer's connection and its channel.
type Client = (lapin::Connection, lapin::Channel);

/// The measured part of one slot: clients connected first, then publishing and consuming until
/// the window ends.
async fn amqp_load(
    port: u16,
    queue: &str,
    size: usize,
    warmup: Duration,
    secs: Duration,
    proxy_pids: Option<&[i32]>,
) -> Res<Amqp> {
    let counters = Arc::new(AmqpCounters::default());
    let stop = Arc::new(AtomicBool::new(false));
    // Every connection is up before the clock starts: the window measures traffic, not setup.
    let (publishers, consumers) = amqp_clients(port).await?;
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
    tokio::time::sleep_until(window.from.into()).await;
    let start = Snapshot::take(&counters, proxy_pids);
    tokio::time::sleep_until(window.to.into()).await;
    let end = Snapshot::take(&counters, proxy_pids);
    let mut errors = Vec::new();
    join_clients("publisher", publishers, &mut errors).await;
    stop.store(true, Ordering::Relaxed);
    join_clients("consumer", consumers, &mut errors).await;
    if !errors.is_empty() {
        return Err(errors.join("; "));
    }
    measured(&counters, &start, &end)
}

/// `AMQP_PUBLISHERS` publishers on confirm channels and `AMQP_CONSUMERS` consumers, each its
/// own connection through `port`.
async fn amqp_clients(port: u16) -> Res<(Vec<Client>, Vec<Client>)> {
    use lapin::options::ConfirmSelectOptions;
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
    Ok((publishers, consumers))
}

/// Wait for every client task, collecting what went wrong as "`what`: error".
async fn join_clients(
    what: &str,
    tasks: Vec<tokio::task::JoinHandle<Res<()>>>,
    errors: &mut Vec<String>,
) {
    for task in tasks {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(format!("{what}: {e}")),
            Err(e) => errors.push(format!("{what} task: {e}")),
        }
    }
}

/// The counters, the proxy's CPU and the machine's jiffies at one edge of the window.
struct Snapshot {
    at: Instant,
    delivered: u64,
    confirmed: u64,
    proxy_cpu: Option<f64>,
    machine: (u64, u64),
}

impl Snapshot {
    fn take(c: &AmqpCounters, proxy_pids: Option<&[i32]>) -> Snapshot {
        Snapshot {
            at: Instant::now(),
            delivered: c.delivered.load(Ordering::Relaxed),
            confirmed: c.confirmed.load(Ordering::Relaxed),
            proxy_cpu: proxy_pids.map(cpu_seconds),
            machine: machine_jiffies(),
        }
    }
}

/// Rates, confirm latency and CPU between the window's two snapshots.
fn measured(counters: &AmqpCounters, start: &Snapshot, end: &Snapshot) -> Res<Amqp> {
    let mut lat = std::mem::take(&mut *counters.latencies.lock().expect("latencies"));
    if lat.is_empty() {
        return Err("no confirm inside the measured window".into());
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| nearest_rank(&lat, p) / 1e3;
    let elapsed = (end.at - start.at).as_secs_f64();
    let (d0, d1) = (start.delivered, end.delivered);
    let (m0, m1) = (start.machine, end.machine);
    Ok(Amqp {
        delivered: (d1 - d0) as f64 / elapsed,
        confirmed: (end.confirmed - start.confirmed) as f64 / elapsed,
        confirm_ms: [pct(0.50), pct(0.99)],
        samples: lat.len(),
        failed: counters.failed.load(Ordering::Relaxed),
        proxy_cpu_us: match (start.proxy_cpu, end.proxy_cpu) {
            (Some(a), Some(b)) if d1 > d0 => Some((b - a) * 1e6 / (d1 - d0) as f64),
            _ => None,
        },
        machine_busy: 100.0 * (m1.0 - m0.0) as f64 / (m1.1 - m0.1).max(1) as f64,
    })
}
