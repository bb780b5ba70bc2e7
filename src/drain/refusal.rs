//! Why a drain is refused: the typed [`DrainError`] whose messages are the admin API's
//! `error` texts, and the verdicts of RabbitMQ's quorum check on one backend and on a set,
//! each logged. Pure: it asks nobody ([`super::Drainer`] does) and changes nothing.

use std::time::Duration;

use crate::api::QuorumAnswer;
use crate::health::probe::QuorumCheck;
use crate::state::BackendId;

use super::MAX_DRAIN_DEADLINE;

/// Why a drain or undrain was refused. The messages are the API's `error` texts.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DrainError {
    #[error("no backend {} in pool {}", .0.backend, .0.pool)]
    NotFound(BackendId),
    #[error(
        "draining {} would leave {left} available primary backend(s) in pool {}, \
         fewer than min_available = {min_available}; drain it when another backend is back, \
         or force it (force: true in the API, --force in warren ctl)",
        .id.backend, .id.pool
    )]
    MinAvailable {
        id: BackendId,
        left: usize,
        min_available: usize,
    },
    /// A set drain whose backends together would leave a pool short.
    #[error(
        "draining {} together would leave {left} available primary backend(s) in pool {pool}, \
         fewer than min_available = {min_available}; drain fewer at once, or force it \
         (force: true in the API, --force in warren ctl)",
        .backends.join(", ")
    )]
    MinAvailableSet {
        pool: String,
        backends: Vec<String>,
        left: usize,
        min_available: usize,
    },
    /// A set with no backend in it.
    #[error("no backend to drain or undrain: the set is empty")]
    EmptySet,
    #[error(
        "deadline {deadline}: too long: at most {max} (omit the deadline to let connections \
         run until they close)",
        deadline = humantime::format_duration(*.deadline),
        max = humantime::format_duration(MAX_DRAIN_DEADLINE)
    )]
    DeadlineTooLong { deadline: Duration },
    /// RabbitMQ says stopping the node would cost these queues their quorum.
    #[error(
        "{id} is quorum-critical, RabbitMQ says: {reason} ({}); drain it once those queues have \
         enough replicas online, or force it (force: true in the API, --force in warren ctl)",
        .queues.join(", ")
    )]
    QuorumCritical {
        id: BackendId,
        reason: String,
        queues: Vec<String>,
    },
    /// RabbitMQ's replica lists say the set (with the backends already out) would cost these
    /// queues their quorum, though each node alone may be safe.
    #[error(
        "draining {}{} would cost quorum queues or streams their quorum: {reason} ({}); drain \
         fewer at once (undrain what is back first), or force it (force: true in the API, \
         --force in warren ctl)",
        .backends.join(", "),
        already_out(.out),
        .queues.join("; ")
    )]
    QuorumCriticalSet {
        backends: Vec<String>,
        out: Vec<String>,
        reason: String,
        queues: Vec<String>,
    },
    /// The set's quorum check got an answer that is not a queue list (401, a proxy's page).
    #[error(
        "the quorum check of {} as a set got an unexpected answer from RabbitMQ's management \
         API: {why}; fix the management credentials (the user needs the monitoring tag) or \
         force the drain (force: true in the API, --force in warren ctl)",
        .backends.join(", ")
    )]
    QuorumSetCheckFailed { backends: Vec<String>, why: String },
    /// The management API answered, but not as the check does (401, 404, an HTML page).
    #[error(
        "the quorum check of {id} got an unexpected answer from RabbitMQ's management API: \
         {why}; fix the pool's http probe (user, password) or force the drain (force: true in \
         the API, --force in warren ctl)"
    )]
    QuorumCheckFailed { id: BackendId, why: String },
    /// `[fleet]`: the fleet's store did not take the change (nothing changed anywhere).
    #[error("{0}; nothing changed: send it again once etcd answers")]
    FleetUnavailable(String),
    /// `[fleet]`: the fleet-wide check refused it.
    #[error("{0}")]
    FleetRefused(String),
}

/// How a set refusal names the backends already out: ` with X, Y already draining or drained`.
fn already_out(out: &[String]) -> String {
    if out.is_empty() {
        String::new()
    } else {
        format!(" with {} already draining or drained", out.join(", "))
    }
}

