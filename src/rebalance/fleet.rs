//! The fleet's connections as the rebalancer and the balancer read them (`[fleet]`): a task
//! lists the live instances' reports (`PREFIX/instances/`) every report interval, off the data
//! path, keeps the other instances' fresh counts in a small snapshot the rebalancer reads on
//! its tick, and stores each backend's sum in its `elsewhere` counter for least_conn and
//! random_two. This instance's own report is skipped (its live counts are better), and so is a
//! report not rewritten for [`STALE_AFTER`] report intervals, measured on this instance's clock
//! (no clock of another machine is compared). When etcd cannot be read for as long, there is no
//! snapshot: the rebalancer plans on this instance's connections alone and `elsewhere` is 0.
//! It owns the snapshot; it reads etcd through `fleet::instances` and writes nothing there, and
//! it touches routing only through `BackendStats::set_elsewhere`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::plan::Load;
use super::quota::Counts;
use crate::fleet::instances::{Instances, Report};
use crate::state::{self, PoolRoute, Routing};

/// A report (or the last good read of them all) older than this many report intervals is not
/// counted: its instance has not written for that long (it is paused, or cut off from etcd; a
/// dead one's key goes with its lease, at most `lease_ttl` later, and the interval is at most a
/// third of the lease).
pub const STALE_AFTER: u32 = 3;

/// The other instances' connections, by pool, then backend: each instance's count, sorted by
/// instance name.
pub type Others = HashMap<String, HashMap<String, Vec<(String, i64)>>>;

/// The fleet's counts as this instance last read them.
pub struct FleetLoads {
    /// This instance's name (`[fleet] instance`): its own report is skipped.
    instance: String,
    /// How often reports are written and read.
    every: Duration,
    seen: Mutex<Seen>,
}

/// What the reading task keeps between reads.
#[derive(Default)]
struct Seen {
    /// Each other instance's last `at_ms`, and when this instance saw it change.
    changed: HashMap<String, (u64, Instant)>,
    /// The last good read: when, and the fresh reports' counts.
    current: Option<(Instant, Arc<Others>)>,
}

impl FleetLoads {
    /// Counts for `instance`, whose fleet writes its reports every `every`.
    pub fn new(instance: &str, every: Duration) -> Arc<FleetLoads> {
        Arc::new(FleetLoads {
            instance: instance.to_owned(),
            every,
            seen: Mutex::new(Seen::default()),
        })
    }

    /// This instance's name.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// How long the others' reports take to show a change they made (their next report, then
    /// this instance's next read), and two rebalancer ticks: one for the moved clients to
    /// reconnect, one because the others started their parts on their own ticks.
    pub fn settle(&self) -> Duration {
        2 * self.every + 2 * super::TICK
    }

    fn stale_after(&self) -> Duration {
        STALE_AFTER * self.every
    }

    /// The other instances' counts, if the last good read is recent enough.
    pub fn others(&self, now: Instant) -> Option<Arc<Others>> {
        let seen = self.lock();
        let (at, others) = seen.current.as_ref()?;
        (now.saturating_duration_since(*at) < self.stale_after()).then(|| others.clone())
    }

