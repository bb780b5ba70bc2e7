//! The admin HTTP server. It runs on the control runtime (its own thread, see `server`) so it
//! answers while the data plane is saturated. Endpoints:
//! - `GET /healthz`: 200 while the process serves;
//! - `GET /readyz`: 200 when every pool has an available backend, else 503 naming the pools;
//! - `GET /metrics`: Prometheus text format;
//! - `GET /v1/status`: listeners, pools, backends (health, admin state, connections, last probe);
//! - `POST /v1/pools/{pool}/backends/{name}/drain` with `{"deadline": "5m", "force": false}`
//!   (both optional): 202, or 409 when `min_available` refuses it or, when the pool probes
//!   RabbitMQ's management API over `http`, when the node says it is quorum-critical
//!   (`/api/health/checks/node-is-quorum-critical`); `force` skips both checks;
//! - `POST /v1/pools/{pool}/backends/{name}/undrain`: 200, idempotent;
//! - `POST /v1/reload`: re-read the config file; 200, or 400 with the error (old config stays).
//!
//! Every `/v1` route needs `Authorization: Bearer <token>` when a token is configured (compared
//! in constant time). Wrong tokens are limited per source address ([`AuthLimiter`]): past the
//! burst, `/v1` answers 429 with `Retry-After` without looking at the token. Bodies are capped at 64 KiB and must arrive within 10 s. Errors are JSON
//! `{"error": "..."}`: 401, 429, 404 unknown path/pool/backend, 405 wrong method, 413, 400 bad JSON.
//! At the descriptor limit it spends a small reserve of descriptors it holds, so it keeps
//! answering while the data plane has none left. It changes admin state only through the [`Drainer`]; it never touches the data path's sockets.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
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

use crate::config::{Config, Probe, ProxyProtocol, Secret};
use crate::drain::{rfc3339, DrainError, Drainer};
use crate::health::probe::{self, QuorumCheck};
use crate::health::Controller;
use crate::metrics::Metrics;
use crate::server::Reloader;
use crate::state::{AdminState, Health, Routing};

type Reply = Response<Full<Bytes>>;

/// Everything the admin API reads or changes.
pub struct Admin {
    /// The config in force (a reload replaces it).
    pub config: Arc<ArcSwap<Config>>,
    /// Asks the server to re-read its config file.
    pub reloader: Reloader,
    pub routing: Arc<Routing>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Controller>,
    pub drainer: Arc<Drainer>,
    /// The bearer token every `/v1` request must present, when one is configured.
    pub token: Option<Secret>,
}

/// Largest request body accepted (drain options are a few bytes).
pub const MAX_BODY: usize = 64 * 1024;
/// Time allowed for a client to send its headers, and then its body.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Bounds of the time a drain's quorum check may take: at least 3 s (a probe timeout is often
/// tighter), at most 5 s (well inside `warren ctl`'s 10 s request timeout).
const QUORUM_TIMEOUT: (Duration, Duration) = (Duration::from_secs(3), Duration::from_secs(5));