/// The quorum check's verdict on a drain of `id`: go ahead (with a warning when nobody
/// answered), or the refusal. Each refusal and the warning are logged.
pub(super) fn judge_quorum(
    id: &BackendId,
    check: QuorumCheck,
) -> Result<(QuorumAnswer, Option<String>), DrainError> {
    let (pool, backend) = (&*id.pool, &*id.backend);
    match check {
        QuorumCheck::NotApplicable => Ok((QuorumAnswer::NotApplicable, None)),
        QuorumCheck::Safe => Ok((QuorumAnswer::Safe, None)),
        QuorumCheck::Unknown(why) => {
            tracing::warn!(
                pool,
                backend,
                why,
                "quorum check not answered; draining anyway"
            );
            let warning =
                format!("the quorum check of {backend} was not answered ({why}); drained anyway");
            Ok((QuorumAnswer::Unknown, Some(warning)))
        }
        QuorumCheck::Critical { reason, queues } => {
            tracing::warn!(pool = %pool, backend = %backend, %reason, queues = %queues.join(", "), "drain refused: quorum-critical");
            Err(DrainError::QuorumCritical {
                id: id.clone(),
                reason,
                queues,
            })
        }
        QuorumCheck::Unexpected(why) => {
            tracing::warn!(
                pool,
                backend,
                why,
                "drain refused: the quorum check got an unexpected answer"
            );
            Err(DrainError::QuorumCheckFailed {
                id: id.clone(),
                why,
            })
        }
    }
}

