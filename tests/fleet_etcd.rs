//! The fleet layer's etcd client (`warren::fleet::etcd`) against a real etcd 3.4 through its
//! JSON gateway (tests/common/etcd.rs starts one per test on free loopback ports; SKIP lines
//! when /usr/bin/etcd is missing): reads and writes, compare-and-swap under contention (of two
//! concurrent swaps of the same revision exactly one wins, 50 times out of 50), leases, the
//! watch (order, compaction, etcd killed and restarted under it), failover from a dead endpoint,
//! timeouts, etcd auth (enabled through the gateway; the token etcd forgets on restart is
//! renewed), and TLS with client certificates (`--client-cert-auth`; certificates made by
//! openssl, tests/common/certs.rs): calls and the watch over https, a server certificate from
//! another CA and a missing client certificate refused with rustls's reason, and failover from
//! an endpoint whose TLS handshake fails.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::certs::Certs;
use common::etcd::{gateway, Etcd};
use tokio::net::TcpListener;
use warren::fleet::etcd::{
    Compare, EtcdClient, EtcdError, Event, EventKind, TxnOp, TxnOpResponse, Watch,
};
use warren::http_client::Credentials;
use warren::tls::{ClientTls, Identity};

const TIMEOUT: Duration = Duration::from_secs(5);

fn client(endpoints: &[&str]) -> EtcdClient {
    EtcdClient::new(endpoints, TIMEOUT, None, None).unwrap()
}

/// Changes from `watch` until `count` events came (or `within` passed: a panic), with the error
/// reports seen on the way.
async fn collect(watch: &mut Watch, count: usize, within: Duration) -> (Vec<Event>, Vec<String>) {
    let deadline = tokio::time::Instant::now() + within;
    let mut events = Vec::new();
    let mut reports = Vec::new();
    while events.len() < count {
        match tokio::time::timeout_at(deadline, watch.next()).await {
            Ok(Some(Ok(batch))) => events.extend(batch),
            Ok(Some(Err(e))) => reports.push(e.to_string()),
            Ok(None) => panic!("the watch ended; events {events:?}, reports {reports:?}"),
            Err(_) => panic!(
                "{} of {count} events within {within:?}: {events:?}, reports {reports:?}",
                events.len()
            ),
        }
    }
    (events, reports)
}

