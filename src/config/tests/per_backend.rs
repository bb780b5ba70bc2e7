//! `[pool.NAME.per_backend_listeners]`: one listener per backend, its port, what it refuses to
//! be combined with, and the `rabbitmq.conf` lines for the nodes.

use super::*;

fn section(lines: &str) -> String {
    appended(&format!("[pool.rabbitmq.per_backend_listeners]\n{lines}"))
}

fn messages(text: &str) -> Vec<String> {
    problems_of(text)
        .iter()
        .map(|p| p.render(Path::new("test.toml")))
        .collect()
}

#[test]
fn each_backend_gets_a_listener_on_base_port_plus_its_position() {
    let config = parse(&section(
        "listen = \"0.0.0.0\"\nbase_port = 5561\nadvertised_host = \"warren.example.com\"\n\
         idle_timeout = \"1h\"\nmax_connections = 50",
    ))
    .unwrap();
    let own: Vec<(&str, String, &str)> = config.listeners[1..]
        .iter()
        .map(|l| {
            let per = l.per_backend.as_ref().unwrap();
            (l.name.as_str(), l.listen.to_string(), per.backend.as_str())
        })
        .collect();
    assert_eq!(
        own,
        [
            ("rabbitmq/rabbit-a", "0.0.0.0:5561".to_string(), "rabbit-a"),
            ("rabbitmq/rabbit-b", "0.0.0.0:5562".to_string(), "rabbit-b"),
        ]
    );
    let a = &config.listeners[1];
    assert_eq!(a.pool, "rabbitmq");
    assert_eq!(a.idle_timeout, Duration::from_secs(3600));
    assert_eq!(a.max_connections, 50);
    assert_eq!(a.next_upstream_tries, 1);
    assert_eq!(
        a.per_backend.as_ref().unwrap().advertised_host,
        "warren.example.com"
    );
    // The [[listener]] is untouched and first.
    assert!(config.listeners[0].per_backend.is_none());
    assert_eq!(
        rabbitmq_conf(&config).unwrap(),
        "# node rabbit-a (10.0.0.1:5672): pool rabbitmq, backend rabbit-a, through warren's \
         listener rabbitmq/rabbit-a on 0.0.0.0:5561\n\
         stream.advertised_host = warren.example.com\nstream.advertised_port = 5561\n\n\
         # node rabbit-b (10.0.0.2:5672): pool rabbitmq, backend rabbit-b, through warren's \
         listener rabbitmq/rabbit-b on 0.0.0.0:5562\n\
         stream.advertised_host = warren.example.com\nstream.advertised_port = 5562\n"
    );
    assert!(rabbitmq_conf(&parse(BASE).unwrap()).is_none());
}

#[test]
fn a_backends_listener_port_wins_and_a_specific_ip_is_advertised() {
    let text = section("listen = \"192.0.2.10\"\nbase_port = 6000").replacen(
        "addr = \"10.0.0.2:5672\"",
        "addr = \"10.0.0.2:5672\"\nlistener_port = 7002",
        1,
    );
    let config = parse(&text).unwrap();
    let ports: Vec<String> = config.listeners[1..]
        .iter()
        .map(|l| l.listen.to_string())
        .collect();
    assert_eq!(ports, ["192.0.2.10:6000", "192.0.2.10:7002"]);
    assert_eq!(
        config.listeners[2]
            .per_backend
            .as_ref()
            .unwrap()
            .advertised_host,
        "192.0.2.10"
    );
}

