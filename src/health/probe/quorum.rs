//! The quorum check that guards a drain: RabbitMQ's `node-is-quorum-critical` health check,
//! asked on the backend's own management endpoint (whatever the probe kind), else through the
//! pool's `http` probe settings, and its answer read; and the same question for a set of nodes
//! leaving together, which RabbitMQ does not answer itself: each node is named by its own
//! management API and the cluster's replica lists are read ([`quorum_check_set`]).

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
    let ask = match management_ask(probe, target, QUORUM_CRITICAL_PATH) {
        Ok(Some(ask)) => ask,
        Ok(None) => return QuorumCheck::NotApplicable,
        Err(reason) => return QuorumCheck::Unknown(reason),
    };
    match get_within(&ask, target, timeout, BodyRead::Prefix(QUORUM_BODY_CAP)).await {
        Err(why) => QuorumCheck::Unknown(why),
        Ok(response) => quorum_answer(response.status.as_u16(), &response.body),
    }
}

/// GET `ask`'s URL within `timeout`; a failure is told as an operator reads it (redacted).
pub(super) async fn get_within(
    ask: &HttpAsk,
    target: &ProbeTarget,
    timeout: Duration,
    read: BodyRead,
) -> Result<Response, String> {
    let mut phase = Phase::Connecting;
    match tokio::time::timeout(timeout, ask.get(None, target, &mut phase, read)).await {
        Err(_) => Err(format!(
            "timed out after {} {}",
            humantime::format_duration(timeout),
            phase.as_str()
        )),
        Ok(Err(failed)) => Err(ask.redact(&failed.reason)),
        Ok(Ok(response)) => Ok(response),
    }
}

/// Who answers `path` on the node behind `target`'s management API: its own endpoint, else the
/// authority of the pool's `http` probe when that probe is on the management API; `Ok(None)`
/// when nobody; `Err` when the credentials cannot be read.
pub(super) fn management_ask(
    probe: Option<&Probe>,
    target: &ProbeTarget,
    path: &str,
) -> Result<Option<HttpAsk>, String> {
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
        let url = m.url.join(path).map_err(|e| e.to_string())?;
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
        return Ok(Some(HttpAsk::new(url, credentials)));
    }
    let Some((url, user, password, password_file)) = probe_auth else {
        return Ok(None);
    };
    let url = match fill(url, target) {
        Ok(url) if management_path(&url) => url.with_path(path).map_err(|e| e.to_string())?,
        _ => return Ok(None),
    };
    let credentials =
        credentials(user, password, password_file).map_err(|outcome| outcome.reason)?;
    Ok(Some(HttpAsk::new(url, credentials)))
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

/// The management API path whose answer names the node that serves it (`"node"`).
pub const OVERVIEW_PATH: &str = "/api/overview";

/// Every queue of the cluster with only what the set check reads: its type, its replicas
/// (`members`) and those online. Without statistics, so a large cluster answers cheaply.
pub const QUEUES_PATH: &str =
    "/api/queues?disable_stats=true&columns=name,vhost,type,members,online";

/// Largest overview read (listeners and contexts make it a few KiB).
pub(super) const OVERVIEW_BODY_CAP: usize = 1024 * 1024;

/// Largest queue list read: about 150 bytes a queue, so some 100,000 queues.
const QUEUES_BODY_CAP: usize = 16 * 1024 * 1024;

/// A queue as the set check reads it from the queue list. Queues that are not replicated
/// (classic ones) list no members and are left out.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Replicas {
    pub name: String,
    pub vhost: String,
    /// `quorum`, `stream`, `classic`...
    #[serde(rename = "type", default)]
    pub kind: String,
    /// The nodes that hold a replica.
    #[serde(default)]
    pub members: Vec<String>,
    /// The members RabbitMQ sees running.
    #[serde(default)]
    pub online: Vec<String>,
}

impl Replicas {
    /// RabbitMQ's own way of naming a queue in its answers.
    fn readable_name(&self) -> String {
        format!("queue '{}' in vhost '{}'", self.name, self.vhost)
    }
}

/// The queues and streams that keep fewer than a majority of their replicas online once every
/// node in `leaving` stops, among those that have a replica online on one of them (a queue
/// none of them serves is not this drain's business), each with what it keeps. The
/// arithmetic of RabbitMQ's own per-node check (`node-is-quorum-critical`), for a set.
pub fn quorum_lost(queues: &[Replicas], leaving: &[String]) -> Vec<String> {
    let leaves = |node: &String| leaving.contains(node);
    queues
        .iter()
        .filter(|q| matches!(q.kind.as_str(), "quorum" | "stream") && !q.members.is_empty())
        .filter(|q| q.online.iter().any(leaves))
        .filter_map(|q| {
            let kept = q.online.iter().filter(|n| !leaves(n)).count();
            let majority = q.members.len() / 2 + 1;
            (kept < majority).then(|| {
                format!(
                    "{} would keep {kept} of {} replicas online",
                    q.readable_name(),
                    q.members.len()
                )
            })
        })
        .collect()
}

