//! Upgrading warren itself (issue 18, phase 1: listening sockets): `warren upgrade` starts the
//! binary installed at warren's path, hands it every listening socket and the old process
//! drains. Each test runs the built binary as an operator would and states its criterion as a
//! number: connects refused during a hand-over, the process that serves afterwards, and what a
//! failing new binary or config leaves behind (the old process serving, the command's reason).
#![cfg(target_os = "linux")]

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// One warren under test: its directory, config file, client and admin addresses.
struct Setup {
    dir: TempDir,
    config: PathBuf,
    addr: SocketAddr,
    admin: SocketAddr,
    _backend: Backend,
}

async fn setup(name: &str) -> Setup {
    let backend = spawn_backend(echo).await;
    let dir = TempDir::new(name);
    let (admin_port, port) = (free_port(), free_port());
    let config = dir.0.join("warren.toml");
    std::fs::write(
        &config,
        process_config(admin_port, None, port, &[backend.addr], ""),
    )
    .unwrap();
    Setup {
        dir,
        config,
        addr: ([127, 0, 0, 1], port).into(),
        admin: ([127, 0, 0, 1], admin_port).into(),
        _backend: backend,
    }
}

/// The old process keeps serving: a connect is echoed and the admin API answers.
async fn still_serves(s: &Setup, warren: &mut WarrenProc) {
    assert!(warren.exited().is_none(), "the old process exited");
    assert!(
        connect_echo(s.addr, 7).await.is_some(),
        "no echo through warren"
    );
    let (code, _) = http(s.admin, "GET", "/v1/status", None, b"").await;
    assert_eq!(code, 200);
}

/// Criterion: a client connecting in a tight loop through warren during `warren upgrade`: 0
/// connects refused or unanswered; the command exits 0 naming the new pid; afterwards the new
/// pid holds the listening port and serves, and the old process exits within 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_refuses_no_connect_and_the_new_process_serves() {
    let s = setup("handover-ok").await;
    let mut warren = WarrenProc::run_config(&s.config, s.dir.0.join("warren.log")).await;
    let old_pid = warren.pid();
    let stop = Arc::new(AtomicBool::new(false));
    let client = keep_connecting(s.addr, stop.clone(), Duration::ZERO);
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_millis(300) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    let (ok, stdout, stderr) = warren_upgrade(s.admin).await;
    let took = started.elapsed();
    assert!(ok, "warren upgrade failed: {stderr}");
    let pid = upgraded_pid(&stdout);
    let _adopted = Adopted(pid);
    assert_ne!(pid, old_pid);
    let deadline = Instant::now() + Duration::from_secs(10);
    while warren.exited().is_none() {
        assert!(
            Instant::now() < deadline,
            "the old process still runs 10 s after the upgrade"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let old_gone = started.elapsed();
    // Connects keep being served by the new process alone.
    let after = Instant::now();
    while after.elapsed() < Duration::from_millis(300) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let (connects, refused) = client.await.unwrap();
    println!(
        "upgrade {old_pid} -> {pid}: command took {took:?}, old exited after {old_gone:?}; \
         {connects} connects ok, {refused} refused"
    );
    assert_eq!(
        refused, 0,
        "connects refused or unanswered during the upgrade"
    );
    assert!(connects > 10, "only {connects} connects in the loop");
    assert!(alive(pid), "the new process is not running");
    assert!(
        listening_ports_of(pid).contains(&s.addr.port()),
        "the new process does not hold the listening socket"
    );
    assert!(connect_echo(s.addr, 9).await.is_some());
    let (code, body) = http(s.admin, "GET", "/v1/status", None, b"").await;
    assert_eq!(code, 200, "the new process's admin API: {body}");
    assert!(warren
        .log_text()
        .contains("upgrade: the new process serves every listener"));
}

/// Criterion: the binary at warren's path exits 3 at once: `warren upgrade` exits non-zero
/// saying it exited with status 3 before it was ready; the old process serves on and logs WARN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_binary_that_exits_at_once_leaves_the_old_one_serving() {
    let s = setup("handover-exit").await;
    let exe = installed_copy("exit");
    let mut warren = WarrenProc::run_config_with(
        std::process::Command::new(&exe),
        &s.config,
        s.dir.0.join("warren.log"),
    )
    .await;
    install_script(&exe, "exit 3");
    let (ok, _, stderr) = warren_upgrade(s.admin).await;
    assert!(!ok, "warren upgrade succeeded with a binary that exits");
    assert!(
        stderr.contains("exit status: 3") && stderr.contains("before it was ready"),
        "{stderr}"
    );
    still_serves(&s, &mut warren).await;
    assert!(warren.log_text().contains("WARN"), "no warning logged");
}

/// Criterion: the config file no longer loads: `warren upgrade` exits non-zero naming the file
/// and the key; the old process serves on; once the file is fixed an upgrade works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_that_fails_to_load_leaves_the_old_one_serving() {
    let s = setup("handover-config").await;
    let mut warren = WarrenProc::run_config(&s.config, s.dir.0.join("warren.log")).await;
    let good = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &s.config,
        good.replace("pool = \"rabbitmq\"", "pool = \"nosuch\""),
    )
    .unwrap();
    let (ok, _, stderr) = warren_upgrade(s.admin).await;
    assert!(!ok, "warren upgrade succeeded with a broken config");
    assert!(
        stderr.contains("warren.toml") && stderr.contains("pool") && stderr.contains("nosuch"),
        "{stderr}"
    );
    still_serves(&s, &mut warren).await;
    std::fs::write(&s.config, good).unwrap();
    let (ok, stdout, stderr) = warren_upgrade(s.admin).await;
    assert!(ok, "the upgrade after the fix failed: {stderr}");
    let _adopted = Adopted(upgraded_pid(&stdout));
}

/// Criterion: while an upgrade waits on a slow new binary (it exits 4 after 2 s), a second
/// `warren upgrade` and a SIGUSR2 are refused at once; the first reports exit status 4 and the
/// old process serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_upgrade_during_one_is_refused() {
    let s = setup("handover-twice").await;
    let exe = installed_copy("twice");
    let mut warren = WarrenProc::run_config_with(
        std::process::Command::new(&exe),
        &s.config,
        s.dir.0.join("warren.log"),
    )
    .await;
    install_script(&exe, "sleep 2; exit 4");
    let first = tokio::spawn(warren_upgrade(s.admin));
    warren
        .logged("upgrade: started the new binary", Duration::from_secs(10))
        .await;
    let started = Instant::now();
    let (ok, _, stderr) = warren_upgrade(s.admin).await;
    assert!(!ok, "a second upgrade was accepted");
    assert!(stderr.contains("already in progress"), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the refusal waited"
    );
    warren.signal(libc::SIGUSR2);
    warren
        .logged("SIGUSR2 ignored", Duration::from_secs(5))
        .await;
    let (ok, _, stderr) = first.await.unwrap();
    assert!(!ok);
    assert!(stderr.contains("exit status: 4"), "{stderr}");
    still_serves(&s, &mut warren).await;
}
