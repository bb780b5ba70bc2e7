//! `[fleet]`: defaults, every key read, and each problem with its key, value and line.

use super::*;

/// The smallest valid `[fleet]`: cases add or replace keys.
const FLEET: &str = "[fleet]\nstore = \"etcd\"\nendpoints = [\"http://10.0.0.9:2379\"]\n";

/// BASE with a `[fleet]` section made of `body` (a whole section, `[fleet]` included).
fn with_fleet(body: &str) -> String {
    appended(body)
}

/// FLEET with `extra` lines added.
fn fleet_plus(extra: &str) -> String {
    with_fleet(&format!("{FLEET}{extra}\n"))
}

/// A file in the temp directory, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, content: &str) -> TempFile {
        let path =
            std::env::temp_dir().join(format!("warren-config-fleet-{}-{name}", std::process::id()));
        std::fs::write(&path, content).unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn without_the_section_there_is_no_fleet() {
    let config = parse(BASE).unwrap();
    assert_eq!(config.fleet, None);
    assert!(!config.summary().contains("fleet"));
}

#[test]
fn defaults_fill_every_omitted_fleet_key() {
    let config = parse(&with_fleet(FLEET)).unwrap();
    let fleet = config.fleet.as_ref().unwrap();
    let host = host_name().unwrap();
    assert_eq!(
        *fleet,
        FleetConfig {
            endpoints: vec!["http://10.0.0.9:2379".to_string()],
            prefix: "/warren/".to_string(),
            instance: host.clone(),
            timeout: Duration::from_secs(2),
            lease_ttl: Duration::from_secs(10),
            max_draining: 1,
            user: None,
            password: None,
            tls: None,
        }
    );
    assert_eq!(
        (
            DEFAULT_FLEET_PREFIX,
            DEFAULT_FLEET_TIMEOUT,
            DEFAULT_FLEET_LEASE_TTL,
            DEFAULT_FLEET_MAX_DRAINING
        ),
        (
            "/warren/",
            fleet.timeout,
            fleet.lease_ttl,
            fleet.max_draining
        )
    );
    assert_eq!(
        config.summary(),
        format!("test.toml: ok: 1 listener, 1 pool, 2 backends, 0 hooks, fleet etcd (1 endpoint) as instance {host}")
    );
}

#[test]
fn every_fleet_key_is_read() {
    let password = TempFile::new("every-key", "  s3cret-etcd\n");
    let text = with_fleet(&format!(
        r#"[fleet]
store = "etcd"
endpoints = ["http://etcd-1:2379", "http://10.0.0.2:2379/", "http://[fd00::3]:2379"]
prefix = "/site-a/warren/"
instance = "warren-a.dc1"
timeout = "500ms"
lease_ttl = "5m"
max_draining = 2
user = "warren"
password_file = "{}"
"#,
        password.0.display()
    ));
    let config = parse(&text).unwrap();
    assert_eq!(
        config.fleet,
        Some(FleetConfig {
            endpoints: vec![
                "http://etcd-1:2379".to_string(),
                "http://10.0.0.2:2379".to_string(),
                "http://[fd00::3]:2379".to_string(),
            ],
            prefix: "/site-a/warren/".to_string(),
            instance: "warren-a.dc1".to_string(),
            timeout: Duration::from_millis(500),
            lease_ttl: Duration::from_secs(300),
            max_draining: 2,
            user: Some("warren".to_string()),
            password: Some(Secret("s3cret-etcd".to_string())),
            tls: None,
        })
    );
    assert!(
        !format!("{config:?}").contains("s3cret"),
        "Debug leaks the etcd password"
    );
    assert!(
        config
            .summary()
            .ends_with(", 0 hooks, fleet etcd (3 endpoints) as instance warren-a.dc1"),
        "{}",
        config.summary()
    );
    // The limits themselves load.
    let edge = fleet_plus("timeout = \"30s\"\nlease_ttl = \"2m\"\ninstance = \"x\"");
    let fleet = parse(&edge).unwrap().fleet.unwrap();
    assert_eq!(
        (fleet.timeout, fleet.lease_ttl),
        (MAX_FLEET_TIMEOUT, Duration::from_secs(120))
    );
    let edge = fleet_plus("timeout = \"1s\"\nlease_ttl = \"2s\"");
    assert_eq!(
        parse(&edge).unwrap().fleet.unwrap().lease_ttl,
        MIN_FLEET_LEASE_TTL
    );
    let long = "a".repeat(MAX_INSTANCE_NAME);
    let fleet = parse(&fleet_plus(&format!("instance = \"{long}\"")))
        .unwrap()
        .fleet
        .unwrap();
    assert_eq!(fleet.instance, long);
}

