//! Closing one client connection on its RabbitMQ node through the node's management API:
//! `DELETE /api/connections/NAME` with an `X-Reason` header, after which the node sends the
//! client `Connection.Close` with reply code 320 (CONNECTION_FORCED) and `CONNECTION_FORCED -
//! REASON` as its text. It asks the same endpoint with the same credentials as the quorum check
//! ([`management_ask`]); it reads no AMQP and keeps no state: retries, pacing and what to do
//! when the node cannot close the connection belong to the caller (the data plane).

use std::net::SocketAddr;

use hyper::header::HeaderValue;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::quorum::management_ask;
use super::*;

/// What a node said to "close this client connection".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseAnswer {
    /// The backend has no management endpoint (and its pool no `http` probe on the management
    /// API): nobody to ask.
    NotApplicable,
    /// 2xx: the node has sent the client its `Connection.Close` (it does so before answering).
    Closed,
    /// 404: the node knows no connection of that name. A connection shows in the management
    /// API only after the node's statistics interval (5 s by default), so a young one is
    /// asked again; an older one is not (or no longer) there.
    NotFound,
    /// Nobody answered (refused, timeout): the API is down.
    Unanswered(String),
    /// An answer that is not the API's (401 without the `administrator` or `management` tag,
    /// 500, a proxy's page).
    Unexpected(String),
}

/// Where the management API lists (and closes) connections by name.
pub const CONNECTIONS_PATH: &str = "/api/connections/";

/// What is percent-encoded in a connection's name in the path: everything but the characters
/// RFC 3986 leaves unreserved (`:`, ` ` and `>` of `A:P -> B:Q` among them).
const NAME_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// RabbitMQ's name of an AMQP connection: `FROM:PORT -> TO:PORT`, as the node sees the socket
/// (`from` is the peer the node sees: warren's own address, or the client's when a PROXY
/// header named it; `to` the node's address). IPv6 goes in brackets, and an IPv4-mapped IPv6
/// address is shown as IPv4, as RabbitMQ does.
pub fn connection_name(from: SocketAddr, to: SocketAddr) -> String {
    let plain = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    format!("{} -> {}", plain(from), plain(to))
}

/// The management API path of the connection named `name`.
pub fn connection_path(name: &str) -> String {
    format!(
        "{CONNECTIONS_PATH}{}",
        utf8_percent_encode(name, NAME_SEGMENT)
    )
}

/// Ask the node behind `target` to close the client connection `name`, telling the client
/// `reason`; within `timeout`. Whom it asks is the quorum check's choice: the backend's own
/// management endpoint, else the pool's `http` probe on the management API.
pub async fn close_connection(
    probe: Option<&Probe>,
    target: &ProbeTarget,
    name: &str,
    reason: &str,
    timeout: Duration,
) -> CloseAnswer {
    let path = connection_path(name);
    let ask = match management_ask(probe, target, &path) {
        Ok(Some(ask)) => ask,
        Ok(None) => return CloseAnswer::NotApplicable,
        Err(why) => return CloseAnswer::Unexpected(why),
    };
    // A reason with bytes no header may carry is sent without them, not refused.
    let header = HeaderValue::from_str(reason)
        .unwrap_or_else(|_| HeaderValue::from_static("warren: closing the connection"));
    let request = Request::new(Method::DELETE, &ask.url)
        .reason(header)
        .read(BodyRead::FailurePrefix(HTTP_BODY_PREFIX));
    let mut phase = Phase::Connecting;
    match tokio::time::timeout(timeout, ask.send(request, target, &mut phase)).await {
        Err(_) => CloseAnswer::Unanswered(format!(
            "timed out after {} {}",
            humantime::format_duration(timeout),
            phase.as_str()
        )),
        Ok(Err(failed)) => CloseAnswer::Unanswered(ask.redact(&failed.reason)),
        Ok(Ok(response)) => close_answer(response.status.as_u16(), &response.body),
    }
}

/// Read the node's answer to a close.
pub fn close_answer(status: u16, body: &[u8]) -> CloseAnswer {
    match status {
        200..=299 => CloseAnswer::Closed,
        404 => CloseAnswer::NotFound,
        status => CloseAnswer::Unexpected(format!(
            "HTTP {status}: {}",
            sanitize(&String::from_utf8_lossy(body), HTTP_BODY_PREFIX)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths_are_rabbitmqs() {
        let cases = [
            (
                "127.0.0.1:44834",
                "127.0.77.1:5672",
                "127.0.0.1:44834 -> 127.0.77.1:5672",
                "/api/connections/127.0.0.1%3A44834%20-%3E%20127.0.77.1%3A5672",
            ),
            (
                "[::1]:40000",
                "[fd00::2]:5672",
                "[::1]:40000 -> [fd00::2]:5672",
                "/api/connections/%5B%3A%3A1%5D%3A40000%20-%3E%20%5Bfd00%3A%3A2%5D%3A5672",
            ),
            (
                "[::ffff:10.0.0.7]:40000",
                "10.0.0.1:5672",
                "10.0.0.7:40000 -> 10.0.0.1:5672",
                "/api/connections/10.0.0.7%3A40000%20-%3E%2010.0.0.1%3A5672",
            ),
        ];
        for (from, to, name, path) in cases {
            let got = connection_name(from.parse().unwrap(), to.parse().unwrap());
            assert_eq!(got, name);
            assert_eq!(connection_path(&got), path);
        }
    }

    #[test]
    fn answers_map_to_outcomes() {
        let cases = [
            (204, "", CloseAnswer::Closed),
            (200, "", CloseAnswer::Closed),
            (
                404,
                "{\"error\":\"Object Not Found\"}",
                CloseAnswer::NotFound,
            ),
            (
                401,
                "{\"error\":\"not_authorised\"}",
                CloseAnswer::Unexpected("HTTP 401: {\"error\":\"not_authorised\"}".into()),
            ),
            (500, "", CloseAnswer::Unexpected("HTTP 500: ".into())),
        ];
        for (status, body, want) in cases {
            assert_eq!(close_answer(status, body.as_bytes()), want, "{status}");
        }
    }
}
