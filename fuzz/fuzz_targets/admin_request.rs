//! Any bytes sent to the admin API of a live warren (with a token, so `/v1` checks it).
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;

#[path = "../../tests/common/fuzz_checks.rs"]
mod fuzz_checks;

/// One warren for the whole run: its runtime and its admin address.
fn admin() -> SocketAddr {
    static ADMIN: OnceLock<(tokio::runtime::Runtime, SocketAddr)> = OnceLock::new();
    ADMIN
        .get_or_init(|| {
            let dir = std::env::temp_dir().join(format!("warren-fuzz-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("token"), "fuzz-token").unwrap();
            let text = format!(
                "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n\n[[listener]]\nname = \"amqp\"\n\
                 listen = \"127.0.0.1:0\"\npool = \"rabbitmq\"\n\n[pool.rabbitmq]\n\n\
                 [[pool.rabbitmq.backend]]\nname = \"rabbit-a\"\naddr = \"127.0.0.1:1\"\n",
                dir.join("token").display()
            );
            let config = warren::config::from_toml_offline(&text, &dir.join("warren.toml")).unwrap();
            let runtime = tokio::runtime::Runtime::new().unwrap();
            let server = runtime
                .block_on(async { warren::Server::bind(&config, warren::Options::default()) })
                .unwrap();
            let addr = server.admin_addr().unwrap();
            runtime.spawn(server.run(tokio_util::sync::CancellationToken::new()));
            (runtime, addr)
        })
        .1
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(why) = fuzz_checks::admin_request(admin(), data) {
        panic!("{why}");
    }
});
