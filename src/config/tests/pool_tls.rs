//! `[pool.NAME.tls]`: its files read at load, each backend's server name, and what needs it
//! (`https://` probe and management URLs, `amqps://` login URIs) refused without it.

use super::*;

/// The certificates of src/config/tests/tls/ (see `fleet::tls_fixture`).
fn fixture(name: &str) -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/src/config/tests/tls/").to_string() + name
}

/// BASE with `[pool.rabbitmq.tls]` made of `lines` (none: no section) and `tail` after it.
fn with_tls(lines: Option<&str>, tail: &str) -> String {
    match lines {
        Some(lines) => appended(&format!("[pool.rabbitmq.tls]\n{lines}\n{tail}")),
        None => appended(tail),
    }
}

#[test]
fn each_backend_gets_the_pools_tls_and_its_own_server_name() {
    let ca = fixture("ca.pem");
    let config = parse(&with_tls(Some(&format!("ca = \"{ca}\"")), "")).unwrap();
    let names: Vec<String> = config.pools[0]
        .backends
        .iter()
        .map(|b| b.tls.as_ref().unwrap().server_name.to_str().into_owned())
        .collect();
    assert_eq!(names, ["10.0.0.1", "10.0.0.2"]);
    let tls = config.pools[0].backends[0].tls.as_ref().unwrap();
    assert!(!tls.client.has_identity());

    let lines = format!(
        "ca = \"{ca}\"\nserver_name = \"rabbit.internal\"\ncert = \"{}\"\nkey = \"{}\"",
        fixture("client.pem"),
        fixture("client.key")
    );
    let config = parse(&with_tls(Some(&lines), "")).unwrap();
    for backend in &config.pools[0].backends {
        let tls = backend.tls.as_ref().unwrap();
        assert_eq!(tls.server_name.to_str(), "rabbit.internal");
        assert!(tls.client.has_identity());
    }
    // Without the section: plain TCP.
    assert!(parse(BASE).unwrap().pools[0].backends[0].tls.is_none());
}

/// `encrypt`: "terminated" by default (a plain listener's bytes pass as they are), "all" for
/// every connection; a terminated connection is always encrypted.
#[test]
fn encrypt_says_which_client_connections_go_over_tls() {
    let ca = fixture("ca.pem");
    let encrypt_of = |extra: &str| {
        let text = with_tls(Some(&format!("ca = \"{ca}\"\n{extra}")), "");
        let config = parse(&text).unwrap();
        let tls = config.pools[0].backends[0].tls.clone().unwrap();
        (tls.encrypt, tls.encrypts(false), tls.encrypts(true))
    };
    assert_eq!(encrypt_of(""), (Encrypt::Terminated, false, true));
    assert_eq!(
        encrypt_of("encrypt = \"terminated\""),
        (Encrypt::Terminated, false, true)
    );
    assert_eq!(encrypt_of("encrypt = \"all\""), (Encrypt::All, true, true));
}

#[test]
fn https_and_amqps_are_taken_with_the_pools_tls() {
    let ca = format!("ca = \"{}\"", fixture("ca.pem"));
    let http = "[pool.rabbitmq.health]\nkind = \"http\"\nurl = \"https://{host}:15671/api/health/checks/alarms\"";
    let config = parse(&with_tls(Some(&ca), http)).unwrap();
    match &config.pools[0].health.as_ref().unwrap().probe {
        Probe::Http { url, .. } => assert!(url.is_https()),
        other => panic!("{other:?}"),
    }
    let login =
        "[pool.rabbitmq.health]\nkind = \"amqp_login\"\nuri = \"amqps://u:p@{host}:5671/%2f\"";
    parse(&with_tls(Some(&ca), login)).unwrap();
    let management = "[pool.rabbitmq.management]\nurl = \"https://{host}:15671\"";
    let config = parse(&with_tls(Some(&ca), management)).unwrap();
    let endpoint = config.pools[0].backends[1].management.as_ref().unwrap();
    assert_eq!(endpoint.url.to_string(), "https://10.0.0.2:15671/");
}

