//! The admin HTTP server. It runs on the control runtime (its own thread, see `server`) so it
//! answers while the data plane is saturated. Endpoints served so far:
//! - `GET /healthz`: 200 while the process serves;
//! - `GET /readyz`: 200 when every pool has an available backend, else 503 naming the pools;
//! - `GET /metrics`: Prometheus text format.
//!
//! Anything else is a JSON error (404 unknown path, 405 wrong method). It reads routing and
//! metrics; it never touches the data path's sockets.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::state::Routing;

type Reply = Response<Full<Bytes>>;

/// Serve the admin API on `listener` until `stop` is cancelled. Runs on the control runtime.
pub async fn serve(
    listener: std::net::TcpListener,
    routing: Arc<Routing>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
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
    loop {
        let (socket, _) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (routing, metrics) = (routing.clone(), metrics.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let reply = route(&req, &routing, &metrics);
                async move { Ok::<_, Infallible>(reply) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(socket), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}

fn route(req: &Request<Incoming>, routing: &Routing, metrics: &Metrics) -> Reply {
    let path = req.uri().path();
    let method = req.method();
    match path {
        "/healthz" | "/readyz" | "/metrics" if method != Method::GET => {
            error(StatusCode::METHOD_NOT_ALLOWED, "use GET")
        }
        "/healthz" => text(StatusCode::OK, "ok\n".into(), "text/plain"),
        "/readyz" => readyz(routing),
        "/metrics" => text(
            StatusCode::OK,
            metrics.encode(),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        _ => error(StatusCode::NOT_FOUND, &format!("no such endpoint: {path}")),
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
    let body = serde_json::json!({ "error": message }).to_string();
    text(status, body, "application/json")
}
