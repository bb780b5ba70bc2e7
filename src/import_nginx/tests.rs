use std::collections::BTreeMap;

use super::render::one_line;
use super::*;

/// Files in memory: path → text.
struct MemFiles(BTreeMap<PathBuf, String>);

impl MemFiles {
    fn new(files: &[(&str, &str)]) -> MemFiles {
        MemFiles(
            files
                .iter()
                .map(|(p, t)| (PathBuf::from(p), t.to_string()))
                .collect(),
        )
    }
}

impl Files for MemFiles {
    fn read(&self, path: &Path) -> io::Result<String> {
        self.0
            .get(path)
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names: Vec<String> = self
            .0
            .keys()
            .filter_map(|p| p.strip_prefix(dir).ok())
            .filter_map(|rest| rest.components().next())
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        names.dedup();
        if names.is_empty() {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such directory"));
        }
        Ok(names)
    }
}

fn file() -> Arc<Path> {
    Arc::from(Path::new("nginx.conf"))
}

fn import_str(text: &str) -> Result<Import, ImportError> {
    import(
        Path::new("/etc/nginx/nginx.conf"),
        &MemFiles::new(&[("/etc/nginx/nginx.conf", text)]),
    )
}

/// The imported TOML loaded through warren's own config loader (IP addresses only, so no
/// DNS is involved).
fn load(import: &Import) -> crate::config::Config {
    crate::config::from_toml(&import.toml, Path::new("imported.toml"))
        .unwrap_or_else(|e| panic!("{e}\n--- output ---\n{}", import.toml))
}

fn warnings(import: &Import) -> Vec<String> {
    import.warnings.iter().map(ToString::to_string).collect()
}

const CLASSIC: &str = "\
stream {
upstream rabbitmq {
    server 10.0.0.1:5672;
    server 10.0.0.2:5672;
}
server {
    listen 5672;
    proxy_pass rabbitmq;
    proxy_connect_timeout 5s;
    proxy_timeout 120s;
}
}
";

#[test]
fn tokenizer_cases() {
    use Token::*;
    let w = |s: &str| Word(s.to_string());
    let cases: Vec<(&str, Vec<(Token, usize)>)> = vec![
        ("a b;", vec![(w("a"), 1), (w("b"), 1), (Semicolon, 1)]),
        (
            "s {\n  x 1; # comment ; {\n}",
            vec![
                (w("s"), 1),
                (Open, 1),
                (w("x"), 2),
                (w("1"), 2),
                (Semicolon, 2),
                (Close, 3),
            ],
        ),
        (
            "log \"a b;c\" 'd\\'e';",
            vec![
                (w("log"), 1),
                (w("a b;c"), 1),
                (w("d'e"), 1),
                (Semicolon, 1),
            ],
        ),
        (
            "map ${a}x $b {",
            vec![(w("map"), 1), (w("${a}x"), 1), (w("$b"), 1), (Open, 1)],
        ),
        (
            "x \"multi\nline\" y;",
            vec![
                (w("x"), 1),
                (w("multi\nline"), 1),
                (w("y"), 2),
                (Semicolon, 2),
            ],
        ),
        (
            "a#not-a-comment;",
            vec![(w("a#not-a-comment"), 1), (Semicolon, 1)],
        ),
        (
            "esc a\\;b;",
            vec![(w("esc"), 1), (w("a\\;b"), 1), (Semicolon, 1)],
        ),
    ];
    for (text, want) in cases {
        assert_eq!(tokenize(text, &file()).unwrap(), want, "{text:?}");
    }
}

#[test]
fn syntax_errors_name_the_line() {
    // (text, line of the error, message fragment)
    let cases = [
        ("a \"open;\n\n", 1, "unterminated \"-quoted string"),
        ("stream {\n  server {\n  }\n", 1, "no closing \"}\""),
        ("a;\n}\n", 2, "unexpected \"}\" without a block"),
        ("a;\n;\n", 2, "unexpected \";\""),
        ("\n{\n", 2, "unexpected \"{\""),
        ("listen 5672\n}", 2, "`listen` needs a \";\" first"),
        ("x 1;\nlisten 5672", 2, "`listen` needs a \";\" or a block"),
        ("x \"a\"b;", 1, "right after a quoted string"),
        ("x ${a;", 1, "unterminated ${variable}"),
    ];
    for (text, line, fragment) in cases {
        match parse(text, &file()) {
            Err(ImportError::Syntax { at, message }) => {
                assert_eq!(at.line, line, "{text:?}: {message}");
                assert!(message.contains(fragment), "{text:?}: {message:?}");
            }
            other => panic!("{text:?}: expected a syntax error, got {other:?}"),
        }
    }
}

