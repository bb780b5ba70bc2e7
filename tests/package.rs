//! warren as a release: `scripts/package.sh deb` packs the test build into a .deb, which is
//! installed on this machine with dpkg (as root; a SKIP line otherwise, or when the machine
//! has a warren of its own), checked as installed (files, the `warren` user, the conffiles,
//! `warren check` of the installed config run as that user, `systemd-analyze verify` of the
//! installed units), removed (the edited config stays), purged (everything goes), and left as
//! it was found, by a guard also when an assertion fails. Nothing is started: dpkg runs the
//! maintainer scripts, which start no service on a first install.
//!
//! And `scripts/package.sh static`: the glibc-static binary (dev profile, to save CI minutes;
//! the README's release artifact is the same build with the release profile) is statically
//! linked, runs, and resolves host names: `localhost`, and (as root, in a network and mount
//! namespace of its own with a DNS server played by this test) a name from /etc/hosts and one
//! only DNS knows. glibc's `files` and `dns` lookups are part of libc since 2.34, so a static
//! binary needs no NSS module for them.
#![cfg(target_os = "linux")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{tool_or_skip, TempDir};

const WARREN: &str = env!("CARGO_BIN_EXE_warren");
/// dpkg and the maintainer scripts, strip of a debug binary, on a busy 2-core machine.
const PACKAGING: Duration = Duration::from_secs(180);
/// A cold static build of warren and its dependencies (dev profile) on 2 cores.
const STATIC_BUILD: Duration = Duration::from_secs(1200);
const SHORT: Duration = Duration::from_secs(30);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Runs `command` with its output in files (a pipe could fill and stall it), killing it and
/// failing the test after `within`.
fn run(command: &mut Command, within: Duration) -> Output {
    let dir = tempfile_dir();
    let (out_path, err_path) = (dir.join("stdout"), dir.join("stderr"));
    let mut child = command
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{command:?} took longer than {within:?}; stderr:\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = Output {
        status,
        stdout: std::fs::read(&out_path).unwrap(),
        stderr: std::fs::read(&err_path).unwrap(),
    };
    let _ = std::fs::remove_dir_all(&dir);
    output
}

/// A fresh directory for one command's output.
fn tempfile_dir() -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "warren-test-{}-run-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `run`, asserting success; returns stdout.
fn run_ok(command: &mut Command, within: Duration) -> String {
    let out = run(command, within);
    assert!(
        out.status.success(),
        "{command:?}: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The last line scripts/package.sh prints on stdout: the artifact it built.
fn package(what: &str, out_dir: &Path, env: &[(&str, &str)]) -> PathBuf {
    let stdout = run_ok(
        Command::new("bash")
            .arg(repo().join("scripts/package.sh"))
            .arg(what)
            .env("WARREN_PACKAGE_OUT", out_dir)
            .envs(env.iter().copied()),
        if what == "static" {
            STATIC_BUILD
        } else {
            PACKAGING
        },
    );
    let artifact = PathBuf::from(
        stdout
            .lines()
            .last()
            .expect("package.sh names its artifact"),
    );
    assert!(artifact.is_file(), "{} was not built", artifact.display());
    artifact
}

/// What of warren is on this machine: a package (in any state), its user or group, its
/// directories. The test only installs where there is none, and leaves none behind.
fn warren_traces() -> Vec<String> {
    let mut found = Vec::new();
    let status = Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Abbrev}", "warren"])
        .output()
        .expect("run dpkg-query");
    if status.status.success() && !String::from_utf8_lossy(&status.stdout).starts_with("un") {
        found.push(format!(
            "package warren ({})",
            String::from_utf8_lossy(&status.stdout).trim()
        ));
    }
    for db in ["passwd", "group"] {
        if getent(db, "warren").is_some() {
            found.push(format!("{db} entry warren"));
        }
    }
    for dir in ["/etc/warren", "/var/lib/warren", "/usr/lib/warren"] {
        if Path::new(dir).exists() {
            found.push(dir.to_owned());
        }
    }
    found
}

/// The `getent DB KEY` line, split on ':'.
fn getent(db: &str, key: &str) -> Option<Vec<String>> {
    let out = Command::new("getent").args([db, key]).output().ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .split(':')
            .map(str::to_owned)
            .collect()
    })
}

