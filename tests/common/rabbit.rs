//! Real RabbitMQ clusters on loopback (through `scripts/rabbitmq.sh cluster`) and a small lapin
//! client, for the tests that run warren in front of a real cluster.
//!
//! Each node gets its own loopback address (127.X.Y.1, .2, ...) with the same AMQP and
//! management ports on every node, as on separate hosts: one `http://{host}:PORT/api/...` probe
//! template then reaches every node's management API.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

/// The package's server script; its absence means RabbitMQ is not installed.
pub const RABBITMQ_SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

/// Whether RabbitMQ is installed; prints a SKIP line for `test` when it is not. As root (CI runs
/// as root and `scripts/test.sh` installs it) a missing RabbitMQ fails the test instead, as
/// tests/probe.rs does: a silent skip there would pass the real-cluster tests untested.
pub fn available(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    check_available(test, Path::new(RABBITMQ_SERVER), root)
}

fn check_available(test: &str, server: &Path, root: bool) -> bool {
    if server.exists() {
        return true;
    }
    assert!(
        !root,
        "{test}: {} is missing: run `bash scripts/rabbitmq.sh install` (scripts/test.sh does)",
        server.display()
    );
    eprintln!(
        "SKIP {test}: {} is missing and installing it needs root: run \
         `bash scripts/rabbitmq.sh install` as root (scripts/test.sh does)",
        server.display()
    );
    false
}

#[test]
fn a_missing_rabbitmq_fails_as_root_and_skips_otherwise() {
    let missing = Path::new("/nonexistent/rabbitmq-server");
    assert!(!check_available("t", missing, false));
    let as_root = std::panic::catch_unwind(|| check_available("t", missing, true));
    let message = *as_root
        .expect_err("a missing RabbitMQ fails as root")
        .downcast::<String>()
        .unwrap();
    assert!(
        message.contains("/nonexistent/rabbitmq-server is missing"),
        "{message}"
    );
    let present = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    assert!(check_available("t", &present, true));
    assert!(check_available("t", &present, false));
}

fn script_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/rabbitmq.sh")
}

/// One node of a [`Cluster`].
#[derive(Debug, Clone)]
pub struct Node {
    /// The node's short name (`NAME@localhost`); tests use it as the warren backend name too.
    pub name: String,
    pub ip: Ipv4Addr,
    pub amqp: SocketAddr,
    pub mgmt: SocketAddr,
    pub dist: u16,
}

/// A cluster started by `scripts/rabbitmq.sh cluster`; stopped and removed on drop.
pub struct Cluster {
    pub dir: PathBuf,
    pub nodes: Vec<Node>,
}

/// Distinct /24 loopback networks for clusters of one test process.
static NETWORK: AtomicU32 = AtomicU32::new(0);

impl Cluster {
    /// Start `n` clustered nodes named `{tag}1..{tag}n`; `extra_conf` lines go to every node's
    /// rabbitmq.conf.
    pub fn start(tag: &str, n: usize, extra_conf: &[&str]) -> Cluster {
        Cluster::start_with(tag, n, extra_conf, &[], |_| Vec::new())
    }