#[test]
fn parser_builds_nested_blocks_with_lines() {
    let parsed = parse("a 1;\nb {\n  c \"x y\";\n  d { }\n}\n", &file()).unwrap();
    assert_eq!(parsed.len(), 2);
    assert_eq!(
        (parsed[0].name.as_str(), parsed[0].args.as_slice()),
        ("a", &["1".to_string()][..])
    );
    let b = parsed[1].block.as_ref().unwrap();
    assert_eq!(parsed[1].loc.line, 2);
    assert_eq!(
        (b[0].name.as_str(), b[0].args[0].as_str(), b[0].loc.line),
        ("c", "x y", 3)
    );
    assert_eq!(b[1].block.as_deref(), Some(&[][..]));
    assert_eq!(b[0].shown(), "c \"x y\";");
    assert_eq!(parsed[1].shown(), "b { ... }");
}

#[test]
fn glob_match_cases() {
    let cases = [
        ("*.conf", "a.conf", true),
        ("*.conf", "a.conf.bak", false),
        ("*.conf", ".hidden.conf", false),
        (".*.conf", ".hidden.conf", true),
        ("a?c", "abc", true),
        ("a?c", "ac", false),
        ("[ab]*", "b1", true),
        ("[ab]*", "c1", false),
        ("[!ab]*", "c1", true),
        ("[a-c]x", "bx", true),
        ("[a-c]x", "dx", false),
        ("[]]", "]", true),
        ("[x", "[x", true),
        ("*", "", true),
        ("exact", "exact", true),
    ];
    for (pattern, name, want) in cases {
        assert_eq!(glob_match(pattern, name), want, "{pattern:?} vs {name:?}");
    }
}

#[test]
fn nginx_duration_cases() {
    let ok = [
        ("120s", 120_000),
        ("120", 120_000),
        ("5m", 300_000),
        ("500ms", 500),
        ("1h30m", 5_400_000),
        ("1h 30m", 5_400_000),
        ("1d", 86_400_000),
        ("1w", 604_800_000),
        ("1M", 2_592_000_000),
        ("1y", 31_536_000_000),
        ("0", 0),
    ];
    for (input, ms) in ok {
        assert_eq!(
            nginx_duration(input),
            Ok(Duration::from_millis(ms)),
            "{input}"
        );
    }
    for input in ["", "s", "5x", "-1s", "1.5s", "99999999999999999999s"] {
        assert!(nginx_duration(input).is_err(), "{input}");
    }
    let shown = [
        (Duration::from_secs(120), "120s"),
        (Duration::from_millis(1500), "1500ms"),
        (Duration::from_secs(7200), "2h"),
        (Duration::from_secs(600), "600s"),
        (Duration::ZERO, "0s"),
    ];
    for (d, want) in shown {
        assert_eq!(warren_duration(d), want);
        assert_eq!(
            crate::config::parse_duration(want),
            Ok(d),
            "{want} reads back"
        );
    }
}

#[test]
fn listen_addr_cases() {
    let addr = |s: &str| Ok(ListenAddr::Addr(s.to_string(), None));
    let cases: Vec<(&str, Result<ListenAddr, String>)> = vec![
        ("5672", addr("0.0.0.0:5672")),
        ("*:5672", addr("0.0.0.0:5672")),
        ("10.1.2.3:5672", addr("10.1.2.3:5672")),
        ("[::]:5672", addr("[::]:5672")),
        ("[::1]:5673", addr("[::1]:5673")),
    ];
    for (input, want) in cases {
        assert_eq!(listen_addr(input), want, "{input}");
    }
    assert!(matches!(
        listen_addr("localhost:5672"),
        Ok(ListenAddr::Addr(a, Some(_))) if a == "127.0.0.1:5672"
    ));
    for input in ["unix:/run/x.sock", "rabbit.example:5672", "$x"] {
        assert!(
            matches!(listen_addr(input), Ok(ListenAddr::Unsupported(_))),
            "{input}"
        );
    }
    for (input, fragment) in [
        ("0", "invalid port"),
        ("70000", "invalid port"),
        ("10.0.0.1", "no port"),
        ("[::1]", "no port"),
        ("[zz]:1", "not an IPv6"),
    ] {
        let err = listen_addr(input).unwrap_err();
        assert!(err.contains(fragment), "{input}: {err}");
    }
}

#[test]
fn target_cases() {
    let addr = |host: &str, addr: &str| {
        Ok(ServerTarget::Addr {
            host: host.to_string(),
            addr: addr.to_string(),
        })
    };
    let cases: Vec<(&str, Result<ServerTarget, String>)> = vec![
        ("10.0.0.1:5672", addr("10.0.0.1", "10.0.0.1:5672")),
        (
            "rabbit-a.internal:5672",
            addr("rabbit-a.internal", "rabbit-a.internal:5672"),
        ),
        ("[fd00::1]:5672", addr("fd00::1", "[fd00::1]:5672")),
    ];
    for (input, want) in cases {
        assert_eq!(target(input), want, "{input}");
    }
    for input in ["unix:/tmp/s", "$upstream_addr"] {
        assert!(
            matches!(target(input), Ok(ServerTarget::Unsupported(_))),
            "{input}"
        );
    }
    for (input, fragment) in [
        ("rabbit", "no port"),
        ("fd00::1:5672", "need brackets"),
        ("a b:1", "not a host name"),
        ("h:0", "invalid port"),
    ] {
        let err = target(input).unwrap_err();
        assert!(err.contains(fragment), "{input}: {err}");
    }
}

