//! The report: the Markdown section of BENCHMARKS.md between the `peers:results` markers (the
//! machine, the settings, one table per workload, the targets and the errors), and how it is
//! written into the file. Reads [`Results`]; runs nothing but the version commands of
//! `machine_info`.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::amqp::{AMQP_CONSUMERS, AMQP_PREFETCH, AMQP_PUBLISHERS, AMQP_SIZES, AMQP_WINDOW};
use crate::cli::Opts;
use crate::stats::{cells, median, opt_num, verdict, Results};
use crate::storm::{STORM_BACKENDS, STORM_DEADLINE};
use crate::tls::{BULK_STREAMS, CIPHER_OPENSSL, HANDSHAKE_CLIENTS};
use crate::workloads::{CHURN_CLIENTS, SIZES};
use crate::Balancer::*;
use crate::{Res, PROXIES, TARGETS};

// The markers and the fallback text below still name benches/peers.rs, the harness's old single
// file: the markers are matched in BENCHMARKS.md as it stands, and the report must not change.
const RESULTS_BEGIN: &str =
    "<!-- peers:results:begin (written by benches/peers.rs; edit outside) -->";
const RESULTS_END: &str = "<!-- peers:results:end -->";

/// The targets table's rows: (what, value, verdict).
type Verdicts = Vec<(String, String, &'static str)>;

/// The report section for this run.
pub fn render(
    opts: &Opts,
    res: &Results,
    machine: &[(String, String)],
    load_before: &str,
    load_after: &str,
    took: Duration,
) -> String {
    let mut o = String::new();
    let w = &mut o;
    header(w, opts, res, machine, load_before, load_after, took);
    let mut targets = Verdicts::new();
    bulk(w, res, &mut targets);
    churn(w, res, &mut targets);
    latency(w, res, &mut targets);
    amqp(w, res, &mut targets);
    idle(w, opts, res, &mut targets);
    storm(w, opts, res);
    tls(w, res);
    verdicts(w, res, &targets);
    o
}

/// The machine table, the run's settings and load, and how to read the cells.
fn header(
    w: &mut String,
    opts: &Opts,
    res: &Results,
    machine: &[(String, String)],
    load_before: &str,
    load_after: &str,
    took: Duration,
) {
    writeln!(w, "| | |\n|---|---|").unwrap();
    for (k, v) in machine {
        writeln!(w, "| {k} | {v} |").unwrap();
    }
    writeln!(
        w,
        "| settings | {} rounds{}, {} worker threads/processes per proxy, bulk {} s per slot, churn {} s, latency {} s, amqp {} s warm-up + {} s, idle {} connections, storm {} clients; workloads {} |",
        opts.rounds,
        if opts.quick { " (`--quick`)" } else { "" },
        opts.workers,
        opts.bulk_secs,
        opts.churn_secs,
        opts.latency_secs,
        opts.amqp_warmup.as_secs_f64(),
        opts.amqp_secs.as_secs_f64(),
        opts.idle_connections,
        opts.storm_clients,
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
}

/// Bulk throughput and proxy CPU per GB, when the bulk workload ran.
fn bulk(w: &mut String, res: &Results, targets: &mut Verdicts) {
    let bulk_keys: Vec<String> = [1usize, 4]
        .iter()
        .flat_map(|&s| [false, true].map(|r| bulk_key(s, r)))
        .collect();
    if !bulk_keys
        .iter()
        .any(|k| !res.values(&format!("{k} gbps"), Direct).is_empty())
    {
        return;
    }
    bulk_throughput(w, res, &bulk_keys, targets);
    bulk_cpu(w, res, &bulk_keys, targets);
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

/// The bulk throughput table, Gbit/s, with its two ratio targets.
fn bulk_throughput(w: &mut String, res: &Results, bulk_keys: &[String], targets: &mut Verdicts) {
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
    for k in bulk_keys {
        let key = format!("{k} gbps");
        let rh = res.ratio(&key, Haproxy);
        let rn = res.ratio(&key, Nginx);
        writeln!(
            w,
            "| {k} | {} | {} {} | {} {} |",
            cells(res, &key, &TARGETS),
            opt_num(rh),
            verdict(rh.map(|r| r >= 1.15)),
            opt_num(rn),
            verdict(rn.map(|r| r >= 1.8)),
        )
        .unwrap();
        targets.push((
            format!("{k} throughput ≥ 1.15 × HAProxy"),
            opt_num(rh),
            verdict(rh.map(|r| r >= 1.15)),
        ));
        targets.push((
            format!("{k} throughput ≥ 1.8 × NGINX"),
            opt_num(rn),
            verdict(rn.map(|r| r >= 1.8)),
        ));
    }
}

/// The bulk table of proxy CPU seconds per GB moved, with its two ratio targets.
fn bulk_cpu(w: &mut String, res: &Results, bulk_keys: &[String], targets: &mut Verdicts) {
    writeln!(
        w,
        "\n### Bulk: proxy CPU seconds per GB moved (utime+stime of all its processes/threads)\n"
    )
    .unwrap();
    writeln!(
        w,
        "| workload | warren | HAProxy | NGINX | w/h (≤ 1.0) | w/n (≤ 0.4) |"
    )
    .unwrap();
    writeln!(w, "|---|---|---|---|---|---|").unwrap();
    for k in bulk_keys {
        let key = format!("{k} cpu");
        let rh = res.ratio(&key, Haproxy);
        let rn = res.ratio(&key, Nginx);
        writeln!(
            w,
            "| {k} | {} | {} {} | {} {} |",
            cells(res, &key, &PROXIES),
            opt_num(rh),
            verdict(rh.map(|r| r <= 1.0)),
            opt_num(rn),
            verdict(rn.map(|r| r <= 0.4)),
        )
        .unwrap();
        targets.push((
            format!("{k} CPU/GB ≤ HAProxy"),
            opt_num(rh),
            verdict(rh.map(|r| r <= 1.0)),
        ));
        targets.push((
            format!("{k} CPU/GB ≤ 0.4 × NGINX"),
            opt_num(rn),
            verdict(rn.map(|r| r <= 0.4)),
        ));
    }
}

/// Connection churn rates and proxy CPU per connection, when the churn workload ran.
fn churn(w: &mut String, res: &Results, targets: &mut Verdicts) {
    if res.values("churn c1", Direct).is_empty() {
        return;
    }
    writeln!(
        w,
        "### Connection churn (connect → 1 byte → echo → close), connections/s\n"
    )
    .unwrap();
    writeln!(w, "| clients | direct | warren | HAProxy | NGINX | w/h | w/n | w / best of h,n (≥ 1.2 at 8) |").unwrap();
    writeln!(w, "|---|---|---|---|---|---|---|---|").unwrap();
    for c in CHURN_CLIENTS {
        let key = format!("churn c{c}");
        let rh = res.ratio(&key, Haproxy);
        let rn = res.ratio(&key, Nginx);
        let rb = res.round_median(&key, &[Warren, Haproxy, Nginx], |v| v[0] / v[1].max(v[2]));
        let v = if c == 8 {
            verdict(rb.map(|r| r >= 1.2))
        } else {
            ""
        };
        writeln!(
            w,
            "| {c} | {} | {} | {} | {} {v} |",
            cells(res, &key, &TARGETS),
            opt_num(rh),
            opt_num(rn),
            opt_num(rb),
        )
        .unwrap();
        if c == 8 {
            targets.push((
                "churn, 8 clients ≥ 1.2 × best of HAProxy, NGINX".into(),
                opt_num(rb),
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
        let rh = res.ratio(&key, Haproxy);
        let rn = res.ratio(&key, Nginx);
        writeln!(
            w,
            "| {c} | {} | {} | {} |",
            cells(res, &key, &PROXIES),
            opt_num(rh),
            opt_num(rn),
        )
        .unwrap();
    }
    writeln!(w).unwrap();
}

/// Round trips and what each proxy adds to them, when the latency workload ran.
fn latency(w: &mut String, res: &Results, targets: &mut Verdicts) {
    if res.values("lat 64 p50", Direct).is_empty() {
        return;
    }
    writeln!(
        w,
        "### Latency (ping-pong on one connection), round trip in µs\n"
    )
    .unwrap();
    writeln!(
        w,
        "\"added\" = proxy − direct in the same round. Balancer: warren's added ≤ the smaller of \
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
            writeln!(
                w,
                "| {} | {q} | {} | {} | {} | {} | {} {v} |",
                size_label(size),
                cells(res, &key, &TARGETS),
                opt_num(added(Warren)),
                opt_num(added(Haproxy)),
                opt_num(added(Nginx)),
                opt_num(diff),
            )
            .unwrap();
            if q != "p99.9" {
                targets.push((
                    format!("latency {size} B {q}: added ≤ best peer (µs over)"),
                    opt_num(diff),
                    v,
                ));
            }
        }
    }
    writeln!(w).unwrap();
}

/// AMQP rates, confirm latency and where the CPU goes, when the amqp workload ran.
fn amqp(w: &mut String, res: &Results, targets: &mut Verdicts) {
    if AMQP_SIZES.iter().all(|s| {
        res.values(&format!("amqp {s} delivered"), Direct)
            .is_empty()
    }) {
        return;
    }
    amqp_rates(w, res, targets);
    amqp_confirm_latency(w, res);
    amqp_cpu(w, res);
    writeln!(w).unwrap();
}

/// The AMQP messages/s table, with its delivered-vs-direct targets.
fn amqp_rates(w: &mut String, res: &Results, targets: &mut Verdicts) {
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
            let rd = res.ratio(&key, Direct);
            let rh = res.ratio(&key, Haproxy);
            let rn = res.ratio(&key, Nginx);
            let v = if what == "delivered" {
                verdict(rd.map(|r| r >= 0.97))
            } else {
                ""
            };
            writeln!(
                w,
                "| {} | {what} | {} | {} {v} | {} | {} |",
                size_label(size),
                cells(res, &key, &TARGETS),
                opt_num(rd),
                opt_num(rh),
                opt_num(rn),
            )
            .unwrap();
            if what == "delivered" {
                targets.push((
                    format!("AMQP {} messages/s ≥ 0.97 × direct", size_label(size)),
                    opt_num(rd),
                    v,
                ));
            }
        }
    }
}

/// The AMQP confirm latency table.
fn amqp_confirm_latency(w: &mut String, res: &Results) {
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
                "| {} | {q} | {} |",
                size_label(size),
                cells(res, &key, &TARGETS),
            )
            .unwrap();
        }
    }
}

