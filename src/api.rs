//! The admin API's contract: the JSON bodies that the admin server (`admin`) writes and
//! `warren ctl` reads, as serde types, with the states as snake_case enums. Both sides use these
//! types and nothing else, so the two cannot drift apart. This module owns only shapes: no I/O,
//! no policy (the drainer decides, `admin` maps decisions to HTTP). README.md's "Admin API"
//! section documents it; `tests/api_samples.rs` holds it byte for byte to stored samples.
//!
//! Wire rules kept from the first version of the API, which built its bodies as
//! `serde_json::Value` maps:
//! - keys come out in alphabetical order, so every struct declares its fields alphabetically
//!   (serde writes them in declaration order);
//! - optional values are `null` unless a field says it is left out when empty.
//!
//! Reading is lenient where `warren ctl` always was: unknown fields are ignored (a newer server
//! may add some) and most fields have a default.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A backend's health as probes and passive checks see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// No verdict yet (before the first probe); counts as available.
    Unknown,
    Up,
    Down,
}

/// The operator's admin state of a backend (separate from health).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminState {
    Active,
    Draining,
    Drained,
}

/// The kind of a pool's active probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeKind {
    Tcp,
    Amqp,
    AmqpLogin,
    Http,
}

impl Health {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Up => "up",
            Health::Down => "down",
        }
    }
}

impl AdminState {
    /// Every state (each backend has a `backend_admin_state` series per state).
    pub const ALL: [AdminState; 3] = [
        AdminState::Active,
        AdminState::Draining,
        AdminState::Drained,
    ];

    /// The label used by the API, metrics and the state file.
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Active => "active",
            AdminState::Draining => "draining",
            AdminState::Drained => "drained",
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for AdminState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    #[serde(default)]
    pub listeners: Vec<ListenerStatus>,
    pub pools: Vec<PoolStatus>,
    /// warren's version.
    #[serde(default)]
    pub version: String,
}

/// `GET /v1/fleet`: the live instances of this instance's `[fleet]` and what each reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetStatus {
    /// Every backend the instances report, with the fleet's totals.
    pub backends: Vec<FleetBackend>,
    /// The instance that answered.
    pub instance: String,
    /// The instances whose registration is alive (lease not expired), by name.
    pub instances: Vec<FleetInstance>,
    /// "ok", or why etcd could not be read (then the lists are empty).
    pub store: String,
}

/// One live instance in `/v1/fleet`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetInstance {
    pub instance: String,
    /// When it last reported (RFC 3339).
    pub reported: String,
    pub version: String,
}

/// One backend across the fleet in `/v1/fleet`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetBackend {
    /// The sum over the instances.
    pub active_connections: i64,
    pub backend: String,
    /// Set when the instances disagree about its health or admin state: who sees what.
    pub disagreement: Option<String>,
    /// What each instance reports, by instance name.
    pub instances: Vec<FleetBackendView>,
    pub pool: String,
}

/// One instance's view of a backend in `/v1/fleet`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetBackendView {
    pub active_connections: i64,
    pub admin: AdminState,
    pub health: Health,
    pub instance: String,
    /// Its admin state on that instance is a local change (`local`), apart from the fleet's.
    #[serde(default, skip_serializing_if = "is_false")]
    pub local: bool,
}

/// One `[[listener]]` in `/v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListenerStatus {
    #[serde(default)]
    pub active_connections: i64,
    /// The configured address.
    #[serde(default)]
    pub listen: String,
    pub name: String,
    /// The pool it forwards to (with `sni`: the pool of clients no route names).
    #[serde(default)]
    pub pool: String,
    /// `[[listener.sni]]` routes in file order; absent for a listener with one pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sni: Vec<SniRouteStatus>,
}

/// One `[[listener.sni]]` route in `/v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SniRouteStatus {
    /// As configured (lowercase), `*.` for a wildcard.
    pub server_name: String,
    pub pool: String,
}

/// One pool in `/v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolStatus {
    /// Backends that may take new connections now.
    #[serde(default)]
    pub available: usize,
    #[serde(default)]
    pub backends: Vec<BackendStatus>,
    /// The balancing method as written in the config (the config owns those names).
    #[serde(default)]
    pub balance: String,
    /// Failed probes in a row that bring an up backend down (`None`: passive checks only).
    #[serde(default)]
    pub fall: Option<u32>,
    /// The probe kind, or `None` when the pool has passive checks only.
    #[serde(default)]
    pub health_check: Option<ProbeKind>,
    #[serde(default)]
    pub min_available: usize,
    pub name: String,
    /// `"close"` when probes marking a backend down close its connections; left out for the
    /// default, `"keep"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_down: Option<String>,
    /// How the pool's connections are spread against the backends' fair shares, and what
    /// the rebalancer is doing about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebalance: Option<RebalanceStatus>,
    /// Probes in a row that bring a down backend up (`None`: passive checks only).
    #[serde(default)]
    pub rise: Option<u32>,
    /// The ramp of a returning backend, as written (`"30s"`); left out when slow start is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_start: Option<String>,
    #[serde(default)]
    pub total: usize,
}

