//! The fleet's drains in etcd: one key per drained backend, `PREFIX/drains/POOL/BACKEND`, whose
//! value says how (draining, with its deadline to the millisecond) and who asked (instance,
//! forced or not); an undrain deletes it. Each pool has a version key, `PREFIX/pools/POOL`,
//! rewritten by every change to the pool's drains: a change is one transaction that compares
//! the version keys of its pools with what its check read, so two changes checked against the
//! same state cannot both be written (the second re-reads and is checked again). What the
//! check is (min_available, max_draining) is the caller's; this module only keeps the state and
//! its order. It must not touch routing or the admin API.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::etcd::{Compare, EtcdClient, EtcdError, Event, EventKind, TxnOp, Watch};

/// How many times a change is checked again after a concurrent one got in first.
const TRIES: usize = 8;

/// A drain as the fleet keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetDrain {
    /// When its remaining connections are closed (Unix milliseconds); `None`: never.
    pub deadline_ms: Option<u64>,
    /// The instance that drained it.
    pub by: String,
    /// Drained with `force` (past the checks).
    pub forced: bool,
    /// When (Unix milliseconds).
    pub at_ms: u64,
}

impl FleetDrain {
    /// The deadline as a wall-clock time.
    pub fn deadline(&self) -> Option<SystemTime> {
        self.deadline_ms
            .map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
    }
}

/// A backend by pool and name, as the fleet's keys name it.
pub type Name = (String, String);

/// The fleet's drains at one revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drains {
    pub drains: BTreeMap<Name, FleetDrain>,
    /// The store's revision when they were read: a watch from `revision + 1` misses nothing.
    pub revision: i64,
}

/// A change to the fleet's drains, as the watch reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Drained(Name, FleetDrain),
    Undrained(Name),
}

/// Why a change was not written.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The store did not answer (or answered with an error).
    #[error("the fleet's store (etcd) did not take the change: {0}")]
    Store(#[from] EtcdError),
    /// The caller's check refused it against the fleet's drains.
    #[error("{0}")]
    Refused(String),
    /// Changes kept getting in first.
    #[error(
        "the fleet's drains of pool(s) {0} kept changing while this change was checked; try again"
    )]
    Contended(String),
}

/// The fleet's drains in one etcd cluster, under one prefix.
#[derive(Clone, Debug)]
pub struct FleetDrains {
    client: EtcdClient,
    prefix: String,
    instance: String,
}

impl FleetDrains {
    /// The drains under `prefix` (which ends with `/`), written as `instance`.
    pub fn new(client: EtcdClient, prefix: &str, instance: &str) -> FleetDrains {
        FleetDrains {
            client,
            prefix: prefix.to_owned(),
            instance: instance.to_owned(),
        }
    }

    fn drains_prefix(&self) -> String {
        format!("{}drains/", self.prefix)
    }

    fn drain_key(&self, (pool, backend): &Name) -> String {
        format!("{}drains/{pool}/{backend}", self.prefix)
    }

    fn pool_key(&self, pool: &str) -> String {
        format!("{}pools/{pool}", self.prefix)
    }

    /// Every drain of the fleet now.
    pub async fn load(&self) -> Result<Drains, EtcdError> {
        let answer = self
            .client
            .get_prefix(self.drains_prefix().as_bytes())
            .await?;
        let mut drains = BTreeMap::new();
        for kv in &answer.kvs {
            if let Some((name, drain)) = self.decode(&kv.key, &kv.value) {
                drains.insert(name, drain);
            }
        }
        Ok(Drains {
            drains,
            revision: answer.revision,
        })
    }

    /// A drain key and value as this module wrote them; `None` (logged) for anything else.
    fn decode(&self, key: &[u8], value: &[u8]) -> Option<(Name, FleetDrain)> {
        let name = self.name_of(key)?;
        match serde_json::from_slice(value) {
            Ok(drain) => Some((name, drain)),
            Err(e) => {
                tracing::warn!(key = %String::from_utf8_lossy(key), error = %e,
                    "fleet: a drain in etcd that warren cannot read; ignored");
                None
            }
        }
    }

