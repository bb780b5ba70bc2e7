use super::quorum::{management_path, quorum_answer};
use super::*;

fn long_string(out: &mut Vec<u8>, key: &str, value: &str) {
    out.push(key.len() as u8);
    out.extend_from_slice(key.as_bytes());
    out.push(b'S');
    out.extend_from_slice(&(value.len() as u32).to_be_bytes());
    out.extend_from_slice(value.as_bytes());
}

fn start_payload(table: &[u8]) -> Vec<u8> {
    let mut p = vec![0, 10, 0, 10, 0, 9];
    p.extend_from_slice(&(table.len() as u32).to_be_bytes());
    p.extend_from_slice(table);
    p
}

#[test]
fn redact_strips_userinfo_and_passwords() {
    let uri = "amqp://guest:s3cret@{host}:5672/%2f";
    let cases = [
        (
            "cannot connect to amqp://guest:s3cret@10.0.0.1:5672/%2f: refused",
            "cannot connect to amqp://10.0.0.1:5672/%2f: refused",
        ),
        ("password s3cret echoed", "password *** echoed"),
        (
            "\"http://a:b@h/x\" and http://h2",
            "\"http://h/x\" and http://h2",
        ),
        ("nothing to hide", "nothing to hide"),
    ];
    for (text, expected) in cases {
        assert_eq!(redact(text, &[uri]), expected, "{text}");
    }
    assert_eq!(
        redact("token Z3Vlc3Q6Z3Vlc3Q=", &["Z3Vlc3Q6Z3Vlc3Q="]),
        "token ***"
    );
}

#[test]
fn login_uri_refuses_what_lapin_cannot_use_without_showing_the_password() {
    let secret = "amqp://guest:s3cret@h:5672/%2f";
    let redact = |s: &str| redact(s, &[secret]);
    let cases = [
        (
            "amqps://guest:s3cret@h:5671/%2f",
            "amqp_login: amqps:// needs [pool.NAME.tls]",
        ),
        (
            "amqp://guest:s3cret@h:port/%2f",
            "amqp_login uri amqp://h:port/%2f is invalid: ",
        ),
    ];
    for (text, want) in cases {
        let outcome = login_uri(text, redact, false).expect_err(text);
        assert!(!outcome.up, "{text}: {outcome:?}");
        assert!(outcome.reason.starts_with(want), "{text}: {outcome:?}");
        assert!(!outcome.reason.contains("s3cret"), "{text}: {outcome:?}");
    }
    let parsed = login_uri("amqp://guest:s3cret@h:5673/%2f", redact, false).unwrap();
    assert_eq!(parsed.authority.port, 5673);
    // With [pool.NAME.tls], amqps:// keeps its port and the TLS is the probe's own.
    let parsed = login_uri("amqps://guest:s3cret@h/%2f", redact, true).unwrap();
    assert_eq!(parsed.authority.port, 5671);
    assert_eq!(parsed.scheme, lapin::uri::AMQPScheme::AMQP);
}

#[test]
fn sanitize_cuts_at_char_boundary_and_replaces_controls() {
    assert_eq!(sanitize("a\nb\tc", 10), "a b c");
    assert_eq!(sanitize("ééé", 5), "éé");
    assert_eq!(sanitize(&"x".repeat(300), 200).len(), 200);
}

#[test]
fn parse_start_reads_product_and_version_past_nested_tables() {
    let mut caps = Vec::new();
    caps.push(10);
    caps.extend_from_slice(b"publisher_");
    caps.extend_from_slice(b"t\x01");
    let mut table = Vec::new();
    table.push(12);
    table.extend_from_slice(b"capabilities");
    table.push(b'F');
    table.extend_from_slice(&(caps.len() as u32).to_be_bytes());
    table.extend_from_slice(&caps);
    long_string(&mut table, "product", "RabbitMQ");
    long_string(&mut table, "version", "3.12.1");
    let start = parse_start(&start_payload(&table)).unwrap();
    assert_eq!(
        start.describe(),
        "Connection.Start received (RabbitMQ 3.12.1)"
    );
}

