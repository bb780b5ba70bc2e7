//! The admin HTTP server. It runs on the control runtime (its own thread, see `server`) so it
//! answers while the data plane is saturated. Endpoints:
//! - `GET /healthz`: 200 while the process serves;
//! - `GET /readyz`: 200 when every pool has an available backend, confirmed `up` by a probe in
//!   a pool that has one, else 503 naming the pools;
//! - `GET /metrics`: Prometheus text format;
//! - `GET /v1/status`: listeners, pools, backends (health, admin state, connections, last probe);
//! - `POST /v1/pools/{pool}/backends/{name}/drain` with `{"deadline": "5m", "force": false}`
//!   (both optional): 202, or 409 when `min_available` refuses it or, when the pool probes
//!   RabbitMQ's management API over `http`, when the node says it is quorum-critical
//!   (`/api/health/checks/node-is-quorum-critical`); `force` skips both checks;
//! - `POST /v1/pools/{pool}/backends/{name}/undrain`: 200, idempotent;
//! - `POST /v1/reload`: re-read the config file; 200, or 400 with the error (old config stays);
//! - `POST /v1/upgrade`: hand the listeners to the binary installed at warren's path (see
//!   `crate::handover`); 200 once it serves, 409 while another upgrade runs, 500 naming why the
//!   new binary failed (this process serves on), 501 on Windows.
//!
//! Every `/v1` route needs `Authorization: Bearer <token>` when a token is configured (compared
//! in constant time). Wrong tokens are limited per source network (IPv4 /24, IPv6 /64) and in
//! total ([`AuthLimiter`]): past the budget a wrong token is held on its connection (a slot of
//! the connection bounds, up to 5 s, even if the client hangs up) before its 429 with
//! `Retry-After`, so a guesser learns at most the connection bounds' worth of answers per hold;
//! the right token is answered at once. Connections are bounded per source and in total
//! ([`ConnectionTable`]): over the total, the oldest idle one is closed; a request head must
//! arrive within `admin.idle_timeout`. Bodies are capped at 64 KiB and must arrive within 10 s.
//! Errors are JSON `{"error": "..."}`: 401, 429, 404 unknown path/pool/backend, 405 wrong method,
//! 413, 400 bad JSON. At the descriptor limit it spends a small reserve of descriptors it holds,
//! so it keeps answering while the data plane has none left. It changes admin state only through
//! the [`Drainer`], which decides whether a drain may happen (quorum check, `min_available`);
//! this module only maps its answers and refusals to HTTP. Every JSON body is a type of
//! [`crate::api`]. It never touches the data path's sockets. Its own counters (refused tokens
//! and connections) are declared in [`metrics`]; for the rest it gets narrow handles: the
//! registry `/metrics` encodes and a read-only view of the listeners' open connections.

mod limits;
pub mod metrics;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

use std::time::Duration;

use http_body_util::{BodyExt, Limited};

use arc_swap::ArcSwap;

use crate::api::{self, DrainRequest, ErrorBody, RefusalReason};
use crate::balance::FULL_SHARE;
use crate::config::{AdminConfig, BackendConfig, Config, OnDown, PoolConfig, Probe, Secret};
use crate::drain::{rfc3339, DrainError, Drainer, Scope};
use crate::health::Controller;
use crate::lifecycle::{Reloader, UpgradeError, Upgrader};
use crate::metrics::Metrics;
use crate::proxy::metrics::ActiveConnections;
use crate::rebalance::{RebalanceError, Rebalancer};
use crate::state::{BackendId, BackendRoute, Health, PoolRoute, Routing};

use metrics::{AdminMetrics, AuthFailure, ConnectionRefused};

pub use limits::{
    Admit, AuthLimiter, ConnectionTable, WrongToken, AUTH_FAILURES_PER_SECOND,
    AUTH_FAILURES_PER_SECOND_TOTAL, AUTH_FAILURE_BURST, AUTH_FAILURE_BURST_TOTAL, AUTH_HOLD_MAX,
};

type Reply = Response<Full<Bytes>>;

/// Everything the admin API reads or changes.
pub struct Admin {
    /// The config in force (a reload replaces it).
    pub config: Arc<ArcSwap<Config>>,
    /// Asks the server to re-read its config file.
    pub reloader: Reloader,
    /// Asks the server to upgrade itself (hand over to a new binary).
    pub upgrader: Upgrader,
    pub routing: Arc<Routing>,
    /// What `GET /metrics` encodes: the process's registry.
    pub metrics: Arc<Metrics>,
    /// This server's own counters (refused tokens and connections).
    pub admin_metrics: AdminMetrics,
    /// Open connections per listener, for `/v1/status`.
    pub active_connections: ActiveConnections,
    pub health: Arc<Controller>,
    pub drainer: Arc<Drainer>,
    pub rebalancer: Arc<Rebalancer>,
    /// `[fleet]`: the fleet's registered instances, for `GET /v1/fleet`.
    pub fleet: Option<Arc<crate::fleet::instances::Instances>>,
    /// The bearer token every `/v1` request must present, when one is configured.
    pub token: Option<Secret>,
}

