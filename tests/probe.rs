//! Active probes (`warren::health::probe`) against in-process fakes on 127.0.0.1:0, and against
//! real RabbitMQ nodes started with `scripts/rabbitmq.sh` (skipped with a SKIP line when RabbitMQ
//! is not installed and the test cannot install it).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use warren::config::{BackendTls, ManagementEndpoint, Probe, ProxyProtocol, Secret};
use warren::health::probe::{
    close_connection, maintenance_reason, quorum_check, quorum_check_set, run, CloseAnswer,
    Leaving, ProbeOutcome, ProbeTarget, QuorumCheck, AMQP_PROTOCOL_HEADER, QUEUES_PATH,
};
use warren::http_client::{HttpUrl, ProbeUrl};
use warren::proxy_protocol::{encode_v1, encode_v2, Header};

use common::certs::Certs;
use common::FakeApi;
use warren::tls::{ClientTls, Identity};

const TIMEOUT: Duration = Duration::from_millis(500);

fn target(addr: SocketAddr, proxy_protocol: ProxyProtocol) -> ProbeTarget {
    ProbeTarget {
        host: addr.ip().to_string(),
        port: addr.port(),
        addr,
        proxy_protocol,
        management: None,
        tls: None,
    }
}

/// A port nothing listens on (bound then released).
async fn refused_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// A real Connection.Start frame as RabbitMQ 3.12.1 would send it (abridged properties).
fn connection_start_frame() -> Vec<u8> {
    fn long_string(out: &mut Vec<u8>, value: &[u8]) {
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value);
    }
    let mut table = Vec::new();
    for (key, value) in [("product", "RabbitMQ"), ("version", "3.12.1")] {
        table.push(key.len() as u8);
        table.extend_from_slice(key.as_bytes());
        table.push(b'S');
        long_string(&mut table, value.as_bytes());
    }
    let mut payload = vec![0, 10, 0, 10, 0, 9]; // class 10, method 10, version 0-9
    payload.extend_from_slice(&(table.len() as u32).to_be_bytes());
    payload.extend_from_slice(&table);
    long_string(&mut payload, b"PLAIN AMQPLAIN");
    long_string(&mut payload, b"en_US");
    let mut frame = vec![1, 0, 0]; // method frame, channel 0
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&payload);
    frame.push(0xCE);
    frame
}

/// A fake backend: for each connection, reads `expect.len()` bytes, checks them, then answers
/// `reply` (or stays silent when `reply` is `None`). Returns the address and a task that yields
/// what the first connection sent.
async fn fake_backend(
    expect: Vec<u8>,
    reply: Option<Vec<u8>>,
) -> (SocketAddr, JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut got = vec![0u8; expect.len()];
        stream.read_exact(&mut got).await.unwrap();
        match reply {
            Some(reply) => {
                stream.write_all(&reply).await.unwrap();
                // Hold the connection until the probe leaves.
                let mut rest = Vec::new();
                let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
                    .await;
            }
            None => tokio::time::sleep(Duration::from_secs(5)).await,
        }
        got
    });
    (addr, task)
}

async fn probe(probe: &Probe, target: &ProbeTarget) -> (ProbeOutcome, Duration) {
    let started = Instant::now();
    let outcome = run(probe, target, TIMEOUT).await;
    (outcome, started.elapsed())
}

fn assert_down_containing(outcome: &ProbeOutcome, part: &str) {
    assert!(!outcome.up, "expected down, got {outcome:?}");
    assert!(
        outcome.reason.contains(part),
        "reason {:?} should contain {part:?}",
        outcome.reason
    );
}

#[tokio::test]
async fn amqp_probe_is_up_on_connection_start() {
    let (addr, fake) = fake_backend(
        AMQP_PROTOCOL_HEADER.to_vec(),
        Some(connection_start_frame()),
    )
    .await;
    let (outcome, _) = probe(&Probe::Amqp, &target(addr, ProxyProtocol::Off)).await;
    assert!(outcome.up, "{outcome:?}");
    assert_eq!(
        outcome.reason,
        "Connection.Start received (RabbitMQ 3.12.1)"
    );
    assert_eq!(fake.await.unwrap(), AMQP_PROTOCOL_HEADER);
}

#[tokio::test]
async fn amqp_probe_is_down_on_anything_but_connection_start() {
    let cases: [(&str, Vec<u8>, &str); 4] = [
        (
            "garbage",
            b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec(),
            "not an AMQP Connection.Start frame",
        ),
        (
            "protocol header reply",
            b"AMQP\x00\x00\x09\x00".to_vec(),
            "rejected AMQP 0-9-1",
        ),
        (
            "another method",
            {
                let mut frame = connection_start_frame();
                frame[10] = 30; // Connection.Tune
                frame
            },
            "method 30",
        ),
        (
            "no frame end",
            {
                let mut frame = connection_start_frame();
                *frame.last_mut().unwrap() = 0;
                frame
            },
            "frame-end",
        ),
    ];
    for (name, reply, part) in cases {
        let (addr, _fake) = fake_backend(AMQP_PROTOCOL_HEADER.to_vec(), Some(reply)).await;
        let (outcome, _) = probe(&Probe::Amqp, &target(addr, ProxyProtocol::Off)).await;
        assert!(!outcome.up, "{name}: {outcome:?}");
        assert!(outcome.reason.contains(part), "{name}: {outcome:?}");
    }
}

#[tokio::test]
async fn amqp_probe_is_down_when_the_backend_closes_without_answering() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut header = [0u8; 8];
        let _ = stream.read_exact(&mut header).await;
    });
    let (outcome, _) = probe(&Probe::Amqp, &target(addr, ProxyProtocol::Off)).await;
    assert_down_containing(&outcome, "closed the connection without answering");
}

#[tokio::test]
async fn silent_backends_are_down_at_the_timeout() {
    for kind in [Probe::Amqp, Probe::Tcp] {
        let (addr, _fake) = fake_backend(Vec::new(), None).await;
        let (outcome, elapsed) = probe(&kind, &target(addr, ProxyProtocol::Off)).await;
        if kind == Probe::Tcp {
            // Connecting is all a tcp probe does: a silent backend is up.
            assert!(outcome.up, "{outcome:?}");
            continue;
        }
        assert_down_containing(
            &outcome,
            "timed out after 500ms waiting for Connection.Start",
        );
        assert!(
            elapsed >= TIMEOUT && elapsed < TIMEOUT + Duration::from_millis(500),
            "took {elapsed:?}"
        );
    }
}

#[tokio::test]
async fn refused_ports_are_down_for_every_probe_kind() {
    let addr = refused_addr().await;
    let probes = [
        Probe::Tcp,
        Probe::Amqp,
        Probe::AmqpLogin {
            uri: Secret("amqp://guest:hunter22@{host}:{port}/%2f".into()),
        },
        Probe::Http {
            url: probe_url(&format!(
                "http://{{host}}:{}/api/health/checks/virtual-hosts",
                addr.port()
            )),
            user: None,
            password: None,
            password_file: None,
        },
    ];
    for kind in probes {
        let (outcome, _) = probe(&kind, &target(addr, ProxyProtocol::Off)).await;
        assert_down_containing(&outcome, "refused");
        assert!(outcome.refused, "{kind:?}: {outcome:?}");
        assert!(!outcome.reason.contains("hunter22"), "{outcome:?}");
    }
}

