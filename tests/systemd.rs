//! warren under systemd, with this test playing systemd: the units in systemd/ pass
//! `systemd-analyze verify` (skipped, saying so, where the tool is missing); the failover hook
//! and the root-side warren-switch agree on what a hook may ask (start or stop one unit); a fake
//! `NOTIFY_SOCKET` hears `READY=1` only once the listener accepts, `RELOADING=1` … `READY=1`
//! around a reload (good or bad), `WATCHDOG=1`, and `STOPPING=1` on SIGTERM; and with socket
//! activation warren serves on the socket passed as fd 3, and a restart while the test holds
//! that socket open refuses no connection. Also `--log-file`, where a service without stderr
//! (Windows) logs. Every warren here is a child process, killed by a guard also when a test
//! panics. tests/systemd_live.rs boots a real systemd instead.
#![cfg(target_os = "linux")]

mod common;

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{echo_once, free_port, spawn_backend, wait_for, TempDir};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::net::{TcpStream, UnixDatagram};

const WARREN: &str = env!("CARGO_BIN_EXE_warren");
const SECOND: Duration = Duration::from_secs(1);
/// Start-up on a loaded 2-core machine: process start, config load, runtime, bind.
const START: Duration = Duration::from_secs(30);

/// A config file: listeners (name, address) → pool "rabbitmq" with one backend.
fn write_config(path: &Path, listeners: &[(&str, SocketAddr)], backend: SocketAddr) {
    let mut text = String::new();
    for (name, addr) in listeners {
        text += &format!(
            "[[listener]]\nname = \"{name}\"\nlisten = \"{addr}\"\npool = \"rabbitmq\"\n\n"
        );
    }
    text += &format!(
        "[pool.rabbitmq]\n\n[[pool.rabbitmq.backend]]\nname = \"rabbit-a\"\naddr = \"{backend}\"\n"
    );
    std::fs::write(path, text).unwrap();
}

/// The notification socket systemd would listen on.
struct FakeSystemd {
    socket: UnixDatagram,
    path: PathBuf,
    /// Every message received, in order, for failure reports.
    heard: Vec<String>,
}

impl FakeSystemd {
    fn bind(dir: &Path) -> FakeSystemd {
        let path = dir.join("notify.sock");
        FakeSystemd {
            socket: UnixDatagram::bind(&path).unwrap(),
            path,
            heard: Vec::new(),
        }
    }

    /// The next message, within `within`.
    async fn next(&mut self, within: Duration) -> String {
        let mut buf = vec![0u8; 4096];
        let n = match tokio::time::timeout(within, self.socket.recv(&mut buf)).await {
            Ok(n) => n.unwrap(),
            Err(_) => panic!(
                "no notification within {within:?}; heard so far: {:?}",
                self.heard
            ),
        };
        let message = String::from_utf8(buf[..n].to_vec()).unwrap();
        self.heard.push(message.clone());
        message
    }

    /// The next message other than the watchdog's keep-alive.
    async fn next_state(&mut self, within: Duration) -> String {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let message = self.next(left).await;
            if message != "WATCHDOG=1" {
                return message;
            }
        }
    }
}

/// The `KEY=` line of a notification, without the key.
fn field<'a>(message: &'a str, key: &str) -> Option<&'a str> {
    message
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

/// A `warren` child; its stderr goes to a file that is printed when the test fails.
struct WarrenProcess {
    child: Child,
    log: PathBuf,
}

/// A command for `program` without what systemd (or the developer's shell) may have set.
fn clean_command(program: &str) -> Command {
    let mut command = Command::new(program);
    for var in [
        "RUST_LOG",
        "NOTIFY_SOCKET",
        "LISTEN_PID",
        "LISTEN_FDS",
        "LISTEN_FDNAMES",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
    ] {
        command.env_remove(var);
    }
    command
}

impl WarrenProcess {
    /// Start `command` (warren, or a shell that execs it) with stderr into `log`.
    fn spawn(mut command: Command, log: PathBuf) -> WarrenProcess {
        let stderr = std::fs::File::create(&log).unwrap();
        let child = command
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn warren");
        WarrenProcess { child, log }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).expect("signal warren");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until the process exits; panics after `within`.
    async fn exited(&mut self, within: Duration) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "warren did not exit within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for WarrenProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- warren stderr ({}) ---\n{}",
                self.log.display(),
                self.log()
            );
        }
    }
}