/// Largest request body accepted (drain options are a few bytes).
pub const MAX_BODY: usize = 64 * 1024;
/// Time allowed for a client to send its body (its head gets `admin.idle_timeout`).
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a stop waits for requests in flight to be answered (an upgrade's answer is written
/// after the hand-over, by a process that is stopping).
const STOP_WAIT: Duration = Duration::from_secs(5);

/// Serve the admin API on `listener` until `stop` is cancelled; then answer the requests in
/// flight (up to [`STOP_WAIT`]) and close every connection. Runs on the control runtime.
pub async fn serve(listener: std::net::TcpListener, admin: Arc<Admin>, stop: CancellationToken) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "admin listener unusable");
            return;
        }
    };
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "admin API listening");
    }
    // [admin] is read once: a reload does not change it (the server says so).
    let limits = admin.config.load().admin.clone().unwrap_or_default();
    let shared = Arc::new(Shared {
        admin,
        limiter: AuthLimiter::default(),
        holds: Arc::new(tokio::sync::Semaphore::new(
            (limits.max_connections / 2).max(1),
        )),
        reserve: Reserve::new(),
        idle_timeout: limits.idle_timeout,
        stop: stop.clone(),
    });
    let connections = Arc::new(Connections::new(&limits));
    let open = tokio_util::task::TaskTracker::new();
    let mut next_id = 0u64;
    loop {
        let (socket, peer) = tokio::select! {
            () = stop.cancelled() => {
                drop(listener);
                open.close();
                let _ = tokio::time::timeout(STOP_WAIT, open.wait()).await;
                return;
            }
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // At the descriptor limit (the data plane holds them all): free reserved ones
                // and accept at once, so /healthz, /readyz and /metrics still answer.
                Err(e) if is_out_of_descriptors(&e) && shared.reserve.release(2) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        next_id += 1;
        let Some(conn) = connections.admit(next_id, peer, &shared.admin.admin_metrics) else {
            drop(socket);
            shared.reserve.refill();
            continue;
        };
        open.spawn(serve_connection(shared.clone(), socket, conn));
    }
}

/// What every admin connection shares: the API's state and the bounds that hold across
/// connections (the wrong-token limiter, the hold slots, the descriptor reserve).
struct Shared {
    admin: Arc<Admin>,
    /// Shared by every connection: a guesser cannot reset its budget by reconnecting.
    limiter: AuthLimiter,
    /// Held wrong tokens may take at most half the admin connections: the other half stays for
    /// `/healthz`, `/readyz`, `/metrics` and the operator, whatever a guesser does.
    holds: Arc<tokio::sync::Semaphore>,
    reserve: Reserve,
    idle_timeout: Duration,
    /// The server stops: each connection answers its request in flight, then closes.
    stop: CancellationToken,
}

