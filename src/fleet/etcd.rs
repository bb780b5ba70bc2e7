//! The etcd client of the fleet layer, over etcd's HTTP/JSON gateway (see [`crate::fleet`] for
//! why not gRPC). It owns the endpoint list and failing over between endpoints, etcd auth (the
//! token, and authenticating again when etcd forgets it), the key-value calls (`get`, `put`,
//! `delete`, `txn`), leases, the watch of a prefix ([`Watch`], in `watch`), and [`EtcdError`].
//! The calls' values are in `values`, their JSON in `wire`. Keys and values are bytes; what they
//! mean (drains, instances, the fleet's rules) belongs to the callers: this module must not know
//! about drains.
//!
//! Each call is one request on a fresh connection through [`crate::http_client`] (fleet calls
//! are rare: a drain, a lease renewal every few seconds), TLS for `https://` endpoints; only the
//! watch keeps a connection.
//! A call that cannot connect to an endpoint tries the next one. One that may have reached etcd
//! (a timeout waiting for the answer, a broken answer) is retried elsewhere only when repeating it
//! changes nothing (a read, a keep-alive): a compare-and-swap repeated after it won would report
//! that it lost.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::header::HeaderValue;
use hyper::Method;
use serde_json::Value;

use crate::http_client::{BodyRead, Credentials, HttpError, HttpUrl, Phase, Request};

mod values;
mod watch;
mod wire;

pub use values::{
    Compare, CompareResult, CompareTarget, DeleteResponse, Event, EventKind, GetResponse, KeyValue,
    Lease, TxnOp, TxnOpResponse, TxnResponse,
};
pub use watch::Watch;

/// The largest answer read (a range over many keys); etcd's own request limit is 1.5 MiB.
const MAX_ANSWER: usize = 16 * 1024 * 1024;

const RANGE: &str = "/v3/kv/range";
const PUT: &str = "/v3/kv/put";
const DELETE_RANGE: &str = "/v3/kv/deleterange";
const TXN: &str = "/v3/kv/txn";
const LEASE_GRANT: &str = "/v3/lease/grant";
const LEASE_KEEPALIVE: &str = "/v3/lease/keepalive";
const LEASE_REVOKE: &str = "/v3/lease/revoke";
const AUTHENTICATE: &str = "/v3/auth/authenticate";
const WATCH: &str = "/v3/watch";

/// gRPC status codes etcd's errors carry (`"code"` in the gateway's error JSON).
const CODE_PERMISSION_DENIED: i32 = 7;
const CODE_UNAVAILABLE: i32 = 14;
const CODE_UNAUTHENTICATED: i32 = 16;

// ---------------------------------------------------------------------------------------------
// Errors

/// Why an etcd call failed. `endpoint` is `http[s]://HOST:PORT`, `path` the gateway call.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// An endpoint that cannot be used, at construction.
    #[error("etcd endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("no etcd endpoint given")]
    NoEndpoints,
    /// No connection (or no TLS session: a refused certificate): the request was not sent.
    #[error("etcd {endpoint} ({path}): cannot connect: {cause}")]
    Unreachable {
        endpoint: String,
        path: &'static str,
        cause: String,
    },
    /// Connected, but no (whole) answer in time: the request may have been applied.
    #[error("etcd {endpoint} ({path}): no answer within {}", humantime::format_duration(*timeout))]
    Timeout {
        endpoint: String,
        path: &'static str,
        timeout: Duration,
    },
    /// The exchange broke after the request may have been sent.
    #[error("etcd {endpoint} ({path}): {cause}")]
    Transport {
        endpoint: String,
        path: &'static str,
        cause: String,
    },
    /// etcd refused the call: its HTTP status, gRPC code and message.
    #[error("etcd {endpoint} ({path}): HTTP {http}, code {code}: {message}")]
    Status {
        endpoint: String,
        path: &'static str,
        http: u16,
        code: i32,
        message: String,
    },
    /// A watch's start revision is compacted away: read again, then watch from there.
    #[error("etcd {endpoint} ({path}): revisions up to {revision} are compacted away; read the keys again and watch from the revision of that read")]
    Compacted {
        endpoint: String,
        path: &'static str,
        revision: i64,
    },
    /// etcd auth refused: wrong user or password, a token etcd no longer knows, or a call that
    /// needs credentials and has none.
    #[error("etcd {endpoint} ({path}): authentication: {message}")]
    Auth {
        endpoint: String,
        path: &'static str,
        message: String,
    },
    /// A keep-alive for a lease that expired or was revoked.
    #[error("etcd {endpoint} ({path}): lease {id} is gone (expired or revoked)")]
    LeaseGone {
        endpoint: String,
        path: &'static str,
        id: i64,
    },
    /// An answer that is not the gateway's JSON.
    #[error("etcd {endpoint} ({path}): {message}")]
    Decode {
        endpoint: String,
        path: &'static str,
        message: String,
    },
    /// Every endpoint was tried; each one's error.
    #[error("etcd ({path}): every endpoint failed: {}", join(errors))]
    AllFailed {
        path: &'static str,
        errors: Vec<EtcdError>,
    },
}