#[test]
fn names_are_sanitized_and_unique() {
    assert_eq!(sanitize("rabbit_cluster"), "rabbit_cluster");
    assert_eq!(sanitize("fd00::1"), "fd00--1");
    assert_eq!(sanitize("a b/c"), "a-b-c");
    assert_eq!(sanitize("::"), "unnamed");
    let mut taken = HashSet::new();
    assert_eq!(unique("a", &mut taken), "a");
    assert_eq!(unique("a", &mut taken), "a-2");
    assert_eq!(unique("a", &mut taken), "a-3");
    assert_eq!(toml_key("rabbits"), "rabbits");
    assert_eq!(toml_key("10.0.0.9-5672"), "\"10.0.0.9-5672\"");
    assert_eq!(toml_str("a\"b\\c\nd"), "\"a\\\"b\\\\c\\nd\"");
}

#[test]
fn classic_config_translates_key_for_key() {
    let import = import_str(CLASSIC).unwrap();
    assert_eq!(import.warnings, []);
    let config = load(&import);
    let l = &config.listeners[0];
    assert_eq!(config.listeners.len(), 1);
    assert_eq!(
        (l.name.as_str(), l.listen, l.pool.as_str()),
        ("rabbitmq", "0.0.0.0:5672".parse().unwrap(), "rabbitmq")
    );
    assert_eq!(
        (l.connect_timeout, l.idle_timeout),
        (Duration::from_secs(5), Duration::from_secs(120))
    );
    let defaults = crate::config::ListenerConfig::default_for("x", l.listen, "x");
    assert_eq!(l.next_upstream_tries, defaults.next_upstream_tries);
    assert_eq!(l.proxy_protocol, crate::config::ProxyProtocol::Off);
    let pool = config.pool("rabbitmq").unwrap();
    assert_eq!(pool.balance, Balance::RoundRobin);
    // NGINX has passive checks only; the import adds the probe `warren ctl upgrade` needs.
    assert_eq!(
        pool.health.as_ref().map(|h| (&h.probe, h.fall)),
        Some((&crate::config::Probe::Amqp, crate::config::DEFAULT_FALL))
    );
    let backends: Vec<(&str, String, u32, bool)> = pool
        .backends
        .iter()
        .map(|b| (b.name.as_str(), b.addr.to_string(), b.weight, b.backup))
        .collect();
    assert_eq!(
        backends,
        [
            ("10.0.0.1", "10.0.0.1:5672".to_string(), 1, false),
            ("10.0.0.2", "10.0.0.2:5672".to_string(), 1, false)
        ]
    );
    assert!(import.toml.contains("idle_timeout = \"120s\""));
    assert!(import
        .toml
        .contains("# proxy_timeout 120s;  (/etc/nginx/nginx.conf:10)"));
}

/// A stream block wrapped around `body`, with one upstream `u` of two IPs for servers to use.
fn stream(body: &str) -> String {
    format!(
        "stream {{\n upstream u {{ server 10.0.0.1:5672; server 10.0.0.2:5672; }}\n{body}\n}}\n"
    )
}