/// One backend in `/v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendStatus {
    #[serde(default)]
    pub active_connections: i64,
    /// `host:port` (`[v6]:port`), resolved.
    #[serde(default)]
    pub addr: String,
    pub admin: AdminState,
    pub available: bool,
    #[serde(default)]
    pub backup: bool,
    /// Connections chosen for the backend whose connect is still under way.
    #[serde(default)]
    pub connecting: i64,
    /// RFC 3339, while draining with a deadline.
    #[serde(default)]
    pub drain_deadline: Option<String>,
    pub health: Health,
    /// RFC 3339: when `health` last changed (start-up counts as a change to `unknown`).
    #[serde(default)]
    pub health_changed_at: Option<String>,
    /// The check that made the last change of `health` (a probe's reason, or a failed connect
    /// from the data path); `null` before the first change.
    #[serde(default)]
    pub health_reason: Option<String>,
    /// The host name `addr` was looked up from, as written in the config (for `expand`, the
    /// name of the whole set); left out for a backend written as an IP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_name: Option<String>,
    #[serde(default)]
    pub last_probe: Option<ProbeStatus>,
    /// With `[fleet]`: RFC 3339, since when its admin state here is a local change (`local`),
    /// apart from the fleet's drains; left out when it follows the fleet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_change: Option<String>,
    pub name: String,
    /// Checks passed since the last failure.
    #[serde(default)]
    pub probes_ok_in_a_row: u32,
    /// Probes run since warren started.
    #[serde(default)]
    pub probes_run: u64,
    /// While in slow start: the percentage of its weight it gets now (1 to 99); left out
    /// otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_start_percent: Option<u32>,
    /// The backend's `tags` (groups drained together), sorted; left out when it has none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default)]
    pub weight: u32,
}

/// A backend's last probe in `/v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeStatus {
    /// RFC 3339.
    #[serde(default)]
    pub at: Option<String>,
    #[serde(default)]
    pub duration_ms: Option<f64>,
    #[serde(default)]
    pub reason: String,
    pub up: bool,
}

/// Body of `POST /v1/pools/{pool}/backends/{name}/drain` (an empty body means the defaults).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    /// e.g. "5m": connections still open then are closed. Sent only when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
    /// Skip the quorum check and `min_available`.
    #[serde(default)]
    pub force: bool,
    /// With `[fleet]`: apply it on this instance only, not through etcd (see the README's
    /// fleet section); sent only when set.
    #[serde(default, skip_serializing_if = "is_false")]
    pub local: bool,
}

/// One backend of a set, as `POST /v1/drain` and `POST /v1/undrain` name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendRef {
    pub backend: String,
    pub pool: String,
}

/// The body of `POST /v1/drain`: a set of backends drained as one decision (the quorum check of
/// each, `min_available` counting the whole set), with one deadline.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainSetRequest {
    pub backends: Vec<BackendRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
    #[serde(default)]
    pub force: bool,
    /// With `[fleet]`: apply it on this instance only, not through etcd (see the README's
    /// fleet section); sent only when set.
    #[serde(default, skip_serializing_if = "is_false")]
    pub local: bool,
}

/// The body of `POST /v1/undrain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UndrainSetRequest {
    pub backends: Vec<BackendRef>,
    /// With `[fleet]`: apply it on this instance only, not through etcd (see the README's
    /// fleet section); sent only when set.
    #[serde(default, skip_serializing_if = "is_false")]
    pub local: bool,
    /// `false`: this return does not start a rebalance, and the pools' automatic rebalancing
    /// waits (a rolling upgrade moving on to its next node); see [`UndrainRequest`].
    #[serde(default = "yes")]
    pub rebalance: bool,
}

/// The optional body of `POST /v1/pools/{pool}/backends/{backend}/undrain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UndrainRequest {
    /// With `[fleet]`: apply it on this instance only, not through etcd (see the README's
    /// fleet section); sent only when set.
    #[serde(default, skip_serializing_if = "is_false")]
    pub local: bool,
    /// `false`: the backend's return does not start a rebalance, and the pool's automatic
    /// rebalancing waits for a while (`warren ctl upgrade` asks for one pass at the end).
    #[serde(default = "yes")]
    pub rebalance: bool,
}

