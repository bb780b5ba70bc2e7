//! The admin API's address and credentials, and one request through `crate::http_client`
//! per call, its answer read as JSON or turned into a `CtlError` that says what the server
//! answered.

use super::*;

/// The admin API's address and credentials; one short-lived connection per request, so a
/// `--wait` survives nothing stale between polls.
#[derive(Clone)]
pub(super) struct Client {
    /// The URL as the operator gave it, for messages.
    pub(super) admin: String,
    pub(super) url: HttpUrl,
    /// Prepended to `/v1/...` when warren's admin API sits behind a path prefix.
    pub(super) prefix: String,
    pub(super) token: Option<HeaderValue>,
    /// One request's whole time ([`REQUEST_TIMEOUT`], longer for `upgrade-self`).
    pub(super) timeout: Duration,
}

impl Client {
    pub(super) fn new(url: &str, token: Option<HeaderValue>) -> Result<Client, CtlError> {
        let invalid = |reason: &str| CtlError::AdminUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let trimmed = url.trim();
        // `[admin] listen` is written without a scheme; accept it as the operator copies it.
        let full = if trimmed.contains("://") {
            trimmed.to_string()
        } else {
            format!("http://{trimmed}")
        };
        let parsed = HttpUrl::parse(&full).map_err(|e| match e {
            UrlError::Https | UrlError::Scheme => invalid("only http:// is supported"),
            e => invalid(&e.to_string()),
        })?;
        if parsed.credentials().is_some() {
            return Err(invalid("credentials go in --token-file, not in the URL"));
        }
        if parsed.has_query() {
            return Err(invalid("a query string is not supported"));
        }
        Ok(Client {
            admin: trimmed.to_string(),
            prefix: parsed.path().trim_end_matches('/').to_string(),
            url: parsed,
            token,
            timeout: REQUEST_TIMEOUT,
        })
    }

    pub(super) async fn get_json(&self, path: &str, what: &str) -> Result<Value, CtlError> {
        self.call(Method::GET, path, None, what).await
    }

    pub(super) async fn post_json(
        &self,
        path: &str,
        body: Option<Value>,
        what: &str,
    ) -> Result<Value, CtlError> {
        self.call(Method::POST, path, body, what).await
    }

    /// One request; a 2xx answer's JSON, or the error the status and body call for.
    pub(super) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        what: &str,
    ) -> Result<Value, CtlError> {
        let (status, bytes) = self.exchange(method, path, body, what).await?;
        if status == StatusCode::UNAUTHORIZED {
            let message = error_message(status, &bytes);
            return Err(if self.token.is_some() {
                CtlError::TokenRefused { message }
            } else {
                CtlError::TokenMissing { message }
            });
        }
        if !status.is_success() {
            return Err(CtlError::Refused {
                what: what.to_string(),
                status,
                message: error_message(status, &bytes),
                reason: serde_json::from_slice::<ErrorBody>(&bytes)
                    .ok()
                    .and_then(|e| e.reason),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| CtlError::BadAnswer {
            what: what.to_string(),
            reason: format!("not JSON ({e})"),
        })
    }

    /// One request on a fresh connection (connect, send, whole answer) within `self.timeout`.
    pub(super) async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        what: &str,
    ) -> Result<(StatusCode, Bytes), CtlError> {
        let target = format!("{}{path}", self.prefix);
        let mut request = Request::new(method, &self.url)
            .path(&target)
            .user_agent(concat!("warren-ctl/", env!("CARGO_PKG_VERSION")))
            .read(BodyRead::Whole(MAX_ANSWER_BYTES));
        if let Some(token) = &self.token {
            request = request.authorization(token.clone());
        }
        if let Some(body) = body {
            request = request.json(body.to_string());
        }
        let http = |reason: String| CtlError::Http {
            admin: self.admin.clone(),
            reason,
        };
        match request.send_within(self.timeout).await {
            Ok(response) => Ok((response.status, response.body)),
            Err(HttpError::Timeout { .. }) => Err(CtlError::Timeout {
                admin: self.admin.clone(),
                what: what.to_string(),
                timeout: self.timeout,
            }),
            Err(HttpError::Resolve { source, .. } | HttpError::Connect { source, .. }) => {
                Err(CtlError::Connect {
                    admin: self.admin.clone(),
                    source,
                })
            }
            Err(HttpError::NoAddress { .. }) => Err(CtlError::Connect {
                admin: self.admin.clone(),
                source: std::io::Error::other("the host resolves to no address"),
            }),
            Err(
                HttpError::Handshake { source, .. }
                | HttpError::Exchange { source, .. }
                | HttpError::Closed { source, .. },
            ) => Err(http(source.to_string())),
            Err(HttpError::Body { source, .. }) => {
                Err(http(format!("reading the answer: {source}")))
            }
            Err(HttpError::TooLarge { .. }) => Err(http(
                "reading the answer: length limit exceeded".to_string(),
            )),
            Err(HttpError::Build { source, .. }) => Err(http(source.to_string())),
            // `warren ctl` takes http:// admin URLs only; kept for completeness.
            Err(HttpError::Tls { reason, .. }) => {
                Err(http(format!("TLS handshake failed: {reason}")))
            }
        }
    }
}

/// The server's `{"error": "..."}` text, else the start of the body, else the status's reason.
pub(super) fn error_message(status: StatusCode, body: &[u8]) -> String {
    // Read as a map, not as an [`ErrorBody`]: a newer server's unknown `reason` must not cost
    // the operator the message.
    if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) {
        if let Some(Value::String(message)) = map.get("error") {
            return message.clone();
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("no message")
            .to_string()
    } else {
        cut(text, 300)
    }
}
