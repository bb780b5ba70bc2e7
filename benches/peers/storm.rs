//! The reconnect storm (issue 17): N clients hold connections through a target to a pool of
//! [`STORM_BACKENDS`] backends that the proxy balances by least connections; then the backends
//! close every connection at once, as a cluster restart does, and every client reconnects at
//! once through the same target. Measures how long until all N reach a backend again and how
//! evenly they landed.
//!
//! Owns the storm's backends (loopback servers in this process, on a runtime of their own, that
//! name themselves with one byte on every connection and close all they hold on command) and
//! the clients (tasks on a runtime the run passes in). Starting the proxies and recording the
//! results is the run's job. Every phase is bounded by [`STORM_DEADLINE`] and every client's
//! retries by [`MAX_TRIES`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::watch;
use tokio::time::{sleep, timeout_at, Instant};

use crate::procs::addr;
use crate::Res;

/// Backends in the storm's pool: a RabbitMQ cluster's usual three nodes.
pub const STORM_BACKENDS: usize = 3;
/// How long the connect phase, and then the storm, may take before the slot is an error.
pub const STORM_DEADLINE: Duration = Duration::from_secs(30);
/// Connection tries per client and phase before it gives up.
const MAX_TRIES: u32 = 20;
/// The pause after a failed try, so a refusing target is not spun against.
const RETRY_PAUSE: Duration = Duration::from_millis(5);

/// The storm's backends: each listens on its own loopback port, writes its index (one byte) to
/// every connection it accepts, and holds it until the client goes or [`Self::close_all`].
pub struct StormBackends {
    /// Their own runtime, so the backends do not share a scheduler with the clients; dropping
    /// it (with the backends, at the end of the slot) closes every listener and connection.
    _rt: Runtime,
    pub ports: Vec<u16>,
    /// Bumped by [`Self::close_all`]; a connection closes when it sees a newer value than the
    /// one current at its accept.
    close: watch::Sender<u64>,
    /// Connections each backend holds open.
    held: Vec<Arc<AtomicUsize>>,
}

impl StormBackends {
    /// `count` backends on `threads` worker threads.
    pub fn start(count: usize, threads: usize) -> Res<StormBackends> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .enable_all()
            .build()
            .map_err(|e| format!("storm backend runtime: {e}"))?;
        let (close, _) = watch::channel(0u64);
        let mut ports = Vec::with_capacity(count);
        let mut held = Vec::with_capacity(count);
        for id in 0..count {
            let listener = rt
                .block_on(TcpListener::bind(addr(0)))
                .map_err(|e| format!("storm backend bind: {e}"))?;
            ports.push(listener.local_addr().map_err(|e| e.to_string())?.port());
            let h = Arc::new(AtomicUsize::new(0));
            held.push(h.clone());
            rt.spawn(serve(listener, id as u8, close.subscribe(), h));
        }
        Ok(StormBackends {
            _rt: rt,
            ports,
            close,
            held,
        })
    }

    /// Close every connection the backends hold now; later ones stay open.
    pub fn close_all(&self) {
        self.close.send_modify(|epoch| *epoch += 1);
    }

    /// Connections each backend holds open.
    pub fn held(&self) -> Vec<usize> {
        self.held.iter().map(|h| h.load(Ordering::SeqCst)).collect()
    }
}

