//! The one HTTP/1.1 client of warren, used by webhooks (`hooks`), the `http` probe and
//! the drain's quorum check (`health::probe`) and `warren ctl` (`ctl`). It owns
//! the parsed URL types ([`HttpUrl`], and [`ProbeUrl`] for the probe's `{host}`/`{port}`
//! template or its path on a management endpoint, both parsed at config load), resolving and connecting, one request per fresh
//! connection (`Connection: close`), TLS on an `https://` URL when the caller gives a client
//! configuration ([`Request::tls`], built by [`crate::tls`]; the etcd client, and the probes of a pool with `[pool.NAME.tls]`),
//! the `Authorization` header (bearer, or basic from
//! `user:pass@` or the caller), the cap on the body read, an optional bound on the whole exchange,
//! and [`HttpError`]. What a status means, retries, redaction of what is logged, and each caller's
//! timeouts and caps belong to the callers; this module must not know about hooks, health or the
//! admin API.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, AUTHORIZATION, CONNECTION, CONTENT_TYPE, HOST, USER_AGENT};
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use url::{Host, Position, Url};

/// The `User-Agent` of warren's own requests (webhooks, probes).
pub const WARREN_USER_AGENT: &str = concat!("warren/", env!("CARGO_PKG_VERSION"));

// ---------------------------------------------------------------------------------------------
// URLs

/// Why a URL cannot be used. The messages are the config's (`KEY = "VALUE": MESSAGE`); none of
/// them repeats the URL, which may hold a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// `https://`: warren has no TLS client.
    #[error("https is not supported yet; use an http:// URL (this one is not http://)")]
    Https,
    /// Another scheme, or none.
    #[error("must be an http:// URL, e.g. \"http://HOST[:PORT]/PATH\"")]
    Scheme,
    /// `http://`, `http:///path`: nothing to connect to.
    #[error("no host: write http://HOST[:PORT]/PATH")]
    NoHost,
    /// A port of 0 or past 65535, or not a number.
    #[error("the port must be a number from 1 to 65535")]
    Port,
    /// Anything else the URL parser refuses (a space in the host, ...).
    #[error("not a valid URL: {0}")]
    Invalid(url::ParseError),
    /// The path and query, as the URL parser escaped them, are still no HTTP request target.
    #[error("not a valid URL: the path or query cannot be sent in an HTTP request ({0})")]
    Target(String),
    /// `{management}` anywhere but at the start of a probe URL.
    #[error(
        "{{management}} stands for the backend's whole management endpoint (http://HOST:PORT), \
         so it may only start the url, e.g. \"{{management}}/api/health/checks/alarms\""
    )]
    ManagementPlacement,
    /// A probe URL that is a path on the management endpoint, for a backend that has none.
    #[error(
        "is a path on the backend's management endpoint, and this backend has none \
         (set [pool.NAME.management] url, or management on the backend)"
    )]
    NoManagement,
}

/// `user:password` for HTTP basic authentication; `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl Credentials {
    /// `user:password` in base64 (RFC 4648 with padding): the token of `Authorization: Basic`.
    pub fn basic_token(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", self.user, self.password))
    }

    /// The `Authorization` header value, marked sensitive.
    pub fn header(&self) -> HeaderValue {
        let mut value = HeaderValue::try_from(format!("Basic {}", self.basic_token()))
            .expect("base64 is a valid header value");
        value.set_sensitive(true);
        value
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"***")
            .finish()
    }
}

/// An `http://` URL (or `https://`, where the caller allows it: [`HttpUrl::parse_https`]),
/// parsed once (at config load for webhooks, at start for `warren ctl`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// `https://`: connected with TLS, the host being the name the certificate must bear.
    https: bool,
    /// Host name or IP, without IPv6 brackets, for resolving.
    host: String,
    port: u16,
    /// The `Host` header: host (bracketed when IPv6) and the port when one was written.
    authority: String,
    /// The request target: at least `/`; the fragment is never sent.
    path_and_query: String,
    /// `user:pass@` of the URL, percent-decoded, sent as basic authentication.
    credentials: Option<Credentials>,
}

impl HttpUrl {
    /// Parse an `http://HOST[:PORT]/PATH` URL (userinfo allowed, sent as basic authentication).
    pub fn parse(text: &str) -> Result<HttpUrl, UrlError> {
        if text.starts_with("https://") {
            return Err(UrlError::Https);
        }
        HttpUrl::parse_https(text)
    }

