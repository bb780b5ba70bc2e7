//! Why a backend's probes fail while its node may be fine: RabbitMQ's own maintenance mode
//! (`rabbitmq-upgrade drain`). On 3.x the drained node closes its AMQP and management
//! listeners and no HTTP endpoint says so; the rest of the cluster still lists it as running
//! (`/api/nodes/NODE` `running: true`) and still lists its AMQP listener in `/api/overview`.
//! So another backend's management API is asked which node listens on the failing address and
//! whether that node runs. On 4.x the node itself answers `/api/health/checks/is-in-service`
//! (503 in maintenance) when its management API is up, and that answer comes first.
//! This module only reads; what the probe loop does with the answer is the caller's.

use super::quorum::{get_within, management_ask, OVERVIEW_BODY_CAP};
use super::*;

/// The 4.x health check that answers 503 while the node is in maintenance mode.
pub const IN_SERVICE_PATH: &str = "/api/health/checks/is-in-service";

/// Largest `/api/nodes/NODE` answer read (a node's statistics, a few KiB).
const NODE_BODY_CAP: usize = 1024 * 1024;

/// Whether the node behind `down` (whose probe failed with `reason`) is most likely in
/// RabbitMQ's maintenance mode: `Some(reason)` to show instead, naming the suspicion first;
/// `None` when nobody can tell or the cluster sees the node stopped. Asks `down`'s own
/// management API (4.x `is-in-service`), then each of `peers` in turn, all within `timeout`.
pub async fn maintenance_reason(
    probe: Option<&Probe>,
    down: &ProbeTarget,
    peers: &[ProbeTarget],
    reason: &str,
    timeout: Duration,
) -> Option<String> {
    let deadline = tokio::time::Instant::now() + timeout;
    let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
    if let Ok(Some(ask)) = management_ask(probe, down, IN_SERVICE_PATH) {
        let read = BodyRead::Prefix(HTTP_BODY_PREFIX);
        if let Ok(response) = get_within(&ask, down, left(), read).await {
            match response.status.as_u16() {
                503 => {
                    return Some(format!(
                        "RabbitMQ maintenance mode (is-in-service answers 503): {reason}"
                    ))
                }
                200 => return None,
                _ => {}
            }
        }
    }
    for peer in peers.iter().filter(|p| p.addr != down.addr) {
        if left().is_zero() {
            break;
        }
        match peer_says(probe, peer, down.addr, left()).await {
            Some((node, true)) => {
                return Some(format!(
                    "RabbitMQ maintenance mode? listeners closed while {node} runs: {reason}"
                ))
            }
            Some((_, false)) => return None,
            None => continue,
        }
    }
    None
}

/// Ask `peer`'s management API which node listens for AMQP on `addr` and whether the cluster
/// sees it running; `None` when the peer cannot tell.
async fn peer_says(
    probe: Option<&Probe>,
    peer: &ProbeTarget,
    addr: SocketAddr,
    timeout: Duration,
) -> Option<(String, bool)> {
    let deadline = tokio::time::Instant::now() + timeout;
    let ask = management_ask(probe, peer, OVERVIEW_PATH).ok()??;
    let response = get_within(&ask, peer, timeout, BodyRead::Whole(OVERVIEW_BODY_CAP))
        .await
        .ok()?;
    if !response.status.is_success() {
        return None;
    }
    let node = listener_node(&response.body, addr)?;
    let path = format!("/api/nodes/{node}?memory=false&binary=false");
    let ask = management_ask(probe, peer, &path).ok()??;
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    let response = get_within(&ask, peer, left, BodyRead::Whole(NODE_BODY_CAP))
        .await
        .ok()?;
    if !response.status.is_success() {
        return None;
    }
    Some((node, node_running(&response.body)?))
}

/// The node whose AMQP listener is `addr`, from an `/api/overview` answer's `listeners`: the
/// exact address, else a wildcard address (`::`, `0.0.0.0`) on `addr`'s port when only one
/// node listens so (several would be a guess).
pub(super) fn listener_node(overview: &[u8], addr: SocketAddr) -> Option<String> {
    #[derive(Deserialize)]
    struct Overview {
        #[serde(default)]
        listeners: Vec<Listener>,
    }
    #[derive(Deserialize)]
    struct Listener {
        node: String,
        protocol: String,
        ip_address: String,
        port: u16,
    }
    let overview: Overview = serde_json::from_slice(overview).ok()?;
    let amqp = overview
        .listeners
        .into_iter()
        .filter(|l| l.protocol.starts_with("amqp") && l.port == addr.port());
    let mut wildcard = Vec::new();
    for l in amqp {
        match l.ip_address.parse::<IpAddr>() {
            Ok(ip) if ip == addr.ip() => return Some(l.node),
            Ok(ip) if ip.is_unspecified() => wildcard.push(l.node),
            _ => {}
        }
    }
    wildcard.dedup();
    match wildcard.as_slice() {
        [node] => Some(node.clone()),
        _ => None,
    }
}

/// `running` of an `/api/nodes/NODE` answer.
pub(super) fn node_running(body: &[u8]) -> Option<bool> {
    #[derive(Deserialize)]
    struct Node {
        running: bool,
    }
    serde_json::from_slice::<Node>(body).ok().map(|n| n.running)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OVERVIEW: &str = r#"{"node":"m2@h","listeners":[
        {"node":"m1@h","protocol":"amqp","ip_address":"127.0.77.1","port":5672},
        {"node":"m2@h","protocol":"amqp","ip_address":"127.0.77.2","port":5672},
        {"node":"m1@h","protocol":"http","ip_address":"::","port":15672},
        {"node":"m3@h","protocol":"amqp/ssl","ip_address":"::","port":5671}]}"#;

    #[test]
    fn the_failing_address_names_its_node() {
        let at = |a: &str| listener_node(OVERVIEW.as_bytes(), a.parse().unwrap());
        assert_eq!(at("127.0.77.1:5672").as_deref(), Some("m1@h"));
        assert_eq!(at("127.0.77.2:5672").as_deref(), Some("m2@h"));
        // A wildcard listener matches by port when it is the only one there.
        assert_eq!(at("10.0.0.3:5671").as_deref(), Some("m3@h"));
        // The management listener is not an AMQP one; an unknown address names nobody.
        assert_eq!(at("127.0.77.1:15672"), None);
        assert_eq!(at("127.0.77.9:5672"), None);
        assert_eq!(
            listener_node(b"<html>", "127.0.0.1:5672".parse().unwrap()),
            None
        );
    }

    #[test]
    fn several_wildcard_listeners_on_one_port_are_not_guessed_between() {
        let overview = r#"{"listeners":[
            {"node":"a@h","protocol":"amqp","ip_address":"::","port":5672},
            {"node":"b@h","protocol":"amqp","ip_address":"0.0.0.0","port":5672}]}"#;
        assert_eq!(
            listener_node(overview.as_bytes(), "10.0.0.1:5672".parse().unwrap()),
            None
        );
    }

    #[test]
    fn running_is_read_from_the_node_answer() {
        assert_eq!(
            node_running(br#"{"name":"m1@h","running":true}"#),
            Some(true)
        );
        assert_eq!(
            node_running(br#"{"name":"m1@h","running":false}"#),
            Some(false)
        );
        assert_eq!(node_running(br#"{"error":"Object Not Found"}"#), None);
    }
}