/// Puts the machine back as the test found it (no warren at all), also when the test panics.
struct PurgeOnDrop;

impl Drop for PurgeOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("dpkg")
            .args(["--purge", "warren"])
            .stdout(Stdio::null())
            .output();
        // Whatever a broken postrm left: the test checked there was none of it before.
        if getent("passwd", "warren").is_some() {
            let _ = Command::new("userdel").arg("warren").output();
        }
        if getent("group", "warren").is_some() {
            let _ = Command::new("groupdel").arg("warren").output();
        }
        for dir in ["/etc/warren", "/var/lib/warren", "/usr/lib/warren"] {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn mode_of(path: &str) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .permissions()
        .mode()
        & 0o7777
}

fn owner_of(path: &str) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    (meta.uid(), meta.gid())
}

/// The installed package as the test expects it: files, user, conffiles, config, units.
fn check_installed() {
    for (path, mode) in [
        ("/usr/bin/warren", 0o755),
        ("/usr/lib/systemd/system/warren.service", 0o644),
        ("/usr/lib/systemd/system/warren.socket", 0o644),
        ("/usr/lib/systemd/system/warren-switch@.path", 0o644),
        ("/usr/lib/systemd/system/warren-switch@.service", 0o644),
        ("/usr/lib/warren/warren-switch", 0o755),
        ("/etc/warren/warren.toml", 0o640),
        ("/etc/warren/hooks/failover.sh", 0o755),
        ("/etc/warren/hooks/page.sh", 0o755),
        ("/usr/share/doc/warren/copyright", 0o644),
        (
            "/usr/share/doc/warren/examples/active-passive-hooks.toml",
            0o644,
        ),
        ("/var/lib/warren", 0o755),
    ] {
        assert_eq!(mode_of(path), mode, "mode of {path}");
    }
    let user = getent("passwd", "warren").expect("postinst creates the user warren");
    let group = getent("group", "warren").expect("postinst creates the group warren");
    let (uid, gid): (u32, u32) = (user[2].parse().unwrap(), group[2].parse().unwrap());
    assert!(uid < 1000, "warren is a system user: {user:?}");
    assert_eq!(user[3], group[2], "warren's primary group is warren");
    assert_eq!(user[5], "/var/lib/warren");
    assert_eq!(user[6], "/usr/sbin/nologin");
    assert_eq!(owner_of("/var/lib/warren"), (uid, gid));
    assert_eq!(owner_of("/etc/warren/warren.toml"), (0, gid));

    let conffiles = run_ok(
        Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "warren"]),
        SHORT,
    );
    for file in [
        "/etc/warren/warren.toml",
        "/etc/warren/hooks/failover.sh",
        "/etc/warren/hooks/page.sh",
    ] {
        assert!(
            conffiles
                .lines()
                .any(|l| l.trim().starts_with(&format!("{file} "))),
            "{file} is not a conffile:\n{conffiles}"
        );
    }

    let version = run_ok(Command::new("/usr/bin/warren").arg("--version"), SHORT);
    assert_eq!(
        version.trim(),
        concat!("warren ", env!("CARGO_PKG_VERSION"))
    );
    // As the service runs it: the user warren must be able to read its config.
    if let Some(setpriv) = tool_or_skip("setpriv", "deb_installs_checks_and_purges") {
        let checked = run_ok(
            Command::new(setpriv)
                .args(["--reuid=warren", "--regid=warren", "--init-groups", "--"])
                .args(["/usr/bin/warren", "check", "--config"])
                .arg("/etc/warren/warren.toml"),
            SHORT,
        );
        assert!(checked.contains("/etc/warren/warren.toml: ok"), "{checked}");
    }
    verify_installed_units();
}