#[test]
fn translations_table() {
    // (stream body, fragments the TOML must contain, warning fragments in order)
    let cases: Vec<(String, Vec<&str>, Vec<&str>)> = vec![
        (
            stream("upstream lc { least_conn; server 10.0.0.3:5672 weight=3; server 10.0.0.4:5672; }\n server { listen 5672; proxy_pass lc; }"),
            vec!["balance = \"least_conn\"", "weight = 3"],
            vec![],
        ),
        (
            stream("upstream h { hash $remote_addr consistent; server 10.0.0.3:5672; server 10.0.0.4:5672 backup; }\n server { listen 5672; proxy_pass h; }"),
            vec!["balance = \"source_hash\"", "backup = true", "like `consistent`"],
            vec![],
        ),
        (
            stream("upstream h { hash $binary_remote_addr; server 10.0.0.3:5672; }\n server { listen 5672; proxy_pass h; }"),
            vec!["balance = \"source_hash\"", "always consistent"],
            vec![],
        ),
        (
            stream("upstream h { hash $server_addr; server 10.0.0.3:5672; }\n server { listen 5672; proxy_pass h; }"),
            vec!["[pool.h]", "balance = \"round_robin\""],
            vec!["nginx.conf:3: `hash $server_addr;`: warren hashes only on the client address"],
        ),
        (
            stream("upstream r { random two least_conn; server 10.0.0.3:5672; }\n server { listen 5672; proxy_pass r; }"),
            vec!["balance = \"random_two\""],
            vec![],
        ),
        (
            stream("upstream r { random; server 10.0.0.3:5672; }\n server { listen 5672; proxy_pass r; }"),
            vec!["balance = \"random_two\""],
            vec!["`random;`: warren has no plain random"],
        ),
        (
            stream("server { listen 5672; proxy_pass 10.0.0.9:5672; }"),
            vec!["pool = \"10.0.0.9-5672\"", "[pool.\"10.0.0.9-5672\"]", "[[pool.\"10.0.0.9-5672\".backend]]", "addr = \"10.0.0.9:5672\""],
            vec![],
        ),
        (
            stream("server { listen 127.0.0.1:5672 proxy_protocol; proxy_pass u; proxy_protocol on; }"),
            vec!["listen = \"127.0.0.1:5672\"", "accept_proxy_protocol = true", "proxy_protocol = \"v1\""],
            vec![],
        ),
        (
            stream("proxy_timeout 30s;\nproxy_connect_timeout 1s;\nserver { listen 5672; proxy_pass u; proxy_timeout 3m; }\nserver { listen 5673; proxy_pass u; }"),
            vec!["idle_timeout = \"180s\"", "idle_timeout = \"30s\"", "connect_timeout = \"1s\"", "name = \"u-5673\""],
            vec![],
        ),
        (
            // A 0 in the server is refused and leaves what the stream level set.
            stream("proxy_timeout 30s;\nserver { listen 5672; proxy_pass u; proxy_timeout 0; }"),
            vec!["idle_timeout = \"30s\""],
            vec!["`proxy_timeout 0;`: 0 is not accepted by warren"],
        ),
        (
            stream("server { listen 5672; proxy_pass u; proxy_next_upstream off; }"),
            vec!["next_upstream_tries = 1"],
            vec![],
        ),
        (
            stream("server { listen 5672; proxy_pass u; proxy_next_upstream_tries 2; proxy_next_upstream_timeout 10s; }"),
            vec!["next_upstream_tries = 2", "next_upstream_timeout = \"10s\""],
            vec![],
        ),
        (
            stream("server { listen 5672; listen [::]:5672; proxy_pass u; tcp_nodelay on; proxy_half_close on; proxy_protocol_timeout 30s; }"),
            vec!["listen = \"[::]:5672\"", "name = \"u-5672\"", "proxy_protocol_timeout = \"30s\""],
            vec![],
        ),
        (
            stream("server { listen 5672; listen 127.0.0.1:5672; proxy_pass u; }"),
            vec!["listen = \"0.0.0.0:5672\""],
            vec!["`listen 127.0.0.1:5672;`: overlaps listen 0.0.0.0:5672 at /etc/nginx/nginx.conf:3"],
        ),
        (
            stream("upstream d { server 10.0.0.3:5672; server 10.0.0.4:5672 down; }\n server { listen 5672; proxy_pass d; }"),
            vec!["# [[pool.d.backend]]", "# addr = \"10.0.0.4:5672\""],
            vec!["nginx.conf:3: `server 10.0.0.4:5672 down;`: `down` has no config key in warren"],
        ),
        (
            stream("upstream d { server 10.0.0.4:5672 down; server 10.0.0.5:5672 backup; }\n server { listen 5672; proxy_pass d; }"),
            vec!["addr = \"10.0.0.4:5672\""],
            vec!["no other primary server is left, so it is kept"],
        ),
        (
            stream("upstream p { server 10.0.0.3:5672 max_fails=3 fail_timeout=30s; server 10.0.0.4:5672 max_fails=0; }\n server { listen 5672; proxy_pass p; }"),
            vec!["\n[pool.p.health]", "\nfall = 3  "],
            vec!["max_fails=3 fail_timeout=30s has no exact equivalent", "max_fails=0 turns NGINX's failure accounting off"],
        ),
        (
            stream("upstream p { server 10.0.0.3:5672 max_fails=1 fail_timeout=10s; }\n server { listen 5672; proxy_pass p; }"),
            vec!["addr = \"10.0.0.3:5672\""],
            vec![],
        ),
        (
            stream("upstream p { zone p 64k; server 10.0.0.3:5672 max_conns=10 slow_start=30s; }\n server { listen 5672; proxy_pass p; }"),
            vec!["[pool.p]"],
            vec!["`zone p 64k;`: shared memory zone", "max_conns is not supported", "slow_start is not translated"],
        ),
        (
            stream("server { listen 5671 ssl; proxy_pass u; ssl_certificate /x.pem; }\nserver { listen 5672; proxy_pass u; }"),
            vec!["listen = \"0.0.0.0:5672\""],
            vec!["`server { ... }`: no listen warren can take", "`listen 5671 ssl;`: warren does not terminate TLS", "`ssl_certificate /x.pem;`: warren does not terminate TLS"],
        ),
        (
            stream("server { listen 5672; proxy_pass u; if ($x) { return 1; } }"),
            vec!["[[listener]]"],
            vec!["`if ($x) { ... }`: block not translated (1 directive(s) inside): no warren equivalent"],
        ),
        (
            stream("resolver 10.0.0.53;\nmap $remote_addr $x { default 1; }\nlimit_conn_zone $binary_remote_addr zone=a:1m;\nserver { listen 5672; proxy_pass u; limit_conn a 10; access_log off; }"),
            vec!["[[listener]]"],
            vec!["`resolver 10.0.0.53;`: warren resolves", "`map $remote_addr $x { ... }`: variables are not supported", "`limit_conn_zone", "`limit_conn a 10;`", "`access_log off;`"],
        ),
        (
            stream("upstream \"my:up\" { server 10.0.0.3:5672; }\n server { listen 5672; proxy_pass my:up; }"),
            vec!["[pool.my-up]"],
            vec!["pool named \"my-up\""],
        ),
    ];
    for (text, fragments, wanted) in cases {
        let import = import_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        for fragment in fragments {
            assert!(
                import.toml.contains(fragment),
                "{fragment:?} missing from:\n{}\nfor:\n{text}",
                import.toml
            );
        }
        let got = warnings(&import);
        assert_eq!(got.len(), wanted.len(), "{got:#?}\nfor:\n{text}");
        for (got, want) in got.iter().zip(&wanted) {
            assert!(got.contains(want), "{got:?} lacks {want:?}");
        }
        load(&import);
    }
}