impl Default for UndrainRequest {
    fn default() -> UndrainRequest {
        UndrainRequest {
            local: false,
            rebalance: true,
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn yes() -> bool {
    true
}

/// A pool's balance in `/v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RebalanceStatus {
    /// What the balance is computed on: `fleet` (with `[fleet]` and a fresh read of the other
    /// instances' reports) or `local` (this instance's connections).
    #[serde(default)]
    pub basis: RebalanceBasis,
    /// The fraction of the pool's connections above their backend's weighted fair share
    /// (what a rebalance would move): 0 when balanced.
    pub imbalance: f64,
    /// `off`, `on_return` or `continuous`.
    pub mode: String,
    pub state: RebalanceState,
}

/// The connections a pool's balance is computed on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RebalanceBasis {
    /// The fleet's: this instance's and the other instances' last reports (`[fleet]`).
    Fleet,
    /// This instance's alone (no `[fleet]`, or etcd could not be read lately).
    #[default]
    Local,
}

impl RebalanceBasis {
    pub fn as_str(self) -> &'static str {
        match self {
            RebalanceBasis::Fleet => "fleet",
            RebalanceBasis::Local => "local",
        }
    }
}

/// Where a pool's rebalancing stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RebalanceState {
    /// Every backend is within the tolerance of its fair share.
    Balanced,
    /// Some backend is above it and no pass runs (mode `off`, or waiting for a trigger).
    Unbalanced,
    /// A pass is moving connections.
    Running,
    /// An undrain asked automatic rebalancing to wait (a rolling upgrade under way).
    Held,
}

/// The answer to `POST /v1/pools/{pool}/rebalance`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RebalanceAnswer {
    /// As in [`RebalanceStatus`], when asked.
    pub imbalance: f64,
    /// The pace of the closes.
    pub max_closes_per_second: f64,
    pub pool: String,
    /// A pass runs (`false`: already balanced, nothing to move).
    pub started: bool,
    /// Connections above their backend's fair share, when asked.
    pub to_move: u64,
}

/// The answer to a set drain (202) or undrain (200): one answer per backend, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrainSetAnswer {
    pub backends: Vec<DrainAnswer>,
}

/// The answer to a drain (202) or an undrain (200): the backend's admin state after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrainAnswer {
    #[serde(default)]
    pub active_connections: i64,
    pub admin: AdminState,
    #[serde(default)]
    pub backend: String,
    /// Connections chosen for the backend whose connect is still under way (a drain is not
    /// complete while there is one).
    #[serde(default)]
    pub connecting: i64,
    /// RFC 3339, when a deadline is set.
    #[serde(default)]
    pub drain_deadline: Option<String>,
    /// Why the change was not persisted, for the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persist_error: Option<String>,
    /// `false` when the change could not be written to the state file (it holds now, but not
    /// across a restart); left out when nothing had to be written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persisted: Option<bool>,
    #[serde(default)]
    pub pool: String,
    /// What the quorum check said (drains only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum_check: Option<QuorumAnswer>,
    /// What the operator should know although the drain went ahead; left out when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// The quorum check's verdict on a drain that went ahead (a refusing one is a
/// [`RefusalReason`]). The wire names are the phrases `warren ctl` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum QuorumAnswer {
    /// RabbitMQ says the node can stop.
    #[serde(rename = "safe")]
    Safe,
    /// Not asked: the drain was forced.
    #[serde(rename = "skipped (force)")]
    SkippedForce,
    /// Nobody to ask (no `http` probe on the management API), or the backend was not active.
    #[serde(rename = "not applicable (no management endpoint and no http probe)")]
    NotApplicable,
    /// Asked, no answer; the drain went ahead with a warning.
    #[serde(rename = "unknown")]
    Unknown,
}

impl QuorumAnswer {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            QuorumAnswer::Safe => "safe",
            QuorumAnswer::SkippedForce => "skipped (force)",
            QuorumAnswer::NotApplicable => {
                "not applicable (no management endpoint and no http probe)"
            }
            QuorumAnswer::Unknown => "unknown",
        }
    }
}

impl fmt::Display for QuorumAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a drain was refused, where the error body names it (the quorum check's refusals).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalReason {
    /// RabbitMQ says stopping the node costs quorum queues their majority.
    QuorumCritical,
    /// The management API answered, but not as the check does (401, 404...).
    QuorumCheckFailed,
}

/// Every error answer: `{"error": "..."}`, and for a refused drain what refused it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    /// The queues that would lose their quorum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queues: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<RefusalReason>,
}

impl ErrorBody {
    /// An error with its message only.
    pub fn new(error: impl Into<String>) -> ErrorBody {
        ErrorBody {
            error: error.into(),
            queues: None,
            reason: None,
        }
    }
}