/// One backend's accept loop, for as long as its runtime lives.
async fn serve(
    listener: TcpListener,
    id: u8,
    mut close: watch::Receiver<u64>,
    held: Arc<AtomicUsize>,
) {
    loop {
        let mut s = match listener.accept().await {
            Ok((s, _)) => s,
            Err(_) => {
                sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // Only a close ordered after this accept closes this connection.
        close.borrow_and_update();
        let mut close = close.clone();
        let held = held.clone();
        held.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            if s.write_all(&[id]).await.is_ok() {
                tokio::select! {
                    _ = close.changed() => {}
                    _ = until_eof(&mut s) => {}
                }
            }
            held.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Read and drop whatever comes until the peer closes (or the connection fails).
async fn until_eof(s: &mut TcpStream) {
    let mut buf = [0u8; 64];
    while let Ok(n) = s.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

/// What one storm measured.
pub struct Storm {
    /// The first connect of all N at once, from nothing: until the last client read its byte.
    pub connect_ms: f64,
    /// From the close command until the last client read its new backend's byte.
    pub reconnect_ms: f64,
    /// From the close command until the last client saw its connection end.
    pub closed_ms: f64,
    /// Clients per backend after the storm, by the byte each read.
    pub counts: Vec<usize>,
    /// The same before the storm.
    pub counts_before: Vec<usize>,
    /// Connections each backend held after the storm, by its own count: more than `counts`
    /// when a proxy opened backend connections its clients never saw.
    pub held_after: Vec<usize>,
    /// Failed connection tries, both phases.
    pub errors: u64,
}

impl Storm {
    /// The largest distance of a backend's count from an even share, % of that share.
    pub fn spread_pct(&self) -> f64 {
        spread_pct(&self.counts)
    }
}

/// The largest distance of a count from the even share, % of that share (0 of nothing).
pub fn spread_pct(counts: &[usize]) -> f64 {
    let total: usize = counts.iter().sum();
    if total == 0 || counts.is_empty() {
        return 0.0;
    }
    let even = total as f64 / counts.len() as f64;
    counts
        .iter()
        .map(|&c| (c as f64 - even).abs() / even * 100.0)
        .fold(0.0, f64::max)
}

/// `clients` clients, client i through `ports[i % ports.len()]` (one port for a proxy, every
/// backend's for direct): all connect, then the backends close them all and each reconnects
/// through the same port the moment it sees its connection end.
pub fn storm(rt: &Runtime, backends: &StormBackends, ports: &[u16], clients: usize) -> Res<Storm> {
    let port_of = |i: usize| ports[i % ports.len()];
    rt.block_on(async {
        let first = Instant::now();
        let deadline = first + STORM_DEADLINE;
        let tasks: Vec<_> = (0..clients)
            .map(|i| tokio::spawn(reach_retrying(port_of(i), deadline)))
            .collect();
        let (held, mut errors, _) = gather(tasks, clients, "connected").await?;
        let counts_before = count_by_backend(held.iter().map(|r| r.backend), backends);
        let connected = held.iter().map(|r| r.at).max().unwrap_or(first);
        let deadline = Instant::now() + STORM_DEADLINE;
        let tasks: Vec<_> = held
            .into_iter()
            .enumerate()
            .map(|(i, r)| tokio::spawn(reconnect(r.stream, port_of(i), deadline)))
            .collect();
        let start = Instant::now();
        backends.close_all();
        let (again, e, closed) = gather(tasks, clients, "reconnected").await?;
        errors += e;
        let last = again.iter().map(|r| r.at).max().unwrap_or(start);
        let ms = |t: Instant| t.saturating_duration_since(start).as_secs_f64() * 1e3;
        Ok(Storm {
            connect_ms: connected.saturating_duration_since(first).as_secs_f64() * 1e3,
            reconnect_ms: ms(last),
            closed_ms: ms(closed.unwrap_or(start)),
            counts: count_by_backend(again.iter().map(|r| r.backend), backends),
            counts_before,
            held_after: backends.held(),
            errors,
        })
    })
}

/// A client's connection, the backend it reached and when.
struct Reached {
    stream: TcpStream,
    backend: u8,
    at: Instant,
}

/// A client's phase: where it got to (nothing by the deadline), its failed tries, and (in the
/// storm) when it saw its previous connection end.
#[derive(Default)]
struct Outcome {
    reached: Option<Reached>,
    failed: u32,
    closed_at: Option<Instant>,
}

/// Every client's outcome of a phase: the connections, the failed tries and the last close
/// seen; an error naming how many of `clients` got `what` when some did not by the deadline.
async fn gather(
    tasks: Vec<tokio::task::JoinHandle<Outcome>>,
    clients: usize,
    what: &str,
) -> Res<(Vec<Reached>, u64, Option<Instant>)> {
    let mut reached = Vec::with_capacity(tasks.len());
    let mut errors = 0u64;
    let mut last_close = None;
    for t in tasks {
        let o = t.await.map_err(|e| format!("storm client: {e}"))?;
        errors += u64::from(o.failed);
        reached.extend(o.reached);
        last_close = last_close.max(o.closed_at);
    }
    if reached.len() < clients {
        return Err(format!(
            "only {} of {clients} clients {what} within {} s ({errors} failed tries)",
            reached.len(),
            STORM_DEADLINE.as_secs()
        ));
    }
    Ok((reached, errors, last_close))
}

/// Clients per backend, from the bytes they read.
fn count_by_backend(ids: impl Iterator<Item = u8>, backends: &StormBackends) -> Vec<usize> {
    let mut counts = vec![0; backends.ports.len()];
    for id in ids {
        if let Some(c) = counts.get_mut(usize::from(id)) {
            *c += 1;
        }
    }
    counts
}

/// Wait until the backend's close reaches the client through `s`, then reconnect at once.
async fn reconnect(mut s: TcpStream, port: u16, deadline: Instant) -> Outcome {
    if timeout_at(deadline, until_eof(&mut s)).await.is_err() {
        return Outcome::default();
    }
    let closed_at = Some(Instant::now());
    drop(s);
    Outcome {
        closed_at,
        ..reach_retrying(port, deadline).await
    }
}

/// Connect through `port` until a backend's byte arrives, at most [`MAX_TRIES`] times.
async fn reach_retrying(port: u16, deadline: Instant) -> Outcome {
    let mut failed = 0;
    while failed < MAX_TRIES && Instant::now() < deadline {
        match reach(port, deadline).await {
            Ok((stream, backend)) => {
                let at = Instant::now();
                return Outcome {
                    reached: Some(Reached {
                        stream,
                        backend,
                        at,
                    }),
                    failed,
                    closed_at: None,
                };
            }
            Err(_) => {
                failed += 1;
                sleep(RETRY_PAUSE).await;
            }
        }
    }
    Outcome {
        failed,
        ..Outcome::default()
    }
}

/// One try: connect, and read the byte that names the backend the connection reached.
async fn reach(port: u16, deadline: Instant) -> std::io::Result<(TcpStream, u8)> {
    let timed_out = |_| std::io::Error::from(std::io::ErrorKind::TimedOut);
    let mut s = timeout_at(deadline, TcpStream::connect(addr(port)))
        .await
        .map_err(timed_out)??;
    let mut id = [0u8; 1];
    timeout_at(deadline, s.read_exact(&mut id))
        .await
        .map_err(timed_out)??;
    Ok((s, id[0]))
}
