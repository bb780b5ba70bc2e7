#[test]
fn a_pool_past_the_supported_size_is_refused() {
    let pool = |n: usize| {
        let mut text = String::from(
            "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:5672\"\npool = \"p\"\n[pool.p]\n",
        );
        for i in 0..n {
            text += &format!(
                "[[pool.p.backend]]\nname = \"b{i}\"\naddr = \"127.0.0.1:{}\"\n",
                1000 + i
            );
        }
        from_toml_offline(&text, Path::new("big.toml"))
    };
    assert!(pool(MAX_BACKENDS_PER_POOL).is_ok());
    let error = pool(MAX_BACKENDS_PER_POOL + 1).unwrap_err().to_string();
    assert!(
        error.contains("pool.p.backend")
            && error.contains("1001")
            && error.contains("at most 1000"),
        "{error}"
    );
}

use super::*;

mod fleet;
mod listener_sni;
mod listener_tls;
mod pool_tls;
mod resolve;

/// A valid two-node config that cases edit; every line in it is unique so `replaced` is exact.
const BASE: &str = r#"
[[listener]]
name = "amqp"
listen = "0.0.0.0:5672"
pool = "rabbitmq"

[pool.rabbitmq]
balance = "round_robin"

[[pool.rabbitmq.backend]]
name = "rabbit-a"
addr = "10.0.0.1:5672"

[[pool.rabbitmq.backend]]
name = "rabbit-b"
addr = "10.0.0.2:5672"
"#;

/// Resolves only the names tests use, so no test touches DNS.
fn fake_resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    match host {
        "localhost" => Ok(vec![SocketAddr::from((Ipv4Addr::LOCALHOST, port))]),
        "rabbit-a.internal" => Ok(vec![SocketAddr::from(([10, 1, 0, 1], port))]),
        // A headless service: several addresses, given unsorted.
        "rabbit.headless" => Ok(vec![
            SocketAddr::from(([10, 2, 0, 3], port)),
            SocketAddr::from(([10, 2, 0, 1], port)),
            SocketAddr::from(([10, 2, 0, 2], port)),
        ]),
        _ => Err("no such host".to_string()),
    }
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    parse_with(text, Path::new("test.toml"), &fake_resolve)
}

fn replaced(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "BASE has no {from:?}");
    BASE.replacen(from, to, 1)
}

fn appended(tail: &str) -> String {
    format!("{BASE}\n{tail}")
}

fn problems_of(text: &str) -> Vec<Problem> {
    match parse(text) {
        Err(ConfigError::Invalid { problems, .. }) => problems,
        Err(other) => panic!("expected validation problems, got: {other}\n--- for:\n{text}"),
        Ok(_) => panic!("expected validation problems, got Ok\n--- for:\n{text}"),
    }
}

#[test]
fn probe_timeout_may_reach_or_pass_interval() {
    let text =
        appended("[pool.rabbitmq.health]\nkind = \"tcp\"\ninterval = \"500ms\"\ntimeout = \"1s\"");
    let health = parse(&text).unwrap().pools[0].health.clone().unwrap();
    assert_eq!(
        (health.interval, health.timeout),
        (Duration::from_millis(500), Duration::from_secs(1))
    );
}

#[test]
fn duration_limits_by_key() {
    let cases = [
        ("listener[0].connect_timeout", MAX_CONNECT_TIMEOUT),
        ("listener[0].idle_timeout", MAX_IDLE_TIMEOUT),
        (
            "listener[3].next_upstream_timeout",
            MAX_NEXT_UPSTREAM_TIMEOUT,
        ),
        ("pool.p.health.interval", MAX_PROBE_DURATION),
        ("pool.p.health.timeout", MAX_PROBE_DURATION),
        ("hook[2].timeout", MAX_HOOK_TIMEOUT),
        ("pool.p.management.timeout", MAX_MANAGEMENT_TIMEOUT),
        ("listener[0].some_future_key", MAX_DURATION),
    ];
    for (key, max) in cases {
        assert_eq!(max_duration(key), max, "{key}");
        // Every limit leaves `Instant::now() + max` far from overflowing.
        assert!(
            std::time::Instant::now().checked_add(max).is_some(),
            "{key}"
        );
    }
    // The exact limit loads; one millisecond more does not.
    let at = |d: &str| {
        replaced(
            "pool = \"rabbitmq\"",
            &format!("pool = \"rabbitmq\"\nconnect_timeout = \"{d}\""),
        )
    };
    assert_eq!(
        parse(&at("1h")).unwrap().listeners[0].connect_timeout,
        MAX_CONNECT_TIMEOUT
    );
    assert_eq!(problems_of(&at("1h 1ms")).len(), 1);
}

#[test]
fn base_is_valid() {
    let config = parse(BASE).unwrap();
    assert_eq!(config.source.as_deref(), Some(Path::new("test.toml")));
    assert_eq!(config.listeners.len(), 1);
    assert_eq!(config.pools[0].backends.len(), 2);
}

