use super::*;

fn status_fixture() -> Status {
    serde_json::from_value(serde_json::json!({
        "version": "0.1.0",
        "listeners": [{"name": "amqp", "listen": "0.0.0.0:5672", "pool": "rabbitmq", "active_connections": 3}],
        "pools": [
            {"name": "rabbitmq", "balance": "least_conn", "min_available": 1, "available": 2, "total": 3,
             "backends": [
                {"name": "rabbit-a", "addr": "10.0.0.1:5672", "weight": 1, "backup": false,
                 "health": "up", "admin": "active", "available": true, "active_connections": 1,
                 "health_changed_at": "2026-11-21T23:59:00Z", "drain_deadline": null,
                 "last_probe": {"up": true, "reason": "Connection.Start received (RabbitMQ 3.12.1)",
                                "duration_ms": 1.2, "at": "2026-11-21T23:59:01Z"}},
                {"name": "rabbit-bb", "addr": "10.0.0.22:5672", "weight": 1, "backup": true,
                 "health": "unknown", "admin": "draining", "available": false, "active_connections": 12,
                 "drain_deadline": "2026-11-22T00:04:06Z", "last_probe": null},
                {"name": "shared", "addr": "10.0.0.3:5672", "health": "down", "admin": "drained",
                 "available": false, "active_connections": 0,
                 "last_probe": {"up": false, "reason": "connection refused", "duration_ms": 0.3, "at": "2026-11-21T22:00:06Z"}}
             ]},
            {"name": "other", "balance": "round_robin", "min_available": 0, "available": 1, "total": 1,
             "backends": [
                {"name": "shared", "addr": "10.0.1.3:5672", "health": "up", "admin": "active",
                 "available": true, "active_connections": 0, "last_probe": null}
             ]}
        ]
    }))
    .expect("fixture matches the contract")
}

fn now() -> SystemTime {
    humantime::parse_rfc3339("2026-11-21T23:59:06Z").unwrap()
}

#[test]
fn default_admin_url_is_the_default_admin_listen() {
    assert_eq!(
        DEFAULT_ADMIN_URL,
        format!("http://{}", config::DEFAULT_ADMIN_LISTEN)
    );
}

#[test]
fn status_renders_a_header_per_pool_and_aligned_rows() {
    let text = render_status(&status_fixture(), now(), 200);
    assert!(text.contains("listener amqp on 0.0.0.0:5672 -> pool rabbitmq: 3 connections\n"));
    assert!(text.contains("pool rabbitmq (least_conn): 2/3 available, min_available 1\n"));
    assert!(text.contains("pool other (round_robin): 1/1 available, min_available 0\n"));
    let lines: Vec<&str> = text.lines().collect();
    let header = lines
        .iter()
        .position(|l| l.trim_start().starts_with("NAME"))
        .unwrap();
    let columns: Vec<usize> = ["ADDR", "HEALTH", "ADMIN", "CONNS", "LAST PROBE"]
        .iter()
        .map(|c| lines[header].find(c).unwrap())
        .collect();
    let rows = &lines[header + 1..header + 4];
    let expected = [
        [
            "10.0.0.1:5672",
            "up",
            "active",
            "1",
            "up 1.2ms 5s ago: Connection.Start received (RabbitMQ 3.12.1)",
        ],
        ["10.0.0.22:5672", "unknown", "draining (5m left)", "12", "-"],
        [
            "10.0.0.3:5672",
            "down",
            "drained",
            "0",
            "down 0.3ms 1h ago: connection refused",
        ],
    ];
    for (row, cells) in rows.iter().zip(expected) {
        for (&at, cell) in columns.iter().zip(cells) {
            assert_eq!(&row[at..at + cell.len()], cell, "row {row:?}");
        }
    }
    assert!(rows[1].starts_with("  rabbit-bb (backup)  "));
}

#[test]
fn last_probe_is_cut_to_fit_the_width() {
    let text = render_status(&status_fixture(), now(), 110);
    let row = text.lines().find(|l| l.contains("rabbit-a")).unwrap();
    assert_eq!(row.chars().count(), 110, "{row:?}");
    assert!(row.ends_with('…'));
    // A very narrow terminal still shows the start of the probe.
    let text = render_status(&status_fixture(), now(), 20);
    let row = text.lines().find(|l| l.contains("rabbit-a")).unwrap();
    assert!(row.contains("up 1.2ms 5s ago: Conn"), "{row:?}");
}