#[test]
fn invalid_input_is_an_error_with_line() {
    // (stream body, line, fragment)
    let cases = [
        (
            stream("server { listen 5672; proxy_pass nope; }"),
            3,
            "no upstream named \"nope\"",
        ),
        (
            stream("server { listen 5672; proxy_pass u; proxy_timeout soon; }"),
            3,
            "is not an NGINX time",
        ),
        (
            stream("server { listen 5672; proxy_pass u; proxy_timeout 1s; proxy_timeout 2s; }"),
            3,
            "is duplicate",
        ),
        (
            stream("server { listen 5672; proxy_pass u; proxy_pass u; }"),
            3,
            "is duplicate",
        ),
        (
            stream("server { listen 5672; proxy_pass u; }\nserver { listen 5672; proxy_pass u; }"),
            4,
            "duplicate listen 0.0.0.0:5672",
        ),
        (
            stream("upstream e { }\nserver { listen 5672; proxy_pass u; }"),
            3,
            "no servers",
        ),
        (
            stream("upstream w { server 10.0.0.3:5672 weight=0; }"),
            3,
            "invalid weight",
        ),
        (stream("upstream w { server rabbit; }"), 3, "no port"),
        (
            stream("server { listen 0; proxy_pass u; }"),
            3,
            "invalid port",
        ),
        (
            stream("server { listen 5672; proxy_pass u; proxy_next_upstream maybe; }"),
            3,
            "\"on\" or \"off\"",
        ),
        (
            "stream { }\nstream { }\n".to_string(),
            2,
            "duplicate stream block",
        ),
    ];
    for (text, line, fragment) in cases {
        match import_str(&text) {
            Err(ImportError::Invalid { at, message, .. }) => {
                assert_eq!(at.line, line, "{message}\n{text}");
                assert!(message.contains(fragment), "{message:?} lacks {fragment:?}");
            }
            other => panic!("expected Invalid for:\n{text}\ngot {other:?}"),
        }
    }
}

#[test]
fn missing_stream_or_listener_is_an_error() {
    let err = import_str("events { }\nhttp { server { listen 80; } }\n").unwrap_err();
    assert!(matches!(err, ImportError::NoStream { .. }));
    assert_eq!(
        err.to_string(),
        "/etc/nginx/nginx.conf: no `stream { ... }` block found (in it or its includes); \
         warren translates only NGINX's TCP stream proxy"
    );
    let err = import_str("\nstream {\n upstream u { server 10.0.0.1:1; }\n}\n").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("/etc/nginx/nginx.conf:2: the stream block has no server"),
        "{err}"
    );
    let err = import_str("stream {\n server { listen 5672 udp; proxy_pass 10.0.0.1:53; }\n}\n")
        .unwrap_err();
    assert!(matches!(err, ImportError::NoListener { .. }), "{err}");
}

#[test]
fn directives_outside_stream_warn_once_each() {
    let text = format!(
        "user nginx;\nworker_processes auto;\nevents {{ worker_connections 1024; }}\nhttp {{\n include mime.types;\n server {{ listen 80; }}\n}}\n{CLASSIC}"
    );
    let import = import_str(&text).unwrap();
    assert_eq!(
        warnings(&import),
        [
            "/etc/nginx/nginx.conf:1: `user nginx;`: outside the stream block: run warren under its own user with systemd (see systemd/)",
            "/etc/nginx/nginx.conf:2: `worker_processes auto;`: outside the stream block: see `warren run --workers N` (default: one per CPU)",
            "/etc/nginx/nginx.conf:3: `events { ... }`: outside the stream block: NGINX event-loop settings; warren's data plane sizes itself (and caps connections with the listener's max_connections)",
            "/etc/nginx/nginx.conf:4: `http { ... }`: outside the stream block: warren proxies TCP only; HTTP stays with NGINX or another proxy",
        ]
    );
    // The http block's include of a missing mime.types was not followed.
    assert_eq!(load(&import).listeners.len(), 1);
    for w in &import.warnings {
        assert!(import.toml.contains(&one_line(&w.to_string())));
    }
}