    /// [`Cluster::start`] with `plugins` enabled besides management (e.g. `rabbitmq_stream`),
    /// and each node's own rabbitmq.conf lines from `node_conf` (given every node before any
    /// starts; one list per node, in order; fewer lists: the other nodes get none).
    pub fn start_with(
        tag: &str,
        n: usize,
        extra_conf: &[&str],
        plugins: &[&str],
        node_conf: impl FnOnce(&[Node]) -> Vec<Vec<String>>,
    ) -> Cluster {
        let net = NETWORK.fetch_add(1, Ordering::Relaxed) + (std::process::id() % 200) * 8;
        let (b2, b3) = ((10 + net / 250) as u8, (net % 250 + 1) as u8);
        let ips: Vec<Ipv4Addr> = (1..=n as u8)
            .map(|i| Ipv4Addr::new(127, b2, b3, i))
            .collect();
        let (amqp, mgmt) = (port_free_on(&ips), port_free_on(&ips));
        let dir =
            std::env::temp_dir().join(format!("warren-cluster-{}-{tag}-{net}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let nodes: Vec<Node> = ips
            .iter()
            .enumerate()
            .map(|(i, ip)| Node {
                name: format!("{tag}{}", i + 1),
                ip: *ip,
                amqp: SocketAddr::new(IpAddr::V4(*ip), amqp),
                mgmt: SocketAddr::new(IpAddr::V4(*ip), mgmt),
                dist: dist_port(),
            })
            .collect();
        let cluster = Cluster { dir, nodes };
        std::fs::create_dir_all(&cluster.dir).expect("create the cluster directory");
        for (node, lines) in cluster.nodes.iter().zip(node_conf(&cluster.nodes)) {
            let file = cluster.dir.join(format!("{}.conf", node.name));
            let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
            std::fs::write(&file, text).expect("write a node's own rabbitmq.conf lines");
        }
        let mut args = vec!["cluster".to_string(), cluster.dir.display().to_string()];
        for node in &cluster.nodes {
            args.push(format!(
                "{}:{}:{}:{}:{}",
                node.name, amqp, node.dist, mgmt, node.ip
            ));
        }
        if !extra_conf.is_empty() {
            args.push("--".into());
            args.extend(extra_conf.iter().map(|s| s.to_string()));
        }
        let started = std::time::Instant::now();
        cluster.script_with(&args, &[("RABBITMQ_SH_PLUGINS", plugins.join(","))]);
        eprintln!(
            "cluster of {n} node(s) up in {:.1}s",
            started.elapsed().as_secs_f64()
        );
        cluster
    }

    /// Run `scripts/rabbitmq.sh ARGS`; its stdout, or a panic with everything it printed.
    pub fn script(&self, args: &[String]) -> String {
        self.script_with(args, &[])
    }

    /// [`Cluster::script`] with environment variables set.
    fn script_with(&self, args: &[String], env: &[(&str, String)]) -> String {
        let out = Command::new("bash")
            .arg(script_path())
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("run scripts/rabbitmq.sh");
        assert!(
            out.status.success(),
            "scripts/rabbitmq.sh {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn node_command(&self, action: &str, name: &str) -> Vec<String> {
        vec![
            action.to_string(),
            name.to_string(),
            self.dir.display().to_string(),
        ]
    }

    /// kill -9 the node's Erlang VM: a crash, not a clean stop.
    pub fn kill(&self, name: &str) {
        self.script(&self.node_command("kill", name));
    }

    /// SIGSTOP the node's Erlang VM: it hangs with its sockets open ([`Cluster::thaw`] undoes it).
    pub fn freeze(&self, name: &str) {
        self.script(&self.node_command("freeze", name));
    }

    /// SIGCONT a frozen node.
    pub fn thaw(&self, name: &str) {
        self.script(&self.node_command("thaw", name));
    }

    pub fn stop_app(&self, name: &str) {
        self.script(&self.node_command("stop_app", name));
    }

    pub fn start_app(&self, name: &str) {
        self.script(&self.node_command("start_app", name));
    }

    /// `rabbitmqctl ARGS` against node `name`; its stdout.
    pub fn ctl(&self, name: &str, args: &[&str]) -> String {
        let mut all = self.node_command("ctl", name);
        all.extend(args.iter().map(|s| s.to_string()));
        self.script(&all)
    }

    /// `rabbitmq-upgrade ARGS` against node `name` (`drain`, `revive`); its stdout.
    pub fn upgrade(&self, name: &str, args: &[&str]) -> String {
        let mut all = self.node_command("upgrade", name);
        all.extend(args.iter().map(|s| s.to_string()));
        self.script(&all)
    }

    /// The cluster's client connections whose connection name starts with `prefix`, as
    /// `(host, peer_host)`: the address the client connected to (a node's own address, or the
    /// destination of a PROXY header) and the client's address as RabbitMQ sees it.
    pub fn connections(&self, prefix: &str) -> Vec<(String, String)> {
        let text = self.ctl(
            &self.nodes[0].name,
            &[
                "-q",
                "list_connections",
                "host",
                "peer_host",
                "client_properties",
                "--formatter",
                "json",
            ],
        );
        let rows: Vec<serde_json::Value> = serde_json::from_str(text.trim())
            .unwrap_or_else(|e| panic!("list_connections: {e}: {text}"));
        rows.iter()
            .filter(|row| {
                row["client_properties"]
                    .to_string()
                    .contains(&format!("\"{prefix}"))
            })
            .map(|row| (address(&row["host"]), address(&row["peer_host"])))
            .collect()
    }

    /// How many of [`Cluster::connections`] were made to node `name`'s address.
    pub fn connections_on(&self, name: &str, prefix: &str) -> usize {
        let ip = self
            .nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
            .ip
            .to_string();
        self.connections(prefix)
            .iter()
            .filter(|(host, _)| *host == ip)
            .count()
    }

    /// The shell command that restarts the RabbitMQ application of node `{name}` (for
    /// `warren ctl upgrade --run`).
    pub fn restart_app_command(&self) -> String {
        let script = script_path().display().to_string();
        let dir = self.dir.display().to_string();
        format!("bash {script} stop_app {{name}} {dir} && bash {script} start_app {{name}} {dir}")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script_path())
            .arg("cleanup")
            .arg(&self.dir)
            .output();
    }
}

/// An address as `rabbitmqctl --formatter json` prints it: a string, or an Erlang tuple of
/// octets shown as a list.
fn address(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(octets) => octets
            .iter()
            .map(|o| o.to_string())
            .collect::<Vec<_>>()
            .join("."),
        other => other.to_string(),
    }
}

/// Erlang distribution ports come from blocks below the kernel's ephemeral range
/// (`ip_local_port_range`, 32768-60999 by default), which no test binds with port 0: a dist
/// port picked there could be taken by some other process's outgoing connection before the node
/// starts, and a node that cannot bind it never boots. Each block holds the node's port and the
/// 10 ports `scripts/rabbitmq.sh` gives its rabbitmqctl right above it.
const DIST_BLOCKS: std::ops::Range<u32> = 20_000..32_000;
const DIST_BLOCK: u32 = 16;

/// A distribution port whose whole block is free on 127.0.0.1 and on every address right now.
/// The start block depends on the process and a counter, so concurrent test processes try
/// different blocks first.
fn dist_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let blocks = (DIST_BLOCKS.end - DIST_BLOCKS.start) / DIST_BLOCK;
    let seed = std::process::id().wrapping_mul(7919) + NEXT.fetch_add(1, Ordering::Relaxed) * 13;
    for i in 0..blocks {
        let first = DIST_BLOCKS.start + ((seed + i) % blocks) * DIST_BLOCK;
        let free = (first..first + 11).all(|port| {
            TcpListener::bind((Ipv4Addr::LOCALHOST, port as u16)).is_ok()
                && TcpListener::bind((Ipv4Addr::UNSPECIFIED, port as u16)).is_ok()
        });
        if free {
            return first as u16;
        }
    }
    panic!("no free block of 11 ports in {DIST_BLOCKS:?} for Erlang distribution");
}