#[test]
fn each_problem_names_key_value_and_line() {
    let base_health = "[pool.rabbitmq.health]\nkind = \"tcp\"\n";
    let health = |extra: &str| appended(&format!("{base_health}{extra}"));
    // (text, key, value as displayed, fragment of the message)
    let cases: Vec<(String, &str, &str, &str)> = vec![
        (
            "[pool.rabbitmq]\n[[pool.rabbitmq.backend]]\nname = \"a\"\naddr = \"10.0.0.1:5672\"\n".to_string(),
            "listener", "", "at least one",
        ),
        (
            appended("[[listener]]\nname = \"amqp\"\nlisten = \"0.0.0.0:5673\"\npool = \"rabbitmq\""),
            "listener[1].name", "\"amqp\"", "duplicate listener name (also listener[0].name)",
        ),
        (
            appended("[[listener]]\nname = \"amqp2\"\nlisten = \"0.0.0.0:5672\"\npool = \"rabbitmq\""),
            "listener[1].listen", "\"0.0.0.0:5672\"", "duplicate listen address",
        ),
        (
            appended("[[listener]]\nname = \"amqp2\"\nlisten = \"127.0.0.1:5672\"\npool = \"rabbitmq\""),
            "listener[1].listen", "\"127.0.0.1:5672\"", "wildcard",
        ),
        (
            replaced("pool = \"rabbitmq\"", "pool = \"rabit\""),
            "listener[0].pool", "\"rabit\"", "no such pool; defined pools: \"rabbitmq\"",
        ),
        (
            "[[listener]]\nname = \"l\"\nlisten = \"0.0.0.0:5672\"\npool = \"p\"\n[pool.p]\n".to_string(),
            "pool.p.backend", "", "no backends",
        ),
        (
            replaced("name = \"rabbit-b\"", "name = \"rabbit-a\""),
            "pool.rabbitmq.backend[1].name", "\"rabbit-a\"", "duplicate backend name",
        ),
        (
            replaced("name = \"amqp\"", "name = \"\""),
            "listener[0].name", "\"\"", "listener name is empty",
        ),
        (
            replaced("name = \"amqp\"", "name = \"amqp main\""),
            "listener[0].name", "\"amqp main\"", "only letters, digits",
        ),
        (
            replaced("name = \"rabbit-a\"", "name = \"rabbit/a\""),
            "pool.rabbitmq.backend[0].name", "\"rabbit/a\"", "backend names may contain only",
        ),
        (
            appended("[pool.\"a b\"]\n[[pool.\"a b\".backend]]\nname = \"x\"\naddr = \"10.0.0.3:5672\""),
            "pool.a b", "\"a b\"", "pool names may contain only",
        ),
        (
            replaced("addr = \"10.0.0.1:5672\"", "addr = \"nohost\""),
            "pool.rabbitmq.backend[0].addr", "\"nohost\"", "missing port",
        ),
        (
            replaced("addr = \"10.0.0.1:5672\"", "addr = \"1.2.3.4\""),
            "pool.rabbitmq.backend[0].addr", "\"1.2.3.4\"", "missing port",
        ),
        (
            replaced("addr = \"10.0.0.1:5672\"", "addr = \"host:abc\""),
            "pool.rabbitmq.backend[0].addr", "\"host:abc\"", "port \"abc\" is not a number",
        ),
        (
            replaced("addr = \"10.0.0.1:5672\"", "addr = \"10.0.0.1:0\""),
            "pool.rabbitmq.backend[0].addr", "\"10.0.0.1:0\"", "port 0 is not allowed",
        ),
        (
            replaced("addr = \"10.0.0.1:5672\"", "addr = \"10.0.0.1:65536\""),
            "pool.rabbitmq.backend[0].addr", "\"10.0.0.1:65536\"", "out of range 1-65535",
        ),
        (
            replaced("addr = \"10.0.0.1:5672\"", "addr = \"::1:5672\""),
            "pool.rabbitmq.backend[0].addr", "\"::1:5672\"", "write \"[::1]:5672\"",
        ),
        (
            replaced("listen = \"0.0.0.0:5672\"", "listen = \"fe80::1:5672\""),
            "listener[0].listen", "\"fe80::1:5672\"", "write \"[fe80::1]:5672\"",
        ),
        (
            replaced("addr = \"10.0.0.1:5672\"", "addr = \"rabbit@a:5672\""),
            "pool.rabbitmq.backend[0].addr", "\"rabbit@a:5672\"", "not a valid host name",
        ),
        (
            replaced("addr = \"10.0.0.1:5672\"", "addr = \"nowhere.invalid:5672\""),
            "pool.rabbitmq.backend[0].addr", "\"nowhere.invalid:5672\"", "cannot resolve host \"nowhere.invalid\": no such host",
        ),
        (
            replaced("listen = \"0.0.0.0:5672\"", "listen = \"localhost:5672\""),
            "listener[0].listen", "\"localhost:5672\"", "must be an IP address, not a host name",
        ),
        (
            replaced("listen = \"0.0.0.0:5672\"", "listen = \"5672\""),
            "listener[0].listen", "\"5672\"", "write \"0.0.0.0:5672\"",
        ),
        (health("rise = 0"), "pool.rabbitmq.health.rise", "0", "at least 1"),
        (health("fall = 0"), "pool.rabbitmq.health.fall", "0", "at least 1"),
        (
            replaced("addr = \"10.0.0.2:5672\"", "addr = \"10.0.0.2:5672\"\nweight = 0"),
            "pool.rabbitmq.backend[1].weight", "0", "at least 1",
        ),
        (
            health("interval = \"300000000000y\""),
            "pool.rabbitmq.health.interval", "\"300000000000y\"", "too long: at most 1h",
        ),
        (
            health("timeout = \"2h\""),
            "pool.rabbitmq.health.timeout", "\"2h\"", "too long: at most 1h (omit it for the default, 1s)",
        ),
        (
            replaced("pool = \"rabbitmq\"", "pool = \"rabbitmq\"\nnext_upstream_timeout = \"300000000000y\""),
            "listener[0].next_upstream_timeout", "\"300000000000y\"", "too long: at most 1day",
        ),
        (
            replaced("pool = \"rabbitmq\"", "pool = \"rabbitmq\"\nconnect_timeout = \"61m\""),
            "listener[0].connect_timeout", "\"61m\"", "too long: at most 1h",
        ),
        (
            replaced("pool = \"rabbitmq\"", "pool = \"rabbitmq\"\nidle_timeout = \"31days\""),
            "listener[0].idle_timeout", "\"31days\"", "too long: at most 30days",
        ),
        (
            appended("[[hook]]\non = [\"backend_down\"]\nexec = [\"/bin/true\"]\ntimeout = \"300000000000y\""),
            "hook[0].timeout", "\"300000000000y\"", "too long: at most 1day",
        ),
        (
            "[admin]\nlisten = \"0.0.0.0:5672\"\ntoken_file = \"/t\"\n".to_string() + BASE,
            "admin.listen", "\"0.0.0.0:5672\"", "takes the address of listener[0].listen = \"0.0.0.0:5672\"",
        ),
        (
            "[admin]\nlisten = \"127.0.0.1:5672\"\n".to_string() + BASE,
            "admin.listen", "\"127.0.0.1:5672\"", "the admin API needs its own port",
        ),
        (
            replaced("listen = \"0.0.0.0:5672\"", "listen = \"[::ffff:127.0.0.1]:5672\""),
            "listener[0].listen", "\"[::ffff:127.0.0.1]:5672\"", "write the IPv4 address: \"127.0.0.1:5672\"",
        ),
        (
            appended("[[hook]]\non = [\"backend_down\"]\nwebhook = \"http://exa mple/\""),
            "hook[0].webhook", "\"http://exa mple/\"", "not a valid URL",
        ),
        (
            appended("[[hook]]\non = [\"backend_down\"]\nwebhook = \"http://h:99999/\""),
            "hook[0].webhook", "\"http://h:99999/\"", "1 to 65535",
        ),
        (
            appended("[[hook]]\non = [\"backend_down\"]\nwebhook = \"http:///x\""),
            "hook[0].webhook", "\"http:///x\"", "",
        ),
        // User info is sent as basic authentication, but never shown in a problem.
        (
            appended("[[hook]]\non = [\"backend_down\"]\nwebhook = \"http://user:s3cret@h:80800/x\""),
            "hook[0].webhook", "\"http://***@h:80800/x\"", "1 to 65535",
        ),
        (
            appended("[pool.rabbitmq.health]\nkind = \"http\"\nurl = \"http://{host}:99999/api\""),
            "pool.rabbitmq.health.url", "\"http://{host}:99999/api\"", "1 to 65535",
        ),
        (
            appended("[pool.rabbitmq.health]\nkind = \"http\"\nurl = \"http://exa mple:15672/api\""),
            "pool.rabbitmq.health.url", "\"http://exa mple:15672/api\"", "not a valid URL",
        ),
        (
            appended("[pool.rabbitmq.health]\nkind = \"http\"\nurl = \"http:///api\""),
            "pool.rabbitmq.health.url", "\"http:///api\"", "no host",
        ),
        (
            appended("[pool.rabbitmq.health]\nkind = \"http\"\nurl = \"http://u:s3cret@{host}:15672/api\"\nuser = \"u\""),
            "pool.rabbitmq.health.url", "\"http://***@{host}:15672/api\"", "user info (user:pass@) and user are mutually exclusive",
        ),
        (health("interval = \"0s\""), "pool.rabbitmq.health.interval", "\"0s\"", "longer than 0"),
        (
            replaced("pool = \"rabbitmq\"", "pool = \"rabbitmq\"\nconnect_timeout = \"0s\""),
            "listener[0].connect_timeout", "\"0s\"", "must be longer than 0 (omit it for the default, 1m)",
        ),
        (
            replaced("pool = \"rabbitmq\"", "pool = \"rabbitmq\"\nidle_timeout = \"0s\""),
            "listener[0].idle_timeout", "\"0s\"", "must be longer than 0",
        ),
        (
            replaced("pool = \"rabbitmq\"", "pool = \"rabbitmq\"\nidle_timeout = \"5 parsecs\""),
            "listener[0].idle_timeout", "\"5 parsecs\"", "expected a number with a unit, like \"5s\"",
        ),
        (
            replaced("pool = \"rabbitmq\"", "pool = \"rabbitmq\"\nnext_upstream_timeout = \"soon\""),
            "listener[0].next_upstream_timeout", "\"soon\"", "not a duration",
        ),
        (
            replaced("pool = \"rabbitmq\"", "pool = \"rabbitmq\"\nmax_connections = 0"),
            "listener[0].max_connections", "0", "at least 1",
        ),
        (
            replaced("pool = \"rabbitmq\"", "pool = \"rabbitmq\"\nproxy_protocol = \"v3\""),
            "listener[0].proxy_protocol", "\"v3\"", "expected one of off, v1, v2",
        ),
        (
            replaced("balance = \"round_robin\"", "balance = \"leastconn\""),
            "pool.rabbitmq.balance", "\"leastconn\"", "expected one of round_robin, least_conn, random_two, source_hash",
        ),
        (
            replaced("balance = \"round_robin\"", "slow_start = \"soon\""),
            "pool.rabbitmq.slow_start", "\"soon\"", "not a duration",
        ),
        (
            replaced("balance = \"round_robin\"", "slow_start = \"2h\""),
            "pool.rabbitmq.slow_start", "\"2h\"", "too long: at most 1h (omit it for the default, 0s)",
        ),
        (
            replaced("balance = \"round_robin\"", "on_down = \"shutdown\""),
            "pool.rabbitmq.on_down", "\"shutdown\"", "expected one of keep, close",
        ),
        (
            replaced("balance = \"round_robin\"", "on_down = \"close\""),
            "pool.rabbitmq.on_down", "\"close\"", "needs a [pool.rabbitmq.health] probe",
        ),
        (
            replaced("balance = \"round_robin\"", "rebalance.mode = \"always\""),
            "pool.rabbitmq.rebalance.mode", "\"always\"", "expected one of off, on_return, continuous",
        ),
        (
            replaced("balance = \"round_robin\"", "rebalance.tolerance = -0.5"),
            "pool.rabbitmq.rebalance.tolerance", "-0.5", "out of range: from 0 to 10 (omit it for the default, 0.1)",
        ),
        (
            replaced("balance = \"round_robin\"", "rebalance.max_closes_per_second = 0"),
            "pool.rabbitmq.rebalance.max_closes_per_second", "0", "out of range: from 0.01 to 1000 (omit it for the default, 5)",
        ),
        (
            replaced("balance = \"round_robin\"", "rebalance.min_age = \"soon\""),
            "pool.rabbitmq.rebalance.min_age", "\"soon\"", "not a duration",
        ),
        (
            replaced("balance = \"round_robin\"", "balance = \"source_hash\"\nrebalance.mode = \"continuous\""),
            "pool.rabbitmq.rebalance.mode", "\"continuous\"", "a moved client would come back",
        ),
        (
            replaced("balance = \"round_robin\"", "min_available = 3"),
            "pool.rabbitmq.min_available", "3", "more than the 2 primary",
        ),
        (
            replaced("addr = \"10.0.0.1:5672\"", "addr = \"10.0.0.1:5672\"\nbackup = true")
                .replacen("addr = \"10.0.0.2:5672\"", "addr = \"10.0.0.2:5672\"\nbackup = true", 1),
            "pool.rabbitmq.backend", "", "every backend is a backup",
        ),
        (
            appended("[admin]\nlisten = \"0.0.0.0:9901\""),
            "admin.token_file", "", "required when admin.listen (\"0.0.0.0:9901\") is not a loopback address",
        ),
        (
            appended("[admin]\nstate_file = \"\""),
            "admin.state_file", "\"\"", "path is empty",
        ),
        (
            appended("[pool.rabbitmq.health]\nkind = \"ampq\""),
            "pool.rabbitmq.health.kind", "\"ampq\"", "unknown probe kind",
        ),
        (
            appended("[pool.rabbitmq.health]\nkind = \"amqp_login\""),
            "pool.rabbitmq.health.uri", "", "required for kind = \"amqp_login\"",
        ),
        (
            appended("[pool.rabbitmq.health]\nkind = \"amqp_login\"\nuri = \"http://u:p@{host}\""),
            "pool.rabbitmq.health.uri", MASKED, "must start with amqp://",
        ),
        (
            health("uri = \"amqp://u:p@{host}:{port}/\""),
            "pool.rabbitmq.health.uri", MASKED, "only used by kind = \"amqp_login\", not kind = \"tcp\"",
        ),
        (
            health("url = \"http://{host}:15672/\""),
            "pool.rabbitmq.health.url", "\"http://{host}:15672/\"", "only used by kind = \"http\"",
        ),
        (
            health("password = \"hunter2\""),
            "pool.rabbitmq.health.password", MASKED, "only used by kind = \"http\"",
        ),
        (
            appended("[pool.rabbitmq.health]\nkind = \"http\""),
            "pool.rabbitmq.health.url", "", "required for kind = \"http\"",
        ),
        (
            appended("[pool.rabbitmq.health]\nkind = \"http\"\nurl = \"https://{host}/\""),
            "pool.rabbitmq.health.url", "\"https://{host}/\"", "is https://, which needs [pool.rabbitmq.tls]",
        ),
        (
            appended("[pool.rabbitmq.health]\nkind = \"http\"\nurl = \"http://{host}/\"\nuser = \"u\"\npassword = \"p\"\npassword_file = \"/etc/p\""),
            "pool.rabbitmq.health.password_file", "\"/etc/p\"", "mutually exclusive",
        ),
        (
            appended("[pool.rabbitmq.health]\nkind = \"http\"\nurl = \"http://{host}/\"\npassword_file = \"/etc/p\""),
            "pool.rabbitmq.health.user", "", "required when password or password_file is set",
        ),
        (
            appended("[[hook]]\non = []\nexec = [\"/bin/true\"]"),
            "hook[0].on", "[]", "needs at least one event",
        ),
        (
            appended("[[hook]]\non = [\"backend_down\", \"node_down\"]\nexec = [\"/bin/true\"]"),
            "hook[0].on", "\"node_down\"", "unknown event; expected one of backend_down, backend_up",
        ),
        (
            appended("[[hook]]\non = [\"backend_down\"]\nexec = []"),
            "hook[0].exec", "[]", "needs the program to run",
        ),
        (
            appended("[[hook]]\non = [\"backend_down\"]\nexec = [\"/bin/true\"]\nwebhook = \"http://127.0.0.1:8080/\""),
            "hook[0].webhook", "\"http://127.0.0.1:8080/\"", "mutually exclusive",
        ),
        (
            appended("[[hook]]\non = [\"backend_down\"]"),
            "hook[0]", "", "needs exactly one of exec",
        ),
        (
            appended("[[hook]]\non = [\"backend_down\"]\nwebhook = \"https://example.com/hook\""),
            "hook[0].webhook", "\"https://example.com/hook\"", "https is not supported yet",
        ),
        (
            appended("[[hook]]\non = [\"backend_down\"]\nexec = [\"/bin/true\"]\ntimeout = \"0s\""),
            "hook[0].timeout", "\"0s\"", "longer than 0",
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
        assert_eq!(p.key, *key, "{p:#?}");
        assert_eq!(p.value, *value, "{p:#?}");
        assert!(
            p.message.contains(fragment),
            "{key}: {:?} lacks {fragment:?}",
            p.message
        );
        if *key != "listener" {
            assert!(p.line.is_some(), "{key}: no line in {p:#?}");
        }
    }
}

#[test]
fn proxy_header_and_admin_limit_keys_name_key_and_value() {
    let pp = |extra: &str| {
        replaced(
            "pool = \"rabbitmq\"",
            &format!("pool = \"rabbitmq\"\naccept_proxy_protocol = true\n{extra}"),
        )
    };
    // (text, key, value as displayed, fragment of the message)
    let cases: Vec<(String, &str, &str, &str)> = vec![
        (
            pp("proxy_protocol_from = [\"10.0.0.0/24\", \"lb.internal\"]"),
            "listener[0].proxy_protocol_from[1]",
            "\"lb.internal\"",
            "not an IP address or CIDR",
        ),
        (
            pp("proxy_protocol_from = [\"10.0.0.0/33\"]"),
            "listener[0].proxy_protocol_from[0]",
            "\"10.0.0.0/33\"",
            "not an IP address or CIDR",
        ),
        (
            pp("proxy_protocol_from = [\"10.0.0.5/24\"]"),
            "listener[0].proxy_protocol_from[0]",
            "\"10.0.0.5/24\"",
            "write 10.0.0.0/24",
        ),
        (
            pp("proxy_protocol_from = []"),
            "listener[0].proxy_protocol_from",
            "[]",
            "refuse every connection",
        ),
        (
            replaced(
                "pool = \"rabbitmq\"",
                "pool = \"rabbitmq\"\nproxy_protocol_from = [\"10.0.0.1\"]",
            ),
            "listener[0].proxy_protocol_from",
            "",
            "only applies with accept_proxy_protocol = true",
        ),
        (
            pp("proxy_protocol_timeout = \"0s\""),
            "listener[0].proxy_protocol_timeout",
            "\"0s\"",
            "longer than 0",
        ),
        (
            appended("[admin]\nmax_connections = 0"),
            "admin.max_connections",
            "0",
            "at least 1",
        ),
        (
            appended("[admin]\nmax_connections_per_source = 0"),
            "admin.max_connections_per_source",
            "0",
            "at least 1",
        ),
        (
            appended("[admin]\nmax_connections = 4\nmax_connections_per_source = 8"),
            "admin.max_connections_per_source",
            "8",
            "must not exceed admin.max_connections (4)",
        ),
        (
            appended("[admin]\nidle_timeout = \"0s\""),
            "admin.idle_timeout",
            "\"0s\"",
            "longer than 0",
        ),
    ];
    for (text, key, value, fragment) in &cases {
        let problems = problems_of(text);
        assert_eq!(problems.len(), 1, "{key}: {problems:#?}");
        let p = &problems[0];
        assert_eq!((p.key.as_str(), p.value.as_str()), (*key, *value), "{p:#?}");
        assert!(
            p.message.contains(fragment),
            "{key}: {:?} lacks {fragment:?}",
            p.message
        );
        assert!(p.line.is_some(), "{key}: no line in {p:#?}");
    }

    let config = parse(&pp(
        "proxy_protocol_from = [\"10.0.0.0/24\", \"127.0.0.1\", \"::1/128\"]\nproxy_protocol_timeout = \"2s\"",
    ))
    .unwrap();
    let l = &config.listeners[0];
    let from = l.proxy_protocol_from.as_ref().unwrap();
    assert_eq!(from.networks().len(), 3);
    assert!(from.contains("10.0.0.9".parse().unwrap()));
    assert!(!from.contains("10.0.1.9".parse().unwrap()));
    assert_eq!(l.proxy_protocol_timeout, Duration::from_secs(2));
    assert!(config.warnings().is_empty());

    // Absent: any source is believed, as before the key existed, and the operator is told.
    let open = parse(&pp("")).unwrap();
    assert_eq!(open.listeners[0].proxy_protocol_from, None);
    assert_eq!(
        open.listeners[0].proxy_protocol_timeout,
        Duration::from_secs(5)
    );
    let warnings = open.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("listener[0] (amqp)") && warnings[0].contains("proxy_protocol_from"),
        "{warnings:?}"
    );
    assert!(parse(BASE).unwrap().warnings().is_empty());

    let admin = parse(&appended(
        "[admin]\nmax_connections = 10\nmax_connections_per_source = 3\nidle_timeout = \"2s\"",
    ))
    .unwrap()
    .admin
    .unwrap();
    assert_eq!(
        (
            admin.max_connections,
            admin.max_connections_per_source,
            admin.idle_timeout
        ),
        (10, 3, Duration::from_secs(2))
    );
}