#[test]
fn names_and_tags_resolve_to_every_pool_they_are_in() {
    let mut status = status_fixture();
    status.pools[0].backends[0].tags = vec!["updating".into()];
    status.pools[1].backends[0].tags = vec!["updating".into()];
    let pair = |p: &str, b: &str| (p.to_string(), b.to_string());
    let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        targets_of(&status, &names(&["rabbit-a"]), &[], None).unwrap(),
        [pair("rabbitmq", "rabbit-a")]
    );
    // A node in two pools (AMQP and management listeners) is both of its entries.
    assert_eq!(
        targets_of(&status, &names(&["shared"]), &[], None).unwrap(),
        [pair("rabbitmq", "shared"), pair("other", "shared")]
    );
    assert_eq!(
        targets_of(&status, &names(&["shared"]), &[], Some("other")).unwrap(),
        [pair("other", "shared")]
    );
    // Names and a tag together, each backend once, in order.
    assert_eq!(
        targets_of(
            &status,
            &names(&["rabbit-bb", "rabbit-a"]),
            &names(&["updating"]),
            None
        )
        .unwrap(),
        [
            pair("rabbitmq", "rabbit-bb"),
            pair("rabbitmq", "rabbit-a"),
            pair("other", "shared")
        ]
    );
    let e = targets_of(&status, &names(&["nope"]), &[], None).unwrap_err();
    assert_eq!(e.exit_code(), 1);
    assert_eq!(e.to_string(), "no backend nope (pools: rabbitmq, other)");
    let e = targets_of(&status, &[], &names(&["canary"]), Some("other")).unwrap_err();
    assert_eq!(e.to_string(), "no backend has tag canary in pool other");
}

#[test]
fn admin_urls() {
    let c = Client::new("http://127.0.0.1:9901", None).unwrap();
    assert_eq!(
        (c.url.host(), c.url.port(), c.prefix.as_str()),
        ("127.0.0.1", 9901, "")
    );
    let c = Client::new("[::1]:9901", None).unwrap();
    assert_eq!((c.url.host(), c.url.authority()), ("::1", "[::1]:9901"));
    let c = Client::new("http://lb.example/warren/", None).unwrap();
    assert_eq!((c.url.port(), c.prefix.as_str()), (80, "/warren"));
    for bad in [
        "https://127.0.0.1:9901",
        "http://u:p@127.0.0.1:1",
        "http://",
        "http://h:1/?x=1",
    ] {
        let e = Client::new(bad, None)
            .err()
            .unwrap_or_else(|| panic!("{bad} accepted"));
        assert_eq!(e.exit_code(), 2, "{bad}: {e}");
    }
}

#[test]
fn drain_body_has_deadline_and_local_only_when_given() {
    let mut drain = BackendDrain {
        pool: "p",
        name: "b",
        deadline: None,
        force: false,
        local: false,
    };
    assert_eq!(drain_body(&drain), serde_json::json!({"force": false}));
    let d = parse_deadline(" 5m ").unwrap();
    assert_eq!(d.duration, Duration::from_secs(300));
    drain.deadline = Some(&d);
    drain.force = true;
    drain.local = true;
    assert_eq!(
        drain_body(&drain),
        serde_json::json!({"deadline": "5m", "force": true, "local": true})
    );
    assert!(parse_deadline("soon").is_err());
}

