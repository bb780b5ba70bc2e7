//! The hand-over protocol's messages and their framing, without I/O: what the old and the new
//! process say to each other, how one message becomes bytes (`[version: u16][length: u32]`,
//! big-endian, then the message as JSON) and how a byte stream is cut back into messages. The
//! descriptors a message carries travel beside it (SCM_RIGHTS, see `channel`); a message only
//! says how many belong to it. It must not touch sockets or processes.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// The protocol version this build speaks; a frame of another version is refused by name.
pub const VERSION: u16 = 2;

/// Bytes before a message: the version (2) and the message's length (4).
pub const HEADER_LEN: usize = 6;

/// The largest message accepted: a batch of connections carries what each held in flight
/// (base64), at most a pipe and a copy buffer per direction; batches are cut well below this.
pub const MAX_MESSAGE: usize = 64 << 20;

/// One message of the exchange, in its order: `Hello` (new → old); `Listener`s, at most one
/// `Admin`, `Backends`, then `Done` (old → new); `Ready` (new → old: it serves every listener);
/// then the established connections in `Connections` batches, `Counters` and
/// `ConnectionsDone` (old → new); `Adopted` (new → old: it holds them); `Commit` (old → new:
/// it lets go, the new one forwards them from now on). `Failed` may come from the new process
/// instead of any of its messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// The new process loaded its config and asks for the listening sockets.
    Hello { pid: u32, version: String },
    /// The new process cannot take over (its config does not load, a socket is unusable).
    Failed { reason: String },
    /// A listener's sockets (one per worker of the old process), attached to this message.
    Listener {
        name: String,
        addr: SocketAddr,
        sockets: usize,
    },
    /// The admin API's listening socket, attached to this message.
    Admin { addr: SocketAddr },
    /// Every backend's health and drain state, applied before the new process serves.
    Backends { backends: Vec<BackendState> },
    /// Every socket has been sent.
    Done,
    /// The new process serves every listener: the old one may stop accepting.
    Ready { pid: u32 },
    /// Established connections, each with its client and backend sockets attached (in order:
    /// client, backend), paused in the old process.
    Connections { connections: Vec<HandedConnection> },
    /// The old process's counters, which the new one continues from.
    Counters {
        counters: Vec<crate::metrics::CounterSample>,
    },
    /// Every paused connection has been sent.
    ConnectionsDone { count: usize },
    /// The new process holds every connection sent: the old one may let go.
    Adopted { count: usize },
    /// The old process lets go: the new one forwards them from now on.
    Commit,
}

/// One backend's state as the old process hands it over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendState {
    pub pool: String,
    pub backend: String,
    /// The address the health verdict is about.
    pub addr: SocketAddr,
    pub health: crate::api::Health,
    /// When `health` last changed (Unix milliseconds) and why.
    pub health_changed_ms: u64,
    pub health_reason: Option<String>,
    pub admin: crate::api::AdminState,
    /// A draining backend's deadline (Unix milliseconds), kept to the millisecond.
    pub drain_deadline_ms: Option<u64>,
    /// `[fleet]`: since when (Unix milliseconds) its admin state is a local change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_since_ms: Option<u64>,
}

/// One established connection as the old process hands it over: where it runs, what warren
/// knows of it, and what was in flight when it paused (base64: bytes read from one side and
/// not yet written to the other). Its two sockets travel beside the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandedConnection {
    pub listener: String,
    pub pool: String,
    pub backend: String,
    pub backend_addr: SocketAddr,
    /// The client as warren logs it (from the inbound PROXY header when there was one).
    pub client: SocketAddr,
    /// What the client connected to (likewise).
    pub destination: SocketAddr,
    /// The outbound PROXY header version sent to the backend: 0 (none), 1 or 2.
    pub proxy_protocol: u8,
    /// Time since the backend connection was established, and since the last byte.
    pub age_ms: u64,
    pub idle_ms: u64,
    /// Bytes delivered so far (to the backend: without `early_bytes`).
    pub bytes_to_backend: u64,
    pub bytes_to_client: u64,
    /// Bytes the client sent after its PROXY header, written with the preamble.
    pub early_bytes: u32,
    pub to_backend: String,
    pub to_client: String,
    /// The client, or the backend, already sent its FIN.
    pub client_done: bool,
    pub backend_done: bool,
}

