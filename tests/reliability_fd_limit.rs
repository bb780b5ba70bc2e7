//! Reliability, limits: at the descriptor limit the accept loop backs off instead of spinning,
//! the failures are counted, no backend is blamed (by the data path or by its probe), the admin
//! API and its probes keep answering, and warren recovers as soon as descriptors are free again.
//! Its own test binary because it lowers the process's RLIMIT_NOFILE.

#![cfg(target_os = "linux")]

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warren::config::Balance;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage writes a full rusage into the pointer it is given.
    let usage = unsafe {
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()), 0);
        usage.assume_init()
    };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(usage.ru_utime) + t(usage.ru_stime)
}

/// The descriptor limit is the test process's: a test that lowers it holds this, and so does
/// every other test of this file, so none opens descriptors under another's lowered limit.
static RLIMIT_NOFILE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn set_soft_nofile(n: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        let old = lim.rlim_cur;
        lim.rlim_cur = n;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        old
    }
}

/// Criterion: at the descriptor limit warren uses under 20% of a core and counts under 100
/// accept errors a second (backoff); through the 1 s at the limit (10 probe intervals of 100 ms,
/// fall 1, probes unable to open a socket) 0 probes count as failed and the backend, up by its
/// probes before, stays up (health "up", not "unknown"); /healthz, /readyz and
/// /metrics answer 200 within 2 s each; once descriptors are free it serves again within 3 s
/// (milliseconds unloaded; generous for a loaded machine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_backs_off_at_the_descriptor_limit_and_recovers() {
    let _limit = RLIMIT_NOFILE.lock().await;
    let b = spawn_backend(echo).await;
    let mut cfg = config(Balance::RoundRobin, vec![backend("b", b.addr)]);
    cfg.admin = Some(warren::config::AdminConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        token_file: None,
        state_file: None,
        ..Default::default()
    });
    cfg.pools[0].health = Some(warren::config::HealthConfig {
        probe: warren::config::Probe::Tcp,
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(50),
        rise: 1,
        fall: 1,
    });
    let warren = Warren::start(cfg, quick());
    let admin = warren.admin.unwrap();
    // Admin connections are made before the limit too: warren, not the test, must find the
    // descriptor for each accept.
    let admin_sockets: Vec<_> = (0..3)
        .map(|_| tokio::net::TcpSocket::new_v4().unwrap())
        .collect();
    // Client sockets are made before the limit is lowered, so connecting them needs no new
    // descriptor here while every accept in warren does: warren, not the client, hits EMFILE.
    let sockets: Vec<_> = (0..60)
        .map(|_| tokio::net::TcpSocket::new_v4().unwrap())
        .collect();
    // The backend is up by its probes before the limit (not "unknown").
    let ok_series = r#"warren_health_checks_total{backend="b",pool="default",result="ok"}"#;
    let failed_series = r#"warren_health_checks_total{backend="b",pool="default",result="failed"}"#;
    wait_for("a passed probe", Duration::from_secs(10), || {
        // Absent until the prober starts; only >= 1 passes.
        warren.metric_or_zero(ok_series) >= 1.0
    })
    .await;
    let failed_before = warren.metric(failed_series);
    // Room for a few proxied connections only (each costs 3 descriptors in this process besides
    // the client: the accepted socket, the backend socket and the backend's accepted socket).
    let old = set_soft_nofile((open_fds() + 10) as u64);
    let mut clients = Vec::new();
    for socket in sockets {
        clients.push(socket.connect(warren.addr).await.unwrap());
    }
    println!(
        "{} clients connected (the kernel completes handshakes)",
        clients.len()
    );
    // warren is now at the limit: accept fails with EMFILE and must back off.
    wait_for("accept errors counted", Duration::from_secs(5), || {
        warren.metric(r#"warren_listener_rejected_total{listener="default",reason="accept_error"}"#)
            >= 1.0
    })
    .await;
    let cpu_before = cpu_seconds();
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu = cpu_seconds() - cpu_before;
    let wall = window.elapsed().as_secs_f64();
    let errors = warren
        .metric(r#"warren_listener_rejected_total{listener="default",reason="accept_error"}"#);
    println!("at the limit: {cpu:.3} CPU-s in {wall:.2}s, {errors} accept errors so far");
    assert!(
        cpu < 0.2 * wall,
        "accept loop spins at the fd limit: {cpu:.3} CPU-s in {wall:.2}s"
    );
    assert!(errors < 100.0, "{errors} accept errors: no backoff");
    // Probes kept running through the 1 s window at the limit (10 intervals of 100 ms, fall 1):
    // they cannot open a socket there, which is a local error, not the backend's: none counts
    // as failed, and the backend is still "up" by its probes (not merely "unknown", which also
    // exports backend_up 1).
    assert!(
        wall >= 0.5,
        "at least 5 probe intervals at the limit: {wall:.2}s"
    );
    assert_eq!(
        warren.metric(failed_series),
        failed_before,
        "a local error must not count as a failed probe"
    );
    let record = warren.health.backend("default", "b").unwrap();
    assert_eq!(
        record.health,
        warren::state::Health::Up,
        "a local error must not mark the backend down: {record:?}"
    );
    assert_eq!(
        warren.metric(r#"warren_backend_up{backend="b",pool="default"}"#),
        1.0
    );
    // The admin API answers at the limit.
    for (socket, path) in admin_sockets
        .into_iter()
        .zip(["/healthz", "/readyz", "/metrics"])
    {
        let mut s = tokio::time::timeout(Duration::from_secs(2), socket.connect(admin))
            .await
            .expect("admin connect within 2s")
            .unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: w\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut answer)).await;
        let head = String::from_utf8_lossy(&answer[..answer.len().min(20)]).into_owned();
        assert!(
            matches!(read, Ok(Ok(_))) && head.starts_with("HTTP/1.1 200"),
            "{path} at the descriptor limit: {read:?} {head:?}"
        );
    }

    // Free descriptors: everything still queued and new connections work within 3 s.
    clients.clear();
    set_soft_nofile(old);
    let recovered = Instant::now();
    let mut s = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            if let Ok(mut s) = TcpStream::connect(warren.addr).await {
                if s.write_all(b"back").await.is_ok() {
                    let mut buf = [0u8; 4];
                    if let Ok(Ok(_)) =
                        tokio::time::timeout(Duration::from_millis(300), s.read_exact(&mut buf))
                            .await
                    {
                        return s;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("warren serves again within 3s of descriptors being freed");
    println!("recovered in {:?}", recovered.elapsed());
    s.shutdown().await.unwrap();
    warren.stop().await;
}

/// Criterion: a warren process at RLIMIT_NOFILE 256 whose admin port holds 400 idle connection
/// attempts (16 from each of 25 loopback addresses, more than its descriptors) keeps at most
/// `admin.max_connections` (64) of them: 6 of 6 data-plane echoes succeed, `/healthz` answers
/// 200 within 2 s, and the refusals are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_connection_flood_leaves_the_data_plane_its_descriptors() {
    use std::os::unix::process::CommandExt;
    let _limit = RLIMIT_NOFILE.lock().await;
    let b = spawn_backend(echo).await;
    let dir = TempDir::new("fd-admin-flood");
    let (admin_port, port) = (free_port(), free_port());
    let config_path = dir.0.join("warren.toml");
    std::fs::write(
        &config_path,
        process_config(admin_port, None, port, &[b.addr], ""),
    )
    .unwrap();
    let mut command = std::process::Command::new(WARREN_BIN);
    // SAFETY: setrlimit is async-signal-safe and touches only the child about to exec.
    unsafe {
        command.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 256,
                rlim_max: 256,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let warren = WarrenProc::run_config_with(command, &config_path, dir.0.join("warren.log")).await;
    let admin: std::net::SocketAddr = ([127, 0, 0, 1], admin_port).into();
    let data: std::net::SocketAddr = ([127, 0, 0, 1], port).into();

    let mut flood = Vec::new();
    for source in 0..25u8 {
        for _ in 0..16 {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket
                .bind((std::net::Ipv4Addr::new(127, 0, 1, source + 1), 0).into())
                .unwrap();
            if let Ok(Ok(s)) =
                tokio::time::timeout(Duration::from_secs(2), socket.connect(admin)).await
            {
                flood.push(s);
            }
        }
    }
    println!(
        "{} idle admin connections made; warren holds {} descriptors",
        flood.len(),
        fds_of(warren.pid())
    );
    assert!(
        fds_of(warren.pid()) < 200,
        "the flood took {} descriptors",
        fds_of(warren.pid())
    );
    let mut echoed = 0;
    for n in 0..6u8 {
        if connect_echo(data, n).await.is_some() {
            echoed += 1;
        }
    }
    assert_eq!(echoed, 6, "data-plane echoes during the admin flood");
    let (status, _) = tokio::time::timeout(
        Duration::from_secs(2),
        http(admin, "GET", "/healthz", None, b""),
    )
    .await
    .expect("/healthz answers within 2 s");
    assert_eq!(status, 200);
    let metrics = scrape_metrics(admin).await;
    let evicted = metric_value(
        &metrics,
        r#"warren_admin_connections_refused_total{reason="evicted"}"#,
    );
    println!("admin connections evicted: {evicted}");
    assert!(evicted >= 300.0, "{evicted} evicted:\n{metrics}");
    drop(flood);
}
