//! Config loading as an operator meets it: one test per error class, each checking that the
//! message names the file, the key path and the bad value; and the shipped example configs load.

use std::path::{Path, PathBuf};
use std::time::Duration;

use warren::config::{self, Balance, ConfigError, Probe};

/// A file in the temp dir, removed on drop; named per test so parallel tests never share one.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, bytes: &[u8]) -> TempFile {
        let path =
            std::env::temp_dir().join(format!("warren-config-{}-{name}", std::process::id()));
        std::fs::write(&path, bytes).expect("write temp config");
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

const VALID: &str = r#"
[[listener]]
name = "amqp"
listen = "127.0.0.1:5672"
pool = "rabbitmq"

[pool.rabbitmq]

[[pool.rabbitmq.backend]]
name = "rabbit-a"
addr = "127.0.0.1:5673"
"#;

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config")
        .join(name)
}

#[test]
fn example_config_loads() {
    let path = example("warren.toml");
    let config = config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config.summary(),
        format!(
            "{}: ok: 1 listener, 1 pool, 2 backends, 0 hooks",
            path.display()
        )
    );
    let listener = &config.listeners[0];
    assert_eq!(listener.name, "amqp");
    assert_eq!(listener.listen, "0.0.0.0:5672".parse().unwrap());
    assert_eq!(listener.connect_timeout, Duration::from_secs(5));
    assert_eq!(listener.idle_timeout, Duration::from_secs(120));
    let pool = config.pool(&listener.pool).expect("the listener's pool");
    assert_eq!(pool.balance, Balance::RoundRobin);
    assert_eq!(pool.health.as_ref().map(|h| &h.probe), Some(&Probe::Tcp));
    let addrs: Vec<String> = pool.backends.iter().map(|b| b.addr.to_string()).collect();
    assert_eq!(addrs, ["127.0.0.1:5673", "127.0.0.1:5674"]);
    assert_eq!(
        config.admin.map(|a| a.listen),
        Some("127.0.0.1:9901".parse().unwrap())
    );
}