/// A fake that expects a PROXY header naming the connection as it sees it (source = the probe's
/// address, destination = the fake's), then `then` bytes, and answers `reply`. Yields what it read.
async fn fake_proxy_backend(
    version: ProxyProtocol,
    then: &'static [u8],
    reply: Option<Vec<u8>>,
) -> (SocketAddr, JoinHandle<(Vec<u8>, Vec<u8>)>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut stream, peer) = listener.accept().await.unwrap();
        let header = Header::Proxied {
            source: peer,
            destination: addr,
        };
        let mut expected = Vec::new();
        match version {
            ProxyProtocol::V1 => encode_v1(&header, &mut expected),
            _ => encode_v2(&header, &mut expected),
        }
        expected.extend_from_slice(then);
        let mut got = vec![0u8; expected.len()];
        let _ = stream.read_exact(&mut got).await;
        if let Some(reply) = reply {
            stream.write_all(&reply).await.unwrap();
        }
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
        got.extend_from_slice(&rest);
        (expected, got)
    });
    (addr, task)
}

#[tokio::test]
async fn probes_of_the_amqp_address_send_the_proxy_header_first() {
    for version in [ProxyProtocol::V1, ProxyProtocol::V2] {
        let (addr, fake) = fake_proxy_backend(
            version,
            AMQP_PROTOCOL_HEADER,
            Some(connection_start_frame()),
        )
        .await;
        let (outcome, _) = probe(&Probe::Amqp, &target(addr, version)).await;
        assert!(outcome.up, "{version:?}: {outcome:?}");
        let (expected, got) = fake.await.unwrap();
        assert_eq!(got, expected, "{version:?}: PROXY header then AMQP header");
        if version == ProxyProtocol::V1 {
            assert!(
                got.starts_with(b"PROXY TCP4 127.0.0.1 127.0.0.1 "),
                "{got:?}"
            );
        }

        let (addr, fake) = fake_proxy_backend(version, b"", None).await;
        let (outcome, _) = probe(&Probe::Tcp, &target(addr, version)).await;
        assert!(outcome.up, "{version:?}: {outcome:?}");
        let (expected, got) = fake.await.unwrap();
        assert_eq!(
            got, expected,
            "{version:?}: a tcp probe sends only the header"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// http

/// A one-connection HTTP server that answers every request with `status` and `body` (or hangs
/// when `status` is 0), and returns the request head it read.
async fn fake_http(status: u16, body: &'static str) -> (SocketAddr, JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.ends_with(b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        if status == 0 {
            tokio::time::sleep(Duration::from_secs(5)).await;
            return head;
        }
        let response = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(response.as_bytes()).await;
        head
    });
    (addr, task)
}

fn http_probe(addr: SocketAddr, user: Option<&str>, password_file: Option<PathBuf>) -> Probe {
    Probe::Http {
        url: probe_url(&format!(
            "http://{{host}}:{}/api/health/checks/virtual-hosts",
            addr.port()
        )),
        user: user.map(str::to_string),
        password: None,
        password_file,
    }
}

/// A probe URL as the config would hold it.
fn probe_url(template: &str) -> ProbeUrl {
    ProbeUrl::parse(template).expect("a valid probe URL")
}

fn temp_file(name: &str, contents: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("warren-probe-{}-{name}", std::process::id()));
    std::fs::write(&path, contents).unwrap();
    path
}

#[tokio::test]
async fn http_probe_is_up_on_2xx_and_sends_host_and_user_agent() {
    let (addr, fake) = fake_http(200, "{\"status\":\"ok\"}").await;
    let (outcome, _) = probe(
        &http_probe(addr, None, None),
        &target(addr, ProxyProtocol::V2),
    )
    .await;
    assert_eq!(
        outcome,
        ProbeOutcome {
            up: true,
            reason: "HTTP 200".into(),
            local: false,
            refused: false,
        }
    );
    let head = fake.await.unwrap().to_ascii_lowercase();
    assert!(
        head.starts_with("get /api/health/checks/virtual-hosts http/1.1\r\n"),
        "{head}"
    );
    assert!(
        head.contains(&format!("host: 127.0.0.1:{}\r\n", addr.port())),
        "{head}"
    );
    assert!(head.contains("user-agent: warren/"), "{head}");
    assert!(!head.contains("authorization"), "{head}");
    assert!(
        !head.starts_with("proxy"),
        "no PROXY header to the management port"
    );
}

#[tokio::test]
async fn http_probe_is_down_on_503_with_the_body_prefix() {
    let body = "{\"status\":\"failed\",\"reason\":\"vhost / is down\nsecond line\"}";
    let (addr, _fake) = fake_http(503, body).await;
    let (outcome, _) = probe(
        &http_probe(addr, None, None),
        &target(addr, ProxyProtocol::Off),
    )
    .await;
    assert_eq!(
        outcome.reason,
        "HTTP 503: {\"status\":\"failed\",\"reason\":\"vhost / is down second line\"}"
    );
    assert!(!outcome.up);

    let long: &'static str = Box::leak("x".repeat(1000).into_boxed_str());
    let (addr, _fake) = fake_http(500, long).await;
    let (outcome, _) = probe(
        &http_probe(addr, None, None),
        &target(addr, ProxyProtocol::Off),
    )
    .await;
    assert_eq!(outcome.reason, format!("HTTP 500: {}", "x".repeat(200)));
}

#[tokio::test]
async fn http_probe_is_down_at_the_timeout_when_the_server_hangs() {
    let (addr, _fake) = fake_http(0, "").await;
    let (outcome, elapsed) = probe(
        &http_probe(addr, None, None),
        &target(addr, ProxyProtocol::Off),
    )
    .await;
    assert_down_containing(
        &outcome,
        "timed out after 500ms waiting for the HTTP response",
    );
    assert!(
        elapsed >= TIMEOUT && elapsed < TIMEOUT + Duration::from_millis(500),
        "took {elapsed:?}"
    );
}

#[tokio::test]
async fn http_probe_sends_basic_auth_from_password_file_and_never_reports_it() {
    let file = temp_file("password", "s3cr3t-pw\n");
    // The fake echoes the password back in an error body: the reason must still not show it.
    let (addr, fake) = fake_http(401, "{\"error\":\"bad password s3cr3t-pw\"}").await;
    let (outcome, _) = probe(
        &http_probe(addr, Some("monitor"), Some(file.clone())),
        &target(addr, ProxyProtocol::Off),
    )
    .await;
    let head = fake.await.unwrap();
    // base64("monitor:s3cr3t-pw"): the trailing newline of the file is not part of the password.
    assert!(
        head.contains("authorization: Basic bW9uaXRvcjpzM2NyM3QtcHc=\r\n"),
        "{head}"
    );
    assert_down_containing(&outcome, "HTTP 401");
    assert!(!outcome.reason.contains("s3cr3t-pw"), "{outcome:?}");
    assert!(
        !outcome.reason.contains("bW9uaXRvcjpzM2NyM3QtcHc="),
        "{outcome:?}"
    );

    let missing = file.with_extension("missing");
    let (outcome, _) = probe(
        &http_probe(addr, Some("monitor"), Some(missing.clone())),
        &target(addr, ProxyProtocol::Off),
    )
    .await;
    assert_down_containing(&outcome, &missing.display().to_string());
    let _ = std::fs::remove_file(file);
}