fn summary(events: &[Event]) -> Vec<(EventKind, String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e.kind,
                String::from_utf8_lossy(&e.key).into_owned(),
                String::from_utf8_lossy(&e.value).into_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn put_get_prefix_and_delete() {
    let Some(etcd) = Etcd::start("kv").await else {
        return;
    };
    let c = client(&[&etcd.endpoint]);
    let first = c.put(b"fleet/a/1", b"one", None).await.unwrap();
    let second = c.put(b"fleet/a/2", b"\x00\xff binary", None).await.unwrap();
    c.put(b"fleet/b/1", b"other", None).await.unwrap();
    assert_eq!(second, first + 1);

    let got = c.get(b"fleet/a/1").await.unwrap();
    assert_eq!(got.kvs.len(), 1);
    let kv = &got.kvs[0];
    assert_eq!((kv.value.as_slice(), kv.mod_revision), (&b"one"[..], first));
    assert_eq!((kv.create_revision, kv.version, kv.lease), (first, 1, 0));
    assert_eq!(
        got.revision,
        first + 2,
        "the header's revision is the store's"
    );

    let under_a = c.get_prefix(b"fleet/a/").await.unwrap();
    let keys: Vec<&[u8]> = under_a.kvs.iter().map(|kv| kv.key.as_slice()).collect();
    assert_eq!(keys, [&b"fleet/a/1"[..], b"fleet/a/2"]);
    assert_eq!(under_a.kvs[1].value, b"\x00\xff binary");
    assert_eq!(c.get_prefix(b"fleet/").await.unwrap().kvs.len(), 3);

    assert!(c.get(b"fleet/none").await.unwrap().kvs.is_empty());
    let deleted = c.delete(b"fleet/a/1").await.unwrap();
    assert_eq!((deleted.deleted, deleted.revision), (1, first + 3));
    assert_eq!(c.delete(b"fleet/a/1").await.unwrap().deleted, 0);
    assert!(c.get(b"fleet/a/1").await.unwrap().kvs.is_empty());
}

/// Of two compare-and-swaps on the same revision sent at once from two clients, exactly one
/// wins, every time; the same for two creates of an absent key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_concurrent_compare_and_swaps_exactly_one_wins() {
    let Some(etcd) = Etcd::start("cas").await else {
        return;
    };
    let (a, b) = (client(&[&etcd.endpoint]), client(&[&etcd.endpoint]));
    let key = b"fleet/draining";
    a.put(key, b"start", None).await.unwrap();
    const TRIES: usize = 50;
    let mut wins = [0usize; 2];
    for round in 0..TRIES {
        let seen = a.get(key).await.unwrap().kvs[0].mod_revision;
        let swap = |c: EtcdClient, value: String| async move {
            c.txn(
                &[Compare::mod_revision_is(key, seen)],
                &[TxnOp::put(key, value.as_bytes(), None)],
                &[TxnOp::get(key)],
            )
            .await
            .unwrap()
        };
        let (ra, rb) = tokio::join!(
            tokio::spawn(swap(a.clone(), format!("a{round}"))),
            tokio::spawn(swap(b.clone(), format!("b{round}")))
        );
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        assert!(
            ra.succeeded != rb.succeeded,
            "round {round}: a {ra:?}, b {rb:?}"
        );
        let (winner, loser, name) = if ra.succeeded {
            (&ra, &rb, "a")
        } else {
            (&rb, &ra, "b")
        };
        wins[usize::from(name == "b")] += 1;
        // The loser's failure branch read what the winner wrote.
        match &loser.responses[..] {
            [TxnOpResponse::Get(now)] => {
                assert_eq!(now.kvs[0].value, format!("{name}{round}").as_bytes());
                assert_eq!(now.kvs[0].mod_revision, winner.revision);
            }
            other => panic!("round {round}: {other:?}"),
        }
    }
    assert_eq!(wins[0] + wins[1], TRIES, "wins {wins:?}");
    eprintln!(
        "compare-and-swap: {TRIES}/{TRIES} rounds with exactly one winner (a {}, b {})",
        wins[0], wins[1]
    );

    for round in 0..10 {
        let key = format!("fleet/instance/{round}");
        let create = |c: EtcdClient, value: &'static str| {
            let key = key.clone();
            async move {
                c.txn(
                    &[Compare::absent(key.as_bytes())],
                    &[TxnOp::put(key.as_bytes(), value.as_bytes(), None)],
                    &[],
                )
                .await
                .unwrap()
                .succeeded
            }
        };
        let (ra, rb) = tokio::join!(create(a.clone(), "a"), create(b.clone(), "b"));
        assert!(ra != rb, "round {round}: both {ra}");
    }
}

#[tokio::test]
async fn a_revoked_lease_takes_its_keys_with_it() {
    let Some(etcd) = Etcd::start("lease").await else {
        return;
    };
    let c = client(&[&etcd.endpoint]);
    let lease = c.lease_grant(Duration::from_secs(30)).await.unwrap();
    assert_eq!(lease.ttl, 30);
    c.put(b"fleet/instances/w1", b"up", Some(lease.id))
        .await
        .unwrap();
    assert_eq!(
        c.get(b"fleet/instances/w1").await.unwrap().kvs[0].lease,
        lease.id
    );
    let ttl = c.lease_keepalive_once(lease.id).await.unwrap();
    assert!((1..=30).contains(&ttl), "{ttl}");
    c.lease_revoke(lease.id).await.unwrap();
    assert!(c.get(b"fleet/instances/w1").await.unwrap().kvs.is_empty());
    match c.lease_keepalive_once(lease.id).await {
        Err(EtcdError::LeaseGone { id, .. }) => assert_eq!(id, lease.id),
        other => panic!("{other:?}"),
    }
    // A put on a lease etcd does not know is refused with etcd's own words.
    let refused = c.put(b"fleet/x", b"", Some(lease.id)).await.unwrap_err();
    assert!(
        refused.to_string().contains("requested lease not found"),
        "{refused}"
    );
}