#[test]
fn each_fleet_problem_names_key_value_and_line() {
    let empty = TempFile::new("empty", " \n\t\n");
    let empty_path = empty.0.display().to_string();
    let endpoints =
        |list: &str| with_fleet(&format!("[fleet]\nstore = \"etcd\"\nendpoints = {list}\n"));
    let long_name = "a".repeat(MAX_INSTANCE_NAME + 1);
    // (text, key, value as displayed, the text on the problem's line, fragment of the message)
    let cases: Vec<(String, &str, String, &str, &str)> = vec![
        (
            with_fleet("[fleet]\nendpoints = [\"http://10.0.0.9:2379\"]\n"),
            "fleet.store",
            String::new(),
            "[fleet]",
            "required: write store = \"etcd\"",
        ),
        (
            with_fleet("[fleet]\nstore = \"consul\"\nendpoints = [\"http://10.0.0.9:2379\"]\n"),
            "fleet.store",
            "\"consul\"".into(),
            "store = ",
            "expected \"etcd\"",
        ),
        (
            with_fleet("[fleet]\nstore = \"etcd\"\n"),
            "fleet.endpoints",
            String::new(),
            "[fleet]",
            "required: the etcd client URLs",
        ),
        (
            endpoints("[]"),
            "fleet.endpoints",
            "[]".into(),
            "endpoints = ",
            "at least one",
        ),
        (
            endpoints("[\"https://etcd-1:2379\"]"),
            "fleet.ca_file",
            String::new(),
            "[fleet]",
            "required with https:// endpoints",
        ),
        (
            endpoints("[\"http://etcd-1:2379/v3\"]"),
            "fleet.endpoints[0]",
            "\"http://etcd-1:2379/v3\"".into(),
            "endpoints = ",
            "path, query or fragment",
        ),
        (
            endpoints("[\"http://etcd-1:2379/?x=1\"]"),
            "fleet.endpoints[0]",
            "\"http://etcd-1:2379/?x=1\"".into(),
            "endpoints = ",
            "path, query or fragment",
        ),
        (
            endpoints("[\"http://etcd-1:2379#top\"]"),
            "fleet.endpoints[0]",
            "\"http://etcd-1:2379#top\"".into(),
            "endpoints = ",
            "path, query or fragment",
        ),
        (
            endpoints("[\"http://root:pw@etcd-1:2379\"]"),
            "fleet.endpoints[0]",
            "\"http://***@etcd-1:2379\"".into(),
            "endpoints = ",
            "set fleet.user and fleet.password_file",
        ),
        (
            endpoints("[\"http://etcd-1\"]"),
            "fleet.endpoints[0]",
            "\"http://etcd-1\"".into(),
            "endpoints = ",
            "missing port",
        ),
        (
            endpoints("[\"etcd-1:2379\"]"),
            "fleet.endpoints[0]",
            "\"etcd-1:2379\"".into(),
            "endpoints = ",
            "expected http://HOST:PORT",
        ),
        (
            endpoints("[\"http://etcd-1:2379\",\n  \"http://ETCD-1:2379/\"]"),
            "fleet.endpoints[1]",
            "\"http://ETCD-1:2379/\"".into(),
            "\"http://ETCD-1",
            "the same endpoint as fleet.endpoints[0]",
        ),
        (
            fleet_plus("prefix = \"warren/\""),
            "fleet.prefix",
            "\"warren/\"".into(),
            "prefix = ",
            "must start and end with \"/\"",
        ),
        (
            fleet_plus("prefix = \"/warren\""),
            "fleet.prefix",
            "\"/warren\"".into(),
            "prefix = ",
            "must start and end with \"/\"",
        ),
        (
            fleet_plus("instance = \"warren a\""),
            "fleet.instance",
            "\"warren a\"".into(),
            "instance = ",
            "only letters, digits",
        ),
        (
            fleet_plus("instance = \"\""),
            "fleet.instance",
            "\"\"".into(),
            "instance = ",
            "1 to 64 characters",
        ),
        (
            fleet_plus(&format!("instance = \"{long_name}\"")),
            "fleet.instance",
            format!("\"{long_name}\""),
            "instance = ",
            "1 to 64 characters",
        ),
        (
            fleet_plus("timeout = \"0s\""),
            "fleet.timeout",
            "\"0s\"".into(),
            "timeout = ",
            "longer than 0",
        ),
        (
            fleet_plus("timeout = \"31s\""),
            "fleet.timeout",
            "\"31s\"".into(),
            "timeout = ",
            "too long: at most 30s",
        ),
        (
            fleet_plus("timeout = \"soon\""),
            "fleet.timeout",
            "\"soon\"".into(),
            "timeout = ",
            "not a duration",
        ),
        (
            fleet_plus("lease_ttl = \"1s\""),
            "fleet.lease_ttl",
            "\"1s\"".into(),
            "lease_ttl = ",
            "too short: at least 2s",
        ),
        (
            fleet_plus("lease_ttl = \"5m 1s\""),
            "fleet.lease_ttl",
            "\"5m 1s\"".into(),
            "lease_ttl = ",
            "too long: at most 5m",
        ),
        (
            fleet_plus("lease_ttl = \"2500ms\""),
            "fleet.lease_ttl",
            "\"2500ms\"".into(),
            "lease_ttl = ",
            "whole seconds",
        ),
        (
            fleet_plus("timeout = \"5s\"\nlease_ttl = \"5s\""),
            "fleet.timeout",
            "\"5s\"".into(),
            "timeout = ",
            "must be shorter than fleet.lease_ttl (5s)",
        ),
        (
            fleet_plus("lease_ttl = \"2s\""),
            "fleet.lease_ttl",
            "\"2s\"".into(),
            "lease_ttl = ",
            "fleet.timeout (2s) must be shorter",
        ),
        (
            fleet_plus("max_draining = 0"),
            "fleet.max_draining",
            "0".into(),
            "max_draining = ",
            "at least 1",
        ),
        (
            fleet_plus("user = \"warren\""),
            "fleet.password_file",
            String::new(),
            "user = ",
            "required with fleet.user",
        ),
        (
            fleet_plus("password_file = \"/etc/warren/etcd-password\""),
            "fleet.user",
            String::new(),
            "password_file = ",
            "required with fleet.password_file",
        ),
        (
            fleet_plus("user = \"warren\"\npassword_file = \"/nonexistent/etcd-password\""),
            "fleet.password_file",
            "\"/nonexistent/etcd-password\"".into(),
            "password_file = ",
            "cannot read",
        ),
        (
            fleet_plus(&format!(
                "user = \"warren\"\npassword_file = \"{empty_path}\""
            )),
            "fleet.password_file",
            format!("{empty_path:?}"),
            "password_file = ",
            "the file is empty",
        ),
        (
            fleet_plus("user = \"warren\"\npassword_file = \"/tmp\""),
            "fleet.password_file",
            "\"/tmp\"".into(),
            "password_file = ",
            "not a regular file",
        ),
    ];
    for (text, key, value, on_line, fragment) in &cases {
        let problems = problems_of(text);
        assert_eq!(
            problems.len(),
            1,
            "{key}: expected one problem, got {problems:#?}"
        );
        let p = &problems[0];
        assert_eq!((p.key.as_str(), &p.value), (*key, value), "{p:#?}");
        assert!(
            p.message.contains(fragment),
            "{key}: {:?} lacks {fragment:?}",
            p.message
        );
        let fleet_at = text.find("[fleet]").unwrap();
        let at = fleet_at + text[fleet_at..].find(on_line).unwrap();
        let line = text[..at].matches('\n').count() + 1;
        assert_eq!(p.line, Some(line), "{key}: {p:#?}\n{text}");
    }
}