#[test]
fn units_pass_systemd_analyze_verify() {
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    let service = std::fs::read_to_string(units.join("warren.service")).unwrap();
    let socket = std::fs::read_to_string(units.join("warren.socket")).unwrap();
    // What the packaging promises, checked even where systemd-analyze is missing.
    for line in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "User=warren",
        "Group=warren",
        "StateDirectory=warren",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "NoNewPrivileges=yes",
        "RestrictSUIDSGID=yes",
        "RemoveIPC=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "LimitNOFILE=262144",
        "Restart=on-failure",
    ] {
        assert!(
            service.lines().any(|l| l == line),
            "warren.service lacks {line}"
        );
    }
    assert!(
        !service.lines().any(|l| l.starts_with("DynamicUser=")),
        "warren.service runs as the fixed user warren, not a dynamic one"
    );
    assert!(socket.lines().any(|l| l == "FileDescriptorName=amqp"));
    assert!(socket.lines().any(|l| l == "Service=warren.service"));
    let switch_path = std::fs::read_to_string(units.join("warren-switch@.path")).unwrap();
    let switch_service = std::fs::read_to_string(units.join("warren-switch@.service")).unwrap();
    assert!(switch_path
        .lines()
        .any(|l| l == "PathChanged=/var/lib/warren/switch/%i"));
    assert!(
        switch_service
            .lines()
            .any(|l| l
                == "ExecStart=/usr/local/lib/warren/warren-switch %i /var/lib/warren/switch/%i")
    );

    let Some(tool) = common::tool_or_skip("systemd-analyze", "units_pass_systemd_analyze_verify")
    else {
        return;
    };
    // verify checks that ExecStart= exists: point the units at the binary just built and the
    // switch script in the repository. A template is verified through an instance.
    let dir = TempDir::new("units");
    let switch = units.join("warren-switch");
    for (name, text) in [
        ("warren.service", &service),
        ("warren.socket", &socket),
        ("warren-switch@.path", &switch_path),
        ("warren-switch@.service", &switch_service),
    ] {
        let text = text.replace("/usr/local/bin/warren", WARREN).replace(
            "/usr/local/lib/warren/warren-switch",
            switch.to_str().unwrap(),
        );
        std::fs::write(dir.0.join(name), text).unwrap();
    }
    let out = Command::new(tool)
        .args(["verify", "--man=no"])
        .arg(dir.0.join("warren.socket"))
        .arg(dir.0.join("warren.service"))
        .arg(dir.0.join("warren-switch@passive-frontends.target.path"))
        .arg(dir.0.join("warren-switch@passive-frontends.target.service"))
        .output()
        .expect("run systemd-analyze");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // verify exits 0 on most warnings: any line about our units is a failure; lines about the
    // host's own units are its business.
    let ours: Vec<&str> = text.lines().filter(|l| l.contains("warren")).collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify: {}\n{text}",
        out.status
    );
}

/// Runs the shell script `script` as warren runs a hook (a clean environment: `PATH` and
/// `env`), with `bin` (a fake `systemctl`) first on `PATH`.
fn run_script(script: &Path, args: &[&str], env: &[(&str, &str)], bin: &Path) -> Output {
    let out = Command::new("sh")
        .arg(script)
        .args(args)
        .env_clear()
        .env(
            "PATH",
            format!("{}:{}", bin.display(), warren::hooks::HOOK_PATH),
        )
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run sh");
    eprintln!("{} {args:?}: {out:?}", script.display());
    out
}