#[test]
fn includes_and_globs_are_followed_relative_to_the_main_file() {
    let files = MemFiles::new(&[
        (
            "/etc/nginx/nginx.conf",
            "include modules/*.conf;\nstream {\n include stream.d/*.conf;\n include servers.conf;\n}\n",
        ),
        ("/etc/nginx/modules/mod-stream.conf", "load_module x.so;\n"),
        ("/etc/nginx/stream.d/b.conf", "upstream b { server 10.0.0.2:5672; }\n"),
        ("/etc/nginx/stream.d/a.conf", "\nupstream a {\n server 10.0.0.1:5672;\n ssl_x y;\n}\n"),
        ("/etc/nginx/stream.d/.hidden.conf", "garbage {\n"),
        ("/etc/nginx/stream.d/notes.txt", "garbage {\n"),
        ("/etc/nginx/servers.conf", "server { listen 5672; proxy_pass a; }\nserver { listen 5673; proxy_pass b; }\n"),
    ]);
    let import = import(Path::new("/etc/nginx/nginx.conf"), &files).unwrap();
    assert_eq!(
        warnings(&import),
        [
            "/etc/nginx/modules/mod-stream.conf:1: `load_module x.so;`: outside the stream block: NGINX modules do not apply",
            "/etc/nginx/stream.d/a.conf:4: `ssl_x y;`: warren does not terminate TLS; let RabbitMQ terminate it (listeners.ssl) and forward its TLS port as plain TCP",
        ]
    );
    let config = load(&import);
    let pools: Vec<&str> = config.pools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(pools, ["a", "b"]);
    assert_eq!(config.listeners[1].pool, "b");
    assert!(import.toml.contains("(/etc/nginx/stream.d/a.conf:3)"));
}

#[test]
fn include_errors_name_the_include_line() {
    let files = MemFiles::new(&[("/n/nginx.conf", "stream {\n include missing.conf;\n}\n")]);
    let err = import(Path::new("/n/nginx.conf"), &files).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("/n/nginx.conf:2: cannot read included file /n/missing.conf"),
        "{err}"
    );
    let files = MemFiles::new(&[
        ("/n/nginx.conf", "stream {\n include loop.conf;\n}\n"),
        ("/n/loop.conf", "include loop.conf;\n"),
    ]);
    let err = import(Path::new("/n/nginx.conf"), &files).unwrap_err();
    assert!(err.to_string().contains("an include cycle?"), "{err}");
    let files = MemFiles::new(&[
        ("/n/nginx.conf", "stream {\n include bad.conf;\n}\n"),
        ("/n/bad.conf", "upstream u {\n server 10.0.0.1:1\n}\n"),
    ]);
    let err = import(Path::new("/n/nginx.conf"), &files).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("/n/bad.conf:3: unexpected \"}\""),
        "{err}"
    );
    // A glob that matches nothing is fine, as in NGINX.
    let files = MemFiles::new(&[(
        "/n/nginx.conf",
        "include /nowhere/*.conf;\nstream { include none/*.conf; server { listen 1; proxy_pass 10.0.0.1:1; } }\n",
    )]);
    assert!(import(Path::new("/n/nginx.conf"), &files).is_ok());
}

/// Lines of `toml` whose trailing comment is not set off by two spaces (`value"# note`,
/// `value # note`): TOML lines, also commented-out ones, with the first `#` outside a string.
fn glued_comments(toml: &str) -> Vec<String> {
    let mut glued = Vec::new();
    for line in toml.lines() {
        let body = line.strip_prefix("# ").unwrap_or(line);
        let is_toml = body.starts_with('[')
            || body
                .split_once(" = ")
                .is_some_and(|(k, _)| !k.is_empty() && !k.contains(' '));
        if !is_toml {
            continue;
        }
        let mut in_string = false;
        let mut escaped = false;
        for (i, c) in body.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if in_string => escaped = true,
                '"' => in_string = !in_string,
                '#' if !in_string => {
                    if !body[..i].ends_with("  ") {
                        glued.push(line.to_string());
                    }
                    break;
                }
                _ => {}
            }
        }
    }
    glued
}

#[test]
fn trailing_comments_are_set_off_by_two_spaces() {
    let mut out = String::new();
    super::render::line(
        &mut out,
        "addr",
        &toml_str("[fd00:1234:5678:9abc::10]:5672"),
        "note",
    );
    super::render::line(&mut out, "k", "1", "short");
    assert_eq!(
        out,
        "addr = \"[fd00:1234:5678:9abc::10]:5672\"  # note\nk = 1                           # short\n"
    );
    // Every rendering place: long addresses, listen, pool names and pool titles.
    let long = stream(
        "upstream a_pool_with_a_rather_long_name { server 10.0.0.3:5672 max_fails=3; server [fd00:1234:5678:9abc::11]:5672 down; }\n\
         server { listen [fd00:1234:5678:9abc::1]:5672; proxy_pass [fd00:1234:5678:9abc::10]:5672; proxy_next_upstream_timeout 30s; proxy_protocol_timeout 1500ms; }\n\
         server { listen 5673; proxy_pass a_pool_with_a_rather_long_name; }",
    );
    let import = import_str(&long).unwrap();
    assert!(!import.toml.contains("\"#"), "{}", import.toml);
    assert_eq!(
        glued_comments(&import.toml),
        Vec::<String>::new(),
        "{}",
        import.toml
    );
    load(&import);
}

