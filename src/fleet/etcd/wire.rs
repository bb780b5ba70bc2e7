//! The JSON of etcd's HTTP gateway, as etcd 3.4 writes and reads it: requests built from
//! [`super`]'s types, answers decoded into them. Pure functions, no I/O. What the gateway does
//! that a reader would not guess (checked against etcd 3.4.23): keys and values are base64;
//! 64-bit numbers are written as strings (`"revision":"7"`; numbers are accepted on input);
//! fields at their zero value are left out (`succeeded: false`, a PUT event's `type`, an empty
//! `kvs`); lease fields are `ID` and `TTL` in capitals (a lower-case `ttl` is silently ignored);
//! streamed answers (watch, lease keep-alive) are one `{"result": ...}` or `{"error": ...}`
//! object per line.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::de::{self, Deserializer};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{
    Compare, CompareResult, CompareTarget, DeleteResponse, Event, EventKind, GetResponse, KeyValue,
    Lease, TxnOp, TxnOpResponse, TxnResponse,
};
use crate::http_client::Credentials;

// ---------------------------------------------------------------------------------------------
// Requests

fn b64(bytes: &[u8]) -> Value {
    Value::String(BASE64.encode(bytes))
}

/// An int64 as the gateway writes it (a string keeps every bit through any JSON reader).
fn int(n: i64) -> Value {
    Value::String(n.to_string())
}

/// The first key past every key that starts with `prefix`: the `range_end` of a prefix. An
/// empty prefix, or one of only 0xff bytes, has no such key: etcd reads `"\0"` as "to the end".
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// `{key, range_end}` for one key, or for every key under `key` when `prefix`.
fn key_range(key: &[u8], prefix: bool) -> Map<String, Value> {
    let mut body = Map::new();
    body.insert("key".into(), b64(key));
    if prefix {
        body.insert("range_end".into(), b64(&prefix_end(key)));
    }
    body
}

/// `/v3/kv/range`, `/v3/kv/deleterange`.
pub(crate) fn range(key: &[u8], prefix: bool) -> Value {
    Value::Object(key_range(key, prefix))
}

/// `/v3/kv/put`.
pub(crate) fn put(key: &[u8], value: &[u8], lease: Option<i64>) -> Value {
    let mut body = Map::new();
    body.insert("key".into(), b64(key));
    body.insert("value".into(), b64(value));
    if let Some(id) = lease {
        body.insert("lease".into(), int(id));
    }
    Value::Object(body)
}

fn compare(c: &Compare) -> Value {
    let result = match c.result {
        CompareResult::Equal => "EQUAL",
        CompareResult::NotEqual => "NOT_EQUAL",
        CompareResult::Greater => "GREATER",
        CompareResult::Less => "LESS",
    };
    let (target, field, value) = match &c.target {
        CompareTarget::Version(n) => ("VERSION", "version", int(*n)),
        CompareTarget::CreateRevision(n) => ("CREATE", "create_revision", int(*n)),
        CompareTarget::ModRevision(n) => ("MOD", "mod_revision", int(*n)),
        CompareTarget::Value(v) => ("VALUE", "value", b64(v)),
        CompareTarget::Lease(n) => ("LEASE", "lease", int(*n)),
    };
    json!({"key": b64(&c.key), "result": result, "target": target, field: value})
}

fn op(op: &TxnOp) -> Value {
    match op {
        TxnOp::Get { key, prefix } => json!({"request_range": range(key, *prefix)}),
        TxnOp::Put { key, value, lease } => json!({"request_put": put(key, value, *lease)}),
        TxnOp::Delete { key, prefix } => json!({"request_delete_range": range(key, *prefix)}),
    }
}

/// `/v3/kv/txn`.
pub(crate) fn txn(compares: &[Compare], success: &[TxnOp], failure: &[TxnOp]) -> Value {
    json!({
        "compare": compares.iter().map(compare).collect::<Vec<_>>(),
        "success": success.iter().map(op).collect::<Vec<_>>(),
        "failure": failure.iter().map(op).collect::<Vec<_>>(),
    })
}

