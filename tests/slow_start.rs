//! Slow start end to end, in process: a backend undrained in a `round_robin` pool with
//! `slow_start = "3s"` gets a share of new connections that rises over the ramp as its weight
//! does (measured in half-second windows against what the ramp predicts for each connection),
//! then its full share; `/v1/status` shows it in slow start with its current percentage.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::time::{Instant, MissedTickBehavior};
use warren::config::{Balance, Config};
use warren::state::AdminState;

const SECOND: Duration = Duration::from_secs(1);
const TOKEN: &str = "slow-start-token";
const RAMP: Duration = Duration::from_secs(3);
const WINDOW: Duration = Duration::from_millis(500);
/// Windows measured: the ramp, and one second at full share after it.
const WINDOWS: usize = 8;

fn slow_start_config(dir: &TempDir, backends: &[SocketAddr; 3]) -> Config {
    let names = ["a", "b", "c"];
    let mut cfg = config(
        Balance::RoundRobin,
        names
            .iter()
            .zip(backends)
            .map(|(name, addr)| backend(name, *addr))
            .collect(),
    );
    cfg.pools[0].slow_start = RAMP;
    cfg.admin = Some(admin_with_token(dir, TOKEN));
    cfg
}

/// The share of new connections c should get `elapsed` after its return, beside a and b at
/// full weight (all weights 1): f / (2 + f), f growing linearly from 1 % to 1 over the ramp.
fn predicted_share(elapsed: Duration) -> f64 {
    let f = (elapsed.as_secs_f64() / RAMP.as_secs_f64()).clamp(0.01, 1.0);
    f / (2.0 + f)
}

async fn status(admin: SocketAddr) -> serde_json::Value {
    let (code, body) = http(admin, "GET", "/v1/status", Some(TOKEN), b"").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undrained_backend_ramps_its_share_of_new_connections() {
    let dir = TempDir::new("slow-start");
    let backends = [
        spawn_tagged(0).await,
        spawn_tagged(1).await,
        spawn_tagged(2).await,
    ];
    let addrs = [backends[0].addr, backends[1].addr, backends[2].addr];
    let warren = Warren::start(slow_start_config(&dir, &addrs), quick());
    let admin = warren.admin.expect("admin configured");
    let drain = "/v1/pools/default/backends/c/drain";
    let (code, body) = http(admin, "POST", drain, Some(TOKEN), b"").await;
    assert_eq!(code, 202, "{body}");
    wait_for("c drained", 5 * SECOND, || {
        let snapshot = warren.routing.load();
        snapshot.pools["default"].backend("c").unwrap().admin == AdminState::Drained
    })
    .await;
    let pool = &status(admin).await["pools"][0];
    assert_eq!(pool["slow_start"], "3s", "{pool}");

    let undrain = "/v1/pools/default/backends/c/undrain";
    let returned = Instant::now();
    let (code, body) = http(admin, "POST", undrain, Some(TOKEN), b"").await;
    assert_eq!(code, 200, "{body}");

    // (connections, to c, c's predicted count) per window since the undrain.
    let mut windows = [(0usize, 0usize, 0.0f64); WINDOWS];
    let mut percent_mid_ramp = None;
    // Paced so the machine is not flooded: a few hundred connections per window is plenty
    // for round robin, whose picks follow the weights exactly.
    let mut pace = tokio::time::interval(Duration::from_millis(2));
    pace.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        pace.tick().await;
        let elapsed = returned.elapsed();
        let window = (elapsed.as_millis() / WINDOW.as_millis()) as usize;
        if window >= WINDOWS {
            break;
        }
        let (id, _client) = which_backend(warren.addr).await;
        let w = &mut windows[window];
        w.0 += 1;
        w.1 += usize::from(id == 2);
        w.2 += predicted_share(elapsed);
        if percent_mid_ramp.is_none() && elapsed >= Duration::from_millis(1500) {
            let c = status(admin).await["pools"][0]["backends"][2].clone();
            percent_mid_ramp = Some((returned.elapsed(), c["slow_start_percent"].clone()));
        }
    }

    for (i, (total, to_c, predicted)) in windows.iter().enumerate() {
        println!(
            "window {}: {to_c}/{total} to c ({:.1}%), predicted {predicted:.1} ({:.1}%)",
            i,
            100.0 * *to_c as f64 / *total as f64,
            100.0 * predicted / *total as f64
        );
    }
    for (i, &(total, to_c, predicted)) in windows.iter().enumerate() {
        assert!(total >= 50, "window {i}: only {total} connections");
        // Round robin follows the weights to within a pick or two per weight change; the
        // slack covers the few milliseconds between `returned` and the undrain taking effect.
        let slack = 3.0 + 0.15 * predicted;
        assert!(
            (to_c as f64 - predicted).abs() <= slack,
            "window {i}: {to_c} of {total} to c, predicted {predicted:.1}"
        );
    }
    let share = |w: &(usize, usize, f64)| w.1 as f64 / w.0 as f64;
    for pair in windows[..6].windows(2) {
        assert!(
            share(&pair[0]) < share(&pair[1]),
            "shares rise over the ramp: {windows:?}"
        );
    }
    // After the ramp: its full third.
    for w in &windows[6..] {
        assert!(
            (share(w) - 1.0 / 3.0).abs() < 0.03,
            "full share after the ramp: {w:?}"
        );
    }
    let (at, percent) = percent_mid_ramp.expect("status read mid-ramp");
    let percent = percent.as_u64().expect("slow_start_percent mid-ramp");
    let expected = 100.0 * at.as_secs_f64() / RAMP.as_secs_f64();
    assert!(
        (percent as f64 - expected).abs() <= 10.0,
        "slow start {percent}% at {at:?}, expected about {expected:.0}%"
    );
    // Once the ramp is over, status no longer mentions it.
    let c = status(admin).await["pools"][0]["backends"][2].clone();
    assert!(c.get("slow_start_percent").is_none(), "{c}");
    warren.stop().await;
}