#[test]
fn an_unknown_fleet_key_is_a_parse_error_naming_it() {
    // A password is only ever read from a file, so it is not in the config.
    let text = fleet_plus("user = \"warren\"\npassword = \"hunter2\"");
    match parse(&text) {
        Err(ConfigError::Parse { key, message, .. }) => {
            assert_eq!(key.as_deref(), Some("fleet.password"), "{message}");
            assert!(message.contains("unknown field `password`"), "{message}");
        }
        other => panic!("expected a parse error, got {other:?}"),
    }
}

#[test]
fn every_fleet_problem_is_reported_at_once() {
    let text = with_fleet(
        "[fleet]\nstore = \"zookeeper\"\nendpoints = [\"ftp://a:2379\", \"http://b\"]\nprefix = \"x\"\nmax_draining = 0\n",
    );
    let keys: Vec<String> = problems_of(&text).into_iter().map(|p| p.key).collect();
    assert_eq!(
        keys,
        [
            "fleet.store",
            "fleet.endpoints[0]",
            "fleet.endpoints[1]",
            "fleet.prefix",
            "fleet.max_draining"
        ]
    );
}

#[test]
fn etcd_endpoints_are_normalized_so_duplicates_show() {
    for (written, normalized) in [
        ("http://etcd-1:2379", "http://etcd-1:2379"),
        ("http://etcd-1:2379/", "http://etcd-1:2379"),
        ("http://ETCD-1:2379", "http://etcd-1:2379"),
        ("http://127.0.0.1:2379", "http://127.0.0.1:2379"),
        ("http://[::1]:2379", "http://[::1]:2379"),
        ("https://ETCD-1:2379/", "https://etcd-1:2379"),
        ("https://127.0.0.1:2379", "https://127.0.0.1:2379"),
    ] {
        assert_eq!(
            crate::config::fleet::etcd_endpoint(written).as_deref(),
            Ok(normalized),
            "{written}"
        );
    }
    for refused in [
        "",
        "http://",
        "http://[::1]",
        "HTTPS://etcd:2379",
        "http://etcd:0",
        "http://etcd:99999",
        "https://etcd",
        "https://u:p@etcd:2379",
    ] {
        assert!(
            crate::config::fleet::etcd_endpoint(refused).is_err(),
            "{refused}"
        );
    }
}