    /// [`HttpUrl::parse`], and `https://HOST[:PORT]/PATH` too (port 443 by default), for a
    /// caller that gives its requests a TLS configuration ([`Request::tls`]).
    pub fn parse_https(text: &str) -> Result<HttpUrl, UrlError> {
        let (https, after_scheme) = match text.strip_prefix("https://") {
            Some(rest) => (true, rest),
            None => (false, text.strip_prefix("http://").ok_or(UrlError::Scheme)?),
        };
        // The WHATWG parser forgives `http:///x` (as `http://x/`); an operator who wrote that
        // forgot the host, so it is refused as it always was.
        if after_scheme.is_empty() || after_scheme.starts_with(['/', '\\', '?', '#']) {
            return Err(UrlError::NoHost);
        }
        let url = Url::parse(text).map_err(|e| match e {
            url::ParseError::EmptyHost => UrlError::NoHost,
            url::ParseError::InvalidPort => UrlError::Port,
            e => UrlError::Invalid(e),
        })?;
        let host = match url.host() {
            Some(Host::Domain(name)) if !name.is_empty() => name.to_string(),
            Some(Host::Ipv4(ip)) => ip.to_string(),
            Some(Host::Ipv6(ip)) => ip.to_string(),
            _ => return Err(UrlError::NoHost),
        };
        let bracketed = url.host_str().unwrap_or_default();
        let authority = match url.port() {
            Some(0) => return Err(UrlError::Port),
            Some(port) => format!("{bracketed}:{port}"),
            None => bracketed.to_string(),
        };
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let credentials =
            (!url.username().is_empty() || url.password().is_some()).then(|| Credentials {
                user: decode(url.username()),
                password: decode(url.password().unwrap_or_default()),
            });
        let path_and_query = url[Position::BeforePath..Position::AfterQuery].to_string();
        // Checked here so that building a request from this URL cannot fail later.
        hyper::http::uri::PathAndQuery::try_from(path_and_query.as_str())
            .map_err(|e| UrlError::Target(e.to_string()))?;
        Ok(HttpUrl {
            https,
            host,
            port: url
                .port_or_known_default()
                .unwrap_or(if https { 443 } else { 80 }),
            authority,
            path_and_query,
            credentials,
        })
    }

    /// Host name or IP to resolve (IPv6 without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether this is an `https://` URL.
    pub fn is_https(&self) -> bool {
        self.https
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        if self.https {
            "https"
        } else {
            "http"
        }
    }

    /// `host[:port]` as sent in `Host`, without user info.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The path (at least `/`) and the query, if any.
    pub fn path_and_query(&self) -> &str {
        &self.path_and_query
    }

    /// The path alone (no query).
    pub fn path(&self) -> &str {
        self.path_and_query
            .split_once('?')
            .map_or(self.path_and_query.as_str(), |(path, _)| path)
    }

    pub fn has_query(&self) -> bool {
        self.path_and_query.contains('?')
    }

    /// The `user:pass@` of the URL.
    pub fn credentials(&self) -> Option<&Credentials> {
        self.credentials.as_ref()
    }

    /// This URL with `path` (a path, maybe with a query, starting with `/`) appended to its own
    /// path, keeping its `user:pass@`: a management endpoint `http://h:15672` or
    /// `http://proxy/rabbitmq/` joined with `/api/health/checks/alarms`. The query of this URL,
    /// if any, is dropped (config load refuses one on a management endpoint).
    pub fn join(&self, path: &str) -> Result<HttpUrl, UrlError> {
        let base = self.path().trim_end_matches('/');
        let mut url = HttpUrl::parse_https(&format!(
            "{}://{}{base}{path}",
            self.scheme(),
            self.authority
        ))?;
        url.credentials = self.credentials.clone();
        Ok(url)
    }

    /// This URL's authority and `user:pass@` with `path` (and query) in place of its own: the
    /// management API's other paths on the authority an `http` probe URL names.
    pub fn with_path(&self, path: &str) -> Result<HttpUrl, UrlError> {
        let mut url =
            HttpUrl::parse_https(&format!("{}://{}{path}", self.scheme(), self.authority))?;
        url.credentials = self.credentials.clone();
        Ok(url)
    }
}

/// How a URL is named in logs: without user info and without the query (either may hold a
/// secret).
impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", self.scheme(), self.authority, self.path())
    }
}

/// An `http` probe's URL as written. Either a full URL template, where `{host}` and `{port}`
/// stand for each backend's host and AMQP port, or a path on each backend's management endpoint
/// (`/api/health/checks/alarms`, or the same after `{management}`). It is checked at load against
/// a stand-in backend; each probe fills it in for its backend ([`ProbeUrl::for_backend`],
/// [`ProbeUrl::resolve`]). Kept as text because the template is only a URL once filled in
/// (`{port}` can stand where a number must be). `Debug` hides user info.
#[derive(Clone, PartialEq, Eq)]
pub struct ProbeUrl {
    template: String,
    /// The path to join to the backend's management endpoint; `None` for a full URL template.
    management_path: Option<String>,
}

/// What a probe URL writes for the backend's management endpoint.
pub const MANAGEMENT_PLACEHOLDER: &str = "{management}";

impl ProbeUrl {
    /// The stand-in backend a template is checked against at load.
    const CHECK_HOST: &'static str = "backend.invalid";
    const CHECK_PORT: u16 = 5672;
    const CHECK_MANAGEMENT: &'static str = "http://backend.invalid:15672";

    /// Check `template` as a probe URL (see [`HttpUrl::parse`]).
    pub fn parse(template: &str) -> Result<ProbeUrl, UrlError> {
        let management_path = match template.strip_prefix(MANAGEMENT_PLACEHOLDER) {
            Some("") => Some("/".to_string()),
            Some(rest) if rest.starts_with('/') => Some(rest.to_string()),
            Some(_) => return Err(UrlError::ManagementPlacement),
            None if template.starts_with('/') => Some(template.to_string()),
            None => None,
        };
        let rest = management_path.as_deref().unwrap_or(template);
        if rest.contains(MANAGEMENT_PLACEHOLDER) {
            return Err(UrlError::ManagementPlacement);
        }
        let url = ProbeUrl {
            template: template.to_string(),
            management_path,
        };
        let management = HttpUrl::parse(Self::CHECK_MANAGEMENT).expect("a valid URL");
        url.resolve(Self::CHECK_HOST, Self::CHECK_PORT, Some(&management))?;
        Ok(url)
    }

