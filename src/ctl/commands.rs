//! The commands against one warren: `status`, `drain` (with `--wait` and its progress),
//! `undrain` (with `--wait-healthy`), `reload`, and reading their answers into `crate::api`'s
//! types.

use super::*;

pub(super) async fn status(client: &Client, out: &Output) -> Result<(), CtlError> {
    let raw = client.get_json("/v1/status", "status").await?;
    if out.json {
        out.json(&raw);
        return Ok(());
    }
    let status = decode::<Status>(raw, "status")?;
    print_stdout(render_status(&status, SystemTime::now(), terminal_width()).trim_end());
    Ok(())
}

pub(super) fn terminal_width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse().ok())
        .filter(|&w: &usize| w > 0)
        .unwrap_or(DEFAULT_WIDTH)
}

/// The pool of backend `name`: `--pool` if given, else the only pool that has it.
pub(super) async fn resolve_pool(
    client: &Client,
    name: &str,
    pool: Option<String>,
) -> Result<String, CtlError> {
    if let Some(pool) = pool {
        return Ok(pool);
    }
    let status = decode::<Status>(client.get_json("/v1/status", "status").await?, "status")?;
    pool_of(&status, name)
}

/// Pure half of [`resolve_pool`].
pub(super) fn pool_of(status: &Status, name: &str) -> Result<String, CtlError> {
    let pools: Vec<String> = status
        .pools
        .iter()
        .filter(|p| p.backends.iter().any(|b| b.name == name))
        .map(|p| p.name.clone())
        .collect();
    match pools.len() {
        1 => Ok(pools.into_iter().next().unwrap_or_default()),
        0 => Err(CtlError::UnknownBackend {
            name: name.to_string(),
            pools: status.pools.iter().map(|p| p.name.clone()).collect(),
        }),
        _ => Err(CtlError::Ambiguous {
            name: name.to_string(),
            pools,
        }),
    }
}

/// One backend's drain as `warren ctl` was asked for it.
#[derive(Clone, Copy)]
pub(super) struct BackendDrain<'a> {
    pub(super) pool: &'a str,
    pub(super) name: &'a str,
    pub(super) deadline: Option<&'a Deadline>,
    pub(super) force: bool,
}

/// The body of `POST .../drain`: `deadline` only when given, so the server's default applies.
pub(super) fn drain_body(deadline: Option<&Deadline>, force: bool) -> Value {
    let request = DrainRequest {
        deadline: deadline.map(|d| d.text.clone()),
        force,
    };
    serde_json::to_value(request).expect("a drain request serializes")
}

pub(super) async fn drain_backend(
    client: &Client,
    out: &Output,
    drain: BackendDrain<'_>,
    wait: bool,
    poll: Duration,
) -> Result<(), CtlError> {
    let open = start_drain(client, out, &drain).await?;
    match open {
        Some(open) if wait => wait_drained(client, out, &drain, open, poll).await,
        _ => Ok(()),
    }
}

/// Ask for the drain and report it; the connections still open, or `None` when none was.
pub(super) async fn start_drain(
    client: &Client,
    out: &Output,
    drain: &BackendDrain<'_>,
) -> Result<Option<i64>, CtlError> {
    let BackendDrain {
        pool,
        name,
        deadline,
        force,
    } = *drain;
    let what = format!("drain of {name} (pool {pool})");
    let path = backend_path(pool, name, "drain");
    let raw = client
        .post_json(&path, Some(drain_body(deadline, force)), &what)
        .await?;
    out.json(&raw);
    let answer = decode::<DrainAnswer>(raw, &what)?;
    let open = answer.active_connections;
    for warning in answer.warnings.iter().chain(&answer.persist_error) {
        out.say(&format!("warning: {warning}"));
    }
    if let Some(check) = &answer.quorum_check {
        out.say(&format!("quorum check of {name}: {check}"));
    }
    if answer.admin == AdminState::Drained {
        out.say(&format!(
            "drained {name} (pool {pool}): no connection was open"
        ));
        return Ok(None);
    }
    let mut line = format!("draining {name} (pool {pool}): {} open", connections(open));
    if let Some(at) = &answer.drain_deadline {
        let _ = write!(line, "; the rest are closed at {at}");
        if deadline.is_some_and(|d| d.default) {
            let _ = write!(
                line,
                " (--wait's default deadline, {WAIT_DEFAULT_DEADLINE}: AMQP clients keep their \
                 connections until they are closed; give --deadline to choose)"
            );
        }
    }
    out.say(&line);
    Ok(Some(open))
}