/// Test certificates in src/config/tests/tls/, made once with openssl (valid for a century; a
/// config load never checks dates): `ca.pem`, `client.pem` and its PKCS#8 EC key `client.key`,
/// and `client-rsa.pem` with its PKCS#1 RSA key `client-rsa.key`, both signed by the CA.
fn tls_fixture(name: &str) -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/src/config/tests/tls/").to_string() + name
}

/// `[fleet]` on `endpoints` (a TOML list) with `extra` lines.
fn tls_fleet(endpoints: &str, extra: &str) -> String {
    with_fleet(&format!(
        "[fleet]\nstore = \"etcd\"\nendpoints = {endpoints}\ninstance = \"x\"\n{extra}\n"
    ))
}

#[test]
fn tls_keys_are_read_with_https_endpoints() {
    let ca = tls_fixture("ca.pem");
    let mutual = |cert: &str, key: &str| {
        tls_fleet(
            "[\"https://etcd-1:2379\", \"https://10.0.0.2:2379/\"]",
            &format!(
                "ca_file = \"{ca}\"\ncert_file = \"{}\"\nkey_file = \"{}\"",
                tls_fixture(cert),
                tls_fixture(key)
            ),
        )
    };
    let config = parse(&mutual("client.pem", "client.key")).unwrap();
    let fleet = config.fleet.as_ref().unwrap();
    assert_eq!(
        fleet.endpoints,
        ["https://etcd-1:2379", "https://10.0.0.2:2379"]
    );
    assert!(fleet.tls.as_ref().is_some_and(|t| t.has_identity()));
    assert!(
        config
            .summary()
            .ends_with(", fleet etcd (2 endpoints, TLS with a client certificate) as instance x"),
        "{}",
        config.summary()
    );
    // Debug names the files, never their content.
    let debug = format!("{fleet:?}");
    assert!(
        debug.contains("client.key") && !debug.contains("PRIVATE KEY"),
        "{debug}"
    );
    // PKCS#1 RSA.
    let rsa = parse(&mutual("client-rsa.pem", "client-rsa.key")).unwrap();
    assert!(rsa.fleet.unwrap().tls.is_some());
    // Without a client certificate.
    let config = parse(&tls_fleet(
        "[\"https://etcd-1:2379\"]",
        &format!("ca_file = \"{ca}\""),
    ))
    .unwrap();
    assert!(config
        .summary()
        .ends_with(", fleet etcd (1 endpoint, TLS) as instance x"));
    assert!(!config.fleet.unwrap().tls.unwrap().has_identity());
}

/// A reload compares `[fleet]` old and new: the same files with the same content are equal; a
/// file whose content changed is a change.
#[test]
fn tls_material_compares_by_path_and_content() {
    let ca = TempFile::new(
        "compare-ca.pem",
        &std::fs::read_to_string(tls_fixture("ca.pem")).unwrap(),
    );
    let text = tls_fleet(
        "[\"https://etcd-1:2379\"]",
        &format!("ca_file = \"{}\"", ca.0.display()),
    );
    let first = parse(&text).unwrap().fleet;
    assert_eq!(first, parse(&text).unwrap().fleet);
    let mut bundle = std::fs::read_to_string(tls_fixture("ca.pem")).unwrap();
    bundle += &std::fs::read_to_string(tls_fixture("client.pem")).unwrap();
    std::fs::write(&ca.0, bundle).unwrap();
    assert_ne!(first, parse(&text).unwrap().fleet);
}