/// One admin connection: HTTP/1.1 until the client is done, the connection is evicted to make
/// room, or a held wrong token's wait ends.
async fn serve_connection(shared: Arc<Shared>, socket: tokio::net::TcpStream, conn: Tracked) {
    let tracked = Arc::new(conn);
    let service = hyper::service::service_fn({
        let (shared, tracked) = (shared.clone(), tracked.clone());
        move |req| {
            let (shared, tracked) = (shared.clone(), tracked.clone());
            async move {
                let answer =
                    handle(req, &shared.admin, &shared.limiter, &shared.holds, &tracked).await;
                Ok::<_, Infallible>(answer)
            }
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(shared.idle_timeout)
        .serve_connection(TokioIo::new(socket), service);
    tokio::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => Some(ended),
        () = tracked.evicted.cancelled() => {
            tracing::debug!(client = %tracked.peer, "idle admin connection closed to make room");
            None
        }
        () = shared.stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::time::timeout(STOP_WAIT, conn.as_mut()).await.ok()
        }
    };
    if let Some(Err(e)) = ended {
        tracing::debug!(error = %e, "admin connection ended with an error");
    }
    // A wrong token being held keeps its slot until the hold ends, even if the client hung up:
    // a guesser cannot trade the wait for a new connection.
    if let Some(until) = tracked.held_until() {
        tokio::time::sleep_until(until).await;
    }
    drop(tracked);
    // The socket is closed: take its descriptor back into the reserve before the data plane's
    // next accept does.
    shared.reserve.refill();
}

/// The open admin connections and their bounds (`admin.max_connections`,
/// `admin.max_connections_per_source`): the pure [`ConnectionTable`] plus a way to close each.
struct Connections {
    table: Mutex<ConnectionTable>,
    /// Cancelling one closes that connection (evicted to make room).
    closers: Mutex<HashMap<u64, CancellationToken>>,
}

/// One admin connection's place in [`Connections`]; leaves it when dropped.
struct Tracked {
    id: u64,
    peer: SocketAddr,
    evicted: CancellationToken,
    connections: Arc<Connections>,
    /// Set while a wrong token is held on it (see [`Tracked::hold`]).
    held_until: Mutex<Option<tokio::time::Instant>>,
}

impl Connections {
    fn new(limits: &AdminConfig) -> Connections {
        Connections {
            table: Mutex::new(ConnectionTable::new(
                limits.max_connections,
                limits.max_connections_per_source,
            )),
            closers: Mutex::new(HashMap::new()),
        }
    }

    /// Let connection `id` in, closing the oldest idle ones if needed; `None` (counted and
    /// logged) when it must be closed at once.
    fn admit(
        self: &Arc<Self>,
        id: u64,
        peer: SocketAddr,
        metrics: &AdminMetrics,
    ) -> Option<Tracked> {
        let refused = |reason| metrics.connection_refused(reason);
        let decision = lock(&self.table).admit(id, peer.ip());
        match decision {
            Admit::Serve { evict } => {
                let mut closers = lock(&self.closers);
                for gone in evict {
                    refused(ConnectionRefused::Evicted);
                    if let Some(token) = closers.remove(&gone) {
                        token.cancel();
                    }
                }
                let evicted = CancellationToken::new();
                closers.insert(id, evicted.clone());
                Some(Tracked {
                    id,
                    peer,
                    evicted,
                    connections: self.clone(),
                    held_until: Mutex::new(None),
                })
            }
            Admit::PerSourceLimit => {
                refused(ConnectionRefused::PerSource);
                tracing::debug!(client = %peer, "admin connection refused: max_connections_per_source open from this source");
                None
            }
            Admit::TotalLimit => {
                refused(ConnectionRefused::MaxConnections);
                tracing::warn!(client = %peer, "admin connection refused: max_connections open, each serving a request");
                None
            }
        }
    }
}

impl Tracked {
    /// Marks the connection as serving a request (so it is not evicted) until dropped.
    fn serving(&self) -> Serving<'_> {
        lock(&self.connections.table).set_busy(self.id, true);
        Serving(self)
    }

    /// Hold a wrong token for `hold`: the connection counts as serving (never evicted) until
    /// it closes, and its slot stays taken until the hold ends (see `serve`). The held answer
    /// closes the connection.
    fn hold(&self, hold: Duration) {
        lock(&self.connections.table).set_busy(self.id, true);
        *lock(&self.held_until) = Some(tokio::time::Instant::now() + hold);
    }

    fn held_until(&self) -> Option<tokio::time::Instant> {
        *lock(&self.held_until)
    }
}

