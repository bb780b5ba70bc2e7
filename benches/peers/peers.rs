//! The backends and the proxies under test: the echo server (this binary re-run), iperf3's
//! server, and warren, HAProxy and NGINX each started fresh from a config written here, as
//! user nobody, forwarding to those backends (or, for the storm, to its pool of backends by
//! least connections; or, for the tls workload, terminating TLS in front of the echo server).
//! Measures nothing itself.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::cli::Opts;
use crate::procs::{addr, as_nobody, free_port, raise_nofile, wait_listening, which, Proc};
use crate::tls::{TlsFiles, CIPHER_OPENSSL, CIPHER_RUSTLS};
use crate::{Balancer, Res};

pub const NGINX_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// The echo backend's process (`--echo-server`): prints its port, echoes every connection
/// until the harness closes its stdin.
pub fn echo_server(threads: usize) -> ! {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    raise_nofile();
    // Exit when the harness closes our stdin (or dies).
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        std::process::exit(0);
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .expect("echo runtime");
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("echo bind");
        println!("{}", listener.local_addr().expect("addr").port());
        let _ = std::io::stdout().flush();
        loop {
            match listener.accept().await {
                Ok((mut s, _)) => {
                    let _ = s.set_nodelay(true);
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if s.write_all(&buf[..n]).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    })
}

/// Where a target accepts the two kinds of traffic.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    /// Forwarded to the echo server.
    pub echo: u16,
    /// Forwarded to the iperf3 server.
    pub bulk: u16,
    /// Forwarded to the RabbitMQ node's AMQP port; only when the amqp workload runs.
    pub amqp: Option<u16>,
}

/// Start the echo backend (this binary with `--echo-server`) and read the port it printed.
pub fn start_echo(opts: &Opts, dir: &Path) -> Res<(Proc, u16)> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(exe);
    cmd.args(["--echo-server", "--threads", &opts.workers.to_string()]);
    cmd.process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    cmd.stderr(std::fs::File::create(dir.join("echo.log")).map_err(|e| e.to_string())?);
    let mut child = cmd.spawn().map_err(|e| format!("echo server: {e}"))?;
    let stdin = child.stdin.take();
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let proc_ = Proc {
        what: "echo server".into(),
        child,
        stdin,
        log: Some(dir.join("echo.log")),
    };
    let port = line
        .trim()
        .parse()
        .map_err(|_| format!("echo server printed {line:?}"))?;
    Ok((proc_, port))
}

/// Start `iperf3 -s` on a free port and wait until it listens.
pub fn start_iperf_server(dir: &Path, tag: &str) -> Res<(Proc, u16)> {
    let port = free_port()?;
    let mut cmd = Command::new(which("iperf3")?);
    cmd.args(["-s", "-B", "127.0.0.1", "-p", &port.to_string()]);
    let mut p = Proc::spawn(
        "iperf3 server",
        cmd,
        Some(dir.join(format!("iperf3-{tag}.log"))),
    )?;
    wait_listening(&mut p, &[port])?;
    Ok((p, port))
}

/// Write a proxy's config, readable by nobody.
fn write_file(path: &Path, text: &str) -> Res<()> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
        .map_err(|e| e.to_string())
}

/// A proxy that is up: its process group and where it listens.
pub struct Running {
    pub proc_: Proc,
    pub ports: Ports,
    /// warren's admin port, for /metrics.
    pub admin: Option<u16>,
}

/// One listener a proxy gets: its name, where it listens, and the backends it forwards to.
struct Forward<'a> {
    name: &'static str,
    listen: u16,
    backends: &'a [u16],
    /// Pick among the backends by least connections (the storm's pool); the other forwards
    /// have one backend.
    least_conn: bool,
    /// Terminate TLS 1.3 with this certificate, one cipher suite only (the tls workload).
    tls: Option<&'a TlsFiles>,
}

impl<'a> Forward<'a> {
    fn one(name: &'static str, listen: u16, backend: &'a u16) -> Forward<'a> {
        Forward {
            name,
            listen,
            backends: std::slice::from_ref(backend),
            least_conn: false,
            tls: None,
        }
    }
}

/// Start one proxy (fresh), as nobody, forwarding to the given backends, and wait until it listens.
pub fn start_proxy(
    t: Balancer,
    opts: &Opts,
    dir: &Path,
    backends: Ports,
    tag: &str,
) -> Res<Running> {
    let ports = Ports {
        echo: free_port()?,
        bulk: free_port()?,
        amqp: backends.amqp.map(|_| free_port()).transpose()?,
    };
    let mut forwards = vec![
        Forward::one("echo", ports.echo, &backends.echo),
        Forward::one("bulk", ports.bulk, &backends.bulk),
    ];
    if let (Some(port), Some(backend)) = (ports.amqp, &backends.amqp) {
        forwards.push(Forward::one("amqp", port, backend));
    }
    let (proc_, admin) = spawn_proxy(t, opts, dir, tag, &forwards)?;
    Ok(Running {
        proc_,
        ports,
        admin,
    })
}