#[test]
fn error_messages_come_from_the_body() {
    let s = StatusCode::CONFLICT;
    assert_eq!(
        error_message(s, br#"{"error":"min_available"}"#),
        "min_available"
    );
    assert_eq!(error_message(s, b" plain text \n"), "plain text");
    assert_eq!(error_message(s, b""), "Conflict");
    let e = CtlError::Refused {
        what: "drain of a (pool p)".into(),
        status: s,
        message: "would leave 0".into(),
        reason: None,
    };
    assert_eq!(
        e.to_string(),
        "drain of a (pool p) refused (HTTP 409 Conflict): would leave 0"
    );
}

#[test]
fn path_segments_are_encoded() {
    assert_eq!(
        backend_path("rabbitmq", "rabbit-a.b_c", "drain"),
        "/v1/pools/rabbitmq/backends/rabbit-a.b_c/drain"
    );
    assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
}

#[test]
fn short_durations() {
    for (secs, text) in [
        (0, "0s"),
        (59, "59s"),
        (60, "1m"),
        (3599, "59m"),
        (3600, "1h"),
        (90_000, "1d"),
    ] {
        assert_eq!(short_duration(Duration::from_secs(secs)), text);
    }
    assert_eq!(probe_duration(1.23), "1.2ms");
    assert_eq!(probe_duration(250.4), "250ms");
    assert_eq!(probe_duration(1500.0), "1.5s");
}

#[test]
fn health_says_since_when() {
    let mut status = status_fixture();
    let b = &mut status.pools[0].backends[2];
    b.health_changed_at = Some("2026-11-21T23:56:00Z".into());
    b.health_reason = Some("failed connect from the data path (refused)".into());
    assert_eq!(health_cell(b, now()), "down for 3m");
    // Unknown since start, with no change yet: nothing to say about since when.
    let unknown = &status.pools[0].backends[1];
    assert_eq!(health_cell(unknown, now()), "unknown");
    let text = render_status(&status, now(), 200);
    assert!(text.contains("  down for 3m  "), "{text}");
}

#[test]
fn status_shows_slow_start_and_on_down() {
    let mut status = status_fixture();
    status.pools[1].slow_start = Some("30s".into());
    status.pools[1].on_down = Some("close".into());
    status.pools[1].backends[0].slow_start_percent = Some(40);
    assert_eq!(
        admin_cell(&status.pools[1].backends[0], now()),
        "active (slow start 40%)"
    );
    // Done ramping (or never): the admin state alone.
    assert_eq!(admin_cell(&status.pools[0].backends[0], now()), "active");
    let text = render_status(&status, now(), 200);
    assert!(
        text.contains(
            "pool other (round_robin): 1/1 available, min_available 0, slow_start 30s, on_down close\n"
        ),
        "{text}"
    );
    assert!(text.contains("  active (slow start 40%)  "), "{text}");
    // Its imbalance while a rebalance runs; nothing when balanced.
    let running = |state| RebalanceStatus {
        basis: Default::default(),
        imbalance: 0.5,
        mode: "on_return".into(),
        state,
    };
    status.pools[1].rebalance = Some(running(RebalanceState::Running));
    let text = render_status(&status, now(), 200);
    assert!(
        text.contains("on_down close, imbalance 50% (rebalancing)\n"),
        "{text}"
    );
    status.pools[1].rebalance = Some(running(RebalanceState::Balanced));
    let text = render_status(&status, now(), 200);
    // The other pool has neither set: its header is as before.
    assert!(text.contains("pool rabbitmq (least_conn): 2/3 available, min_available 1\n"));
}

#[test]
fn status_shows_the_fleet_and_local_changes() {
    let mut status = status_fixture();
    status.pools[0].backends[2].local_change = Some("2026-11-21T23:58:00Z".into());
    assert_eq!(
        admin_cell(&status.pools[0].backends[2], now()),
        "drained (local)"
    );
    let fleet: FleetStatus = serde_json::from_value(serde_json::json!({
        "instance": "warren-a", "store": "ok",
        "instances": [
            {"instance": "warren-a", "reported": "2026-11-21T23:59:05Z", "version": "0.1.0"},
            {"instance": "warren-b", "reported": "2026-11-21T23:59:04Z", "version": "0.1.0"}
        ],
        "backends": [
            {"pool": "rabbitmq", "backend": "rabbit-a", "active_connections": 7, "disagreement": null,
             "instances": [
                {"instance": "warren-a", "active_connections": 3, "health": "up", "admin": "active"},
                {"instance": "warren-b", "active_connections": 4, "health": "up", "admin": "active"}]},
            {"pool": "rabbitmq", "backend": "shared", "active_connections": 2,
             "disagreement": "admin: warren-a has it drained (local), warren-b has it active",
             "instances": [
                {"instance": "warren-a", "active_connections": 0, "health": "up", "admin": "drained", "local": true},
                {"instance": "warren-b", "active_connections": 2, "health": "up", "admin": "active"}]}
        ]
    }))
    .expect("fixture matches the contract");
    let text = render_fleet(&fleet, now(), 200);
    assert!(
        text.starts_with("fleet as seen by warren-a: etcd ok, 2 instances live\n"),
        "{text}"
    );
    let row = |name: &str| text.lines().find(|l| l.contains(name)).unwrap().to_owned();
    assert!(row("warren-b  ").ends_with("2s ago"), "{text}");
    assert!(
        row("rabbitmq/rabbit-a").ends_with("7      warren-a 3, warren-b 4"),
        "{text}"
    );
    assert!(
        row("rabbitmq/shared").ends_with("2      warren-a 0 (drained, local), warren-b 2"),
        "{text}"
    );
    assert!(text.contains(
        "  ! rabbitmq/shared: admin: warren-a has it drained (local), warren-b has it active\n"
    ));
    let down = FleetStatus {
        store: "unreachable: connection refused".into(),
        ..fleet
    };
    assert_eq!(
        render_fleet(&down, now(), 200),
        "fleet as seen by warren-a: etcd unreachable: connection refused\n  the drains in force \
         stay; changes need etcd, or --local for this instance only\n"
    );
}

#[test]
fn status_lists_a_listeners_sni_routes_under_it() {
    let mut status = status_fixture();
    status.listeners[0].sni = vec![
        crate::api::SniRouteStatus {
            server_name: "orders.example.com".into(),
            pool: "other".into(),
        },
        crate::api::SniRouteStatus {
            server_name: "*.streams.example.com".into(),
            pool: "rabbitmq".into(),
        },
    ];
    let text = render_status(&status, now(), 200);
    assert!(text.starts_with(
        "listener amqp on 0.0.0.0:5672 -> pool rabbitmq: 3 connections\n\
         \x20 sni orders.example.com -> pool other\n\
         \x20 sni *.streams.example.com -> pool rabbitmq\n"
    ));
    // Without routes the JSON has no `sni` key, as before.
    let json = serde_json::to_value(status_fixture()).unwrap();
    assert!(json["listeners"][0].get("sni").is_none());
}
