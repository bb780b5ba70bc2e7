//! The `http` probe: the URL template filled in for the backend (or its path joined to the
//! backend's management endpoint), the credentials (re-read from `password_file` each time), one
//! GET through `crate::http_client`, 2xx = up.

use super::*;

/// The basic-auth credentials of `user`, reading `password_file` now so a rotated password is
/// picked up. `None` when no `user` is set (the URL's `user:pass@`, if any, is then sent).
pub(super) fn credentials(
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

/// What an `http` probe sends: its own `user`; without one, a path on the management endpoint
/// goes with the endpoint's credentials (its `user`, else the `user:pass@` of its url, which the
/// joined URL carries).
pub(super) fn probe_credentials(
    url: &ProbeUrl,
    user: &Option<String>,
    password: &Option<Secret>,
    password_file: &Option<std::path::PathBuf>,
    target: &ProbeTarget,
) -> Result<Option<Credentials>, ProbeOutcome> {
    match (&target.management, user) {
        (Some(m), None) if url.on_management() => {
            credentials(&m.user, &m.password, &m.password_file)
        }
        _ => credentials(user, password, password_file),
    }
}

pub(super) fn read_password_file(file: &Path) -> Result<String, ProbeOutcome> {
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
pub(super) struct HttpAsk {
    /// The probe URL filled in for the backend.
    pub(super) url: HttpUrl,
    /// From `user`; the URL's own `user:pass@` is sent when this is `None`.
    pub(super) credentials: Option<Credentials>,
    /// What a reason must never show: the password and its basic-auth token.
    pub(super) secrets: Vec<String>,
}

/// The probe URL filled in for `target`, a path joined to its management endpoint (checked at
/// load, so this fails only on a backend host that makes it invalid).
pub(super) fn fill(url: &ProbeUrl, target: &ProbeTarget) -> Result<HttpUrl, String> {
    let management = target.management.as_ref().map(|m| &m.url);
    url.resolve(&target.host, target.port, management)
        .map_err(|e| {
            format!(
                "http probe url {} is not usable: {e}",
                without_userinfo(url.template())
            )
        })
}

impl HttpAsk {
    pub(super) fn new(url: HttpUrl, credentials: Option<Credentials>) -> HttpAsk {
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

    pub(super) fn redact(&self, text: &str) -> String {
        redact(
            text,
            &self.secrets.iter().map(String::as_str).collect::<Vec<_>>(),
        )
    }

    /// GET the URL, or `path` on its authority; errors are operator-readable, not redacted.
    pub(super) async fn get(
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
        self.send(request, target, phase).await
    }

    /// `request` (on this ask's URL) with its credentials, to the backend's resolved address
    /// when the URL names the backend's host.
    pub(super) async fn send(
        &self,
        mut request: Request<'_>,
        target: &ProbeTarget,
        phase: &mut Phase,
    ) -> Result<Response, ProbeOutcome> {
        if let Some(credentials) = &self.credentials {
            request = request.authorization(credentials.header());
        }
        // The usual `{host}` template names the backend: its resolved address, no DNS lookup
        // per probe.
        if self.url.host() == target.host {
            request = request.connect_to(SocketAddr::new(target.addr.ip(), self.url.port()));
            // The node's own name: `[pool.NAME.tls] server_name` when the host is an IP.
            if let Some(tls) = &target.tls {
                request = request.server_name(tls.server_name.clone());
            }
        }
        // `https://` on a node of a pool with `[pool.NAME.tls]` (config load refuses it
        // without): verified with the pool's CA.
        if let Some(tls) = &target.tls {
            request = request.tls(tls.config());
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

pub(super) async fn http(
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
