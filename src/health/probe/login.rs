//! The `amqp_login` probe: log in with lapin over a connection made here, open a channel, close
//! both cleanly. With `[pool.NAME.tls]` the connection is a TLS session made here too, which
//! lapin (built without TLS) reads through a loopback TCP connection ([`tls_bridge`]).

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
    let parsed = match login_uri(&text, redact, target.tls.is_some()) {
        Ok(parsed) => parsed,
        Err(outcome) => return outcome,
    };
    let port = parsed.authority.port;
    *stage = Stage::Connecting;
    let addr = match resolve(&text, port, target).await {
        Ok(addr) => addr,
        Err(reason) => return ProbeOutcome::down(redact(&reason)),
    };
    // With TLS: the session with the node, and the socket to shut down when this attempt ends.
    let (bridged, backend_socket) = match &target.tls {
        None => (None, None),
        Some(tls) => match tls_bridge(addr, target.proxy_protocol, tls, stage).await {
            Ok((lapin_side, backend)) => (Some(Mutex::new(Some(lapin_side))), Some(backend)),
            Err(outcome) => return outcome,
        },
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
            if let Some(bridged) = &bridged {
                // Connected, PROXY header sent and TLS done already: lapin gets the bridge.
                let taken = bridged.lock().unwrap_or_else(|e| e.into_inner()).take();
                let tcp =
                    taken.ok_or_else(|| io::Error::other("the TLS session was used already"))?;
                handle.set(socket2::SockRef::from(&tcp).try_clone()?);
                return Ok(AsyncTcpStream::Plain(async_compat::Compat::new(tcp)));
            }
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
            let outcome = ProbeOutcome {
                refused,
                ..ProbeOutcome::down(redact(&login_error(&e)))
            };
            return over_tls(outcome, target);
        }
    };
    let outcome = open_channel_and_close(&connection, stage, redact).await;
    drop(socket_handle);
    drop(backend_socket);
    over_tls(outcome, target)
}

/// With `[pool.NAME.tls]`: ", over TLS" on an up outcome, the client certificate hint on a
/// down one.
fn over_tls(mut outcome: ProbeOutcome, target: &ProbeTarget) -> ProbeOutcome {
    if let Some(tls) = &target.tls {
        if outcome.up {
            outcome.reason = format!("{}, over TLS", outcome.reason);
        } else {
            tls_hint(&mut outcome, tls);
        }
    }
    outcome
}

/// Connect to the node at `addr`, send the PROXY header, do the TLS handshake, and bridge the
/// session to a loopback TCP connection: lapin 4 without its TLS features takes only a plain
/// TCP stream of its runtime, and its own TLS (rustls-connector, with other roots and another
/// crypto provider) would bypass `[pool.NAME.tls]`. Returns lapin's end of the loopback
/// connection and a handle that shuts the node's socket down when dropped (ending the pump
/// task even on a silent node).
async fn tls_bridge(
    addr: SocketAddr,
    version: ProxyProtocol,
    tls: &BackendTls,
    stage: &mut Stage,
) -> Result<(TcpStream, SocketHandle), ProbeOutcome> {
    *stage = Stage::Connecting;
    let mut tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| ProbeOutcome::connect_failed(&e))?;
    let _ = tcp.set_nodelay(true);
    let backend = SocketHandle::default();
    if let Ok(socket) = socket2::SockRef::from(&tcp).try_clone() {
        backend.set(socket);
    }
    *stage = Stage::SendingProxyHeader;
    send_proxy_header(&mut tcp, version).await.map_err(|e| {
        ProbeOutcome::down(format!(
            "sending the PROXY {} header failed: {}",
            version.as_str(),
            io_error(&e)
        ))
    })?;
    let mut session = tls_handshake(tcp, tls, stage).await?;
    let (lapin_side, mut ours) = loopback_pair().await.map_err(|e| ProbeOutcome {
        local: true,
        ..ProbeOutcome::down(format!(
            "amqp_login: cannot open the loopback connection lapin reads TLS through: {}",
            io_error(&e)
        ))
    })?;
    tokio::spawn(async move {
        // Ends when both sides are closed; the caller's handles shut both sockets down.
        let _ = tokio::io::copy_bidirectional(&mut ours, &mut session).await;
    });
    Ok((lapin_side, backend))
}

/// Two ends of one loopback TCP connection: the first connected, the second accepted.
async fn loopback_pair() -> io::Result<(TcpStream, TcpStream)> {
    let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
    let client = TcpStream::connect(listener.local_addr()?).await?;
    let expected = client.local_addr()?;
    loop {
        let (server, from) = listener.accept().await?;
        // Another local process may connect first: only this connection is the bridge.
        if from == expected {
            return Ok((client, server));
        }
    }
}

/// The probe's URI, parsed; the error (redacted) when it is not one lapin can use.
/// `tls`: the pool has `[pool.NAME.tls]`, so either scheme is spoken over TLS (made here).
pub(super) fn login_uri(
    text: &str,
    redact: impl Fn(&str) -> String,
    tls: bool,
) -> Result<lapin::uri::AMQPUri, ProbeOutcome> {
    use lapin::uri::{AMQPScheme, AMQPUri};

    let mut parsed: AMQPUri = match text.parse() {
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
        if !tls {
            // Config load refuses it.
            return Err(ProbeOutcome::down(
                "amqp_login: amqps:// needs [pool.NAME.tls] (the CA of the nodes' certificates)",
            ));
        }
        // TLS is this probe's (its port, 5671 by default, stays); lapin must not try its own.
        parsed.scheme = AMQPScheme::AMQP;
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
