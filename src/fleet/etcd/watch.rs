//! The watch of a prefix: one long-lived `POST /v3/watch` whose answer is a stream of JSON
//! messages, read by a task that hands the changes to a [`Watch`]. It owns reconnecting
//! (another endpoint, or the same one back) from the revision after the last change handed
//! over, so a change is never handed over twice nor skipped, and it says so when etcd compacted
//! that revision away. What the changes mean is the caller's.
//!
//! Written on hyper's client connection directly rather than through
//! [`crate::http_client::Request`]: that one reads a whole answer on a connection it closes,
//! and a watch's answer never ends.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST, USER_AGENT};
use hyper::Method;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::wire::{self, WatchFrame, WatchParser};
use super::{Endpoint, EtcdClient, EtcdError, Event, WATCH};
use crate::http_client::{HttpStream, WARREN_USER_AGENT};

/// The pause before reconnecting, doubled on each failure up to [`RETRY_MAX`]; a watch that was
/// set up starts again from the first.
const RETRY_FIRST: Duration = Duration::from_millis(100);
/// Short enough that a watch is back within about a second of etcd coming back.
const RETRY_MAX: Duration = Duration::from_secs(1);

/// Changes under a prefix, in revision order, each handed over once. Dropping it ends the
/// watch.
///
/// [`Watch::next`] yields the changes of each revision as they come. An error is a report: the
/// watch goes on reconnecting by itself (an unreachable etcd, a refused token), except
/// [`EtcdError::Compacted`], after which it ends: the changes since the last one handed over are
/// no longer in etcd, so the caller reads the keys again ([`EtcdClient::get_prefix`]) and
/// watches from that read's revision + 1.
#[derive(Debug)]
pub struct Watch {
    changes: mpsc::Receiver<Result<Vec<Event>, EtcdError>>,
    /// The task that reads the stream; aborted on drop.
    task: JoinHandle<()>,
}

impl Watch {
    pub(super) fn start(client: EtcdClient, prefix: Vec<u8>, start_revision: i64) -> Watch {
        // A few revisions of slack: the reader waits when the caller does, it never drops.
        let (tx, changes) = mpsc::channel(64);
        let task = tokio::spawn(run(client, prefix, Cursor::new(start_revision), tx));
        Watch { changes, task }
    }

    /// The next changes (those of one revision, or more), or an error report; `None` once the
    /// watch ended (after [`EtcdError::Compacted`]).
    pub async fn next(&mut self) -> Option<Result<Vec<Event>, EtcdError>> {
        self.changes.recv().await
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Where the watch is: the first revision not handed over yet. Pure, so that "never twice,
/// never skipped" is tested without etcd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cursor {
    /// 0 until a watch "from the next change" is set up and etcd says at which revision.
    next: i64,
}

impl Cursor {
    fn new(start_revision: i64) -> Cursor {
        Cursor {
            next: start_revision.max(0),
        }
    }

    /// etcd set the watch up at `revision`.
    fn created(&mut self, revision: i64) {
        if self.next == 0 {
            self.next = revision + 1;
        }
    }

