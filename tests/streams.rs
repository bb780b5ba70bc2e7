//! RabbitMQ Streams through warren (issue 20): a two-node cluster with the `rabbitmq_stream`
//! plugin behind `[pool.NAME.per_backend_listeners]`, driven by a real stream client
//! (`rabbitmq-stream-client`). The nodes' `stream.advertised_host`/`advertised_port` lines come
//! from `warren check --rabbitmq-config`, so the client, given only warren's balanced listener,
//! follows the stream metadata to warren's per-backend listeners and never learns a node's own
//! address. A stream led by each node is written and read back; draining a node makes its
//! listener refuse new connections (closed at once, `no_backend`) and close the open ones at
//! the deadline; a reload without the section removes the listeners, one with it adds them.
//! Skipped with a SKIP line when RabbitMQ is missing.

mod common;
#[allow(dead_code)]
#[path = "common/rabbit.rs"]
mod rabbit;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use rabbitmq_stream_client::types::{Message, OffsetSpecification};
use rabbitmq_stream_client::{Client, ClientOptions, Environment};
use tokio::io::AsyncReadExt;

use common::{free_port, quick, run_ctl, wait_for, TempDir, Warren, WARREN_BIN};
use rabbit::{Cluster, Node};

/// Every step of a stream client is bounded by this.
const STEP: Duration = Duration::from_secs(20);

/// warren's ports, picked before the nodes start (they advertise two of them).
struct Ports {
    admin: u16,
    balanced: u16,
    /// Each node's per-backend listener, in node order.
    own: [u16; 2],
}

/// The warren config: the balanced listener `streams`, each node as a backend at its stream
/// port with its own listener (`listener_port`), on 127.0.0.1 (advertised as is).
fn warren_toml(ports: &Ports, nodes: &[Node], stream_port: u16, per_backend: bool) -> String {
    let mut toml = format!(
        "[admin]\nlisten = \"127.0.0.1:{}\"\n\n[[listener]]\nname = \"streams\"\n\
         listen = \"127.0.0.1:{}\"\npool = \"streams\"\nconnect_timeout = \"2s\"\n\n\
         [pool.streams]\n",
        ports.admin, ports.balanced
    );
    for (node, own) in nodes.iter().zip(ports.own) {
        toml += &format!(
            "\n[[pool.streams.backend]]\nname = \"{}\"\naddr = \"{}:{stream_port}\"\n",
            node.name, node.ip
        );
        if per_backend {
            toml += &format!("listener_port = {own}\n");
        }
    }
    if per_backend {
        toml += "\n[pool.streams.per_backend_listeners]\nlisten = \"127.0.0.1\"\n\
                 connect_timeout = \"2s\"\n";
    }
    toml
}

/// `warren check --config FILE --rabbitmq-config`: its stdout, split into each node's lines.
fn rabbitmq_config(file: &Path) -> (String, HashMap<String, Vec<String>>) {
    let out = std::process::Command::new(WARREN_BIN)
        .args(["check", "--config"])
        .arg(file)
        .arg("--rabbitmq-config")
        .output()
        .expect("run warren check");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "warren check --rabbitmq-config: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut nodes = HashMap::new();
    for block in stdout.split("\n\n") {
        let lines: Vec<String> = block.lines().map(str::to_string).collect();
        let name = lines[0]
            .strip_prefix("# node ")
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("a block starts with `# node NAME`: {block}"));
        nodes.insert(name.to_string(), lines);
    }
    (stdout, nodes)
}

async fn environment(port: u16) -> Environment {
    let built = Environment::builder().host("127.0.0.1").port(port).build();
    tokio::time::timeout(STEP, built)
        .await
        .expect("the environment connects in time")
        .unwrap_or_else(|e| panic!("stream environment through 127.0.0.1:{port}: {e:?}"))
}

/// Where the stream's leader and replicas are, as a node tells a client (through `port`).
async fn metadata(port: u16, stream: &str) -> (SocketAddr, Vec<SocketAddr>) {
    let options = ClientOptions::builder()
        .host("127.0.0.1")
        .port(port)
        .build();
    let client = Client::connect(options).await.expect("stream client");
    let all = client
        .metadata(vec![stream.to_string()])
        .await
        .expect("metadata");
    let meta = &all[stream];
    let addr = |host: &str, port: u32| -> SocketAddr {
        format!("{host}:{port}").parse().expect("an IP and a port")
    };
    let leader = addr(&meta.leader.host, meta.leader.port);
    let replicas = meta
        .replicas
        .iter()
        .map(|r| addr(&r.host, r.port))
        .collect();
    let _ = client.close().await;
    (leader, replicas)
}

