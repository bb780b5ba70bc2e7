//! The shared routing view: one [`ArcSwap`] snapshot that holds every listener's settings and
//! every pool's backends with their health and admin state, so the data path sees a consistent
//! picture with a single `load()`. Writers (health, admin, reload) go through [`Routing`]'s
//! methods, which rebuild and publish a new snapshot under one lock. Per-backend counters live in
//! [`BackendStats`], shared across snapshots, because they change per connection, not per event.
//! It owns the backend and pool metric families ([`BackendMetrics`]: connections, connect
//! failures and durations, bytes, `backend_up`, `backend_admin_state`,
//! `pool_available_backends`) and removes a backend's or pool's series when a reload takes it
//! away. It records when a backend becomes available again (health back up, undrained, added
//! by a reload) in the snapshot, where slow start reads it. This module owns no sockets and no
//! timers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use prometheus::{
    Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry,
};
use tokio_util::sync::CancellationToken;

use crate::balance::{self, Selector};
use crate::config::{Config, ListenerConfig, OnDown};
use crate::metrics;
use crate::net::{ByteDirection, ConnectFailure};

pub use crate::api::{AdminState, Health};

/// Which backend: its pool and its name (unique in the pool). Cheap to clone; displayed as the
/// operator's messages name a backend, `rabbit-a (pool rabbitmq)`. Log lines keep `pool` and
/// `backend` as two fields.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendId {
    pub pool: Arc<str>,
    pub backend: Arc<str>,
}

impl BackendId {
    pub fn new(pool: &str, backend: &str) -> BackendId {
        BackendId {
            pool: Arc::from(pool),
            backend: Arc::from(backend),
        }
    }
}

impl std::fmt::Display for BackendId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (pool {})", self.backend, self.pool)
    }
}

/// Counters of one backend, kept across snapshots and reloads (keyed by pool + name).
pub struct BackendStats {
    /// Open proxied connections; with `connecting`, what least_conn and random_two balance on
    /// and what a drain waits for.
    pub active: IntGauge,
    /// Connections selected for this backend whose connect (and preamble) is still under way:
    /// they count against the backend from the moment they are selected, so a drain is not
    /// complete while one is in flight and a burst of accepts does not pile onto one backend.
    pub connecting: IntGauge,
    /// Every claim on the backend, connecting or established: what a drain waits for. One
    /// counter, raised at the claim and lowered when the claim ends, so a reader never sees
    /// a connection in neither state (the two gauges are for display, updated one after
    /// the other with relaxed ordering).
    claims: std::sync::atomic::AtomicI64,
    pub total: IntCounter,
    pub bytes_to_backend: IntCounter,
    pub bytes_to_client: IntCounter,
    pub connect_duration: Histogram,
    /// By [`ConnectFailure::ALL`]'s order (see [`BackendStats::failures`]).
    failures: [IntCounter; ConnectFailure::ALL.len()],
    pub up: IntGauge,
    /// Cancelled to close this backend's connections (a drain deadline, `on_down = "close"`,
    /// a rebalance); a child of the routing's shutdown token, so shutdown closes them too.
    /// Replaced after use.
    close: Mutex<CloseToken>,
    /// Connections that took a rebalance slot and have not ended: the rebalancer does not
    /// count them again.
    leaving: std::sync::atomic::AtomicI64,
    /// `backend_rebalance_closes_total`.
    pub rebalance_closes: IntCounter,
    /// With `[fleet]`: the other live instances' connections to this backend as they last
    /// reported them (0 without `[fleet]` or while etcd cannot be read), so least_conn and
    /// random_two weigh the fleet's load, not only this instance's.
    elsewhere: std::sync::atomic::AtomicI64,
    /// The other live instances at that read, and `total` then: until the next read each of
    /// them is assumed to place connections here as this instance does (see
    /// [`BackendStats::elsewhere`]).
    peers: std::sync::atomic::AtomicI64,
    total_mark: std::sync::atomic::AtomicU64,
}

/// Why warren closed a backend's connections itself.
#[derive(Debug, Clone)]
pub enum CloseCause {
    /// The backend's drain deadline passed.
    DrainDeadline,
    /// Probes marked the backend down in a pool with `on_down = "close"`.
    BackendDown,
    /// The rebalancer offers to close some of the backend's connections (see [`Shed`]): only
    /// those that win a slot close; the others wait on the next token.
    Rebalance(Arc<Shed>),
    /// warren is upgrading itself: connections pause and move to the new process (or resume
    /// here when the upgrade fails). Not a close.
    Handover,
}

impl PartialEq for CloseCause {
    fn eq(&self, other: &CloseCause) -> bool {
        match (self, other) {
            (CloseCause::Rebalance(a), CloseCause::Rebalance(b)) => Arc::ptr_eq(a, b),
            (a, b) => std::mem::discriminant(a) == std::mem::discriminant(b),
        }
    }
}