/// The set quorum check's verdict on draining `new` while `out` are already draining or
/// drained: go ahead (with a warning when nobody answered), or the refusal, logged.
pub(super) fn judge_set(
    new: &[&BackendId],
    out: &[BackendId],
    check: QuorumCheck,
) -> Result<Option<String>, DrainError> {
    // A node in several pools is one name.
    let names = |ids: &mut dyn Iterator<Item = &BackendId>| {
        let mut names: Vec<String> = Vec::new();
        for id in ids {
            if !names.iter().any(|n| *n == *id.backend) {
                names.push(id.backend.to_string());
            }
        }
        names
    };
    let backends = names(&mut new.iter().copied());
    let out = names(&mut out.iter());
    match check {
        QuorumCheck::NotApplicable => Ok(None),
        QuorumCheck::Safe => {
            tracing::info!(backends = %backends.join(", "), out = %out.join(", "), "quorum check of the set: safe");
            Ok(None)
        }
        QuorumCheck::Unknown(why) => {
            tracing::warn!(backends = %backends.join(", "), why, "quorum check of the set not answered; draining anyway");
            Ok(Some(format!(
                "the quorum check of {} with the backends already out was not answered ({why}); \
                 drained anyway",
                backends.join(", ")
            )))
        }
        QuorumCheck::Critical { reason, queues } => {
            tracing::warn!(backends = %backends.join(", "), out = %out.join(", "), %reason, queues = %queues.join(", "), "drain refused: the set is quorum-critical");
            Err(DrainError::QuorumCriticalSet {
                backends,
                out,
                reason,
                queues,
            })
        }
        QuorumCheck::Unexpected(why) => {
            tracing::warn!(backends = %backends.join(", "), why, "drain refused: the set's quorum check got an unexpected answer");
            Err(DrainError::QuorumSetCheckFailed { backends, why })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The quorum check's verdicts, with the API's texts word for word (tests/cluster.rs and
    /// `warren ctl upgrade` read them).
    #[test]
    fn the_quorum_check_refuses_or_lets_through() {
        let id = BackendId::new("rabbitmq", "rabbit-a");
        type Case = (
            QuorumCheck,
            Result<(QuorumAnswer, Option<&'static str>), &'static str>,
        );
        let cases: Vec<Case> = vec![
            (QuorumCheck::NotApplicable, Ok((QuorumAnswer::NotApplicable, None))),
            (QuorumCheck::Safe, Ok((QuorumAnswer::Safe, None))),
            (
                QuorumCheck::Unknown("connection refused".into()),
                Ok((
                    QuorumAnswer::Unknown,
                    Some("the quorum check of rabbit-a was not answered (connection refused); drained anyway"),
                )),
            ),
            (
                QuorumCheck::Critical {
                    reason: "There are quorum queues that would lose their quorum".into(),
                    queues: vec!["queue 'a' in vhost '/'".into(), "b".into()],
                },
                Err("rabbit-a (pool rabbitmq) is quorum-critical, RabbitMQ says: There are quorum \
                     queues that would lose their quorum (queue 'a' in vhost '/', b); drain it once \
                     those queues have enough replicas online, or force it (force: true in the \
                     API, --force in warren ctl)"),
            ),
            (
                QuorumCheck::Unexpected("HTTP 401: nope".into()),
                Err("the quorum check of rabbit-a (pool rabbitmq) got an unexpected answer from \
                     RabbitMQ's management API: HTTP 401: nope; fix the pool's http probe (user, \
                     password) or force the drain (force: true in the API, --force in warren ctl)"),
            ),
        ];
        for (check, want) in cases {
            let got = judge_quorum(&id, check.clone());
            match (got, want) {
                (Ok((answer, warning)), Ok((want_answer, want_warning))) => {
                    assert_eq!(answer, want_answer, "{check:?}");
                    assert_eq!(warning.as_deref(), want_warning, "{check:?}");
                }
                (Err(e), Err(message)) => assert_eq!(e.to_string(), message, "{check:?}"),
                (got, _) => panic!("{check:?}: {got:?}"),
            }
        }
    }

    /// The set check's verdicts: the refusal names the set, the backends already out and what
    /// each queue would keep; a node in two pools is named once.
    #[test]
    fn the_set_quorum_check_refuses_or_lets_through() {
        let a = BackendId::new("rabbitmq", "rabbit-a");
        let a_admin = BackendId::new("management", "rabbit-a");
        let b = BackendId::new("rabbitmq", "rabbit-b");
        let c = BackendId::new("rabbitmq", "rabbit-c");
        let critical = || QuorumCheck::Critical {
            reason: "stopping rabbit@a, rabbit@b together would leave quorum queues or streams \
                     without a majority of their replicas online"
                .into(),
            queues: vec!["queue 'o' in vhost '/' would keep 1 of 3 replicas online".into()],
        };
        assert_eq!(judge_set(&[&a, &b], &[], QuorumCheck::Safe), Ok(None));
        assert_eq!(
            judge_set(&[&a, &b], &[], QuorumCheck::NotApplicable),
            Ok(None)
        );
        assert_eq!(
            judge_set(
                &[&a, &a_admin],
                &[],
                QuorumCheck::Unknown("timed out".into())
            ),
            Ok(Some(
                "the quorum check of rabbit-a with the backends already out was not answered \
                 (timed out); drained anyway"
                    .into()
            ))
        );
        assert_eq!(
            judge_set(&[&a, &a_admin, &b], &[], critical())
                .unwrap_err()
                .to_string(),
            "draining rabbit-a, rabbit-b would cost quorum queues or streams their quorum: \
             stopping rabbit@a, rabbit@b together would leave quorum queues or streams without \
             a majority of their replicas online (queue 'o' in vhost '/' would keep 1 of 3 \
             replicas online); drain fewer at once (undrain what is back first), or force it \
             (force: true in the API, --force in warren ctl)"
        );
        assert!(judge_set(&[&a], std::slice::from_ref(&c), critical())
            .unwrap_err()
            .to_string()
            .starts_with("draining rabbit-a with rabbit-c already draining or drained would"));
        assert_eq!(
            judge_set(
                &[&a, &b],
                &[],
                QuorumCheck::Unexpected("HTTP 401: no".into())
            ),
            Err(DrainError::QuorumSetCheckFailed {
                backends: vec!["rabbit-a".into(), "rabbit-b".into()],
                why: "HTTP 401: no".into()
            })
        );
    }

    #[test]
    fn refusals_name_the_backend_as_before() {
        let id = BackendId::new("p", "b");
        assert_eq!(
            DrainError::NotFound(id.clone()).to_string(),
            "no backend b in pool p"
        );
        assert_eq!(
            DrainError::MinAvailable {
                id,
                left: 0,
                min_available: 1
            }
            .to_string(),
            "draining b would leave 0 available primary backend(s) in pool p, fewer than \
             min_available = 1; drain it when another backend is back, or force it (force: true \
             in the API, --force in warren ctl)"
        );
    }
}