/// Serve the admin API on `listener` until `stop` is cancelled. Runs on the control runtime.
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
    // Shared by every connection: a guesser cannot reset its budget by reconnecting.
    let limiter = Arc::new(AuthLimiter::default());
    let reserve = Arc::new(Reserve::new());
    loop {
        let (socket, peer) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // At the descriptor limit (the data plane holds them all): free reserved ones
                // and accept at once, so /healthz, /readyz and /metrics still answer.
                Err(e) if is_out_of_descriptors(&e) && reserve.release(2) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (admin, limiter, reserve) = (admin.clone(), limiter.clone(), reserve.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let (admin, limiter) = (admin.clone(), limiter.clone());
                async move { Ok::<_, Infallible>(handle(req, &admin, &limiter, peer.ip()).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(READ_TIMEOUT)
                .serve_connection(TokioIo::new(socket), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
            // The socket is closed: take its descriptor back into the reserve before the data
            // plane's next accept does.
            reserve.refill();
        });
    }
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
    source: IpAddr,
) -> Reply {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    if segments.first() == Some(&"v1") {
        if let Some(denied) = authenticate(&parts.headers, admin, limiter, source) {
            return denied;
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
    if segments == ["v1", "reload"] {
        if parts.method != Method::POST {
            return error(StatusCode::METHOD_NOT_ALLOWED, "use POST for this endpoint");
        }
        return match admin.reloader.reload().await {
            Ok(summary) => json(
                StatusCode::OK,
                serde_json::json!({ "result": "ok", "summary": summary }),
            ),
            Err(e) => error(StatusCode::BAD_REQUEST, &e),
        };
    }
    if let ["v1", "pools", pool, "backends", backend, "drain"] = segments[..] {
        if parts.method != Method::POST {
            return error(StatusCode::METHOD_NOT_ALLOWED, "use POST for this endpoint");
        }
        return drain(admin, pool, backend, &body).await;
    }
    route(&parts.method, &segments, admin)
}

/// `None` when the request may pass; else the 401 (or 429 while `source` is over its budget of
/// wrong tokens) to send. Each refusal is counted by reason.
fn authenticate(
    headers: &hyper::HeaderMap,
    admin: &Admin,
    limiter: &AuthLimiter,
    source: IpAddr,
) -> Option<Reply> {
    let expected = admin.token.as_ref()?;
    let refused = |reason: &str| {
        admin
            .metrics
            .admin_auth_failures_total
            .with_label_values(&[reason])
            .inc();
    };
    let now = Instant::now();
    if let Some(wait) = limiter.retry_after(source, now) {
        refused("rate_limited");
        let mut reply = error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many wrong bearer tokens from this address; retry later",
        );
        reply.headers_mut().insert(
            hyper::header::RETRY_AFTER,
            hyper::header::HeaderValue::from(wait.as_secs_f64().ceil().max(1.0) as u64),
        );
        return Some(reply);
    }
    let presented = headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(token)
            if constant_time_eq::constant_time_eq(token.as_bytes(), expected.0.as_bytes()) =>
        {
            None
        }
        Some(_) => {
            refused("wrong");
            if limiter.failed(source, now) {
                tracing::warn!(%source, "admin API: wrong bearer tokens over the limit, answering 429");
            }
            Some(error(StatusCode::UNAUTHORIZED, "wrong bearer token"))
        }
        None => {
            refused("missing");
            Some(error(
                StatusCode::UNAUTHORIZED,
                "this endpoint needs Authorization: Bearer <token>",
            ))
        }
    }
}

/// Wrong tokens one source address may present in a burst.
pub const AUTH_FAILURE_BURST: f64 = 10.0;
/// Wrong tokens per second a source may present once its burst is spent.
pub const AUTH_FAILURES_PER_SECOND: f64 = 2.0;
/// Source addresses tracked at once; past it, those with a full budget are forgotten.
const AUTH_SOURCES_TRACKED: usize = 4096;

/// A token bucket of wrong-token attempts per source address, so guessing the token is slow
/// (2 a second after a burst of 10) while a typo costs nothing. A missing token is not a guess
/// and spends nothing. Pure: the caller passes `now`.
#[derive(Default)]
pub struct AuthLimiter {
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl AuthLimiter {
    /// Attempts `source` has left at `now`, after refilling since its last failure.
    fn left(bucket: Option<&(f64, Instant)>, now: Instant) -> f64 {
        match bucket {
            None => AUTH_FAILURE_BURST,
            Some((left, at)) => (left
                + now.saturating_duration_since(*at).as_secs_f64() * AUTH_FAILURES_PER_SECOND)
                .min(AUTH_FAILURE_BURST),
        }
    }

    /// `Some(wait)` when `source` has no attempt left: how long until it has one.
    pub fn retry_after(&self, source: IpAddr, now: Instant) -> Option<Duration> {
        let buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let left = Self::left(buckets.get(&source), now);
        (left < 1.0).then(|| Duration::from_secs_f64((1.0 - left) / AUTH_FAILURES_PER_SECOND))
    }

    /// Record a wrong token from `source`; true when that spent its last attempt.
    pub fn failed(&self, source: IpAddr, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= AUTH_SOURCES_TRACKED && !buckets.contains_key(&source) {
            buckets.retain(|_, b| Self::left(Some(b), now) < AUTH_FAILURE_BURST);
            if buckets.len() >= AUTH_SOURCES_TRACKED {
                // Every tracked source is guessing: forget the oldest rather than grow.
                if let Some(oldest) = buckets.iter().min_by_key(|(_, b)| b.1).map(|(ip, _)| *ip) {
                    buckets.remove(&oldest);
                }
            }
        }
        let left = Self::left(buckets.get(&source), now) - 1.0;
        buckets.insert(source, (left, now));
        left < 1.0
    }
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
        ["readyz"] => allow(Method::GET, &|| readyz(&admin.routing)),
        ["metrics"] => allow(Method::GET, &|| {
            text(
                StatusCode::OK,
                admin.metrics.encode(),
                "text/plain; version=0.0.4; charset=utf-8",
            )
        }),
        ["v1", "status"] => allow(Method::GET, &|| json(StatusCode::OK, status(admin))),
        ["v1", "pools", pool, "backends", backend, "undrain"] => allow(
            Method::POST,
            &|| match admin.drainer.undrain(pool, backend) {
                Ok(s) => json(StatusCode::OK, serde_json::to_value(s).expect("plain data")),
                Err(e) => drain_error(e),
            },
        ),
        _ => error(
            StatusCode::NOT_FOUND,
            &format!("no such endpoint: /{}", segments.join("/")),
        ),
    }
}

/// Body of a drain request.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DrainRequest {
    /// e.g. "5m": connections still open then are closed.
    deadline: Option<String>,
    #[serde(default)]
    force: bool,
}