#[test]
fn problem_lines_point_at_the_value() {
    let text = replaced("addr = \"10.0.0.2:5672\"", "addr = \"10.0.0.2:0\"");
    let problems = problems_of(&text);
    let line = text.lines().position(|l| l.contains("10.0.0.2:0")).unwrap() + 1;
    assert_eq!(problems[0].line, Some(line));
    assert_eq!(
        problems[0].render(Path::new("test.toml")),
        format!(
            "test.toml:{line}: pool.rabbitmq.backend[1].addr = \"10.0.0.2:0\": \
             port 0 is not allowed: a fixed port is needed"
        )
    );
}

#[test]
fn collects_every_problem_in_file_order() {
    let text = replaced("addr = \"10.0.0.2:5672\"", "addr = \"10.0.0.2\"")
        .replacen("pool = \"rabbitmq\"", "pool = \"nope\"", 1)
        .replacen("name = \"rabbit-a\"", "name = \"\"", 1)
        + "\n[[hook]]\non = [\"pool_down\"]\nwebhook = \"ftp://x\"\n";
    let err = parse(&text).unwrap_err();
    let keys: Vec<String> = match &err {
        ConfigError::Invalid { problems, .. } => problems.iter().map(|p| p.key.clone()).collect(),
        other => panic!("{other}"),
    };
    assert_eq!(
        keys,
        [
            "listener[0].pool",
            "pool.rabbitmq.backend[0].name",
            "pool.rabbitmq.backend[1].addr",
            "hook[0].webhook",
        ]
    );
    assert_eq!(err.problems().len(), 4);
    assert_eq!(err.to_string().lines().count(), 4);
    assert!(err.problems().iter().all(|p| p.starts_with("test.toml:")));
}

