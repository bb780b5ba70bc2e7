//! Reliability, bad input at start: `warren run` (not only `warren check`, see tests/cli.rs) on
//! a malformed, a 10 MB and a non-UTF-8 config file. Each test states its pass criterion as a
//! number; RELIABILITY.md lists them.
#![cfg(target_os = "linux")]

mod common;

use std::time::Duration;

use common::*;

/// Criterion: for each of 4 bad files `warren run` exits 1 within 20 s with exactly 1 line on
/// stderr (under 1 KiB, naming the file, no panic) and, checked while it is still alive and
/// writing that line, listens on nothing and leaves the admin port (and every other configured
/// port) unbound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_a_bad_config_file_gives_one_clear_error_and_binds_nothing() {
    let dir = TempDir::new("input-bad");
    let (admin_port, port) = (free_port(), free_port());
    let valid = process_config(
        admin_port,
        None,
        port,
        &["127.0.0.1:1".parse().unwrap()],
        "",
    );
    let mut rng = XorShift(0x00ba_d1f0);
    let ten_mb = 10 * 1024 * 1024;
    let files: [(&str, Vec<u8>); 4] = [
        // Valid up to the last backend, whose table is left open.
        (
            "malformed.toml",
            format!("{valid}[[pool.rabbitmq.backend]\nname = \"b9\n").into_bytes(),
        ),
        ("garbage-10mb.toml", rng.bytes(ten_mb)),
        ("text-10mb.toml", {
            let mut text = valid.clone().into_bytes();
            text.extend((0..ten_mb).map(|i| if i % 80 == 79 { b'\n' } else { b'x' }));
            text
        }),
        ("latin1.toml", {
            // "b0" becomes "b\xe9": Latin-1, not UTF-8.
            let mut text = valid.clone().into_bytes();
            let at = valid.find("\"b0\"").unwrap() + 2;
            text[at] = 0xe9;
            text
        }),
    ];
    for (name, bytes) in files {
        let path = dir.0.join(name);
        std::fs::write(&path, &bytes).unwrap();
        // warren's stderr is a full pipe: it stays alive, blocked writing its error, while the
        // test looks at the sockets it holds (none may listen) and at who listens on the ports.
        let mut warren = BlockedOnStderr::spawn(&["run", "--config", path.to_str().unwrap()]);
        tokio::task::block_in_place(|| warren.wait_blocked(Duration::from_secs(20)));
        let held = listening_ports_of(warren.child.id());
        assert!(
            held.is_empty(),
            "{name}: warren listens on {held:?} while failing"
        );
        for p in [admin_port, port] {
            std::net::TcpListener::bind(("127.0.0.1", p))
                .unwrap_or_else(|e| panic!("{name}: port {p} bound while warren fails: {e}"));
        }
        let (status, log) = warren.finish(Duration::from_secs(20));
        println!(
            "{name} ({} bytes): {status}: {}",
            bytes.len(),
            log.trim_end()
        );
        assert_eq!(status.code(), Some(1), "{name}: {log}");
        assert_eq!(log.lines().count(), 1, "{name}: one line: {log:.400}");
        assert!(log.len() < 1024, "{name}: {} bytes of error", log.len());
        assert!(
            log.contains(path.to_str().unwrap()),
            "{name}: names the file: {log}"
        );
        assert!(!log.contains("panicked"), "{name}: {log}");
    }
}