/// Start one proxy (fresh), as nobody, with one listener that balances `backends` by least
/// connections; returns it and the listener's port once it listens.
pub fn start_storm_proxy(
    t: Balancer,
    opts: &Opts,
    dir: &Path,
    backends: &[u16],
    tag: &str,
) -> Res<(Proc, u16)> {
    let port = free_port()?;
    let forward = Forward {
        name: "storm",
        listen: port,
        backends,
        least_conn: true,
        tls: None,
    };
    let (proc_, _) = spawn_proxy(t, opts, dir, tag, &[forward])?;
    Ok((proc_, port))
}

/// Start one proxy (fresh), as nobody, with one listener that terminates TLS with `files` and
/// forwards plain to `echo`; returns it and the listener's port once it listens.
pub fn start_tls_proxy(
    t: Balancer,
    opts: &Opts,
    dir: &Path,
    echo: u16,
    files: &TlsFiles,
    tag: &str,
) -> Res<(Proc, u16)> {
    let port = free_port()?;
    let forward = Forward {
        tls: Some(files),
        ..Forward::one("tls", port, &echo)
    };
    let (proc_, _) = spawn_proxy(t, opts, dir, tag, &[forward])?;
    Ok((proc_, port))
}

/// Write `t`'s config for these forwards, start it and wait until it listens on each (and on
/// warren's admin port, returned).
fn spawn_proxy(
    t: Balancer,
    opts: &Opts,
    dir: &Path,
    tag: &str,
    forwards: &[Forward],
) -> Res<(Proc, Option<u16>)> {
    let log = dir.join(format!("{}-{tag}.log", t.name()));
    let mut admin = None;
    let cmd = match t {
        Balancer::Direct => unreachable!("direct has no proxy"),
        Balancer::Warren => {
            let a = free_port()?;
            admin = Some(a);
            warren_command(opts, dir, tag, a, forwards)?
        }
        Balancer::Haproxy => haproxy_command(opts.workers, dir, tag, forwards)?,
        Balancer::Nginx => nginx_command(opts.workers, dir, tag, forwards)?,
    };
    let mut proc_ = Proc::spawn(t.name(), cmd, Some(log))?;
    let mut wait_for: Vec<u16> = forwards.iter().map(|f| f.listen).collect();
    wait_for.extend(admin);
    wait_listening(&mut proc_, &wait_for)?;
    Ok((proc_, admin))
}

/// warren with an admin API on `admin` and one listener and pool per forward (`balance =
/// "least_conn"` for a least-connections forward; `[listener.tls]` for a TLS one).
fn warren_command(
    opts: &Opts,
    dir: &Path,
    tag: &str,
    admin: u16,
    forwards: &[Forward],
) -> Res<Command> {
    let conf = dir.join(format!("warren-{tag}.toml"));
    let mut text = format!("[admin]\nlisten = \"127.0.0.1:{admin}\"\n\n");
    for f in forwards {
        let (name, port) = (f.name, f.listen);
        write!(
            text,
            "[[listener]]\nname = \"{name}\"\nlisten = \"127.0.0.1:{port}\"\npool = \"{name}\"\n\
             connect_timeout = \"5s\"\nidle_timeout = \"120s\"\n\n"
        )
        .unwrap();
        if let Some(tls) = f.tls {
            write!(
                text,
                "[listener.tls]\ncert = \"{}\"\nkey = \"{}\"\nmin_version = \"1.3\"\n\
                 ciphers = [\"{CIPHER_RUSTLS}\"]\n\n",
                tls.cert.display(),
                tls.key.display()
            )
            .unwrap();
        }
        writeln!(text, "[pool.{name}]").unwrap();
        if f.least_conn {
            text.push_str("balance = \"least_conn\"\n");
        }
        text.push('\n');
        for (i, backend) in f.backends.iter().enumerate() {
            write!(
                text,
                "[[pool.{name}.backend]]\nname = \"{name}-{}\"\naddr = \"127.0.0.1:{backend}\"\n\n",
                i + 1
            )
            .unwrap();
        }
    }
    write_file(&conf, &text)?;
    let mut c = as_nobody(&opts.warren);
    c.args([
        "--log-level",
        "warn",
        "run",
        "--workers",
        &opts.workers.to_string(),
        "--config",
    ]);
    c.arg(&conf);
    Ok(c)
}

