//! The quorum check that guards a drain: RabbitMQ's `node-is-quorum-critical` health check,
//! asked on the backend's own management endpoint (whatever the probe kind), else through the
//! pool's `http` probe settings, and its answer read.

use super::*;

/// RabbitMQ's answer to "may this node stop?", from its management API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuorumCheck {
    /// The backend has no management endpoint (`[pool.NAME.management] url`, or `management`
    /// on the backend) and the pool no `http` probe on the management API (`/api/...`), so there
    /// is no one to ask.
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

/// Ask the node behind `target` whether it is quorum-critical: on its own management endpoint
/// when it has one, whatever `probe` is; else on the management API that `probe` (the pool's
/// `http` probe, with its credentials) already talks to; else it is not applicable.
pub async fn quorum_check(
    probe: Option<&Probe>,
    target: &ProbeTarget,
    timeout: Duration,
) -> QuorumCheck {
    let (ask, path) = match quorum_ask(probe, target) {
        Ok(Some(ask)) => ask,
        Ok(None) => return QuorumCheck::NotApplicable,
        Err(reason) => return QuorumCheck::Unknown(reason),
    };
    let mut phase = Phase::Connecting;
    let asked = tokio::time::timeout(
        timeout,
        ask.get(path, target, &mut phase, BodyRead::Prefix(QUORUM_BODY_CAP)),
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

/// Whom the quorum check asks, and the path to put on the URL (`None`: the URL is the check's
/// own); `Ok(None)` when nobody; `Err` when the credentials cannot be read.
fn quorum_ask(
    probe: Option<&Probe>,
    target: &ProbeTarget,
) -> Result<Option<(HttpAsk, Option<&'static str>)>, String> {
    let probe_auth = match probe {
        Some(Probe::Http {
            url,
            user,
            password,
            password_file,
        }) => Some((url, user, password, password_file)),
        _ => None,
    };
    if let Some(m) = &target.management {
        let url = m
            .url
            .join(QUORUM_CRITICAL_PATH)
            .map_err(|e| e.to_string())?;
        // Without credentials of its own, the endpoint is asked with the `http` probe's (so a
        // probe with `user` need not repeat it under [management]).
        let credentials = match (
            m.user.is_some() || m.url.credentials().is_some(),
            probe_auth,
        ) {
            (false, Some((_, user, password, password_file))) => {
                credentials(user, password, password_file)
            }
            _ => credentials(&m.user, &m.password, &m.password_file),
        };
        let credentials = credentials.map_err(|outcome| outcome.reason)?;
        return Ok(Some((HttpAsk::new(url, credentials), None)));
    }
    let Some((url, user, password, password_file)) = probe_auth else {
        return Ok(None);
    };
    let url = match fill(url, target) {
        Ok(url) if management_path(&url) => url,
        _ => return Ok(None),
    };
    let credentials =
        credentials(user, password, password_file).map_err(|outcome| outcome.reason)?;
    Ok(Some((
        HttpAsk::new(url, credentials),
        Some(QUORUM_CRITICAL_PATH),
    )))
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