#[test]
fn defaults_fill_every_omitted_key() {
    let config = parse(&appended("[pool.rabbitmq.health]\nkind = \"amqp\"\n[[hook]]\non = [\"pool_down\"]\nexec = [\"/bin/page\"]\n[admin]")).unwrap();
    let listener = &config.listeners[0];
    assert_eq!(
        *listener,
        ListenerConfig::default_for("amqp", "0.0.0.0:5672".parse().unwrap(), "rabbitmq")
    );
    assert_eq!(listener.connect_timeout, Duration::from_secs(60));
    assert_eq!(listener.idle_timeout, Duration::from_secs(600));
    assert_eq!(listener.next_upstream_timeout, None);
    let pool = config.pool("rabbitmq").unwrap();
    assert_eq!(pool.balance, Balance::RoundRobin);
    assert_eq!(pool.min_available, 1);
    assert_eq!(
        pool.health,
        Some(HealthConfig {
            probe: Probe::Amqp,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
        })
    );
    assert!(pool.backends.iter().all(|b| b.weight == 1 && !b.backup));
    assert_eq!(config.hooks[0].timeout, Duration::from_secs(30));
    assert_eq!(
        config.admin,
        Some(AdminConfig {
            listen: "127.0.0.1:9901".parse().unwrap(),
            token_file: None,
            state_file: None,
            max_connections: 64,
            max_connections_per_source: 16,
            idle_timeout: Duration::from_secs(5),
        })
    );
}