struct Serving<'a>(&'a Tracked);

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        lock(&self.0.connections.table).set_busy(self.0.id, false);
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        lock(&self.connections.table).close(self.id);
        lock(&self.connections.closers).remove(&self.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Descriptors held open (on /dev/null) for the admin API to spend when the process is at its
/// descriptor limit.
struct Reserve(Mutex<Vec<std::fs::File>>);

/// Descriptors in the reserve when it is full.
const RESERVED_DESCRIPTORS: usize = 4;

impl Reserve {
    fn new() -> Reserve {
        let reserve = Reserve(Mutex::new(Vec::new()));
        reserve.refill();
        reserve
    }

    /// Reopen what was released, as far as descriptors allow.
    fn refill(&self) {
        let mut files = self.0.lock().unwrap_or_else(|e| e.into_inner());
        while files.len() < RESERVED_DESCRIPTORS {
            match std::fs::File::open("/dev/null") {
                Ok(f) => files.push(f),
                Err(_) => break,
            }
        }
    }

    /// Close up to `n` reserved descriptors; false when none was left.
    fn release(&self, n: usize) -> bool {
        let mut files = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let keep = files.len().saturating_sub(n);
        let released = files.len() > keep;
        files.truncate(keep);
        released
    }
}

fn is_out_of_descriptors(e: &std::io::Error) -> bool {
    #[cfg(unix)]
    {
        matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
    }
    #[cfg(not(unix))]
    {
        let _ = e;
        false
    }
}

/// One request: authenticate `/v1`, read a bounded body, route.
async fn handle(
    req: Request<Incoming>,
    admin: &Admin,
    limiter: &AuthLimiter,
    holds: &Arc<tokio::sync::Semaphore>,
    conn: &Tracked,
) -> Reply {
    let source = conn.peer.ip();
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    if segments.first() == Some(&"v1") {
        match authenticate(&parts.headers, admin, limiter, holds, source) {
            Auth::Pass => {}
            Auth::Deny(reply) => return reply,
            Auth::Hold(hold, reply, _slot) => {
                conn.hold(hold);
                tokio::time::sleep(hold).await;
                return reply;
            }
        }
    }
    let body =
        match tokio::time::timeout(READ_TIMEOUT, Limited::new(body, MAX_BODY).collect()).await {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                return error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("request body over {MAX_BODY} bytes"),
                )
            }
            Ok(Err(e)) => return error(StatusCode::BAD_REQUEST, &format!("cannot read body: {e}")),
            Err(_) => {
                return error(
                    StatusCode::REQUEST_TIMEOUT,
                    "request body not received in time",
                )
            }
        };
    // From here the request is being served: a flood of new connections must not cut it.
    let _serving = conn.serving();
    // While warren hands itself over, a change made here could be lost (the other process
    // has taken the state already) or undone: refused, to be sent again in a moment.
    if parts.method == Method::POST && segments != ["v1", "upgrade"] && admin.upgrader.busy() {
        return error(
            StatusCode::CONFLICT,
            "warren is upgrading itself (warren upgrade): send this again in a moment, to the process that serves then",
        );
    }
    if segments == ["v1", "reload"] {
        if parts.method != Method::POST {
            return error(StatusCode::METHOD_NOT_ALLOWED, "use POST for this endpoint");
        }
        return match admin.reloader.reload().await {
            Ok(summary) => json(
                StatusCode::OK,
                &api::ReloadAnswer {
                    result: "ok".into(),
                    summary,
                },
            ),
            Err(e) => error(StatusCode::BAD_REQUEST, &e),
        };
    }
    if segments == ["v1", "fleet"] {
        if parts.method != Method::GET {
            return error(StatusCode::METHOD_NOT_ALLOWED, "use GET for this endpoint");
        }
        return fleet_status(admin).await;
    }
    if segments == ["v1", "upgrade"] {
        if parts.method != Method::POST {
            return error(StatusCode::METHOD_NOT_ALLOWED, "use POST for this endpoint");
        }
        return upgrade(admin).await;
    }
    if let ["v1", set @ ("drain" | "undrain")] = segments[..] {
        if parts.method != Method::POST {
            return error(StatusCode::METHOD_NOT_ALLOWED, "use POST for this endpoint");
        }
        return if set == "drain" {
            drain_set(admin, &body).await
        } else {
            undrain_set(admin, &body).await
        };
    }
    if let ["v1", "pools", pool, "backends", backend, "drain"] = segments[..] {
        if parts.method != Method::POST {
            return error(StatusCode::METHOD_NOT_ALLOWED, "use POST for this endpoint");
        }
        return drain(admin, pool, backend, &body).await;
    }
    if let ["v1", "pools", pool, "backends", backend, "undrain"] = segments[..] {
        if parts.method != Method::POST {
            return error(StatusCode::METHOD_NOT_ALLOWED, "use POST for this endpoint");
        }
        return undrain(admin, pool, backend, &body).await;
    }
    route(&parts.method, &segments, admin)
}

/// What `authenticate` decided about a request.
enum Auth {
    Pass,
    /// Answer this now.
    Deny(Reply),
    /// A wrong token over the budget: answer this after the hold, keeping one of the hold
    /// slots until then.
    Hold(Duration, Reply, tokio::sync::OwnedSemaphorePermit),
}