/// What a connection to a backend watches: a token cancelled to close it, why it was, and the
/// token that replaced it (so a connection that lets a rebalance pass misses no later close).
/// One pointer, so a connection task holding it stays small.
#[derive(Debug, Clone)]
pub struct CloseToken(Arc<CloseInner>);

#[derive(Debug)]
struct CloseInner {
    token: CancellationToken,
    /// Set just before `token` is cancelled by [`BackendStats::close_connections`]; unset when
    /// the cancellation came from shutdown (the parent token).
    cause: OnceLock<CloseCause>,
    /// Set just before `token` is cancelled by [`BackendStats::close_connections`].
    next: OnceLock<CloseToken>,
}

impl CloseToken {
    fn child_of(shutdown: &CancellationToken) -> CloseToken {
        CloseToken(Arc::new(CloseInner {
            token: shutdown.child_token(),
            cause: OnceLock::new(),
            next: OnceLock::new(),
        }))
    }

    /// The token to wait on.
    pub fn token(&self) -> &CancellationToken {
        &self.0.token
    }

    /// Why the backend's connections were closed; `None` before that, or when shutdown did it.
    pub fn cause(&self) -> Option<CloseCause> {
        self.0.cause.get().cloned()
    }

    /// The token that replaced this one when it was cancelled by a close (`None` before, or
    /// when shutdown cancelled it: then every later token is cancelled too).
    pub fn next(&self) -> Option<CloseToken> {
        self.0.next.get().cloned()
    }
}

/// One rebalance round's offer to close some of a backend's connections: `slots` instants,
/// paced by the pool's `max_closes_per_second`, each taken by one connection old enough
/// (established before `established_before`). Connections that find no slot left stay.
#[derive(Debug)]
pub struct Shed {
    slots: Vec<Instant>,
    taken: std::sync::atomic::AtomicUsize,
    established_before: Instant,
}

impl Shed {
    pub fn new(slots: Vec<Instant>, established_before: Instant) -> Shed {
        Shed {
            slots,
            taken: std::sync::atomic::AtomicUsize::new(0),
            established_before,
        }
    }

    /// A slot for a connection established at `established`: when it is to be closed, or
    /// `None` when it is too young or every slot is taken.
    pub fn take(&self, established: Instant) -> Option<Instant> {
        if established >= self.established_before {
            return None;
        }
        let i = self
            .taken
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.slots.get(i).copied()
    }

    /// How many of its slots connections took.
    pub fn taken(&self) -> usize {
        self.taken
            .load(std::sync::atomic::Ordering::Relaxed)
            .min(self.slots.len())
    }

