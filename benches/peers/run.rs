//! The run: rounds, and in each round every workload's slots through every target in turn
//! (direct, warren, HAProxy, NGINX; no direct for TLS), so that the ratios compare slots run
//! moments apart. Records into [`Results`] and hands them to the report; measures nothing
//! itself.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::amqp::{amqp, Amqp, RabbitNode, AMQP_SIZES};
use crate::cli::Opts;
use crate::peers::{
    start_echo, start_iperf_server, start_proxy, start_storm_proxy, start_tls_proxy, warren_pipes,
    Ports, Running, NGINX_STREAM_MODULE,
};
use crate::procs::{cpu_seconds, which, Proc, Workdir};
use crate::report::{bulk_key, machine_info, render, size_label, write_report};
use crate::stats::Results;
use crate::storm::{spread_pct, storm, Storm, StormBackends, STORM_BACKENDS};
use crate::tls::{client_config, handshakes, TlsFiles, BULK_STREAMS, HANDSHAKE_CLIENTS};
use crate::workloads::{churn, idle, iperf, latency, CHURN_CLIENTS, SIZES};
use crate::{check_interrupted, Balancer, Res, PROXIES, TARGETS};

/// What every round shares: the options, the scratch directory and the backends that live for
/// the whole run.
struct Shared<'a> {
    opts: &'a Opts,
    dir: &'a Path,
    echo_port: u16,
    rabbit: Option<&'a RabbitNode>,
    /// The AMQP clients' runtime, when the node runs.
    amqp_rt: Option<&'a tokio::runtime::Runtime>,
    /// The certificate of the tls workload, when it runs.
    tls: Option<&'a TlsFiles>,
}

impl Shared<'_> {
    fn has(&self, workload: &str) -> bool {
        self.opts.workloads.iter().any(|x| x == workload)
    }
}

/// One round's targets: the proxies started for it, and the backends direct goes to.
struct Targets {
    round: usize,
    backends: Ports,
    proxies: Vec<(Balancer, Running)>,
}

impl Targets {
    /// Where `t` accepts traffic: its proxy's ports, or the backends' for direct.
    fn ports_of(&self, t: Balancer) -> Ports {
        self.proxies
            .iter()
            .find(|(p, _)| *p == t)
            .map(|(_, r)| r.ports)
            .unwrap_or(self.backends)
    }

    /// The processes of a proxy target, whose CPU is measured; `None` for direct.
    fn pids_of(&self, t: Balancer) -> Option<Vec<i32>> {
        self.proxies
            .iter()
            .find(|(p, _)| *p == t)
            .map(|(_, r)| r.proc_.pids())
    }
}