/// Let the request pass, or the 401 to send at once, or the 429 to send after a hold (a wrong
/// token while `source`'s network or every source is over its budget). Each refusal is counted
/// by reason.
fn authenticate(
    headers: &hyper::HeaderMap,
    admin: &Admin,
    limiter: &AuthLimiter,
    holds: &Arc<tokio::sync::Semaphore>,
    source: IpAddr,
) -> Auth {
    let Some(expected) = admin.token.as_ref() else {
        return Auth::Pass;
    };
    let refused = |reason| admin.admin_metrics.auth_failed(reason);
    let presented = headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(token) = presented else {
        refused(AuthFailure::Missing);
        return Auth::Deny(error(
            StatusCode::UNAUTHORIZED,
            "this endpoint needs Authorization: Bearer <token>",
        ));
    };
    // A network over its budget needs a hold slot before its token is even compared: with
    // every slot taken, it is refused at once, and an answer about a token never compared
    // tells a guesser nothing.
    let mut slot = None;
    if limiter.retry_after(source, Instant::now()).is_some() {
        match holds.clone().try_acquire_owned() {
            Ok(permit) => slot = Some(permit),
            Err(_) => {
                refused(AuthFailure::RateLimited);
                return Auth::Deny(rate_limited(
                    "too many wrong bearer tokens from this network while others are held; retry later",
                    AUTH_HOLD_MAX.as_secs().max(1),
                ));
            }
        }
    }
    // Compared first and in constant time: the right token passes at once even from a network
    // whose budget of wrong tokens a guesser behind the same NAT has spent (unless every hold
    // slot is taken, above).
    if constant_time_eq::constant_time_eq(token.as_bytes(), expected.0.as_bytes()) {
        return Auth::Pass;
    }
    match limiter.wrong_token(source, Instant::now()) {
        WrongToken::Checked { last } => {
            refused(AuthFailure::Wrong);
            if last {
                tracing::warn!(%source, "admin API: wrong bearer tokens from this network over the limit, holding the next ones");
            }
            Auth::Deny(error(StatusCode::UNAUTHORIZED, "wrong bearer token"))
        }
        WrongToken::Held { hold, retry_after } => {
            refused(AuthFailure::RateLimited);
            let reply = rate_limited(
                "too many wrong bearer tokens from this network or in total; retry later",
                retry_after.as_secs_f64().ceil().max(1.0) as u64,
            );
            // The budget ran out since the check above: take a slot now (or answer at once;
            // only requests racing the budget's end can get here without one).
            match slot.or_else(|| holds.clone().try_acquire_owned().ok()) {
                Some(slot) => Auth::Hold(hold, reply, slot),
                None => Auth::Deny(reply),
            }
        }
    }
}

/// 429 with `Retry-After` (whole seconds) and `Connection: close`: a guesser gets no more
/// requests on this connection.
fn rate_limited(reason: &str, retry_after_secs: u64) -> Reply {
    let mut reply = error(StatusCode::TOO_MANY_REQUESTS, reason);
    let headers = reply.headers_mut();
    headers.insert(
        hyper::header::RETRY_AFTER,
        hyper::header::HeaderValue::from(retry_after_secs),
    );
    headers.insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("close"),
    );
    reply
}

fn route(method: &Method, segments: &[&str], admin: &Admin) -> Reply {
    let allow = |expected: Method, reply: &dyn Fn() -> Reply| {
        if *method == expected {
            reply()
        } else {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("use {expected} for this endpoint"),
            )
        }
    };
    match segments {
        ["healthz"] => allow(Method::GET, &|| {
            text(StatusCode::OK, "ok\n".into(), "text/plain")
        }),
        ["readyz"] => allow(Method::GET, &|| {
            readyz(&admin.routing, &admin.config.load())
        }),
        ["metrics"] => allow(Method::GET, &|| {
            text(
                StatusCode::OK,
                admin.metrics.encode(),
                "text/plain; version=0.0.4; charset=utf-8",
            )
        }),
        ["v1", "status"] => allow(Method::GET, &|| json(StatusCode::OK, &status(admin))),
        ["v1", "pools", pool, "rebalance"] => allow(Method::POST, &|| match admin
            .rebalancer
            .start(pool)
        {
            Ok(answer) if answer.started => json(StatusCode::ACCEPTED, &answer),
            Ok(answer) => json(StatusCode::OK, &answer),
            Err(e @ RebalanceError::NoSuchPool(_)) => error(StatusCode::NOT_FOUND, &e.to_string()),
            Err(e @ RebalanceError::SourceHash(_)) => error(StatusCode::CONFLICT, &e.to_string()),
        }),
        _ => error(
            StatusCode::NOT_FOUND,
            &format!("no such endpoint: /{}", segments.join("/")),
        ),
    }
}

/// `POST /v1/upgrade`: wait for the hand-over's outcome.
async fn upgrade(admin: &Admin) -> Reply {
    match admin.upgrader.upgrade().await {
        Ok(done) => json(
            StatusCode::OK,
            &api::UpgradeAnswer {
                connections: done.connections as u64,
                connections_left: done.left as u64,
                new_pid: done.new_pid,
                old_pid: done.old_pid,
                result: "ok".into(),
                took_ms: done.took.as_millis() as u64,
            },
        ),
        Err(e @ (UpgradeError::InProgress | UpgradeError::Stopping)) => {
            error(StatusCode::CONFLICT, &e.to_string())
        }
        Err(e @ UpgradeError::Unsupported) => error(StatusCode::NOT_IMPLEMENTED, &e.to_string()),
        Err(e @ UpgradeError::Failed(_)) => {
            error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())
        }
    }
}