    /// How many slots it offers.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// A connection that took a rebalance slot, counted in its backend's `leaving` until it ends.
/// (`rebalance_closes` counts it when its slot comes and the close starts: a drain deadline or
/// shutdown may close it first, for its own reason.)
pub struct Leaving(Arc<BackendStats>);

impl Leaving {
    pub fn new(stats: &Arc<BackendStats>) -> Leaving {
        stats
            .leaving
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Leaving(stats.clone())
    }
}

impl Drop for Leaving {
    fn drop(&mut self) {
        self.0
            .leaving
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl BackendStats {
    /// Connections open or being set up, as a drain must count them (see `claims`); read after
    /// a `SeqCst` fence that follows the routing change the drain published.
    pub fn claims(&self) -> i64 {
        self.claims.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The token a new connection to this backend watches.
    pub fn close_token(&self) -> CloseToken {
        self.close.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Close every open connection to this backend for `cause`; new ones get a fresh token.
    /// Returns how many were open or connecting (what the operator's log line reports).
    pub fn close_connections(&self, shutdown: &CancellationToken, cause: CloseCause) -> i64 {
        let open = self.active.get() + self.connecting.get();
        self.fire(shutdown, cause);
        open
    }

    /// Cancel the current token for `cause`; returns the token that replaces it.
    pub fn fire(&self, shutdown: &CancellationToken, cause: CloseCause) -> CloseToken {
        let mut close = self.close.lock().unwrap_or_else(|e| e.into_inner());
        let next = CloseToken::child_of(shutdown);
        // Shutdown may have cancelled it already (it is the parent): then that is the cause.
        if !close.token().is_cancelled() {
            let _ = close.0.cause.set(cause);
        }
        let _ = close.0.next.set(next.clone());
        close.token().cancel();
        *close = next.clone();
        next
    }

    /// Connections that took a rebalance slot and have not ended yet.
    pub fn leaving(&self) -> i64 {
        self.leaving.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The other instances' connections to this backend: what they last reported, plus, for
    /// each of them, the connections this instance placed here since. Reports are seconds
    /// old, and in a reconnect storm every instance places at once: counting only the reports,
    /// all of them would fill the same gap (each sending its whole share of the storm to the
    /// backend that looked emptiest); assuming the others do as this one does, each spreads.
    pub fn elsewhere(&self) -> i64 {
        use std::sync::atomic::Ordering::Relaxed;
        let reported = self.elsewhere.load(Relaxed);
        let peers = self.peers.load(Relaxed);
        if peers == 0 {
            return reported;
        }
        let placed = self
            .total
            .get()
            .saturating_sub(self.total_mark.load(Relaxed));
        reported + peers * placed as i64
    }

    /// Set what `peers` other instances last reported for this backend (0, 0: nothing).
    pub fn set_elsewhere(&self, connections: i64, peers: i64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.total_mark.store(self.total.get(), Relaxed);
        self.elsewhere.store(connections, Relaxed);
        self.peers.store(peers, Relaxed);
    }

    /// The counter of connects to this backend that failed for `failure`.
    pub fn failures(&self, failure: ConnectFailure) -> &IntCounter {
        &self.failures[failure as usize]
    }

    fn new(
        metrics: &BackendMetrics,
        pool: &str,
        backend: &str,
        shutdown: &CancellationToken,
    ) -> BackendStats {
        let pb = [pool, backend];
        let bytes = |direction: ByteDirection| {
            metrics
                .bytes_total
                .with_label_values(&[pool, backend, direction.as_str()])
        };
        BackendStats {
            active: metrics.connections_active.with_label_values(&pb),
            connecting: metrics.connections_connecting.with_label_values(&pb),
            claims: std::sync::atomic::AtomicI64::new(0),
            total: metrics.connections_total.with_label_values(&pb),
            bytes_to_backend: bytes(ByteDirection::ToBackend),
            bytes_to_client: bytes(ByteDirection::ToClient),
            connect_duration: metrics.connect_duration_seconds.with_label_values(&pb),
            failures: ConnectFailure::ALL.map(|failure| {
                metrics
                    .connect_failures_total
                    .with_label_values(&[pool, backend, failure.as_str()])
            }),
            up: metrics.up.with_label_values(&pb),
            close: Mutex::new(CloseToken::child_of(shutdown)),
            leaving: std::sync::atomic::AtomicI64::new(0),
            rebalance_closes: metrics.rebalance_closes_total.with_label_values(&pb),
            elsewhere: std::sync::atomic::AtomicI64::new(0),
            peers: std::sync::atomic::AtomicI64::new(0),
            total_mark: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

/// The backend and pool metric families, owned here because routing is what they report:
/// registered once per process, resolved per backend into [`BackendStats`] (outside the data
/// path), and removed with the backends and pools a reload takes away. Cheap to clone.
/// One connection's claim on a backend, from the moment the balancer chose it: counted in
/// `connecting` until [`BackendSlot::established`] moves it to `active`, and given the
/// backend's close token at once, so a drain deadline that fires while the connect is under
/// way closes the connection as soon as it is set up. Dropping it gives the count back.
pub struct BackendSlot {
    stats: Arc<BackendStats>,
    /// Until the connection takes it to watch (`take_close_token`): a connection that kept
    /// its first token for life would keep every token after it alive through `next`.
    close: Option<CloseToken>,
    established: bool,
}

impl BackendSlot {
    /// Claim `stats`'s backend for a connection about to connect.
    pub fn claim(stats: &Arc<BackendStats>) -> BackendSlot {
        stats.connecting.inc();
        stats
            .claims
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        // A drain publishes `draining`, fences, then reads the claims; a claim counts, fences,
        // then reads the routing (the caller re-checks the backend): one sees the other.
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        BackendSlot {
            stats: stats.clone(),
            close: Some(stats.close_token()),
            established: false,
        }
    }

    /// The connect and preamble are done: `connecting` → `active`, never both zero between.
    pub fn established(&mut self) {
        if !self.established {
            self.stats.active.inc();
            self.stats.connecting.dec();
            self.established = true;
        }
    }

    pub fn stats(&self) -> &Arc<BackendStats> {
        &self.stats
    }

    /// Cancelled at a drain deadline, when probes mark the backend down (`on_down = "close"`),
    /// by a rebalance or at the end of the shutdown grace period; it says which. `None` once
    /// taken.
    pub fn close_token(&self) -> Option<&CloseToken> {
        self.close.as_ref()
    }

    /// The close token, for the connection to watch from now on (following `next`).
    pub fn take_close_token(&mut self) -> Option<CloseToken> {
        self.close.take()
    }
}

impl Drop for BackendSlot {
    fn drop(&mut self) {
        self.stats
            .claims
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        if self.established {
            self.stats.active.dec();
        } else {
            self.stats.connecting.dec();
        }
    }
}

#[derive(Clone)]
pub struct BackendMetrics {
    connections_active: IntGaugeVec,
    connections_connecting: IntGaugeVec,
    connections_total: IntCounterVec,
    connect_failures_total: IntCounterVec,
    connect_duration_seconds: HistogramVec,
    bytes_total: IntCounterVec,
    up: IntGaugeVec,
    admin_state: IntGaugeVec,
    rebalance_closes_total: IntCounterVec,
    pool_available: IntGaugeVec,
    pool_imbalance: prometheus::GaugeVec,
}

impl BackendMetrics {
    /// Register the backend and pool families into `registry` (once per process).
    pub fn register(registry: &Registry) -> BackendMetrics {
        let pb = &["pool", "backend"];
        BackendMetrics {
            connections_active: metrics::gauge_vec(
                registry,
                "backend_connections_active",
                "Proxied connections open now",
                pb,
            ),
            connections_connecting: metrics::gauge_vec(
                registry,
                "backend_connections_connecting",
                "Connections selected for the backend whose connect is still under way",
                pb,
            ),
            connections_total: metrics::counter_vec(
                registry,
                "backend_connections_total",
                "Proxied connections established",
                pb,
            ),
            connect_failures_total: metrics::counter_vec(
                registry,
                "backend_connect_failures_total",
                "Failed connects to a backend (refused | timeout | other | closed_early | tls)",
                &["pool", "backend", "reason"],
            ),
            connect_duration_seconds: metrics::histogram_vec(
                registry,
                "backend_connect_duration_seconds",
                "Time to establish a backend connection",
                metrics::CONNECT_BUCKETS,
                pb,
            ),
            bytes_total: metrics::counter_vec(
                registry,
                "backend_bytes_total",
                "Bytes forwarded (to_backend | to_client)",
                &["pool", "backend", "direction"],
            ),
            up: metrics::gauge_vec(
                registry,
                "backend_up",
                "1 when the backend's health is up (or unknown)",
                pb,
            ),
            admin_state: metrics::gauge_vec(
                registry,
                "backend_admin_state",
                "1 on the backend's current admin state (active | draining | drained)",
                &["pool", "backend", "state"],
            ),
            rebalance_closes_total: metrics::counter_vec(
                registry,
                "backend_rebalance_closes_total",
                "Connections the rebalancer closed to move them off the backend",
                pb,
            ),
            pool_available: metrics::gauge_vec(
                registry,
                "pool_available_backends",
                "Backends that may take new connections",
                &["pool"],
            ),
            pool_imbalance: metrics::float_gauge_vec(
                registry,
                "pool_imbalance",
                "The fraction of the pool's connections above their backend's weighted fair \
                 share: what a rebalance would move (0: balanced)",
                &["pool"],
            ),
        }
    }

    /// `backend_admin_state`: 1 on `current`, 0 on the other states.
    fn set_admin_state(&self, pool: &str, backend: &str, current: AdminState) {
        for state in AdminState::ALL {
            self.admin_state
                .with_label_values(&[pool, backend, state.as_str()])
                .set(i64::from(current == state));
        }
    }

    /// Remove every series of a backend a reload took away, so `backend_up 0` or a drained
    /// state does not stay in `/metrics` (and keep an alert firing) for a backend that is gone.
    /// (Its probe series are the health module's to remove.)
    fn remove_backend(&self, pool: &str, backend: &str) {
        let pb = [pool, backend];
        let _ = self.connections_active.remove_label_values(&pb);
        let _ = self.connections_connecting.remove_label_values(&pb);
        let _ = self.connections_total.remove_label_values(&pb);
        let _ = self.connect_duration_seconds.remove_label_values(&pb);
        let _ = self.rebalance_closes_total.remove_label_values(&pb);
        let _ = self.up.remove_label_values(&pb);
        for failure in ConnectFailure::ALL {
            let _ =
                self.connect_failures_total
                    .remove_label_values(&[pool, backend, failure.as_str()]);
        }
        for direction in ByteDirection::ALL {
            let _ = self
                .bytes_total
                .remove_label_values(&[pool, backend, direction.as_str()]);
        }
        for state in AdminState::ALL {
            let _ = self
                .admin_state
                .remove_label_values(&[pool, backend, state.as_str()]);
        }
    }

    /// Remove the series of a pool a reload took away (its backends' go through
    /// [`BackendMetrics::remove_backend`]).
    fn remove_pool(&self, pool: &str) {
        let _ = self.pool_available.remove_label_values(&[pool]);
        let _ = self.pool_imbalance.remove_label_values(&[pool]);
    }
}

/// One backend as the data path sees it in a snapshot.
#[derive(Clone)]
pub struct BackendRoute {
    pub name: Arc<str>,
    pub addr: SocketAddr,
    pub weight: u32,
    pub backup: bool,
    /// Stable identity for source_hash.
    pub key: u64,
    pub health: Health,
    pub admin: AdminState,
    /// When it last became available again (health back up, undrained, added to a running
    /// pool by a reload); `None` while it has been available since its pool was built. Slow
    /// start ramps its share from here.
    pub available_since: Option<Instant>,
    pub stats: Arc<BackendStats>,
    /// `[pool.NAME.tls]`: how the data path reaches it over TLS (`None`: plain TCP).
    pub tls: Option<Arc<crate::config::BackendTls>>,
}

impl BackendRoute {
    /// May this backend take new connections?
    pub fn available(&self) -> bool {
        self.health != Health::Down && self.admin == AdminState::Active
    }

    /// Per mille of its weight it gets `now` in a pool with `slow_start` (see
    /// [`balance::slow_start_share`]).
    pub fn share(&self, now: Instant, slow_start: Duration) -> u32 {
        balance::slow_start_share(self.available_since, now, slow_start)
    }

    fn node(&self, now: Instant, slow_start: Duration) -> balance::Node {
        balance::Node {
            weight: self.weight,
            backup: self.backup,
            available: self.available(),
            // Those being set up count too: a burst of accepts sees each other's choices. With
            // `[fleet]`, so do the other instances' (one relaxed load; 0 without).
            active: (self.stats.active.get() + self.stats.connecting.get()).max(0) as u64
                + self.stats.elsewhere().max(0) as u64,
            key: self.key,
            share: self.share(now, slow_start),
        }
    }
}

/// The clock slow start is measured on: tokio's, so that tests with paused time move it.
pub fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// One pool in a snapshot.
#[derive(Clone)]
pub struct PoolRoute {
    pub name: Arc<str>,
    /// Kept across snapshots of the same pool so round-robin state survives health changes.
    pub selector: Arc<Selector>,
    pub backends: Vec<BackendRoute>,
    /// `slow_start`: how long a returning backend ramps to its full share (zero: off).
    pub slow_start: Duration,
    /// `on_down`: what a backend's open connections get when probes mark it down.
    pub on_down: OnDown,
    /// `warren_pool_available_backends`: available backends, backups included.
    available_gauge: IntGauge,
    /// `warren_pool_imbalance`, set by the rebalancer.
    pub imbalance_gauge: prometheus::Gauge,
}

impl PoolRoute {
    /// Backend indices in order of preference for a client.
    ///
    /// When no backend is available by health, the admin-active ones are offered anyway (a
    /// stale "down" must not refuse every client; NGINX likewise never takes the last server
    /// out). Drained backends are never offered.
    pub fn candidates(&self, client: std::net::IpAddr) -> balance::Candidates {
        let now = now();
        let mut nodes: Vec<balance::Node> = self
            .backends
            .iter()
            .map(|b| b.node(now, self.slow_start))
            .collect();
        let mut rng = rand::thread_rng();
        let candidates = self.selector.candidates(&nodes, client, &mut rng);
        if !candidates.is_empty() {
            return candidates;
        }
        for (node, backend) in nodes.iter_mut().zip(&self.backends) {
            node.available = backend.admin == AdminState::Active;
        }
        self.selector.candidates(&nodes, client, &mut rng)
    }

    /// Backends that may take new connections now.
    pub fn available_count(&self) -> usize {
        self.backends.iter().filter(|b| b.available()).count()
    }

    /// The backend with this name.
    pub fn backend(&self, name: &str) -> Option<&BackendRoute> {
        self.backends.iter().find(|b| &*b.name == name)
    }
}

/// The whole routing view: what one `load()` gives the data path.
pub struct Snapshot {
    pub listeners: HashMap<Arc<str>, Arc<ListenerConfig>>,
    pub pools: HashMap<Arc<str>, PoolRoute>,
}

/// The routing view just before and just after one change.
pub struct Transition {
    pub before: Arc<Snapshot>,
    pub after: Arc<Snapshot>,
}

/// Owner of the published snapshot and of the per-backend state that survives rebuilds.
pub struct Routing {
    current: ArcSwap<Snapshot>,
    /// Counters of backends a reload removed (or never had, see [`Routing::backend_stats`]),
    /// still held by their open connections: an upgrade of warren must reach those too.
    retired: Mutex<Vec<std::sync::Weak<BackendStats>>>,
    /// Cancelled when the shutdown grace period is over: closes every proxied connection.
    shutdown: CancellationToken,
    /// Serialises writers so two events never publish from the same base and lose one.
    writer: Mutex<()>,
    metrics: BackendMetrics,
}

impl Routing {
    /// Build the first snapshot from a config; every backend starts `Unknown` and `Active`.
    pub fn new(config: &Config, metrics: BackendMetrics) -> Routing {
        let shutdown = CancellationToken::new();
        let snapshot = build(config, None, &metrics, &shutdown);
        publish_gauges(&snapshot, &metrics);
        Routing {
            current: ArcSwap::from_pointee(snapshot),
            retired: Mutex::new(Vec::new()),
            shutdown,
            writer: Mutex::new(()),
            metrics,
        }
    }

    /// The token whose cancellation closes every proxied connection (end of the grace period).
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// The current snapshot (the data path's only access).
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// A full reference to the current snapshot, for long-lived holders.
    pub fn load_full(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Publish the routing view of a reloaded config. Backends keep their health, admin state
    /// and counters by pool + name; new ones start `unknown` and `active`; the config's
    /// address and weight win, and a backend whose address changed starts `unknown`. The
    /// metric series of removed backends and pools are removed, so no alert keeps firing on a
    /// backend that is gone.
    pub fn reload(&self, config: &Config) {
        let _guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.current.load_full();
        let next = build(config, Some(&old), &self.metrics, &self.shutdown);
        publish_gauges(&next, &self.metrics);
        for (name, pool) in &old.pools {
            let kept = next.pools.get(name);
            if kept.is_none() {
                self.metrics.remove_pool(name);
            }
            for b in &pool.backends {
                if kept.and_then(|p| p.backend(&b.name)).is_none() {
                    self.metrics.remove_backend(name, &b.name);
                    self.retire(&b.stats);
                }
            }
        }
        self.current.store(Arc::new(next));
    }

    /// The counters of a backend by pool and name, for a connection an upgrading warren handed
    /// over. A backend this config does not have gets counters of its own, not exported (as
    /// those of a backend a reload removed): its connection runs on, counted nowhere.
    pub fn backend_stats(&self, pool: &str, backend: &str) -> Arc<BackendStats> {
        let snapshot = self.current.load();
        if let Some(b) = snapshot.pools.get(pool).and_then(|p| p.backend(backend)) {
            return b.stats.clone();
        }
        let _guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let stats = Arc::new(BackendStats::new(
            &self.metrics,
            pool,
            backend,
            &self.shutdown,
        ));
        self.metrics.remove_backend(pool, backend);
        self.retire(&stats);
        stats
    }

    /// Keep reaching a backend's counters that no snapshot has any more (see `retired`).
    fn retire(&self, stats: &Arc<BackendStats>) {
        let mut retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        retired.retain(|w| w.strong_count() > 0);
        retired.push(Arc::downgrade(stats));
    }

    /// Every backend's counters that open connections may hold: those of the current
    /// snapshot, and those of backends gone from it whose connections are still open.
    pub fn all_stats(&self) -> Vec<Arc<BackendStats>> {
        let snapshot = self.current.load();
        let mut all: Vec<Arc<BackendStats>> = snapshot
            .pools
            .values()
            .flat_map(|p| p.backends.iter().map(|b| b.stats.clone()))
            .collect();
        let retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        all.extend(retired.iter().filter_map(std::sync::Weak::upgrade));
        all
    }

    /// Set one backend's health; returns the previous value, or `None` if it does not exist.
    pub fn set_health(&self, pool: &str, backend: &str, health: Health) -> Option<Health> {
        self.update(pool, backend, |b| std::mem::replace(&mut b.health, health))
            .map(|(previous, _)| previous)
    }

    /// Set one backend's admin state; returns the previous value, or `None` if it does not exist.
    pub fn set_admin(&self, pool: &str, backend: &str, admin: AdminState) -> Option<AdminState> {
        self.update(pool, backend, |b| std::mem::replace(&mut b.admin, admin))
            .map(|(previous, _)| previous)
    }

    /// Change one backend and publish; returns what `change` returned and the snapshots before
    /// and after, from which callers derive events. `None` if the backend does not exist.
    pub fn update<T>(
        &self,
        pool: &str,
        backend: &str,
        change: impl FnOnce(&mut BackendRoute) -> T,
    ) -> Option<(T, Transition)> {
        let _guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.current.load_full();
        let mut pools = old.pools.clone();
        let target = pools
            .get_mut(pool)?
            .backends
            .iter_mut()
            .find(|b| &*b.name == backend)?;
        let was_available = target.available();
        let before = change(target);
        if target.available() && !was_available {
            target.available_since = Some(now());
        }
        let next = Snapshot {
            listeners: old.listeners.clone(),
            pools,
        };
        publish_gauges(&next, &self.metrics);
        let next = Arc::new(next);
        self.current.store(next.clone());
        Some((
            before,
            Transition {
                before: old,
                after: next,
            },
        ))
    }
}

/// Build a snapshot from a config, carrying stats and selectors over from `previous` by name.
fn build(
    config: &Config,
    previous: Option<&Snapshot>,
    metrics: &BackendMetrics,
    shutdown: &CancellationToken,
) -> Snapshot {
    let listeners = config
        .listeners
        .iter()
        .map(|l| (Arc::from(l.name.as_str()), Arc::new(l.clone())))
        .collect();
    let pools = config
        .pools
        .iter()
        .map(|p| {
            let old = previous.and_then(|s| s.pools.get(p.name.as_str()));
            let built_at = now();
            let backends = p
                .backends
                .iter()
                .map(|b| {
                    let old_b = old.and_then(|o| o.backend(&b.name));
                    // The same backend as before: same name, same address.
                    let kept = old_b.filter(|o| o.addr == b.addr);
                    // A backend new to a running pool (or at a new address) is a returning one
                    // for slow start; the backends of a new pool all start together, at full.
                    let available_since = match (old, kept) {
                        (_, Some(o)) => o.available_since,
                        (Some(_), None) => Some(built_at),
                        (None, None) => None,
                    };
                    BackendRoute {
                        name: Arc::from(b.name.as_str()),
                        addr: b.addr,
                        weight: b.weight,
                        backup: b.backup,
                        key: balance::stable_hash(format!("{}/{}", p.name, b.name).as_bytes()),
                        // A verdict about an old address says nothing about the new one.
                        health: kept.map_or(Health::Unknown, |o| o.health),
                        admin: old_b.map_or(AdminState::Active, |o| o.admin),
                        available_since,
                        stats: old_b.map_or_else(
                            || Arc::new(BackendStats::new(metrics, &p.name, &b.name, shutdown)),
                            |o| o.stats.clone(),
                        ),
                        tls: b.tls.clone().map(Arc::new),
                    }
                })
                .collect();
            // Round-robin state is indexed by position and built on the weights: it carries
            // over only while the backends, their order, weights and backup flags are the same.
            let same_shape = |o: &PoolRoute| {
                o.backends.len() == p.backends.len()
                    && o.backends.iter().zip(&p.backends).all(|(ob, nb)| {
                        *ob.name == *nb.name && ob.weight == nb.weight && ob.backup == nb.backup
                    })
            };
            let selector = match old {
                Some(o) if o.selector.balance() == p.balance && same_shape(o) => o.selector.clone(),
                _ => Arc::new(Selector::new(p.balance)),
            };
            let name: Arc<str> = Arc::from(p.name.as_str());
            let route = PoolRoute {
                name: name.clone(),
                selector,
                backends,
                slow_start: p.slow_start,
                on_down: p.on_down,
                available_gauge: metrics.pool_available.with_label_values(&[&p.name]),
                imbalance_gauge: metrics.pool_imbalance.with_label_values(&[&p.name]),
            };
            (name, route)
        })
        .collect();
    Snapshot { listeners, pools }
}

fn publish_gauges(snapshot: &Snapshot, metrics: &BackendMetrics) {
    for pool in snapshot.pools.values() {
        pool.available_gauge.set(pool.available_count() as i64);
        for b in &pool.backends {
            b.stats.up.set(i64::from(b.health != Health::Down));
            metrics.set_admin_state(&pool.name, &b.name, b.admin);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(backends: &[(&str, u32)]) -> Config {
        let mut text = String::from(
            "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:5672\"\npool = \"p\"\n[pool.p]\n",
        );
        for (i, (name, weight)) in backends.iter().enumerate() {
            text += &format!(
                "[[pool.p.backend]]\nname = \"{name}\"\naddr = \"127.0.0.1:{}\"\nweight = {weight}\n",
                1000 + i
            );
        }
        crate::config::from_toml_offline(&text, std::path::Path::new("t.toml")).unwrap()
    }

    /// Round-robin state survives a reload that changes nothing about the pool's backends and
    /// is reset by one that reorders them or changes a weight (its slots would name other
    /// backends, or carry weights that no longer hold).
    #[test]
    fn round_robin_state_is_kept_only_while_the_pool_keeps_its_shape() {
        let cases = [
            (vec![("a", 1), ("b", 1)], true),
            (vec![("b", 1), ("a", 1)], false),
            (vec![("a", 5), ("b", 1)], false),
            (vec![("a", 1), ("c", 1)], false),
            (vec![("a", 1), ("b", 1), ("c", 1)], false),
        ];
        for (backends, kept) in cases {
            let routing = Routing::new(
                &config(&[("a", 1), ("b", 1)]),
                BackendMetrics::register(&Registry::new()),
            );
            let before = routing.load().pools["p"].selector.clone();
            routing.reload(&config(&backends));
            let after = routing.load().pools["p"].selector.clone();
            assert_eq!(Arc::ptr_eq(&before, &after), kept, "{backends:?}");
        }
    }

    /// With `[fleet]`, the other instances count as what they reported plus, each, what this
    /// instance placed since (they are assumed to place alike until their next report).
    #[test]
    fn elsewhere_extrapolates_the_other_instances_until_the_next_read() {
        let routing = Routing::new(
            &config(&[("a", 1)]),
            BackendMetrics::register(&Registry::new()),
        );
        let stats = routing.load().pools["p"]
            .backend("a")
            .unwrap()
            .stats
            .clone();
        assert_eq!(stats.elsewhere(), 0, "nothing without [fleet]");
        stats.total.inc_by(5);
        stats.set_elsewhere(40, 2);
        assert_eq!(stats.elsewhere(), 40);
        stats.total.inc_by(3);
        assert_eq!(stats.elsewhere(), 40 + 2 * 3);
        stats.set_elsewhere(47, 2);
        assert_eq!(stats.elsewhere(), 47, "a new read starts counting again");
        stats.total.inc();
        stats.set_elsewhere(0, 0);
        stats.total.inc();
        assert_eq!(stats.elsewhere(), 0, "no fresh read: nothing elsewhere");
    }

    fn since(routing: &Routing, backend: &str) -> Option<Instant> {
        routing.load().pools["p"]
            .backend(backend)
            .unwrap()
            .available_since
    }

    /// One change made to backend "a" (or a reload) in the table below.
    enum Step {
        SetHealth(Health),
        SetAdmin(AdminState),
        Reload(&'static [(&'static str, u32)]),
    }

    /// Slow start starts where a backend becomes available again, and nowhere else.
    #[test]
    fn available_since_is_set_when_a_backend_becomes_available_again() {
        use Step::*;
        let cases: [(&str, &[Step], bool); 8] = [
            ("at start", &[], false),
            ("first probe up", &[SetHealth(Health::Up)], false),
            ("down", &[SetHealth(Health::Down)], false),
            (
                "down then up",
                &[SetHealth(Health::Down), SetHealth(Health::Up)],
                true,
            ),
            (
                "drained then undrained",
                &[SetAdmin(AdminState::Drained), SetAdmin(AdminState::Active)],
                true,
            ),
            (
                "undrained while down",
                &[
                    SetHealth(Health::Down),
                    SetAdmin(AdminState::Draining),
                    SetAdmin(AdminState::Active),
                ],
                false,
            ),
            (
                "reload that keeps it",
                &[Reload(&[("a", 1), ("b", 1)])],
                false,
            ),
            (
                "reload that changes its weight",
                &[Reload(&[("a", 3), ("b", 1)])],
                false,
            ),
        ];
        for (what, steps, set) in cases {
            let routing = Routing::new(
                &config(&[("a", 1), ("b", 1)]),
                BackendMetrics::register(&Registry::new()),
            );
            for step in steps {
                match step {
                    SetHealth(h) => assert!(routing.set_health("p", "a", *h).is_some()),
                    SetAdmin(a) => assert!(routing.set_admin("p", "a", *a).is_some()),
                    Reload(backends) => routing.reload(&config(backends)),
                }
            }
            assert_eq!(since(&routing, "a").is_some(), set, "{what}");
            assert_eq!(since(&routing, "b"), None, "{what}: b untouched");
        }
    }

    #[test]
    fn a_backend_added_to_a_running_pool_starts_slow_a_new_pool_does_not() {
        let routing = Routing::new(
            &config(&[("a", 1)]),
            BackendMetrics::register(&Registry::new()),
        );
        routing.reload(&config(&[("a", 1), ("b", 1)]));
        assert_eq!(since(&routing, "a"), None);
        let added = since(&routing, "b").expect("b is new to a running pool");
        // Another reload carries the moment over; it does not restart the ramp.
        routing.reload(&config(&[("a", 1), ("b", 2)]));
        assert_eq!(since(&routing, "b"), Some(added));
        // Its share ramps from there.
        let route = routing.load();
        let b = route.pools["p"].backend("b").unwrap();
        let ramp = Duration::from_secs(10);
        assert_eq!(b.share(added, ramp), balance::MIN_SHARE);
        assert_eq!(b.share(added + Duration::from_secs(5), ramp), 500);
        assert_eq!(b.share(added + ramp, ramp), balance::FULL_SHARE);
    }

    #[test]
    fn a_connection_following_the_tokens_keeps_none_behind_it() {
        let routing = Routing::new(
            &config(&[("a", 1)]),
            BackendMetrics::register(&Registry::new()),
        );
        let stats = routing.load().pools["p"].backends[0].stats.clone();
        let mut slot = BackendSlot::claim(&stats);
        let mut watching = slot.take_close_token().unwrap();
        assert!(slot.close_token().is_none());
        let first = Arc::downgrade(&watching.0);
        for _ in 0..100 {
            let shed = Arc::new(Shed::new(Vec::new(), now()));
            stats.close_connections(routing.shutdown_token(), CloseCause::Rebalance(shed));
            watching = watching.next().expect("set before the cancel");
        }
        assert!(first.upgrade().is_none(), "the first token is still alive");
        assert!(!watching.token().is_cancelled());
    }

    #[test]
    fn a_close_token_says_why_it_was_cancelled() {
        let routing = Routing::new(
            &config(&[("a", 1)]),
            BackendMetrics::register(&Registry::new()),
        );
        let stats = routing.load().pools["p"].backends[0].stats.clone();
        let first = stats.close_token();
        stats.active.set(3);
        let closed = stats.close_connections(routing.shutdown_token(), CloseCause::BackendDown);
        assert_eq!(closed, 3);
        assert!(first.token().is_cancelled());
        assert_eq!(first.cause(), Some(CloseCause::BackendDown));
        // A connection made after the close watches a fresh token.
        let second = stats.close_token();
        assert!(!second.token().is_cancelled());
        routing.shutdown_token().cancel();
        assert!(second.token().is_cancelled());
        assert_eq!(second.cause(), None, "shutdown leaves no cause");
    }
}
