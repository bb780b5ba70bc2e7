//! One active probe attempt against one backend: `tcp`, `amqp` (protocol header → Connection.Start),
//! `amqp_login` (a full lapin login) or `http` (a management health endpoint), bounded by the
//! attempt's own timeout. A probe that targets the backend's AMQP address sends the listener's
//! PROXY header first (naming the probe's own connection), because RabbitMQ with
//! `proxy_protocol = true` closes anything without one. This module keeps no state and runs no
//! timers beyond the attempt's timeout; turning outcomes into health (rise/fall) and publishing
//! them belongs to the caller. It must not touch routing. The `http` probe and the quorum check
//! talk HTTP through [`crate::http_client`].

use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::Method;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{Probe, ProxyProtocol, Secret};
use crate::http_client::{
    fill_template, url_host, without_userinfo, BodyRead, Credentials, HttpError, HttpUrl, Phase,
    ProbeUrl, Request, Response,
};
use crate::proxy_protocol::{encode_v1, encode_v2, Header};

/// Where a probe goes.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    /// Host as written in the config (a name or an IP literal, IPv6 without brackets).
    pub host: String,
    /// The backend's AMQP port as written in the config.
    pub port: u16,
    /// The resolved AMQP address.
    pub addr: SocketAddr,
    /// What the listener sends to this backend; probes of the AMQP address send the same.
    pub proxy_protocol: ProxyProtocol,
}

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeOutcome {
    /// Whether the backend passed.
    pub up: bool,
    /// Short and operator-readable, e.g. "Connection.Start received (RabbitMQ 3.12.1)",
    /// "connection refused", "timed out after 1s waiting for Connection.Start",
    /// "HTTP 503: {\"status\":\"failed\",...}". Never contains a password.
    pub reason: String,
    /// The attempt failed for lack of resources on this host (no descriptor, no ephemeral
    /// port): no verdict on the backend, so the caller must not count it against it.
    pub local: bool,
}

impl ProbeOutcome {
    fn up(reason: impl Into<String>) -> ProbeOutcome {
        ProbeOutcome {
            up: true,
            reason: reason.into(),
            local: false,
        }
    }

    fn down(reason: impl Into<String>) -> ProbeOutcome {
        ProbeOutcome {
            up: false,
            reason: reason.into(),
            local: false,
        }
    }

    /// A failed connect: down, or no verdict when the error is this host's own.
    fn connect_failed(e: &io::Error) -> ProbeOutcome {
        ProbeOutcome {
            local: crate::net::is_local(e),
            ..ProbeOutcome::down(connect_error(e))
        }
    }
}

/// The AMQP 0-9-1 protocol header a client opens with.
pub const AMQP_PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

/// Longest body prefix an `http` probe keeps in its reason.
pub const HTTP_BODY_PREFIX: usize = 200;

/// Largest Connection.Start frame payload accepted. RabbitMQ's is about 500 bytes; the spec's
/// minimum frame size before tuning is 4096, so anything bigger is not a broker talking.
const MAX_START_PAYLOAD: usize = 64 * 1024;

const FRAME_METHOD: u8 = 1;
const FRAME_END: u8 = 0xCE;
const CLASS_CONNECTION: u16 = 10;
const METHOD_START: u16 = 10;

/// Run one probe of `probe` against `target`, bounded by `timeout` (whatever happens, it returns
/// within `timeout` plus a few milliseconds).
pub async fn run(probe: &Probe, target: &ProbeTarget, timeout: Duration) -> ProbeOutcome {
    // The attempt records where it is, so a timeout can say what it was waiting for.
    let mut stage = Stage::Connecting;
    let attempt = async {
        match probe {
            Probe::Tcp => tcp(target, &mut stage).await,
            Probe::Amqp => amqp(target, &mut stage).await,
            Probe::AmqpLogin { uri } => amqp_login(uri, target, &mut stage).await,
            Probe::Http {
                url,
                user,
                password,
                password_file,
            } => {
                let credentials = match credentials(user, password, password_file) {
                    Ok(credentials) => credentials,
                    Err(outcome) => return outcome,
                };
                http(url, credentials, target, &mut stage).await
            }
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(outcome) => outcome,
        Err(_) => ProbeOutcome::down(format!(
            "timed out after {} {}",
            humantime::format_duration(timeout),
            stage.as_str()
        )),
    }
}

/// What an attempt was doing, for the reason of a timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Connecting,
    SendingProxyHeader,
    WaitingForStart,
    LoggingIn,
    OpeningChannel,
    Closing,
    /// An HTTP exchange, where the client records its phase.
    Http(Phase),
}

impl Stage {
    fn as_str(self) -> &'static str {
        match self {
            Stage::Connecting => "connecting",
            Stage::SendingProxyHeader => "sending the PROXY header",
            Stage::WaitingForStart => "waiting for Connection.Start",
            Stage::LoggingIn => "connecting and logging in",
            Stage::OpeningChannel => "opening a channel",
            Stage::Closing => "closing the connection",
            Stage::Http(phase) => phase.as_str(),
        }
    }
}