    /// Whether the template is an `https://` URL (a path's scheme is its management
    /// endpoint's): the caller must then give its requests a TLS configuration.
    pub fn is_https(&self) -> bool {
        self.management_path.is_none() && self.template.starts_with("https://")
    }

    /// The URL for the backend at `host` (as configured, IPv6 without brackets) and `port`, for
    /// a full URL template (a path needs the backend's management endpoint: [`Self::resolve`]).
    pub fn for_backend(&self, host: &str, port: u16) -> Result<HttpUrl, UrlError> {
        self.resolve(host, port, None)
    }

    /// The URL for the backend at `host` and `port` whose management endpoint is `management`:
    /// a path is joined to the endpoint, a full template filled in.
    pub fn resolve(
        &self,
        host: &str,
        port: u16,
        management: Option<&HttpUrl>,
    ) -> Result<HttpUrl, UrlError> {
        match (&self.management_path, management) {
            (None, _) => HttpUrl::parse_https(&fill_template(&self.template, host, port)),
            (Some(path), Some(base)) => base.join(&fill_template(path, host, port)),
            (Some(_), None) => Err(UrlError::NoManagement),
        }
    }

    /// Whether the URL is a path on each backend's management endpoint.
    pub fn on_management(&self) -> bool {
        self.management_path.is_some()
    }

    /// Whether the template has `user:pass@` (checked against the stand-in backend).
    pub fn has_credentials(&self) -> bool {
        self.for_backend(Self::CHECK_HOST, Self::CHECK_PORT)
            .is_ok_and(|url| url.credentials.is_some())
    }

    /// The template as written (it may hold a password: never log it as is).
    pub fn template(&self) -> &str {
        &self.template
    }
}

impl fmt::Debug for ProbeUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ProbeUrl")
            .field(&without_userinfo(&self.template))
            .finish()
    }
}

/// Replace `{host}` (bracketed when it is an IPv6 literal) and `{port}` in a URL template.
pub fn fill_template(template: &str, host: &str, port: u16) -> String {
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    template
        .replace("{host}", &host)
        .replace("{port}", &port.to_string())
}

/// The host of a `scheme://[userinfo@]host[:port]/...` URL of any scheme (an AMQP URI too),
/// without brackets; `None` when it has none.
pub fn url_host(text: &str) -> Option<String> {
    let url = Url::parse(text).ok()?;
    // The WHATWG parser reads `http:///path` as host `path`: an empty authority has no host.
    if text.split_once("://")?.1.starts_with(['/', '\\']) {
        return None;
    }
    match url.host()? {
        Host::Domain(name) if !name.is_empty() => Some(name.to_string()),
        Host::Ipv4(ip) => Some(ip.to_string()),
        Host::Ipv6(ip) => Some(ip.to_string()),
        Host::Domain(_) => None,
    }
}

/// `text` with the user info of its authority replaced by `***`, for showing a URL that may
/// not parse (so it is cut by hand: the URL parser is what refused it).
pub fn without_userinfo(text: &str) -> String {
    let Some((scheme, rest)) = text.split_once("://") else {
        return text.to_string();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => text.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Requests

/// Where an exchange was, for a timeout's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Connecting,
    WaitingForResponse,
    ReadingBody,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Connecting => "connecting",
            Phase::WaitingForResponse => "waiting for the HTTP response",
            Phase::ReadingBody => "reading the HTTP body",
        }
    }
}

/// How much of the answer's body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyRead {
    /// The first bytes of a non-2xx answer only (for a log line or a probe's reason); a body
    /// cut short is not an error.
    FailurePrefix(usize),
    /// The first bytes, whatever the status; a body cut short is not an error.
    Prefix(usize),
    /// The whole body: more than this many bytes, or a broken body, is an error.
    Whole(usize),
}

/// Why an exchange failed. `host` is the URL's authority (no user info).
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot resolve {host}: {source}")]
    Resolve { host: String, source: io::Error },
    #[error("{host} resolves to no address")]
    NoAddress { host: String },
    #[error("cannot connect to {host}: {source}")]
    Connect { host: String, source: io::Error },
    /// The TLS handshake failed, or the server refused it with an alert after the client's
    /// side was done (a TLS 1.3 server that wants another client certificate): either way the
    /// request was not read. `reason` is rustls's.
    #[error("TLS handshake with {host} failed: {reason}")]
    Tls { host: String, reason: String },
    /// The HTTP/1.1 handshake on the fresh connection failed.
    #[error("HTTP exchange with {host} failed: {source}")]
    Handshake { host: String, source: hyper::Error },
    /// Sending the request or reading the response head failed.
    #[error("HTTP exchange with {host} failed: {source}")]
    Exchange { host: String, source: hyper::Error },
    /// The server closed the connection without an answer.
    #[error("{host} closed the connection before answering")]
    Closed { host: String, source: hyper::Error },
    /// The body broke off ([`BodyRead::Whole`] only).
    #[error("reading the answer from {host}: {source}")]
    Body { host: String, source: hyper::Error },
    /// The body is larger than the cap of [`BodyRead::Whole`].
    #[error("the answer from {host} is larger than {cap} bytes")]
    TooLarge { host: String, cap: usize },
    /// The request could not be built (a path or header the caller gave is not valid HTTP).
    #[error("cannot build a request to {host}: {source}")]
    Build {
        host: String,
        source: hyper::http::Error,
    },
    /// [`Request::send_within`]'s bound passed.
    #[error("no answer from {host} within {} ({})", humantime::format_duration(*timeout), phase.as_str())]
    Timeout {
        host: String,
        timeout: Duration,
        phase: Phase,
    },
}