fn join(errors: &[EtcdError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl EtcdError {
    /// etcd no longer knows the token sent (it restarted, or the token expired).
    fn is_invalid_token(&self) -> bool {
        matches!(self, EtcdError::Auth { message, .. } if message.contains("invalid auth token"))
    }

    /// Whether the next endpoint may be tried after this error.
    fn may_try_next(&self, retry: Retry) -> bool {
        let repeatable = retry == Retry::Idempotent;
        match self {
            EtcdError::Unreachable { .. } => true,
            EtcdError::Timeout { .. } | EtcdError::Transport { .. } => repeatable,
            // A member without a leader answers 503 / Unavailable; another may have one.
            EtcdError::Status { http, code, .. } => {
                repeatable && (*http == 503 || *code == CODE_UNAVAILABLE)
            }
            _ => false,
        }
    }

    /// The error an HTTP exchange with `endpoint` ended in.
    fn from_http(endpoint: &str, path: &'static str, error: HttpError) -> EtcdError {
        let endpoint = endpoint.to_string();
        match error {
            HttpError::Resolve { .. }
            | HttpError::NoAddress { .. }
            | HttpError::Connect { .. }
            | HttpError::Tls { .. }
            | HttpError::Handshake { .. } => EtcdError::Unreachable {
                endpoint,
                path,
                cause: error.to_string(),
            },
            HttpError::Timeout {
                phase: Phase::Connecting,
                timeout,
                ..
            } => EtcdError::Unreachable {
                endpoint,
                path,
                cause: format!(
                    "no connection within {}",
                    humantime::format_duration(timeout)
                ),
            },
            HttpError::Timeout { timeout, .. } => EtcdError::Timeout {
                endpoint,
                path,
                timeout,
            },
            error => EtcdError::Transport {
                endpoint,
                path,
                cause: error.to_string(),
            },
        }
    }

    /// The error etcd answered (`http`: the answer's status; 200 for an error in a stream).
    fn from_etcd(endpoint: &str, path: &'static str, http: u16, error: wire::ErrorBody) -> Self {
        let endpoint = endpoint.to_string();
        let unavailable = http == 503 || error.code == CODE_UNAVAILABLE;
        let auth = (path == AUTHENTICATE && !unavailable)
            || error.code == CODE_UNAUTHENTICATED
            || error.code == CODE_PERMISSION_DENIED
            || error.message.contains("user name is empty")
            || error.message.contains("invalid auth token");
        if auth {
            return EtcdError::Auth {
                endpoint,
                path,
                message: error.message,
            };
        }
        EtcdError::Status {
            endpoint,
            path,
            http,
            code: error.code,
            message: error.message,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The client

/// Whether a call may be sent again to another endpoint after it may have reached etcd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Repeating it changes nothing (a read, a keep-alive, authenticating).
    Idempotent,
    /// Only when it surely was not sent (no connection).
    NotSent,
}

/// One etcd endpoint, parsed at construction.
#[derive(Debug)]
struct Endpoint {
    url: HttpUrl,
    /// `http[s]://HOST:PORT`, as errors name it.
    name: String,
}

impl Endpoint {
    /// `https://` only with a TLS configuration (`tls`).
    fn parse(text: &str, tls: bool) -> Result<Endpoint, EtcdError> {
        let refuse = |reason: &str| EtcdError::Endpoint {
            endpoint: crate::http_client::without_userinfo(text),
            reason: reason.to_string(),
        };
        if text.starts_with("https://") && !tls {
            return Err(refuse(
                "https needs a TLS configuration (the CA that signed etcd's certificate)",
            ));
        }
        let url = HttpUrl::parse_https(text).map_err(|e| refuse(&e.to_string()))?;
        if url.credentials().is_some() {
            return Err(refuse(
                "user:password@ is not read here; give the user and password on their own",
            ));
        }
        if url.path_and_query() != "/" {
            return Err(refuse(
                "must be http[s]://HOST:PORT, without a path or query",
            ));
        }
        let name = format!("{}://{}", url.scheme(), url.authority());
        Ok(Endpoint { url, name })
    }
}

/// What an endpoint answered to a call: its body, and which endpoint it was.
struct Answer {
    endpoint: String,
    body: Bytes,
}

impl Answer {
    fn decode<T>(
        &self,
        path: &'static str,
        decode: impl FnOnce(&[u8]) -> Result<T, wire::DecodeError>,
    ) -> Result<T, EtcdError> {
        decode(&self.body).map_err(|message| EtcdError::Decode {
            endpoint: self.endpoint.clone(),
            path,
            message,
        })
    }
}

struct Inner {
    endpoints: Vec<Endpoint>,
    /// Bounds each call on each endpoint (connect, request, answer).
    timeout: Duration,
    credentials: Option<Credentials>,
    /// The roots (and client certificate) of `https://` endpoints.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The etcd auth token once authenticated; `None` before, and after etcd refused it. The
    /// lock is held while authenticating, so concurrent calls authenticate once.
    token: tokio::sync::Mutex<Option<HeaderValue>>,
    /// The endpoint that answered last: calls start there, so a dead first endpoint costs one
    /// failed connect, not one per call.
    preferred: AtomicUsize,
}

/// A client of an etcd cluster through its JSON gateway; cheap to clone (clones share the
/// token and the preferred endpoint).
#[derive(Clone)]
pub struct EtcdClient {
    inner: Arc<Inner>,
}

impl fmt::Debug for EtcdClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self
            .inner
            .endpoints
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        f.debug_struct("EtcdClient")
            .field("endpoints", &names)
            .field("timeout", &self.inner.timeout)
            .field("credentials", &self.inner.credentials)
            .field("tls", &self.inner.tls.is_some())
            .finish()
    }
}

impl EtcdClient {
    /// A client of the cluster at `endpoints` (`http://HOST:PORT` each, or `https://` with
    /// `tls`: see [`crate::tls::ClientTls`]), each call bounded by `timeout` per endpoint
    /// (the TLS handshake included), with etcd auth when `credentials` are given.
    pub fn new<S: AsRef<str>>(
        endpoints: &[S],
        timeout: Duration,
        credentials: Option<Credentials>,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<EtcdClient, EtcdError> {
        let endpoints = endpoints
            .iter()
            .map(|e| Endpoint::parse(e.as_ref(), tls.is_some()))
            .collect::<Result<Vec<_>, _>>()?;
        if endpoints.is_empty() {
            return Err(EtcdError::NoEndpoints);
        }
        Ok(EtcdClient {
            inner: Arc::new(Inner {
                endpoints,
                timeout,
                credentials,
                tls,
                token: tokio::sync::Mutex::new(None),
                preferred: AtomicUsize::new(0),
            }),
        })
    }

    /// The value of `key`, if it exists (`kvs` holds at most one).
    pub async fn get(&self, key: &[u8]) -> Result<GetResponse, EtcdError> {
        let answer = self
            .call(RANGE, &wire::range(key, false), Retry::Idempotent)
            .await?;
        answer.decode(RANGE, wire::decode_range)
    }

    /// Every key that starts with `prefix`, in key order.
    pub async fn get_prefix(&self, prefix: &[u8]) -> Result<GetResponse, EtcdError> {
        let answer = self
            .call(RANGE, &wire::range(prefix, true), Retry::Idempotent)
            .await?;
        answer.decode(RANGE, wire::decode_range)
    }

    /// Write `key`, attached to `lease` if given; returns the revision of the write.
    pub async fn put(
        &self,
        key: &[u8],
        value: &[u8],
        lease: Option<i64>,
    ) -> Result<i64, EtcdError> {
        let answer = self
            .call(PUT, &wire::put(key, value, lease), Retry::NotSent)
            .await?;
        answer.decode(PUT, wire::decode_revision)
    }

    /// Delete `key` (deleting a key that does not exist is no error: `deleted` is 0).
    pub async fn delete(&self, key: &[u8]) -> Result<DeleteResponse, EtcdError> {
        let answer = self
            .call(DELETE_RANGE, &wire::range(key, false), Retry::NotSent)
            .await?;
        answer.decode(DELETE_RANGE, wire::decode_delete)
    }

    /// In one step: if every compare holds, run `success`, else `failure`.
    pub async fn txn(
        &self,
        compares: &[Compare],
        success: &[TxnOp],
        failure: &[TxnOp],
    ) -> Result<TxnResponse, EtcdError> {
        let body = wire::txn(compares, success, failure);
        let answer = self.call(TXN, &body, Retry::NotSent).await?;
        answer.decode(TXN, wire::decode_txn)
    }

    /// A lease of `ttl` (rounded up to whole seconds, at least one).
    pub async fn lease_grant(&self, ttl: Duration) -> Result<Lease, EtcdError> {
        let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let secs = i64::try_from(secs.max(1)).unwrap_or(i64::MAX);
        let answer = self
            .call(LEASE_GRANT, &wire::lease_grant(secs), Retry::NotSent)
            .await?;
        answer.decode(LEASE_GRANT, wire::decode_lease_grant)
    }

    /// Renew lease `id` once; returns its TTL in seconds from now. The gateway's keep-alive is
    /// a stream: this sends one request and reads the one answer.
    pub async fn lease_keepalive_once(&self, id: i64) -> Result<i64, EtcdError> {
        let answer = self
            .call(LEASE_KEEPALIVE, &wire::lease_id(id), Retry::Idempotent)
            .await?;
        match answer.decode(LEASE_KEEPALIVE, wire::decode_keepalive)? {
            Ok(ttl) if ttl > 0 => Ok(ttl),
            Ok(_) => Err(EtcdError::LeaseGone {
                endpoint: answer.endpoint,
                path: LEASE_KEEPALIVE,
                id,
            }),
            Err(error) => Err(EtcdError::from_etcd(
                &answer.endpoint,
                LEASE_KEEPALIVE,
                200,
                error,
            )),
        }
    }

    /// End lease `id` now: the keys attached to it are deleted.
    pub async fn lease_revoke(&self, id: i64) -> Result<(), EtcdError> {
        self.call(LEASE_REVOKE, &wire::lease_id(id), Retry::NotSent)
            .await
            .map(drop)
    }

    /// Watch every key under `prefix`, from `start_revision` on (0: from the next change);
    /// see [`Watch`]. Must be called within a tokio runtime.
    pub fn watch_prefix(&self, prefix: &[u8], start_revision: i64) -> Watch {
        Watch::start(self.clone(), prefix.to_vec(), start_revision)
    }

    /// Send `body` to `path`, failing over between endpoints, and authenticating again once if
    /// etcd no longer knows the token.
    async fn call(
        &self,
        path: &'static str,
        body: &Value,
        retry: Retry,
    ) -> Result<Answer, EtcdError> {
        let body = Bytes::from(body.to_string());
        let token = self.token().await?;
        match self.send(path, &body, token.as_ref(), retry).await {
            Err(e) if e.is_invalid_token() => {
                self.forget_token(token.as_ref()).await;
                let token = self.token().await?;
                self.send(path, &body, token.as_ref(), retry).await
            }
            answer => answer,
        }
    }

    /// Send to each endpoint in turn, from the preferred one, until one answers or an error
    /// says the next must not be tried.
    async fn send(
        &self,
        path: &'static str,
        body: &Bytes,
        token: Option<&HeaderValue>,
        retry: Retry,
    ) -> Result<Answer, EtcdError> {
        let count = self.inner.endpoints.len();
        let first = self.inner.preferred.load(Ordering::Relaxed);
        let mut errors = Vec::new();
        for index in (0..count).map(|i| (first + i) % count) {
            let endpoint = &self.inner.endpoints[index];
            match self.send_to(endpoint, path, body.clone(), token).await {
                Ok(body) => {
                    self.inner.preferred.store(index, Ordering::Relaxed);
                    return Ok(Answer {
                        endpoint: endpoint.name.clone(),
                        body,
                    });
                }
                Err(e) if e.may_try_next(retry) => {
                    tracing::debug!(error = %e, "etcd endpoint failed; trying the next one");
                    errors.push(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(match errors.len() {
            1 => errors.remove(0),
            _ => EtcdError::AllFailed { path, errors },
        })
    }

    async fn send_to(
        &self,
        endpoint: &Endpoint,
        path: &'static str,
        body: Bytes,
        token: Option<&HeaderValue>,
    ) -> Result<Bytes, EtcdError> {
        let mut request = Request::new(Method::POST, &endpoint.url)
            .path(path)
            .json(body)
            .read(BodyRead::Whole(MAX_ANSWER));
        if let Some(token) = token {
            request = request.authorization(token.clone());
        }
        if let Some(tls) = &self.inner.tls {
            request = request.tls(tls.clone());
        }
        let response = request
            .send_within(self.inner.timeout)
            .await
            .map_err(|e| EtcdError::from_http(&endpoint.name, path, e))?;
        if response.status.is_success() {
            return Ok(response.body);
        }
        let error = wire::decode_error(&response.body);
        Err(EtcdError::from_etcd(
            &endpoint.name,
            path,
            response.status.as_u16(),
            error,
        ))
    }

    /// The auth token to send (etcd wants it bare in `Authorization`), authenticating first if
    /// there is none; `None` without credentials.
    async fn token(&self) -> Result<Option<HeaderValue>, EtcdError> {
        let Some(credentials) = &self.inner.credentials else {
            return Ok(None);
        };
        let mut token = self.inner.token.lock().await;
        if let Some(value) = &*token {
            return Ok(Some(value.clone()));
        }
        let body = Bytes::from(wire::authenticate(credentials).to_string());
        let answer = self
            .send(AUTHENTICATE, &body, None, Retry::Idempotent)
            .await?;
        let text = answer.decode(AUTHENTICATE, wire::decode_token)?;
        let mut value = HeaderValue::try_from(text).map_err(|_| EtcdError::Auth {
            endpoint: answer.endpoint.clone(),
            path: AUTHENTICATE,
            message: "etcd sent a token that cannot be sent back in a header".into(),
        })?;
        value.set_sensitive(true);
        *token = Some(value.clone());
        Ok(Some(value))
    }

    /// Drop the token etcd refused, unless another call already replaced it.
    async fn forget_token(&self, refused: Option<&HeaderValue>) {
        let mut token = self.inner.token.lock().await;
        if token.as_ref() == refused {
            *token = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_plain_http_host_and_port() {
        let ok = EtcdClient::new(
            &["http://127.0.0.1:2379", "http://etcd-2.example:2379/"],
            Duration::from_secs(1),
            None,
            None,
        )
        .unwrap();
        let names: Vec<_> = ok.inner.endpoints.iter().map(|e| e.name.clone()).collect();
        assert_eq!(
            names,
            ["http://127.0.0.1:2379", "http://etcd-2.example:2379"]
        );
        let refused = [
            ("https://etcd:2379", "https needs a TLS configuration"),
            ("etcd:2379", "must be an http:// URL"),
            ("http://etcd:2379/v3", "without a path"),
            ("https://etcd:2379/v3", "https needs"),
            ("http://u:secret@etcd:2379", "user:password@"),
        ];
        for (endpoint, reason) in refused {
            let error =
                EtcdClient::new(&[endpoint], Duration::from_secs(1), None, None).unwrap_err();
            let text = error.to_string();
            assert!(text.contains(reason), "{endpoint}: {text}");
            assert!(!text.contains("secret"), "{text}");
        }
        assert!(matches!(
            EtcdClient::new::<&str>(&[], Duration::from_secs(1), None, None),
            Err(EtcdError::NoEndpoints)
        ));
    }

    #[test]
    fn https_endpoints_need_a_tls_configuration() {
        let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let ok = EtcdClient::new(
            &["https://127.0.0.1:2379", "https://ETCD-2:2379/"],
            Duration::from_secs(1),
            None,
            Some(Arc::new(config)),
        )
        .unwrap();
        let names: Vec<_> = ok.inner.endpoints.iter().map(|e| e.name.clone()).collect();
        assert_eq!(names, ["https://127.0.0.1:2379", "https://etcd-2:2379"]);
        assert!(ok.inner.endpoints.iter().all(|e| e.url.is_https()));
    }

    /// A TLS handshake that failed never carried the request: any call may move on.
    #[test]
    fn a_failed_tls_handshake_is_unreachable() {
        let error = EtcdError::from_http(
            "https://e:1",
            TXN,
            HttpError::Tls {
                host: "e:1".into(),
                reason: "invalid peer certificate: UnknownIssuer".into(),
            },
        );
        assert!(matches!(error, EtcdError::Unreachable { .. }), "{error:?}");
        assert!(error.may_try_next(Retry::NotSent));
        assert!(error.to_string().contains("UnknownIssuer"), "{error}");
    }

    #[test]
    fn errors_etcd_answers_are_classified() {
        let body = |code, message: &str| wire::ErrorBody {
            code,
            message: message.into(),
        };
        let e = EtcdError::from_etcd(
            "http://e:1",
            RANGE,
            401,
            body(16, "etcdserver: invalid auth token"),
        );
        assert!(e.is_invalid_token(), "{e:?}");
        let e = EtcdError::from_etcd(
            "http://e:1",
            RANGE,
            400,
            body(3, "etcdserver: user name is empty"),
        );
        assert!(
            matches!(e, EtcdError::Auth { .. }) && !e.is_invalid_token(),
            "{e:?}"
        );
        let e = EtcdError::from_etcd(
            "http://e:1",
            AUTHENTICATE,
            400,
            body(
                3,
                "etcdserver: authentication failed, invalid user ID or password",
            ),
        );
        assert!(matches!(e, EtcdError::Auth { .. }), "{e:?}");
        let e = EtcdError::from_etcd(
            "http://e:1",
            PUT,
            404,
            body(5, "etcdserver: requested lease not found"),
        );
        assert_eq!(
            e.to_string(),
            "etcd http://e:1 (/v3/kv/put): HTTP 404, code 5: etcdserver: requested lease not found"
        );
        assert!(!e.may_try_next(Retry::Idempotent));
        let no_leader =
            EtcdError::from_etcd("http://e:1", RANGE, 503, body(14, "etcdserver: no leader"));
        assert!(no_leader.may_try_next(Retry::Idempotent));
        assert!(!no_leader.may_try_next(Retry::NotSent));
    }

    #[test]
    fn only_calls_that_surely_were_not_sent_fail_over_unless_idempotent() {
        let unreachable = EtcdError::Unreachable {
            endpoint: "http://e:1".into(),
            path: TXN,
            cause: "refused".into(),
        };
        let timeout = EtcdError::Timeout {
            endpoint: "http://e:1".into(),
            path: TXN,
            timeout: Duration::from_secs(1),
        };
        assert!(unreachable.may_try_next(Retry::NotSent));
        assert!(!timeout.may_try_next(Retry::NotSent));
        assert!(timeout.may_try_next(Retry::Idempotent));
    }
}