async fn drain(admin: &Admin, pool: &str, backend: &str, body: &[u8]) -> Reply {
    let request: DrainRequest = if body.iter().all(u8::is_ascii_whitespace) {
        DrainRequest::default()
    } else {
        match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("malformed JSON body: {e} (expected {{\"deadline\": \"5m\", \"force\": false}})"),
                )
            }
        }
    };
    let deadline = match request
        .deadline
        .as_deref()
        .map(crate::config::parse_duration)
    {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, &format!("deadline: {e}")),
    };
    let quorum = if request.force {
        None
    } else {
        Some(quorum_check(admin, pool, backend).await)
    };
    let mut warnings = Vec::new();
    match &quorum {
        Some(QuorumCheck::Critical { reason, queues }) => {
            tracing::warn!(pool, backend, reason, queues = ?queues, "drain refused: quorum-critical");
            return json(
                StatusCode::CONFLICT,
                serde_json::json!({
                    "error": format!(
                        "{backend} (pool {pool}) is quorum-critical, RabbitMQ says: {reason} ({}); \
                         drain it once those queues have enough replicas online, or force it \
                         (force: true in the API, --force in warren ctl)",
                        queues.join(", ")
                    ),
                    "reason": "quorum_critical",
                    "queues": queues,
                }),
            );
        }
        Some(QuorumCheck::Unexpected(why)) => {
            tracing::warn!(
                pool,
                backend,
                why,
                "drain refused: the quorum check got an unexpected answer"
            );
            return json(
                StatusCode::CONFLICT,
                serde_json::json!({
                    "error": format!(
                        "the quorum check of {backend} (pool {pool}) got an unexpected answer from \
                         RabbitMQ's management API: {why}; fix the pool's http probe (user, \
                         password) or force the drain (force: true in the API, --force in warren ctl)"
                    ),
                    "reason": "quorum_check_failed",
                }),
            );
        }
        Some(QuorumCheck::Unknown(why)) => {
            tracing::warn!(
                pool,
                backend,
                why,
                "quorum check not answered; draining anyway"
            );
            warnings.push(format!(
                "the quorum check of {backend} was not answered ({why}); drained anyway"
            ));
        }
        _ => {}
    }
    match admin.drainer.drain(pool, backend, deadline, request.force) {
        Ok(s) => {
            let mut answer = serde_json::to_value(s).expect("plain data");
            answer["quorum_check"] = serde_json::Value::from(match &quorum {
                None => "skipped (force)",
                Some(QuorumCheck::NotApplicable) => {
                    "not applicable (no http probe on the management API)"
                }
                Some(QuorumCheck::Safe) => "safe",
                Some(QuorumCheck::Unknown(_)) => "unknown",
                Some(QuorumCheck::Critical { .. } | QuorumCheck::Unexpected(_)) => {
                    unreachable!("refused above")
                }
            });
            if !warnings.is_empty() {
                answer["warnings"] = serde_json::Value::from(warnings);
            }
            json(StatusCode::ACCEPTED, answer)
        }
        Err(e) => drain_error(e),
    }
}