#[test]
fn every_key_is_read() {
    let text = r#"
[admin]
listen = "[::]:9901"
token_file = "/etc/warren/token"
state_file = "/var/lib/warren/state.json"

[[listener]]
name = "amqp"
listen = "*:5672"
pool = "rabbitmq"
connect_timeout = "5s"
idle_timeout = "120s"
next_upstream_tries = 2
next_upstream_timeout = "1m30s"
max_connections = 500
proxy_protocol = "v2"
accept_proxy_protocol = true

[pool.rabbitmq]
balance = "least_conn"
min_available = 2

[pool.rabbitmq.health]
kind = "http"
url = "http://{host}:15672/api/health/checks/ready-to-serve-clients"
user = "monitor"
password = "hunter2"
interval = "5s"
timeout = "250ms"
rise = 1
fall = 5

[[pool.rabbitmq.backend]]
name = "rabbit-a"
addr = "rabbit-a.internal:5672"
weight = 3

[[pool.rabbitmq.backend]]
name = "rabbit-b"
addr = "[fd00::2]:5672"

[[pool.rabbitmq.backend]]
name = "rabbit-c"
addr = "localhost:5673"
backup = true

[pool.unused]
[[pool.unused.backend]]
name = "x"
addr = "10.9.9.9:1"

[[hook]]
on = ["pool_failover", "backend_down", "pool_failover"]
webhook = "http://127.0.0.1:8080/warren-events"
timeout = "10s"
"#;
    let config = parse(text).unwrap();
    let admin = config.admin.as_ref().unwrap();
    assert_eq!(admin.listen, "[::]:9901".parse().unwrap());
    assert_eq!(
        admin.token_file.as_deref(),
        Some(Path::new("/etc/warren/token"))
    );
    let l = &config.listeners[0];
    assert_eq!(l.listen, "0.0.0.0:5672".parse().unwrap());
    assert_eq!(l.connect_timeout, Duration::from_secs(5));
    assert_eq!(l.idle_timeout, Duration::from_secs(120));
    assert_eq!(l.next_upstream_tries, 2);
    assert_eq!(l.next_upstream_timeout, Some(Duration::from_secs(90)));
    assert_eq!(l.max_connections, 500);
    assert_eq!(l.proxy_protocol, ProxyProtocol::V2);
    assert!(l.accept_proxy_protocol);
    assert_eq!(
        config
            .pools
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>(),
        ["rabbitmq", "unused"]
    );
    let pool = config.pool("rabbitmq").unwrap();
    assert_eq!(pool.balance, Balance::LeastConn);
    assert_eq!(pool.min_available, 2);
    assert_eq!(pool.primary_count(), 2);
    let health = pool.health.as_ref().unwrap();
    assert_eq!(
        health.probe,
        Probe::Http {
            url: ProbeUrl::parse("http://{host}:15672/api/health/checks/ready-to-serve-clients")
                .unwrap(),
            user: Some("monitor".to_string()),
            password: Some(Secret("hunter2".to_string())),
            password_file: None,
        }
    );
    assert_eq!(
        (health.interval, health.timeout),
        (Duration::from_secs(5), Duration::from_millis(250))
    );
    assert_eq!((health.rise, health.fall), (1, 5));
    let a = &pool.backends[0];
    assert_eq!(
        (a.host.as_str(), a.port, a.weight),
        ("rabbit-a.internal", 5672, 3)
    );
    assert_eq!(a.addr, "10.1.0.1:5672".parse().unwrap());
    let b = &pool.backends[1];
    assert_eq!(
        (b.host.as_str(), b.addr),
        ("fd00::2", "[fd00::2]:5672".parse().unwrap())
    );
    let c = &pool.backends[2];
    assert_eq!(
        (c.addr, c.backup),
        ("127.0.0.1:5673".parse().unwrap(), true)
    );
    assert_eq!(
        config.hooks[0],
        HookConfig {
            on: vec![HookEvent::PoolFailover, HookEvent::BackendDown],
            action: HookAction::Webhook(
                HttpUrl::parse("http://127.0.0.1:8080/warren-events").unwrap()
            ),
            timeout: Duration::from_secs(10),
        }
    );
    assert_eq!(
        config.summary(),
        "test.toml: ok: 1 listener, 2 pools, 4 backends, 1 hook"
    );
    assert!(
        !format!("{config:?}").contains("hunter2"),
        "Debug leaks the password"
    );
}

