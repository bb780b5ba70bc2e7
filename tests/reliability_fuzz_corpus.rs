//! Reliability, bad input: every seed of the cargo-fuzz corpora (fuzz/corpus/<target>/) replayed
//! through the same checks the fuzz targets run (tests/common/fuzz_checks.rs), plus a bounded,
//! deterministic mutation pass over the seeds (bit flips, truncations, insertions, splices), so
//! stable toolchains exercise the parsers too. Each test states its pass criterion as a number;
//! RELIABILITY.md lists them.

mod common;
#[path = "common/fuzz_checks.rs"]
mod fuzz_checks;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use warren::config::Balance;

/// The seed files of one fuzz target, sorted by name.
fn seeds(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

/// A mutant of `seed`: one of a bit flip, a truncation, a byte inserted or removed, an
/// "interesting" byte written, or a splice with `other`.
fn mutate(rng: &mut XorShift, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = seed.to_vec();
    let pos = |rng: &mut XorShift, len: usize| if len == 0 { 0 } else { rng.below(len) };
    for _ in 0..=rng.below(3) {
        match rng.below(6) {
            0 if !out.is_empty() => {
                let i = pos(rng, out.len());
                out[i] ^= 1 << rng.below(8);
            }
            1 => out.truncate(pos(rng, out.len() + 1)),
            2 => {
                let i = pos(rng, out.len() + 1);
                out.insert(i, rng.next_u64() as u8);
            }
            3 if !out.is_empty() => {
                let i = pos(rng, out.len());
                out.remove(i);
            }
            4 if !out.is_empty() => {
                const INTERESTING: [u8; 10] =
                    [0, 0xff, 0x7f, 0x80, b'\n', b'\r', b'"', b'[', b'=', b' '];
                let i = pos(rng, out.len());
                out[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            _ => {
                let cut = pos(rng, out.len() + 1);
                let from = pos(rng, other.len() + 1);
                out.truncate(cut);
                out.extend_from_slice(&other[from..]);
            }
        }
    }
    out
}

/// Run `check` on every seed and on `per_seed` mutants of each; panics listing the failures.
fn replay(
    target: &str,
    per_seed: usize,
    mut check: impl FnMut(&[u8]) -> Result<(), String>,
) -> usize {
    let corpus = seeds(target);
    assert!(
        corpus.len() >= 25,
        "{target}: {} seeds, expected a few dozen",
        corpus.len()
    );
    let mut failures = Vec::new();
    for (path, bytes) in &corpus {
        if let Err(why) = check(bytes) {
            failures.push(format!("seed {}: {why}", path.display()));
        }
    }
    // A fixed seed per target: a failing mutant is reproduced by running the test again.
    let mut rng = XorShift(0x5eed_0000 + target.len() as u64);
    let mut runs = corpus.len();
    for (i, (path, bytes)) in corpus.iter().enumerate() {
        for n in 0..per_seed {
            let other = &corpus[rng.below(corpus.len())].1;
            let mutant = mutate(&mut rng, bytes, other);
            if let Err(why) = check(&mutant) {
                failures.push(format!(
                    "mutant {n} of {} (seed #{i}): {why}; bytes {mutant:?}",
                    path.display()
                ));
            }
            runs += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "{target}: {} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    runs
}

/// Criterion: 0 panics and 0 broken properties over every config seed and 1,000 mutants of each:
/// UTF-8 inputs parsed and validated, non-UTF-8 ones loaded from a file and refused as not UTF-8.
#[test]
fn config_corpus_and_mutants_parse_or_fail_cleanly() {
    let started = Instant::now();
    let mut not_utf8 = 0;
    let runs = replay("config", 1_000, |data| {
        if std::str::from_utf8(data).is_err() {
            not_utf8 += 1;
        }
        fuzz_checks::config(data)
    });
    println!(
        "config: {runs} inputs in {:?}: {} UTF-8 parsed and validated, {not_utf8} non-UTF-8 \
         loaded from a file and refused",
        started.elapsed(),
        runs - not_utf8
    );
    assert!(not_utf8 > 0, "the mutants include non-UTF-8 inputs");
}

/// Criterion: 0 panics and 0 broken properties over every PROXY header seed and 20,000 mutants
/// of each.
#[test]
fn proxy_header_corpus_and_mutants_parse_or_fail_cleanly() {
    let started = Instant::now();
    let runs = replay("proxy_header", 20_000, fuzz_checks::proxy_header);
    println!("proxy_header: {runs} inputs in {:?}", started.elapsed());
}

/// Criterion: every ClientHello seed (real hellos with and without a server name, cut into
/// records, plain protocols, garbage) and 5,000 mutants of each: 0 panics, an answer before
/// `MAX_PEEK` bytes, and every server name lowercase and present in the bytes.
#[test]
fn client_hello_corpus_and_mutants_parse_or_fail_cleanly() {
    let started = Instant::now();
    let runs = replay("client_hello", 5_000, fuzz_checks::client_hello);
    println!("client_hello: {runs} inputs in {:?}", started.elapsed());
}

/// Criterion: every admin request seed and 50 mutants of each, sent raw to a live admin API
/// with a token, get a well-formed HTTP/1.x answer or a clean close within 10 s (0 failures);
/// afterwards `/healthz` answers 200 and the data plane still echoes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_request_corpus_and_mutants_get_an_answer_or_a_clean_close() {
    let dir = TempDir::new("fuzz-admin");
    std::fs::write(dir.0.join("token"), "fuzz-token").unwrap();
    let b = spawn_backend(echo).await;
    let mut cfg = config(Balance::RoundRobin, vec![backend("rabbit-a", b.addr)]);
    cfg.pools[0].name = "rabbitmq".into();
    cfg.listeners[0].pool = "rabbitmq".into();
    let cfg = with_admin_api(cfg, Some(dir.0.join("token")));
    let warren = Warren::start(cfg, quick());
    let admin = warren.admin.unwrap();
    let started = Instant::now();
    let runs = tokio::task::spawn_blocking(move || {
        replay("admin_request", 50, |bytes| {
            fuzz_checks::admin_request(admin, bytes)
        })
    })
    .await
    .unwrap();
    println!("admin_request: {runs} requests in {:?}", started.elapsed());
    assert_eq!(http(admin, "GET", "/healthz", None, b"").await.0, 200);
    // Seeds drain rabbit-a (with force) and guess tokens; once the guess budget refills, undo
    // the drain with the right token.
    let undrain = "/v1/pools/rabbitmq/backends/rabbit-a/undrain";
    let deadline = Instant::now() + Duration::from_secs(15);
    while http(admin, "POST", undrain, Some("fuzz-token"), b"")
        .await
        .0
        != 200
    {
        assert!(
            Instant::now() < deadline,
            "undrain with the token never answered 200"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        connect_echo(warren.addr, 5).await.is_some(),
        "the data plane still serves"
    );
    warren.stop().await;
}