/// The AMQP table of proxy CPU per message and machine busy %.
fn amqp_cpu(w: &mut String, res: &Results) {
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
        let rh = res.ratio(&key, Haproxy);
        let rn = res.ratio(&key, Nginx);
        writeln!(
            w,
            "| {} | proxy CPU µs/msg | – | {} | {} | {} |",
            size_label(size),
            cells(res, &key, &PROXIES),
            opt_num(rh),
            opt_num(rn),
        )
        .unwrap();
        let key = format!("amqp {size} busy");
        writeln!(
            w,
            "| {} | machine busy % | {} | | |",
            size_label(size),
            cells(res, &key, &TARGETS),
        )
        .unwrap();
    }
}

/// Idle RSS per connection, survivors and pipes held, when the idle workload ran.
fn idle(w: &mut String, opts: &Opts, res: &Results, targets: &mut Verdicts) {
    if res.values("idle rss", Warren).is_empty() {
        return;
    }
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
        "| RSS per connection, bytes | {} |",
        cells(res, "idle rss", &PROXIES),
    )
    .unwrap();
    writeln!(w, "| alive | {} |", cells(res, "idle alive", &PROXIES),).unwrap();
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

/// Reconnect time and how evenly the clients landed, when the storm workload ran.
fn storm(w: &mut String, opts: &Opts, res: &Results) {
    if res.values("storm ms", Direct).is_empty() && res.values("storm ms", Warren).is_empty() {
        return;
    }
    writeln!(
        w,
        "### Reconnect storm: {} clients, a pool of {STORM_BACKENDS} backends by least connections\n",
        opts.storm_clients
    )
    .unwrap();
    writeln!(
        w,
        "Every client holds a connection through the target; the backends close them all at \
         once and every client reconnects at once. \"first connect of all\" = the N clients \
         connecting at once to a fresh target, until the last has read its backend's byte; \
         \"all saw the close\" = from the backends' \
         close until the last client's read ended; \"all reconnected\" = from the close until \
         the last client has read the byte of the backend it reached again (a slot over {} s is \
         an error). \"off even\" = the largest distance of a backend's client count from an \
         even share, % of that share, before the storm (the clients connected concurrently) \
         and after it; direct spreads its clients itself. \"failed tries\" = connects that \
         failed or ended before the backend's byte, retried.\n",
        STORM_DEADLINE.as_secs()
    )
    .unwrap();
    writeln!(w, "| | direct | warren | HAProxy | NGINX | w/h | w/n |").unwrap();
    writeln!(w, "|---|---|---|---|---|---|---|").unwrap();
    let rows = [
        ("first connect of all, ms", "storm connect ms", true),
        ("all saw the close, ms", "storm closed ms", true),
        ("all reconnected, ms", "storm ms", true),
        ("off even after the storm, %", "storm spread", false),
        ("off even before the storm, %", "storm spread before", false),
        ("failed tries", "storm errors", false),
    ];
    for (what, key, ratios) in rows {
        let (rh, rn) = if ratios {
            (res.ratio(key, Haproxy), res.ratio(key, Nginx))
        } else {
            (None, None)
        };
        writeln!(
            w,
            "| {what} | {} | {} | {} |",
            cells(res, key, &TARGETS),
            opt_num(rh),
            opt_num(rn),
        )
        .unwrap();
    }
    writeln!(w).unwrap();
}