impl Stage {
    /// Enter an HTTP exchange; the returned phase is where the client records its progress.
    fn http(&mut self) -> &mut Phase {
        *self = Stage::Http(Phase::Connecting);
        match self {
            Stage::Http(phase) => phase,
            _ => unreachable!("set just above"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// tcp and amqp

/// The header a probe of the AMQP address sends first: the listener's PROXY version naming the
/// probe's own connection (warren's address as the source, the backend as the destination).
///
/// Not the LOCAL command (v1 "UNKNOWN"), which the spec meant for health checks: RabbitMQ 3.10.8
/// crashes the connection process on it (`no match of right hand side value #{command => local}`
/// in `rabbit_net:socket_ends/2`, an error-level crash report, then a reset), measured with
/// `proxy_protocol = true`. A PROXY header with the real addresses is accepted by every version.
fn proxy_header(
    version: ProxyProtocol,
    source: SocketAddr,
    destination: SocketAddr,
) -> Option<Vec<u8>> {
    let header = Header::Proxied {
        source,
        destination,
    };
    let mut out = Vec::new();
    match version {
        ProxyProtocol::Off => return None,
        ProxyProtocol::V1 => encode_v1(&header, &mut out),
        ProxyProtocol::V2 => encode_v2(&header, &mut out),
    }
    Some(out)
}

/// Write the PROXY header for `stream`'s own addresses, if the listener sends one.
async fn send_proxy_header(stream: &mut TcpStream, version: ProxyProtocol) -> io::Result<()> {
    if version == ProxyProtocol::Off {
        return Ok(());
    }
    let (source, destination) = (stream.local_addr()?, stream.peer_addr()?);
    if let Some(header) = proxy_header(version, source, destination) {
        stream.write_all(&header).await?;
    }
    Ok(())
}

/// Connect to the backend's AMQP address and send the PROXY header if the listener sends one.
async fn connect_amqp_address(
    target: &ProbeTarget,
    stage: &mut Stage,
) -> Result<TcpStream, ProbeOutcome> {
    *stage = Stage::Connecting;
    let mut stream = TcpStream::connect(target.addr)
        .await
        .map_err(|e| ProbeOutcome::connect_failed(&e))?;
    // Probes are small request/response exchanges: no reason to let Nagle hold a write back.
    let _ = stream.set_nodelay(true);
    *stage = Stage::SendingProxyHeader;
    send_proxy_header(&mut stream, target.proxy_protocol)
        .await
        .map_err(|e| {
            ProbeOutcome::down(format!(
                "sending the PROXY {} header failed: {}",
                target.proxy_protocol.as_str(),
                io_error(&e)
            ))
        })?;
    Ok(stream)
}

async fn tcp(target: &ProbeTarget, stage: &mut Stage) -> ProbeOutcome {
    match connect_amqp_address(target, stage).await {
        // Dropping the stream closes it with a FIN; RabbitMQ logs a connection that sent no AMQP
        // byte at debug level only ("connection_closed_with_no_data_received").
        Ok(_stream) => match target.proxy_protocol {
            ProxyProtocol::Off => ProbeOutcome::up("connected"),
            version => {
                ProbeOutcome::up(format!("connected, PROXY {} header sent", version.as_str()))
            }
        },
        Err(outcome) => outcome,
    }
}

/// Send the protocol header, expect Connection.Start, leave.
///
/// How to leave was measured on RabbitMQ 3.10.8 (Debian bookworm) at the default log level, by
/// counting the lines one probe appends to the node's log:
///
/// | how the client leaves                                   | lines | levels               |
/// |---------------------------------------------------------|-------|----------------------|
/// | read Connection.Start, close (FIN)  ← what this does    | 3     | 1 info + 1 warning*  |
/// | read Connection.Start, close with RST (SO_LINGER 0)     | 3     | 1 info + 1 warning*  |
/// | read Connection.Start, shutdown(write), wait for close  | 3     | 1 info + 1 warning*  |
/// | read Connection.Start, send Connection.Close            | 6     | 1 info + 1 error**   |
/// | send the header, close (FIN) before the answer          | 3     | 1 info + 1 warning*  |
/// | connect and close without a byte (the `tcp` probe)      | 0     | (debug only)         |
/// | `proxy_protocol = true`: PROXY v2 header, then as above | same  | same                 |
///
/// \* "accepting AMQP connection <pid> (a -> b)" at info, then "closing AMQP connection <pid>
/// (a -> b):" / "client unexpectedly closed TCP connection" (one warning event on two lines).
/// \*\* a 4-line `{handshake_error,starting,0,{amqp_error,channel_error,"unexpected method in
/// connection state starting",'connection.close'}}` error, logged after a 3 s delay.
///
/// Waiting instead ends in a `handshake_timeout` error after 10 s, and answering with
/// Connection.StartOk would need credentials (that is `amqp_login`). The broker logs the info
/// line as soon as it reads the header, and any close before Connection.Tune-Ok is "unexpected",
/// so one info and one warning event per probe is the floor; a plain close (FIN) reaches it,
/// with no trick that could behave differently across versions.
async fn amqp(target: &ProbeTarget, stage: &mut Stage) -> ProbeOutcome {
    let mut stream = match connect_amqp_address(target, stage).await {
        Ok(stream) => stream,
        Err(outcome) => return outcome,
    };
    *stage = Stage::WaitingForStart;
    if let Err(e) = stream.write_all(AMQP_PROTOCOL_HEADER).await {
        return ProbeOutcome::down(format!(
            "sending the AMQP protocol header failed: {}",
            io_error(&e)
        ));
    }
    let outcome = match read_start_frame(&mut stream).await {
        Ok(payload) => match parse_start(&payload) {
            Ok(start) => ProbeOutcome::up(start.describe()),
            Err(reason) => ProbeOutcome::down(reason),
        },
        Err(reason) => ProbeOutcome::down(reason),
    };
    // A plain close (FIN): measured to be as quiet as anything else, see the table above.
    drop(stream);
    outcome
}

/// Read one frame and return its payload if it is a method frame on channel 0.
async fn read_start_frame(stream: &mut TcpStream) -> Result<Vec<u8>, String> {
    let mut head = [0u8; 7];
    read_exact_or_explain(stream, &mut head, 0).await?;
    if head[..4] == *b"AMQP" {
        // The broker answers a protocol header it does not accept with the one it speaks.
        let mut rest = [0u8; 8];
        rest[..7].copy_from_slice(&head);
        read_exact_or_explain(stream, &mut rest[7..], 7).await?;
        return Err(format!(
            "the backend rejected AMQP 0-9-1 and offers protocol {}-{}-{}-{}",
            rest[4], rest[5], rest[6], rest[7]
        ));
    }
    let frame_type = head[0];
    let channel = u16::from_be_bytes([head[1], head[2]]);
    let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
    if frame_type != FRAME_METHOD || channel != 0 || size > MAX_START_PAYLOAD {
        return Err(format!(
            "not an AMQP Connection.Start frame: the backend answered {}",
            printable_prefix(&head, 32)
        ));
    }
    let mut payload = vec![0u8; size + 1];
    read_exact_or_explain(stream, &mut payload, head.len()).await?;
    if payload.pop() != Some(FRAME_END) {
        return Err("malformed AMQP frame: no frame-end octet (0xCE) after the payload".into());
    }
    Ok(payload)
}

async fn read_exact_or_explain(
    stream: &mut TcpStream,
    buf: &mut [u8],
    already: usize,
) -> Result<(), String> {
    match stream.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(if already == 0 {
            "the backend closed the connection without answering the AMQP protocol header".into()
        } else {
            format!("the backend closed the connection after {already} bytes of its answer")
        }),
        Err(e) => Err(format!(
            "reading the answer to the AMQP protocol header failed: {}",
            io_error(&e)
        )),
    }
}

/// What a Connection.Start says about the broker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Start {
    version_major: u8,
    version_minor: u8,
    product: Option<String>,
    version: Option<String>,
}

impl Start {
    fn describe(&self) -> String {
        match (&self.product, &self.version) {
            (Some(product), Some(version)) => {
                format!("Connection.Start received ({product} {version})")
            }
            (Some(only), None) | (None, Some(only)) => {
                format!("Connection.Start received ({only})")
            }
            (None, None) => "Connection.Start received".into(),
        }
    }
}

/// Check that `payload` is Connection.Start (class 10, method 10) and pick `product` and `version`
/// out of its server-properties table. A table that cannot be parsed is not a failure: the
/// method already shows an AMQP broker answered.
fn parse_start(payload: &[u8]) -> Result<Start, String> {
    if payload.len() < 6 {
        return Err(format!(
            "AMQP method frame too short ({} bytes) for Connection.Start",
            payload.len()
        ));
    }
    let class = u16::from_be_bytes([payload[0], payload[1]]);
    let method = u16::from_be_bytes([payload[2], payload[3]]);
    if (class, method) != (CLASS_CONNECTION, METHOD_START) {
        return Err(format!(
            "expected Connection.Start (class 10, method 10), the backend sent class {class}, method {method}"
        ));
    }
    let mut start = Start {
        version_major: payload[4],
        version_minor: payload[5],
        ..Start::default()
    };
    if (start.version_major, start.version_minor) != (0, 9) {
        return Err(format!(
            "Connection.Start offers AMQP {}-{}, not 0-9",
            start.version_major, start.version_minor
        ));
    }
    if let Some(table) = field_table(&payload[6..]) {
        start.product = table_string(table, b"product");
        start.version = table_string(table, b"version");
    }
    Ok(start)
}

/// The bytes of the field table at the start of `buf` (after its 4-byte length).
fn field_table(buf: &[u8]) -> Option<&[u8]> {
    let len = u32::from_be_bytes(buf.get(..4)?.try_into().ok()?) as usize;
    buf.get(4..4usize.checked_add(len)?)
}

/// The long-string value of `key` in a field table, control characters replaced, at most 64 chars.
fn table_string(mut table: &[u8], key: &[u8]) -> Option<String> {
    while !table.is_empty() {
        let key_len = *table.first()? as usize;
        let name = table.get(1..1 + key_len)?;
        let kind = *table.get(1 + key_len)?;
        let value = table.get(2 + key_len..)?;
        let value_len = field_value_len(kind, value)?;
        if name == key && kind == b'S' {
            let text = value.get(4..value_len)?;
            return Some(sanitize(&String::from_utf8_lossy(text), 64));
        }
        table = value.get(value_len..)?;
    }
    None
}

/// Length in bytes of a field value of type `kind` at the start of `value` (RabbitMQ's type
/// letters, which differ from the 0-9-1 spec's for a few integer types).
fn field_value_len(kind: u8, value: &[u8]) -> Option<usize> {
    let long = |v: &[u8]| -> Option<usize> {
        let len = u32::from_be_bytes(v.get(..4)?.try_into().ok()?) as usize;
        let total = len.checked_add(4)?;
        (v.len() >= total).then_some(total)
    };
    let fixed = match kind {
        b'V' => 0,
        b't' | b'b' | b'B' => 1,
        b's' | b'u' => 2,
        b'I' | b'i' | b'f' => 4,
        b'D' => 5,
        b'l' | b'L' | b'd' | b'T' => 8,
        b'S' | b'x' | b'A' | b'F' => return long(value),
        _ => return None,
    };
    (value.len() >= fixed).then_some(fixed)
}

// ---------------------------------------------------------------------------------------------
// amqp_login

/// Log in with lapin, open a channel, close both cleanly. RabbitMQ 3.10.8 logs three info lines
/// per probe (accepting, "authenticated and granted access", closing) and nothing above info.
///
/// lapin 4 lets the caller supply the transport (`Connection::connector` with a connect
/// function), so the TCP connection is made here: to the backend's resolved address, with the
/// PROXY header written before lapin sends its protocol header.
async fn amqp_login(uri: &Secret, target: &ProbeTarget, stage: &mut Stage) -> ProbeOutcome {
    use lapin::uri::{AMQPScheme, AMQPUri};
    use lapin::{AsyncTcpStream, Connection, ConnectionProperties};

    let text = fill_template(&uri.0, &target.host, target.port);
    let redact = |s: &str| redact(s, &[uri.0.as_str(), text.as_str()]);
    let parsed: AMQPUri = match text.parse() {
        Ok(parsed) => parsed,
        Err(e) => {
            return ProbeOutcome::down(format!(
                "amqp_login uri {} is invalid: {}",
                redact(&text),
                redact(&e)
            ))
        }
    };
    if parsed.scheme == AMQPScheme::AMQPS {
        return ProbeOutcome::down(
            "amqp_login: amqps:// is not supported (warren has no TLS client)",
        );
    }
    let port = parsed.authority.port;
    *stage = Stage::Connecting;
    let addr = match resolve(&text, port, target).await {
        Ok(addr) => addr,
        Err(reason) => return ProbeOutcome::down(redact(&reason)),
    };

    // A second handle on lapin's socket: lapin's I/O runs on its own thread, which a dropped
    // future does not stop. Shutting the socket down when this attempt ends (timeout included)
    // makes that thread see EOF and exit instead of lingering on a silent backend.
    let socket_handle = SocketHandle::default();
    let handle = socket_handle.clone();
    let version = target.proxy_protocol;
    let runtime = match lapin::runtime::default_runtime() {
        Ok(runtime) => runtime,
        Err(e) => return ProbeOutcome::down(format!("amqp_login: no runtime for lapin: {e}")),
    };
    *stage = Stage::LoggingIn;
    let connected = Connection::connector(
        parsed,
        runtime,
        async move |_uri, runtime| {
            let mut stream = AsyncTcpStream::connect(&runtime, addr).await?;
            let AsyncTcpStream::Plain(compat) = &mut stream else {
                // lapin is built without TLS, so a fresh stream is always plain.
                return Err(io::Error::other("lapin returned a TLS stream").into());
            };
            let tcp: &mut TcpStream = compat.get_mut();
            handle.set(socket2::SockRef::from(&*tcp).try_clone()?);
            send_proxy_header(tcp, version).await?;
            Ok(stream)
        },
        ConnectionProperties::default(),
    )
    .await;
    let connection = match connected {
        Ok(connection) => connection,
        Err(e) => return ProbeOutcome::down(redact(&login_error(&e))),
    };
    *stage = Stage::OpeningChannel;
    let outcome = match connection.create_channel().await {
        Ok(channel) => {
            *stage = Stage::Closing;
            match channel.close(200, "warren probe".into()).await {
                Ok(()) => ProbeOutcome::up("logged in, channel opened and closed"),
                Err(e) => ProbeOutcome::down(redact(&format!(
                    "logged in and opened a channel, but closing it failed: {e}"
                ))),
            }
        }
        Err(e) => ProbeOutcome::down(redact(&format!(
            "logged in, but opening a channel failed: {e}"
        ))),
    };
    *stage = Stage::Closing;
    if let Err(e) = connection.close(200, "warren probe".into()).await {
        if outcome.up {
            return ProbeOutcome::down(redact(&format!(
                "logged in, channel opened and closed, but closing the connection failed: {e}"
            )));
        }
    }
    drop(socket_handle);
    outcome
}

/// A duplicate of lapin's socket, shut down (both ways) when the last handle is dropped.
#[derive(Clone, Default)]
struct SocketHandle(Arc<Mutex<Option<socket2::Socket>>>);

impl SocketHandle {
    fn set(&self, socket: socket2::Socket) {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = slot.replace(socket) {
            let _ = old.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for SocketHandle {
    fn drop(&mut self) {
        if Arc::strong_count(&self.0) > 1 {
            return;
        }
        let slot = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(socket) = slot {
            // Already closed by a clean AMQP close in the usual case: then this is a no-op.
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// An operator-readable account of a lapin error (the caller redacts it).
fn login_error(e: &lapin::Error) -> String {
    match e.kind() {
        lapin::ErrorKind::IOError(io) => connect_error(io),
        lapin::ErrorKind::ProtocolError(amqp) => format!("login refused: {amqp}"),
        _ => format!("login failed: {e}"),
    }
}

// ---------------------------------------------------------------------------------------------
// http

/// The basic-auth credentials of `user`, reading `password_file` now so a rotated password is
/// picked up. `None` when no `user` is set (the URL's `user:pass@`, if any, is then sent).
fn credentials(
    user: &Option<String>,
    password: &Option<Secret>,
    password_file: &Option<std::path::PathBuf>,
) -> Result<Option<Credentials>, ProbeOutcome> {
    let Some(user) = user else {
        return Ok(None);
    };
    let password = match (password, password_file) {
        (Some(secret), _) => secret.0.clone(),
        (None, Some(file)) => read_password_file(file)?,
        (None, None) => String::new(),
    };
    Ok(Some(Credentials {
        user: user.clone(),
        password,
    }))
}

fn read_password_file(file: &Path) -> Result<String, ProbeOutcome> {
    // A few bytes from a local file: blocking the runtime thread for that is cheaper than a
    // spawn_blocking round trip (and tokio's fs feature is not enabled).
    match std::fs::read_to_string(file) {
        Ok(text) => Ok(text.trim_end_matches(['\n', '\r']).to_string()),
        Err(e) => Err(ProbeOutcome::down(format!(
            "cannot read password_file {}: {}",
            file.display(),
            io_error(&e)
        ))),
    }
}

/// One GET of an `http` probe or of the quorum check, for one backend.
struct HttpAsk {
    /// The probe URL filled in for the backend.
    url: HttpUrl,
    /// From `user`; the URL's own `user:pass@` is sent when this is `None`.
    credentials: Option<Credentials>,
    /// What a reason must never show: the password and its basic-auth token.
    secrets: Vec<String>,
}

/// The probe URL filled in for `target` (checked at load, so this fails only on a backend host
/// that makes it invalid).
fn fill(url: &ProbeUrl, target: &ProbeTarget) -> Result<HttpUrl, String> {
    url.for_backend(&target.host, target.port).map_err(|e| {
        format!(
            "http probe url {} is not usable: {e}",
            without_userinfo(url.template())
        )
    })
}

impl HttpAsk {
    fn new(url: HttpUrl, credentials: Option<Credentials>) -> HttpAsk {
        let secrets = credentials
            .as_ref()
            .or(url.credentials())
            .map(|c| vec![c.password.clone(), c.basic_token()])
            .unwrap_or_default();
        HttpAsk {
            url,
            credentials,
            secrets,
        }
    }

    fn redact(&self, text: &str) -> String {
        redact(
            text,
            &self.secrets.iter().map(String::as_str).collect::<Vec<_>>(),
        )
    }

    /// GET the URL, or `path` on its authority; errors are operator-readable, not redacted.
    async fn get(
        &self,
        path: Option<&str>,
        target: &ProbeTarget,
        phase: &mut Phase,
        read: BodyRead,
    ) -> Result<Response, ProbeOutcome> {
        let mut request = Request::new(Method::GET, &self.url).read(read);
        if let Some(path) = path {
            request = request.path(path);
        }
        if let Some(credentials) = &self.credentials {
            request = request.authorization(credentials.header());
        }
        // The usual `{host}` template names the backend: its resolved address, no DNS lookup
        // per probe.
        if self.url.host() == target.host {
            request = request.connect_to(SocketAddr::new(target.addr.ip(), self.url.port()));
        }
        request.send(phase).await.map_err(|e| match e {
            HttpError::Connect { source, .. } => ProbeOutcome::connect_failed(&source),
            HttpError::Handshake { source, .. } => {
                ProbeOutcome::down(format!("HTTP handshake failed: {source}"))
            }
            HttpError::Exchange { source, .. } | HttpError::Closed { source, .. } => {
                ProbeOutcome::down(format!("HTTP request failed: {source}"))
            }
            e => ProbeOutcome::down(e.to_string()),
        })
    }
}

async fn http(
    url: &ProbeUrl,
    credentials: Option<Credentials>,
    target: &ProbeTarget,
    stage: &mut Stage,
) -> ProbeOutcome {
    let ask = match fill(url, target) {
        Ok(url) => HttpAsk::new(url, credentials),
        Err(reason) => return ProbeOutcome::down(reason),
    };
    let read = BodyRead::FailurePrefix(HTTP_BODY_PREFIX);
    let response = match ask.get(None, target, stage.http(), read).await {
        Ok(response) => response,
        Err(mut failed) => {
            failed.reason = ask.redact(&failed.reason);
            return failed;
        }
    };
    let status = response.status;
    if status.is_success() {
        return ProbeOutcome::up(format!("HTTP {}", status.as_u16()));
    }
    let body = sanitize(&String::from_utf8_lossy(&response.body), HTTP_BODY_PREFIX);
    let reason = if body.is_empty() {
        format!("HTTP {}", status.as_u16())
    } else {
        format!("HTTP {}: {}", status.as_u16(), body)
    };
    ProbeOutcome::down(ask.redact(&reason))
}

// ---------------------------------------------------------------------------------------------
// The quorum check that guards a drain

/// RabbitMQ's answer to "may this node stop?", from its management API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuorumCheck {
    /// The pool has no `http` probe on the management API (`/api/...`), so there is no one to ask.
    NotApplicable,
    /// The node can stop without any quorum queue or stream losing its quorum.
    Safe,
    /// Stopping the node would leave these queues (RabbitMQ's readable names) without quorum.
    Critical { reason: String, queues: Vec<String> },
    /// Nobody answered (connection refused, timeout): the node's management API is down, and
    /// so, most likely, is the node.
    Unknown(String),
    /// The management API answered, but not as the check does (401, 404, an HTML page): the
    /// probe's credentials or the RabbitMQ version need fixing before a drain can be judged.
    Unexpected(String),
}

/// The management API path that answers 503 while a node is quorum-critical.
pub const QUORUM_CRITICAL_PATH: &str = "/api/health/checks/node-is-quorum-critical";

/// Largest quorum-check answer read: the list of critical queues can be long.
const QUORUM_BODY_CAP: usize = 256 * 1024;

/// Ask the node behind `target` whether it is quorum-critical, on the management API that
/// `probe` (the pool's `http` probe, with its credentials) already talks to.
pub async fn quorum_check(probe: &Probe, target: &ProbeTarget, timeout: Duration) -> QuorumCheck {
    let Probe::Http {
        url,
        user,
        password,
        password_file,
    } = probe
    else {
        return QuorumCheck::NotApplicable;
    };
    let url = match fill(url, target) {
        Ok(url) if management_path(&url) => url,
        _ => return QuorumCheck::NotApplicable,
    };
    let credentials = match credentials(user, password, password_file) {
        Ok(credentials) => credentials,
        Err(outcome) => return QuorumCheck::Unknown(outcome.reason),
    };
    let ask = HttpAsk::new(url, credentials);
    let mut phase = Phase::Connecting;
    let asked = tokio::time::timeout(
        timeout,
        ask.get(
            Some(QUORUM_CRITICAL_PATH),
            target,
            &mut phase,
            BodyRead::Prefix(QUORUM_BODY_CAP),
        ),
    )
    .await;
    match asked {
        Err(_) => QuorumCheck::Unknown(format!(
            "timed out after {} {}",
            humantime::format_duration(timeout),
            phase.as_str()
        )),
        Ok(Err(failed)) => QuorumCheck::Unknown(ask.redact(&failed.reason)),
        Ok(Ok(response)) => quorum_answer(response.status.as_u16(), &response.body),
    }
}

/// Whether an `http` probe URL points at RabbitMQ's management API (its paths start `/api/`).
fn management_path(url: &HttpUrl) -> bool {
    url.path().starts_with("/api/")
}

/// Read the management API's answer: 200 → safe, 503 with `{"status":"failed"}` → critical.
fn quorum_answer(status: u16, body: &[u8]) -> QuorumCheck {
    #[derive(Deserialize)]
    struct Answer {
        status: String,
        #[serde(default)]
        reason: String,
        #[serde(default)]
        queues: Vec<Queue>,
    }
    #[derive(Deserialize)]
    struct Queue {
        #[serde(default)]
        readable_name: String,
        #[serde(default)]
        name: String,
    }
    let answer: Option<Answer> = serde_json::from_slice(body).ok();
    match (status, answer) {
        (200, _) => QuorumCheck::Safe,
        (503, Some(a)) if a.status == "failed" => QuorumCheck::Critical {
            reason: a.reason,
            queues: a
                .queues
                .into_iter()
                .map(|q| {
                    if q.readable_name.is_empty() {
                        q.name
                    } else {
                        q.readable_name
                    }
                })
                .collect(),
        },
        (404, _) => QuorumCheck::Unexpected(format!(
            "HTTP 404 from {QUORUM_CRITICAL_PATH} (RabbitMQ older than 3.8.7?)"
        )),
        (status, _) => QuorumCheck::Unexpected(format!(
            "HTTP {status}: {}",
            sanitize(&String::from_utf8_lossy(body), HTTP_BODY_PREFIX)
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Shared helpers

/// Where a URL probe connects: the backend's resolved address when the URL names the backend's
/// host (the usual `{host}` template, no DNS lookup per probe), else the URL's host resolved now.
async fn resolve(url: &str, port: u16, target: &ProbeTarget) -> Result<SocketAddr, String> {
    let Some(host) = url_host(url) else {
        return Err(format!("{url} has no host"));
    };
    if host == target.host {
        return Ok(SocketAddr::new(target.addr.ip(), port));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let resolved = tokio::net::lookup_host((host.as_str(), port)).await;
    match resolved {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("{host} resolves to no address")),
        Err(e) => Err(format!("cannot resolve {host}: {e}")),
    }
}

/// "connection refused" and friends, for a failed connect.
fn connect_error(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        _ => format!("connect failed: {}", io_error(e)),
    }
}

/// An I/O error without the "(os error N)" noise.
fn io_error(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        io::ErrorKind::ConnectionReset => "connection reset by the backend".into(),
        io::ErrorKind::BrokenPipe => "connection closed by the backend".into(),
        _ => {
            let text = e.to_string();
            match text.find(" (os error") {
                Some(i) => text[..i].to_string(),
                None => text,
            }
        }
    }
}

/// Remove userinfo (`user:password@`) from every URL in `text` and mask each of `secrets`
/// (passwords, URIs that hold them, basic-auth tokens), so a reason can be logged as is.
fn redact(text: &str, secrets: &[&str]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        out.push_str(&rest[..i + 3]);
        rest = &rest[i + 3..];
        let end = rest
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace() || c == '"')
            .unwrap_or(rest.len());
        if let Some(at) = rest[..end].rfind('@') {
            rest = &rest[at + 1..];
        }
    }
    out.push_str(rest);
    for secret in secrets {
        if let Some(password) = uri_password(secret) {
            out = out.replace(password, "***");
        }
    }
    for secret in secrets {
        // Short secrets would mask ordinary words; the URI and token forms are long.
        if secret.len() >= 4 && !secret.contains("://") {
            out = out.replace(secret, "***");
        }
    }
    out
}

/// The password in `scheme://user:password@host`, if `text` is such a URL.
fn uri_password(text: &str) -> Option<&str> {
    let rest = &text[text.find("://")? + 3..];
    let userinfo = &rest[..rest.rfind('@')?];
    let (_, password) = userinfo.split_once(':')?;
    (!password.is_empty()).then_some(password)
}

/// At most `max` bytes of `text` (cut at a character boundary), control characters as spaces.
fn sanitize(text: &str, max: usize) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(if c.is_control() { ' ' } else { c });
    }
    out.trim_end().to_string()
}

/// Up to `max` bytes as text when printable, else as hex, for a reason about garbage.
fn printable_prefix(bytes: &[u8], max: usize) -> String {
    let bytes = &bytes[..bytes.len().min(max)];
    if bytes
        .iter()
        .all(|b| b.is_ascii_graphic() || *b == b' ' || *b == b'\r' || *b == b'\n')
    {
        format!("{:?}", sanitize(&String::from_utf8_lossy(bytes), max))
    } else {
        let mut hex = String::new();
        for b in bytes {
            let _ = write!(hex, "{b:02x} ");
        }
        format!("bytes {}", hex.trim_end())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn long_string(out: &mut Vec<u8>, key: &str, value: &str) {
        out.push(key.len() as u8);
        out.extend_from_slice(key.as_bytes());
        out.push(b'S');
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value.as_bytes());
    }

    fn start_payload(table: &[u8]) -> Vec<u8> {
        let mut p = vec![0, 10, 0, 10, 0, 9];
        p.extend_from_slice(&(table.len() as u32).to_be_bytes());
        p.extend_from_slice(table);
        p
    }

    #[test]
    fn redact_strips_userinfo_and_passwords() {
        let uri = "amqp://guest:s3cret@{host}:5672/%2f";
        let cases = [
            (
                "cannot connect to amqp://guest:s3cret@10.0.0.1:5672/%2f: refused",
                "cannot connect to amqp://10.0.0.1:5672/%2f: refused",
            ),
            ("password s3cret echoed", "password *** echoed"),
            (
                "\"http://a:b@h/x\" and http://h2",
                "\"http://h/x\" and http://h2",
            ),
            ("nothing to hide", "nothing to hide"),
        ];
        for (text, expected) in cases {
            assert_eq!(redact(text, &[uri]), expected, "{text}");
        }
        assert_eq!(
            redact("token Z3Vlc3Q6Z3Vlc3Q=", &["Z3Vlc3Q6Z3Vlc3Q="]),
            "token ***"
        );
    }

    #[test]
    fn sanitize_cuts_at_char_boundary_and_replaces_controls() {
        assert_eq!(sanitize("a\nb\tc", 10), "a b c");
        assert_eq!(sanitize("ééé", 5), "éé");
        assert_eq!(sanitize(&"x".repeat(300), 200).len(), 200);
    }

    #[test]
    fn parse_start_reads_product_and_version_past_nested_tables() {
        let mut caps = Vec::new();
        caps.push(10);
        caps.extend_from_slice(b"publisher_");
        caps.extend_from_slice(b"t\x01");
        let mut table = Vec::new();
        table.push(12);
        table.extend_from_slice(b"capabilities");
        table.push(b'F');
        table.extend_from_slice(&(caps.len() as u32).to_be_bytes());
        table.extend_from_slice(&caps);
        long_string(&mut table, "product", "RabbitMQ");
        long_string(&mut table, "version", "3.12.1");
        let start = parse_start(&start_payload(&table)).unwrap();
        assert_eq!(
            start.describe(),
            "Connection.Start received (RabbitMQ 3.12.1)"
        );
    }

    #[test]
    fn parse_start_tolerates_unparsable_tables_but_not_other_methods() {
        let cases: [(Vec<u8>, Result<&str, &str>); 5] = [
            (start_payload(&[]), Ok("Connection.Start received")),
            (
                start_payload(b"\x07product?junk"),
                Ok("Connection.Start received"),
            ),
            (
                vec![0, 10, 0, 10, 0, 9, 0, 0, 1, 0],
                Ok("Connection.Start received"),
            ),
            (vec![0, 10, 0, 30, 0, 9], Err("class 10, method 30")),
            (vec![0, 10, 0], Err("too short")),
        ];
        for (payload, expected) in cases {
            match (parse_start(&payload), expected) {
                (Ok(start), Ok(reason)) => assert_eq!(start.describe(), reason),
                (Err(e), Err(part)) => assert!(e.contains(part), "{e}"),
                (got, want) => panic!("{payload:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn proxy_headers_name_the_probe_connection() {
        let source: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let destination: SocketAddr = "127.0.0.2:5672".parse().unwrap();
        assert_eq!(proxy_header(ProxyProtocol::Off, source, destination), None);
        assert_eq!(
            proxy_header(ProxyProtocol::V1, source, destination).as_deref(),
            Some(&b"PROXY TCP4 127.0.0.1 127.0.0.2 40000 5672\r\n"[..])
        );
        let v2 = proxy_header(ProxyProtocol::V2, source, destination).unwrap();
        assert_eq!(&v2[..12], &crate::proxy_protocol::V2_SIGNATURE);
        assert_eq!(v2[12], 0x21, "version 2, PROXY command");
        assert_eq!(v2[13], 0x11, "TCP over IPv4");
    }

    #[test]
    fn quorum_answers() {
        let critical = br#"{"status":"failed","reason":"There are quorum queues that would lose their quorum if the target node is shut down","queues":[{"name":"qq","readable_name":"queue 'qq' in vhost '/'","type":"quorum","virtual_host":"/"},{"name":"s"}]}"#;
        let cases: &[(u16, &[u8], QuorumCheck)] = &[
            (200, br#"{"status":"ok"}"#, QuorumCheck::Safe),
            (
                503,
                critical,
                QuorumCheck::Critical {
                    reason: "There are quorum queues that would lose their quorum if the target node is shut down".into(),
                    queues: vec!["queue 'qq' in vhost '/'".into(), "s".into()],
                },
            ),
            (
                503,
                b"<html>busy</html>",
                QuorumCheck::Unexpected("HTTP 503: <html>busy</html>".into()),
            ),
            (
                401,
                br#"{"error":"not_authorized"}"#,
                QuorumCheck::Unexpected(r#"HTTP 401: {"error":"not_authorized"}"#.into()),
            ),
        ];
        for (status, body, want) in cases {
            assert_eq!(&quorum_answer(*status, body), want, "HTTP {status}");
        }
        assert!(
            matches!(quorum_answer(404, b""), QuorumCheck::Unexpected(r) if r.contains("3.8.7"))
        );
    }

    #[test]
    fn only_management_api_urls_get_a_quorum_check() {
        let management_path = |url: &str| HttpUrl::parse(url).is_ok_and(|u| management_path(&u));
        assert!(management_path(
            "http://10.0.0.1:15672/api/health/checks/alarms"
        ));
        assert!(management_path("http://[::1]:15672/api/aliveness-test/%2F"));
        assert!(!management_path("http://10.0.0.1:8080/health"));
        assert!(!management_path("http://10.0.0.1:15672"));
        assert!(!management_path(
            "https://10.0.0.1:15671/api/health/checks/alarms"
        ));
    }
}