/// `systemd-analyze verify` of the units as installed (paths under /usr, User=warren).
fn verify_installed_units() {
    let Some(tool) = tool_or_skip("systemd-analyze", "deb_installs_checks_and_purges") else {
        return;
    };
    let units = Path::new("/usr/lib/systemd/system");
    let service = std::fs::read_to_string(units.join("warren.service")).unwrap();
    for line in [
        "ExecStart=/usr/bin/warren run --config /etc/warren/warren.toml",
        "User=warren",
    ] {
        assert!(
            service.lines().any(|l| l == line),
            "installed unit lacks {line}"
        );
    }
    assert!(!service.contains("/usr/local/"), "{service}");
    let out = run(
        Command::new(tool)
            .args(["verify", "--man=no"])
            .arg(units.join("warren.socket"))
            .arg(units.join("warren.service"))
            .arg(units.join("warren-switch@passive-frontends.target.path"))
            .arg(units.join("warren-switch@passive-frontends.target.service")),
        SHORT,
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let ours: Vec<&str> = text.lines().filter(|l| l.contains("warren")).collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify: {}\n{text}",
        out.status
    );
}

#[test]
fn deb_installs_checks_and_purges() {
    const TEST: &str = "deb_installs_checks_and_purges";
    if !is_root() {
        eprintln!("SKIP {TEST}: installing a package needs root (CI runs the tests as root)");
        return;
    }
    for tool in ["dpkg", "dpkg-deb", "objdump", "strip", "adduser"] {
        if tool_or_skip(tool, TEST).is_none() {
            return;
        }
    }
    let traces = warren_traces();
    if !traces.is_empty() {
        eprintln!("SKIP {TEST}: this machine has a warren of its own, left alone: {traces:?}");
        return;
    }
    let dir = TempDir::new("package");
    let deb = package("deb", &dir.0, &[("WARREN_PACKAGE_BINARY", WARREN)]);
    assert_eq!(
        deb.file_name().unwrap().to_str().unwrap(),
        format!("warren_{}_amd64.deb", env!("CARGO_PKG_VERSION"))
    );

    let _purge = PurgeOnDrop;
    run_ok(Command::new("dpkg").arg("-i").arg(&deb), PACKAGING);
    check_installed();
    // Again, as an upgrade to the same version runs it: the user exists, nothing fails.
    run_ok(Command::new("dpkg").arg("-i").arg(&deb), PACKAGING);
    check_installed();

    // An operator's edit survives a remove (conffile); the state directory and user too.
    let edited = std::fs::read_to_string("/etc/warren/warren.toml").unwrap() + "# edited\n";
    std::fs::write("/etc/warren/warren.toml", &edited).unwrap();
    std::fs::write("/var/lib/warren/state.json", "{}").unwrap();
    run_ok(Command::new("dpkg").args(["-r", "warren"]), PACKAGING);
    assert!(!Path::new("/usr/bin/warren").exists());
    assert!(!Path::new("/usr/lib/systemd/system/warren.service").exists());
    assert_eq!(
        std::fs::read_to_string("/etc/warren/warren.toml").unwrap(),
        edited
    );
    assert!(getent("passwd", "warren").is_some());

    run_ok(Command::new("dpkg").args(["--purge", "warren"]), PACKAGING);
    let left = warren_traces();
    assert!(left.is_empty(), "purge left {left:?}");
}