    /// Read the reports every report interval until `stop`.
    pub async fn follow(
        self: Arc<Self>,
        instances: Arc<Instances>,
        routing: Arc<Routing>,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            // Bounded by the interval, so counts that went stale are dropped on time even
            // while etcd does not answer (a read may try several endpoints, each with its own
            // timeout).
            let read = tokio::select! {
                () = stop.cancelled() => return,
                read = tokio::time::timeout(self.every, instances.list()) => read,
            };
            let now = state::now();
            match read {
                Ok(Ok(reports)) => self.update(now, &reports),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "fleet: the instances' reports were not read");
                }
                Err(_) => tracing::debug!("fleet: the instances' reports were not read in time"),
            }
            self.publish(now, &routing);
        }
    }

    /// Keep the fresh counts of `reports`, read at `now`.
    pub(super) fn update(&self, now: Instant, reports: &[Report]) {
        let mut seen = self.lock();
        let others = fold(
            &self.instance,
            reports,
            &mut seen.changed,
            now,
            self.stale_after(),
        );
        seen.current = Some((now, Arc::new(others)));
    }

    /// Store each backend's count elsewhere (0 without a fresh read), and how many other
    /// instances there are.
    fn publish(&self, now: Instant, routing: &Routing) {
        let others = self.others(now);
        let peers = others.as_ref().map_or(0, |o| {
            let names: std::collections::HashSet<&str> = o
                .values()
                .flat_map(|pool| pool.values().flatten().map(|(name, _)| name.as_str()))
                .collect();
            names.len() as i64
        });
        let snapshot = routing.load();
        for (pool, route) in &snapshot.pools {
            let by_backend = others.as_ref().and_then(|o| o.get(&**pool));
            for b in &route.backends {
                let counts = by_backend.and_then(|o| o.get(&*b.name));
                let elsewhere = counts.map_or(0, |c| c.iter().map(|(_, n)| n).sum());
                b.stats.set_elsewhere(elsewhere, peers);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The pool's `local` loads with the other instances' connections added to each backend's.
pub fn with_others(route: &PoolRoute, local: &[Load], others: &Others) -> Vec<Load> {
    let pool = others.get(&*route.name);
    route
        .backends
        .iter()
        .zip(local)
        .map(|(b, load)| {
            let counts = pool.and_then(|p| p.get(&*b.name));
            let elsewhere: i64 = counts.map_or(0, |c| c.iter().map(|(_, n)| (*n).max(0)).sum());
            Load {
                connections: load.connections + elsewhere,
                ..*load
            }
        })
        .collect()
}

/// Each backend's connections per instance: `me`'s from the `local` loads, the others'.
pub fn counts(route: &PoolRoute, local: &[Load], me: &str, others: &Others) -> Counts {
    let pool = others.get(&*route.name);
    route
        .backends
        .iter()
        .zip(local)
        .map(|(b, load)| {
            let mut counts = vec![(me.to_owned(), load.connections)];
            if let Some(theirs) = pool.and_then(|p| p.get(&*b.name)) {
                counts.extend(theirs.iter().cloned());
            }
            (b.name.clone(), counts)
        })
        .collect()
}

/// The counts of the reports of instances other than `me` that changed within `stale_after`
/// of `now` (a report seen for the first time counts as changed now). `changed` keeps each
/// instance's last `at_ms` and when it changed; instances no longer listed are forgotten.
fn fold(
    me: &str,
    reports: &[Report],
    changed: &mut HashMap<String, (u64, Instant)>,
    now: Instant,
    stale_after: Duration,
) -> Others {
    changed.retain(|name, _| reports.iter().any(|r| &r.instance == name));
    let mut others = Others::new();
    for report in reports.iter().filter(|r| r.instance != me) {
        let entry = changed
            .entry(report.instance.clone())
            .or_insert((report.at_ms, now));
        if entry.0 != report.at_ms {
            *entry = (report.at_ms, now);
        }
        if now.saturating_duration_since(entry.1) >= stale_after {
            continue;
        }
        for b in &report.backends {
            others
                .entry(b.pool.clone())
                .or_default()
                .entry(b.backend.clone())
                .or_default()
                .push((report.instance.clone(), b.active_connections));
        }
    }
    for backends in others.values_mut() {
        for counts in backends.values_mut() {
            counts.sort();
        }
    }
    others
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AdminState, Health};
    use crate::fleet::instances::BackendReport;

    fn report(instance: &str, at_ms: u64, counts: &[(&str, i64)]) -> Report {
        Report {
            instance: instance.into(),
            version: "0.1.0".into(),
            at_ms,
            backends: counts
                .iter()
                .map(|(backend, n)| BackendReport {
                    pool: "p".into(),
                    backend: (*backend).into(),
                    active_connections: *n,
                    health: Health::Up,
                    admin: AdminState::Active,
                    local: false,
                })
                .collect(),
        }
    }

    #[test]
    fn own_and_stale_reports_are_left_out() {
        let stale_after = Duration::from_secs(6);
        let t0 = Instant::now();
        let mut changed = HashMap::new();
        let reports = [
            report("b", 1000, &[("x", 3), ("y", 1)]),
            report("a", 1000, &[("x", 50)]),
            report("c", 1000, &[("x", 2)]),
        ];
        let others = fold("a", &reports, &mut changed, t0, stale_after);
        assert_eq!(
            others["p"]["x"],
            vec![("b".to_owned(), 3), ("c".to_owned(), 2)]
        );
        assert_eq!(others["p"]["y"], vec![("b".to_owned(), 1)]);
        // 4 s on, b rewrote its report and c did not: both count.
        let later = [
            report("b", 5000, &[("x", 4)]),
            report("a", 5000, &[("x", 50)]),
            report("c", 1000, &[("x", 2)]),
        ];
        let t1 = t0 + Duration::from_secs(4);
        let others = fold("a", &later, &mut changed, t1, stale_after);
        assert_eq!(others["p"]["x"].len(), 2);
        // 6 s after c's last change: c is left out, b (changed at 4 s) stays.
        let t2 = t0 + stale_after;
        let others = fold("a", &later, &mut changed, t2, stale_after);
        assert_eq!(others["p"]["x"], vec![("b".to_owned(), 4)]);
        // c gone from the listing is forgotten: listed again, it counts from then.
        fold("a", &later[..2], &mut changed, t2, stale_after);
        assert!(!changed.contains_key("c"));
        let others = fold("a", &later, &mut changed, t2, stale_after);
        assert_eq!(others["p"]["x"].len(), 2);
    }

    #[test]
    fn no_read_for_three_intervals_is_no_snapshot() {
        let every = Duration::from_secs(2);
        let loads = FleetLoads::new("a", every);
        let t0 = Instant::now();
        assert!(loads.others(t0).is_none());
        loads.update(t0, &[report("b", 1, &[("x", 1)])]);
        assert!(loads.others(t0 + 5 * Duration::from_secs(1)).is_some());
        assert!(loads.others(t0 + 3 * every).is_none());
        assert_eq!(loads.settle(), Duration::from_secs(6));
    }
}