impl Message {
    /// How many descriptors travel with this message.
    pub fn descriptors(&self) -> usize {
        match self {
            Message::Listener { sockets, .. } => *sockets,
            Message::Admin { .. } => 1,
            Message::Connections { connections } => 2 * connections.len(),
            _ => 0,
        }
    }
}

/// A stream that does not hold the protocol: each error says what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("the other process speaks hand-over protocol version {got}, this one {VERSION}")]
    Version { got: u16 },
    #[error("a hand-over message of {len} bytes (at most {MAX_MESSAGE})")]
    TooLong { len: usize },
    #[error("an unreadable hand-over message: {0}")]
    Json(String),
    #[error("a hand-over message came with {got} descriptors, it says {expected}")]
    Descriptors { got: usize, expected: usize },
}

/// `message` as one frame: header, then its JSON.
pub fn encode(message: &Message) -> Vec<u8> {
    let body = serde_json::to_vec(message).expect("a hand-over message serializes");
    let mut frame = Vec::with_capacity(HEADER_LEN + body.len());
    frame.extend_from_slice(&VERSION.to_be_bytes());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    frame
}

/// The first whole message in `buf` and how many bytes it took; `Ok(None)` while it is
/// incomplete.
pub fn decode(buf: &[u8]) -> Result<Option<(Message, usize)>, ProtocolError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let version = u16::from_be_bytes([buf[0], buf[1]]);
    if version != VERSION {
        return Err(ProtocolError::Version { got: version });
    }
    let len = u32::from_be_bytes([buf[2], buf[3], buf[4], buf[5]]) as usize;
    if len > MAX_MESSAGE {
        return Err(ProtocolError::TooLong { len });
    }
    let Some(body) = buf.get(HEADER_LEN..HEADER_LEN + len) else {
        return Ok(None);
    };
    let message = serde_json::from_slice(body).map_err(|e| ProtocolError::Json(e.to_string()))?;
    Ok(Some((message, HEADER_LEN + len)))
}

