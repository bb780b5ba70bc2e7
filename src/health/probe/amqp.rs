//! The `tcp` and `amqp` probes: connect (with the PROXY header the listener sends), and for
//! `amqp` send the protocol header and read the broker's `Connection.Start`.

use super::*;

/// The header a probe of the AMQP address sends first: the listener's PROXY version naming the
/// probe's own connection (warren's address as the source, the backend as the destination).
///
/// Not the LOCAL command (v1 "UNKNOWN"), which the spec meant for health checks: RabbitMQ 3.10.8
/// crashes the connection process on it (`no match of right hand side value #{command => local}`
/// in `rabbit_net:socket_ends/2`, an error-level crash report, then a reset), measured with
/// `proxy_protocol = true`. A PROXY header with the real addresses is accepted by every version.
pub(super) fn proxy_header(
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
pub(super) async fn send_proxy_header(
    stream: &mut TcpStream,
    version: ProxyProtocol,
) -> io::Result<()> {
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
pub(super) async fn connect_amqp_address(
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

pub(super) async fn tcp(target: &ProbeTarget, stage: &mut Stage) -> ProbeOutcome {
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
///
/// With `[pool.NAME.tls]` the same exchange runs inside a TLS session (amqps), after the
/// PROXY header; the reason then names the TLS version.
pub(super) async fn amqp(target: &ProbeTarget, stage: &mut Stage) -> ProbeOutcome {
    let stream = match connect_amqp_address(target, stage).await {
        Ok(stream) => stream,
        Err(outcome) => return outcome,
    };
    let Some(tls) = &target.tls else {
        return start_exchange(stream, stage).await;
    };
    match tls_handshake(stream, tls, stage).await {
        Ok(stream) => {
            let version = tls_version(&stream);
            let mut outcome = start_exchange(stream, stage).await;
            if outcome.up {
                outcome.reason = format!("{}, over {version}", outcome.reason);
            } else {
                tls_hint(&mut outcome, tls);
            }
            outcome
        }
        Err(outcome) => outcome,
    }
}

/// The `amqp` probe's exchange on a connected `stream`: the protocol header out,
/// Connection.Start in, then a plain close.
async fn start_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    stage: &mut Stage,
) -> ProbeOutcome {
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
pub(super) async fn read_start_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Vec<u8>, String> {
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

pub(super) async fn read_exact_or_explain<S: AsyncRead + Unpin>(
    stream: &mut S,
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
pub(super) struct Start {
    pub(super) version_major: u8,
    pub(super) version_minor: u8,
    pub(super) product: Option<String>,
    pub(super) version: Option<String>,
}

impl Start {
    pub(super) fn describe(&self) -> String {
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
pub(super) fn parse_start(payload: &[u8]) -> Result<Start, String> {
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
pub(super) fn field_table(buf: &[u8]) -> Option<&[u8]> {
    let len = u32::from_be_bytes(buf.get(..4)?.try_into().ok()?) as usize;
    buf.get(4..4usize.checked_add(len)?)
}

/// The long-string value of `key` in a field table, control characters replaced, at most 64 chars.
pub(super) fn table_string(mut table: &[u8], key: &[u8]) -> Option<String> {
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
pub(super) fn field_value_len(kind: u8, value: &[u8]) -> Option<usize> {
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