#[test]
fn static_binary_is_static_runs_and_resolves_host_names() {
    const TEST: &str = "static_binary_is_static_runs_and_resolves_host_names";
    for tool in ["file", "strip", "ldd"] {
        if tool_or_skip(tool, TEST).is_none() {
            return;
        }
    }
    let dir = TempDir::new("static");
    let binary = package("static", &dir.0, &[("WARREN_PACKAGE_PROFILE", "dev")]);
    assert_eq!(
        binary.file_name().unwrap().to_str().unwrap(),
        format!("warren-{}-x86_64-linux-static", env!("CARGO_PKG_VERSION"))
    );
    let file = run_ok(Command::new("file").arg("-b").arg(&binary), SHORT);
    assert!(
        file.contains("statically linked") || file.contains("static-pie linked"),
        "{file}"
    );
    // ldd names no library (glibc's ldd says "statically linked" or "not a dynamic
    // executable", and exits non-zero for the latter).
    let ldd = run(Command::new("ldd").arg(&binary), SHORT);
    let ldd = String::from_utf8_lossy(&ldd.stdout) + String::from_utf8_lossy(&ldd.stderr);
    assert!(!ldd.contains(".so"), "{ldd}");

    let version = run_ok(Command::new(&binary).arg("--version"), SHORT);
    assert_eq!(
        version.trim(),
        concat!("warren ", env!("CARGO_PKG_VERSION"))
    );
    // Host names are resolved at load (getaddrinfo): `localhost` from /etc/hosts.
    let config = dir.0.join("named.toml");
    std::fs::write(
        &config,
        "[[listener]]\nname = \"amqp\"\nlisten = \"127.0.0.1:5672\"\npool = \"rabbitmq\"\n\n\
         [pool.rabbitmq]\n\n[[pool.rabbitmq.backend]]\nname = \"rabbit-a\"\n\
         addr = \"localhost:5673\"\n",
    )
    .unwrap();
    let checked = run_ok(
        Command::new(&binary)
            .arg("check")
            .arg("--config")
            .arg(&config),
        SHORT,
    );
    assert!(checked.contains(": ok: 1 listener"), "{checked}");
    if is_root() {
        resolves_from_hosts_and_dns(&binary, &dir.0);
    } else {
        eprintln!("SKIP {TEST} (DNS part): a private network namespace needs root");
    }
}

/// Names a static binary must resolve: one from /etc/hosts, one only DNS knows.
const HOSTS_NAME: &str = "rabbit-hosts.warren.test";
const DNS_NAME: &str = "rabbit-dns.warren.test";

/// `warren check` (of `binary`) resolves a name from /etc/hosts and one from DNS, and a name
/// neither knows is an error naming it. In a network and mount namespace of its own, so that
/// the test's hosts, nsswitch.conf and resolv.conf (nameserver 127.0.0.1) are bind-mounted for
/// it alone, and the test's DNS server takes port 53 of a loopback no one else uses.
fn resolves_from_hosts_and_dns(binary: &Path, dir: &Path) {
    for tool in ["unshare", "ip", "mount"] {
        if tool_or_skip(tool, "static binary DNS").is_none() {
            return;
        }
    }
    let etc = [
        (
            "hosts",
            format!("127.0.0.1 localhost\n127.0.0.9 {HOSTS_NAME}\n"),
        ),
        ("nsswitch.conf", "hosts: files dns\n".to_owned()),
        (
            "resolv.conf",
            "nameserver 127.0.0.1\noptions timeout:2 attempts:2\n".to_owned(),
        ),
    ];
    let mut script = String::from("set -e\n");
    for (name, text) in &etc {
        std::fs::write(dir.join(name), text).unwrap();
        script += &format!("mount --bind '{}' /etc/{name}\n", dir.join(name).display());
    }
    let config = |name: &str| {
        let path = dir.join(format!("{name}.toml"));
        let backend = |n: &str, addr: &str| {
            format!("[[pool.rabbitmq.backend]]\nname = \"{n}\"\naddr = \"{addr}\"\n\n")
        };
        let text = "[[listener]]\nname = \"amqp\"\nlisten = \"127.0.0.1:5672\"\n\
                    pool = \"rabbitmq\"\n\n[pool.rabbitmq]\n\n"
            .to_owned()
            + &backend("rabbit-a", &format!("{HOSTS_NAME}:5673"))
            + &backend("rabbit-b", &format!("{name}:5674"));
        std::fs::write(&path, text).unwrap();
        path
    };
    let (good, bad) = (config(DNS_NAME), config("unknown.warren.test"));
    let bin = binary.display();
    script += &format!(
        "'{bin}' check --config '{}'\nif '{bin}' check --config '{}'; then exit 3; fi\n",
        good.display(),
        bad.display()
    );
    let (out, asked) = in_network_namespace_with_dns(&script);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    let text = format!("{out:?}\nstdout:\n{stdout}\nstderr:\n{stderr}\nDNS questions: {asked:?}");
    assert!(out.status.success(), "{text}");
    assert!(
        stdout.contains(": ok: 1 listener, 1 pool, 2 backends"),
        "{text}"
    );
    assert!(
        stderr.contains("cannot resolve host \"unknown.warren.test\""),
        "{text}"
    );
    assert!(asked.iter().any(|q| q == DNS_NAME), "{text}");
    assert!(
        !asked.iter().any(|q| q == HOSTS_NAME),
        "/etc/hosts answers first: {text}"
    );
}