/// `user:pass@` in the probe URL is sent as basic authentication (it used to be dropped
/// silently), and a failure's reason shows neither the password nor the token.
#[tokio::test]
async fn http_probe_sends_the_urls_user_info_as_basic_auth() {
    let (addr, fake) = fake_http(401, "{\"error\":\"bad password pw-in-url\"}").await;
    let kind = Probe::Http {
        url: probe_url(&format!(
            "http://monitor:pw-in-url@{{host}}:{}/api/health/checks/alarms",
            addr.port()
        )),
        user: None,
        password: None,
        password_file: None,
    };
    let (outcome, _) = probe(&kind, &target(addr, ProxyProtocol::Off)).await;
    let head = fake.await.unwrap();
    // base64("monitor:pw-in-url")
    let token = "bW9uaXRvcjpwdy1pbi11cmw=";
    assert!(
        head.contains(&format!("authorization: Basic {token}\r\n")),
        "{head}"
    );
    assert!(
        head.contains(&format!("host: 127.0.0.1:{}\r\n", addr.port())),
        "{head}"
    );
    assert_down_containing(&outcome, "HTTP 401");
    assert!(!outcome.reason.contains("pw-in-url"), "{outcome:?}");
    assert!(!outcome.reason.contains(token), "{outcome:?}");
}

/// The drain's quorum check asks the management API the `http` probe talks to (its authority,
/// the fixed quorum path, the URL's credentials) and reads the critical queues from a 503.
#[tokio::test]
async fn quorum_check_asks_the_probes_management_api() {
    let body = r#"{"status":"failed","reason":"would lose quorum","queues":[{"name":"qq","readable_name":"queue 'qq' in vhost '/'"}]}"#;
    let (addr, fake) = fake_http(503, body).await;
    let kind = Probe::Http {
        url: probe_url(&format!(
            "http://monitor:pw@{{host}}:{}/api/health/checks/alarms",
            addr.port()
        )),
        user: None,
        password: None,
        password_file: None,
    };
    let answer = quorum_check(Some(&kind), &target(addr, ProxyProtocol::Off), TIMEOUT).await;
    assert_eq!(
        answer,
        QuorumCheck::Critical {
            reason: "would lose quorum".into(),
            queues: vec!["queue 'qq' in vhost '/'".into()],
        }
    );
    let head = fake.await.unwrap();
    assert!(
        head.starts_with("GET /api/health/checks/node-is-quorum-critical HTTP/1.1\r\n"),
        "{head}"
    );
    // base64("monitor:pw")
    assert!(
        head.contains("authorization: Basic bW9uaXRvcjpwdw==\r\n"),
        "{head}"
    );
}

/// A backend's own management endpoint, as config load resolves it.
fn management(url: &str, user: Option<&str>, password: Option<&str>) -> ManagementEndpoint {
    ManagementEndpoint {
        url: HttpUrl::parse(url).expect("a valid management URL"),
        user: user.map(str::to_string),
        password: password.map(|p| Secret(p.to_string())),
        password_file: None,
        timeout: TIMEOUT,
    }
}

