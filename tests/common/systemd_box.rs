//! A real systemd, booted for one test in its own namespaces (tests/fixtures/systemd/boot.sh
//! says what the box sees and what it cannot touch), driven with `nsenter` + `systemctl`.
//! [`SystemdBox::boot`] skips, with a SKIP line, only where the machine cannot build the box
//! (not root, no writable cgroup2, namespaces refused); once boot.sh has handed over to systemd,
//! anything that goes wrong fails the test. Dropping the box kills everything in it and removes
//! its cgroup; the test process dying kills it too (parent-death signals on both processes).
//! It owns nothing of warren: the test installs what it tests.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::TempDir;

/// How long systemd gets to boot, and one command inside the box to finish.
const BOOT: Duration = Duration::from_secs(30);
const COMMAND_SECONDS: &str = "60";

/// A booted systemd; see the module doc.
pub struct SystemdBox {
    /// `unshare`, whose child (PID 1 in the box) dies with it.
    unshare: Child,
    /// PID 1 of the box, as the host numbers it: what `nsenter` enters.
    pid1: u32,
    /// The box's cgroup2 subtree, removed on drop.
    cgroup: PathBuf,
    /// Seen inside as /run/warren-test.
    pub dir: TempDir,
}

/// The cgroup2 mount point (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a hybrid host).
fn cgroup2_mount() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let (fields, rest) = line.split_once(" - ")?;
        let point = fields.split(' ').nth(4)?;
        (rest.split(' ').next() == Some("cgroup2")).then(|| PathBuf::from(point))
    })
}

/// The child of `parent`, found by scanning /proc.
fn child_of(parent: u32) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.find_map(|entry| {
        let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The fields after the command name, which is in parentheses and may hold spaces.
        let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?;
        (ppid.parse() == Ok(parent)).then_some(pid)
    })
}

/// Removes the cgroup tree `root`, deepest first, once no process is left in it.
fn remove_cgroup(root: &Path) {
    let populated = || {
        std::fs::read_to_string(root.join("cgroup.events"))
            .map(|events| events.contains("populated 1"))
            .unwrap_or(false)
    };
    if poll(Duration::from_secs(10), || (!populated()).then_some(())).is_none() {
        eprintln!("the box's cgroup {root:?} still has processes");
        return;
    }
    let mut dirs = vec![root.to_path_buf()];
    let mut i = 0;
    while i < dirs.len() {
        if let Ok(entries) = std::fs::read_dir(&dirs[i]) {
            dirs.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
        }
        i += 1;
    }
    for dir in dirs.iter().rev() {
        if let Err(e) = std::fs::remove_dir(dir) {
            eprintln!("cannot remove the box's cgroup {dir:?}: {e}");
        }
    }
}

/// Removes the cgroups of boxes whose test process was killed (no drop ran): a
/// `warren-test-PID-N` under `mount` whose PID is gone.
fn remove_stale_cgroups(mount: &Path) {
    let Ok(entries) = std::fs::read_dir(mount) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("warren-test-"))
            .map(|rest| rest.split('-').next().unwrap_or(rest))
        else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            remove_cgroup(&entry.path());
        }
    }
}