/// Which handed-over listener each configured listener adopts (pure): the one with its name
/// and address, else one with its address (a renamed listener). A listener whose address
/// changed binds afresh, as the old socket listens elsewhere. Returns (listener, handed index).
pub fn match_handed(
    listeners: &[crate::config::ListenerConfig],
    handed: &[(String, SocketAddr)],
) -> Vec<(String, usize)> {
    let mut taken = vec![false; handed.len()];
    let mut plan: Vec<Option<usize>> = vec![None; listeners.len()];
    let exact = |l: &crate::config::ListenerConfig, h: &(String, SocketAddr)| {
        h.0 == l.name && h.1 == l.listen
    };
    let address = |l: &crate::config::ListenerConfig, h: &(String, SocketAddr)| h.1 == l.listen;
    for fits in [&exact as &dyn Fn(_, _) -> bool, &address] {
        for (i, l) in listeners.iter().enumerate() {
            if plan[i].is_some() {
                continue;
            }
            if let Some(j) = (0..handed.len()).find(|&j| !taken[j] && fits(l, &handed[j])) {
                taken[j] = true;
                plan[i] = Some(j);
            }
        }
    }
    listeners
        .iter()
        .zip(plan)
        .filter_map(|(l, j)| Some((l.name.clone(), j?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_messages() -> Vec<Message> {
        vec![
            Message::Hello {
                pid: 7,
                version: "0.1.0".into(),
            },
            Message::Failed {
                reason: "warren.toml:3: pool = \"x\": no such pool".into(),
            },
            Message::Listener {
                name: "amqp".into(),
                addr: "127.0.0.1:5672".parse().unwrap(),
                sockets: 2,
            },
            Message::Admin {
                addr: "[::1]:9901".parse().unwrap(),
            },
            Message::Backends {
                backends: vec![BackendState {
                    pool: "rabbitmq".into(),
                    backend: "rabbit-1".into(),
                    addr: "10.0.0.1:5672".parse().unwrap(),
                    health: crate::api::Health::Up,
                    health_changed_ms: 1_700_000_000_000,
                    health_reason: Some("amqp: ok".into()),
                    admin: crate::api::AdminState::Draining,
                    drain_deadline_ms: Some(1_700_000_060_123),
                    local_since_ms: Some(1_700_000_050_000),
                }],
            },
            Message::Done,
            Message::Ready { pid: 8 },
            Message::Connections {
                connections: vec![HandedConnection {
                    listener: "amqp".into(),
                    pool: "rabbitmq".into(),
                    backend: "rabbit-1".into(),
                    backend_addr: "10.0.0.1:5672".parse().unwrap(),
                    client: "192.0.2.7:40000".parse().unwrap(),
                    destination: "10.0.0.9:5672".parse().unwrap(),
                    proxy_protocol: 2,
                    age_ms: 86_400_000,
                    idle_ms: 1_500,
                    bytes_to_backend: 10,
                    bytes_to_client: 20,
                    early_bytes: 3,
                    to_backend: "AMQP".into(),
                    to_client: String::new(),
                    client_done: false,
                    backend_done: true,
                }],
            },
            Message::Counters {
                counters: vec![crate::metrics::CounterSample {
                    name: "warren_connections_total".into(),
                    labels: vec![("listener".into(), "amqp".into())],
                    value: 7.0,
                }],
            },
            Message::ConnectionsDone { count: 1 },
            Message::Adopted { count: 1 },
            Message::Commit,
        ]
    }

    #[test]
    fn every_message_round_trips_whole_and_byte_by_byte() {
        let stream: Vec<u8> = all_messages().iter().flat_map(encode).collect();
        let mut decoded = Vec::new();
        let mut buf = Vec::new();
        for byte in stream {
            buf.push(byte);
            if let Some((message, used)) = decode(&buf).unwrap() {
                assert_eq!(used, buf.len(), "a frame ends where its message ends");
                decoded.push(message);
                buf.clear();
            }
        }
        assert_eq!(decoded, all_messages());
    }

    #[test]
    fn descriptors_are_counted_per_message() {
        let counts: Vec<usize> = all_messages().iter().map(Message::descriptors).collect();
        assert_eq!(counts, [0, 0, 2, 1, 0, 0, 0, 2, 0, 0, 0, 0]);
    }

    #[test]
    fn bad_frames_are_refused_by_what_is_wrong() {
        let mut frame = encode(&Message::Done);
        frame[1] = 9;
        assert_eq!(decode(&frame), Err(ProtocolError::Version { got: 9 }));
        let huge = [0, 2, 0x10, 0, 0, 1];
        assert_eq!(
            decode(&huge),
            Err(ProtocolError::TooLong { len: 0x1000_0001 })
        );
        let garbage = [0, 2, 0, 0, 0, 2, b'{', b'x'];
        assert!(matches!(decode(&garbage), Err(ProtocolError::Json(_))));
        assert_eq!(decode(&frame[..3]).unwrap_or(None), None);
    }

    #[test]
    fn listeners_adopt_by_name_and_address_then_by_address() {
        let listener = |name: &str, listen: &str| {
            crate::config::ListenerConfig::default_for(name, listen.parse().unwrap(), "p")
        };
        let a: SocketAddr = "127.0.0.1:5672".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:5673".parse().unwrap();
        let handed = vec![("amqp".to_owned(), a), ("tls".to_owned(), b)];
        type Case = (
            Vec<crate::config::ListenerConfig>,
            Vec<(&'static str, usize)>,
        );
        let cases: Vec<Case> = vec![
            // Unchanged.
            (
                vec![
                    listener("amqp", "127.0.0.1:5672"),
                    listener("tls", "127.0.0.1:5673"),
                ],
                vec![("amqp", 0), ("tls", 1)],
            ),
            // Renamed: the address decides.
            (vec![listener("main", "127.0.0.1:5672")], vec![("main", 0)]),
            // Moved to another port: binds afresh; a new listener on the old port takes it.
            (
                vec![
                    listener("amqp", "127.0.0.1:6000"),
                    listener("new", "127.0.0.1:5673"),
                ],
                vec![("new", 1)],
            ),
        ];
        for (listeners, expected) in cases {
            let got = match_handed(&listeners, &handed);
            let expected: Vec<(String, usize)> = expected
                .into_iter()
                .map(|(n, j)| (n.to_owned(), j))
                .collect();
            assert_eq!(got, expected);
        }
    }
}