    /// The events not handed over yet (a reconnect may bring some again), moving past them.
    fn take(&mut self, events: Vec<Event>) -> Vec<Event> {
        let fresh: Vec<Event> = events
            .into_iter()
            .filter(|e| e.mod_revision >= self.next)
            .collect();
        if let Some(last) = fresh.last() {
            self.next = last.mod_revision + 1;
        }
        fresh
    }
}

/// How one connection's stream ended.
enum Stop {
    /// The [`Watch`] was dropped.
    Dropped,
    /// The start revision is compacted away: the watch ends.
    Compacted(EtcdError),
    /// Anything else: report, pause, reconnect. `created`: etcd had set the watch up.
    Broken { error: EtcdError, created: bool },
}

fn broken(error: EtcdError) -> Stop {
    Stop::Broken {
        error,
        created: false,
    }
}

type Changes = mpsc::Sender<Result<Vec<Event>, EtcdError>>;

async fn run(client: EtcdClient, prefix: Vec<u8>, mut cursor: Cursor, tx: Changes) {
    let mut pause = RETRY_FIRST;
    loop {
        let error = match stream(&client, &prefix, &mut cursor, &tx).await {
            Stop::Dropped => return,
            Stop::Compacted(error) => {
                let _ = tx.send(Err(error)).await;
                return;
            }
            Stop::Broken { error, created } => {
                if created {
                    pause = RETRY_FIRST;
                }
                error
            }
        };
        tracing::debug!(%error, next_revision = cursor.next, "etcd watch broke; reconnecting");
        if tx.send(Err(error)).await.is_err() {
            return;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(RETRY_MAX);
    }
}

/// One connection: connect, ask for the watch from the cursor, hand changes over until the
/// stream ends.
async fn stream(client: &EtcdClient, prefix: &[u8], cursor: &mut Cursor, tx: &Changes) -> Stop {
    let token = match client.token().await {
        Ok(token) => token,
        Err(error) => return broken(error),
    };
    let (endpoint, stream) = match connect_any(client).await {
        Ok(connected) => connected,
        Err(error) => return broken(error),
    };
    let name = endpoint.name.as_str();
    let unreachable = |cause: String| EtcdError::Unreachable {
        endpoint: name.to_string(),
        path: WATCH,
        cause,
    };
    let (mut sender, connection) =
        match hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream)).await {
            Ok(handshake) => handshake,
            Err(e) => return broken(unreachable(format!("HTTP handshake failed: {e}"))),
        };
    let body = wire::watch_create(prefix, cursor.next).to_string();
    let request = match build_request(endpoint, body, token.as_ref()) {
        Ok(request) => request,
        Err(error) => return broken(error),
    };
    let exchange = async {
        let response =
            match tokio::time::timeout(client.inner.timeout, sender.send_request(request)).await {
                Ok(Ok(response)) => response,
                // The server refused the TLS session after the client's side of the handshake.
                Ok(Err(e)) => match crate::tls::rustls_reason(&e) {
                    Some(reason) => return broken(unreachable(format!("TLS: {reason}"))),
                    None => return broken(transport(name, format!("HTTP exchange failed: {e}"))),
                },
                Err(_) => {
                    return broken(EtcdError::Timeout {
                        endpoint: name.to_string(),
                        path: WATCH,
                        timeout: client.inner.timeout,
                    })
                }
            };
        let status = response.status();
        if !status.is_success() {
            let body = response.into_body().collect().await;
            let body = body.map(|b| b.to_bytes()).unwrap_or_default();
            let error = wire::decode_error(&body);
            return broken(EtcdError::from_etcd(name, WATCH, status.as_u16(), error));
        }
        read(response.into_body(), name, cursor, tx).await
    };
    // The connection is driven here rather than spawned, so dropping the watch (aborting this
    // task) drops the connection with it.
    tokio::pin!(exchange);
    tokio::pin!(connection);
    let stop = tokio::select! {
        stop = &mut exchange => stop,
        // Closed: what it had read is still in the body; the exchange reads it to the end.
        _ = &mut connection => exchange.await,
    };
    if let Stop::Broken { error, .. } = &stop {
        if error.is_invalid_token() {
            client.forget_token(token.as_ref()).await;
        }
    }
    stop
}

fn transport(endpoint: &str, cause: String) -> EtcdError {
    EtcdError::Transport {
        endpoint: endpoint.to_string(),
        path: WATCH,
        cause,
    }
}

fn build_request(
    endpoint: &Endpoint,
    body: String,
    token: Option<&HeaderValue>,
) -> Result<hyper::Request<Full<Bytes>>, EtcdError> {
    let mut request = hyper::Request::builder()
        .method(Method::POST)
        .uri(WATCH)
        .header(HOST, endpoint.url.authority())
        .header(USER_AGENT, WARREN_USER_AGENT)
        .header(CONTENT_TYPE, "application/json");
    if let Some(token) = token {
        request = request.header(AUTHORIZATION, token.clone());
    }
    request
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| transport(&endpoint.name, format!("cannot build the request: {e}")))
}

/// Read the stream's messages and hand the changes over, until it ends.
async fn read(mut body: Incoming, endpoint: &str, cursor: &mut Cursor, tx: &Changes) -> Stop {
    let mut parser = WatchParser::default();
    let mut created = false;
    loop {
        let frame = match body.frame().await {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                let error = transport(endpoint, format!("the watch stream broke: {e}"));
                return Stop::Broken { error, created };
            }
            None => {
                let error = transport(endpoint, "etcd ended the watch stream".into());
                return Stop::Broken { error, created };
            }
        };
        let Some(data) = frame.data_ref() else {
            continue;
        };
        let messages = match parser.push(data) {
            Ok(messages) => messages,
            Err(message) => {
                let error = EtcdError::Decode {
                    endpoint: endpoint.to_string(),
                    path: WATCH,
                    message,
                };
                return Stop::Broken { error, created };
            }
        };
        for message in messages {
            match message {
                WatchFrame::Created { revision } => {
                    created = true;
                    cursor.created(revision);
                }
                WatchFrame::Progress => {}
                WatchFrame::Events(events) => {
                    let fresh = cursor.take(events);
                    if !fresh.is_empty() && tx.send(Ok(fresh)).await.is_err() {
                        return Stop::Dropped;
                    }
                }
                WatchFrame::Canceled {
                    compact_revision, ..
                } if compact_revision > 0 => {
                    return Stop::Compacted(EtcdError::Compacted {
                        endpoint: endpoint.to_string(),
                        path: WATCH,
                        revision: compact_revision,
                    });
                }
                WatchFrame::Canceled { reason, .. } => {
                    let error = wire::ErrorBody {
                        code: 0,
                        message: format!("etcd canceled the watch: {reason}"),
                    };
                    let error = EtcdError::from_etcd(endpoint, WATCH, 200, error);
                    return Stop::Broken { error, created };
                }
                WatchFrame::Error(error) => {
                    let error = EtcdError::from_etcd(endpoint, WATCH, 200, error);
                    return Stop::Broken { error, created };
                }
            }
        }
    }
}