/// Polls `check` every 100 ms until it gives a value, or `None` after `within`.
pub fn poll<T>(within: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl SystemdBox {
    /// Boots systemd for `test`, or prints why it cannot here and gets `None`.
    pub fn boot(test: &str) -> Option<SystemdBox> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIP {test}: booting systemd in namespaces needs root (CI runs as root)");
            return None;
        }
        for program in ["unshare", "nsenter", "setpriv", "timeout"] {
            super::tool_or_skip(program, test)?;
        }
        let systemd = Path::new("/lib/systemd/systemd");
        assert!(
            systemd.exists(),
            "{test}: {systemd:?} is missing: run scripts/test.sh"
        );
        let Some(mount) = cgroup2_mount() else {
            eprintln!("SKIP {test}: no cgroup2 hierarchy is mounted (systemd needs one)");
            return None;
        };
        remove_stale_cgroups(&mount);
        // One per box: the tests of one file run in one process, in parallel.
        static BOXES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = BOXES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cgroup = mount.join(format!("warren-test-{}-{n}", std::process::id()));
        if let Err(e) = std::fs::create_dir_all(&cgroup) {
            eprintln!("SKIP {test}: cannot create the cgroup {cgroup:?}: {e}");
            return None;
        }
        let dir = TempDir::new(&format!("systemd-box-{n}"));
        let boot_sh = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/systemd/boot.sh");
        let stderr = std::fs::File::create(dir.0.join("boot.stderr")).unwrap();
        // PID 1 alone moves into the box's cgroup, then makes it the root of its cgroup
        // namespace: unshare stays out, so the box's root cgroup holds no foreign process.
        let mut command = Command::new("unshare");
        command
            .args([
                "--pid",
                "--fork",
                "--kill-child",
                "--mount",
                "--net",
                "--uts",
                "--ipc",
            ])
            .args([
                "sh",
                "-c",
                r#"echo $$ >"$0/cgroup.procs" && exec unshare --cgroup sh "$@""#,
            ])
            .arg(&cgroup)
            .arg(boot_sh)
            .arg(&dir.0)
            .arg(env!("CARGO_BIN_EXE_warren"))
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::null())
            .stdout(stderr.try_clone().unwrap())
            .stderr(stderr);
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory: the box
        // dies with this test even when the test process is killed.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let unshare = command.spawn().expect("spawn unshare");
        let mut booting = SystemdBox {
            unshare,
            pid1: 0,
            cgroup,
            dir,
        };
        booting.wait_for_boot(test).then_some(booting)
    }

    /// Waits for PID 1 to be systemd and its manager to be up; false (after a SKIP line) when
    /// boot.sh could not build the box.
    fn wait_for_boot(&mut self, test: &str) -> bool {
        let fenced = self.dir.0.join("fenced");
        let unshare = self.unshare.id();
        let pid1 = poll(BOOT, || {
            if let Ok(Some(status)) = self.unshare.try_wait() {
                return Some(Err(status));
            }
            let pid = child_of(unshare)?;
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
            (fenced.exists() && exe.ends_with("systemd")).then_some(Ok(pid))
        });
        match pid1 {
            Some(Ok(pid)) => self.pid1 = pid,
            Some(Err(status)) if !fenced.exists() => {
                let why = std::fs::read_to_string(self.dir.0.join("boot.stderr")).unwrap();
                eprintln!("SKIP {test}: this machine cannot build the box ({status}): {why}");
                return false;
            }
            other => panic!("systemd did not start: {other:?}"),
        }
        let state = poll(BOOT, || {
            let out = self.run("systemctl is-system-running");
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            matches!(state.as_str(), "running" | "degraded").then_some(state)
        });
        assert!(state.is_some(), "systemd did not boot within {BOOT:?}");
        true
    }

    /// Runs the shell script `script` inside the box as root (bounded; `set -eu`).
    pub fn run(&self, script: &str) -> Output {
        Command::new("timeout")
            .args(["-s", "KILL", COMMAND_SECONDS, "nsenter", "--wd=/", "-t"])
            .arg(self.pid1.to_string())
            .args(["-m", "-p", "-n", "-u", "-i", "-C", "sh", "-euc", script])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::null())
            .output()
            .expect("run nsenter")
    }

    /// [`run`](Self::run), which must succeed: its trimmed stdout.
    pub fn ok(&self, script: &str) -> String {
        let out = self.run(script);
        assert!(
            out.status.success(),
            "in the box: {script}\n{}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Polls `script`'s trimmed stdout until it is `want`; panics after `within`.
    pub fn wait_until(&self, script: &str, want: &str, within: Duration) {
        let mut last = String::new();
        let reached = poll(within, || {
            last = String::from_utf8_lossy(&self.run(script).stdout)
                .trim()
                .to_string();
            (last == want).then_some(())
        });
        assert!(
            reached.is_some(),
            "in the box: {script} gave {last:?}, not {want:?}, within {within:?}"
        );
    }

    /// What boot.sh and systemd said, and the journal's tail: printed when a test fails.
    fn diagnostics(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.0.join(name)).unwrap_or_default();
        let journal = if self.pid1 == 0 {
            String::new()
        } else {
            let out = self.run("journalctl --no-pager -n 150 -o short-monotonic");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        format!(
            "boot.sh's stderr:\n{}\nconsole:\n{}\njournal:\n{journal}",
            read("boot.stderr"),
            read("console")
        )
    }
}

impl Drop for SystemdBox {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.diagnostics());
        }
        // cgroup.kill (Linux 5.14) takes every process of the box at once; unshare's death
        // takes PID 1 (and with it the box) where that file is missing.
        let _ = std::fs::write(self.cgroup.join("cgroup.kill"), "1");
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
        remove_cgroup(&self.cgroup);
    }
}