/// Runs `script` with `unshare --mount sh -c` in a new network namespace whose loopback has a
/// DNS server on 127.0.0.1:53 that knows [`DNS_NAME`]; returns its output and the names the
/// server was asked for. On a thread of its own: a network namespace belongs to a thread, and
/// the processes it starts are born in it.
fn in_network_namespace_with_dns(script: &str) -> (Output, Vec<String>) {
    let script = script.to_owned();
    std::thread::spawn(move || {
        // SAFETY: unshare has no memory-safety preconditions; CLONE_NEWNET moves only the
        // calling thread into a new network namespace (the harness's other threads stay put).
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "unshare: {}", std::io::Error::last_os_error());
        run_ok(Command::new("ip").args(["link", "set", "lo", "up"]), SHORT);
        let dns = std::net::UdpSocket::bind("127.0.0.1:53").expect("port 53 in the namespace");
        dns.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let dir = tempfile_dir();
        let mut child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("stdout")).unwrap())
            .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
            .spawn()
            .expect("run unshare");
        let (mut asked, deadline) = (Vec::new(), Instant::now() + SHORT);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the namespace script took longer than {SHORT:?}; asked {asked:?}");
            }
            let mut buf = [0u8; 512];
            if let Ok((n, from)) = dns.recv_from(&mut buf) {
                if let Some((name, reply)) = dns_reply(&buf[..n]) {
                    asked.push(name);
                    let _ = dns.send_to(&reply, from);
                }
            }
        };
        let out = Output {
            status,
            stdout: std::fs::read(dir.join("stdout")).unwrap(),
            stderr: std::fs::read(dir.join("stderr")).unwrap(),
        };
        let _ = std::fs::remove_dir_all(&dir);
        (out, asked)
    })
    .join()
    .expect("the namespace thread")
}

/// The question's name and the answer to a DNS query: [`DNS_NAME`] is 127.0.0.10 (an A
/// record; no AAAA), any other name does not exist. Just enough DNS for glibc's stub resolver.
fn dns_reply(query: &[u8]) -> Option<(String, Vec<u8>)> {
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = *query.get(at)? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        labels.push(std::str::from_utf8(query.get(at..at + len)?).ok()?);
        at += len;
    }
    let qtype = u16::from_be_bytes([*query.get(at)?, *query.get(at + 1)?]);
    let name = labels.join(".").to_ascii_lowercase();
    let known = name == DNS_NAME;
    // Header: the query's id; QR, AA and the query's RD; RA and NOERROR or NXDOMAIN; one
    // question, the answers, no other records. Then the question as asked.
    let mut reply = query.get(..at + 4)?.to_vec();
    reply[2] = 0x84 | (query[2] & 0x01);
    reply[3] = if known { 0x80 } else { 0x83 };
    let answers: u16 = (known && qtype == 1).into();
    reply[4..6].copy_from_slice(&1u16.to_be_bytes());
    reply[6..8].copy_from_slice(&answers.to_be_bytes());
    reply[8..12].fill(0);
    if answers == 1 {
        // The name (a pointer to the question's), A, IN, TTL 60, 4 bytes: 127.0.0.10.
        reply.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 10]);
    }
    Some((name, reply))
}