#[tokio::test]
async fn a_lease_not_kept_alive_expires() {
    let Some(etcd) = Etcd::start("lease-expiry").await else {
        return;
    };
    let c = client(&[&etcd.endpoint]);
    let lease = c.lease_grant(Duration::from_millis(1500)).await.unwrap();
    assert_eq!(lease.ttl, 2, "rounded up to whole seconds");
    c.put(b"fleet/instances/w2", b"up", Some(lease.id))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !c.get(b"fleet/instances/w2").await.unwrap().kvs.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the key outlived its lease"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_watch_sees_puts_and_deletes_in_order_from_its_start_revision() {
    let Some(etcd) = Etcd::start("watch").await else {
        return;
    };
    let c = client(&[&etcd.endpoint]);
    c.put(b"fleet/drains/old", b"before", None).await.unwrap();
    let start = c.put(b"fleet/drains/b1", b"1", None).await.unwrap();
    c.put(b"fleet/other", b"not watched", None).await.unwrap();
    let mut watch = c.watch_prefix(b"fleet/drains/", start);
    c.put(b"fleet/drains/b2", b"2", None).await.unwrap();
    c.delete(b"fleet/drains/b1").await.unwrap();
    // Two changes in one revision come together.
    c.txn(
        &[],
        &[
            TxnOp::put(b"fleet/drains/b3", b"3", None),
            TxnOp::put(b"fleet/drains/b4", b"4", None),
        ],
        &[],
    )
    .await
    .unwrap();
    let (events, reports) = collect(&mut watch, 5, Duration::from_secs(10)).await;
    assert!(reports.is_empty(), "{reports:?}");
    use EventKind::{Delete, Put};
    let s = |k: EventKind, key: &str, v: &str| (k, key.to_string(), v.to_string());
    assert_eq!(
        summary(&events),
        [
            s(Put, "fleet/drains/b1", "1"),
            s(Put, "fleet/drains/b2", "2"),
            s(Delete, "fleet/drains/b1", ""),
            s(Put, "fleet/drains/b3", "3"),
            s(Put, "fleet/drains/b4", "4"),
        ]
    );
    let revisions: Vec<i64> = events.iter().map(|e| e.mod_revision).collect();
    assert_eq!(
        revisions,
        [start, start + 2, start + 3, start + 4, start + 4]
    );

    // From 0: only what changes after the watch is set up (a put first shows it is).
    let mut from_now = c.watch_prefix(b"fleet/drains/", 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    let first = loop {
        n += 1;
        c.put(b"fleet/drains/probe", n.to_string().as_bytes(), None)
            .await
            .unwrap();
        if let Ok(Some(got)) =
            tokio::time::timeout(Duration::from_millis(200), from_now.next()).await
        {
            break got.unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no event from a watch from now"
        );
    };
    assert!(first[0].mod_revision > start + 4, "{first:?}");
}

#[tokio::test]
async fn a_watch_from_a_compacted_revision_says_so_and_ends() {
    let Some(etcd) = Etcd::start("compacted").await else {
        return;
    };
    let c = client(&[&etcd.endpoint]);
    for i in 0..5 {
        c.put(b"fleet/k", i.to_string().as_bytes(), None)
            .await
            .unwrap();
    }
    let now = c.get(b"fleet/k").await.unwrap().revision;
    let (status, body) = gateway(
        &etcd.endpoint,
        "/v3/kv/compaction",
        &format!(r#"{{"revision":"{now}","physical":true}}"#),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let mut watch = c.watch_prefix(b"fleet/", 2);
    match tokio::time::timeout(Duration::from_secs(10), watch.next()).await {
        Ok(Some(Err(EtcdError::Compacted { revision, .. }))) => assert_eq!(revision, now),
        other => panic!("{other:?}"),
    }
    assert!(
        watch.next().await.is_none(),
        "the watch ends after a compaction"
    );
}

/// etcd killed (SIGKILL) under a watch and started again on the same data: every change,
/// written before the kill or after the restart, comes once and in order.
#[tokio::test]
async fn a_watch_survives_etcd_restarting_without_losing_or_repeating_a_change() {
    let Some(mut etcd) = Etcd::start("watch-restart").await else {
        return;
    };
    let c = client(&[&etcd.endpoint]);
    let start = c.put(b"fleet/drains/e1", b"1", None).await.unwrap();
    let mut watch = c.watch_prefix(b"fleet/drains/", start);
    let (events, _) = collect(&mut watch, 1, Duration::from_secs(10)).await;
    assert_eq!(summary(&events)[0].1, "fleet/drains/e1");
    // Written just before the kill: the watch may or may not have handed them over yet.
    c.put(b"fleet/drains/e2", b"2", None).await.unwrap();
    c.delete(b"fleet/drains/e1").await.unwrap();
    etcd.stop();
    let down = c.get(b"fleet/drains/e2").await.unwrap_err();
    assert!(matches!(down, EtcdError::Unreachable { .. }), "{down}");
    assert!(down.to_string().contains(&etcd.endpoint), "{down}");
    // etcd stays down until the watch failed to reconnect at least twice.
    let mut events = Vec::new();
    let mut reports = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while reports
        .iter()
        .filter(|r: &&String| r.contains("cannot connect"))
        .count()
        < 2
    {
        match tokio::time::timeout_at(deadline, watch.next()).await {
            Ok(Some(Ok(batch))) => events.extend(batch),
            Ok(Some(Err(e))) => reports.push(e.to_string()),
            other => panic!("{other:?}; reports {reports:?}"),
        }
    }
    etcd.start_again().await;
    c.put(b"fleet/drains/e3", b"3", None).await.unwrap();
    let (more, more_reports) = collect(&mut watch, 3 - events.len(), Duration::from_secs(20)).await;
    events.extend(more);
    reports.extend(more_reports);
    use EventKind::{Delete, Put};
    let s = |k: EventKind, key: &str, v: &str| (k, key.to_string(), v.to_string());
    assert_eq!(
        summary(&events),
        [
            s(Put, "fleet/drains/e2", "2"),
            s(Delete, "fleet/drains/e1", ""),
            s(Put, "fleet/drains/e3", "3"),
        ],
        "reports on the way: {reports:?}"
    );
    // Nothing else comes: no change handed over twice.
    c.put(b"fleet/drains/e4", b"4", None).await.unwrap();
    let (events, _) = collect(&mut watch, 1, Duration::from_secs(10)).await;
    assert_eq!(summary(&events), [s(Put, "fleet/drains/e4", "4")]);
    eprintln!("watch across a restart: 4 changes after the first, once each; reports: {reports:?}");
}

#[tokio::test]
async fn calls_and_watches_fail_over_from_a_dead_endpoint() {
    let Some(etcd) = Etcd::start("failover").await else {
        return;
    };
    let (_held, dead) = common::held_refusing_port();
    let dead = format!("http://{dead}");
    let c = client(&[&dead, &etcd.endpoint]);
    let revision = c.put(b"fleet/x", b"1", None).await.unwrap();
    assert_eq!(c.get(b"fleet/x").await.unwrap().kvs[0].value, b"1");
    let mut watch = c.watch_prefix(b"fleet/", revision);
    let (events, reports) = collect(&mut watch, 1, Duration::from_secs(10)).await;
    assert_eq!(events[0].value, b"1");
    assert!(reports.is_empty(), "{reports:?}");

    // Only dead endpoints: the error names each one and the call.
    let (_held2, dead2) = common::held_refusing_port();
    let dead2 = format!("http://{dead2}");
    let only_dead = client(&[&dead]);
    let e = only_dead.get(b"fleet/x").await.unwrap_err();
    assert!(matches!(e, EtcdError::Unreachable { .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains(&dead) && text.contains("/v3/kv/range"),
        "{text}"
    );
    let e = client(&[&dead, &dead2])
        .put(b"k", b"v", None)
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, EtcdError::AllFailed { .. }), "{e:?}");
    assert!(text.contains(&dead) && text.contains(&dead2), "{text}");
}

/// A server that accepts and never answers: a write times out and is not sent elsewhere (it
/// may have been applied); a read goes on to the next endpoint.
#[tokio::test]
async fn a_silent_endpoint_times_out_and_only_reads_move_on() {
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent = format!("http://{}", silent.local_addr().unwrap());
    let silent2 = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent2 = format!("http://{}", silent2.local_addr().unwrap());
    let short = Duration::from_millis(300);
    let c = EtcdClient::new(&[&silent, &silent2], short, None, None).unwrap();
    let started = tokio::time::Instant::now();
    match c.put(b"k", b"v", None).await {
        Err(EtcdError::Timeout {
            endpoint, timeout, ..
        }) => {
            assert_eq!((endpoint, timeout), (silent.clone(), short));
        }
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < short * 2, "one endpoint only");
    match c.get(b"k").await {
        Err(EtcdError::AllFailed { errors, .. }) => assert_eq!(errors.len(), 2, "{errors:?}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn auth_tokens_are_sent_and_renewed_when_etcd_forgets_them() {
    let Some(mut etcd) = Etcd::start("auth").await else {
        return;
    };
    let e = etcd.endpoint.clone();
    for (path, body) in [
        (
            "/v3/auth/user/add",
            r#"{"name":"root","password":"rootpw"}"#,
        ),
        ("/v3/auth/user/grant", r#"{"user":"root","role":"root"}"#),
        ("/v3/auth/enable", "{}"),
    ] {
        let (status, answer) = gateway(&e, path, body, None).await;
        assert_eq!(status, 200, "{path}: {answer}");
    }
    let root = Credentials {
        user: "root".into(),
        password: "rootpw".into(),
    };
    let c = EtcdClient::new(&[&e], TIMEOUT, Some(root.clone()), None).unwrap();
    let revision = c.put(b"fleet/a", b"1", None).await.unwrap();
    assert_eq!(c.get(b"fleet/a").await.unwrap().kvs[0].value, b"1");
    // The watch on a client of its own, whose token nothing else renews.
    let w = EtcdClient::new(&[&e], TIMEOUT, Some(root.clone()), None).unwrap();
    let mut watch = w.watch_prefix(b"fleet/", revision);
    assert_eq!(collect(&mut watch, 1, TIMEOUT).await.0[0].value, b"1");

    // Without credentials, or with a wrong password: refused, with etcd's reason.
    let e1 = client(&[&e]).get(b"fleet/a").await.unwrap_err();
    assert!(matches!(e1, EtcdError::Auth { .. }), "{e1:?}");
    let wrong = Credentials {
        password: "nope".into(),
        ..root.clone()
    };
    let e2 = EtcdClient::new(&[&e], TIMEOUT, Some(wrong), None)
        .unwrap()
        .get(b"fleet/a")
        .await
        .unwrap_err();
    assert!(
        matches!(&e2, EtcdError::Auth { message, .. } if message.contains("invalid user ID or password")),
        "{e2:?}"
    );
    let mut refused_watch = client(&[&e]).watch_prefix(b"fleet/", revision);
    match tokio::time::timeout(TIMEOUT, refused_watch.next()).await {
        Ok(Some(Err(EtcdError::Auth { .. }))) => {}
        other => panic!("{other:?}"),
    }

    // Every token forgotten: auth disabled (which drops etcd's tokens) and enabled again. A
    // restart alone does not do it: etcd replays the WAL, authentications included, so a
    // recent token survives it.
    let (_, answer) = gateway(
        &e,
        "/v3/auth/authenticate",
        r#"{"name":"root","password":"rootpw"}"#,
        None,
    )
    .await;
    let old: serde_json::Value = serde_json::from_str(&answer).unwrap();
    let old = old["token"].as_str().unwrap().to_string();
    let (status, answer) = gateway(&e, "/v3/auth/disable", "{}", Some(&old)).await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = gateway(&e, "/v3/auth/enable", "{}", None).await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = gateway(&e, "/v3/kv/range", r#"{"key":"Zg=="}"#, Some(&old)).await;
    assert!(
        status == 401 && answer.contains("invalid auth token"),
        "{status} {answer}"
    );
    // A call with the old token is refused, and the client authenticates again by itself.
    c.put(b"fleet/b", b"2", None).await.unwrap();
    // The watch meets its old token when it reconnects (etcd restarted under it).
    etcd.stop();
    etcd.start_again().await;
    c.put(b"fleet/c", b"3", None).await.unwrap();
    let (events, reports) = collect(&mut watch, 2, Duration::from_secs(20)).await;
    assert_eq!(summary(&events)[1].2, "3", "reports: {reports:?}");
    assert!(
        reports.iter().any(|r| r.contains("invalid auth token")),
        "the watch met its old token: {reports:?}"
    );
}

/// The TLS configuration of a client trusting `ca`, presenting `certs`'s client certificate
/// when `identity`.
fn tls(certs: &Certs, ca: &Path, identity: bool) -> Arc<rustls::ClientConfig> {
    let identity = identity.then(|| Identity {
        cert_file: certs.client_cert.clone(),
        key_file: certs.client_key.clone(),
    });
    ClientTls::load(ca, identity.as_ref()).unwrap().config()
}

fn tls_client(endpoints: &[&str], tls: Arc<rustls::ClientConfig>) -> EtcdClient {
    EtcdClient::new(endpoints, TIMEOUT, None, Some(tls)).unwrap()
}

#[tokio::test]
async fn calls_and_watches_work_over_tls_with_a_client_certificate() {
    let Some(certs) = Certs::generate("etcd-tls-calls") else {
        return;
    };
    let Some(etcd) = Etcd::start_tls("tls-calls", &certs).await else {
        return;
    };
    assert!(etcd.endpoint.starts_with("https://127.0.0.1:"));
    let c = tls_client(&[&etcd.endpoint], tls(&certs, &certs.ca, true));
    let revision = c.put(b"tls/a", b"1", None).await.unwrap();
    assert_eq!(c.get(b"tls/a").await.unwrap().kvs[0].value, b"1");
    let swapped = c
        .txn(
            &[Compare::mod_revision_is(b"tls/a", revision)],
            &[TxnOp::put(b"tls/a", b"2", None)],
            &[],
        )
        .await
        .unwrap();
    assert!(swapped.succeeded);
    let mut watch = c.watch_prefix(b"tls/", revision);
    c.delete(b"tls/a").await.unwrap();
    let (events, reports) = collect(&mut watch, 3, TIMEOUT).await;
    assert_eq!(
        summary(&events),
        [
            (EventKind::Put, "tls/a".into(), "1".into()),
            (EventKind::Put, "tls/a".into(), "2".into()),
            (EventKind::Delete, "tls/a".into(), String::new()),
        ]
    );
    assert!(reports.is_empty(), "{reports:?}");
    // The server certificate names localhost too.
    let port = etcd.endpoint.rsplit(':').next().unwrap();
    let by_name = format!("https://localhost:{port}");
    let c = tls_client(&[&by_name], tls(&certs, &certs.ca, true));
    assert_eq!(c.get(b"tls/a").await.unwrap().kvs.len(), 0);
}

#[tokio::test]
async fn a_certificate_from_another_ca_or_no_client_certificate_is_refused_with_the_reason() {
    let Some(certs) = Certs::generate("etcd-tls-refused") else {
        return;
    };
    let Some(etcd) = Etcd::start_tls("tls-refused", &certs).await else {
        return;
    };
    let e = &etcd.endpoint;
    // etcd's certificate is not signed by the CA this client trusts.
    let wrong_ca = tls_client(&[e], tls(&certs, &certs.other_ca, true));
    let error = wrong_ca.put(b"k", b"v", None).await.unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, EtcdError::Unreachable { .. }), "{error:?}");
    assert!(
        text.contains(e.as_str()) && text.contains("invalid peer certificate: UnknownIssuer"),
        "{text}"
    );
    let mut watch = wrong_ca.watch_prefix(b"k", 0);
    match tokio::time::timeout(TIMEOUT, watch.next()).await {
        Ok(Some(Err(error))) => assert!(
            error
                .to_string()
                .contains("invalid peer certificate: UnknownIssuer"),
            "{error}"
        ),
        other => panic!("{other:?}"),
    }
    // No client certificate: etcd ends the handshake with an alert, the request unread.
    let anonymous = tls_client(&[e], tls(&certs, &certs.ca, false));
    for _ in 0..5 {
        let error = anonymous.put(b"k", b"v", None).await.unwrap_err();
        let text = error.to_string();
        assert!(matches!(error, EtcdError::Unreachable { .. }), "{error:?}");
        assert!(
            text.contains("TLS handshake with") && text.contains("received fatal alert"),
            "{text}"
        );
    }
    eprintln!(
        "no client certificate: {}",
        anonymous.get(b"k").await.unwrap_err()
    );
    let mut watch = anonymous.watch_prefix(b"k", 0);
    match tokio::time::timeout(TIMEOUT, watch.next()).await {
        Ok(Some(Err(error))) => assert!(
            matches!(error, EtcdError::Unreachable { .. })
                && error.to_string().contains("received fatal alert"),
            "{error}"
        ),
        other => panic!("{other:?}"),
    }
    // Nothing was written.
    let (_, answer) = gateway(
        &etcd.plain_endpoint,
        "/v3/kv/range",
        r#"{"key":"aw=="}"#,
        None,
    )
    .await;
    assert!(!answer.contains("\"kvs\""), "{answer}");
}

/// A write (sent again elsewhere only when it surely was not sent) moves on from an endpoint
/// that refuses the connection and from one whose TLS handshake fails (etcd's plain port).
#[tokio::test]
async fn a_failed_tls_handshake_fails_over_like_a_refused_connection() {
    let Some(certs) = Certs::generate("etcd-tls-failover") else {
        return;
    };
    let Some(etcd) = Etcd::start_tls("tls-failover", &certs).await else {
        return;
    };
    let (_held, dead) = common::held_refusing_port();
    let dead = format!("https://{dead}");
    let not_tls = etcd.plain_endpoint.replace("http://", "https://");
    let c = tls_client(
        &[&dead, &not_tls, &etcd.endpoint],
        tls(&certs, &certs.ca, true),
    );
    let revision = c.put(b"fleet/x", b"1", None).await.unwrap();
    assert_eq!(c.get(b"fleet/x").await.unwrap().kvs[0].value, b"1");
    let c = tls_client(&[&not_tls, &etcd.endpoint], tls(&certs, &certs.ca, true));
    let mut watch = c.watch_prefix(b"fleet/", revision);
    let (events, _) = collect(&mut watch, 1, Duration::from_secs(10)).await;
    assert_eq!(events[0].value, b"1");
    let only_not_tls = tls_client(&[&not_tls], tls(&certs, &certs.ca, true));
    let error = only_not_tls.txn(&[], &[], &[]).await.unwrap_err();
    assert!(matches!(error, EtcdError::Unreachable { .. }), "{error:?}");
    assert!(error.to_string().contains("TLS handshake with"), "{error}");
    eprintln!("not TLS: {error}");
}