/// `POST .../drain`: read the request, let the [`Drainer`] decide, answer.
async fn drain(admin: &Admin, pool: &str, backend: &str, body: &[u8]) -> Reply {
    let request: DrainRequest = if body.iter().all(u8::is_ascii_whitespace) {
        DrainRequest::default()
    } else {
        match parse_body(body, r#"{"deadline": "5m", "force": false}"#) {
            Ok(r) => r,
            Err(e) => return error(StatusCode::BAD_REQUEST, &e),
        }
    };
    let deadline = match parse_deadline(request.deadline.as_deref()) {
        Ok(d) => d,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let id = BackendId::new(pool, backend);
    match admin
        .drainer
        .drain(&id, deadline, request.force, Scope::of(request.local))
        .await
    {
        Ok(answer) => json(StatusCode::ACCEPTED, &answer),
        Err(e) => drain_error(e),
    }
}

/// `POST /v1/drain`: a set of backends drained as one decision (see [`Drainer::drain_set`]).
async fn drain_set(admin: &Admin, body: &[u8]) -> Reply {
    let example =
        r#"{"backends": [{"pool": "P", "backend": "B"}], "deadline": "5m", "force": false}"#;
    let request: api::DrainSetRequest = match parse_body(body, example) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let deadline = match parse_deadline(request.deadline.as_deref()) {
        Ok(d) => d,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let ids = backend_ids(&request.backends);
    match admin
        .drainer
        .drain_set(&ids, deadline, request.force, Scope::of(request.local))
        .await
    {
        Ok(backends) => json(StatusCode::ACCEPTED, &api::DrainSetAnswer { backends }),
        Err(e) => drain_error(e),
    }
}

/// `POST .../undrain`: the backend takes new connections again; with `"rebalance": false`
/// its return starts no rebalance and the pool's automatic rebalancing is held.
async fn undrain(admin: &Admin, pool: &str, backend: &str, body: &[u8]) -> Reply {
    let request: api::UndrainRequest = if body.iter().all(u8::is_ascii_whitespace) {
        api::UndrainRequest::default()
    } else {
        match parse_body(body, r#"{"rebalance": false}"#) {
            Ok(r) => r,
            Err(e) => return error(StatusCode::BAD_REQUEST, &e),
        }
    };
    let id = BackendId::new(pool, backend);
    let answer = admin
        .drainer
        .undrain_request(std::slice::from_ref(&id), Scope::of(request.local))
        .await
        .map(|mut answers| answers.remove(0));
    match answer {
        Ok(answer) => {
            // The rebalancer runs on this thread too: no round comes between the two.
            if !request.rebalance {
                admin.rebalancer.hold(pool);
            }
            json(StatusCode::OK, &answer)
        }
        Err(e) => drain_error(e),
    }
}

/// `POST /v1/undrain`: every backend of the set takes new connections again.
async fn undrain_set(admin: &Admin, body: &[u8]) -> Reply {
    let example = r#"{"backends": [{"pool": "P", "backend": "B"}], "rebalance": true}"#;
    let request: api::UndrainSetRequest = match parse_body(body, example) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    match admin
        .drainer
        .undrain_request(&backend_ids(&request.backends), Scope::of(request.local))
        .await
    {
        Ok(backends) => {
            if !request.rebalance {
                for b in &request.backends {
                    admin.rebalancer.hold(&b.pool);
                }
            }
            json(StatusCode::OK, &api::DrainSetAnswer { backends })
        }
        Err(e) => drain_error(e),
    }
}

/// A request's JSON body, or what was wrong with it (showing `example`), for a 400.
fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8], example: &str) -> Result<T, String> {
    serde_json::from_slice(body)
        .map_err(|e| format!("malformed JSON body: {e} (expected {example})"))
}

/// A drain request's `deadline` ("5m"), or why it is not one, for a 400.
fn parse_deadline(deadline: Option<&str>) -> Result<Option<Duration>, String> {
    deadline
        .map(crate::config::parse_duration)
        .transpose()
        .map_err(|e| format!("deadline: {e}"))
}

fn backend_ids(backends: &[api::BackendRef]) -> Vec<BackendId> {
    backends
        .iter()
        .map(|b| BackendId::new(&b.pool, &b.backend))
        .collect()
}

