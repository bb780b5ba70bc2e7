//! `[resolver]`, `resolve_interval` and `expand`: defaults, what they load to, and each problem
//! with its key, value and line.

use super::*;

fn named<'a>(pool: &'a PoolConfig, name: &str) -> &'a BackendConfig {
    pool.backends.iter().find(|b| b.name == name).unwrap()
}

/// BASE's pool with `extra` keys (pool-level) and one more backend written as `backend`.
fn with_backend(pool_extra: &str, backend: &str) -> String {
    let text = BASE.replacen(
        "[pool.rabbitmq]\n",
        &format!("[pool.rabbitmq]\n{pool_extra}\n"),
        1,
    );
    format!("{text}\n[[pool.rabbitmq.backend]]\n{backend}\n")
}

#[test]
fn without_the_keys_names_resolve_once() {
    let config = parse(&with_backend(
        "",
        "name = \"c\"\naddr = \"rabbit-a.internal:5672\"",
    ))
    .unwrap();
    assert_eq!(config.resolver, ResolverConfig::default());
    let pool = config.pool("rabbitmq").unwrap();
    assert_eq!(pool.resolve_interval, None);
    let c = named(pool, "c");
    assert_eq!(c.dns_name.as_deref(), Some("rabbit-a.internal"));
    assert_eq!(c.expanded_from, None);
    assert_eq!(named(pool, "rabbit-a").dns_name, None);
}

#[test]
fn resolver_and_interval_load() {
    let text = format!(
        "{}\n[resolver]\nnameservers = [\"10.0.0.2\", \"10.0.0.3:5353\", \"[fd00::53]:53\"]\n",
        with_backend(
            "resolve_interval = \"30s\"",
            "name = \"c\"\naddr = \"rabbit-a.internal:5672\""
        )
    );
    let config = parse(&text).unwrap();
    assert_eq!(
        config.resolver.nameservers,
        [
            "10.0.0.2:53".parse::<SocketAddr>().unwrap(),
            "10.0.0.3:5353".parse().unwrap(),
            "[fd00::53]:53".parse().unwrap()
        ]
    );
    assert_eq!(
        config.pool("rabbitmq").unwrap().resolve_interval,
        Some(Duration::from_secs(30))
    );
    assert_eq!(
        super::super::resolve::nameservers_in(&text),
        config.resolver.nameservers
    );
}

#[test]
fn expand_makes_one_backend_per_address_by_sorted_address() {
    let text = with_backend(
        "",
        "name = \"node\"\naddr = \"rabbit.headless:5672\"\nexpand = true\nweight = 2\ntags = [\"az1\"]",
    );
    let config = parse(&text).unwrap();
    let pool = config.pool("rabbitmq").unwrap();
    let expanded: Vec<(&str, String, &str, u32)> = pool
        .backends
        .iter()
        .filter(|b| b.expanded_from.as_deref() == Some("node"))
        .map(|b| {
            (
                b.name.as_str(),
                b.addr.to_string(),
                b.host.as_str(),
                b.weight,
            )
        })
        .collect();
    assert_eq!(
        expanded,
        [
            ("node-1", "10.2.0.1:5672".to_string(), "10.2.0.1", 2),
            ("node-2", "10.2.0.2:5672".to_string(), "10.2.0.2", 2),
            ("node-3", "10.2.0.3:5672".to_string(), "10.2.0.3", 2),
        ]
    );
    let b = named(pool, "node-2");
    assert_eq!(b.dns_name.as_deref(), Some("rabbit.headless"));
    assert_eq!(b.tags, ["az1"]);
    assert_eq!(pool.backends.len(), 5);
}

#[test]
fn each_problem_names_key_value_and_line() {
    let headless = "name = \"node\"\naddr = \"rabbit.headless:5672\"\nexpand = true";
    // (text, key, value as displayed, fragment of the message)
    let cases: Vec<(String, &str, &str, &str)> = vec![
        (
            with_backend("resolve_interval = \"500ms\"", headless),
            "pool.rabbitmq.resolve_interval",
            "\"500ms\"",
            "at least 1s",
        ),
        (
            with_backend("resolve_interval = \"soon\"", headless),
            "pool.rabbitmq.resolve_interval",
            "\"soon\"",
            "not a duration",
        ),
        (
            with_backend(
                "",
                "name = \"node\"\naddr = \"10.0.0.7:5672\"\nexpand = true",
            ),
            "pool.rabbitmq.backend[2].expand",
            "true",
            "needs a host name",
        ),
        (
            with_backend(
                "",
                &format!("{headless}\nmanagement = \"http://{{host}}:15672\""),
            ),
            "pool.rabbitmq.backend[2].expand",
            "true",
            "management endpoint",
        ),
        (
            format!(
                "{}\n[[pool.rabbitmq.backend]]\nname = \"node-2\"\naddr = \"10.0.0.9:5672\"\n",
                with_backend("", headless)
            ),
            "pool.rabbitmq.backend",
            "\"node-2\"",
            "also another backend's",
        ),
        (
            appended("[resolver]\nnameservers = [\"dns.internal\"]"),
            "resolver.nameservers[0]",
            "\"dns.internal\"",
            "not an IP address",
        ),
    ];
    for (text, key, value, fragment) in &cases {
        let problems = problems_of(text);
        assert_eq!(
            problems.len(),
            1,
            "{key}: expected one problem, got {problems:#?}"
        );
        let p = &problems[0];
        assert_eq!((p.key.as_str(), p.value.as_str()), (*key, *value), "{p:#?}");
        assert!(
            p.message.contains(fragment),
            "{key}: {:?} lacks {fragment:?}",
            p.message
        );
        if *key != "pool.rabbitmq.backend" {
            assert!(p.line.is_some(), "{key}: no line in {p:#?}");
        }
    }
    let empty = problems_of(&appended("[resolver]\nnameservers = []"));
    assert_eq!(empty[0].key, "resolver.nameservers");
}

#[test]
fn an_unresolvable_expand_name_is_reported_once() {
    let problems = problems_of(&with_backend(
        "",
        "name = \"node\"\naddr = \"nowhere.invalid:5672\"\nexpand = true",
    ));
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert_eq!(problems[0].key, "pool.rabbitmq.backend[2].addr");
}

/// With `[pool.NAME.tls]`, each expanded backend speaks TLS checked against the host name as
/// written (the default `server_name`), not its address.
#[test]
fn expanded_backends_carry_the_pools_tls_for_the_name_as_written() {
    let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/src/config/tests/tls/ca.pem");
    let text = format!(
        "{}\n[pool.rabbitmq.tls]\nca = \"{ca}\"\n",
        with_backend(
            "",
            "name = \"node\"\naddr = \"rabbit.headless:5671\"\nexpand = true"
        )
    );
    let config = parse(&text).unwrap();
    let pool = config.pool("rabbitmq").unwrap();
    let names: Vec<(&str, String)> = pool
        .backends
        .iter()
        .map(|b| {
            let tls = b.tls.as_ref().unwrap();
            (b.name.as_str(), tls.server_name.to_str().into_owned())
        })
        .collect();
    assert_eq!(
        names,
        [
            ("rabbit-a", "10.0.0.1".to_string()),
            ("rabbit-b", "10.0.0.2".to_string()),
            ("node-1", "rabbit.headless".to_string()),
            ("node-2", "rabbit.headless".to_string()),
            ("node-3", "rabbit.headless".to_string()),
        ]
    );
}
