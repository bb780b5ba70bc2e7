//! `[[listener.sni]]` and `sni_timeout`: the routes built, defaults, and each problem with its
//! key, value and line.

use super::*;

/// BASE with a second pool "orders", and `lines` on its listener (after `pool`).
fn with_sni(lines: &str) -> String {
    let text = replaced(
        "pool = \"rabbitmq\"\n",
        &format!("pool = \"rabbitmq\"\n{lines}\n"),
    );
    format!(
        "{text}\n[pool.orders]\n[[pool.orders.backend]]\nname = \"o\"\naddr = \"10.0.1.1:5671\"\n"
    )
}

fn route(name: &str, pool: &str) -> String {
    format!("[[listener.sni]]\nserver_name = \"{name}\"\npool = \"{pool}\"\n")
}

#[test]
fn routes_load_in_file_order_with_the_default_timeout() {
    assert_eq!(parse(BASE).unwrap().listeners[0].sni, None);
    let text =
        with_sni(&(route("Orders.Example.com", "orders") + &route("*.example.com", "rabbitmq")));
    let config = parse(&text).unwrap();
    let listener = &config.listeners[0];
    let sni = listener.sni.as_ref().unwrap();
    assert_eq!(sni.timeout, DEFAULT_SNI_TIMEOUT);
    let listed: Vec<(&str, &str)> = sni
        .routes
        .list
        .iter()
        .map(|r| (r.server_name.as_str(), &*r.pool))
        .collect();
    assert_eq!(
        listed,
        [
            ("orders.example.com", "orders"),
            ("*.example.com", "rabbitmq")
        ]
    );
    assert_eq!(
        sni.routes.pool_for("orders.example.com").map(|p| &**p),
        Some("orders")
    );
    assert_eq!(
        sni.routes.pool_for("x.example.com").map(|p| &**p),
        Some("rabbitmq")
    );
    assert_eq!(
        listener.pools().collect::<Vec<_>>(),
        ["rabbitmq", "orders", "rabbitmq"]
    );
    let timed = with_sni(&format!(
        "sni_timeout = \"250ms\"\n{}",
        route("a.example", "orders")
    ));
    let sni = parse(&timed).unwrap().listeners[0].sni.clone().unwrap();
    assert_eq!(sni.timeout, Duration::from_millis(250));
}

/// Each broken SNI setting is one problem: its key, its value, the start of its message.
#[test]
fn each_sni_problem_names_its_key_and_value() {
    let ok = route("ok.example.com", "orders");
    let cases: Vec<(&str, String, &str, &str, &str)> = vec![
        (
            "an unknown pool",
            route("a.example.com", "billing"),
            "listener[0].sni[0].pool",
            "\"billing\"",
            "no such pool; defined pools: ",
        ),
        (
            "a name twice, in another case",
            format!("{ok}{}", route("OK.example.com", "rabbitmq")),
            "listener[0].sni[1].server_name",
            "\"OK.example.com\"",
            "duplicate server_name (also listener[0].sni[0].server_name",
        ),
        (
            "a wildcard inside",
            route("a.*.example.com", "orders"),
            "listener[0].sni[0].server_name",
            "\"a.*.example.com\"",
            "a wildcard is \"*.\" followed by a name",
        ),
        (
            "a bare wildcard",
            route("*", "orders"),
            "listener[0].sni[0].server_name",
            "\"*\"",
            "a wildcard is",
        ),
        (
            "a Unicode name",
            route("bücher.example", "orders"),
            "listener[0].sni[0].server_name",
            "\"bücher.example\"",
            "not ASCII: write an internationalised name as its A-labels",
        ),
        (
            "a port",
            route("a.example.com:5671", "orders"),
            "listener[0].sni[0].server_name",
            "\"a.example.com:5671\"",
            "not a host name",
        ),
        (
            "sni_timeout without routes",
            "sni_timeout = \"1s\"".to_string(),
            "listener[0].sni_timeout",
            "\"1s\"",
            "only applies with [[listener.sni]] routes",
        ),
        (
            "a zero sni_timeout",
            format!("sni_timeout = \"0s\"\n{ok}"),
            "listener[0].sni_timeout",
            "\"0s\"",
            "must be longer than 0",
        ),
        (
            "no routes",
            "sni = []".to_string(),
            "listener[0].sni",
            "[]",
            "an empty list routes nothing",
        ),
        (
            "with TLS termination",
            format!(
                "[listener.tls]\ncert = \"{0}client.pem\"\nkey = \"{0}client.key\"\n{ok}",
                concat!(env!("CARGO_MANIFEST_DIR"), "/src/config/tests/tls/")
            ),
            "listener[0].sni",
            "",
            "cannot be combined with [listener.tls]",
        ),
    ];
    for (what, lines, key, value, message) in cases {
        let problems = problems_of(&with_sni(&lines));
        assert_eq!(problems.len(), 1, "{what}: {problems:?}");
        let p = &problems[0];
        assert_eq!((p.key.as_str(), p.value.as_str()), (key, value), "{what}");
        assert!(p.message.starts_with(message), "{what}: {}", p.message);
        assert!(p.line.is_some(), "{what}: no line");
    }
}

#[test]
fn an_unknown_route_key_is_refused() {
    let text =
        with_sni("[[listener.sni]]\nserver_name = \"a.example\"\npool = \"orders\"\nport = 1");
    let error = parse(&text).unwrap_err().to_string();
    assert!(error.contains("unknown field `port`"), "{error}");
}
