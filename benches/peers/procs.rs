//! Child processes: a guard that runs one in its own process group and stops the whole group
//! when dropped, a bounded run-to-completion, `setpriv` to user nobody, and what /proc says of a
//! group (pids, CPU seconds, RSS). Knows nothing of which program it runs.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::{Res, INTERRUPTED};

/// uid/gid of `nobody`: the proxies run as a normal user, as in production.
const NOBODY: &str = "65534";

/// Raise the soft descriptor limit to the hard one (the idle workload holds thousands).
pub fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit for getrlimit/setrlimit to read and write.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// A child in its own process group; the whole group is stopped when dropped.
pub struct Proc {
    pub what: String,
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub log: Option<PathBuf>,
}

impl Proc {
    pub fn spawn(what: &str, mut cmd: Command, log: Option<PathBuf>) -> Res<Proc> {
        cmd.process_group(0).stdin(Stdio::piped());
        if let Some(log) = &log {
            let f = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
            let f2 = f.try_clone().map_err(|e| e.to_string())?;
            cmd.stdout(f).stderr(f2);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("start {what}: {e} ({cmd:?})"))?;
        let stdin = child.stdin.take();
        Ok(Proc {
            what: what.to_string(),
            child,
            stdin,
            log,
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log_tail(&self) -> String {
        let text = self
            .log
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    pub fn ensure_running(&mut self) -> Res<()> {
        match self.child.try_wait() {
            Ok(Some(st)) => Err(format!(
                "{} exited ({st}); log:\n{}",
                self.what,
                self.log_tail()
            )),
            _ => Ok(()),
        }
    }

    /// Every process of the group (NGINX's master and workers; one for the others).
    pub fn pids(&self) -> Vec<i32> {
        group_pids(self.pid())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let pgid = self.pid();
        // SAFETY: signalling our own child's process group.
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let reaped = matches!(self.child.try_wait(), Ok(Some(_)));
            if reaped && group_pids(pgid).is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// The fields of /proc/PID/stat after the command name (state first).
pub fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(String::from).collect())
}

/// The live processes of process group `pgid`.
pub fn group_pids(pgid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if let Some(f) = stat_fields(pid) {
                // After the comm: state, ppid, pgrp, ...
                if f.get(2).and_then(|g| g.parse::<i32>().ok()) == Some(pgid) && f[0] != "Z" {
                    out.push(pid);
                }
            }
        }
    }
    out
}

/// utime + stime of these processes (all their threads), in seconds.
pub fn cpu_seconds(pids: &[i32]) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    pids.iter()
        .filter_map(|&p| stat_fields(p))
        .map(|f| {
            let u: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
            let s: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
            (u + s) / tck
        })
        .sum()
}

/// VmRSS of these processes, summed, in KiB.
pub fn rss_kib(pids: &[i32]) -> u64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum()
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Res<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind 127.0.0.1:0: {e}"))?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// 127.0.0.1:`port`.
pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Wait (up to 10 s) until `proc_` accepts connections on every one of `ports`.
pub fn wait_listening(proc_: &mut Proc, ports: &[u16]) -> Res<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    for &p in ports {
        loop {
            proc_.ensure_running()?;
            if TcpStream::connect_timeout(&addr(p), Duration::from_millis(200)).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} does not listen on {p}; log:\n{}",
                    proc_.what,
                    proc_.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

/// Run a command to completion, killed after `limit`; returns (status ok, stdout, stderr).
pub fn run_bounded(mut cmd: Command, limit: Duration) -> Res<(bool, String, String)> {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().map_err(|e| format!("{cmd:?}: {e}"))?;
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let to = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let te = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break Some(st);
        }
        if Instant::now() > deadline || INTERRUPTED.load(Ordering::SeqCst) {
            // SAFETY: our own child's process group.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let (o, e) = (to.join().unwrap_or_default(), te.join().unwrap_or_default());
    match status {
        Some(st) => Ok((st.success(), o, e)),
        None => Err(format!("{cmd:?} took longer than {limit:?}; stderr: {e}")),
    }
}

/// `program` run as user nobody through `setpriv`.
pub fn as_nobody(program: &Path) -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        format!("--reuid={NOBODY}"),
        format!("--regid={NOBODY}"),
        "--clear-groups".into(),
        "--".into(),
    ]);
    c.arg(program);
    c
}

/// Where `name` is installed, in the system directories.
pub fn which(name: &str) -> Res<PathBuf> {
    for dir in [
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
        "/usr/local/sbin",
        "/usr/local/bin",
    ] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return Ok(p);
        }
    }
    Err(format!(
        "{name} not found; run `bash scripts/bench.sh`, which installs it"
    ))
}

/// The run's scratch directory (configs, logs, pid files), removed at the end unless
/// `PEERS_KEEP_TMP` is set.
pub struct Workdir(pub PathBuf);

impl Workdir {
    pub fn new() -> Res<Workdir> {
        let p = std::env::temp_dir().join(format!("warren-peers-{}", std::process::id()));
        std::fs::create_dir_all(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        // The proxies run as nobody and write their logs and pid files here.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o777))
            .map_err(|e| e.to_string())?;
        Ok(Workdir(p))
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        if std::env::var_os("PEERS_KEEP_TMP").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