#[test]
fn amqp_login_uri_is_kept_secret() {
    let config = parse(&appended(
        "[pool.rabbitmq.health]\nkind = \"amqp_login\"\nuri = \"amqp://u:s3cret@{host}:{port}/%2f\"",
    ))
    .unwrap();
    let probe = &config.pools[0].health.as_ref().unwrap().probe;
    assert_eq!(
        *probe,
        Probe::AmqpLogin {
            uri: Secret("amqp://u:s3cret@{host}:{port}/%2f".to_string())
        }
    );
    assert_eq!(format!("{probe:?}"), "AmqpLogin { uri: Secret(***) }");
}

#[test]
fn parse_errors_carry_line_column_and_key_path() {
    // (text, the line the error is on, column, key path, message fragment)
    let cases: Vec<(String, &str, usize, Option<&str>, &str)> = vec![
        (
            replaced(
                "addr = \"10.0.0.2:5672\"",
                "addr = \"10.0.0.2:5672\"\nweigth = 2",
            ),
            "weigth = 2",
            1,
            Some("pool.rabbitmq.backend[1].weigth"),
            "unknown field `weigth`, expected one of `name`, `addr`, `weight`, `backup`",
        ),
        (
            appended("[pool.rabbitmq.health]\nkind = \"tcp\"\nrise = \"2\""),
            "rise = \"2\"",
            8,
            Some("pool.rabbitmq.health.rise"),
            "invalid type: string \"2\", expected u32",
        ),
        (
            replaced("listen = \"0.0.0.0:5672\"", "listen = 0.0.0.0:5672"),
            "listen = 0.0.0.0:5672",
            13,
            Some("listener[0].listen"),
            "expected newline",
        ),
        (
            appended("[[listener]]\nname = \"second\""),
            "[[listener]]\nname = \"second\"",
            1,
            Some("listener[1]"),
            "missing field `listen`",
        ),
        (
            "frobnicate = 1\n".to_string(),
            "frobnicate",
            1,
            Some("frobnicate"),
            "unknown field `frobnicate`",
        ),
    ];
    for (text, marker, column, key, fragment) in cases {
        let line = text[..text.find(marker).unwrap()].matches('\n').count() + 1;
        match parse(&text) {
            Err(ConfigError::Parse {
                line: l,
                column: c,
                key: k,
                message,
                ..
            }) => {
                assert_eq!((l, c, k.as_deref()), (line, column, key), "{message}");
                assert!(message.contains(fragment), "{message:?} lacks {fragment:?}");
                assert!(!message.contains('\n'));
            }
            Err(other) => panic!("expected a parse error, got {other}"),
            Ok(_) => panic!("expected a parse error for:\n{text}"),
        }
    }
}