#[test]
fn parse_start_tolerates_unparsable_tables_but_not_other_methods() {
    let cases: [(Vec<u8>, Result<&str, &str>); 5] = [
        (start_payload(&[]), Ok("Connection.Start received")),
        (
            start_payload(b"\x07product?junk"),
            Ok("Connection.Start received"),
        ),
        (
            vec![0, 10, 0, 10, 0, 9, 0, 0, 1, 0],
            Ok("Connection.Start received"),
        ),
        (vec![0, 10, 0, 30, 0, 9], Err("class 10, method 30")),
        (vec![0, 10, 0], Err("too short")),
    ];
    for (payload, expected) in cases {
        match (parse_start(&payload), expected) {
            (Ok(start), Ok(reason)) => assert_eq!(start.describe(), reason),
            (Err(e), Err(part)) => assert!(e.contains(part), "{e}"),
            (got, want) => panic!("{payload:?}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn proxy_headers_name_the_probe_connection() {
    let source: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let destination: SocketAddr = "127.0.0.2:5672".parse().unwrap();
    assert_eq!(proxy_header(ProxyProtocol::Off, source, destination), None);
    assert_eq!(
        proxy_header(ProxyProtocol::V1, source, destination).as_deref(),
        Some(&b"PROXY TCP4 127.0.0.1 127.0.0.2 40000 5672\r\n"[..])
    );
    let v2 = proxy_header(ProxyProtocol::V2, source, destination).unwrap();
    assert_eq!(&v2[..12], &crate::proxy_protocol::V2_SIGNATURE);
    assert_eq!(v2[12], 0x21, "version 2, PROXY command");
    assert_eq!(v2[13], 0x11, "TCP over IPv4");
}

#[test]
fn quorum_answers() {
    let critical = br#"{"status":"failed","reason":"There are quorum queues that would lose their quorum if the target node is shut down","queues":[{"name":"qq","readable_name":"queue 'qq' in vhost '/'","type":"quorum","virtual_host":"/"},{"name":"s"}]}"#;
    let cases: &[(u16, &[u8], QuorumCheck)] = &[
        (200, br#"{"status":"ok"}"#, QuorumCheck::Safe),
        (
            503,
            critical,
            QuorumCheck::Critical {
                reason: "There are quorum queues that would lose their quorum if the target node is shut down".into(),
                queues: vec!["queue 'qq' in vhost '/'".into(), "s".into()],
            },
        ),
        (
            503,
            b"<html>busy</html>",
            QuorumCheck::Unexpected("HTTP 503: <html>busy</html>".into()),
        ),
        (
            401,
            br#"{"error":"not_authorized"}"#,
            QuorumCheck::Unexpected(r#"HTTP 401: {"error":"not_authorized"}"#.into()),
        ),
    ];
    for (status, body, want) in cases {
        assert_eq!(&quorum_answer(*status, body), want, "HTTP {status}");
    }
    assert!(matches!(quorum_answer(404, b""), QuorumCheck::Unexpected(r) if r.contains("3.8.7")));
}

/// The set check's arithmetic, table-driven: a queue keeps its quorum while a majority of its
/// members stays online; queues none of the leaving nodes serves, and classic queues, are not
/// judged.
#[test]
fn quorum_lost_counts_what_each_replicated_queue_keeps_online() {
    let q = |name: &str, kind: &str, members: &[&str], online: &[&str]| Replicas {
        name: name.into(),
        vhost: "/".into(),
        kind: kind.into(),
        members: members.iter().map(|m| m.to_string()).collect(),
        online: online.iter().map(|m| m.to_string()).collect(),
    };
    let abc = ["a", "b", "c"];
    let cases: &[(Replicas, &[&str], Option<&str>)] = &[
        // Three replicas: one may go, two may not.
        (q("q3", "quorum", &abc, &abc), &["a"], None),
        (
            q("q3", "quorum", &abc, &abc),
            &["a", "b"],
            Some("queue 'q3' in vhost '/' would keep 1 of 3 replicas online"),
        ),
        // c is already down: a alone now takes the majority.
        (
            q("q3", "quorum", &abc, &["a", "b"]),
            &["a"],
            Some("queue 'q3' in vhost '/' would keep 1 of 3 replicas online"),
        ),
        // ...but leaving c (offline) and a node that holds no replica changes nothing.
        (q("q3", "quorum", &abc, &["a", "b"]), &["c", "d"], None),
        // Five replicas keep three.
        (
            q(
                "q5",
                "quorum",
                &["a", "b", "c", "d", "e"],
                &["a", "b", "c", "d", "e"],
            ),
            &["a", "b"],
            None,
        ),
        (
            q("s", "stream", &abc, &abc),
            &["b", "c"],
            Some("queue 's' in vhost '/' would keep 1 of 3 replicas online"),
        ),
        // Classic queues have no members; a queue listing none is not judged.
        (q("c", "classic", &[], &[]), &["a", "b"], None),
        (q("odd", "quorum", &[], &["a"]), &["a", "b"], None),
    ];
    for (queue, leaving, want) in cases {
        let leaving: Vec<String> = leaving.iter().map(|n| n.to_string()).collect();
        let got = quorum_lost(std::slice::from_ref(queue), &leaving);
        let want: Vec<String> = want.iter().map(|w| w.to_string()).collect();
        assert_eq!(got, want, "{queue:?} without {leaving:?}");
    }
}

#[test]
fn only_management_api_urls_get_a_quorum_check() {
    let management_path = |url: &str| HttpUrl::parse(url).is_ok_and(|u| management_path(&u));
    assert!(management_path(
        "http://10.0.0.1:15672/api/health/checks/alarms"
    ));
    assert!(management_path("http://[::1]:15672/api/aliveness-test/%2F"));
    assert!(!management_path("http://10.0.0.1:8080/health"));
    assert!(!management_path("http://10.0.0.1:15672"));
    assert!(!management_path(
        "https://10.0.0.1:15671/api/health/checks/alarms"
    ));
}