/// A port that is free on every one of `ips` right now.
pub fn port_free_on(ips: &[Ipv4Addr]) -> u16 {
    for _ in 0..100 {
        let first = TcpListener::bind((ips[0], 0)).expect("bind a loopback port");
        let port = first.local_addr().unwrap().port();
        if ips[1..]
            .iter()
            .all(|ip| TcpListener::bind((*ip, port)).is_ok())
        {
            return port;
        }
    }
    panic!("no port free on all of {ips:?}");
}

// ---------------------------------------------------------------------------------------------
// A lapin client

/// `amqp://guest:guest@ADDR/%2f` (the test nodes set `loopback_users = none`).
pub fn uri(addr: SocketAddr) -> String {
    format!("amqp://guest:guest@{addr}/%2f?heartbeat=10")
}

/// Connect through `addr` with a connection name RabbitMQ lists (see [`Cluster::connections`]).
pub async fn connect(addr: SocketAddr, name: &str) -> lapin::Result<Connection> {
    Connection::connect(
        &uri(addr),
        ConnectionProperties::default().with_connection_name(name.into()),
    )
    .await
}

/// Connect to `addr` from the local address `source` (a loopback address other than
/// 127.0.0.1 shows whose address RabbitMQ sees).
pub async fn connect_from(
    source: IpAddr,
    addr: SocketAddr,
    name: &str,
) -> lapin::Result<Connection> {
    let runtime = lapin::runtime::default_runtime()?;
    Connection::connector(
        uri(addr).parse().expect("valid uri"),
        runtime,
        async move |_uri, _runtime| {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(source, 0))?;
            let stream = socket.connect(addr).await?;
            Ok(lapin::AsyncTcpStream::Plain(async_compat::Compat::new(
                stream,
            )))
        },
        ConnectionProperties::default().with_connection_name(name.into()),
    )
    .await
}

/// Declare the durable queue `name` (a quorum queue when `quorum`).
pub async fn declare(channel: &Channel, name: &str, quorum: bool) -> lapin::Result<()> {
    let mut args = FieldTable::default();
    if quorum {
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
    }
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await
        .map(|_| ())
}

/// Publish `payload` persistently to `queue` and wait for the broker's confirm (the channel
/// must be in confirm mode): Ok(true) on ack, Ok(false) on nack.
pub async fn publish_confirmed(
    channel: &Channel,
    queue: &str,
    payload: &[u8],
) -> lapin::Result<bool> {
    let confirm = channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            payload,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await?
        .await?;
    Ok(confirm.is_ack())
}

/// A channel in confirm mode.
pub async fn confirm_channel(connection: &Connection) -> lapin::Result<Channel> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// Start consuming `queue` with manual acks (prefetch `prefetch`).
pub async fn consume(
    channel: &Channel,
    queue: &str,
    prefetch: u16,
) -> lapin::Result<lapin::Consumer> {
    channel
        .basic_qos(prefetch, lapin::options::BasicQosOptions::default())
        .await?;
    channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// Ack one delivery.
pub async fn ack(delivery: &lapin::message::Delivery) -> lapin::Result<()> {
    delivery.ack(BasicAckOptions::default()).await.map(|_| ())
}

/// Time to wait for one message or one confirm before a test calls the client stuck.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);