/// HAProxy in `mode tcp` with splice both ways, `n` threads, one `listen` per forward
/// (`balance leastconn` for a least-connections forward; `ssl crt` for a TLS one).
fn haproxy_command(n: usize, dir: &Path, tag: &str, forwards: &[Forward]) -> Res<Command> {
    let conf = dir.join(format!("haproxy-{tag}.cfg"));
    let mut text = format!(
        "global\n  nbthread {n}\n  maxconn 7500\n\n\
         defaults\n  mode tcp\n  maxconn 7500\n  timeout connect 5s\n  timeout client 120s\n  \
         timeout server 120s\n  option splice-request\n  option splice-response\n"
    );
    for f in forwards {
        write!(text, "\nlisten {}\n  bind 127.0.0.1:{}", f.name, f.listen).unwrap();
        if let Some(tls) = f.tls {
            write!(
                text,
                " ssl crt {} ssl-min-ver TLSv1.3 ciphersuites {CIPHER_OPENSSL}",
                tls.combined.display()
            )
            .unwrap();
        }
        text.push('\n');
        if f.least_conn {
            text.push_str("  balance leastconn\n");
        }
        for (i, backend) in f.backends.iter().enumerate() {
            writeln!(text, "  server {}{} 127.0.0.1:{backend}", f.name, i + 1).unwrap();
        }
    }
    write_file(&conf, &text)?;
    let mut c = as_nobody(&which("haproxy")?);
    c.arg("-db").arg("-f").arg(&conf);
    Ok(c)
}

/// NGINX `stream` with `proxy_half_close on`, `n` worker processes, one server per forward (and
/// an `upstream` with `least_conn` for a least-connections forward; TLS settings for a TLS one).
fn nginx_command(n: usize, dir: &Path, tag: &str, forwards: &[Forward]) -> Res<Command> {
    let conf = dir.join(format!("nginx-{tag}.conf"));
    let err = dir.join(format!("nginx-{tag}-error.log"));
    let mut text = format!(
        "load_module {NGINX_STREAM_MODULE};\nworker_processes {n};\nworker_rlimit_nofile 20000;\n\
         error_log {} warn;\nevents {{ worker_connections 9000; }}\n\
         stream {{\n  proxy_timeout 120s;\n  proxy_connect_timeout 5s;\n  proxy_half_close on;\n",
        err.display(),
    );
    for f in forwards {
        let port = f.listen;
        if f.least_conn {
            // The zone shares the connection counts between the worker processes.
            let name = f.name;
            write!(text, "  upstream {name} {{ least_conn; zone {name} 64k;").unwrap();
            for backend in f.backends {
                write!(text, " server 127.0.0.1:{backend};").unwrap();
            }
            writeln!(
                text,
                " }}\n  server {{ listen 127.0.0.1:{port}; proxy_pass {name}; }}"
            )
            .unwrap();
        } else {
            let backend = f.backends[0];
            let tls = f.tls.map(nginx_tls).unwrap_or_default();
            writeln!(
                text,
                "  server {{ listen 127.0.0.1:{port}{tls}; proxy_pass 127.0.0.1:{backend}; }}"
            )
            .unwrap();
        }
    }
    text.push_str("}\n");
    write_file(&conf, &text)?;
    let mut c = as_nobody(&which("nginx")?);
    c.arg("-e")
        .arg(&err)
        .arg("-c")
        .arg(&conf)
        .arg("-g")
        .arg(format!(
            "daemon off; pid {};",
            dir.join(format!("nginx-{tag}.pid")).display()
        ));
    Ok(c)
}

/// What follows `listen ADDR` in an NGINX stream server that terminates TLS 1.3 with `tls`,
/// one cipher suite only.
fn nginx_tls(tls: &TlsFiles) -> String {
    format!(
        " ssl; ssl_certificate {}; ssl_certificate_key {}; ssl_protocols TLSv1.3; \
         ssl_conf_command Ciphersuites {CIPHER_OPENSSL}",
        tls.cert.display(),
        tls.key.display()
    )
}

/// `warren_splice_pipes_leased` from warren's admin /metrics.
pub fn warren_pipes(admin: u16) -> Res<f64> {
    let mut s = TcpStream::connect_timeout(&addr(admin), Duration::from_secs(2))
        .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut body = String::new();
    s.read_to_string(&mut body).map_err(|e| e.to_string())?;
    body.lines()
        .find(|l| l.starts_with("warren_splice_pipes_leased"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| "no warren_splice_pipes_leased in /metrics".to_string())
}
