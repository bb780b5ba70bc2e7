//! The plain-TCP workloads, each a client against one port: bulk (iperf3), churn (connect →
//! 1 byte → echo → close), latency (ping-pong on one connection) and idle (thousands of open
//! connections). Each returns what it measured; recording it is the run's job.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::peers::{warren_pipes, Running};
use crate::procs::{addr, rss_kib, run_bounded, which};
use crate::stats::nearest_rank;
use crate::{check_interrupted, Res};

/// Latency message sizes.
pub const SIZES: [usize; 3] = [64, 1024, 16 * 1024];
/// Concurrent clients of the churn workload.
pub const CHURN_CLIENTS: [usize; 2] = [1, 8];
/// An AMQP heartbeat frame: what an idle AMQP connection sends now and then.
const HEARTBEAT: [u8; 8] = [8, 0, 0, 0, 0, 0, 0, 0xCE];

/// What one iperf3 client measured.
pub struct Bulk {
    pub gbps: f64,
    pub bytes: f64,
}

/// iperf3 through `port` for `secs` with `streams` streams (`reverse`: server → client).
pub fn iperf(port: u16, secs: u64, streams: usize, reverse: bool) -> Res<Bulk> {
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

/// Connect → 1 byte → echo → close by `clients` threads for `secs`: (connections/s, failed
/// connections, completed connections).
pub fn churn(port: u16, clients: usize, secs: f64) -> (f64, u64, u64) {
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
pub fn latency(port: u16, size: usize, secs: f64) -> Res<([f64; 3], usize)> {
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
    let pct = |p: f64| nearest_rank(&samples, p);
    Ok(([pct(0.50), pct(0.99), pct(0.999)], samples.len()))
}

/// What one idle slot measured.
pub struct Idle {
    pub rss_per_conn: f64,
    pub alive: usize,
    pub pipes: Option<f64>,
    pub baseline_kib: u64,
    pub loaded_kib: u64,
}

/// Hold `n` connections through a freshly started proxy; each exchanges one heartbeat (so its
/// backend leg exists) and then idles.
pub fn idle(running: &mut Running, n: usize) -> Res<Idle> {
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