#[test]
fn split_host_port_cases() {
    let ok = [
        ("10.0.0.1:5672", "10.0.0.1", 5672),
        ("rabbit-a:5672", "rabbit-a", 5672),
        ("[::1]:5672", "::1", 5672),
        ("*:1", "*", 1),
        ("h:65535", "h", 65535),
    ];
    for (input, host, port) in ok {
        assert_eq!(
            split_host_port(input),
            Ok(HostPort {
                host: host.to_string(),
                port
            }),
            "{input}"
        );
    }
    let bad = [
        ("", "empty address"),
        (":5672", "missing host"),
        ("h:", "missing port"),
        ("[::1]", "missing port after ']'"),
        ("[::1:5672", "missing ']'"),
        ("[nope]:1", "not an IPv6 address"),
        ("h:99999999999", "out of range"),
        (
            "fe80::1",
            "need brackets and a port: write \"[fe80::1]:PORT\"",
        ),
        ("a:b:c", "too many ':'"),
    ];
    for (input, fragment) in bad {
        let err = split_host_port(input).unwrap_err();
        assert!(
            err.contains(fragment),
            "{input}: {err:?} lacks {fragment:?}"
        );
    }
}

#[test]
fn parse_duration_cases() {
    let ok = [
        ("5s", Duration::from_secs(5)),
        ("2m", Duration::from_secs(120)),
        ("1h30m", Duration::from_secs(5400)),
        ("250ms", Duration::from_millis(250)),
        ("0s", Duration::ZERO),
    ];
    for (input, expected) in ok {
        assert_eq!(parse_duration(input), Ok(expected), "{input}");
    }
    for input in ["", "5", "5 parsecs", "-1s", "s"] {
        let err = parse_duration(input).unwrap_err();
        assert!(err.contains("like \"5s\""), "{input}: {err}");
    }
}