/// Ask RabbitMQ whether `backend` may stop, when its pool probes the management API. A backend
/// already draining or drained is not asked again (its drain was already allowed).
async fn quorum_check(admin: &Admin, pool: &str, backend: &str) -> QuorumCheck {
    let config = admin.config.load_full();
    let Some(p) = config.pools.iter().find(|p| p.name == pool) else {
        return QuorumCheck::NotApplicable;
    };
    let (Some(health), Some(b)) = (&p.health, p.backends.iter().find(|b| b.name == backend)) else {
        return QuorumCheck::NotApplicable;
    };
    let active = admin
        .routing
        .load_full()
        .pools
        .get(pool)
        .and_then(|route| route.backend(backend))
        .is_some_and(|b| b.admin == AdminState::Active);
    if !active {
        return QuorumCheck::NotApplicable;
    }
    let target = probe::Target {
        host: b.host.clone(),
        port: b.port,
        addr: b.addr,
        proxy_protocol: ProxyProtocol::Off,
    };
    let timeout = health.timeout.clamp(QUORUM_TIMEOUT.0, QUORUM_TIMEOUT.1);
    probe::quorum_check(&health.probe, &target, timeout).await
}

fn drain_error(e: DrainError) -> Reply {
    let status = match e {
        DrainError::NotFound { .. } => StatusCode::NOT_FOUND,
        DrainError::MinAvailable { .. } => StatusCode::CONFLICT,
        DrainError::DeadlineTooLong { .. } => StatusCode::BAD_REQUEST,
    };
    error(status, &e.to_string())
}