/// Wait until a draining backend has no connection left (bounded by its deadline plus slack).
pub(super) async fn wait_drained(
    client: &Client,
    out: &Output,
    drain: &BackendDrain<'_>,
    open: i64,
    poll: Duration,
) -> Result<(), CtlError> {
    let BackendDrain {
        pool,
        name,
        deadline,
        ..
    } = *drain;
    // `drain --wait` always sends a deadline (its default when none was given).
    let cap = deadline.map_or(Duration::MAX, |d| d.duration.saturating_add(DEADLINE_SLACK));
    let mut last = open;
    let waiting = async {
        loop {
            tokio::time::sleep(poll).await;
            let status =
                decode::<Status>(client.get_json("/v1/status", "status").await?, "status")?;
            let backend = find_backend(&status, pool, name)?;
            match backend.admin {
                AdminState::Drained => return Ok(()),
                AdminState::Active => {
                    return Err(CtlError::GaveUp(format!(
                        "{name} (pool {pool}) was undrained while waiting for it to drain"
                    )))
                }
                AdminState::Draining => {}
            }
            if backend.active_connections != last {
                last = backend.active_connections;
                out.say(&format!("{name}: {} left", connections(last)));
            }
        }
    };
    let outcome = tokio::time::timeout(cap, waiting).await;
    match outcome {
        Ok(Ok(())) => {
            out.say(&format!("{name} (pool {pool}) is drained"));
            Ok(())
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(CtlError::GaveUp(format!(
            "{name} (pool {pool}) still had {} after {}; gave up waiting (it stays draining)",
            connections(last),
            humantime::format_duration(cap)
        ))),
    }
}

pub(super) async fn undrain_backend(
    client: &Client,
    out: &Output,
    pool: &str,
    name: &str,
) -> Result<(), CtlError> {
    let what = format!("undrain of {name} (pool {pool})");
    let raw = client
        .post_json(&backend_path(pool, name, "undrain"), None, &what)
        .await?;
    out.json(&raw);
    let answer = decode::<DrainAnswer>(raw, &what)?;
    if let Some(e) = &answer.persist_error {
        out.say(&format!("warning: {e}"));
    }
    out.say(&format!("{name} (pool {pool}) is {}", answer.admin));
    Ok(())
}

/// `rabbit-a: health down (failed connect from the data path (refused); last probe: ...)`:
/// the check that made the change (a failed connect from the data path is not the last probe),
/// then what the last probe says now, when it says something else.
fn health_line(name: &str, backend: &BackendStatus) -> String {
    let mut line = format!("{name}: health {}", backend.health);
    let probe = backend
        .last_probe
        .as_ref()
        .map(|p| p.reason.as_str())
        .filter(|r| !r.is_empty());
    match (backend.health_reason.as_deref(), probe) {
        (Some(why), Some(probe)) if why != probe => {
            let _ = write!(line, " ({why}; last probe: {probe})");
        }
        (Some(why), _) => {
            let _ = write!(line, " ({why})");
        }
        (None, Some(probe)) => {
            let _ = write!(line, " (last probe: {probe})");
        }
        (None, None) => {}
    }
    line
}

pub(super) async fn wait_healthy_for(
    client: &Client,
    out: &Output,
    pool: &str,
    name: &str,
    timeout: Duration,
    poll: Duration,
) -> Result<(), CtlError> {
    let mut last_seen = Health::Unknown;
    let mut probed = false;
    let waiting = async {
        let mut last_line = String::new();
        loop {
            let status =
                decode::<Status>(client.get_json("/v1/status", "status").await?, "status")?;
            let backend = find_backend(&status, pool, name)?;
            // Without a probe, health stays "unknown" (which counts as available) for good.
            let probed_pool = status
                .pools
                .iter()
                .any(|p| p.name == pool && p.health_check.is_some());
            if backend.admin != AdminState::Active {
                return Err(CtlError::GaveUp(format!(
                    "{name} (pool {pool}) became {} while waiting for it to be healthy",
                    backend.admin
                )));
            }
            let healthy =
                backend.health == Health::Up || (!probed_pool && backend.health == Health::Unknown);
            if healthy && backend.available {
                return Ok(());
            }
            last_seen = backend.health;
            probed = backend.last_probe.is_some();
            let line = health_line(name, backend);
            if line != last_line {
                out.say(&line);
                last_line = line;
            }
            tokio::time::sleep(poll).await;
        }
    };
    let outcome = tokio::time::timeout(timeout, waiting).await;
    match outcome {
        Ok(Ok(())) => {
            out.say(&format!("{name} (pool {pool}) is up and available"));
            Ok(())
        }
        Ok(Err(e)) => Err(e),
        Err(_) => {
            // Without an active check a backend stays "unknown" (and available) forever.
            let hint = if probed {
                String::new()
            } else {
                format!("; no probe has run: does pool {pool} have a [pool.{pool}.health] check?")
            };
            Err(CtlError::GaveUp(format!(
                "{name} (pool {pool}) is not up after {} (health {last_seen}){hint}; it stays active and takes connections once healthy",
                humantime::format_duration(timeout)
            )))
        }
    }
}

pub(super) async fn reload(client: &Client, out: &Output) -> Result<(), CtlError> {
    let raw = client.post_json("/v1/reload", None, "reload").await?;
    out.json(&raw);
    if !out.json {
        let answer = decode::<ReloadAnswer>(raw, "reload")?;
        out.say(&format!("reloaded: {}", answer.summary));
    }
    Ok(())
}

pub(super) fn find_backend<'s>(
    status: &'s Status,
    pool: &str,
    name: &str,
) -> Result<&'s BackendStatus, CtlError> {
    status
        .pools
        .iter()
        .filter(|p| p.name == pool)
        .flat_map(|p| &p.backends)
        .find(|b| b.name == name)
        .ok_or_else(|| CtlError::Vanished {
            pool: pool.to_string(),
            name: name.to_string(),
        })
}

pub(super) fn backend_path(pool: &str, name: &str, action: &str) -> String {
    format!(
        "/v1/pools/{}/backends/{}/{action}",
        encode_segment(pool),
        encode_segment(name)
    )
}

/// Percent-encodes everything outside RFC 3986's unreserved set, so a typo'd name with a `/`
/// or a space cannot address another route.
pub(super) fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

pub(super) fn connections(n: i64) -> String {
    if n == 1 {
        "1 connection".to_string()
    } else {
        format!("{n} connections")
    }
}

pub(super) fn decode<T: serde::de::DeserializeOwned>(
    raw: Value,
    what: &str,
) -> Result<T, CtlError> {
    serde_json::from_value(raw).map_err(|e| CtlError::BadAnswer {
        what: what.to_string(),
        reason: e.to_string(),
    })
}