/// The hook side and the root side of a unit switch agree: config/hooks/failover.sh (as the
/// unprivileged warren user runs it) only writes `start` or `stop` to the request file, and
/// systemd/warren-switch (as root runs it from warren-switch@UNIT.service) turns exactly those
/// into `systemctl start|stop UNIT`, refuses anything else, and applies a request that changed
/// while systemctl ran.
#[test]
fn failover_hook_asks_and_warren_switch_obeys_only_start_and_stop() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (failover, switch) = (
        repo.join("config/hooks/failover.sh"),
        repo.join("systemd/warren-switch"),
    );
    let dir = TempDir::new("switch");
    let (bin, requests) = (dir.0.join("bin"), dir.0.join("switch"));
    let (calls, flip) = (dir.0.join("calls"), dir.0.join("flip"));
    let unit = "passive-frontends.target";
    let request = requests.join(unit);
    // A fake systemctl: records its arguments; once `flip` exists, it turns the request into
    // `stop` while "running", as a failback arriving mid-start would.
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(
        bin.join("systemctl"),
        format!(
            "#!/bin/sh\necho \"$*\" >>'{}'\nif [ -e '{}' ]; then rm '{}'; echo stop >'{}'; fi\n",
            calls.display(),
            flip.display(),
            flip.display(),
            request.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(bin.join("systemctl"), PermissionsExt::from_mode(0o755)).unwrap();
    let taken = || -> Vec<String> {
        let lines = std::fs::read_to_string(&calls).unwrap_or_default();
        let _ = std::fs::remove_file(&calls);
        lines.lines().map(str::to_owned).collect()
    };
    let hook = |event: &str, unit: &str| {
        let env = [
            ("WARREN_EVENT", event),
            ("WARREN_POOL", "rabbitmq"),
            ("WARREN_AVAILABLE", "0"),
            ("WARREN_TOTAL", "2"),
        ];
        run_script(&failover, &[unit, requests.to_str().unwrap()], &env, &bin)
    };
    let root_side = || run_script(&switch, &[unit, request.to_str().unwrap()], &[], &bin);
    let start = format!("--no-ask-password start {unit}");
    let stop = format!("--no-ask-password stop {unit}");

    // Nothing asked yet: nothing done.
    assert!(root_side().status.success());
    assert!(taken().is_empty());

    assert!(hook("pool_failover", unit).status.success());
    assert_eq!(std::fs::read_to_string(&request).unwrap(), "start\n");
    assert!(taken().is_empty(), "the hook itself runs no systemctl");
    assert!(root_side().status.success());
    assert_eq!(taken(), [start.as_str()]);

    assert!(hook("pool_failback", unit).status.success());
    assert!(root_side().status.success());
    assert_eq!(taken(), [stop.as_str()]);

    // Other events leave the request as it is.
    let out = hook("backend_down", unit);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to do"));
    assert_eq!(std::fs::read_to_string(&request).unwrap(), "stop\n");

    // A unit name that is a path is refused; nothing is written.
    for bad in ["../x", ".hidden", "a/b"] {
        assert_eq!(hook("pool_failover", bad).status.code(), Some(2), "{bad}");
    }
    assert_eq!(std::fs::read_dir(&requests).unwrap().count(), 1);

    // A failback arriving while the start runs is applied after it.
    assert!(hook("pool_failover", unit).status.success());
    std::fs::write(&flip, "").unwrap();
    assert!(root_side().status.success());
    assert_eq!(taken(), [start.as_str(), stop.as_str()]);

    // The root side obeys nothing but start and stop in a regular file.
    std::fs::write(&request, "poweroff\n").unwrap();
    assert_eq!(root_side().status.code(), Some(1));
    std::fs::remove_file(&request).unwrap();
    std::os::unix::fs::symlink(dir.0.join("elsewhere"), &request).unwrap();
    std::fs::write(dir.0.join("elsewhere"), "start\n").unwrap();
    assert_eq!(root_side().status.code(), Some(1));
    assert!(taken().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_ready_after_bind_reloading_then_ready_stopping_on_sigterm() {
    let dir = TempDir::new("notify");
    let backend = spawn_backend(common::echo).await;
    let config = dir.0.join("warren.toml");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    write_config(&config, &[("amqp", addr)], backend.addr);
    let mut systemd = FakeSystemd::bind(&dir.0);

    let mut command = clean_command(WARREN);
    command
        .args(["run", "--shutdown-grace", "1s", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &systemd.path)
        .env("WATCHDOG_USEC", "200000")
        .stdin(Stdio::null());
    let mut warren = WarrenProcess::spawn(command, dir.0.join("warren.log"));

    // The first message is READY=1, and the listener accepts at that moment.
    let ready = systemd.next(START).await;
    assert_eq!(field(&ready, "READY"), Some("1"), "{ready}");
    assert_eq!(
        field(&ready, "STATUS"),
        Some(format!("serving: amqp on {addr}").as_str())
    );
    assert_eq!(
        field(&ready, "MAINPID"),
        Some(warren.child.id().to_string().as_str())
    );
    let mut client = TcpStream::connect(addr)
        .await
        .expect("the listener accepts once READY=1 is sent");
    assert!(echo_once(&mut client, 1).await, "proxied once ready");

    // WATCHDOG_USEC=200000: a keep-alive about every 100 ms.
    let deadline = tokio::time::Instant::now() + 10 * SECOND;
    while systemd.next(10 * SECOND).await != "WATCHDOG=1" {
        assert!(tokio::time::Instant::now() < deadline, "no WATCHDOG=1");
    }

    // A good reload: RELOADING=1 with the clock, then READY=1 with the new listener.
    let addr2: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    write_config(&config, &[("amqp", addr), ("amqp2", addr2)], backend.addr);
    warren.signal(Signal::SIGHUP);
    let reloading = systemd.next_state(10 * SECOND).await;
    assert_eq!(field(&reloading, "RELOADING"), Some("1"), "{reloading}");
    let usec: u64 = field(&reloading, "MONOTONIC_USEC")
        .expect("MONOTONIC_USEC")
        .parse()
        .unwrap();
    assert!(usec > 0);
    let ready = systemd.next_state(10 * SECOND).await;
    assert_eq!(field(&ready, "READY"), Some("1"), "{ready}");
    assert_eq!(
        field(&ready, "STATUS"),
        Some(format!("serving: amqp on {addr}, amqp2 on {addr2}").as_str())
    );
    let mut client2 = TcpStream::connect(addr2).await.unwrap();
    assert!(echo_once(&mut client2, 2).await, "the new listener serves");

    // A bad reload: still RELOADING=1 then READY=1, the status says what failed.
    std::fs::write(&config, "[[listener]]\nname = \"amqp\"\n").unwrap();
    warren.signal(Signal::SIGHUP);
    let reloading = systemd.next_state(10 * SECOND).await;
    assert_eq!(field(&reloading, "RELOADING"), Some("1"), "{reloading}");
    let ready = systemd.next_state(10 * SECOND).await;
    assert_eq!(field(&ready, "READY"), Some("1"), "{ready}");
    let status = field(&ready, "STATUS").unwrap();
    assert!(
        status.starts_with(&format!(
            "serving: amqp on {addr}, amqp2 on {addr2}; last reload failed: "
        )),
        "{status}"
    );
    assert!(!status.contains('\n'));
    assert!(echo_once(&mut client, 3).await, "the old config serves on");

    // SIGTERM: STOPPING=1 at once, then a clean exit.
    warren.signal(Signal::SIGTERM);
    let stopping = systemd.next_state(10 * SECOND).await;
    assert_eq!(field(&stopping, "STOPPING"), Some("1"), "{stopping}");
    drop((client, client2));
    let status = warren.exited(15 * SECOND).await;
    assert!(status.success(), "warren exited with {status}");
}

/// Start warren as systemd would with socket activation: `listener` at fd 3 (through a shell,
/// so that `LISTEN_PID` is the pid that then execs warren), `LISTEN_FDS=1`,
/// `LISTEN_FDNAMES=amqp`, and the notification socket.
fn activated(
    listener: &std::net::TcpListener,
    config: &Path,
    systemd: &FakeSystemd,
    log: PathBuf,
) -> WarrenProcess {
    let fd: OwnedFd = listener.try_clone().unwrap().into();
    let mut command = clean_command("/bin/sh");
    command
        .arg("-c")
        .arg(r#"exec 3<&0 0</dev/null; export LISTEN_PID=$$; exec "$0" "$@""#)
        .arg(WARREN)
        .args(["run", "--shutdown-grace", "2s", "--config"])
        .arg(config)
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "amqp")
        .env("NOTIFY_SOCKET", &systemd.path)
        .stdin(Stdio::from(fd));
    WarrenProcess::spawn(command, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_activation_serves_and_a_restart_refuses_nothing() {
    let dir = TempDir::new("activation");
    let backend = spawn_backend(common::echo).await;
    // The socket systemd would hold: bound and listening here, for the whole test.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let config = dir.0.join("warren.toml");
    write_config(&config, &[("amqp", addr)], backend.addr);
    let mut systemd = FakeSystemd::bind(&dir.0);

    let mut first = activated(&listener, &config, &systemd, dir.0.join("first.log"));
    let ready = systemd.next_state(START).await;
    assert_eq!(field(&ready, "READY"), Some("1"), "{ready}");
    assert_eq!(
        field(&ready, "STATUS"),
        Some(format!("serving: amqp on {addr}").as_str())
    );
    // The test holds the address, so warren cannot have bound it itself.
    assert!(first
        .log()
        .contains("listener takes its socket from systemd"));
    let mut client = TcpStream::connect(addr).await.unwrap();
    assert!(echo_once(&mut client, 7).await, "proxied through fd 3");
    drop(client);

    // Clients connect one after another, through the restart.
    let stop = Arc::new(AtomicBool::new(false));
    let (connected, served, refused, failed) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let clients = {
        let (stop, connected, served, refused, failed) = (
            stop.clone(),
            connected.clone(),
            served.clone(),
            refused.clone(),
            failed.clone(),
        );
        tokio::spawn(async move {
            let mut i = 0u8;
            while !stop.load(Ordering::SeqCst) {
                i = i.wrapping_add(1);
                let mut s = match TcpStream::connect(addr).await {
                    Ok(s) => s,
                    Err(_) => {
                        refused.fetch_add(1, Ordering::SeqCst);
                        continue;
                    }
                };
                connected.fetch_add(1, Ordering::SeqCst);
                // Queued in the backlog while no warren runs: answered by the next one.
                let ok = tokio::time::timeout(START, echo_once(&mut s, i))
                    .await
                    .unwrap_or(false);
                let counter = if ok { &served } else { &failed };
                counter.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    wait_for("20 connections served", 20 * SECOND, || {
        served.load(Ordering::SeqCst) >= 20
    })
    .await;

    first.signal(Signal::SIGTERM);
    assert_eq!(
        field(&systemd.next_state(10 * SECOND).await, "STOPPING"),
        Some("1")
    );
    let status = first.exited(15 * SECOND).await;
    assert!(status.success(), "first warren exited with {status}");
    // A client connects while no warren runs: the socket is still there, held by "systemd".
    let at_exit = served.load(Ordering::SeqCst) + failed.load(Ordering::SeqCst);
    wait_for(
        "a connection accepted by the kernel between the two",
        10 * SECOND,
        || connected.load(Ordering::SeqCst) > at_exit,
    )
    .await;

    let mut second = activated(&listener, &config, &systemd, dir.0.join("second.log"));
    let ready = systemd.next_state(START).await;
    assert_eq!(field(&ready, "READY"), Some("1"), "{ready}");
    let after = served.load(Ordering::SeqCst);
    wait_for("20 more connections served", 20 * SECOND, || {
        served.load(Ordering::SeqCst) >= after + 20
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    clients.await.unwrap();

    let counts = format!(
        "served {}, refused {}, not served {}",
        served.load(Ordering::SeqCst),
        refused.load(Ordering::SeqCst),
        failed.load(Ordering::SeqCst)
    );
    assert_eq!(
        refused.load(Ordering::SeqCst),
        0,
        "connections refused: {counts}"
    );
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "connections not served: {counts}"
    );
    second.signal(Signal::SIGTERM);
    let status = second.exited(15 * SECOND).await;
    assert!(status.success(), "second warren exited with {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_file_holds_the_log_a_service_has_no_stderr_for() {
    let dir = TempDir::new("log-file");
    let backend = spawn_backend(common::echo).await;
    let config = dir.0.join("warren.toml");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    write_config(&config, &[("amqp", addr)], backend.addr);
    let mut systemd = FakeSystemd::bind(&dir.0);
    let log_file = dir.0.join("service.log");

    let mut command = clean_command(WARREN);
    command
        .arg("--log-file")
        .arg(&log_file)
        .args(["run", "--shutdown-grace", "1s", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &systemd.path)
        .stdin(Stdio::null());
    let mut warren = WarrenProcess::spawn(command, dir.0.join("stderr.log"));
    let ready = systemd.next_state(START).await;
    assert_eq!(field(&ready, "READY"), Some("1"), "{ready}");
    warren.signal(Signal::SIGTERM);
    let status = warren.exited(15 * SECOND).await;
    assert!(status.success(), "warren exited with {status}");

    let log = std::fs::read_to_string(&log_file).unwrap();
    assert!(log.contains("warren started"), "{log}");
    assert!(log.contains("SIGTERM: stopping gracefully"), "{log}");
    assert!(log.trim_end().ends_with("stopped"), "{log}");
    assert!(!log.contains('\u{1b}'), "no colour codes in a file: {log}");
    assert_eq!(warren.log(), "", "nothing on stderr");

    // Appended, never truncated: a second run adds to the same file.
    let before = log.len();
    let out = clean_command(WARREN)
        .arg("--log-file")
        .arg(&log_file)
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(std::fs::read_to_string(&log_file).unwrap().len() >= before);

    // A log file that cannot be opened is a usage error, said on stderr.
    let missing = dir.0.join("no-such-dir").join("warren.log");
    let out = clean_command(WARREN)
        .arg("--log-file")
        .arg(&missing)
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!("cannot open the log file {}: ", missing.display())),
        "{stderr}"
    );
}