#[test]
fn each_pool_tls_problem_names_key_value_and_line() {
    let dir = std::env::temp_dir().join(format!("warren-config-pool-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let not_pem = dir.join("not-pem.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let not_pem = not_pem.display().to_string();
    let ca = fixture("ca.pem");
    let with_ca = |extra: &str| with_tls(Some(&format!("ca = \"{ca}\"\n{extra}")), "");
    let identity = |cert: &str, key: &str| {
        with_ca(&format!(
            "cert = \"{}\"\nkey = \"{}\"",
            fixture(cert),
            fixture(key)
        ))
    };
    let shown = |path: &str| format!("{path:?}");
    let needs = "needs [pool.rabbitmq.tls] with the PEM file of the CA";
    // (text, key, value as displayed, the text on the problem's line, fragment of the message)
    let cases: Vec<(String, &str, String, &str, &str)> = vec![
        (
            with_tls(Some("server_name = \"rabbit.internal\""), ""),
            "pool.rabbitmq.tls.ca",
            String::new(),
            "[pool.rabbitmq.tls]",
            "required: the PEM file of the CA that signs the nodes' certificates",
        ),
        (
            with_tls(Some("ca = \"/nonexistent/ca.pem\""), ""),
            "pool.rabbitmq.tls.ca",
            "\"/nonexistent/ca.pem\"".into(),
            "ca = ",
            "cannot read: ",
        ),
        (
            with_tls(Some(&format!("ca = \"{not_pem}\"")), ""),
            "pool.rabbitmq.tls.ca",
            shown(&not_pem),
            "ca = ",
            "no certificate in it",
        ),
        (
            with_ca("server_name = \"not a name!\""),
            "pool.rabbitmq.tls.server_name",
            "\"not a name!\"".into(),
            "server_name = ",
            "is not a DNS name or an IP address",
        ),
        (
            with_ca("encrypt = \"always\""),
            "pool.rabbitmq.tls.encrypt",
            "\"always\"".into(),
            "encrypt = ",
            "expected one of terminated, all",
        ),
        (
            with_ca(&format!("cert = \"{}\"", fixture("client.pem"))),
            "pool.rabbitmq.tls.key",
            String::new(),
            "cert = ",
            "required with pool.rabbitmq.tls.cert",
        ),
        (
            with_ca(&format!("key = \"{}\"", fixture("client.key"))),
            "pool.rabbitmq.tls.cert",
            String::new(),
            "key = ",
            "required with pool.rabbitmq.tls.key",
        ),
        (
            identity("client.pem", "client.pem"),
            "pool.rabbitmq.tls.key",
            shown(&fixture("client.pem")),
            "key = ",
            "no private key in it",
        ),
        (
            identity("client.pem", "client-rsa.key"),
            "pool.rabbitmq.tls.key",
            shown(&fixture("client-rsa.key")),
            "key = ",
            "is not the key of the certificate in pool.rabbitmq.tls.cert",
        ),
        (
            appended("[pool.rabbitmq.health]\nkind = \"http\"\nurl = \"https://u:secret@{host}:15671/api/health/checks/alarms\""),
            "pool.rabbitmq.health.url",
            "\"https://***@{host}:15671/api/health/checks/alarms\"".into(),
            "url = ",
            needs,
        ),
        (
            appended("[pool.rabbitmq.health]\nkind = \"amqp_login\"\nuri = \"amqps://u:secret@{host}/%2f\""),
            "pool.rabbitmq.health.uri",
            MASKED.into(),
            "uri = ",
            needs,
        ),
        (
            appended("[pool.rabbitmq.management]\nurl = \"https://{host}:15671\""),
            "pool.rabbitmq.management.url",
            "\"https://{host}:15671\"".into(),
            "url = ",
            needs,
        ),
        (
            replaced(
                "addr = \"10.0.0.2:5672\"",
                "addr = \"10.0.0.2:5672\"\nmanagement = \"https://10.0.0.2:15671\"",
            ),
            "pool.rabbitmq.backend[1].management",
            "\"https://10.0.0.2:15671\"".into(),
            "management = ",
            needs,
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
        assert!(!p.message.contains("secret"), "{p:#?}");
        let at = text.rfind(on_line).unwrap();
        let line = text[..at].matches('\n').count() + 1;
        assert_eq!(p.line, Some(line), "{key}: {p:#?}\n{text}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
