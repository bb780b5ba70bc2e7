//! The fleet as `GET /v1/fleet` shows it: the live instances' reports folded into one view per
//! backend (the fleet's connection total, what each instance sees, and where they disagree).
//! Pure.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use super::instances::Report;
use crate::api::{FleetBackend, FleetBackendView, FleetInstance, FleetStatus};

/// The view `instance` answers with, from the live instances' `reports`.
pub fn status(instance: String, reports: &[Report]) -> FleetStatus {
    let mut instances: Vec<FleetInstance> = reports
        .iter()
        .map(|r| FleetInstance {
            instance: r.instance.clone(),
            reported: humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(r.at_ms))
                .to_string(),
            version: r.version.clone(),
        })
        .collect();
    instances.sort_by(|a, b| a.instance.cmp(&b.instance));
    let mut by_backend: BTreeMap<(String, String), Vec<FleetBackendView>> = BTreeMap::new();
    for r in reports {
        for b in &r.backends {
            by_backend
                .entry((b.pool.clone(), b.backend.clone()))
                .or_default()
                .push(FleetBackendView {
                    active_connections: b.active_connections,
                    admin: b.admin,
                    health: b.health,
                    instance: r.instance.clone(),
                    local: b.local,
                });
        }
    }
    let backends = by_backend
        .into_iter()
        .map(|((pool, backend), mut views)| {
            views.sort_by(|a, b| a.instance.cmp(&b.instance));
            FleetBackend {
                active_connections: views.iter().map(|v| v.active_connections).sum(),
                backend,
                disagreement: disagreement(&views),
                instances: views,
                pool,
            }
        })
        .collect();
    FleetStatus {
        backends,
        instance,
        instances,
        store: "ok".into(),
    }
}

/// Who sees what, when the instances do not agree on a backend's health or admin state.
fn disagreement(views: &[FleetBackendView]) -> Option<String> {
    let differs = |f: &dyn Fn(&FleetBackendView) -> String| {
        let first = views.first().map(f);
        views.iter().any(|v| Some(f(v)) != first)
    };
    let health = |v: &FleetBackendView| format!("{:?}", v.health).to_lowercase();
    let admin = |v: &FleetBackendView| format!("{:?}", v.admin).to_lowercase();
    let mut parts = Vec::new();
    if differs(&health) {
        let seen: Vec<String> = views
            .iter()
            .map(|v| format!("{} sees {}", v.instance, health(v)))
            .collect();
        parts.push(format!("health: {}", seen.join(", ")));
    }
    if differs(&admin) {
        let seen: Vec<String> = views
            .iter()
            .map(|v| {
                let local = if v.local { " (local)" } else { "" };
                format!("{} has it {}{local}", v.instance, admin(v))
            })
            .collect();
        parts.push(format!("admin: {}", seen.join(", ")));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AdminState, Health};
    use crate::fleet::instances::BackendReport;

    fn report(instance: &str, health: Health, active: i64) -> Report {
        Report {
            instance: instance.into(),
            version: "0.1.0".into(),
            at_ms: 1_700_000_000_000,
            backends: vec![BackendReport {
                pool: "p".into(),
                backend: "b1".into(),
                active_connections: active,
                health,
                admin: AdminState::Active,
                local: false,
            }],
        }
    }

    #[test]
    fn totals_add_up_and_a_disagreement_names_who_sees_what() {
        let agree = status(
            "a".into(),
            &[report("b", Health::Up, 3), report("a", Health::Up, 4)],
        );
        assert_eq!(agree.instances.len(), 2);
        assert_eq!(agree.instances[0].instance, "a");
        assert_eq!(agree.backends[0].active_connections, 7);
        assert_eq!(agree.backends[0].disagreement, None);
        let split = status(
            "a".into(),
            &[report("a", Health::Up, 1), report("b", Health::Down, 0)],
        );
        assert_eq!(
            split.backends[0].disagreement.as_deref(),
            Some("health: a sees up, b sees down")
        );
        let mut local = report("b", Health::Up, 0);
        local.backends[0].admin = AdminState::Drained;
        local.backends[0].local = true;
        let apart = status("a".into(), &[report("a", Health::Up, 2), local]);
        assert_eq!(
            apart.backends[0].disagreement.as_deref(),
            Some("admin: a has it active, b has it drained (local)")
        );
        assert!(apart.backends[0].instances[1].local);
    }
}