    fn name_of(&self, key: &[u8]) -> Option<Name> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key.strip_prefix(&self.drains_prefix())?;
        let (pool, backend) = rest.split_once('/')?;
        Some((pool.to_owned(), backend.to_owned()))
    }

    /// Drain `names` (with `deadline`, `forced`) as one change, if `check` lets it through
    /// against the fleet's drains as they are: `check` gets them and answers a refusal. A
    /// concurrent change to the same pools makes it read and check again.
    pub async fn drain(
        &self,
        names: &[Name],
        deadline: Option<SystemTime>,
        forced: bool,
        check: impl Fn(&Drains) -> Result<(), String>,
    ) -> Result<Drains, FleetError> {
        let now = unix_ms(SystemTime::now());
        let drain = FleetDrain {
            deadline_ms: deadline.map(unix_ms),
            by: self.instance.clone(),
            forced,
            at_ms: now,
        };
        let value = serde_json::to_vec(&drain).expect("a drain serializes");
        self.change(names, check, |me, name, ops| {
            ops.push(TxnOp::put(me.drain_key(name).as_bytes(), &value, None));
        })
        .await
    }

    /// Undrain `names` as one change (idempotent).
    pub async fn undrain(&self, names: &[Name]) -> Result<Drains, FleetError> {
        self.change(
            names,
            |_| Ok(()),
            |me, name, ops| ops.push(TxnOp::delete(me.drain_key(name).as_bytes())),
        )
        .await
    }

    /// One change of `names`' drains, checked and written atomically: read the drains and
    /// the version keys of the pools, check, then write the change with the version keys
    /// bumped, if the version keys are still what was read. Returns the drains after it.
    async fn change(
        &self,
        names: &[Name],
        check: impl Fn(&Drains) -> Result<(), String>,
        op: impl Fn(&Self, &Name, &mut Vec<TxnOp>),
    ) -> Result<Drains, FleetError> {
        let mut pools: Vec<&str> = names.iter().map(|(p, _)| p.as_str()).collect();
        pools.sort_unstable();
        pools.dedup();
        for _ in 0..TRIES {
            // The versions first: a change after this read is caught by the compare.
            let mut versions = Vec::with_capacity(pools.len());
            for pool in &pools {
                let read = self.client.get(self.pool_key(pool).as_bytes()).await?;
                versions.push(read.kvs.first().map_or(0, |kv| kv.mod_revision));
            }
            let mut drains = self.load().await?;
            check(&drains).map_err(FleetError::Refused)?;
            let compares: Vec<Compare> = pools
                .iter()
                .zip(&versions)
                .map(|(pool, version)| match version {
                    0 => Compare::absent(self.pool_key(pool).as_bytes()),
                    v => Compare::mod_revision_is(self.pool_key(pool).as_bytes(), *v),
                })
                .collect();
            let mut ops = Vec::new();
            for name in names {
                op(self, name, &mut ops);
            }
            for pool in &pools {
                ops.push(TxnOp::put(
                    self.pool_key(pool).as_bytes(),
                    self.instance.as_bytes(),
                    None,
                ));
            }
            let answer = self.client.txn(&compares, &ops, &[]).await?;
            if answer.succeeded {
                drains.revision = answer.revision;
                return Ok(drains);
            }
        }
        Err(FleetError::Contended(pools.join(", ")))
    }

    /// Follow the fleet's drains from `revision + 1` on (see [`Drains::revision`]).
    pub fn watch(&self, revision: i64) -> Watch {
        self.client
            .watch_prefix(self.drains_prefix().as_bytes(), revision + 1)
    }

    /// What a watched event means for the drains (`None`: a key that is not a drain).
    pub fn change_of(&self, event: &Event) -> Option<Change> {
        match event.kind {
            EventKind::Put => self
                .decode(&event.key, &event.value)
                .map(|(name, drain)| Change::Drained(name, drain)),
            EventKind::Delete => self.name_of(&event.key).map(Change::Undrained),
        }
    }
}

/// Unix milliseconds of `t` (0 before 1970).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> FleetDrains {
        let client = EtcdClient::new(&["http://127.0.0.1:1"], Duration::from_secs(1), None, None)
            .expect("a client");
        FleetDrains::new(client, "/warren/", "a")
    }

    #[test]
    fn keys_name_their_backend_and_nothing_else() {
        let s = store();
        let name = ("rabbitmq".to_owned(), "rabbit-1".to_owned());
        assert_eq!(s.drain_key(&name), "/warren/drains/rabbitmq/rabbit-1");
        assert_eq!(s.name_of(b"/warren/drains/rabbitmq/rabbit-1"), Some(name));
        assert_eq!(s.name_of(b"/warren/pools/rabbitmq"), None);
        assert_eq!(s.name_of(b"/other/drains/p/b"), None);
        assert_eq!(s.name_of(b"/warren/drains/nobackend"), None);
    }

    #[test]
    fn watched_events_become_changes() {
        let s = store();
        let drain = FleetDrain {
            deadline_ms: Some(1_700_000_000_123),
            by: "b".into(),
            forced: false,
            at_ms: 1_700_000_000_000,
        };
        let put = Event {
            kind: EventKind::Put,
            key: b"/warren/drains/p/x".to_vec(),
            value: serde_json::to_vec(&drain).unwrap(),
            mod_revision: 7,
            create_revision: 7,
        };
        assert_eq!(
            s.change_of(&put),
            Some(Change::Drained(("p".into(), "x".into()), drain.clone()))
        );
        let gone = Event {
            kind: EventKind::Delete,
            value: Vec::new(),
            ..put.clone()
        };
        assert_eq!(
            s.change_of(&gone),
            Some(Change::Undrained(("p".into(), "x".into())))
        );
        let garbage = Event {
            value: b"{".to_vec(),
            ..put
        };
        assert_eq!(s.change_of(&garbage), None);
        assert_eq!(
            drain.deadline(),
            Some(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123))
        );
    }
}