/// An `http` probe whose url is a path goes to the backend's own management endpoint (joined
/// to its prefix), with the endpoint's credentials when the probe has no `user`, or with the
/// probe's own.
#[tokio::test]
async fn http_probe_paths_go_to_the_backends_own_management_endpoint() {
    // (probe user, header sent): base64("mon:pw"), base64("probe:pp")
    for (user, auth) in [
        (None, "authorization: Basic bW9uOnB3\r\n"),
        (Some("probe"), "authorization: Basic cHJvYmU6cHA=\r\n"),
    ] {
        let (addr, fake) = fake_http(200, "{}").await;
        let refused = refused_addr().await;
        let mut target = target(refused, ProxyProtocol::Off);
        target.management = Some(management(
            &format!("http://127.0.0.1:{}/rabbit/", addr.port()),
            Some("mon"),
            Some("pw"),
        ));
        let kind = Probe::Http {
            url: probe_url("/api/health/checks/alarms"),
            user: user.map(str::to_string),
            password: Some(Secret("pp".into())),
            password_file: None,
        };
        let (outcome, _) = probe(&kind, &target).await;
        assert!(outcome.up, "{user:?}: {outcome:?}");
        let head = fake.await.unwrap();
        assert!(
            head.starts_with("GET /rabbit/api/health/checks/alarms HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(head.contains(auth), "{user:?}: {head}");
    }
}

/// The quorum check asks the backend's own management endpoint whatever the probe kind (or
/// with no probe at all); without an endpoint, only an `http` probe on the management API
/// makes it applicable. An endpoint without credentials is asked with the `http` probe's.
#[tokio::test]
async fn quorum_check_asks_the_backends_own_endpoint_whatever_the_probe() {
    let login = Probe::AmqpLogin {
        uri: Secret("amqp://guest:guest@{host}:{port}/%2f".into()),
    };
    let refused = refused_addr().await;
    for kind in [None, Some(&Probe::Tcp), Some(&Probe::Amqp), Some(&login)] {
        let (addr, fake) = fake_http(200, "{\"status\":\"ok\"}").await;
        let mut target = target(refused, ProxyProtocol::Off);
        assert_eq!(
            quorum_check(kind, &target, TIMEOUT).await,
            QuorumCheck::NotApplicable,
            "{kind:?} without an endpoint"
        );
        target.management = Some(management(
            &format!("http://127.0.0.1:{}", addr.port()),
            Some("mon"),
            Some("pw"),
        ));
        assert_eq!(
            quorum_check(kind, &target, TIMEOUT).await,
            QuorumCheck::Safe,
            "{kind:?}"
        );
        let head = fake.await.unwrap();
        assert!(
            head.starts_with("GET /api/health/checks/node-is-quorum-critical HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(head.contains("authorization: Basic bW9uOnB3\r\n"), "{head}");
    }
    // The endpoint has no credentials: the http probe's are sent; and its full URL template,
    // which names another port, is not what is asked.
    let (addr, fake) = fake_http(503, "{}").await;
    let mut target = target(refused, ProxyProtocol::Off);
    target.management = Some(management(
        &format!("http://127.0.0.1:{}", addr.port()),
        None,
        None,
    ));
    let kind = Probe::Http {
        url: probe_url(&format!(
            "http://{{host}}:{}/api/health/checks/alarms",
            refused.port()
        )),
        user: Some("monitor".into()),
        password: Some(Secret("pw".into())),
        password_file: None,
    };
    let answer = quorum_check(Some(&kind), &target, TIMEOUT).await;
    assert!(
        matches!(answer, QuorumCheck::Unexpected(ref why) if why.starts_with("HTTP 503")),
        "{answer:?}"
    );
    let head = fake.await.unwrap();
    // base64("monitor:pw")
    assert!(
        head.contains("authorization: Basic bW9uaXRvcjpwdw==\r\n"),
        "{head}"
    );
}

/// A management API for the set check: `/api/overview` names `node`, `/api/queues...` answers
/// `queues_status` and `queues`.
async fn set_check_api(node: &str, queues_status: u16, queues: &str) -> FakeApi {
    FakeApi::start(vec![
        (
            "GET /api/overview ",
            200,
            format!(r#"{{"node":"{node}","listeners":[]}}"#),
        ),
        ("GET /api/queues", queues_status, queues.to_string()),
    ])
    .await
}

/// One backend of a set drain whose management endpoint is `addr`.
fn leaving(addr: SocketAddr) -> Leaving {
    let mut target = target(addr, ProxyProtocol::Off);
    target.management = Some(management(
        &format!("http://{addr}"),
        Some("mon"),
        Some("pw"),
    ));
    Leaving {
        probe: Some(Probe::Tcp),
        target,
    }
}

/// The set check names each node through its own management API and judges the cluster's
/// queue list: two nodes each safe alone refuse together; a node named twice (one node in two
/// pools) or one that does not answer leaves fewer than two nodes, which is the per-node
/// check's question; a queue list that is not one is an unexpected answer.
#[tokio::test]
async fn quorum_check_set_judges_the_nodes_leaving_together() {
    const QUEUES: &str = r#"[
        {"name":"orders","vhost":"/","type":"quorum","members":["rabbit@a","rabbit@b","rabbit@c"],"online":["rabbit@a","rabbit@b","rabbit@c"]},
        {"name":"wide","vhost":"/","type":"quorum","members":["rabbit@a","rabbit@b","rabbit@c","rabbit@d","rabbit@e"],"online":["rabbit@a","rabbit@b","rabbit@c","rabbit@d","rabbit@e"]},
        {"name":"plain","vhost":"/","type":"classic"}
    ]"#;
    let api_a = set_check_api("rabbit@a", 200, QUEUES).await;
    let api_b = set_check_api("rabbit@b", 200, QUEUES).await;
    let api_d = set_check_api("rabbit@d", 200, "[]").await;
    let (a, b, d) = (api_a.addr, api_b.addr, api_d.addr);
    let refused = refused_addr().await;

    let answer = quorum_check_set(vec![leaving(a), leaving(b)], TIMEOUT).await;
    assert_eq!(
        answer,
        QuorumCheck::Critical {
            reason: "stopping rabbit@a, rabbit@b together would leave quorum queues or streams \
                     without a majority of their replicas online"
                .into(),
            queues: vec!["queue 'orders' in vhost '/' would keep 1 of 3 replicas online".into()],
        }
    );
    let seen = api_a.requests();
    assert!(
        seen.contains(&format!("GET {QUEUES_PATH} HTTP/1.1")),
        "{seen:?}"
    );
    // d holds no replica of orders, and wide keeps 3 of 5.
    assert_eq!(
        quorum_check_set(vec![leaving(a), leaving(d)], TIMEOUT).await,
        QuorumCheck::Safe
    );
    for (set, what) in [
        (vec![leaving(a), leaving(a)], "one node in two pools"),
        (
            vec![leaving(a), leaving(refused)],
            "one node does not answer",
        ),
    ] {
        assert_eq!(
            quorum_check_set(set, TIMEOUT).await,
            QuorumCheck::NotApplicable,
            "{what}"
        );
    }
    let no_endpoint = Leaving {
        probe: Some(Probe::Tcp),
        target: target(refused, ProxyProtocol::Off),
    };
    assert_eq!(
        quorum_check_set(vec![leaving(a), no_endpoint], TIMEOUT).await,
        QuorumCheck::NotApplicable,
        "one backend has no management endpoint"
    );
    let x = set_check_api("rabbit@x", 401, r#"{"error":"not_authorized"}"#).await;
    let y = set_check_api("rabbit@y", 401, r#"{"error":"not_authorized"}"#).await;
    let answer = quorum_check_set(vec![leaving(x.addr), leaving(y.addr)], TIMEOUT).await;
    assert!(
        matches!(&answer, QuorumCheck::Unexpected(why) if why.contains("HTTP 401") && why.contains("not_authorized")),
        "{answer:?}"
    );
}

/// An https URL is refused where probe URLs are parsed (at config load, by [`ProbeUrl::parse`]),
/// so no probe ever runs with one.
/// An `https://` probe URL parses (config load refuses it in a pool without
/// `[pool.NAME.tls]`); a probe of one without a TLS configuration says so.
#[tokio::test]
async fn http_probe_of_an_https_url_needs_the_pools_tls() {
    let url = ProbeUrl::parse("https://user:pw-in-url@{host}:15671/api/health").unwrap();
    assert!(url.is_https());
    let (addr, _server) = fake_http(200, "").await;
    let https = Probe::Http {
        url: probe_url(&format!(
            "https://user:pw-in-url@{{host}}:{}/api/health",
            addr.port()
        )),
        user: None,
        password: None,
        password_file: None,
    };
    let (outcome, _) = probe(&https, &target(addr, ProxyProtocol::Off)).await;
    assert_down_containing(
        &outcome,
        "no TLS configuration was given for this https:// URL",
    );
    assert!(!outcome.reason.contains("pw-in-url"), "{outcome:?}");
}

// ---------------------------------------------------------------------------------------------
// Real RabbitMQ

const RABBITMQ_SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/rabbitmq.sh")
}

/// Whether real-node tests can run here; prints a SKIP line when not (and not root).
fn rabbitmq_available(test: &str) -> bool {
    if Path::new(RABBITMQ_SERVER).exists() {
        return true;
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        !root,
        "{RABBITMQ_SERVER} is missing: run `bash scripts/rabbitmq.sh install` (scripts/test.sh does)"
    );
    println!("SKIP {test}: RabbitMQ is not installed and installing it needs root");
    false
}

/// A node started with scripts/rabbitmq.sh; stopped on drop, so a failing test still stops it.
struct Node {
    name: String,
    basedir: PathBuf,
    amqp: SocketAddr,
    mgmt_port: u16,
}

impl Node {
    fn start(name: &str, extra_conf: &[&str]) -> Node {
        let ports = free_ports(3);
        let basedir = std::env::temp_dir().join(format!(
            "warren-probe-rabbitmq-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&basedir);
        let node = Node {
            name: name.to_string(),
            basedir,
            amqp: SocketAddr::from(([127, 0, 0, 1], ports[0])),
            mgmt_port: ports[2],
        };
        let mut args: Vec<String> = vec![
            "start".into(),
            name.into(),
            ports[0].to_string(),
            ports[1].to_string(),
            ports[2].to_string(),
            node.basedir.display().to_string(),
        ];
        args.extend(extra_conf.iter().map(|s| s.to_string()));
        node.script(&args);
        node
    }

    fn script(&self, args: &[String]) {
        let output = Command::new("bash")
            .arg(script())
            .args(args)
            .output()
            .expect("run scripts/rabbitmq.sh");
        assert!(
            output.status.success(),
            "scripts/rabbitmq.sh {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn app(&self, action: &str) {
        self.script(&[
            action.into(),
            self.name.clone(),
            self.basedir.display().to_string(),
        ]);
    }

    fn log_file(&self) -> PathBuf {
        self.basedir
            .join(&self.name)
            .join("log")
            .join(format!("{}@localhost.log", self.name))
    }

    fn target(&self, proxy_protocol: ProxyProtocol) -> ProbeTarget {
        target(self.amqp, proxy_protocol)
    }

    fn probes(&self) -> Vec<(&'static str, Probe)> {
        vec![
            ("tcp", Probe::Tcp),
            ("amqp", Probe::Amqp),
            (
                "amqp_login",
                Probe::AmqpLogin {
                    uri: Secret("amqp://guest:guest@{host}:{port}/%2f".into()),
                },
            ),
            (
                "http",
                Probe::Http {
                    url: probe_url(&format!(
                        "http://{{host}}:{}/api/health/checks/virtual-hosts",
                        self.mgmt_port
                    )),
                    user: Some("guest".into()),
                    password: Some(Secret("guest".into())),
                    password_file: None,
                },
            ),
        ]
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .args(["stop", &self.name])
            .arg(&self.basedir)
            .output();
        let _ = std::fs::remove_dir_all(&self.basedir);
    }
}

/// `n` distinct loopback ports that were free a moment ago.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// Probe until every probe's outcome has `up == want` (bounded by `within`); the last outcomes.
async fn until_all(
    probes: &[(&'static str, Probe)],
    target: &ProbeTarget,
    want: bool,
    within: Duration,
) -> Vec<(&'static str, ProbeOutcome)> {
    let deadline = Instant::now() + within;
    loop {
        let mut outcomes = Vec::new();
        for (name, kind) in probes {
            outcomes.push((*name, run(kind, target, Duration::from_secs(2)).await));
        }
        if outcomes.iter().all(|(_, o)| o.up == want) || Instant::now() >= deadline {
            return outcomes;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn log_len(path: &Path) -> usize {
    std::fs::read(path).map(|b| b.len()).unwrap_or(0)
}

/// Lines appended to `path` after byte `from`, once the file has stopped growing for 500 ms
/// (bounded by 5 s: the broker logs a closed connection a few ms after it sees the close).
async fn appended_lines(path: &Path, from: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = log_len(path);
    let mut stable_since = Instant::now();
    while Instant::now() < deadline && stable_since.elapsed() < Duration::from_millis(500) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = log_len(path);
        if now != last {
            last = now;
            stable_since = Instant::now();
        }
    }
    let bytes = std::fs::read(path).unwrap_or_default();
    String::from_utf8_lossy(&bytes[from.min(bytes.len())..])
        .lines()
        .map(str::to_string)
        .collect()
}

fn levels(lines: &[String]) -> String {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for line in lines {
        let level = line
            .split_once('[')
            .and_then(|(_, rest)| rest.split_once(']'))
            .map_or("?", |(level, _)| level)
            .to_string();
        match counts.iter_mut().find(|(l, _)| *l == level) {
            Some((_, n)) => *n += 1,
            None => counts.push((level, 1)),
        }
    }
    let parts: Vec<String> = counts.iter().map(|(l, n)| format!("{n} {l}")).collect();
    parts.join(", ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_rabbitmq_probes_follow_stop_app_and_start_app() {
    if !rabbitmq_available("real_rabbitmq_probes_follow_stop_app_and_start_app") {
        return;
    }
    let node = Node::start("warren-probe", &[]);
    let target = node.target(ProxyProtocol::Off);
    let probes = node.probes();

    let outcomes = until_all(&probes, &target, true, Duration::from_secs(10)).await;
    for (name, outcome) in &outcomes {
        println!("running node: {name}: {outcome:?}");
        assert!(outcome.up, "{name} should be up: {outcome:?}");
    }
    let amqp = &outcomes[1].1;
    assert!(
        amqp.reason
            .starts_with("Connection.Start received (RabbitMQ "),
        "{amqp:?}"
    );

    // What one probe of each kind, and ten amqp probes, write to the node's log (each measured
    // once the log has settled, so earlier probes' lines are not counted).
    let log = node.log_file();
    for (name, kind) in &probes {
        appended_lines(&log, 0).await;
        let from = log_len(&log);
        let outcome = run(kind, &target, Duration::from_secs(2)).await;
        assert!(outcome.up, "{name}: {outcome:?}");
        let lines = appended_lines(&log, from).await;
        println!(
            "LOG one {name} probe: {} lines ({})",
            lines.len(),
            levels(&lines)
        );
        for line in &lines {
            println!("    {line}");
        }
    }
    appended_lines(&log, 0).await;
    let from = log_len(&log);
    for _ in 0..10 {
        let outcome = run(&Probe::Amqp, &target, Duration::from_secs(2)).await;
        assert!(outcome.up, "{outcome:?}");
    }
    let lines = appended_lines(&log, from).await;
    println!(
        "LOG ten amqp probes: {} lines ({})",
        lines.len(),
        levels(&lines)
    );
    assert!(
        !lines.iter().any(|l| l.contains("[error]")),
        "amqp probes must not make the broker log errors: {lines:#?}"
    );

    node.app("stop_app");
    let outcomes = until_all(&probes, &target, false, Duration::from_secs(10)).await;
    for (name, outcome) in &outcomes {
        println!("after stop_app: {name}: {outcome:?}");
        // stop_app stops the AMQP listener and the management plugin's listener alike.
        assert_down_containing(outcome, "connection refused");
    }

    node.app("start_app");
    let outcomes = until_all(&probes, &target, true, Duration::from_secs(15)).await;
    for (name, outcome) in &outcomes {
        println!("after start_app: {name}: {outcome:?}");
        assert!(outcome.up, "{name} should be up again: {outcome:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_rabbitmq_with_proxy_protocol_takes_probes_that_send_the_header() {
    if !rabbitmq_available("real_rabbitmq_with_proxy_protocol_takes_probes_that_send_the_header") {
        return;
    }
    let node = Node::start("warren-probe-pp", &["proxy_protocol = true"]);
    let probes: Vec<(&'static str, Probe)> = node
        .probes()
        .into_iter()
        .filter(|(name, _)| *name != "http")
        .collect();
    for version in [ProxyProtocol::V1, ProxyProtocol::V2] {
        let outcomes = until_all(
            &probes,
            &node.target(version),
            true,
            Duration::from_secs(10),
        )
        .await;
        for (name, outcome) in &outcomes {
            println!("proxy_protocol = true, {version:?}: {name}: {outcome:?}");
            assert!(
                outcome.up,
                "{name} with {version:?} should be up: {outcome:?}"
            );
        }
    }
    let log = node.log_file();
    for (name, kind) in &probes {
        appended_lines(&log, 0).await;
        let from = log_len(&log);
        let outcome = run(
            kind,
            &node.target(ProxyProtocol::V2),
            Duration::from_secs(2),
        )
        .await;
        assert!(outcome.up, "{name}: {outcome:?}");
        let lines = appended_lines(&log, from).await;
        println!(
            "LOG proxy_protocol = true, one {name} probe with a v2 header: {} lines ({})",
            lines.len(),
            levels(&lines)
        );
        for line in &lines {
            println!("    {line}");
        }
        assert!(
            !lines.iter().any(|l| l.contains("[error]")),
            "{name} probe made the broker log an error: {lines:#?}"
        );
    }
    // Without the header the broker drops the connection: that is why probes send it.
    let target = node.target(ProxyProtocol::Off);
    for (name, kind) in &probes[1..] {
        let outcome = run(kind, &target, Duration::from_secs(2)).await;
        println!("proxy_protocol = true, no header: {name}: {outcome:?}");
        assert!(!outcome.up, "{name} without a PROXY header: {outcome:?}");
    }
}

/// Two real nodes whose management ports differ, in one pool with a tcp probe and each
/// backend's own management endpoint (issue 16). With one url template for the pool, node b was
/// probed on node a's management port: after `stop_app` on b it stayed "up, HTTP 200", and its
/// quorum check asked a and said "safe". With an endpoint per backend, b's http probe goes down
/// and its quorum check, asked of b itself though the probe is tcp, gets no answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_rabbitmq_nodes_are_each_asked_on_their_own_management_port() {
    if !rabbitmq_available("real_rabbitmq_nodes_are_each_asked_on_their_own_management_port") {
        return;
    }
    let pid = std::process::id();
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| Node::start(&format!("warren-mgmt-a-{pid}"), &[]));
        let b = s.spawn(|| Node::start(&format!("warren-mgmt-b-{pid}"), &[]));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_ne!(a.mgmt_port, b.mgmt_port);
    let text = format!(
        r#"
[pool.amqp.health]
kind = "tcp"
[pool.amqp.management]
user = "guest"
password = "guest"
[[pool.amqp.backend]]
name = "a"
addr = "{}"
management = "http://127.0.0.1:{}"
[[pool.amqp.backend]]
name = "b"
addr = "{}"
management = "http://127.0.0.1:{}"
"#,
        a.amqp, a.mgmt_port, b.amqp, b.mgmt_port
    );
    // The same backends, probed over http on a path of each one's endpoint.
    let http_text = text.replace("pool.amqp", "pool.mgmt").replace(
        "kind = \"tcp\"",
        "kind = \"http\"\nurl = \"/api/health/checks/virtual-hosts\"",
    );
    let listener = "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:5672\"\npool = \"amqp\"\n";
    let config = warren::config::from_toml(
        &format!("{listener}{text}{http_text}"),
        Path::new("mgmt.toml"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (tcp_pool, http_pool) = (config.pool("amqp").unwrap(), config.pool("mgmt").unwrap());
    let tcp = tcp_pool.health.as_ref().unwrap().probe.clone();
    let http = vec![("http", http_pool.health.as_ref().unwrap().probe.clone())];
    let targets: Vec<ProbeTarget> = http_pool
        .backends
        .iter()
        .map(|backend| ProbeTarget::for_backend(backend, ProxyProtocol::Off))
        .collect();
    let quorum = |target: &ProbeTarget| {
        let (tcp, target) = (tcp.clone(), target.clone());
        async move { quorum_check(Some(&tcp), &target, Duration::from_secs(3)).await }
    };
    for target in &targets {
        let outcomes = until_all(&http, target, true, Duration::from_secs(20)).await;
        assert!(outcomes[0].1.up, "{target:?}: {outcomes:?}");
        assert_eq!(quorum(target).await, QuorumCheck::Safe, "{target:?}");
    }

    b.app("stop_app");
    let outcomes = until_all(&http, &targets[1], false, Duration::from_secs(10)).await;
    println!("b after stop_app: {outcomes:?}");
    assert_down_containing(&outcomes[0].1, "connection refused");
    let answer = quorum(&targets[1]).await;
    println!("quorum check of b after stop_app: {answer:?}");
    assert!(
        matches!(answer, QuorumCheck::Unknown(ref why) if why.contains("connection refused")),
        "the quorum check of b must ask b, not a: {answer:?}"
    );
    // a is asked on its own port, and still answers.
    let outcome = run(&http[0].1, &targets[0], Duration::from_secs(2)).await;
    assert!(outcome.up, "{outcome:?}");
    assert_eq!(quorum(&targets[0]).await, QuorumCheck::Safe);
    // A drain of b through warren's admin API asks b: no answer, so it goes ahead with a
    // warning instead of "safe".
    let warren = common::Warren::start(
        common::with_admin_api(config.clone(), None),
        common::quick(),
    );
    let admin = warren.admin.expect("an admin API");
    let (status, body) =
        common::http(admin, "POST", "/v1/pools/amqp/backends/b/drain", None, b"").await;
    println!("drain of b after stop_app: {status} {body}");
    assert_eq!(status, 202, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["quorum_check"], "unknown", "{body}");
    assert!(
        answer["warnings"][0]
            .as_str()
            .is_some_and(|w| w.contains("connection refused")),
        "{body}"
    );
    warren.stop().await;
    // What one template for the pool did: `{host}` is 127.0.0.1 for both, so b is asked on a's
    // management port and looks up and safe.
    let one_template = Probe::Http {
        url: probe_url(&format!(
            "http://guest:guest@{{host}}:{}/api/health/checks/virtual-hosts",
            a.mgmt_port
        )),
        user: None,
        password: None,
        password_file: None,
    };
    let old_target = target(b.amqp, ProxyProtocol::Off);
    assert!(
        run(&one_template, &old_target, Duration::from_secs(2))
            .await
            .up
    );
    assert_eq!(
        quorum_check(Some(&one_template), &old_target, Duration::from_secs(3)).await,
        QuorumCheck::Safe
    );
}

/// `rabbitmq.sh start` fails at once, naming the collision, when another node on the host has
/// the name or holds one of the ports (another cluster on a shared host), instead of a node
/// that never boots and a long wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_sh_refuses_a_taken_node_name_or_port_at_once() {
    if !rabbitmq_available("rabbitmq_sh_refuses_a_taken_node_name_or_port_at_once") {
        return;
    }
    let name = format!("warren-clash-{}", std::process::id());
    let node = Node::start(&name, &[]);
    let other_dir = std::env::temp_dir().join(format!("warren-clash-other-{}", std::process::id()));
    let start = |name: &str, amqp: u16| {
        let ports = free_ports(3);
        let started = Instant::now();
        let output = Command::new("bash")
            .arg(script())
            .args(["start", name])
            .arg(amqp.to_string())
            .arg(ports[1].to_string())
            .arg(ports[2].to_string())
            .arg(&other_dir)
            .output()
            .expect("run scripts/rabbitmq.sh");
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        (output.status.success(), started.elapsed(), stderr)
    };
    let (ok, took, stderr) = start(&name, free_ports(1)[0]);
    assert!(!ok, "a second node with the same name started: {stderr}");
    assert!(
        stderr.contains(&format!(
            "an Erlang node named {name} is already running on this host"
        )),
        "{stderr}"
    );
    assert!(took < Duration::from_secs(10), "refused after {took:?}");
    let (ok, took, stderr) = start("warren-clash-port", node.amqp.port());
    assert!(!ok, "a node on a taken AMQP port started: {stderr}");
    assert!(
        stderr.contains(&format!(
            "the amqp port 127.0.0.1:{} of warren-clash-port is already in use",
            node.amqp.port()
        )),
        "{stderr}"
    );
    assert!(took < Duration::from_secs(10), "refused after {took:?}");
    let _ = std::fs::remove_dir_all(&other_dir);
}

/// The rabbitmqctl port range of one node stays clear of every node's ports in `cluster`:
/// with consecutive dist ports (25701, 25702) the first node's range would otherwise start on
/// the second node's dist port.
#[test]
fn rabbitmq_sh_ctl_ports_avoid_every_nodes_ports() {
    let ctl_ports = |args: &[&str]| {
        let output = Command::new("bash")
            .arg(script())
            .arg("ctl-ports")
            .args(args)
            .output()
            .expect("run scripts/rabbitmq.sh");
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    };
    // Alone, the range starts right above the dist port.
    assert_eq!(ctl_ports(&["25701", "5672", "15672"]), "25702");
    // In a cluster with demo2 on 25702, it moves past it.
    assert_eq!(
        ctl_ports(&["25701", "5672", "15672", "5672", "25702", "15672"]),
        "25712"
    );
    // Near the top of the port range it goes below the dist port.
    assert_eq!(ctl_ports(&["65530", "1", "2"]), "65520");
}

// ---------------------------------------------------------------------------------------------
// graceful close (DELETE /api/connections/NAME)

/// A close request is a DELETE of the percent-encoded name on the backend's management
/// endpoint, with its credentials and the reason in `X-Reason`; each answer maps to its
/// outcome, and an endpoint that does not answer is told apart from one that refuses.
#[tokio::test]
async fn a_close_request_deletes_the_named_connection_and_reads_the_answer() {
    let name = "127.0.0.1:40000 -> 127.0.0.2:5672";
    let reason = "warren: rabbit-a (pool amqp) drained for maintenance, drain deadline reached";
    let cases = [
        (204, "", CloseAnswer::Closed),
        (
            404,
            "{\"error\":\"Object Not Found\"}",
            CloseAnswer::NotFound,
        ),
        (
            401,
            "{\"error\":\"not_authorized\"}",
            CloseAnswer::Unexpected("HTTP 401: {\"error\":\"not_authorized\"}".into()),
        ),
    ];
    for (status, body, want) in cases {
        let (addr, fake) = fake_http(status, body).await;
        let mut target = target(addr, ProxyProtocol::Off);
        target.management = Some(management(
            &format!("http://{addr}"),
            Some("mon"),
            Some("pw"),
        ));
        let got = close_connection(Some(&Probe::Tcp), &target, name, reason, TIMEOUT).await;
        assert_eq!(got, want, "{status}");
        let head = fake.await.unwrap();
        assert!(
            head.starts_with(
                "DELETE /api/connections/127.0.0.1%3A40000%20-%3E%20127.0.0.2%3A5672 HTTP/1.1\r\n"
            ),
            "{head}"
        );
        assert!(head.contains(&format!("x-reason: {reason}\r\n")), "{head}");
        assert!(head.contains("authorization: Basic bW9uOnB3\r\n"), "{head}");
    }
    let mut target = target(refused_addr().await, ProxyProtocol::Off);
    assert_eq!(
        close_connection(None, &target, name, reason, TIMEOUT).await,
        CloseAnswer::NotApplicable,
        "no endpoint: nobody to ask"
    );
    let refused = refused_addr().await;
    target.management = Some(management(&format!("http://{refused}"), None, None));
    let got = close_connection(None, &target, name, reason, TIMEOUT).await;
    assert!(matches!(got, CloseAnswer::Unanswered(_)), "{got:?}");
    let (addr, _hangs) = fake_http(0, "").await;
    target.management = Some(management(&format!("http://{addr}"), None, None));
    let got = close_connection(None, &target, name, reason, Duration::from_millis(300)).await;
    assert!(
        matches!(got, CloseAnswer::Unanswered(ref why) if why.starts_with("timed out after 300ms")),
        "{got:?}"
    );
}

/// A failing backend is most likely in RabbitMQ's maintenance mode when its own API says it is
/// not in service (4.x), or when another node's API names the node listening on the failing
/// address and sees it running (3.x); a node the cluster sees stopped, or nobody to ask, leaves
/// the probe's reason alone.
#[tokio::test]
async fn maintenance_reason_asks_the_node_then_the_cluster() {
    let down_addr = refused_addr().await;
    let with_api = |addr: SocketAddr, api: SocketAddr| {
        let mut t = target(addr, ProxyProtocol::Off);
        t.management = Some(management(
            &format!("http://{api}"),
            Some("mon"),
            Some("pw"),
        ));
        t
    };
    let ask = |down: ProbeTarget, peers: Vec<ProbeTarget>| async move {
        maintenance_reason(
            Some(&Probe::Tcp),
            &down,
            &peers,
            "connection refused",
            TIMEOUT,
        )
        .await
    };

    // 4.x: the node's own API answers is-in-service.
    for (status, want) in [
        (
            503,
            Some("RabbitMQ maintenance mode (is-in-service answers 503): connection refused"),
        ),
        (200, None),
    ] {
        let api = FakeApi::start(vec![(
            "GET /api/health/checks/is-in-service ",
            status,
            "{}".into(),
        )])
        .await;
        let got = ask(with_api(down_addr, api.addr), vec![]).await;
        assert_eq!(got.as_deref(), want, "is-in-service {status}");
    }

    // 3.x: the node's API is closed (refused); a peer names and judges it.
    let closed = refused_addr().await;
    // Never connected to (only its API is): another address than the failing one, surely.
    let peer_addr = SocketAddr::from(([127, 0, 0, 2], down_addr.port()));
    let overview = format!(
        r#"{{"node":"rabbit@b","listeners":[
            {{"node":"rabbit@a","protocol":"amqp","ip_address":"{}","port":{}}},
            {{"node":"rabbit@b","protocol":"amqp","ip_address":"{}","port":{}}}]}}"#,
        down_addr.ip(),
        down_addr.port(),
        peer_addr.ip(),
        peer_addr.port()
    );
    for (running, want) in [
        (
            true,
            Some("RabbitMQ maintenance mode? listeners closed while rabbit@a runs: connection refused"),
        ),
        (false, None),
    ] {
        let api = FakeApi::start(vec![
            ("GET /api/overview ", 200, overview.clone()),
            (
                "GET /api/nodes/rabbit@a?",
                200,
                format!(r#"{{"name":"rabbit@a","running":{running}}}"#),
            ),
        ])
        .await;
        let down = with_api(down_addr, closed);
        let peers = vec![down.clone(), with_api(peer_addr, api.addr)];
        let got = ask(down, peers).await;
        assert_eq!(got.as_deref(), want, "running {running}");
    }

    // Nobody to ask: no management endpoint and a probe that is not on the management API.
    let bare = target(down_addr, ProxyProtocol::Off);
    assert_eq!(
        ask(
            bare.clone(),
            vec![bare, target(peer_addr, ProxyProtocol::Off)]
        )
        .await,
        None
    );
}

// ---------------------------------------------------------------------------------------------
// Real RabbitMQ with TLS listeners ([pool.NAME.tls])

/// The TLS target of `addr`: the CA bundle `ca`, a client certificate, the server name.
fn tls_target(addr: SocketAddr, ca: &Path, identity: Option<Identity>, name: &str) -> ProbeTarget {
    let client = ClientTls::load(ca, identity.as_ref()).expect("test certificates load");
    ProbeTarget {
        tls: Some(BackendTls {
            client,
            server_name: ServerName::try_from(name.to_string()).unwrap(),
            encrypt: warren::config::Encrypt::Terminated,
        }),
        ..target(addr, ProxyProtocol::Off)
    }
}

/// A node whose AMQP TLS listener (on 127.0.0.1) wants a client certificate signed by the
/// test CA, and whose management API also listens with TLS. The TLS ports, and the
/// certificates.
fn start_tls_node(test: &str) -> Option<(Node, u16, u16, Certs)> {
    if !rabbitmq_available(test) {
        return None;
    }
    let certs = Certs::generate(test)?;
    let ports = free_ports(2);
    let (amqps, https) = (ports[0], ports[1]);
    let files = |prefix: &str| {
        vec![
            format!("{prefix}.cacertfile = {}", certs.ca.display()),
            format!("{prefix}.certfile = {}", certs.server_cert.display()),
            format!("{prefix}.keyfile = {}", certs.server_key.display()),
        ]
    };
    let mut conf = vec![
        format!("listeners.ssl.1 = 127.0.0.1:{amqps}"),
        "ssl_options.verify = verify_peer".to_string(),
        "ssl_options.fail_if_no_peer_cert = true".to_string(),
        format!("management.ssl.port = {https}"),
        "management.ssl.ip = 127.0.0.1".to_string(),
    ];
    conf.extend(files("ssl_options"));
    conf.extend(files("management.ssl"));
    let conf: Vec<&str> = conf.iter().map(String::as_str).collect();
    let node = Node::start(&format!("warren-tls-{}", std::process::id() % 1000), &conf);
    Some((node, amqps, https, certs))
}

/// The three TLS-capable probes of a node whose AMQP TLS port is `amqps` and management
/// TLS port `https`.
fn tls_probes(amqps: u16, https: u16) -> Vec<(&'static str, Probe)> {
    vec![
        ("amqp", Probe::Amqp),
        (
            "amqp_login",
            Probe::AmqpLogin {
                uri: Secret(format!("amqps://guest:guest@{{host}}:{amqps}/%2f")),
            },
        ),
        (
            "http",
            Probe::Http {
                url: probe_url(&format!(
                    "https://{{host}}:{https}/api/health/checks/virtual-hosts"
                )),
                user: Some("guest".into()),
                password: Some(Secret("guest".into())),
                password_file: None,
            },
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_rabbitmq_tls_listeners_take_tls_probes_with_the_right_ca_only() {
    let test = "real_rabbitmq_tls_listeners_take_tls_probes_with_the_right_ca_only";
    let Some((node, amqps, https, certs)) = start_tls_node(test) else {
        return;
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], amqps));
    let identity = || {
        Some(Identity {
            cert_file: certs.client_cert.clone(),
            key_file: certs.client_key.clone(),
        })
    };
    let probes = tls_probes(amqps, https);

    // The right CA and a client certificate: up, over TLS. The server certificate names
    // 127.0.0.1 and localhost: either may be the server name.
    for name in ["127.0.0.1", "localhost"] {
        let target = tls_target(addr, &certs.ca, identity(), name);
        let outcomes = until_all(&probes, &target, true, Duration::from_secs(20)).await;
        for (kind, outcome) in &outcomes {
            println!("right CA, server name {name}: {kind}: {outcome:?}");
            assert!(outcome.up, "{kind} should be up: {outcome:?}");
        }
        assert!(
            outcomes[0]
                .1
                .reason
                .starts_with("Connection.Start received (RabbitMQ ")
                && outcomes[0].1.reason.contains(", over TLS 1."),
            "{:?}",
            outcomes[0].1
        );
        assert!(
            outcomes[1].1.reason.ends_with(", over TLS"),
            "{:?}",
            outcomes[1].1
        );
    }

    // The quorum check on an https:// management endpoint, with the pool's CA.
    let mut target = tls_target(addr, &certs.ca, identity(), "localhost");
    target.management = Some(ManagementEndpoint {
        url: HttpUrl::parse_https(&format!("https://127.0.0.1:{https}")).unwrap(),
        ..management("http://unused", Some("guest"), Some("guest"))
    });
    let check = quorum_check(None, &target, Duration::from_secs(5)).await;
    println!("quorum check over https: {check:?}");
    assert_eq!(check, QuorumCheck::Safe);

    // A CA that signed nothing of the node's: every probe is down, and says why.
    let wrong = tls_target(addr, &certs.other_ca, identity(), "127.0.0.1");
    for (kind, outcome) in until_all(&probes, &wrong, false, Duration::from_secs(10)).await {
        println!("wrong CA: {kind}: {outcome:?}");
        assert_down_containing(&outcome, "invalid peer certificate: UnknownIssuer");
        assert!(outcome.reason.contains("TLS handshake"), "{outcome:?}");
    }

    // A name the certificate does not bear.
    let misnamed = tls_target(addr, &certs.ca, identity(), "rabbit.invalid");
    let outcome = run(&Probe::Amqp, &misnamed, Duration::from_secs(2)).await;
    println!("wrong server name: {outcome:?}");
    assert_down_containing(
        &outcome,
        "TLS handshake failed: invalid peer certificate: certificate not valid for name \"rabbit.invalid\"",
    );

    // No client certificate, where the node wants one: down (an alert from the node).
    let anonymous = tls_target(addr, &certs.ca, None, "127.0.0.1");
    for kind in [Probe::Amqp, probes[1].1.clone()] {
        let outcome = run(&kind, &anonymous, Duration::from_secs(2)).await;
        println!("no client certificate: {outcome:?}");
        assert_down_containing(&outcome, "does the node require a client certificate?");
    }
    drop(node);
}
