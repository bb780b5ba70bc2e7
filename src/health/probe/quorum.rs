//! The quorum check that guards a drain: RabbitMQ's `node-is-quorum-critical` health check,
//! asked through the pool's `http` probe settings, and its answer read.

use super::*;

/// RabbitMQ's answer to "may this node stop?", from its management API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuorumCheck {
    /// The pool has no `http` probe on the management API (`/api/...`), so there is no one to ask.
    NotApplicable,
    /// The node can stop without any quorum queue or stream losing its quorum.
    Safe,
    /// Stopping the node would leave these queues (RabbitMQ's readable names) without quorum.
    Critical { reason: String, queues: Vec<String> },
    /// Nobody answered (connection refused, timeout): the node's management API is down, and
    /// so, most likely, is the node.
    Unknown(String),
    /// The management API answered, but not as the check does (401, 404, an HTML page): the
    /// probe's credentials or the RabbitMQ version need fixing before a drain can be judged.
    Unexpected(String),
}

/// The management API path that answers 503 while a node is quorum-critical.
pub const QUORUM_CRITICAL_PATH: &str = "/api/health/checks/node-is-quorum-critical";

/// Largest quorum-check answer read: the list of critical queues can be long.
pub(super) const QUORUM_BODY_CAP: usize = 256 * 1024;

/// Ask the node behind `target` whether it is quorum-critical, on the management API that
/// `probe` (the pool's `http` probe, with its credentials) already talks to.
pub async fn quorum_check(probe: &Probe, target: &ProbeTarget, timeout: Duration) -> QuorumCheck {
    let Probe::Http {
        url,
        user,
        password,
        password_file,
    } = probe
    else {
        return QuorumCheck::NotApplicable;
    };
    let url = match fill(url, target) {
        Ok(url) if management_path(&url) => url,
        _ => return QuorumCheck::NotApplicable,
    };
    let credentials = match credentials(user, password, password_file) {
        Ok(credentials) => credentials,
        Err(outcome) => return QuorumCheck::Unknown(outcome.reason),
    };
    let ask = HttpAsk::new(url, credentials);
    let mut phase = Phase::Connecting;
    let asked = tokio::time::timeout(
        timeout,
        ask.get(
            Some(QUORUM_CRITICAL_PATH),
            target,
            &mut phase,
            BodyRead::Prefix(QUORUM_BODY_CAP),
        ),
    )
    .await;
    match asked {
        Err(_) => QuorumCheck::Unknown(format!(
            "timed out after {} {}",
            humantime::format_duration(timeout),
            phase.as_str()
        )),
        Ok(Err(failed)) => QuorumCheck::Unknown(ask.redact(&failed.reason)),
        Ok(Ok(response)) => quorum_answer(response.status.as_u16(), &response.body),
    }
}

/// Whether an `http` probe URL points at RabbitMQ's management API (its paths start `/api/`).
pub(super) fn management_path(url: &HttpUrl) -> bool {
    url.path().starts_with("/api/")
}

/// Read the management API's answer: 200 → safe, 503 with `{"status":"failed"}` → critical.
pub(super) fn quorum_answer(status: u16, body: &[u8]) -> QuorumCheck {
    #[derive(Deserialize)]
    struct Answer {
        status: String,
        #[serde(default)]
        reason: String,
        #[serde(default)]
        queues: Vec<Queue>,
    }
    #[derive(Deserialize)]
    struct Queue {
        #[serde(default)]
        readable_name: String,
        #[serde(default)]
        name: String,
    }
    let answer: Option<Answer> = serde_json::from_slice(body).ok();
    match (status, answer) {
        (200, _) => QuorumCheck::Safe,
        (503, Some(a)) if a.status == "failed" => QuorumCheck::Critical {
            reason: a.reason,
            queues: a
                .queues
                .into_iter()
                .map(|q| {
                    if q.readable_name.is_empty() {
                        q.name
                    } else {
                        q.readable_name
                    }
                })
                .collect(),
        },
        (404, _) => QuorumCheck::Unexpected(format!(
            "HTTP 404 from {QUORUM_CRITICAL_PATH} (RabbitMQ older than 3.8.7?)"
        )),
        (status, _) => QuorumCheck::Unexpected(format!(
            "HTTP {status}: {}",
            sanitize(&String::from_utf8_lossy(body), HTTP_BODY_PREFIX)
        )),
    }
}