/// `POST /v1/upgrade` when the new process serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeAnswer {
    /// Established connections handed to the new process, which forwards them from now on.
    #[serde(default)]
    pub connections: u64,
    /// Connections left in the old process (warren was closing them: a drain deadline, a
    /// rebalance); they end there, within its grace period.
    #[serde(default)]
    pub connections_left: u64,
    /// The process serving from now on.
    pub new_pid: u32,
    /// The process that answered, which exits once its last connections are gone.
    pub old_pid: u32,
    /// Always "ok" (a refused or failed upgrade is an [`ErrorBody`]: 409, 500 or 501).
    #[serde(default)]
    pub result: String,
    /// From the request to the new process holding every connection, in milliseconds.
    #[serde(default)]
    pub took_ms: u64,
}

/// `POST /v1/reload` when the new config is in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadAnswer {
    /// Always "ok" (a failed reload is an [`ErrorBody`] with 400).
    #[serde(default)]
    pub result: String,
    /// One line: the file, and what it holds.
    #[serde(default)]
    pub summary: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_have_their_wire_names() {
        for h in [Health::Unknown, Health::Up, Health::Down] {
            assert_eq!(serde_json::to_value(h).unwrap(), h.as_str());
            assert_eq!(h.to_string(), h.as_str());
        }
        for a in [
            AdminState::Active,
            AdminState::Draining,
            AdminState::Drained,
        ] {
            assert_eq!(serde_json::to_value(a).unwrap(), a.as_str());
        }
        for q in [
            QuorumAnswer::Safe,
            QuorumAnswer::SkippedForce,
            QuorumAnswer::NotApplicable,
            QuorumAnswer::Unknown,
        ] {
            assert_eq!(serde_json::to_value(q).unwrap(), q.as_str());
        }
        assert_eq!(
            serde_json::to_value(ProbeKind::AmqpLogin).unwrap(),
            "amqp_login"
        );
        assert_eq!(
            serde_json::to_value(RefusalReason::QuorumCheckFailed).unwrap(),
            "quorum_check_failed"
        );
    }

    /// serde writes fields in declaration order; the API's keys have always been sorted.
    #[test]
    fn fields_come_out_in_alphabetical_order() {
        fn keys_sorted(value: &impl Serialize) {
            let text = serde_json::to_string(value).unwrap();
            let sorted = serde_json::to_string(&serde_json::to_value(value).unwrap()).unwrap();
            assert_eq!(text, sorted);
        }
        let probe = ProbeStatus {
            at: Some("2026-11-21T23:59:01Z".into()),
            duration_ms: Some(1.5),
            reason: "HTTP 200".into(),
            up: true,
        };
        let backend = BackendStatus {
            active_connections: 1,
            connecting: 0,
            addr: "10.0.0.1:5672".into(),
            admin: AdminState::Draining,
            available: false,
            backup: true,
            drain_deadline: Some("2026-11-22T00:04:06Z".into()),
            health: Health::Up,
            health_changed_at: Some("2026-11-21T23:00:00Z".into()),
            health_reason: Some("HTTP 200".into()),
            host_name: None,
            tags: Vec::new(),
            last_probe: Some(probe),
            local_change: Some("2026-11-21T23:30:00Z".into()),
            name: "rabbit-a".into(),
            probes_ok_in_a_row: 3,
            probes_run: 9,
            slow_start_percent: Some(40),
            weight: 2,
        };
        keys_sorted(&Status {
            listeners: vec![ListenerStatus {
                active_connections: 0,
                listen: "0.0.0.0:5672".into(),
                name: "amqp".into(),
                pool: "rabbitmq".into(),
                sni: vec![],
            }],
            pools: vec![PoolStatus {
                available: 0,
                backends: vec![backend],
                balance: "round_robin".into(),
                fall: Some(3),
                health_check: Some(ProbeKind::Http),
                min_available: 1,
                name: "rabbitmq".into(),
                on_down: Some("close".into()),
                rebalance: Some(RebalanceStatus {
                    basis: RebalanceBasis::Local,
                    imbalance: 0.5,
                    mode: "on_return".into(),
                    state: RebalanceState::Running,
                }),
                rise: Some(2),
                slow_start: Some("30s".into()),
                total: 1,
            }],
            version: "0.1.0".into(),
        });
        keys_sorted(&DrainAnswer {
            active_connections: 0,
            connecting: 0,
            admin: AdminState::Draining,
            backend: "rabbit-a".into(),
            drain_deadline: None,
            persist_error: Some("disk full".into()),
            persisted: Some(false),
            pool: "rabbitmq".into(),
            quorum_check: Some(QuorumAnswer::Unknown),
            warnings: vec!["not answered".into()],
        });
        keys_sorted(&ErrorBody {
            error: "refused".into(),
            queues: Some(vec!["q".into()]),
            reason: Some(RefusalReason::QuorumCritical),
        });
        keys_sorted(&ReloadAnswer {
            result: "ok".into(),
            summary: "ok".into(),
        });
        keys_sorted(&DrainRequest {
            deadline: Some("5m".into()),
            force: true,
            local: true,
        });
    }
}