#[test]
fn mistakes_are_named_with_their_key() {
    let cases: &[(String, &str)] = &[
        (
            section("base_port = 5561"),
            "pool.rabbitmq.per_backend_listeners.listen: required",
        ),
        (
            section("listen = \"0.0.0.0:5561\"\nbase_port = 5561"),
            "must be an IP address without a port",
        ),
        (
            section("listen = \"0.0.0.0\"\nbase_port = 5561"),
            "pool.rabbitmq.per_backend_listeners.advertised_host: required when listen = \"0.0.0.0\"",
        ),
        (
            section("listen = \"127.0.0.1\""),
            "pool.rabbitmq.backend[0].listener_port: backend \"rabbit-a\" has no listener port",
        ),
        (
            section("listen = \"127.0.0.1\"\nbase_port = 65535"),
            "backend \"rabbit-b\"'s listener port must be from 1 to 65535",
        ),
        (
            section("listen = \"127.0.0.1\"\nbase_port = 5671"),
            "the per-backend listener \"rabbitmq/rabbit-b\" on 127.0.0.1:5672 takes the address \
             of listener \"amqp\" on 0.0.0.0:5672",
        ),
        (
            appended("[admin]\nlisten = \"127.0.0.1:9000\"\n[pool.rabbitmq.per_backend_listeners]\nlisten = \"0.0.0.0\"\nadvertised_host = \"w\"\nbase_port = 8999"),
            "takes the address of the admin API on 127.0.0.1:9000",
        ),
        (
            section("listen = \"127.0.0.1\"\nbase_port = 7000").replacen(
                "addr = \"10.0.0.2:5672\"",
                "addr = \"10.0.0.2:5672\"\nlistener_port = 7000",
                1,
            ),
            "takes the address of listener \"rabbitmq/rabbit-a\" on 127.0.0.1:7000",
        ),
        (
            replaced("addr = \"10.0.0.1:5672\"", "addr = \"10.0.0.1:5672\"\nlistener_port = 7000"),
            "pool.rabbitmq.backend[0].listener_port = 7000: only applies with a \
             [pool.rabbitmq.per_backend_listeners] section",
        ),
        (
            section("listen = \"127.0.0.1\"\nbase_port = 7000\nproxy_protocol = \"v3\""),
            "pool.rabbitmq.per_backend_listeners.proxy_protocol",
        ),
        (
            section("listen = \"127.0.0.1\"\nbase_port = 7000").replacen(
                "addr = \"10.0.0.1:5672\"",
                "addr = \"rabbit.headless:5672\"\nexpand = true",
                1,
            ),
            "pool.rabbitmq.backend[0].expand = true: cannot be used with \
             [pool.rabbitmq.per_backend_listeners]",
        ),
        (
            section("listen = \"127.0.0.1\"\nbase_port = 7000")
                + "\n[pool.rabbitmq.rebalance]\nmode = \"continuous\"\n",
            "pool.rabbitmq.rebalance.mode = \"continuous\": cannot be used with \
             [pool.rabbitmq.per_backend_listeners]",
        ),
    ];
    for (text, expected) in cases {
        let messages = messages(text);
        assert!(
            messages.iter().any(|m| m.contains(expected)),
            "expected {expected:?} in {messages:#?}"
        );
    }
}

#[test]
fn a_reload_that_moves_a_nodes_port_says_what_the_node_must_advertise() {
    let before = parse(&section("listen = \"127.0.0.1\"\nbase_port = 7000")).unwrap();
    assert!(advertised_changes(&before, &before).is_empty());
    // A backend inserted first: rabbit-a and rabbit-b move up by one.
    let inserted = section("listen = \"127.0.0.1\"\nbase_port = 7000").replacen(
        "[[pool.rabbitmq.backend]]",
        "[[pool.rabbitmq.backend]]\nname = \"rabbit-0\"\naddr = \"10.0.0.9:5672\"\n\n[[pool.rabbitmq.backend]]",
        1,
    );
    let after = parse(&inserted).unwrap();
    let changes = advertised_changes(&before, &after);
    assert_eq!(changes.len(), 2, "{changes:#?}");
    assert_eq!(
        changes[0],
        "per-backend listener \"rabbitmq/rabbit-a\" now advertises 127.0.0.1:7001 (was \
         127.0.0.1:7000): set node \"rabbit-a\"'s stream.advertised_host/stream.advertised_port \
         to match (warren check --rabbitmq-config prints them); until then the stream clients \
         it sends to 127.0.0.1:7000 reach whatever listens there now"
    );
    // A new listener (rabbit-0's) is no change for a node that advertises nothing yet.
    assert!(!changes.iter().any(|c| c.contains("rabbit-0")));
}