/// A refused drain or undrain: its status code, and for the quorum check's refusals the
/// reason (and the queues) beside the message.
fn drain_error(e: DrainError) -> Reply {
    let (status, reason, queues) = match &e {
        DrainError::NotFound(_) => (StatusCode::NOT_FOUND, None, None),
        DrainError::MinAvailable { .. } | DrainError::MinAvailableSet { .. } => {
            (StatusCode::CONFLICT, None, None)
        }
        DrainError::EmptySet => (StatusCode::BAD_REQUEST, None, None),
        DrainError::DeadlineTooLong { .. } => (StatusCode::BAD_REQUEST, None, None),
        DrainError::QuorumCritical { queues, .. }
        | DrainError::QuorumCriticalSet { queues, .. } => (
            StatusCode::CONFLICT,
            Some(RefusalReason::QuorumCritical),
            Some(queues.clone()),
        ),
        DrainError::QuorumCheckFailed { .. } | DrainError::QuorumSetCheckFailed { .. } => (
            StatusCode::CONFLICT,
            Some(RefusalReason::QuorumCheckFailed),
            None,
        ),
        DrainError::FleetUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, None, None),
        DrainError::FleetRefused(_) => (StatusCode::CONFLICT, None, None),
    };
    let body = ErrorBody {
        error: e.to_string(),
        queues,
        reason,
    };
    json(status, &body)
}

/// `GET /v1/fleet`: the live instances and the fleet's view of each backend; 404 without
/// `[fleet]`. etcd unreachable is said in `store`, with 200: this instance still answers.
async fn fleet_status(admin: &Admin) -> Reply {
    let Some(fleet) = &admin.fleet else {
        return error(
            StatusCode::NOT_FOUND,
            "this warren has no [fleet] section: it shares nothing with other instances",
        );
    };
    let config = admin.config.load_full();
    let instance = config
        .fleet
        .as_ref()
        .map(|f| f.instance.clone())
        .unwrap_or_default();
    // One bound for the whole read (it may try several endpoints, each with the timeout), so
    // `warren ctl status` gets its answer well within its own 10 s.
    let timeout = config
        .fleet
        .as_ref()
        .map_or(Duration::from_secs(2), |f| f.timeout);
    let unreachable = |why: String| api::FleetStatus {
        backends: Vec::new(),
        instance: instance.clone(),
        instances: Vec::new(),
        store: format!("unreachable: {why}"),
    };
    let answer = match tokio::time::timeout(timeout, fleet.list()).await {
        Ok(Ok(reports)) => crate::fleet::view::status(instance.clone(), &reports),
        Ok(Err(e)) => unreachable(e.to_string()),
        Err(_) => unreachable(format!(
            "etcd did not answer within {}",
            humantime::format_duration(timeout)
        )),
    };
    json(StatusCode::OK, &answer)
}