/// With `proxy_ssl_trusted_certificate`, `proxy_ssl on` becomes the pool's `[pool.NAME.tls]`
/// with `encrypt = "all"`; `proxy_ssl_verify off` (NGINX's default) and a pool reached with
/// and without `proxy_ssl` are warned about.
#[test]
fn proxy_ssl_with_a_trusted_certificate_becomes_the_pools_tls() {
    let file = |name: &str| format!("{}/src/config/tests/tls/{name}", env!("CARGO_MANIFEST_DIR"));
    let ca = file("ca.pem");
    let text = stream(&format!(
        "server {{ listen 5672; proxy_pass u; proxy_ssl on; proxy_ssl_verify on;\n\
         proxy_ssl_trusted_certificate {ca}; proxy_ssl_name rabbit.internal;\n\
         proxy_ssl_certificate {}; proxy_ssl_certificate_key {}; }}",
        file("client.pem"),
        file("client.key")
    ));
    let import = import_str(&text).unwrap();
    assert_eq!(warnings(&import), Vec::<String>::new(), "{}", import.toml);
    for want in [
        "[pool.u.tls]",
        &format!("ca = \"{ca}\""),
        "server_name = \"rabbit.internal\"",
        "encrypt = \"all\"",
    ] {
        assert!(import.toml.contains(want), "{want} in\n{}", import.toml);
    }
    let config = load(&import);
    for backend in &config.pools[0].backends {
        let tls = backend.tls.as_ref().expect("the pool speaks TLS");
        assert_eq!(tls.encrypt, crate::config::Encrypt::All);
        assert_eq!(tls.server_name.to_str(), "rabbit.internal");
        assert!(tls.client.has_identity());
    }

    // proxy_ssl_verify on without proxy_ssl_name: NGINX checked the proxy_pass name.
    let text = stream(&format!(
        "server {{ listen 5672; proxy_pass u; proxy_ssl on; proxy_ssl_verify on;\n\
         proxy_ssl_trusted_certificate {ca}; }}"
    ));
    let import = import_str(&text).unwrap();
    assert!(
        import.toml.contains("server_name = \"u\""),
        "{}",
        import.toml
    );
    load(&import);

    let text = stream(&format!(
        "proxy_ssl_trusted_certificate {ca};\n\
         server {{ listen 5672; proxy_pass u; proxy_ssl on; }}\n\
         server {{ listen 5673; proxy_pass u; }}"
    ));
    let import = import_str(&text).unwrap();
    let got = warnings(&import);
    assert_eq!(got.len(), 2, "{got:#?}");
    assert!(
        got[0].contains("NGINX did not check the nodes' certificates"),
        "{}",
        got[0]
    );
    assert!(
        got[1].contains("is reached with `proxy_ssl on;`") && got[1].contains("without proxy_ssl"),
        "{}",
        got[1]
    );
    let config = load(&import);
    assert!(config.pools[0].backends[0].tls.is_some());
}

#[test]
fn proxy_ssl_on_warns_that_tls_to_the_backends_is_lost() {
    // (stream body, warning fragments in order; empty: no TLS warning)
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            stream("server { listen 5672; proxy_pass u; proxy_ssl on; }"),
            vec!["nginx.conf:3: `proxy_pass u;`: TLS to the backends is lost: `proxy_ssl on;`"],
        ),
        (
            // At the stream level it applies to every server, each warned about.
            stream("proxy_ssl on;\nserver { listen 5672; proxy_pass u; }\nserver { listen 5673; proxy_pass u; proxy_ssl off; }\nserver { listen 5674; proxy_pass u; }"),
            vec!["nginx.conf:4: `proxy_pass u;`: TLS to the backends is lost", "nginx.conf:6: `proxy_pass u;`: TLS to the backends is lost"],
        ),
        (stream("server { listen 5672; proxy_pass u; proxy_ssl off; }"), vec![]),
    ];
    for (text, wanted) in cases {
        let import = import_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let got = warnings(&import);
        assert_eq!(got.len(), wanted.len(), "{got:#?}\nfor:\n{text}");
        for (got, want) in got.iter().zip(&wanted) {
            assert!(got.contains(want), "{got:?} lacks {want:?}");
            for says in ["proxy_ssl_trusted_certificate", "in clear", "amqps", "5671"] {
                assert!(got.contains(says), "{got:?} does not say {says:?}");
            }
        }
        // The listener itself carries the note, and the header repeats the warning.
        assert_eq!(
            import.toml.matches("# TLS to the backends is lost").count(),
            wanted.len(),
            "{}",
            import.toml
        );
        for w in &import.warnings {
            assert!(import.toml.contains(&one_line(&w.to_string())));
        }
        load(&import);
    }
}