pub fn run(opts: &Opts) -> Res<()> {
    let started = Instant::now();
    check_tools(opts)?;
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
    let tls_files = if has("tls") {
        Some(TlsFiles::generate(&dir.0)?)
    } else {
        None
    };
    eprintln!(
        "peers: {} rounds, {} workers, workloads {:?}, temp dir {}",
        opts.rounds,
        opts.workers,
        opts.workloads,
        dir.0.display()
    );
    let shared = Shared {
        opts,
        dir: &dir.0,
        echo_port,
        rabbit: rabbit.as_ref(),
        amqp_rt: amqp_rt.as_ref(),
        tls: tls_files.as_ref(),
    };
    for round in 0..opts.rounds {
        check_interrupted()?;
        eprintln!(
            "== round {}/{} ({:.0} s so far)",
            round + 1,
            opts.rounds,
            started.elapsed().as_secs_f64()
        );
        echo.ensure_running()?;
        one_round(&shared, round, &mut res)?;
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

/// Everything a run needs is installed, before any workload starts.
fn check_tools(opts: &Opts) -> Res<()> {
    if !opts.warren.exists() {
        return Err(format!(
            "{} missing: cargo build --release first",
            opts.warren.display()
        ));
    }
    for tool in ["haproxy", "nginx", "iperf3", "setpriv"] {
        which(tool)?;
    }
    // The tls workload's certificate; the others run without openssl.
    if opts.workloads.iter().any(|w| w == "tls") {
        which("openssl")?;
    }
    if !Path::new(NGINX_STREAM_MODULE).exists() {
        return Err(format!(
            "{NGINX_STREAM_MODULE} missing: apt-get install libnginx-mod-stream"
        ));
    }
    Ok(())
}

/// One round: fresh proxies and iperf3 server, every chosen workload's slots, then the idle
/// and storm slots each with a proxy of their own.
fn one_round(shared: &Shared, round: usize, res: &mut Results) -> Res<()> {
    let opts = shared.opts;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    res.loads
        .push(load.split_whitespace().next().unwrap_or("?").to_string());
    let (mut iperf_srv, iperf_port) = start_iperf_server(shared.dir, &format!("r{round}"))?;
    let backends = Ports {
        echo: shared.echo_port,
        bulk: iperf_port,
        amqp: shared.rabbit.map(|r| r.amqp),
    };
    let mut targets = Targets {
        round,
        backends,
        proxies: Vec::new(),
    };
    if shared.has("bulk") || shared.has("churn") || shared.has("latency") || shared.has("amqp") {
        for t in PROXIES {
            targets.proxies.push((
                t,
                start_proxy(t, opts, shared.dir, backends, &format!("r{round}"))?,
            ));
        }
    }
    if shared.has("bulk") {
        bulk_slots(opts, &targets, res, &mut iperf_srv)?;
    }
    if shared.has("churn") {
        churn_slots(opts, &targets, res)?;
    }
    if shared.has("latency") {
        latency_slots(opts, &targets, res)?;
    }
    if let (Some(node), Some(rt)) = (shared.rabbit, shared.amqp_rt) {
        amqp_slots(opts, &targets, res, node, rt)?;
    }
    for (_, r) in &mut targets.proxies {
        r.proc_.ensure_running()?;
    }
    drop(targets);
    drop(iperf_srv);

    if shared.has("idle") {
        idle_slots(opts, shared.dir, backends, round, res)?;
    }
    if shared.has("storm") {
        storm_slots(opts, shared.dir, round, res)?;
    }
    if let Some(files) = shared.tls {
        tls_slots(shared, files, round, res)?;
    }
    Ok(())
}

/// iperf3 forward and reverse, 1 and 4 streams, through every target; then warren's pipes.
fn bulk_slots(opts: &Opts, targets: &Targets, res: &mut Results, iperf_srv: &mut Proc) -> Res<()> {
    let round = targets.round;
    for streams in [1usize, 4] {
        for reverse in [false, true] {
            let key = bulk_key(streams, reverse);
            for t in TARGETS {
                check_interrupted()?;
                let pids = targets.pids_of(t);
                let cpu0 = pids.as_deref().map(cpu_seconds);
                match iperf(targets.ports_of(t).bulk, opts.bulk_secs, streams, reverse) {
                    Ok(b) => {
                        res.put(&format!("{key} gbps"), t, round, b.gbps);
                        if let (Some(p), Some(c0)) = (&pids, cpu0) {
                            let cpu = cpu_seconds(p) - c0;
                            res.put(&format!("{key} cpu"), t, round, cpu / (b.bytes / 1e9));
                        }
                        eprintln!("   bulk {key:<14} {:<8} {:7.2} Gbit/s", t.name(), b.gbps);
                    }
                    Err(e) => {
                        let note = format!("round {} bulk {key} {}: {e}", round + 1, t.name());
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
    if let Some((_, w)) = targets.proxies.iter().find(|(p, _)| *p == Balancer::Warren) {
        if let Some(a) = w.admin {
            std::thread::sleep(Duration::from_millis(200));
            res.put(
                "pipes after bulk",
                Balancer::Warren,
                round,
                warren_pipes(a)?,
            );
        }
    }
    Ok(())
}

/// Connection churn with 1 and 8 clients through every target.
fn churn_slots(opts: &Opts, targets: &Targets, res: &mut Results) -> Res<()> {
    let round = targets.round;
    for clients in CHURN_CLIENTS {
        for t in TARGETS {
            check_interrupted()?;
            let pids = targets.pids_of(t);
            let cpu0 = pids.as_deref().map(cpu_seconds);
            let (rate, errors, done) = churn(targets.ports_of(t).echo, clients, opts.churn_secs);
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
    Ok(())
}

/// Ping-pong latency at every message size through every target.
fn latency_slots(opts: &Opts, targets: &Targets, res: &mut Results) -> Res<()> {
    let round = targets.round;
    for size in SIZES {
        for t in TARGETS {
            check_interrupted()?;
            match latency(targets.ports_of(t).echo, size, opts.latency_secs) {
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
    Ok(())
}

/// The AMQP workload at every message size through every target.
fn amqp_slots(
    opts: &Opts,
    targets: &Targets,
    res: &mut Results,
    node: &RabbitNode,
    rt: &tokio::runtime::Runtime,
) -> Res<()> {
    let round = targets.round;
    for size in AMQP_SIZES {
        for t in TARGETS {
            check_interrupted()?;
            let port = targets
                .ports_of(t)
                .amqp
                .ok_or("no AMQP listener: the node is not running")?;
            let queue = format!("peers-r{round}-{}-{size}", t.name());
            let pids = targets.pids_of(t);
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
                Ok(a) => record_amqp(res, t, round, size, &a),
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
    Ok(())
}

/// Record one AMQP slot's measures, print them, and note nacked publishes.
fn record_amqp(res: &mut Results, t: Balancer, round: usize, size: usize, a: &Amqp) {
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

/// 5,000 idle connections through each proxy, freshly started for its slot.
fn idle_slots(
    opts: &Opts,
    dir: &Path,
    backends: Ports,
    round: usize,
    res: &mut Results,
) -> Res<()> {
    for t in PROXIES {
        check_interrupted()?;
        // Without the AMQP listener: the idle baseline stays what it was before amqp.
        let idle_backends = Ports {
            amqp: None,
            ..backends
        };
        let mut r = start_proxy(t, opts, dir, idle_backends, &format!("r{round}-idle"))?;
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
    Ok(())
}

/// The reconnect storm through every target, each slot with fresh backends and (but for
/// direct) a freshly started proxy balancing them by least connections.
fn storm_slots(opts: &Opts, dir: &Path, round: usize, res: &mut Results) -> Res<()> {
    let clients_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.workers)
        .enable_all()
        .build()
        .map_err(|e| format!("storm client runtime: {e}"))?;
    for t in TARGETS {
        check_interrupted()?;
        let backends = StormBackends::start(STORM_BACKENDS, opts.workers)?;
        let proxy = match t {
            Balancer::Direct => None,
            _ => Some(start_storm_proxy(
                t,
                opts,
                dir,
                &backends.ports,
                &format!("r{round}-storm"),
            )?),
        };
        // Direct: the clients spread themselves over the backends, one after the other.
        let ports = match &proxy {
            Some((_, port)) => vec![*port],
            None => backends.ports.clone(),
        };
        match storm(&clients_rt, &backends, &ports, opts.storm_clients) {
            Ok(s) => record_storm(res, t, round, &s),
            Err(e) => {
                let note = format!("round {} storm {}: {e}", round + 1, t.name());
                eprintln!("   {note}");
                res.notes.push(note);
            }
        }
        if let Some((mut p, _)) = proxy {
            p.ensure_running()?;
        }
    }
    Ok(())
}

/// Record one storm slot's measures, print them, and note failed tries.
fn record_storm(res: &mut Results, t: Balancer, round: usize, s: &Storm) {
    res.put("storm connect ms", t, round, s.connect_ms);
    res.put("storm ms", t, round, s.reconnect_ms);
    res.put("storm closed ms", t, round, s.closed_ms);
    res.put("storm errors", t, round, s.errors as f64);
    // Direct's spread is the clients' own round robin: nothing to compare.
    if t != Balancer::Direct {
        res.put("storm spread", t, round, s.spread_pct());
        res.put(
            "storm spread before",
            t,
            round,
            spread_pct(&s.counts_before),
        );
    }
    eprintln!(
        "   storm {:<8} first connect {:5.1} ms; all {} saw the close in {:6.1} ms, reconnected in {:6.1} ms, per backend {:?} (before {:?}, \
         backends hold {:?}), {:.1} % off even, {} failed tries",
        t.name(),
        s.connect_ms,
        s.counts.iter().sum::<usize>(),
        s.closed_ms,
        s.reconnect_ms,
        s.counts,
        s.counts_before,
        s.held_after,
        s.spread_pct(),
        s.errors
    );
    if s.errors > 0 {
        res.notes.push(format!(
            "round {} storm {}: {} failed connection tries",
            round + 1,
            t.name(),
            s.errors
        ));
    }
    if s.held_after != s.counts {
        res.notes.push(format!(
            "round {} storm {}: clients counted {:?} per backend, the backends hold {:?}",
            round + 1,
            t.name(),
            s.counts,
            s.held_after
        ));
    }
}

/// TLS termination through each proxy (direct has no TLS), all three freshly started with the
/// run's certificate in front of the echo server: full handshakes per second, then echoed bulk
/// through 1 and 4 TLS connections, each with the proxy's CPU.
fn tls_slots(shared: &Shared, files: &TlsFiles, round: usize, res: &mut Results) -> Res<()> {
    let opts = shared.opts;
    let config = client_config(&files.ca)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.workers)
        .enable_all()
        .build()
        .map_err(|e| format!("TLS client runtime: {e}"))?;
    let mut proxies = Vec::new();
    for t in PROXIES {
        let tag = format!("r{round}-tls");
        proxies.push((
            t,
            start_tls_proxy(t, opts, shared.dir, shared.echo_port, files, &tag)?,
        ));
    }
    for (t, (proc_, port)) in &proxies {
        check_interrupted()?;
        let pids = proc_.pids();
        let cpu0 = cpu_seconds(&pids);
        let h = handshakes(&rt, &config, *port, HANDSHAKE_CLIENTS, opts.churn_secs);
        let cpu = cpu_seconds(&pids) - cpu0;
        res.put("tls hs", *t, round, h.rate);
        if h.done > 0 {
            res.put("tls hs cpu", *t, round, cpu * 1e6 / h.done as f64);
        }
        eprintln!(
            "   tls handshakes c{HANDSHAKE_CLIENTS} {:<8} {:7.0} /s, {:6.0} µs proxy CPU each ({} errors)",
            t.name(),
            h.rate,
            cpu * 1e6 / h.done.max(1) as f64,
            h.errors
        );
        if h.errors > 0 {
            res.notes.push(format!(
                "round {} tls handshakes {}: {} failed, the first: {}",
                round + 1,
                t.name(),
                h.errors,
                h.first_error.as_deref().unwrap_or("?")
            ));
        }
        // Let TIME_WAIT and the proxies' close work settle before the next slot.
        std::thread::sleep(Duration::from_millis(300));
    }
    for streams in BULK_STREAMS {
        for (t, (proc_, port)) in &proxies {
            check_interrupted()?;
            tls_bulk_slot(opts, &rt, &config, (*t, proc_, *port), streams, round, res);
        }
    }
    for (_, (proc_, _)) in &mut proxies {
        proc_.ensure_running()?;
    }
    Ok(())
}

/// One TLS bulk slot through `target` (the proxy, its process and its TLS port): Gbit/s echoed
/// and the proxy's CPU seconds per GB, or an error note.
fn tls_bulk_slot(
    opts: &Opts,
    rt: &tokio::runtime::Runtime,
    config: &Arc<rustls::ClientConfig>,
    target: (Balancer, &Proc, u16),
    streams: usize,
    round: usize,
    res: &mut Results,
) {
    let (t, proc_, port) = target;
    let pids = proc_.pids();
    let cpu0 = cpu_seconds(&pids);
    match crate::tls::bulk(rt, config, port, streams, opts.bulk_secs as f64) {
        Ok(b) => {
            let cpu = cpu_seconds(&pids) - cpu0;
            res.put(&format!("tls bulk P{streams} gbps"), t, round, b.gbps);
            res.put(
                &format!("tls bulk P{streams} cpu"),
                t,
                round,
                cpu / (b.bytes / 1e9),
            );
            eprintln!(
                "   tls bulk P{streams} {:<8} {:7.2} Gbit/s echoed, {:.2} s proxy CPU/GB",
                t.name(),
                b.gbps,
                cpu / (b.bytes / 1e9)
            );
        }
        Err(e) => {
            let note = format!("round {} tls bulk P{streams} {}: {e}", round + 1, t.name());
            eprintln!("   {note}");
            res.notes.push(note);
        }
    }
}
