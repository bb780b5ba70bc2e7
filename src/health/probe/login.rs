//! The `amqp_login` probe: log in with lapin over a connection made here, open a channel, close
//! both cleanly.

use super::*;

/// Log in with lapin, open a channel, close both cleanly. RabbitMQ 3.10.8 logs three info lines
/// per probe (accepting, "authenticated and granted access", closing) and nothing above info.
///
/// lapin 4 lets the caller supply the transport (`Connection::connector` with a connect
/// function), so the TCP connection is made here: to the backend's resolved address, with the
/// PROXY header written before lapin sends its protocol header.
pub(super) async fn amqp_login(
    uri: &Secret,
    target: &ProbeTarget,
    stage: &mut Stage,
) -> ProbeOutcome {
    use lapin::{AsyncTcpStream, Connection, ConnectionProperties};

    let text = fill_template(&uri.0, &target.host, target.port);
    let redact = |s: &str| redact(s, &[uri.0.as_str(), text.as_str()]);
    let parsed = match login_uri(&text, redact) {
        Ok(parsed) => parsed,
        Err(outcome) => return outcome,
    };
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
        Err(e) => {
            let refused = matches!(e.kind(), lapin::ErrorKind::IOError(io)
                if io.kind() == std::io::ErrorKind::ConnectionRefused);
            return ProbeOutcome {
                refused,
                ..ProbeOutcome::down(redact(&login_error(&e)))
            };
        }
    };
    let outcome = open_channel_and_close(&connection, stage, redact).await;
    drop(socket_handle);
    outcome
}

/// The probe's URI, parsed; the error (redacted) when it is not one lapin can use.
pub(super) fn login_uri(
    text: &str,
    redact: impl Fn(&str) -> String,
) -> Result<lapin::uri::AMQPUri, ProbeOutcome> {
    use lapin::uri::{AMQPScheme, AMQPUri};

    let parsed: AMQPUri = match text.parse() {
        Ok(parsed) => parsed,
        Err(e) => {
            return Err(ProbeOutcome::down(format!(
                "amqp_login uri {} is invalid: {}",
                redact(text),
                redact(&e)
            )))
        }
    };
    if parsed.scheme == AMQPScheme::AMQPS {
        return Err(ProbeOutcome::down(
            "amqp_login: amqps:// is not supported (warren has no TLS client)",
        ));
    }
    Ok(parsed)
}

/// After the login: open a channel, close it, close the connection; the outcome says which
/// step failed (redacted).
async fn open_channel_and_close(
    connection: &lapin::Connection,
    stage: &mut Stage,
    redact: impl Fn(&str) -> String,
) -> ProbeOutcome {
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
    outcome
}

/// A duplicate of lapin's socket, shut down (both ways) when the last handle is dropped.
#[derive(Clone, Default)]
pub(super) struct SocketHandle(Arc<Mutex<Option<socket2::Socket>>>);

impl SocketHandle {
    pub(super) fn set(&self, socket: socket2::Socket) {
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
pub(super) fn login_error(e: &lapin::Error) -> String {
    match e.kind() {
        lapin::ErrorKind::IOError(io) => connect_error(io),
        lapin::ErrorKind::ProtocolError(amqp) => format!("login refused: {amqp}"),
        _ => format!("login failed: {e}"),
    }
}