/// An answer: the status and as much of the body as [`BodyRead`] asked for.
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub body: Bytes,
}

/// One request on a fresh connection; build it with the methods below, then [`Request::send`].
#[derive(Debug)]
pub struct Request<'a> {
    method: Method,
    url: &'a HttpUrl,
    path: Option<&'a str>,
    user_agent: &'static str,
    authorization: Option<HeaderValue>,
    json: Option<Bytes>,
    /// `X-Reason`: why the request is made (RabbitMQ passes it on to a client it closes).
    reason: Option<HeaderValue>,
    connect_to: Option<SocketAddr>,
    /// For an `https://` URL: the roots (and client certificate) of the handshake.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The name the server's certificate must bear, when not the URL's host.
    server_name: Option<ServerName<'static>>,
    read: BodyRead,
}

impl<'a> Request<'a> {
    /// `method` on `url`: its path and query, its `user:pass@` as basic authentication, the
    /// [`WARREN_USER_AGENT`], and the body of a failure read up to 200 bytes.
    pub fn new(method: Method, url: &'a HttpUrl) -> Request<'a> {
        Request {
            method,
            url,
            path: None,
            user_agent: WARREN_USER_AGENT,
            authorization: url.credentials.as_ref().map(Credentials::header),
            json: None,
            reason: None,
            connect_to: None,
            tls: None,
            server_name: None,
            read: BodyRead::FailurePrefix(200),
        }
    }

    /// Ask for `path` (and query) on the URL's authority instead of the URL's own.
    pub fn path(mut self, path: &'a str) -> Self {
        self.path = Some(path);
        self
    }

    pub fn user_agent(mut self, user_agent: &'static str) -> Self {
        self.user_agent = user_agent;
        self
    }

    /// Send this `Authorization` instead of the URL's user info.
    pub fn authorization(mut self, value: HeaderValue) -> Self {
        self.authorization = Some(value);
        self
    }

    /// A JSON body (`Content-Type: application/json`).
    pub fn json(mut self, body: impl Into<Bytes>) -> Self {
        self.json = Some(body.into());
        self
    }

    /// An `X-Reason` header, as RabbitMQ's management API reads it when it closes a connection.
    pub fn reason(mut self, value: HeaderValue) -> Self {
        self.reason = Some(value);
        self
    }

    /// Connect to `addr` instead of resolving the URL's host (the caller already knows it).
    pub fn connect_to(mut self, addr: SocketAddr) -> Self {
        self.connect_to = Some(addr);
        self
    }

    /// The TLS configuration of an `https://` URL (an `http://` one ignores it); without it an
    /// `https://` URL fails with [`HttpError::Tls`].
    pub fn tls(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// Check the server's certificate against `name` (and send it as SNI) instead of the
    /// URL's host: a backend reached by IP whose certificate names it.
    pub fn server_name(mut self, name: ServerName<'static>) -> Self {
        self.server_name = Some(name);
        self
    }

    pub fn read(mut self, read: BodyRead) -> Self {
        self.read = read;
        self
    }

    /// [`Request::send`] bounded by `timeout`, connect included.
    pub async fn send_within(self, timeout: Duration) -> Result<Response, HttpError> {
        let host = self.url.authority.clone();
        let mut phase = Phase::Connecting;
        match tokio::time::timeout(timeout, self.send(&mut phase)).await {
            Ok(answer) => answer,
            Err(_) => Err(HttpError::Timeout {
                host,
                timeout,
                phase,
            }),
        }
    }

    /// Connect, send, read the answer; `phase` tells a caller that bounds this future itself
    /// where it was when it gave up. Unbounded: the caller bounds it (or uses
    /// [`Request::send_within`]).
    pub async fn send(self, phase: &mut Phase) -> Result<Response, HttpError> {
        let host = || self.url.authority.clone();
        let request = self.build()?;
        *phase = Phase::Connecting;
        let stream = self.connect().await?;
        // One small request and its answer: no reason to let Nagle hold a write back.
        let _ = stream.set_nodelay(true);
        let stream = secure_as(
            stream,
            self.url,
            self.tls.as_ref(),
            self.server_name.as_ref(),
        )
        .await?;
        *phase = Phase::WaitingForResponse;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
                .await
                .map_err(|source| HttpError::Handshake {
                    host: host(),
                    source,
                })?;
        let read = self.read;
        let exchange = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|source| exchange_error(host(), source))?;
            let status = response.status();
            *phase = Phase::ReadingBody;
            let body = read_body(response.into_body(), status, read, &self.url.authority).await?;
            Ok(Response { status, body })
        };
        // The connection is driven here rather than spawned, so dropping this future (a
        // caller's timeout) drops the connection with it.
        tokio::pin!(exchange);
        tokio::pin!(connection);
        tokio::select! {
            result = &mut exchange => result,
            finished = &mut connection => match finished {
                // With `Connection: close` it may finish while the response is still buffered.
                Ok(()) => exchange.await.map_err(|e| match e {
                    HttpError::Exchange { host, source }
                        if source.is_canceled() || source.is_closed() =>
                    {
                        HttpError::Closed { host, source }
                    }
                    e => e,
                }),
                Err(source) => Err(exchange_error(host(), source)),
            },
        }
    }