/// `/v3/lease/grant`.
pub(crate) fn lease_grant(ttl_secs: i64) -> Value {
    json!({"TTL": int(ttl_secs)})
}

/// `/v3/lease/keepalive`, `/v3/lease/revoke`.
pub(crate) fn lease_id(id: i64) -> Value {
    json!({"ID": int(id)})
}

/// `/v3/auth/authenticate`.
pub(crate) fn authenticate(credentials: &Credentials) -> Value {
    json!({"name": credentials.user, "password": credentials.password})
}

/// `/v3/watch`: every key under `prefix`, from `start_revision` (0: from the next change).
pub(crate) fn watch_create(prefix: &[u8], start_revision: i64) -> Value {
    let mut create = key_range(prefix, true);
    if start_revision > 0 {
        create.insert("start_revision".into(), int(start_revision));
    }
    json!({ "create_request": create })
}

// ---------------------------------------------------------------------------------------------
// Answers

/// An int64 written as a string (or, leniently, as a number).
fn de_i64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Int {
        Text(String),
        Number(i64),
    }
    match Int::deserialize(d)? {
        Int::Number(n) => Ok(n),
        Int::Text(s) => s.parse().map_err(de::Error::custom),
    }
}

fn de_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let text = String::deserialize(d)?;
    BASE64.decode(text).map_err(de::Error::custom)
}

#[derive(Debug, Default, Deserialize)]
struct Header {
    #[serde(default, deserialize_with = "de_i64")]
    revision: i64,
}

#[derive(Debug, Deserialize)]
struct RawKv {
    #[serde(default, deserialize_with = "de_bytes")]
    key: Vec<u8>,
    #[serde(default, deserialize_with = "de_bytes")]
    value: Vec<u8>,
    #[serde(default, deserialize_with = "de_i64")]
    create_revision: i64,
    #[serde(default, deserialize_with = "de_i64")]
    mod_revision: i64,
    #[serde(default, deserialize_with = "de_i64")]
    version: i64,
    #[serde(default, deserialize_with = "de_i64")]
    lease: i64,
}