#[test]
fn quick_start_builds_one_listener_and_pool() {
    let backends = vec!["10.0.0.1:5672".to_string(), "[::1]:5673".to_string()];
    let config = quick_start_with("127.0.0.1:5672", &backends, None, &fake_resolve).unwrap();
    assert_eq!(config.source, None);
    assert_eq!(config.admin, None);
    assert_eq!(
        config.listeners,
        [ListenerConfig::default_for(
            "default",
            "127.0.0.1:5672".parse().unwrap(),
            "default"
        )]
    );
    let pool = config.pool("default").unwrap();
    assert_eq!(
        (pool.balance, pool.health.as_ref()),
        (Balance::RoundRobin, None)
    );
    let names: Vec<&str> = pool.backends.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["backend-1", "backend-2"]);
    assert_eq!(pool.backends[1].host, "::1");
    assert_eq!(
        config.summary(),
        "command line: ok: 1 listener, 1 pool, 2 backends, 0 hooks"
    );
}

#[test]
fn quick_start_problems_name_the_flags() {
    let err = quick_start_with(
        "localhost:5672",
        &["10.0.0.1".to_string()],
        None,
        &fake_resolve,
    )
    .unwrap_err();
    assert_eq!(
        err.problems(),
        [
            "command line: --listen = \"localhost:5672\": must be an IP address, not a host \
             name: write \"0.0.0.0:5672\" for every address or \"127.0.0.1:5672\" for this \
             machine only",
            "command line: --backend = \"10.0.0.1\": missing port; expected HOST:PORT, e.g. \
             \"10.0.0.1:5672\", \"rabbit-a:5672\" or \"[::1]:5672\"",
        ]
    );
    let err = quick_start_with("127.0.0.1:5672", &[], None, &fake_resolve).unwrap_err();
    assert_eq!(err.problems().len(), 1);
    assert!(err
        .to_string()
        .starts_with("command line: --backend: the pool has no backends"));
}

#[test]
fn loopback_admin_needs_no_token_but_others_do_with_one() {
    for listen in ["127.0.0.1:9901", "[::1]:9901"] {
        let config = parse(&appended(&format!("[admin]\nlisten = \"{listen}\""))).unwrap();
        assert_eq!(config.admin.unwrap().listen, listen.parse().unwrap());
    }
    let config = parse(&appended(
        "[admin]\nlisten = \"0.0.0.0:9901\"\ntoken_file = \"/etc/warren/token\"",
    ))
    .unwrap();
    assert!(config.admin.unwrap().token_file.is_some());
}

#[test]
fn line_col_counts_characters() {
    let text = "a = 1\nb = \"é\"x";
    let offset = text.find('x').unwrap();
    assert_eq!(line_col(text.as_bytes(), offset), (2, 8));
    assert_eq!(line_col(text.as_bytes(), 0), (1, 1));
    assert_eq!(line_col(text.as_bytes(), 10_000), (2, 9));
}

#[test]
fn names_round_trip() {
    for event in HookEvent::ALL {
        assert_eq!(lookup::<HookEvent>(event.as_str()), Some(event));
    }
    for balance in Balance::ALL {
        assert_eq!(lookup::<Balance>(balance.as_str()), Some(*balance));
    }
    for pp in <ProxyProtocol as Named>::ALL {
        assert_eq!(lookup::<ProxyProtocol>(pp.as_str()), Some(*pp));
    }
}

#[test]
fn rebalancing_defaults_to_on_return_only_where_closes_are_graceful() {
    let pool = &parse(BASE).unwrap().pools[0];
    assert_eq!(pool.rebalance, RebalanceConfig::default());
    assert_eq!(pool.rebalance.mode, RebalanceMode::Off);
    let managed = format!("{BASE}\n[pool.rabbitmq.management]\nurl = \"http://{{host}}:15672\"\n");
    let pool = &parse(&managed).unwrap().pools[0];
    assert_eq!(pool.rebalance.mode, RebalanceMode::OnReturn);
    let set = replaced(
        "balance = \"round_robin\"",
        "rebalance = { mode = \"continuous\", tolerance = 0.25, max_closes_per_second = 2, \
         min_age = \"1m\" }",
    );
    assert_eq!(
        parse(&set).unwrap().pools[0].rebalance,
        RebalanceConfig {
            mode: RebalanceMode::Continuous,
            tolerance: 0.25,
            max_closes_per_second: 2.0,
            min_age: Duration::from_secs(60),
        }
    );
    // source_hash never rebalances by itself, even with a management API.
    let hashed = managed.replace("balance = \"round_robin\"", "balance = \"source_hash\"");
    assert_eq!(
        parse(&hashed).unwrap().pools[0].rebalance.mode,
        RebalanceMode::Off
    );
}

#[test]
fn slow_start_and_on_down_default_off_and_load() {
    let pool = &parse(BASE).unwrap().pools[0];
    assert_eq!(
        (pool.slow_start, pool.on_down),
        (Duration::ZERO, OnDown::Keep)
    );
    let cases = [
        (
            "slow_start = \"30s\"",
            Duration::from_secs(30),
            OnDown::Keep,
        ),
        ("slow_start = \"0s\"", Duration::ZERO, OnDown::Keep),
        ("slow_start = \"1h\"", MAX_SLOW_START, OnDown::Keep),
        (
            "on_down = \"close\"\n[pool.rabbitmq.health]\nkind = \"tcp\"",
            Duration::ZERO,
            OnDown::Close,
        ),
        ("on_down = \"keep\"", Duration::ZERO, OnDown::Keep),
    ];
    for (lines, slow_start, on_down) in cases {
        let text = replaced("balance = \"round_robin\"", lines);
        let config = parse(&text).unwrap_or_else(|e| panic!("{lines}: {e}"));
        let pool = &config.pools[0];
        assert_eq!(
            (pool.slow_start, pool.on_down),
            (slow_start, on_down),
            "{lines}"
        );
    }
}
