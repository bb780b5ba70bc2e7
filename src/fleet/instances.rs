//! The fleet's instances in etcd: each instance keeps `PREFIX/instances/NAME` under a lease of
//! its own, rewritten with a fresh report every few seconds (what it serves, per backend: its
//! connections, health and admin state as it sees them) and kept alive by the same beat; when
//! it stops the lease is revoked, when it dies the lease expires and its key goes with it. What
//! a report holds is the caller's (plain JSON here); this module only keeps it alive and lists
//! the live ones. It must not touch routing or the admin API.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::etcd::{EtcdClient, EtcdError};

/// One instance's report as it publishes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub instance: String,
    pub version: String,
    /// When it was written (Unix milliseconds).
    pub at_ms: u64,
    pub backends: Vec<BackendReport>,
}

/// One backend as an instance sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendReport {
    pub pool: String,
    pub backend: String,
    pub active_connections: i64,
    pub health: crate::api::Health,
    pub admin: crate::api::AdminState,
    /// Its admin state on that instance is a local change, apart from the fleet's drains.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub local: bool,
}

/// This instance's registration.
#[derive(Clone, Debug)]
pub struct Instances {
    client: EtcdClient,
    prefix: String,
    instance: String,
    ttl: Duration,
}

impl Instances {
    pub fn new(client: EtcdClient, prefix: &str, instance: &str, ttl: Duration) -> Instances {
        Instances {
            client,
            prefix: prefix.to_owned(),
            instance: instance.to_owned(),
            ttl,
        }
    }

    fn key(&self) -> String {
        format!("{}instances/{}", self.prefix, self.instance)
    }

    /// How often the report is rewritten: a third of the lease, at most every 2 s.
    pub fn every(&self) -> Duration {
        (self.ttl / 3).min(Duration::from_secs(2))
    }

    /// Publish `report()` under a lease every [`Instances::every`] until `stop`, then revoke
    /// the lease. A lease lost (etcd restarted long enough, a pause past the TTL) is granted
    /// again; etcd unreachable only delays the next report. Once `handed` (a `warren upgrade`
    /// gave everything to a new process, which reports under the same name and its own lease)
    /// it stops without revoking: a revoke would delete the key if this process wrote it last,
    /// and the instance would vanish from the fleet until the new one's next report. Left
    /// alone, the old lease expires with no key on it.
    pub async fn run(
        &self,
        report: impl Fn() -> Report,
        stop: CancellationToken,
        handed: CancellationToken,
    ) {
        let mut lease = None;
        let mut tick = tokio::time::interval(self.every());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                // Handed over wins when both are set: a revoke could delete the key.
                biased;
                () = handed.cancelled() => return,
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            match self.beat(&mut lease, &report()).await {
                Ok(()) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "fleet: this instance's report was not written");
                }
            }
        }
        if let Some(id) = lease {
            let _ = self.client.lease_revoke(id).await;
        }
    }

    /// One beat: keep the lease alive (or get one), write the report under it.
    async fn beat(&self, lease: &mut Option<i64>, report: &Report) -> Result<(), EtcdError> {
        let alive = match *lease {
            Some(id) => match self.client.lease_keepalive_once(id).await {
                Ok(ttl) if ttl > 0 => Some(id),
                Ok(_) | Err(EtcdError::LeaseGone { .. }) => None,
                Err(e) => return Err(e),
            },
            None => None,
        };
        let id = match alive {
            Some(id) => id,
            None => {
                let granted = self.client.lease_grant(self.ttl).await?;
                tracing::info!(instance = %self.instance, lease = granted.id, ttl_s = granted.ttl,
                    "fleet: registered this instance");
                granted.id
            }
        };
        *lease = Some(id);
        let value = serde_json::to_vec(report).expect("a report serializes");
        self.client
            .put(self.key().as_bytes(), &value, Some(id))
            .await?;
        Ok(())
    }

    /// Every live instance's last report, by name.
    pub async fn list(&self) -> Result<Vec<Report>, EtcdError> {
        let prefix = format!("{}instances/", self.prefix);
        let answer = self.client.get_prefix(prefix.as_bytes()).await?;
        Ok(answer
            .kvs
            .iter()
            .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
            .collect())
    }
}