/// Client connections accepted so far by warren's listener `name`.
fn accepted(warren: &Warren, name: &str) -> f64 {
    warren.metric_or_zero(&format!(
        "warren_listener_connections_total{{listener=\"{name}\"}}"
    ))
}

/// Every listener's accepted connections: the balanced one, then each node's.
fn counts(warren: &Warren, own: &[String]) -> Vec<f64> {
    let mut all = vec![accepted(warren, "streams")];
    all.extend(own.iter().map(|name| accepted(warren, name)));
    all
}

/// Publish `n` messages to `stream` through warren's balanced listener and read them back;
/// the counts of new connections on (balanced, node 1's, node 2's) listeners for the producer,
/// then for the consumer.
async fn write_and_read(
    warren: &Warren,
    env: &Environment,
    stream: &str,
    own: &[String],
    n: usize,
) -> (Vec<f64>, Vec<f64>) {
    let before = counts(warren, own);
    let producer = tokio::time::timeout(STEP, env.producer().build(stream))
        .await
        .expect("producer in time")
        .expect("producer");
    let after_producer = counts(warren, own);
    let messages = (0..n)
        .map(|i| {
            Message::builder()
                .body(format!("{stream}-{i}").into_bytes())
                .build()
        })
        .collect();
    let confirmed = tokio::time::timeout(STEP, producer.batch_send_with_confirm(messages))
        .await
        .expect("confirms in time")
        .expect("publish");
    assert_eq!(confirmed.len(), n);
    assert!(
        confirmed.iter().all(|c| c.confirmed()),
        "every message confirmed"
    );
    let mut consumer = tokio::time::timeout(
        STEP,
        env.consumer()
            .offset(OffsetSpecification::First)
            .build(stream),
    )
    .await
    .expect("consumer in time")
    .expect("consumer");
    let after_consumer = counts(warren, own);
    for i in 0..n {
        let delivery = tokio::time::timeout(STEP, consumer.next())
            .await
            .expect("a delivery in time")
            .expect("the consumer goes on")
            .expect("a delivery");
        let body = delivery.message().data().expect("a body").to_vec();
        assert_eq!(body, format!("{stream}-{i}").into_bytes(), "in order");
    }
    let _ = consumer.handle().close().await;
    let _ = producer.close().await;
    let diff = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x - y).collect::<Vec<_>>();
    (
        diff(&after_producer, &before),
        diff(&after_consumer, &after_producer),
    )
}