    fn build(&self) -> Result<hyper::Request<Full<Bytes>>, HttpError> {
        let mut request = hyper::Request::builder()
            .method(self.method.clone())
            .uri(self.path.unwrap_or(&self.url.path_and_query))
            .header(HOST, self.url.authority.as_str())
            .header(USER_AGENT, self.user_agent)
            .header(CONNECTION, "close");
        if let Some(value) = &self.authorization {
            request = request.header(AUTHORIZATION, value.clone());
        }
        if self.json.is_some() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        if let Some(value) = &self.reason {
            request = request.header("x-reason", value.clone());
        }
        request
            .body(Full::new(self.json.clone().unwrap_or_default()))
            .map_err(|source| HttpError::Build {
                host: self.url.authority.clone(),
                source,
            })
    }

    /// A connection to `connect_to`, or to the first address of the URL's host that accepts.
    async fn connect(&self) -> Result<TcpStream, HttpError> {
        let host = || self.url.authority.clone();
        let addrs: Vec<SocketAddr> = match self.connect_to {
            Some(addr) => vec![addr],
            None => tokio::net::lookup_host((self.url.host.as_str(), self.url.port))
                .await
                .map_err(|source| HttpError::Resolve {
                    host: host(),
                    source,
                })?
                .collect(),
        };
        let mut last_error = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(stream) => return Ok(stream),
                Err(e) => last_error = Some(e),
            }
        }
        Err(match last_error {
            Some(source) => HttpError::Connect {
                host: host(),
                source,
            },
            None => HttpError::NoAddress { host: host() },
        })
    }
}

/// A failed exchange: [`HttpError::Tls`] when the server refused this client's certificate
/// (the request was not read, so another endpoint may take it), else [`HttpError::Exchange`]
/// (any other TLS error after the handshake may come after the server acted on the request).
fn exchange_error(host: String, source: hyper::Error) -> HttpError {
    match crate::tls::certificate_refused(&source) {
        Some(reason) => HttpError::Tls { host, reason },
        None => HttpError::Exchange { host, source },
    }
}

/// `stream` as is for an `http://` URL; for an `https://` one, after a TLS handshake with `tls`
/// in which the server's certificate must be valid for the URL's host (a name, or an IP
/// address among the certificate's IP SANs). Unbounded, like the connect: the caller bounds it.
pub async fn secure(
    stream: TcpStream,
    url: &HttpUrl,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<HttpStream, HttpError> {
    secure_as(stream, url, tls, None).await
}

/// [`secure`], the server's certificate checked against `server_name` when given.
pub async fn secure_as(
    stream: TcpStream,
    url: &HttpUrl,
    tls: Option<&Arc<rustls::ClientConfig>>,
    server_name: Option<&ServerName<'static>>,
) -> Result<HttpStream, HttpError> {
    if !url.https {
        return Ok(HttpStream::Plain(stream));
    }
    let failed = |reason: String| HttpError::Tls {
        host: url.authority.clone(),
        reason,
    };
    let Some(tls) = tls else {
        return Err(failed(
            "no TLS configuration was given for this https:// URL".into(),
        ));
    };
    let name = match server_name {
        Some(name) => name.clone(),
        None => ServerName::try_from(url.host.clone())
            .map_err(|e| failed(format!("{:?} cannot be a TLS server name: {e}", url.host)))?,
    };
    match tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, stream)
        .await
    {
        Ok(stream) => Ok(HttpStream::Tls(Box::new(stream))),
        Err(e) => Err(failed(
            crate::tls::rustls_reason(&e).unwrap_or_else(|| e.to_string()),
        )),
    }
}

/// A connection to an HTTP server: plain TCP, or TLS over it. Boxed when TLS: its state is
/// large and a plain connection should not pay for it.
#[derive(Debug)]
pub enum HttpStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for HttpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            HttpStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            HttpStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for HttpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            HttpStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            HttpStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            HttpStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            HttpStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            HttpStream::Plain(s) => s.is_write_vectored(),
            HttpStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            HttpStream::Plain(s) => Pin::new(s).poll_flush(cx),
            HttpStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            HttpStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            HttpStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Read as much of `body` as `read` asks for.
