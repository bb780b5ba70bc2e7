//! A real single-member etcd (Debian's `etcd-server`, `/usr/bin/etcd`) on 127.0.0.1 with free
//! ports and its data under a temp dir, for the fleet tests: started, waited for until
//! `/health` answers, stopped and started again on the same data and ports, frozen and thawed
//! (SIGSTOP, SIGCONT), killed on drop. [`Etcd::start_tls`] starts one whose client endpoint is
//! `https://` with the server certificate of a [`Certs`] and client certificates required
//! (`--client-cert-auth`), plus a plain `http://` endpoint for the test's own calls.
//! [`Etcd::start`] prints a SKIP line and returns `None` when etcd is not installed. Also a raw
//! call to etcd's JSON gateway ([`gateway`]) for what the client under test must not be
//! trusted to do itself (enabling auth, compacting).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use warren::http_client::{BodyRead, HttpUrl, Request};

use super::certs::Certs;
use super::{free_port, TempDir};

pub const ETCD_BIN: &str = "/usr/bin/etcd";

/// A running (or stopped) etcd.
pub struct Etcd {
    /// `http://127.0.0.1:PORT`, or `https://` for [`Etcd::start_tls`].
    pub endpoint: String,
    /// `http://127.0.0.1:PORT` of the same etcd, without TLS: [`Etcd::endpoint`] unless TLS.
    pub plain_endpoint: String,
    client_port: u16,
    /// With TLS: the port of [`Etcd::plain_endpoint`].
    plain_port: Option<u16>,
    /// With TLS: the CA, the server certificate and its key.
    tls: Option<[PathBuf; 3]>,
    peer_port: u16,
    /// Holds the data dir (`data/`) and the log (`etcd.log`); removed on drop.
    dir: TempDir,
    /// `None` while stopped.
    child: Option<Child>,
}

impl Etcd {
    /// Start an etcd named after the test (`name` keeps temp dirs apart); `None` when etcd is
    /// not installed (with a SKIP line naming `test`).
    pub async fn start(test: &str) -> Option<Etcd> {
        Etcd::start_with(test, None).await
    }

    /// [`Etcd::start`] with TLS on its client endpoint, `https://127.0.0.1:PORT` (`certs`'s
    /// server certificate), and client certificates signed by `certs`'s CA required.
    pub async fn start_tls(test: &str, certs: &Certs) -> Option<Etcd> {
        let files = [
            certs.ca.clone(),
            certs.server_cert.clone(),
            certs.server_key.clone(),
        ];
        Etcd::start_with(test, Some(files)).await
    }

    async fn start_with(test: &str, tls: Option<[PathBuf; 3]>) -> Option<Etcd> {
        if !std::path::Path::new(ETCD_BIN).exists() {
            eprintln!("SKIP {test}: {ETCD_BIN} is missing (apt-get install etcd-server)");
            return None;
        }
        let client_port = free_port();
        let plain_port = tls.is_some().then(free_port);
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut etcd = Etcd {
            endpoint: format!("{scheme}://127.0.0.1:{client_port}"),
            plain_endpoint: format!("http://127.0.0.1:{}", plain_port.unwrap_or(client_port)),
            client_port,
            plain_port,
            tls,
            peer_port: free_port(),
            dir: TempDir::new(&format!("etcd-{test}")),
            child: None,
        };
        etcd.start_again().await;
        Some(etcd)
    }

    fn log(&self) -> PathBuf {
        self.dir.0.join("etcd.log")
    }

    /// Start etcd on the same data dir and ports, and wait until it answers.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "etcd is running already");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .unwrap();
        let client = &self.endpoint;
        let listen = match self.plain_port {
            Some(port) => format!("{client},http://127.0.0.1:{port}"),
            None => client.clone(),
        };
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut command = Command::new(ETCD_BIN);
        if let Some([ca, cert, key]) = &self.tls {
            command
                .arg(format!("--trusted-ca-file={}", ca.display()))
                .arg(format!("--cert-file={}", cert.display()))
                .arg(format!("--key-file={}", key.display()))
                .arg("--client-cert-auth");
        }
        let child = command
            .arg("--name=default")
            .arg(format!("--data-dir={}", self.dir.0.join("data").display()))
            .arg(format!("--listen-client-urls={listen}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=default={peer}"))
            // One member: it elects itself; short timers make a start (and restart) quick.
            .arg("--heartbeat-interval=25")
            .arg("--election-timeout=250")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("etcd starts");
        self.child = Some(child);
        self.wait_healthy(Duration::from_secs(30)).await;
    }

    /// Kill etcd (SIGKILL: no goodbye to its clients) and wait for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freeze etcd (SIGSTOP): its port still takes connections (the kernel accepts them) and
    /// nothing answers, as with a hung member. [`Etcd::thaw`] lets it go on.
    pub fn freeze(&self) {
        self.send(nix::sys::signal::Signal::SIGSTOP);
    }

    /// Let a frozen etcd go on (SIGCONT).
    pub fn thaw(&self) {
        self.send(nix::sys::signal::Signal::SIGCONT);
    }

    fn send(&self, signal: nix::sys::signal::Signal) {
        let child = self.child.as_ref().expect("etcd is running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, signal).expect("signal etcd");
    }

    async fn wait_healthy(&mut self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        let url = HttpUrl::parse(&format!("{}/health", self.plain_endpoint)).unwrap();
        loop {
            let answer = Request::new(hyper::Method::GET, &url)
                .read(BodyRead::Whole(4096))
                .send_within(Duration::from_secs(1))
                .await;
            if let Ok(answer) = answer {
                if answer.status.is_success() && answer.body.windows(6).any(|w| w == b"\"true\"") {
                    return;
                }
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!(
                    "etcd exited ({status}) before it was healthy:\n{}",
                    self.log_tail()
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "etcd not healthy within {within:?}:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The last lines of etcd's log, for a failure message.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// POST `body` to etcd's gateway at `path` (e.g. `/v3/auth/enable`) without the client under
/// test; returns the status and the body.
pub async fn gateway(endpoint: &str, path: &str, body: &str, token: Option<&str>) -> (u16, String) {
    let url = HttpUrl::parse(&format!("{endpoint}{path}")).unwrap();
    let mut request = Request::new(hyper::Method::POST, &url)
        .json(body.to_string())
        .read(BodyRead::Whole(1 << 20));
    if let Some(token) = token {
        request = request.authorization(hyper::header::HeaderValue::from_str(token).unwrap());
    }
    let answer = request
        .send_within(Duration::from_secs(10))
        .await
        .expect("etcd's gateway answers");
    (
        answer.status.as_u16(),
        String::from_utf8_lossy(&answer.body).into_owned(),
    )
}