/// Connect to a per-backend listener: closed at once (EOF, or a reset) by a listener whose
/// node is drained.
async fn closed_at_once(port: u16) -> bool {
    let Ok(mut socket) = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await else {
        return false;
    };
    let mut buf = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(2), socket.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_clients_reach_each_leader_through_its_nodes_own_listener() {
    if !rabbit::available("streams") {
        return;
    }
    let started = Instant::now();
    let dir = TempDir::new("streams");
    let file = dir.0.join("warren.toml");
    let ports = Ports {
        admin: free_port(),
        balanced: free_port(),
        own: [free_port(), free_port()],
    };
    let mut printed = String::new();
    let mut stream_port = 0;
    let cluster = Cluster::start_with("st", 2, &[], &["rabbitmq_stream"], |nodes| {
        let ips: Vec<Ipv4Addr> = nodes.iter().map(|n| n.ip).collect();
        stream_port = rabbit::port_free_on(&ips);
        std::fs::write(&file, warren_toml(&ports, nodes, stream_port, true)).unwrap();
        let (stdout, mut lines) = rabbitmq_config(&file);
        printed = stdout;
        nodes
            .iter()
            .map(|node| {
                let mut conf = vec![format!(
                    "stream.listeners.tcp.1 = {}:{stream_port}",
                    node.ip
                )];
                conf.extend(lines.remove(&node.name).expect("a block per node"));
                conf
            })
            .collect()
    });
    let names: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
    // What the command printed, and so what each node was given.
    for (node, own) in cluster.nodes.iter().zip(ports.own) {
        let block = format!(
            "# node {0} ({1}:{stream_port}): pool streams, backend {0}, through warren's \
             listener streams/{0} on 127.0.0.1:{own}\nstream.advertised_host = 127.0.0.1\n\
             stream.advertised_port = {own}\n",
            node.name, node.ip
        );
        assert!(printed.contains(&block), "{block} in:\n{printed}");
    }
    let config = warren::config::load(&file).expect("the config loads");
    let options = warren::server::Options {
        config_path: Some(file.clone()),
        ..quick()
    };
    let warren = Warren::start(config, options);
    let admin = warren.admin.expect("admin API");
    let own: Vec<String> = names.iter().map(|n| format!("streams/{n}")).collect();

    // Each stream created through its leader-to-be's own listener: RabbitMQ's default
    // queue_leader_locator (client-local) puts the leader on the node the client is on.
    for (name, port) in names.iter().zip(ports.own) {
        let env = environment(port).await;
        let stream = format!("on-{name}");
        let created = env.stream_creator().create(&stream);
        tokio::time::timeout(STEP, created)
            .await
            .expect("created in time")
            .expect("stream created");
    }
    // The metadata names warren only: each leader at its node's listener, the replica at the
    // other's.
    let warren_at = |port: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    for (i, name) in names.iter().enumerate() {
        let stream = format!("on-{name}");
        let expected = (warren_at(ports.own[i]), vec![warren_at(ports.own[1 - i])]);
        let deadline = Instant::now() + STEP;
        loop {
            // A replica is listed once it runs, a moment after the stream is created.
            let seen = metadata(ports.balanced, &stream).await;
            if seen == expected {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{stream}: {seen:?}, expected {expected:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Through the balanced listener only: the producer reaches the leader's listener, the
    // consumer a replica's; every connection the client made is one warren accepted.
    let env = environment(ports.balanced).await;
    for (i, name) in names.iter().enumerate() {
        let stream = format!("on-{name}");
        let (producer, consumer) = write_and_read(&warren, &env, &stream, &own, 200).await;
        let mut to_leader = [0.0; 3];
        to_leader[1 + i] = 1.0;
        assert_eq!(
            producer[1..],
            to_leader[1..],
            "{stream}: producer on its leader's listener"
        );
        let mut to_replica = [0.0; 3];
        to_replica[2 - i] = 1.0;
        assert_eq!(
            consumer[1..],
            to_replica[1..],
            "{stream}: consumer on its replica's listener"
        );
        assert!(
            producer[0] >= 1.0,
            "metadata asked through the balanced listener"
        );
    }

    drained_node_refuses_new_connections(&warren, admin, &ports, &names).await;
    reload_without_the_section_removes_the_listeners(admin, &file, &ports, &cluster, stream_port)
        .await;
    warren.stop().await;
    eprintln!("streams test took {:.1}s", started.elapsed().as_secs_f64());
}

/// Drain node 1 with a producer open on its listener: the producer's connection is closed at
/// the deadline, and new connections to the listener are closed at once (`no_backend`) while
/// node 2's listener serves on; undrain lets it in again.
async fn drained_node_refuses_new_connections(
    warren: &Warren,
    admin: SocketAddr,
    ports: &Ports,
    names: &[String],
) {
    let env = environment(ports.balanced).await;
    let stream = format!("on-{}", names[0]);
    let own_1 = format!("streams/{}", names[0]);
    let before = accepted(warren, &own_1);
    let producer = tokio::time::timeout(STEP, env.producer().build(&stream))
        .await
        .expect("producer in time")
        .expect("producer");
    assert_eq!(
        accepted(warren, &own_1),
        before + 1.0,
        "the producer on node 1"
    );
    let active = format!("warren_listener_connections_active{{listener=\"{own_1}\"}}");
    assert!(warren.metric(&active) >= 1.0);
    let (code, stdout, stderr) =
        run_ctl(admin, &["drain", &names[0], "--deadline", "1s", "--wait"]).await;
    assert_eq!(code, 0, "ctl drain: {stdout}{stderr}");
    wait_for("node 1's listener to have no connection", STEP, || {
        warren.metric(&active) == 0.0
    })
    .await;
    let rejected = format!(
        "warren_listener_rejected_total{{listener=\"streams/{}\",reason=\"no_backend\"}}",
        names[0]
    );
    let before = warren.metric_or_zero(&rejected);
    assert!(closed_at_once(ports.own[0]).await, "closed at once");
    assert_eq!(warren.metric(&rejected), before + 1.0);
    let refused = Environment::builder()
        .host("127.0.0.1")
        .port(ports.own[0])
        .build();
    assert!(
        tokio::time::timeout(STEP, refused)
            .await
            .expect("in time")
            .is_err(),
        "no stream client gets through a drained node's listener"
    );
    // Node 2's listener serves on.
    environment(ports.own[1]).await;
    let _ = producer.close().await;
    let (code, stdout, stderr) = run_ctl(admin, &["undrain", &names[0]]).await;
    assert_eq!(code, 0, "ctl undrain: {stdout}{stderr}");
    environment(ports.own[0]).await;
}

/// A reload of the config without the section: the per-backend listeners stop accepting, the
/// balanced listener serves on; a reload with it again brings them back.
async fn reload_without_the_section_removes_the_listeners(
    admin: SocketAddr,
    file: &Path,
    ports: &Ports,
    cluster: &Cluster,
    stream_port: u16,
) {
    std::fs::write(file, warren_toml(ports, &cluster.nodes, stream_port, false)).unwrap();
    let (code, stdout, stderr) = run_ctl(admin, &["reload"]).await;
    assert_eq!(code, 0, "ctl reload: {stdout}{stderr}");
    for port in ports.own {
        let refused = || std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err();
        wait_for("a removed per-backend listener to refuse", STEP, refused).await;
    }
    environment(ports.balanced).await;
    // And back: a reload with the section adds them again.
    std::fs::write(file, warren_toml(ports, &cluster.nodes, stream_port, true)).unwrap();
    let (code, stdout, stderr) = run_ctl(admin, &["reload"]).await;
    assert_eq!(code, 0, "ctl reload: {stdout}{stderr}");
    for port in ports.own {
        environment(port).await;
    }
}

/// Without RabbitMQ: each per-backend listener reaches its own backend only, whatever the
/// pool's balancing; one whose backend refuses (then is down by the passive check) closes
/// every new connection at once, never sending it to another node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_listener_reaches_only_its_own_backend_and_a_down_one_closes_at_once() {
    let (a, b) = (common::spawn_tagged(1).await, common::spawn_tagged(2).await);
    let (_held, refusing) = common::held_refusing_port();
    let own = [free_port(), free_port(), free_port()];
    let toml = format!(
        "[[listener]]\nname = \"balanced\"\nlisten = \"127.0.0.1:{}\"\npool = \"p\"\n\
         [pool.p]\n[pool.p.per_backend_listeners]\nlisten = \"127.0.0.1\"\n\
         connect_timeout = \"2s\"\n\
         [[pool.p.backend]]\nname = \"a\"\naddr = \"{}\"\nlistener_port = {}\n\
         [[pool.p.backend]]\nname = \"b\"\naddr = \"{}\"\nlistener_port = {}\n\
         [[pool.p.backend]]\nname = \"c\"\naddr = \"{refusing}\"\nlistener_port = {}\n",
        free_port(),
        a.addr,
        own[0],
        b.addr,
        own[1],
        own[2]
    );
    let config = warren::config::from_toml(&toml, Path::new("streams.toml")).unwrap();
    let warren = Warren::start(config, quick());
    for _ in 0..4 {
        for (port, id) in [(own[0], 1), (own[1], 2)] {
            let (seen, _s) =
                common::which_backend(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await;
            assert_eq!(seen, id, "listener on {port} reaches backend {id} only");
        }
    }
    let rejected = "warren_listener_rejected_total{listener=\"p/c\",reason=\"no_backend\"}";
    // Refused by its backend, then down: closed at once both times, never sent to a or b.
    for n in 1..=2 {
        assert!(
            closed_at_once(own[2]).await,
            "connection {n} closed at once"
        );
        wait_for("the refusal counted", STEP, || {
            warren.metric(rejected) == f64::from(n)
        })
        .await;
    }
    // The second was closed without a try: c was down after the first refusal.
    let refused =
        "warren_backend_connect_failures_total{backend=\"c\",pool=\"p\",reason=\"refused\"}";
    assert_eq!(warren.metric(refused), 1.0);
    assert_eq!(a.accepted.load(std::sync::atomic::Ordering::SeqCst), 4);
    assert_eq!(b.accepted.load(std::sync::atomic::Ordering::SeqCst), 4);
    warren.stop().await;
}