/// `GET /v1/status`: listeners, pools, backends.
fn status(admin: &Admin) -> serde_json::Value {
    use serde_json::json;
    let snapshot = admin.routing.load();
    let config = admin.config.load();
    let listeners: Vec<_> = config
        .listeners
        .iter()
        .map(|l| {
            json!({
                "name": l.name,
                "listen": l.listen.to_string(),
                "pool": l.pool,
                "active_connections": admin
                    .metrics
                    .listener_connections_active
                    .with_label_values(&[&l.name])
                    .get(),
            })
        })
        .collect();
    let pools: Vec<_> = config
        .pools
        .iter()
        .filter_map(|p| {
            let route = snapshot.pools.get(p.name.as_str())?;
            let backends: Vec<_> = route
                .backends
                .iter()
                .map(|b| {
                    let health = admin.health.backend(&p.name, &b.name);
                    json!({
                        "name": &*b.name,
                        "addr": b.addr.to_string(),
                        "weight": b.weight,
                        "backup": b.backup,
                        "health": health_str(b.health),
                        "admin": b.admin.as_str(),
                        "available": b.available(),
                        "active_connections": b.stats.active.get(),
                        "health_changed_at": health.as_ref().map(|h| rfc3339(h.changed_at)),
                        "probes_run": health.as_ref().map_or(0, |h| h.probes_run),
                        "probes_ok_in_a_row": health.as_ref().map_or(0, |h| h.probes_ok_in_a_row),
                        "drain_deadline": admin.drainer.deadline(&p.name, &b.name).map(rfc3339),
                        "last_probe": health.and_then(|h| h.last_probe).map(|probe| json!({
                            "up": probe.up,
                            "reason": probe.reason,
                            "duration_ms": probe.duration.as_secs_f64() * 1000.0,
                            "at": rfc3339(probe.at),
                        })),
                    })
                })
                .collect();
            Some(json!({
                "name": p.name,
                "balance": p.balance.as_str(),
                "min_available": p.min_available,
                "health_check": p.health.as_ref().map(|h| probe_kind(&h.probe)),
                "rise": p.health.as_ref().map(|h| h.rise),
                "fall": p.health.as_ref().map(|h| h.fall),
                "available": route.available_count(),
                "total": route.backends.len(),
                "backends": backends,
            }))
        })
        .collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "listeners": listeners,
        "pools": pools,
    })
}

fn health_str(h: Health) -> &'static str {
    match h {
        Health::Unknown => "unknown",
        Health::Up => "up",
        Health::Down => "down",
    }
}

fn probe_kind(p: &Probe) -> &'static str {
    match p {
        Probe::Tcp => "tcp",
        Probe::Amqp => "amqp",
        Probe::AmqpLogin { .. } => "amqp_login",
        Probe::Http { .. } => "http",
    }
}

fn readyz(routing: &Routing) -> Reply {
    let snapshot = routing.load();
    let mut empty: Vec<&str> = snapshot
        .pools
        .values()
        .filter(|p| p.available_count() == 0)
        .map(|p| &*p.name)
        .collect();
    empty.sort_unstable();
    if empty.is_empty() {
        text(StatusCode::OK, "ready\n".into(), "text/plain")
    } else {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("no available backend in pool(s): {}", empty.join(", ")),
        )
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
    json(status, serde_json::json!({ "error": message }))
}

fn json(status: StatusCode, value: serde_json::Value) -> Reply {
    text(status, format!("{value}\n"), "application/json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_tokens_are_limited_per_source_and_refill_over_time() {
        let limiter = AuthLimiter::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        for n in 1..=10 {
            assert_eq!(limiter.retry_after(a, t0), None, "attempt {n} is allowed");
            assert_eq!(limiter.failed(a, t0), n == 10, "attempt {n}");
        }
        let wait = limiter.retry_after(a, t0).expect("the 11th attempt waits");
        assert_eq!(wait, Duration::from_millis(500));
        assert_eq!(
            limiter.retry_after(b, t0),
            None,
            "another source is not limited"
        );
        // Half a second later one more attempt is allowed, then none again.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(limiter.retry_after(a, t1), None);
        assert!(limiter.failed(a, t1));
        assert!(limiter.retry_after(a, t1).is_some());
        // After 5 s the whole burst is back.
        let t2 = t1 + Duration::from_secs(5);
        assert_eq!(limiter.retry_after(a, t2), None);
        assert!(!limiter.failed(a, t2));
    }

    #[test]
    fn tracked_sources_are_bounded() {
        let limiter = AuthLimiter::default();
        let now = Instant::now();
        for i in 0..(AUTH_SOURCES_TRACKED as u32 + 100) {
            limiter.failed(IpAddr::from(i.to_be_bytes()), now);
        }
        assert!(limiter.buckets.lock().unwrap().len() <= AUTH_SOURCES_TRACKED);
    }
}