/// Handshakes per second, echoed TLS bulk and the proxies' CPU for each, when the tls workload
/// ran. Direct has no TLS: no column.
fn tls(w: &mut String, res: &Results) {
    if res.values("tls hs", Warren).is_empty() && res.values("tls bulk P1 gbps", Warren).is_empty()
    {
        return;
    }
    writeln!(
        w,
        "### TLS termination: TLS 1.3, {CIPHER_OPENSSL}, X25519, ECDSA P-256, plain to the \
         echo server\n"
    )
    .unwrap();
    writeln!(
        w,
        "\"handshakes\" = {HANDSHAKE_CLIENTS} client tasks each looping connect → full handshake \
         (no resumption) → 1 byte → its echo → close_notify → close; \"bulk\" = 1 or 4 TLS \
         connections each writing 64 KiB blocks while reading the echo, Gbit/s echoed back \
         (every byte crossed the proxy both ways: decrypted once, encrypted once). Proxy CPU = \
         utime+stime of all its processes/threads, per handshake or per GB echoed.\n"
    )
    .unwrap();
    writeln!(w, "| | warren | HAProxy | NGINX | w/h | w/n |").unwrap();
    writeln!(w, "|---|---|---|---|---|---|").unwrap();
    let mut rows = vec![
        (
            format!("handshakes/s, {HANDSHAKE_CLIENTS} clients"),
            "tls hs".to_string(),
        ),
        ("proxy CPU µs per handshake".into(), "tls hs cpu".into()),
    ];
    for p in BULK_STREAMS {
        rows.push((format!("bulk P{p}, Gbit/s"), format!("tls bulk P{p} gbps")));
    }
    for p in BULK_STREAMS {
        rows.push((
            format!("bulk P{p}, proxy CPU s per GB"),
            format!("tls bulk P{p} cpu"),
        ));
    }
    for (what, key) in rows {
        writeln!(
            w,
            "| {what} | {} | {} | {} |",
            cells(res, &key, &PROXIES),
            opt_num(res.ratio(&key, Haproxy)),
            opt_num(res.ratio(&key, Nginx)),
        )
        .unwrap();
    }
    writeln!(w).unwrap();
}