#[test]
fn set_real_ip_from_says_the_address_can_be_forged_and_what_to_restrict() {
    let text = stream(
        "set_real_ip_from 10.0.0.0/24;\nserver { listen 5672 proxy_protocol; proxy_pass u; set_real_ip_from 192.168.1.7; }",
    );
    let import = import_str(&text).unwrap();
    let got = warnings(&import);
    assert_eq!(got.len(), 2, "{got:#?}");
    for (w, value) in got.iter().zip(["10.0.0.0/24", "192.168.1.7"]) {
        assert!(w.contains("`set_real_ip_from"), "{w}");
        for says in [
            "whoever can reach the listener can forge a client address",
            "trusts the PROXY header",
            &format!("proxy_protocol_from = [\"{value}\"]"),
            "firewall",
        ] {
            assert!(w.contains(says), "{w:?} does not say {says:?}");
        }
    }
    load(&import);
}

#[test]
fn pools_no_listener_uses_are_written_commented_out() {
    // `spare` is named by no server; `tls` only by a server that is left out (listen ... ssl).
    let text = stream(
        "upstream spare { server rabbit-spare.invalid:5672; }\n\
         upstream tls { server rabbit-tls.invalid:5671; }\n\
         server { listen 5671 ssl; proxy_pass tls; }\n\
         server { listen 5672; proxy_pass u; }",
    );
    let import = import_str(&text).unwrap();
    let config = load(&import);
    let pools: Vec<&str> = config.pools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(pools, ["u"], "{}", import.toml);
    for pool in ["spare", "tls"] {
        let commented = format!("# [pool.{pool}]");
        assert!(
            import.toml.lines().any(|l| l.starts_with(&commented)),
            "{commented} not in:\n{}",
            import.toml
        );
        assert!(import.toml.contains(&format!("# [[pool.{pool}.backend]]")));
    }
    assert!(
        import.toml.contains("no listener uses this pool"),
        "{}",
        import.toml
    );
    // Nothing uncommented names a host no one would use.
    for line in import.toml.lines().filter(|l| !l.starts_with('#')) {
        assert!(!line.contains(".invalid"), "{line}");
    }
}

#[test]
fn output_has_an_admin_section_and_a_probe_per_pool() {
    let import = import_str(CLASSIC).unwrap();
    let config = load(&import);
    let admin = config.admin.as_ref().expect("an [admin] section");
    assert_eq!(admin.listen, "127.0.0.1:9901".parse().unwrap());
    assert_eq!(admin.token_file, None);
    assert!(import.toml.contains("\n[admin]"), "{}", import.toml);
    assert!(import.toml.contains("# token_file = "), "{}", import.toml);
    let health = config
        .pool("rabbitmq")
        .unwrap()
        .health
        .as_ref()
        .expect("a probe");
    assert_eq!(health.probe, crate::config::Probe::Amqp);
    // Why it was chosen is said next to it.
    assert!(
        import
            .toml
            .lines()
            .any(|l| l.starts_with("kind = \"amqp\"") && l.contains("5672")),
        "{}",
        import.toml
    );

    // A listener on 9901 moves the admin API to the next free port.
    let import = import_str(&stream("server { listen 9901; proxy_pass u; }")).unwrap();
    let config = load(&import);
    assert_eq!(
        config.admin.unwrap().listen,
        "127.0.0.1:9902".parse().unwrap()
    );
}

#[test]
fn probe_kind_follows_the_backends_port_and_the_pool_name() {
    // (stream body, pool, kind)
    let cases = [
        (stream("server { listen 5672; proxy_pass u; }"), "u", "amqp"),
        (
            stream("upstream web { server 10.0.0.3:8080; }\nserver { listen 8080; proxy_pass web; }"),
            "web",
            "tcp",
        ),
        (
            stream("upstream rabbit_nodes { server 10.0.0.3:5680; }\nserver { listen 5672; proxy_pass rabbit_nodes; }"),
            "rabbit_nodes",
            "amqp",
        ),
        (
            stream("upstream my_AMQP { server 10.0.0.3:5680; }\nserver { listen 5672; proxy_pass my_AMQP; }"),
            "my_AMQP",
            "amqp",
        ),
        (
            // RabbitMQ's management port: a name with "rabbit" does not make it AMQP.
            stream("upstream rabbitmq_mgmt { server 10.0.0.3:15672; }\nserver { listen 15672; proxy_pass rabbitmq_mgmt; }"),
            "rabbitmq_mgmt",
            "tcp",
        ),
        (
            // RabbitMQ's TLS port: warren's amqp probe speaks plain AMQP, which TLS refuses.
            stream("upstream rabbit_tls { server 10.0.0.3:5671; }\nserver { listen 5671; proxy_pass rabbit_tls; }"),
            "rabbit_tls",
            "tcp",
        ),
        (
            stream("server { listen 5673; proxy_pass 10.0.0.9:5672; }"),
            "10.0.0.9-5672",
            "amqp",
        ),
    ];
    for (text, pool, kind) in cases {
        let import = import_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let config = load(&import);
        let health = config
            .pool(pool)
            .and_then(|p| p.health.as_ref())
            .unwrap_or_else(|| panic!("no probe for {pool}:\n{}", import.toml));
        let want = match kind {
            "amqp" => crate::config::Probe::Amqp,
            _ => crate::config::Probe::Tcp,
        };
        assert_eq!(health.probe, want, "{pool}:\n{}", import.toml);
    }
}