/// `GET /v1/status`: listeners, pools, backends.
fn status(admin: &Admin) -> api::Status {
    let snapshot = admin.routing.load();
    let config = admin.config.load();
    let listeners = config
        .listeners
        .iter()
        .map(|l| api::ListenerStatus {
            active_connections: admin.active_connections.of(&l.name),
            listen: l.listen.to_string(),
            name: l.name.clone(),
            pool: l.pool.clone(),
            sni: l
                .sni
                .iter()
                .flat_map(|s| s.routes.list.iter())
                .map(|r| api::SniRouteStatus {
                    server_name: r.server_name.clone(),
                    pool: r.pool.to_string(),
                })
                .collect(),
        })
        .collect();
    let pools = config
        .pools
        .iter()
        .filter_map(|p| Some(pool_status(admin, p, snapshot.pools.get(p.name.as_str())?)))
        .collect();
    api::Status {
        listeners,
        pools,
        version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

fn pool_status(admin: &Admin, p: &PoolConfig, route: &PoolRoute) -> api::PoolStatus {
    let configured: std::collections::HashMap<&str, &BackendConfig> =
        p.backends.iter().map(|b| (b.name.as_str(), b)).collect();
    let now = crate::state::now();
    api::PoolStatus {
        available: route.available_count(),
        backends: route
            .backends
            .iter()
            .map(|b| {
                let configured = configured.get(&*b.name).copied();
                let share = b.share(now, route.slow_start);
                backend_status(admin, &p.name, b, configured, share)
            })
            .collect(),
        balance: p.balance.as_str().to_string(),
        fall: p.health.as_ref().map(|h| h.fall),
        health_check: p.health.as_ref().map(|h| probe_kind(&h.probe)),
        min_available: p.min_available,
        name: p.name.clone(),
        on_down: (p.on_down != OnDown::Keep).then(|| p.on_down.as_str().to_string()),
        rebalance: Some(admin.rebalancer.status(p, route)),
        rise: p.health.as_ref().map(|h| h.rise),
        slow_start: (!p.slow_start.is_zero())
            .then(|| humantime::format_duration(p.slow_start).to_string()),
        total: route.backends.len(),
    }
}

fn backend_status(
    admin: &Admin,
    pool: &str,
    b: &BackendRoute,
    configured: Option<&BackendConfig>,
    share: u32,
) -> api::BackendStatus {
    let health = admin.health.backend(pool, &b.name);
    let health = health.as_ref();
    api::BackendStatus {
        active_connections: b.stats.active.get(),
        connecting: b.stats.connecting.get(),
        addr: b.addr.to_string(),
        admin: b.admin,
        available: b.available(),
        backup: b.backup,
        drain_deadline: admin.drainer.deadline(pool, &b.name).map(rfc3339),
        health: b.health,
        health_changed_at: health.map(|h| rfc3339(h.changed_at)),
        health_reason: health.and_then(|h| h.changed_reason.clone()),
        local_change: admin
            .drainer
            .local_change(&BackendId::new(pool, &b.name))
            .map(rfc3339),
        last_probe: health
            .and_then(|h| h.last_probe.as_ref())
            .map(|probe| api::ProbeStatus {
                at: Some(rfc3339(probe.at)),
                duration_ms: Some(probe.duration.as_secs_f64() * 1000.0),
                reason: probe.reason.clone(),
                up: probe.up,
            }),
        name: b.name.to_string(),
        probes_ok_in_a_row: health.map_or(0, |h| h.probes_ok_in_a_row),
        probes_run: health.map_or(0, |h| h.probes_run),
        // Only while it takes new connections: a drained backend is not ramping.
        slow_start_percent: (b.available() && share < FULL_SHARE)
            .then(|| (share / (FULL_SHARE / 100)).max(1)),
        tags: configured.map(|c| c.tags.clone()).unwrap_or_default(),
        weight: b.weight,
        host_name: configured.and_then(|c| c.dns_name.clone()),
    }
}

fn probe_kind(p: &Probe) -> api::ProbeKind {
    match p {
        Probe::Tcp => api::ProbeKind::Tcp,
        Probe::Amqp => api::ProbeKind::Amqp,
        Probe::AmqpLogin { .. } => api::ProbeKind::AmqpLogin,
        Probe::Http { .. } => api::ProbeKind::Http,
    }
}

/// Ready when every pool can take a client on a backend known to work: an available backend
/// that a probe confirmed `up`, or, in a pool without a probe, any available backend (passive
/// checks are all it has). At start, before the first probes answer, a probed pool's backends
/// are `unknown`: they take connections, but nothing says they work, so `/readyz` waits.
fn readyz(routing: &Routing, config: &Config) -> Reply {
    let snapshot = routing.load();
    let mut empty = Vec::new();
    let mut unconfirmed = Vec::new();
    for pool in snapshot.pools.values() {
        let probed = config.pool(&pool.name).is_some_and(|p| p.health.is_some());
        let available = pool.backends.iter().filter(|b| b.available());
        if available.clone().next().is_none() {
            empty.push(&*pool.name);
        } else if probed && !available.clone().any(|b| b.health == Health::Up) {
            unconfirmed.push(&*pool.name);
        }
    }
    empty.sort_unstable();
    unconfirmed.sort_unstable();
    let mut problems = Vec::new();
    if !empty.is_empty() {
        problems.push(format!(
            "no available backend in pool(s): {}",
            empty.join(", ")
        ));
    }
    if !unconfirmed.is_empty() {
        problems.push(format!(
            "no backend confirmed up by a probe yet in pool(s): {}",
            unconfirmed.join(", ")
        ));
    }
    if problems.is_empty() {
        text(StatusCode::OK, "ready\n".into(), "text/plain")
    } else {
        error(StatusCode::SERVICE_UNAVAILABLE, &problems.join("; "))
    }
}

fn text(status: StatusCode, body: String, content_type: &str) -> Reply {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

fn error(status: StatusCode, message: &str) -> Reply {
    json(status, &ErrorBody::new(message))
}

/// One JSON line: every `/v1` answer and every error is an [`api`] type.
fn json(status: StatusCode, value: &impl serde::Serialize) -> Reply {
    let body = serde_json::to_string(value).expect("the API's types serialize");
    text(status, body + "\n", "application/json")
}