/// The targets table and the errors of the run.
fn verdicts(w: &mut String, res: &Results, targets: &Verdicts) {
    writeln!(
        w,
        "### Targets\n\n| target | measured (median of per-round ratios) | |\n|---|---|---|"
    )
    .unwrap();
    for (what, val, v) in targets {
        writeln!(w, "| {what} | {val} | {v} |").unwrap();
    }
    if !res.notes.is_empty() {
        writeln!(w, "\nErrors during the run:\n").unwrap();
        for n in &res.notes {
            writeln!(w, "- {n}").unwrap();
        }
    }
}

/// "64 B", "16 KiB".
pub fn size_label(size: usize) -> String {
    if size >= 1024 {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

/// The results key of a bulk slot, e.g. "bulk -R P4".
pub fn bulk_key(streams: usize, reverse: bool) -> String {
    format!("bulk {} P{streams}", if reverse { "-R" } else { "fwd" })
}

/// The first line a command prints (stdout, then stderr), or why it did not run.
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

/// The machine table: date, command, hardware, OS and every program's version.
pub fn machine_info(opts: &Opts) -> Vec<(String, String)> {
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

/// Replace the generated section of BENCHMARKS.md, keeping what people wrote around it.
pub fn write_report(path: &Path, report: &str) -> Res<()> {
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
