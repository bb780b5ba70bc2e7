//! `[listener.tls]`: defaults, the files read at load, and each problem with its key, value and
//! line (certificates from src/config/tests/tls/, see `fleet::tls_fixture`).

use super::*;

fn fixture(name: &str) -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/src/config/tests/tls/").to_string() + name
}

/// BASE with `[listener.tls]` made of `lines` on its listener.
fn with_tls(lines: &str) -> String {
    replaced(
        "pool = \"rabbitmq\"\n",
        &format!("pool = \"rabbitmq\"\n[listener.tls]\n{lines}\n"),
    )
}

/// `cert` and `key` lines from fixtures.
fn pair(cert: &str, key: &str) -> String {
    format!("cert = \"{}\"\nkey = \"{}\"\n", fixture(cert), fixture(key))
}

#[test]
fn a_listener_without_the_section_is_plain() {
    let config = parse(BASE).unwrap();
    assert_eq!(config.listeners[0].tls, None);
}

#[test]
fn defaults_fill_every_omitted_tls_key() {
    let config = parse(&with_tls(&pair("client.pem", "client.key"))).unwrap();
    let tls = config.listeners[0].tls.as_ref().unwrap();
    assert_eq!(tls.handshake_timeout, Duration::from_secs(10));
    assert!(!tls.server.mutual());
    let debug = format!("{tls:?}");
    assert!(
        debug.contains("Tls12") && !debug.contains("PRIVATE KEY"),
        "{debug}"
    );
    // Every key set, RSA in PKCS#1, mutual TLS.
    let all = format!(
        "{}client_ca = \"{}\"\nmin_version = \"1.3\"\nciphers = [\"TLS13_AES_256_GCM_SHA384\"]\n\
         handshake_timeout = \"3s\"",
        pair("client-rsa.pem", "client-rsa.key"),
        fixture("ca.pem")
    );
    let config = parse(&with_tls(&all)).unwrap();
    let tls = config.listeners[0].tls.as_ref().unwrap();
    assert_eq!(tls.handshake_timeout, Duration::from_secs(3));
    assert!(tls.server.mutual());
}

/// Each broken `[listener.tls]` is one problem: its key, its value, the start of its message.
#[test]
fn each_tls_problem_names_its_key_and_file() {
    let cert = fixture("client.pem");
    let missing = "/nonexistent/warren/amqps.pem";
    let cases: Vec<(&str, String, &str, String, &str)> = vec![
        (
            "no cert",
            format!("key = \"{}\"", fixture("client.key")),
            "listener[0].tls.cert",
            String::new(),
            "required in [listener.tls]",
        ),
        (
            "a missing file",
            format!("cert = \"{missing}\"\nkey = \"{}\"", fixture("client.key")),
            "listener[0].tls.cert",
            format!("\"{missing}\""),
            "cannot read: ",
        ),
        (
            "a key that is not the certificate's",
            pair("client.pem", "client-rsa.key"),
            "listener[0].tls.key",
            format!("\"{}\"", fixture("client-rsa.key")),
            "is not the key of the certificate in listener[0].tls.cert",
        ),
        (
            "a key file given as the certificate",
            pair("client.key", "client.key"),
            "listener[0].tls.cert",
            format!("\"{}\"", fixture("client.key")),
            "no certificate in it",
        ),
        (
            "a certificate given as the key",
            pair("client.pem", "client.pem"),
            "listener[0].tls.key",
            format!("\"{cert}\""),
            "no private key in it",
        ),
        (
            "a client_ca that holds no certificate",
            format!(
                "{}client_ca = \"{}\"",
                pair("client.pem", "client.key"),
                fixture("client.key")
            ),
            "listener[0].tls.client_ca",
            format!("\"{}\"", fixture("client.key")),
            "no certificate in it",
        ),
        (
            "an unknown version",
            format!("{}min_version = \"1.1\"", pair("client.pem", "client.key")),
            "listener[0].tls.min_version",
            "\"1.1\"".to_string(),
            "expected \"1.2\" or \"1.3\"",
        ),
        (
            "an unknown cipher suite",
            format!(
                "{}ciphers = [\"TLS13_AES_128_GCM_SHA256\", \"RC4-MD5\"]",
                pair("client.pem", "client.key")
            ),
            "listener[0].tls.ciphers[1]",
            "\"RC4-MD5\"".to_string(),
            "unknown cipher suite; valid ones: TLS13_",
        ),
        (
            "only TLS 1.2 suites at 1.3",
            format!(
                "{}min_version = \"1.3\"\nciphers = [\"TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256\"]",
                pair("client.pem", "client.key")
            ),
            "listener[0].tls.ciphers",
            String::new(),
            "none of these suites is TLS 1.3",
        ),
        (
            "no cipher suite",
            format!("{}ciphers = []", pair("client.pem", "client.key")),
            "listener[0].tls.ciphers",
            String::new(),
            "an empty list would refuse every handshake",
        ),
        (
            "a zero handshake timeout",
            format!(
                "{}handshake_timeout = \"0s\"",
                pair("client.pem", "client.key")
            ),
            "listener[0].tls.handshake_timeout",
            "\"0s\"".to_string(),
            "must be longer than 0",
        ),
    ];
    for (what, lines, key, value, message) in cases {
        let problems = problems_of(&with_tls(&lines));
        assert_eq!(problems.len(), 1, "{what}: {problems:?}");
        let p = &problems[0];
        assert_eq!(
            (p.key.as_str(), p.value.as_str()),
            (key, value.as_str()),
            "{what}"
        );
        assert!(p.message.starts_with(message), "{what}: {}", p.message);
        assert!(p.line.is_some(), "{what}: no line");
    }
}

#[test]
fn an_unknown_tls_key_is_refused() {
    let text = with_tls(&format!(
        "{}verify = true",
        pair("client.pem", "client.key")
    ));
    let error = parse(&text).unwrap_err().to_string();
    assert!(error.contains("unknown field `verify`"), "{error}");
}

/// A reload compares listeners: a certificate file whose content changed is a change.
#[test]
fn a_changed_certificate_changes_the_listener() {
    let dir = std::env::temp_dir().join(format!("warren-config-ltls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("c.pem"), dir.join("c.key"));
    std::fs::copy(fixture("client.pem"), &cert).unwrap();
    std::fs::copy(fixture("client.key"), &key).unwrap();
    let text = with_tls(&format!(
        "cert = \"{}\"\nkey = \"{}\"",
        cert.display(),
        key.display()
    ));
    let (a, b) = (parse(&text).unwrap(), parse(&text).unwrap());
    assert_eq!(a.listeners[0], b.listeners[0]);
    std::fs::copy(fixture("client-rsa.pem"), &cert).unwrap();
    std::fs::copy(fixture("client-rsa.key"), &key).unwrap();
    let c = parse(&text).unwrap();
    assert_ne!(a.listeners[0], c.listeners[0]);
    let _ = std::fs::remove_dir_all(&dir);
}