#[test]
fn each_fleet_tls_problem_names_key_value_and_line() {
    let not_pem = TempFile::new("not-pem.pem", "hello\n");
    let broken = TempFile::new(
        "broken.pem",
        "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
    );
    let ca = tls_fixture("ca.pem");
    let https = "[\"https://etcd-1:2379\"]";
    let http = "[\"http://etcd-1:2379\"]";
    let shown = |path: &str| format!("{path:?}");
    let with_ca = |extra: &str| tls_fleet(https, &format!("ca_file = \"{ca}\"\n{extra}"));
    let identity = |cert: &str, key: &str| {
        with_ca(&format!(
            "cert_file = \"{}\"\nkey_file = \"{}\"",
            tls_fixture(cert),
            tls_fixture(key)
        ))
    };
    let not_pem_path = not_pem.0.display().to_string();
    let broken_path = broken.0.display().to_string();
    // (text, key, value as displayed, the text on the problem's line, fragment of the message)
    let cases: Vec<(String, &str, String, &str, &str)> = vec![
        (
            tls_fleet(https, ""),
            "fleet.ca_file",
            String::new(),
            "[fleet]",
            "required with https:// endpoints: the PEM file of the CA",
        ),
        (
            tls_fleet(
                "[\"https://etcd-1:2379\",\n  \"http://etcd-2:2379\"]",
                &format!("ca_file = \"{ca}\""),
            ),
            "fleet.endpoints[1]",
            "\"http://etcd-2:2379\"".into(),
            "\"http://etcd-2",
            "is http:// while the first endpoint is https://: all endpoints use one scheme",
        ),
        (
            tls_fleet(http, &format!("ca_file = \"{ca}\"")),
            "fleet.ca_file",
            shown(&ca),
            "ca_file = ",
            "only read with https:// endpoints",
        ),
        (
            tls_fleet(
                http,
                &format!("cert_file = \"{}\"", tls_fixture("client.pem")),
            ),
            "fleet.cert_file",
            shown(&tls_fixture("client.pem")),
            "cert_file = ",
            "only read with https:// endpoints",
        ),
        (
            with_ca(&format!("cert_file = \"{}\"", tls_fixture("client.pem"))),
            "fleet.key_file",
            String::new(),
            "cert_file = ",
            "required with fleet.cert_file",
        ),
        (
            with_ca(&format!("key_file = \"{}\"", tls_fixture("client.key"))),
            "fleet.cert_file",
            String::new(),
            "key_file = ",
            "required with fleet.key_file",
        ),
        (
            tls_fleet(https, "ca_file = \"\""),
            "fleet.ca_file",
            "\"\"".into(),
            "ca_file = ",
            "path is empty",
        ),
        (
            tls_fleet(https, &format!("ca_file = \"{not_pem_path}\"")),
            "fleet.ca_file",
            shown(&not_pem_path),
            "ca_file = ",
            "no certificate in it",
        ),
        (
            tls_fleet(https, &format!("ca_file = \"{broken_path}\"")),
            "fleet.ca_file",
            shown(&broken_path),
            "ca_file = ",
            "not valid PEM",
        ),
        (
            tls_fleet(https, "ca_file = \"/nonexistent/ca.pem\""),
            "fleet.ca_file",
            "\"/nonexistent/ca.pem\"".into(),
            "ca_file = ",
            "cannot read: ",
        ),
        (
            tls_fleet(https, "ca_file = \"/tmp\""),
            "fleet.ca_file",
            "\"/tmp\"".into(),
            "ca_file = ",
            "is not a regular file",
        ),
        (
            identity("client.key", "client.key"),
            "fleet.cert_file",
            shown(&tls_fixture("client.key")),
            "cert_file = ",
            "no certificate in it",
        ),
        (
            identity("client.pem", "client.pem"),
            "fleet.key_file",
            shown(&tls_fixture("client.pem")),
            "key_file = ",
            "no private key in it",
        ),
        (
            identity("client.pem", "client-rsa.key"),
            "fleet.key_file",
            shown(&tls_fixture("client-rsa.key")),
            "key_file = ",
            "is not the key of the certificate in fleet.cert_file",
        ),
    ];
    for (text, key, value, on_line, fragment) in &cases {
        let problems = problems_of(text);
        assert_eq!(
            problems.len(),
            1,
            "{key}: expected one problem, got {problems:#?}"
        );
        let p = &problems[0];
        assert_eq!((p.key.as_str(), &p.value), (*key, value), "{p:#?}");
        assert!(
            p.message.contains(fragment),
            "{key}: {:?} lacks {fragment:?}",
            p.message
        );
        let fleet_at = text.find("[fleet]").unwrap();
        let at = fleet_at + text[fleet_at..].find(on_line).unwrap();
        let line = text[..at].matches('\n').count() + 1;
        assert_eq!(p.line, Some(line), "{key}: {p:#?}\n{text}");
    }
}