/// One backend leaving in a set drain: the pool's probe and the backend's target (see
/// [`quorum_check`] for whom they make it ask).
#[derive(Debug, Clone)]
pub struct Leaving {
    pub probe: Option<Probe>,
    pub target: ProbeTarget,
}

/// RabbitMQ's quorum question for a set of backends leaving together, which its per-node check
/// cannot answer (each node is safe alone while two together take a queue's majority): each
/// backend's management API names its node, one of them lists the cluster's replicated queues,
/// and [`quorum_lost`] judges. `NotApplicable` when fewer than two distinct nodes could be
/// named (one node is the per-node check's question); a backend whose API does not answer is
/// most likely stopped already, and RabbitMQ's lists of online replicas count it so.
pub async fn quorum_check_set(leaving: Vec<Leaving>, timeout: Duration) -> QuorumCheck {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut asks = tokio::task::JoinSet::new();
    for (i, l) in leaving.iter().enumerate() {
        let l = l.clone();
        asks.spawn(async move { (i, node_name(&l, timeout).await) });
    }
    let mut named: Vec<(usize, String)> = Vec::new();
    while let Some(joined) = asks.join_next().await {
        if let Ok((i, Some(node))) = joined {
            named.push((i, node));
        }
    }
    named.sort();
    let mut nodes: Vec<String> = named.iter().map(|(_, node)| node.clone()).collect();
    nodes.sort();
    nodes.dedup();
    if nodes.len() < 2 {
        return QuorumCheck::NotApplicable;
    }
    // Any node lists the whole cluster's queues: ask the named ones in turn.
    let mut failures = Vec::new();
    for (i, _) in &named {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match queue_list(&leaving[*i], left).await {
            Ok(queues) => return set_verdict(&queues, &nodes),
            Err(QueueListError::Unexpected(why)) => return QuorumCheck::Unexpected(why),
            Err(QueueListError::Unanswered(why)) => failures.push(why),
        }
    }
    QuorumCheck::Unknown(format!(
        "no node listed its queues: {}",
        failures.join("; ")
    ))
}

/// The verdict on `nodes` leaving together, given the cluster's queue list.
fn set_verdict(queues: &[Replicas], nodes: &[String]) -> QuorumCheck {
    let lost = quorum_lost(queues, nodes);
    if lost.is_empty() {
        return QuorumCheck::Safe;
    }
    QuorumCheck::Critical {
        reason: format!(
            "stopping {} together would leave quorum queues or streams without a majority of \
             their replicas online",
            nodes.join(", ")
        ),
        queues: lost,
    }
}

/// The node behind `leaving`'s management API (its `/api/overview` `node`); `None` when it has
/// none or does not answer.
async fn node_name(leaving: &Leaving, timeout: Duration) -> Option<String> {
    #[derive(Deserialize)]
    struct Overview {
        node: String,
    }
    let ask = management_ask(leaving.probe.as_ref(), &leaving.target, OVERVIEW_PATH).ok()??;
    let read = BodyRead::Whole(OVERVIEW_BODY_CAP);
    let response = get_within(&ask, &leaving.target, timeout, read)
        .await
        .ok()?;
    if !response.status.is_success() {
        return None;
    }
    let overview: Overview = serde_json::from_slice(&response.body).ok()?;
    Some(overview.node)
}

/// Why the queue list could not be read.
enum QueueListError {
    /// Nobody answered: ask another node.
    Unanswered(String),
    /// An answer that is not a queue list (401, a proxy's page): another node would say the
    /// same.
    Unexpected(String),
}

/// The cluster's queues, as the management API behind `leaving` lists them.
async fn queue_list(leaving: &Leaving, timeout: Duration) -> Result<Vec<Replicas>, QueueListError> {
    let ask = management_ask(leaving.probe.as_ref(), &leaving.target, QUEUES_PATH)
        .ok()
        .flatten()
        .ok_or_else(|| QueueListError::Unanswered("no management endpoint".into()))?;
    let read = BodyRead::Whole(QUEUES_BODY_CAP);
    let response = get_within(&ask, &leaving.target, timeout, read)
        .await
        .map_err(|why| QueueListError::Unanswered(format!("{}: {why}", ask.url)))?;
    let status = response.status.as_u16();
    match serde_json::from_slice(&response.body) {
        Ok(queues) if status == 200 => Ok(queues),
        _ => Err(QueueListError::Unexpected(format!(
            "{} answered HTTP {status}: {}",
            ask.url,
            sanitize(&String::from_utf8_lossy(&response.body), HTTP_BODY_PREFIX)
        ))),
    }
}