/// A connection to the first endpoint that accepts, from the preferred one.
async fn connect_any(client: &EtcdClient) -> Result<(&Endpoint, HttpStream), EtcdError> {
    let endpoints = &client.inner.endpoints;
    let first = client
        .inner
        .preferred
        .load(std::sync::atomic::Ordering::Relaxed);
    let mut errors = Vec::new();
    for index in (0..endpoints.len()).map(|i| (first + i) % endpoints.len()) {
        let endpoint = &endpoints[index];
        let connected = connect(endpoint, client.inner.tls.as_ref());
        let cause = match tokio::time::timeout(client.inner.timeout, connected).await {
            Ok(Ok(stream)) => return Ok((endpoint, stream)),
            Ok(Err(cause)) => cause,
            Err(_) => format!(
                "no connection within {}",
                humantime::format_duration(client.inner.timeout)
            ),
        };
        errors.push(EtcdError::Unreachable {
            endpoint: endpoint.name.clone(),
            path: WATCH,
            cause,
        });
    }
    Err(match errors.len() {
        1 => errors.remove(0),
        _ => EtcdError::AllFailed {
            path: WATCH,
            errors,
        },
    })
}

/// A connection to `endpoint` (TLS for `https://`, with `tls`), or why not.
async fn connect(
    endpoint: &Endpoint,
    tls: Option<&std::sync::Arc<rustls::ClientConfig>>,
) -> Result<HttpStream, String> {
    let stream = connect_tcp(endpoint).await.map_err(|e| e.to_string())?;
    keep_alive(&stream);
    crate::http_client::secure(stream, &endpoint.url, tls)
        .await
        .map_err(|e| e.to_string())
}

async fn connect_tcp(endpoint: &Endpoint) -> std::io::Result<TcpStream> {
    let url = &endpoint.url;
    let mut last_error = None;
    for addr in tokio::net::lookup_host((url.host(), url.port())).await? {
        match TcpStream::connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the host resolves to no address",
        )
    }))
}

/// A watch connection is silent while nothing changes, so a peer that vanished without a word
/// (a host powered off, a dropped route) is found by TCP keep-alive probes, within about 25 s
/// on Linux, rather than never.
fn keep_alive(stream: &TcpStream) {
    let probes = socket2::TcpKeepalive::new().with_time(Duration::from_secs(10));
    #[cfg(any(target_os = "linux", target_os = "macos", windows))]
    let probes = probes.with_interval(Duration::from_secs(5));
    #[cfg(target_os = "linux")]
    let probes = probes.with_retries(3);
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&probes) {
        tracing::debug!(error = %e, "cannot set TCP keep-alive on the etcd watch connection");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::etcd::EventKind;

    fn put(key: &str, revision: i64) -> Event {
        Event {
            kind: EventKind::Put,
            key: key.as_bytes().to_vec(),
            value: Vec::new(),
            mod_revision: revision,
            create_revision: revision,
        }
    }

    #[test]
    fn the_cursor_hands_each_revision_over_once() {
        let mut cursor = Cursor::new(5);
        assert_eq!(cursor.take(vec![put("a", 5), put("b", 6)]).len(), 2);
        assert_eq!(cursor.next, 7);
        // A reconnect from 7 that still brings 6 (and two changes of revision 7, one txn).
        let again = cursor.take(vec![put("b", 6), put("c", 7), put("d", 7)]);
        assert_eq!(again, vec![put("c", 7), put("d", 7)]);
        assert_eq!(cursor.next, 8);
        assert!(cursor.take(vec![put("d", 7)]).is_empty());
        assert_eq!(cursor.next, 8);
        // `created` only matters for a watch "from the next change".
        cursor.created(100);
        assert_eq!(cursor.next, 8);
        let mut from_now = Cursor::new(0);
        from_now.created(41);
        assert_eq!(from_now.next, 42);
        assert_eq!(Cursor::new(-3).next, 0);
    }
}