/// The management keys config/warren.toml shows commented out load once uncommented: each
/// backend gets its own endpoint (its own `management`, replacing the pool's url), with the
/// pool's credentials and timeout.
#[test]
fn example_config_management_keys_load_when_uncommented() {
    let path = example("warren.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let section = "# [pool.rabbitmq.management]\n";
    let (head, tail) = text.split_at(text.find(section).expect("the commented section"));
    let mut tail = tail.to_string();
    for line in [
        "[pool.rabbitmq.management]",
        "url = \"http://{host}:15672\"",
        "user = \"monitoring\"",
        "password_file = \"/etc/warren/rabbitmq-monitoring-password\"",
        "timeout = \"3s\"",
        "management = \"http://127.0.0.1:15673\"",
        "management = \"http://127.0.0.1:15674\"",
    ] {
        let commented = format!("# {line}\n");
        assert!(tail.contains(&commented), "{commented}");
        tail = tail.replacen(&commented, &format!("{line}\n"), 1);
    }
    let config =
        config::from_toml(&format!("{head}{tail}"), &path).unwrap_or_else(|e| panic!("{e}"));
    let pool = config.pool("rabbitmq").unwrap();
    let endpoints: Vec<(String, Option<&str>, Duration)> = pool
        .backends
        .iter()
        .map(|b| {
            let m = b.management.as_ref().expect("an endpoint");
            assert_eq!(
                m.password_file.as_deref(),
                Some(Path::new("/etc/warren/rabbitmq-monitoring-password"))
            );
            (m.url.to_string(), m.user.as_deref(), m.timeout)
        })
        .collect();
    assert_eq!(
        endpoints,
        [
            (
                "http://127.0.0.1:15673/".to_string(),
                Some("monitoring"),
                Duration::from_secs(3)
            ),
            (
                "http://127.0.0.1:15674/".to_string(),
                Some("monitoring"),
                Duration::from_secs(3)
            ),
        ]
    );
}

/// The `[fleet]` keys config/warren.toml shows commented out load once uncommented, each at the
/// value the comments call its default (the password file, there, replaced by a real one).
#[test]
fn example_config_fleet_keys_load_when_uncommented() {
    let path = example("warren.toml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    let password = TempFile::new("etcd-password", b"s3cret\n");
    for line in [
        "[fleet]",
        "store = \"etcd\"",
        "endpoints = [\"https://etcd-1:2379\", \"https://etcd-2:2379\", \"https://etcd-3:2379\"]",
        "prefix = \"/warren/\"",
        "instance = \"warren-a\"",
        "timeout = \"2s\"",
        "lease_ttl = \"10s\"",
        "max_draining = 1",
        "user = \"warren\"",
    ] {
        let commented = format!("\n# {line}\n");
        assert_eq!(text.matches(&commented).count(), 1, "{commented}");
        text = text.replacen(&commented, &format!("\n{line}\n"), 1);
    }
    let commented = "\n# password_file = \"/etc/warren/etcd-password\"\n";
    assert!(text.contains(commented));
    let real = format!("\npassword_file = \"{}\"\n", password.0.display());
    let mut text = text.replacen(commented, &real, 1);
    // The TLS files, there, replaced by the test's (a CA and a client certificate it signed).
    let pem = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/config/tests/tls");
    for (key, file, real) in [
        ("ca_file", "etcd-ca.pem", "ca.pem"),
        ("cert_file", "etcd-client.pem", "client.pem"),
        ("key_file", "etcd-client.key", "client.key"),
    ] {
        let commented = format!("\n# {key} = \"/etc/warren/{file}\"\n");
        assert!(text.contains(&commented), "{commented}");
        let real = format!("\n{key} = \"{}\"\n", pem.join(real).display());
        text = text.replacen(&commented, &real, 1);
    }
    let config = config::from_toml(&text, &path).unwrap_or_else(|e| panic!("{e}"));
    let fleet = config.fleet.expect("[fleet]");
    assert_eq!(fleet.endpoints.len(), 3);
    assert_eq!(
        (fleet.prefix.as_str(), fleet.instance.as_str()),
        (config::DEFAULT_FLEET_PREFIX, "warren-a")
    );
    assert_eq!(
        (fleet.timeout, fleet.lease_ttl, fleet.max_draining),
        (
            config::DEFAULT_FLEET_TIMEOUT,
            config::DEFAULT_FLEET_LEASE_TTL,
            config::DEFAULT_FLEET_MAX_DRAINING
        )
    );
    assert_eq!(fleet.user.as_deref(), Some("warren"));
    assert_eq!(fleet.password, Some(config::Secret("s3cret".to_string())));
    assert!(
        fleet.tls.is_some(),
        "https:// with ca_file, cert_file and key_file"
    );
}

/// The `[pool.NAME.tls]` keys config/warren.toml shows commented out load once uncommented
/// (the files replaced by the config tests' certificates): every backend speaks TLS with the
/// pool's CA and client certificate, checked against `server_name`.
#[test]
fn example_config_sni_keys_load_when_uncommented() {
    let path = example("warren.toml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    let routes = "# [[listener.sni]]\n# server_name = \"orders.example.com\"\n# pool = \"rabbitmq\"\n\
                  # [[listener.sni]]\n# server_name = \"*.streams.example.com\"\n# pool = \"rabbitmq\"\n";
    for block in ["# sni_timeout = \"5s\"\n", routes] {
        assert_eq!(text.matches(block).count(), 1, "{block}");
        text = text.replacen(block, &block.replace("# ", ""), 1);
    }
    let config = config::from_toml(&text, &path).unwrap_or_else(|e| panic!("{e}"));
    let sni = config.listeners[0].sni.as_ref().expect("[[listener.sni]]");
    assert_eq!(sni.timeout, config::DEFAULT_SNI_TIMEOUT);
    let pool = sni.routes.pool_for("a.streams.example.com");
    assert_eq!(pool.map(|p| &**p), Some("rabbitmq"));
}

#[test]
fn example_config_pool_tls_keys_load_when_uncommented() {
    let path = example("warren.toml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    let fixture = |name: &str| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/config/tests/tls")
            .join(name)
            .display()
            .to_string()
    };
    for (line, real) in [
        ("[pool.rabbitmq.tls]", "[pool.rabbitmq.tls]".to_string()),
        (
            "ca = \"/etc/warren/rabbitmq-ca.pem\"",
            format!("ca = {:?}", fixture("ca.pem")),
        ),
        (
            "server_name = \"rabbitmq.internal\"",
            "server_name = \"rabbitmq.internal\"".into(),
        ),
        (
            "cert = \"/etc/warren/warren-client.pem\"",
            format!("cert = {:?}", fixture("client.pem")),
        ),
        (
            "key = \"/etc/warren/warren-client.key\"",
            format!("key = {:?}", fixture("client.key")),
        ),
    ] {
        let commented = format!("\n# {line}\n");
        assert_eq!(text.matches(&commented).count(), 1, "{commented}");
        text = text.replacen(&commented, &format!("\n{real}\n"), 1);
    }
    let config = config::from_toml(&text, &path).unwrap_or_else(|e| panic!("{e}"));
    let pool = config.pool("rabbitmq").unwrap();
    for backend in &pool.backends {
        let tls = backend.tls.as_ref().expect("[pool.rabbitmq.tls]");
        assert_eq!(tls.server_name.to_str(), "rabbitmq.internal");
        assert!(tls.client.has_identity());
    }
    // The same with a CA file that is not there: refused, naming the key and the file.
    let missing = text.replacen(&fixture("ca.pem"), "/nonexistent/rabbitmq-ca.pem", 1);
    let error = config::from_toml(&missing, &path).unwrap_err().to_string();
    assert!(
        error.contains("pool.rabbitmq.tls.ca = \"/nonexistent/rabbitmq-ca.pem\": cannot read: "),
        "{error}"
    );
}

#[test]
fn nginx_equivalent_config_loads() {
    let path = example("quickstart-nginx-equivalent.toml");
    let config = config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let listener = &config.listeners[0];
    assert_eq!(
        (listener.connect_timeout, listener.idle_timeout),
        (Duration::from_secs(5), Duration::from_secs(120))
    );
    assert_eq!(config.pool("rabbits").unwrap().backends.len(), 2);
    assert!(config.admin.is_none());
}

#[test]
fn valid_file_loads_and_records_its_source() {
    let file = TempFile::new("valid.toml", VALID.as_bytes());
    let config = config::load(&file.0).unwrap();
    assert_eq!(config.source.as_deref(), Some(file.0.as_path()));
}

#[test]
fn missing_file_is_a_read_error() {
    let path = Path::new("/nonexistent/warren.toml");
    let err = config::load(path).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.starts_with("/nonexistent/warren.toml: cannot read: "),
        "{message}"
    );
}

#[test]
fn non_utf8_file_is_reported_with_its_position() {
    let mut bytes = VALID.as_bytes().to_vec();
    let at = VALID.find("rabbit-a").unwrap();
    bytes[at] = 0xff;
    let file = TempFile::new("latin1.toml", &bytes);
    let err = config::load(&file.0).unwrap_err();
    let line = VALID[..at].matches('\n').count() + 1;
    assert_eq!(
        err.to_string(),
        format!(
            "{}:{line}:9: is not valid UTF-8 (byte offset {at})",
            file.0.display()
        )
    );
}

#[test]
fn toml_syntax_error_names_line_key_and_text() {
    let text = VALID.replace("\"127.0.0.1:5672\"", "127.0.0.1:5672");
    let err = config::from_toml(&text, Path::new("warren.toml")).unwrap_err();
    assert!(matches!(err, ConfigError::Parse { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.starts_with("warren.toml:4:"),
        "no file:line in {message}"
    );
    assert!(
        message.contains("listener[0].listen"),
        "no key in {message}"
    );
    assert!(
        message.contains("`listen = 127.0.0.1:5672`"),
        "no value in {message}"
    );
}

#[test]
fn unknown_key_names_the_key_and_where_it_is() {
    let text = format!("{VALID}wieght = 2\n");
    let err = config::from_toml(&text, Path::new("warren.toml")).unwrap_err();
    let message = err.to_string();
    assert!(
        message.starts_with(
            "warren.toml:12:1: pool.rabbitmq.backend[0].wieght: unknown field `wieght`"
        ),
        "{message}"
    );
    assert!(
        message.contains("`weight`"),
        "lists the valid keys: {message}"
    );
}

#[test]
fn wrong_type_names_the_key_and_the_value() {
    let text = format!("{VALID}weight = \"heavy\"\n");
    let err = config::from_toml(&text, Path::new("warren.toml")).unwrap_err();
    let message = err.to_string();
    assert!(
        message.starts_with(
            "warren.toml:12:10: pool.rabbitmq.backend[0].weight: invalid type: string \"heavy\""
        ),
        "{message}"
    );
}

#[test]
fn validation_problems_are_all_listed_one_per_line() {
    let text = VALID
        .replace("\"127.0.0.1:5673\"", "\"::1:5673\"")
        .replace("pool = \"rabbitmq\"", "pool = \"rabbit\"");
    let file = TempFile::new("invalid.toml", text.as_bytes());
    let err = config::load(&file.0).unwrap_err();
    let f = file.0.display();
    let expected = [
        format!("{f}:5: listener[0].pool = \"rabbit\": no such pool; defined pools: \"rabbitmq\""),
        format!(
            "{f}:11: pool.rabbitmq.backend[0].addr = \"::1:5673\": IPv6 addresses need \
             brackets: write \"[::1]:5673\""
        ),
    ];
    assert_eq!(err.problems(), expected);
    assert_eq!(err.to_string(), expected.join("\n"));
}

#[test]
fn validation_problem_without_a_line_still_names_file_and_key() {
    let err = config::from_toml("[pool.p]\n", Path::new("empty.toml")).unwrap_err();
    assert_eq!(
        err.problems(),
        [
            "empty.toml:1: pool.p.backend: the pool has no backends; add at least one backend",
            "empty.toml: listener: no [[listener]] is defined; warren needs at least one to \
             accept connections",
        ]
    );
}

#[test]
fn host_names_are_resolved_at_load_time() {
    let text = VALID.replace("\"127.0.0.1:5673\"", "\"localhost:5673\"");
    let config = config::from_toml(&text, Path::new("warren.toml")).unwrap();
    let backend = &config.pool("rabbitmq").unwrap().backends[0];
    assert_eq!((backend.host.as_str(), backend.port), ("localhost", 5673));
    assert!(backend.addr.ip().is_loopback(), "{}", backend.addr);
}

#[test]
fn quick_start_errors_name_the_flag_and_value() {
    let err =
        config::quick_start("0.0.0.0:5672", &["10.0.0.1:99999".to_string()], None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "command line: --backend = \"10.0.0.1:99999\": port 99999 is out of range 1-65535"
    );
    let config = config::quick_start(
        "0.0.0.0:5672",
        &["127.0.0.1:5673".to_string(), "127.0.0.1:5674".to_string()],
        None,
    )
    .unwrap();
    assert_eq!(
        config.summary(),
        "command line: ok: 1 listener, 1 pool, 2 backends, 0 hooks"
    );
}

/// `--admin` gives a quick start the admin API (an `[admin]` with its defaults); a bad one is
/// named by its flag.
#[test]
fn quick_start_admin_flag_adds_the_admin_api() {
    let backends = ["127.0.0.1:5673".to_string()];
    let config = config::quick_start("127.0.0.1:5672", &backends, Some("127.0.0.1:9901")).unwrap();
    let admin = config.admin.expect("an admin API");
    assert_eq!(admin.listen, "127.0.0.1:9901".parse().unwrap());
    assert_eq!(admin.token_file, None);
    let err = config::quick_start("127.0.0.1:5672", &backends, Some("nonsense")).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("command line: --admin = \"nonsense\""),
        "{err}"
    );
    let err = config::quick_start("127.0.0.1:5672", &backends, Some("127.0.0.1:5672")).unwrap_err();
    assert!(err.to_string().contains("--admin"), "{err}");
}

/// `tags` on a backend: sorted, each once; a tag that is not a name is refused with its key.
#[test]
fn backend_tags_are_names_kept_sorted_and_once() {
    let text = VALID.replace(
        "addr = \"127.0.0.1:5673\"",
        "addr = \"127.0.0.1:5673\"\ntags = [\"updating\", \"az-1\", \"updating\"]",
    );
    let config = config::from_toml(&text, Path::new("warren.toml")).unwrap();
    let backend = &config.pool("rabbitmq").unwrap().backends[0];
    assert_eq!(backend.tags, ["az-1", "updating"]);
    let bad = VALID.replace(
        "addr = \"127.0.0.1:5673\"",
        "addr = \"127.0.0.1:5673\"\ntags = [\"ok\", \"no spaces\"]",
    );
    let err = config::from_toml(&bad, Path::new("warren.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "pool.rabbitmq.backend[0].tags[1] = \"no spaces\": tag names may contain only"
        ),
        "{err}"
    );
}

/// The `resolve_interval` and `[resolver]` lines config/warren.toml shows commented out load
/// once uncommented (its backends are IP addresses: nothing is asked of the nameservers).
#[test]
fn example_config_resolve_keys_load_when_uncommented() {
    let path = example("warren.toml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    for line in [
        "resolve_interval = \"30s\"",
        "[resolver]",
        "nameservers = [\"10.0.0.2:53\", \"10.0.0.3\"]",
    ] {
        let commented = format!("\n# {line}\n");
        assert_eq!(text.matches(&commented).count(), 1, "{commented}");
        text = text.replacen(&commented, &format!("\n{line}\n"), 1);
    }
    let config = config::from_toml(&text, &path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config.pool("rabbitmq").unwrap().resolve_interval,
        Some(Duration::from_secs(30))
    );
    assert_eq!(
        config.resolver.nameservers,
        [
            "10.0.0.2:53".parse::<std::net::SocketAddr>().unwrap(),
            "10.0.0.3:53".parse().unwrap()
        ]
    );
}