impl From<RawKv> for KeyValue {
    fn from(kv: RawKv) -> KeyValue {
        KeyValue {
            key: kv.key,
            value: kv.value,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            lease: kv.lease,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct RawRange {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    kvs: Vec<RawKv>,
}

impl From<RawRange> for GetResponse {
    fn from(r: RawRange) -> GetResponse {
        GetResponse {
            revision: r.header.revision,
            kvs: r.kvs.into_iter().map(KeyValue::from).collect(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct RawDelete {
    #[serde(default)]
    header: Header,
    #[serde(default, deserialize_with = "de_i64")]
    deleted: i64,
}

#[derive(Debug, Deserialize)]
struct RawResponseOp {
    response_range: Option<RawRange>,
    response_put: Option<RawHeaderOnly>,
    response_delete_range: Option<RawDelete>,
}

#[derive(Debug, Default, Deserialize)]
struct RawHeaderOnly {
    #[serde(default)]
    header: Header,
}

#[derive(Debug, Deserialize)]
struct RawTxn {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    succeeded: bool,
    #[serde(default)]
    responses: Vec<RawResponseOp>,
}

/// What a decoder says about an answer it cannot read.
pub(crate) type DecodeError = String;

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, DecodeError> {
    serde_json::from_slice(body).map_err(|e| format!("unexpected answer ({e})"))
}

pub(crate) fn decode_range(body: &[u8]) -> Result<GetResponse, DecodeError> {
    parse::<RawRange>(body).map(GetResponse::from)
}

/// The revision a put (or any answer with only a header) happened at.
pub(crate) fn decode_revision(body: &[u8]) -> Result<i64, DecodeError> {
    parse::<RawHeaderOnly>(body).map(|r| r.header.revision)
}

pub(crate) fn decode_delete(body: &[u8]) -> Result<DeleteResponse, DecodeError> {
    let r: RawDelete = parse(body)?;
    Ok(DeleteResponse {
        revision: r.header.revision,
        deleted: r.deleted,
    })
}

pub(crate) fn decode_txn(body: &[u8]) -> Result<TxnResponse, DecodeError> {
    let r: RawTxn = parse(body)?;
    let responses = r
        .responses
        .into_iter()
        .map(|op| match op {
            RawResponseOp {
                response_range: Some(range),
                ..
            } => Ok(TxnOpResponse::Get(range.into())),
            RawResponseOp {
                response_put: Some(_),
                ..
            } => Ok(TxnOpResponse::Put),
            RawResponseOp {
                response_delete_range: Some(d),
                ..
            } => Ok(TxnOpResponse::Delete { deleted: d.deleted }),
            other => Err(format!("unexpected operation in a txn answer: {other:?}")),
        })
        .collect::<Result<_, _>>()?;
    Ok(TxnResponse {
        succeeded: r.succeeded,
        revision: r.header.revision,
        responses,
    })
}

#[derive(Debug, Deserialize)]
struct RawLease {
    #[serde(rename = "ID", default, deserialize_with = "de_i64")]
    id: i64,
    #[serde(rename = "TTL", default, deserialize_with = "de_i64")]
    ttl: i64,
    #[serde(default)]
    error: String,
}

pub(crate) fn decode_lease_grant(body: &[u8]) -> Result<Lease, DecodeError> {
    let r: RawLease = parse(body)?;
    if !r.error.is_empty() {
        return Err(format!("lease not granted: {}", r.error));
    }
    if r.id == 0 {
        return Err("lease granted without an ID".into());
    }
    Ok(Lease {
        id: r.id,
        ttl: r.ttl,
    })
}

/// An error as the gateway writes it, alone (a failed call) or in a stream (`{"error": ...}`).
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct ErrorBody {
    /// The gRPC status code (16: the token is not valid, 11: compacted, 5: not found, ...).
    #[serde(default)]
    pub code: i32,
    #[serde(default)]
    pub message: String,
}

/// The error a non-2xx answer carries; its text (cut) when it is not the gateway's JSON.
pub(crate) fn decode_error(body: &[u8]) -> ErrorBody {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) if !e.message.is_empty() => e,
        _ => ErrorBody {
            code: 0,
            message: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
        },
    }
}

/// One message of a streamed answer: a result, or an error in one of two forms. An error before
/// the stream starts (a request the gateway cannot read) is the plain one,
/// `{"error": "TEXT", "message": "TEXT", "code": N}`; one in the stream is nested,
/// `{"error": {"grpc_code": N, "message": "TEXT", ...}}`.
#[derive(Debug, Deserialize)]
struct Streamed<T> {
    result: Option<T>,
    error: Option<StreamError>,
    #[serde(default)]
    message: String,
    #[serde(default)]
    code: i32,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StreamError {
    Text(String),
    Nested {
        #[serde(default, alias = "grpc_code")]
        code: i32,
        #[serde(default)]
        message: String,
    },
}

impl<T> Streamed<T> {
    /// The result, or the error this message carries.
    fn into_result(self) -> Result<Result<T, ErrorBody>, DecodeError> {
        match (self.result, self.error) {
            (Some(result), _) => Ok(Ok(result)),
            (None, Some(StreamError::Nested { code, message })) => {
                Ok(Err(ErrorBody { code, message }))
            }
            (None, Some(StreamError::Text(text))) => Ok(Err(ErrorBody {
                code: self.code,
                message: if self.message.is_empty() {
                    text
                } else {
                    self.message
                },
            })),
            (None, None) => Err("a streamed message with neither result nor error".into()),
        }
    }
}

/// One `/v3/lease/keepalive` answer: the lease's remaining TTL in seconds (0 or less: the lease
/// is gone), or the error the stream carried.
pub(crate) fn decode_keepalive(body: &[u8]) -> Result<Result<i64, ErrorBody>, DecodeError> {
    // The stream ends after one answer to one request; only the first object is read.
    let first = serde_json::Deserializer::from_slice(body)
        .into_iter::<Streamed<RawLease>>()
        .next()
        .ok_or("empty keep-alive answer")?
        .map_err(|e| format!("unexpected answer ({e})"))?;
    Ok(first.into_result()?.map(|lease: RawLease| lease.ttl))
}

#[derive(Debug, Deserialize)]
struct RawToken {
    #[serde(default)]
    token: String,
}

pub(crate) fn decode_token(body: &[u8]) -> Result<String, DecodeError> {
    let r: RawToken = parse(body)?;
    if r.token.is_empty() {
        return Err("authenticated without a token (is auth enabled on etcd?)".into());
    }
    Ok(r.token)
}

// ---------------------------------------------------------------------------------------------
// The watch stream

/// One message of a watch stream, as [`super::watch`] acts on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WatchFrame {
    /// The watch is set up; `revision` is the store's revision then.
    Created { revision: i64 },
    /// Changes, in revision order (all those of one revision come in one frame).
    Events(Vec<Event>),
    /// Nothing changed: a progress notice.
    Progress,
    /// etcd ended the watch: `compact_revision` > 0 when the start revision was compacted away.
    Canceled {
        compact_revision: i64,
        reason: String,
    },
    /// The gateway failed the stream (a bad request, a lost leader).
    Error(ErrorBody),
}

#[derive(Debug, Deserialize)]
struct RawEvent {
    #[serde(rename = "type", default)]
    kind: String,
    kv: RawKv,
}

#[derive(Debug, Deserialize)]
struct RawWatch {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    created: bool,
    #[serde(default)]
    canceled: bool,
    #[serde(default, deserialize_with = "de_i64")]
    compact_revision: i64,
    #[serde(default)]
    cancel_reason: String,
    #[serde(default)]
    events: Vec<RawEvent>,
}

fn watch_frame(message: Streamed<RawWatch>) -> Result<WatchFrame, DecodeError> {
    let w = match message.into_result()? {
        Ok(w) => w,
        Err(e) => return Ok(WatchFrame::Error(e)),
    };
    // Cancel first: etcd 3.4 answers a refused watch with `created` and `canceled` both set.
    if w.canceled || w.compact_revision > 0 {
        return Ok(WatchFrame::Canceled {
            compact_revision: w.compact_revision,
            reason: w.cancel_reason,
        });
    }
    if w.created {
        return Ok(WatchFrame::Created {
            revision: w.header.revision,
        });
    }
    if w.events.is_empty() {
        return Ok(WatchFrame::Progress);
    }
    let events = w
        .events
        .into_iter()
        .map(|e| {
            let kind = match e.kind.as_str() {
                "" | "PUT" => EventKind::Put,
                "DELETE" => EventKind::Delete,
                other => return Err(format!("unknown watch event type {other:?}")),
            };
            Ok(Event {
                kind,
                key: e.kv.key,
                value: e.kv.value,
                mod_revision: e.kv.mod_revision,
                create_revision: e.kv.create_revision,
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(WatchFrame::Events(events))
}

/// Splits a watch stream's bytes into messages: bytes go in as they arrive, whole messages come
/// out, a message cut across two reads waits for the rest.
#[derive(Debug, Default)]
pub(crate) struct WatchParser {
    pending: Vec<u8>,
}

/// A watch message larger than this is refused rather than buffered without end.
const MAX_WATCH_MESSAGE: usize = 64 * 1024 * 1024;

impl WatchParser {
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Result<Vec<WatchFrame>, DecodeError> {
        self.pending.extend_from_slice(bytes);
        let mut frames = Vec::new();
        let mut stream =
            serde_json::Deserializer::from_slice(&self.pending).into_iter::<Streamed<RawWatch>>();
        let mut used = 0;
        loop {
            match stream.next() {
                Some(Ok(message)) => {
                    used = stream.byte_offset();
                    frames.push(watch_frame(message)?);
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(e)) => return Err(format!("unreadable watch message ({e})")),
                None => {
                    used = self.pending.len();
                    break;
                }
            }
        }
        self.pending.drain(..used);
        if self.pending.len() > MAX_WATCH_MESSAGE {
            return Err(format!(
                "a watch message larger than {MAX_WATCH_MESSAGE} bytes"
            ));
        }
        Ok(frames)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Answers below are etcd 3.4.23's, cut to the fields that matter (cluster_id and friends
    // left in where they show what is ignored).
    const HEADER: &str = r#""header":{"cluster_id":"324952591200643719","member_id":"3319814642761637952","revision":"6","raft_term":"2"}"#;

    #[test]
    fn prefix_ends() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"warren/", b"warren0"),
            (b"a", b"b"),
            (b"a\xff", b"b"),
            (b"a\xfe", b"a\xff"),
            (b"\xff\xff", b"\0"),
            (b"", b"\0"),
        ];
        for (prefix, end) in cases {
            assert_eq!(prefix_end(prefix), *end, "{prefix:?}");
        }
    }

    #[test]
    fn requests_are_base64_with_int64_as_strings() {
        assert_eq!(
            range(b"foo", false),
            json!({"key": "Zm9v"}),
            "a single key has no range_end"
        );
        assert_eq!(
            range(b"fo", true),
            json!({"key": "Zm8=", "range_end": "ZnA="})
        );
        assert_eq!(
            put(b"k", b"\x00\xff", Some(7_587_869_102_337_212_936)),
            json!({"key": "aw==", "value": "AP8=", "lease": "7587869102337212936"})
        );
        assert_eq!(put(b"k", b"", None), json!({"key": "aw==", "value": ""}));
        assert_eq!(lease_grant(5), json!({"TTL": "5"}));
        assert_eq!(lease_id(-3), json!({"ID": "-3"}));
        assert_eq!(
            watch_create(b"w/", 12),
            json!({"create_request": {"key": "dy8=", "range_end": "dzA=", "start_revision": "12"}})
        );
        assert_eq!(
            watch_create(b"w/", 0),
            json!({"create_request": {"key": "dy8=", "range_end": "dzA="}})
        );
    }

    #[test]
    fn txn_compare_and_swap_and_create_if_absent() {
        let cas = txn(
            &[Compare::mod_revision_is(b"k", 3)],
            &[TxnOp::put(b"k", b"v", None)],
            &[TxnOp::get(b"k")],
        );
        assert_eq!(
            cas,
            json!({
                "compare": [{"key": "aw==", "result": "EQUAL", "target": "MOD", "mod_revision": "3"}],
                "success": [{"request_put": {"key": "aw==", "value": "dg=="}}],
                "failure": [{"request_range": {"key": "aw=="}}],
            })
        );
        let create = txn(
            &[Compare::absent(b"k")],
            &[TxnOp::put(b"k", b"v", Some(9)), TxnOp::delete_prefix(b"d/")],
            &[],
        );
        assert_eq!(
            create,
            json!({
                "compare": [{"key": "aw==", "result": "EQUAL", "target": "CREATE", "create_revision": "0"}],
                "success": [
                    {"request_put": {"key": "aw==", "value": "dg==", "lease": "9"}},
                    {"request_delete_range": {"key": "ZC8=", "range_end": "ZDA="}},
                ],
                "failure": [],
            })
        );
        let value = compare(&Compare {
            key: b"k".to_vec(),
            result: CompareResult::NotEqual,
            target: CompareTarget::Value(b"x".to_vec()),
        });
        assert_eq!(
            value,
            json!({"key": "aw==", "result": "NOT_EQUAL", "target": "VALUE", "value": "eA=="})
        );
    }

    #[test]
    fn range_answers() {
        let found = format!(
            r#"{{{HEADER},"kvs":[{{"key":"Zm9v","create_revision":"2","mod_revision":"3","version":"2","value":"YmF6"}}],"count":"1"}}"#
        );
        let got = decode_range(found.as_bytes()).unwrap();
        assert_eq!(got.revision, 6);
        assert_eq!(
            got.kvs,
            vec![KeyValue {
                key: b"foo".to_vec(),
                value: b"baz".to_vec(),
                create_revision: 2,
                mod_revision: 3,
                version: 2,
                lease: 0,
            }]
        );
        // Nothing found: no `kvs`, no `count`. An empty value: no `value`.
        let none = decode_range(format!("{{{HEADER}}}").as_bytes()).unwrap();
        assert_eq!((none.revision, none.kvs.len()), (6, 0));
        let empty = decode_range(
            br#"{"header":{"revision":"9"},"kvs":[{"key":"aw==","create_revision":"9","mod_revision":"9","version":"1","lease":"42"}]}"#,
        )
        .unwrap();
        assert_eq!(empty.kvs[0].value, b"");
        assert_eq!(empty.kvs[0].lease, 42);
        assert!(decode_range(br#"{"kvs":[{"key":"!!"}]}"#).is_err());
        assert!(decode_range(b"<html>").is_err());
    }

    #[test]
    fn txn_answers() {
        let won = format!(
            r#"{{{HEADER},"succeeded":true,"responses":[{{"response_put":{{"header":{{"revision":"3"}}}}}},{{"response_delete_range":{{"header":{{"revision":"3"}},"deleted":"2"}}}}]}}"#
        );
        let got = decode_txn(won.as_bytes()).unwrap();
        assert!(got.succeeded);
        assert_eq!(got.revision, 6);
        assert_eq!(
            got.responses,
            vec![TxnOpResponse::Put, TxnOpResponse::Delete { deleted: 2 }]
        );
        // Lost: `succeeded` is left out; the failure branch's range comes back.
        let lost = format!(
            r#"{{{HEADER},"responses":[{{"response_range":{{"header":{{"revision":"3"}},"kvs":[{{"key":"Zm9v","create_revision":"2","mod_revision":"3","version":"2","value":"YmF6"}}],"count":"1"}}}}]}}"#
        );
        let got = decode_txn(lost.as_bytes()).unwrap();
        assert!(!got.succeeded);
        match &got.responses[..] {
            [TxnOpResponse::Get(range)] => assert_eq!(range.kvs[0].mod_revision, 3),
            other => panic!("{other:?}"),
        }
        // Lost with nothing to do: only the header.
        let bare = decode_txn(format!("{{{HEADER}}}").as_bytes()).unwrap();
        assert!(!bare.succeeded && bare.responses.is_empty());
    }

    #[test]
    fn lease_and_auth_answers() {
        let grant = format!(r#"{{{HEADER},"ID":"2324035865200011280","TTL":"5"}}"#);
        assert_eq!(
            decode_lease_grant(grant.as_bytes()).unwrap(),
            Lease {
                id: 2_324_035_865_200_011_280,
                ttl: 5
            }
        );
        assert!(decode_lease_grant(br#"{"ID":"1","error":"too many"}"#).is_err());
        let alive = format!(r#"{{"result":{{{HEADER},"ID":"7","TTL":"4"}}}}"#);
        assert_eq!(decode_keepalive(alive.as_bytes()).unwrap(), Ok(4));
        // An unknown or expired lease: no TTL.
        let gone = format!("{{\"result\":{{{HEADER},\"ID\":\"1\"}}}}\n");
        assert_eq!(decode_keepalive(gone.as_bytes()).unwrap(), Ok(0));
        let failed = br#"{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader","http_status":"Service Unavailable"}}"#;
        assert_eq!(
            decode_keepalive(failed).unwrap(),
            Err(ErrorBody {
                code: 14,
                message: "etcdserver: no leader".into()
            })
        );
        let token = format!(r#"{{{HEADER},"token":"bAmTlkWejAXbHnhx.24"}}"#);
        assert_eq!(
            decode_token(token.as_bytes()).unwrap(),
            "bAmTlkWejAXbHnhx.24"
        );
        assert!(decode_token(format!("{{{HEADER}}}").as_bytes()).is_err());
    }

    #[test]
    fn error_answers() {
        let e = decode_error(
            br#"{"error":"etcdserver: invalid auth token","message":"etcdserver: invalid auth token","code":16}"#,
        );
        assert_eq!(
            (e.code, e.message.as_str()),
            (16, "etcdserver: invalid auth token")
        );
        let e = decode_error(b"404 page not found\n");
        assert_eq!((e.code, e.message.as_str()), (0, "404 page not found\n"));
    }

    fn event(kind: EventKind, key: &[u8], value: &[u8], rev: i64, created: i64) -> Event {
        Event {
            kind,
            key: key.to_vec(),
            value: value.to_vec(),
            mod_revision: rev,
            create_revision: created,
        }
    }

    #[test]
    fn watch_stream_messages() {
        let stream = [
            format!(r#"{{"result":{{{HEADER},"created":true}}}}"#),
            format!(
                r#"{{"result":{{{HEADER},"events":[{{"kv":{{"key":"Zng=","create_revision":"5","mod_revision":"5","version":"1","value":"MQ=="}}}},{{"type":"DELETE","kv":{{"key":"Zng=","mod_revision":"6"}}}}]}}}}"#
            ),
            r#"{"result":{"header":{"raft_term":"2"},"canceled":true,"compact_revision":"5"}}"#
                .to_string(),
            format!(
                r#"{{"result":{{{HEADER},"watch_id":"-1","created":true,"canceled":true,"cancel_reason":"rpc error: code = Unauthenticated desc = etcdserver: invalid auth token"}}}}"#
            ),
            r#"{"error":"illegal base64 data at input byte 0","message":"illegal base64 data at input byte 0","code":2}"#
                .to_string(),
            format!(r#"{{"result":{{{HEADER}}}}}"#),
        ];
        let want = vec![
            WatchFrame::Created { revision: 6 },
            WatchFrame::Events(vec![
                event(EventKind::Put, b"fx", b"1", 5, 5),
                event(EventKind::Delete, b"fx", b"", 6, 0),
            ]),
            WatchFrame::Canceled {
                compact_revision: 5,
                reason: String::new(),
            },
            WatchFrame::Canceled {
                compact_revision: 0,
                reason: "rpc error: code = Unauthenticated desc = etcdserver: invalid auth token"
                    .into(),
            },
            WatchFrame::Error(ErrorBody {
                code: 2,
                message: "illegal base64 data at input byte 0".into(),
            }),
            WatchFrame::Progress,
        ];
        let all = stream.join("\n") + "\n";
        // Whole, then cut into every pair of pieces: a message split across reads waits.
        let mut parser = WatchParser::default();
        assert_eq!(parser.push(all.as_bytes()).unwrap(), want);
        for cut in 0..all.len() {
            let mut parser = WatchParser::default();
            let mut got = parser.push(&all.as_bytes()[..cut]).unwrap();
            got.extend(parser.push(&all.as_bytes()[cut..]).unwrap());
            assert_eq!(got, want, "cut at {cut}");
            assert!(parser.pending.is_empty());
        }
        let mut parser = WatchParser::default();
        assert!(parser.push(b"{\"result\": nonsense}\n").is_err());
    }
}