async fn read_body(
    mut body: hyper::body::Incoming,
    status: StatusCode,
    read: BodyRead,
    host: &str,
) -> Result<Bytes, HttpError> {
    let (cap, whole) = match read {
        BodyRead::FailurePrefix(_) if status.is_success() => return Ok(Bytes::new()),
        BodyRead::FailurePrefix(cap) | BodyRead::Prefix(cap) => (cap, false),
        BodyRead::Whole(cap) => (cap, true),
    };
    let mut kept = Vec::new();
    loop {
        if !whole && kept.len() >= cap {
            break;
        }
        match body.frame().await {
            Some(Ok(frame)) => {
                let Some(data) = frame.data_ref() else {
                    continue;
                };
                if whole && kept.len() + data.len() > cap {
                    return Err(HttpError::TooLarge {
                        host: host.to_string(),
                        cap,
                    });
                }
                let room = cap - kept.len();
                kept.extend_from_slice(&data[..data.len().min(room)]);
            }
            Some(Err(source)) if whole => {
                return Err(HttpError::Body {
                    host: host.to_string(),
                    source,
                })
            }
            // A prefix cut short still leaves the status to report.
            Some(Err(_)) | None => break,
        }
    }
    Ok(Bytes::from(kept))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[test]
    fn http_urls() {
        /// url, host, port, authority, path and query, credentials
        type Case<'a> = (
            &'a str,
            &'a str,
            u16,
            &'a str,
            &'a str,
            Option<(&'a str, &'a str)>,
        );
        let cases: &[Case] = &[
            (
                "http://127.0.0.1:8080/warren-events",
                "127.0.0.1",
                8080,
                "127.0.0.1:8080",
                "/warren-events",
                None,
            ),
            (
                "http://hooks.example/",
                "hooks.example",
                80,
                "hooks.example",
                "/",
                None,
            ),
            (
                "http://hooks.example",
                "hooks.example",
                80,
                "hooks.example",
                "/",
                None,
            ),
            (
                "http://[::1]:9000/a?b=c",
                "::1",
                9000,
                "[::1]:9000",
                "/a?b=c",
                None,
            ),
            (
                "http://user:secret@h:81/x",
                "h",
                81,
                "h:81",
                "/x",
                Some(("user", "secret")),
            ),
            (
                "http://ops%40corp:p%3Aw@h/x#frag",
                "h",
                80,
                "h",
                "/x",
                Some(("ops@corp", "p:w")),
            ),
            ("http://token@h/", "h", 80, "h", "/", Some(("token", ""))),
        ];
        for (text, host, port, authority, path, credentials) in cases {
            let url = HttpUrl::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(
                (
                    url.host(),
                    url.port(),
                    url.authority(),
                    url.path_and_query()
                ),
                (*host, *port, *authority, *path),
                "{text}"
            );
            let got = url
                .credentials()
                .map(|c| (c.user.as_str(), c.password.as_str()));
            assert_eq!(got, *credentials, "{text}");
            assert!(!url.to_string().contains("secret"), "{text}");
            assert!(!format!("{url:?}").contains("secret"), "{text}");
        }
        let bad: &[(&str, UrlError)] = &[
            ("https://h/", UrlError::Https),
            ("ftp://h/", UrlError::Scheme),
            ("h:80/x", UrlError::Scheme),
            ("http://", UrlError::NoHost),
            ("http:///x", UrlError::NoHost),
            ("http://h:99999/", UrlError::Port),
            ("http://h:0/", UrlError::Port),
            ("http://h:x/", UrlError::Port),
        ];
        for (text, want) in bad {
            assert_eq!(HttpUrl::parse(text).as_ref(), Err(want), "{text}");
        }
        let spaced = HttpUrl::parse("http://a b/").unwrap_err();
        assert!(
            spaced.to_string().starts_with("not a valid URL"),
            "{spaced}"
        );
        let endless = format!("http://h/{}", "x".repeat(70_000));
        assert!(
            matches!(HttpUrl::parse(&endless), Err(UrlError::Target(_))),
            "a request target past hyper's limit"
        );
        // What the URL parser escapes is sent escaped.
        let spaces = HttpUrl::parse("http://h/a b?c d").unwrap();
        assert_eq!(spaces.path_and_query(), "/a%20b?c%20d");
    }

    /// `https://` only where the caller allows it; the scheme stays through `join`.
    #[test]
    fn https_urls_parse_only_when_allowed() {
        let url = HttpUrl::parse_https("https://etcd-1/x").unwrap();
        assert!(url.is_https());
        assert_eq!((url.port(), url.authority()), (443, "etcd-1"));
        assert_eq!(url.to_string(), "https://etcd-1/x");
        let joined = url.join("/v3/kv/range").unwrap();
        assert!(joined.is_https());
        assert_eq!(joined.to_string(), "https://etcd-1/x/v3/kv/range");
        let plain = HttpUrl::parse_https("http://[::1]:2379").unwrap();
        assert!(!plain.is_https());
        assert_eq!(plain.port(), 2379);
        assert_eq!(HttpUrl::parse("https://h/"), Err(UrlError::Https));
        assert_eq!(HttpUrl::parse_https("ftp://h/"), Err(UrlError::Scheme));
    }

    /// An https URL without a TLS configuration is refused before anything is sent.
    #[tokio::test]
    async fn https_without_a_tls_configuration_is_refused() {
        let (url, server) = serve_once(Some(answer(200, b""))).await;
        let https = HttpUrl::parse_https(&format!("https://{}/", url.authority())).unwrap();
        match Request::new(Method::GET, &https).send_within(LONG).await {
            Err(HttpError::Tls { reason, .. }) => {
                assert!(reason.contains("no TLS configuration"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        server.abort();
    }

    #[test]
    fn basic_token_matches_rfc4648_vectors() {
        let token = |user: &str, password: &str| {
            Credentials {
                user: user.into(),
                password: password.into(),
            }
            .basic_token()
        };
        // "f:" .. "foobar:" exercise every padding length.
        let cases = [
            ("f", "", "Zjo="),
            ("fo", "", "Zm86"),
            ("foo", "", "Zm9vOg=="),
            ("guest", "guest", "Z3Vlc3Q6Z3Vlc3Q="),
            ("Aladdin", "open sesame", "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="),
        ];
        for (user, password, expected) in cases {
            assert_eq!(token(user, password), expected, "{user}:{password}");
        }
    }

    #[test]
    fn probe_urls_are_templates_checked_at_load() {
        let url = ProbeUrl::parse("http://u:p@{host}:15672/api/x?port={port}").unwrap();
        let filled = url.for_backend("::1", 5673).unwrap();
        assert_eq!(filled.authority(), "[::1]:15672");
        assert_eq!(filled.host(), "::1");
        assert_eq!(filled.path_and_query(), "/api/x?port=5673");
        assert!(url.has_credentials());
        assert!(!format!("{url:?}").contains("u:p"), "{url:?}");
        let url = ProbeUrl::parse("http://{host}:{port}/").unwrap();
        assert_eq!(url.for_backend("rabbit-a", 15672).unwrap().port(), 15672);
        assert!(!url.has_credentials());
        let https = ProbeUrl::parse("https://{host}:15671/api/x").unwrap();
        assert!(https.is_https());
        assert_eq!(https.for_backend("h", 5671).unwrap().scheme(), "https");
        assert!(!url.is_https() && !ProbeUrl::parse("/api/x").unwrap().is_https());
        for (bad, want) in [
            ("{host}:15672/", UrlError::Scheme),
            ("http://{host}:99999/", UrlError::Port),
            ("http:///api", UrlError::NoHost),
        ] {
            assert_eq!(ProbeUrl::parse(bad), Err(want), "{bad}");
        }
    }

    /// A probe URL that is a path (or starts with `{management}`) is joined to each backend's
    /// management endpoint, keeping the endpoint's prefix and user info; a full template is
    /// filled in as before, whatever the endpoint.
    #[test]
    fn probe_url_paths_resolve_against_the_management_endpoint() {
        let endpoint = |text: &str| HttpUrl::parse(text).unwrap();
        let cases = [
            (
                "/api/health/checks/alarms",
                "http://10.0.0.5:15673",
                "10.0.0.5:15673",
                "/api/health/checks/alarms",
            ),
            (
                "{management}/api/x",
                "http://10.0.0.5:15673/",
                "10.0.0.5:15673",
                "/api/x",
            ),
            ("{management}", "http://h:15672", "h:15672", "/"),
            (
                "/api/x?node={host}",
                "http://proxy/rabbit-a/",
                "proxy",
                "/rabbit-a/api/x?node=rabbit-a",
            ),
            ("/a b", "http://[::1]:15672", "[::1]:15672", "/a%20b"),
            (
                "http://{host}:15672/api/y",
                "http://other:1",
                "rabbit-a:15672",
                "/api/y",
            ),
        ];
        for (template, base, authority, path) in cases {
            let url = ProbeUrl::parse(template).unwrap();
            let got = url
                .resolve("rabbit-a", 5672, Some(&endpoint(base)))
                .unwrap();
            assert_eq!(
                (got.authority(), got.path_and_query()),
                (authority, path),
                "{template} on {base}"
            );
        }
        let on = ProbeUrl::parse("/api/x").unwrap();
        assert!(on.on_management() && !on.has_credentials());
        assert_eq!(on.resolve("h", 1, None), Err(UrlError::NoManagement));
        assert_eq!(on.for_backend("h", 1), Err(UrlError::NoManagement));
        assert!(!ProbeUrl::parse("http://{host}/").unwrap().on_management());
        // The endpoint's user info comes along.
        let joined = endpoint("http://u:p%40ss@h:15672").join("/api/x").unwrap();
        assert_eq!(joined.credentials().unwrap().password, "p@ss");
        // Another path on a probe URL's authority keeps its user info, not its path or query.
        let other = endpoint("http://u:pw@h:15672/api/health/checks/alarms?x=1")
            .with_path("/api/overview")
            .unwrap();
        assert_eq!(
            (other.authority(), other.path_and_query()),
            ("h:15672", "/api/overview")
        );
        assert_eq!(other.credentials().unwrap().password, "pw");
        for bad in [
            "{management}api",
            "http://{management}/x",
            "/api/{management}",
        ] {
            assert_eq!(
                ProbeUrl::parse(bad),
                Err(UrlError::ManagementPlacement),
                "{bad}"
            );
        }
    }

    #[test]
    fn fill_template_brackets_ipv6_hosts() {
        let cases = [
            ("rabbit-a", "http://rabbit-a:15672/x"),
            ("10.0.0.1", "http://10.0.0.1:15672/x"),
            ("::1", "http://[::1]:15672/x"),
        ];
        for (host, expected) in cases {
            assert_eq!(fill_template("http://{host}:15672/x", host, 5672), expected);
        }
        assert_eq!(
            fill_template("amqp://u:p@{host}:{port}/%2f", "::1", 5672),
            "amqp://u:p@[::1]:5672/%2f"
        );
    }

    #[test]
    fn url_host_handles_userinfo_ports_and_brackets() {
        let cases = [
            ("amqp://u:p@rabbit:5672/%2f", Some("rabbit")),
            ("amqp://u:p@[::1]:5672/", Some("::1")),
            ("http://[fe80::1]/api", Some("fe80::1")),
            ("http://host", Some("host")),
            ("http://u:p@h:1?x", Some("h")),
            ("no-scheme", None),
            ("http:///path", None),
        ];
        for (url, expected) in cases {
            assert_eq!(url_host(url).as_deref(), expected, "{url}");
        }
    }

    #[test]
    fn userinfo_is_masked_even_in_urls_that_do_not_parse() {
        let cases = [
            ("http://u:s3cret@h:99999/x", "http://***@h:99999/x"),
            ("http://h/a@b", "http://h/a@b"),
            ("no scheme", "no scheme"),
        ];
        for (text, shown) in cases {
            assert_eq!(without_userinfo(text), shown);
        }
    }

    /// A server on loopback that reads one request head and answers `reply` (or nothing,
    /// holding the connection, when `reply` is `None`); returns its address and the head.
    async fn serve_once(reply: Option<Vec<u8>>) -> (HttpUrl, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = HttpUrl::parse(&format!("http://{}/x", listener.local_addr().unwrap())).unwrap();
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            // The head is all the tests look at; a body may come with it or not.
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            match reply {
                Some(reply) => {
                    let _ = stream.write_all(&reply).await;
                }
                None => tokio::time::sleep(Duration::from_secs(10)).await,
            }
            String::from_utf8_lossy(&head).into_owned()
        });
        (url, task)
    }

    fn answer(status: u16, body: &[u8]) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(body);
        out
    }

    const LONG: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn body_caps_per_read_mode() {
        let big = vec![b'x'; 1000];
        // (status, read mode, expected body length or Err when the cap is an error)
        let cases = [
            (200, BodyRead::FailurePrefix(200), Ok(0)),
            (503, BodyRead::FailurePrefix(200), Ok(200)),
            (200, BodyRead::Prefix(300), Ok(300)),
            (200, BodyRead::Whole(1000), Ok(1000)),
            (200, BodyRead::Whole(999), Err(())),
        ];
        for (status, read, want) in cases {
            let (url, server) = serve_once(Some(answer(status, &big))).await;
            let got = Request::new(Method::GET, &url)
                .read(read)
                .send_within(LONG)
                .await;
            match (got, want) {
                (Ok(r), Ok(len)) => {
                    assert_eq!(r.status.as_u16(), status);
                    assert_eq!(r.body.len(), len, "{read:?}");
                }
                (Err(HttpError::TooLarge { cap, .. }), Err(())) => assert_eq!(cap, 999),
                (got, want) => panic!("{read:?}: got {got:?}, want {want:?}"),
            }
            server.abort();
        }
    }

    #[tokio::test]
    async fn non_2xx_is_an_answer_not_an_error() {
        let (url, server) = serve_once(Some(answer(500, b"queue exploded"))).await;
        let response = Request::new(Method::POST, &url)
            .json("{}")
            .send_within(LONG)
            .await
            .unwrap();
        assert_eq!(response.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(&response.body[..], b"queue exploded");
        let head = server.await.unwrap().to_ascii_lowercase();
        assert!(head.starts_with("post /x http/1.1\r\n"), "{head}");
        assert!(
            head.contains("content-type: application/json\r\n"),
            "{head}"
        );
        assert!(head.contains("connection: close\r\n"), "{head}");
        assert!(!head.contains("authorization"), "{head}");
    }

    #[tokio::test]
    async fn userinfo_is_sent_as_basic_auth_and_an_explicit_header_wins() {
        let (url, server) = serve_once(Some(answer(200, b""))).await;
        let with_userinfo =
            HttpUrl::parse(&format!("http://ops:hunter2@{}/x", url.authority())).unwrap();
        Request::new(Method::GET, &with_userinfo)
            .send_within(LONG)
            .await
            .unwrap();
        let head = server.await.unwrap();
        // base64("ops:hunter2")
        assert!(
            head.contains("authorization: Basic b3BzOmh1bnRlcjI=\r\n"),
            "{head}"
        );
        assert!(
            head.contains(&format!("host: {}\r\n", url.authority())),
            "{head}"
        );

        let (url, server) = serve_once(Some(answer(200, b""))).await;
        let with_userinfo =
            HttpUrl::parse(&format!("http://ops:hunter2@{}/x", url.authority())).unwrap();
        Request::new(Method::GET, &with_userinfo)
            .authorization(HeaderValue::from_static("Bearer t"))
            .send_within(LONG)
            .await
            .unwrap();
        let head = server.await.unwrap();
        assert!(head.contains("authorization: Bearer t\r\n"), "{head}");
        assert!(!head.contains("Basic"), "{head}");
    }

    #[tokio::test]
    async fn a_silent_server_times_out_waiting_for_the_response() {
        let (url, server) = serve_once(None).await;
        let timeout = Duration::from_millis(300);
        match Request::new(Method::GET, &url).send_within(timeout).await {
            Err(HttpError::Timeout {
                phase, timeout: t, ..
            }) => {
                assert_eq!(phase, Phase::WaitingForResponse);
                assert_eq!(t, timeout);
            }
            other => panic!("{other:?}"),
        }
        server.abort();
    }

    #[tokio::test]
    async fn connect_and_close_failures_are_told_apart() {
        // A port nothing listens on: bind one, note it, close it.
        let refused = {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            listener.local_addr().unwrap()
        };
        let url = HttpUrl::parse(&format!("http://{refused}/")).unwrap();
        let got = Request::new(Method::GET, &url).send_within(LONG).await;
        assert!(
            matches!(&got, Err(HttpError::Connect { host, .. }) if *host == refused.to_string()),
            "{got:?}"
        );
        // A server that reads the request and closes without a word.
        let (url, server) = serve_once(Some(Vec::new())).await;
        let got = Request::new(Method::GET, &url).send_within(LONG).await;
        assert!(
            matches!(
                &got,
                Err(HttpError::Closed { .. }) | Err(HttpError::Exchange { .. })
            ),
            "{got:?}"
        );
        server.await.unwrap();
    }
}
