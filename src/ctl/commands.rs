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
    let now = SystemTime::now();
    let mut text = render_status(&status, now, terminal_width());
    // With [fleet] (a warren without answers 404): the fleet, after this instance's pools.
    match client.get_json("/v1/fleet", "fleet status").await {
        Ok(raw) => {
            let fleet = decode::<FleetStatus>(raw, "fleet status")?;
            text.push('\n');
            text.push_str(&render_fleet(&fleet, now, terminal_width()));
        }
        Err(CtlError::Refused { status, .. }) if status == StatusCode::NOT_FOUND => {}
        // The status above is what the operator needs most when the fleet cannot be shown.
        Err(e) => {
            let _ = write!(text, "\nfleet: not shown: {e}\n");
        }
    }
    print_stdout(text.trim_end());
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
/// The (pool, backend) pairs a drain or undrain is about: one name with `--pool` needs no
/// status; otherwise names and tags are looked up in `/v1/status`.
pub(super) async fn resolve_targets(
    client: &Client,
    names: &[String],
    tags: &[String],
    pool: Option<String>,
) -> Result<Vec<(String, String)>, CtlError> {
    if let (Some(pool), [name], []) = (&pool, names, tags) {
        return Ok(vec![(pool.clone(), name.clone())]);
    }
    let status = decode::<Status>(client.get_json("/v1/status", "status").await?, "status")?;
    targets_of(&status, names, tags, pool.as_deref())
}

/// Pure half of [`resolve_targets`]: a name stands for that backend in every pool it is in
/// (a node behind an AMQP and a management listener is in two), a tag for every backend that
/// has it; `pool` keeps only that pool's. In order, each once.
pub(super) fn targets_of(
    status: &Status,
    names: &[String],
    tags: &[String],
    pool: Option<&str>,
) -> Result<Vec<(String, String)>, CtlError> {
    let in_scope = |p: &&PoolStatus| pool.map_or(true, |only| p.name == only);
    let mut targets: Vec<(String, String)> = Vec::new();
    let mut add = |pool: &str, backend: &str| {
        let pair = (pool.to_string(), backend.to_string());
        if !targets.contains(&pair) {
            targets.push(pair);
        }
    };
    for name in names {
        let mut found = false;
        for p in status.pools.iter().filter(in_scope) {
            if p.backends.iter().any(|b| b.name == *name) {
                add(&p.name, name);
                found = true;
            }
        }
        if !found {
            return Err(CtlError::UnknownBackend {
                name: name.to_string(),
                pools: status.pools.iter().map(|p| p.name.clone()).collect(),
            });
        }
    }
    for tag in tags {
        let mut found = false;
        for p in status.pools.iter().filter(in_scope) {
            for b in p.backends.iter().filter(|b| b.tags.contains(tag)) {
                add(&p.name, &b.name);
                found = true;
            }
        }
        if !found {
            return Err(CtlError::UnknownTag {
                tag: tag.clone(),
                pool: pool.map(str::to_string),
            });
        }
    }
    Ok(targets)
}

/// A set drained as one decision.
#[derive(Clone, Copy)]
pub(super) struct SetDrain<'a> {
    pub(super) targets: &'a [(String, String)],
    pub(super) deadline: Option<&'a Deadline>,
    pub(super) force: bool,
    /// `--local`: on this instance only, not through the fleet.
    pub(super) local: bool,
}

/// How an undrain was asked for.
#[derive(Clone, Copy, Debug)]
pub(super) struct Undrain {
    /// The return may start a rebalance (`--no-rebalance` not given).
    pub(super) rebalance: bool,
    /// `--local`: on this instance only, not through the fleet.
    pub(super) local: bool,
}

/// `a (pool p), b (pool p)`: a set as the progress lines name it.
fn set_names(targets: &[(String, String)]) -> String {
    let names: Vec<String> = targets
        .iter()
        .map(|(pool, name)| format!("{name} (pool {pool})"))
        .collect();
    names.join(", ")
}

fn backend_refs(targets: &[(String, String)]) -> Vec<BackendRef> {
    targets
        .iter()
        .map(|(pool, backend)| BackendRef {
            backend: backend.clone(),
            pool: pool.clone(),
        })
        .collect()
}

/// `POST /v1/drain` for the set, each backend's answer reported as a single drain's is, then
/// (with `wait`) a wait for each backend still draining.
pub(super) async fn drain_set(
    client: &Client,
    out: &Output,
    set: SetDrain<'_>,
    wait: bool,
    poll: Duration,
) -> Result<(), CtlError> {
    let what = format!("drain of {}", set_names(set.targets));
    let request = DrainSetRequest {
        backends: backend_refs(set.targets),
        deadline: set.deadline.map(|d| d.text.clone()),
        force: set.force,
        local: set.local,
    };
    let body = serde_json::to_value(request).expect("a drain request serializes");
    let raw = client.post_json("/v1/drain", Some(body), &what).await?;
    out.json(&raw);
    let answer = decode::<DrainSetAnswer>(raw, &what)?;
    let mut open = Vec::new();
    for a in &answer.backends {
        if let Some(n) = report_drain(out, a, set.deadline) {
            open.push((a, n));
        }
    }
    if wait {
        for (a, n) in open {
            let drain = BackendDrain {
                pool: &a.pool,
                name: &a.backend,
                deadline: set.deadline,
                force: set.force,
                local: set.local,
            };
            wait_drained(client, out, &drain, n, poll).await?;
        }
    }
    Ok(())
}

/// `POST /v1/undrain` for the set; one line per backend.
pub(super) async fn undrain_set(
    client: &Client,
    out: &Output,
    targets: &[(String, String)],
    how: Undrain,
) -> Result<(), CtlError> {
    let what = format!("undrain of {}", set_names(targets));
    let request = UndrainSetRequest {
        backends: backend_refs(targets),
        local: how.local,
        rebalance: how.rebalance,
    };
    let body = serde_json::to_value(request).expect("an undrain request serializes");
    let raw = client.post_json("/v1/undrain", Some(body), &what).await?;
    out.json(&raw);
    let answer = decode::<DrainSetAnswer>(raw, &what)?;
    for a in &answer.backends {
        report_undrain(out, a);
    }
    Ok(())
}

/// One backend's drain as `warren ctl` was asked for it.
#[derive(Clone, Copy)]
pub(super) struct BackendDrain<'a> {
    pub(super) pool: &'a str,
    pub(super) name: &'a str,
    pub(super) deadline: Option<&'a Deadline>,
    pub(super) force: bool,
    /// `--local`: on this instance only, not through the fleet.
    pub(super) local: bool,
}

/// The body of `POST .../drain`: `deadline` only when given, so the server's default applies;
/// `local` only when set.
pub(super) fn drain_body(drain: &BackendDrain<'_>) -> Value {
    let request = DrainRequest {
        deadline: drain.deadline.map(|d| d.text.clone()),
        force: drain.force,
        local: drain.local,
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
        ..
    } = *drain;
    let what = format!("drain of {name} (pool {pool})");
    let path = backend_path(pool, name, "drain");
    let raw = client
        .post_json(&path, Some(drain_body(drain)), &what)
        .await?;
    out.json(&raw);
    let answer = decode::<DrainAnswer>(raw, &what)?;
    Ok(report_drain(out, &answer, deadline))
}

/// Say what a drain's answer means: warnings, the quorum check, and drained or how many
/// connections are still open (returned, `None` when drained at once).
fn report_drain(out: &Output, answer: &DrainAnswer, deadline: Option<&Deadline>) -> Option<i64> {
    let (pool, name) = (&answer.pool, &answer.backend);
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
        return None;
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
    Some(open)
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
    let mut last = (open, 0);
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
            let now = (backend.active_connections, backend.connecting);
            if now != last {
                last = now;
                let mut line = format!("{name}: {} left", connections(now.0));
                if now.1 > 0 {
                    let _ = write!(line, ", {} being set up", connections(now.1));
                }
                out.say(&line);
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
            connections(last.0 + last.1),
            humantime::format_duration(cap)
        ))),
    }
}

pub(super) async fn undrain_backend(
    client: &Client,
    out: &Output,
    pool: &str,
    name: &str,
    how: Undrain,
) -> Result<(), CtlError> {
    let what = format!("undrain of {name} (pool {pool})");
    // The defaults are left out, so an older warren takes the request.
    let request = UndrainRequest {
        local: how.local,
        rebalance: how.rebalance,
    };
    let body = (!how.rebalance || how.local)
        .then(|| serde_json::to_value(request).expect("an undrain request serializes"));
    let raw = client
        .post_json(&backend_path(pool, name, "undrain"), body, &what)
        .await?;
    out.json(&raw);
    let answer = decode::<DrainAnswer>(raw, &what)?;
    report_undrain(out, &answer);
    Ok(())
}

/// Say what an undrain's answer means: its warnings, then the backend's admin state.
fn report_undrain(out: &Output, answer: &DrainAnswer) {
    if let Some(e) = &answer.persist_error {
        out.say(&format!("warning: {e}"));
    }
    for w in &answer.warnings {
        out.say(&format!("warning: {w}"));
    }
    out.say(&format!(
        "{} (pool {}) is {}",
        answer.backend, answer.pool, answer.admin
    ));
}

/// `POST /v1/pools/{pool}/rebalance`: one line on what the rebalancer will do.
pub(super) async fn rebalance(client: &Client, out: &Output, pool: &str) -> Result<(), CtlError> {
    let what = format!("rebalance of pool {pool}");
    let path = format!("/v1/pools/{}/rebalance", encode_segment(pool));
    let raw = client.post_json(&path, None, &what).await?;
    out.json(&raw);
    let answer = decode::<RebalanceAnswer>(raw, &what)?;
    let percent = answer.imbalance * 100.0;
    if answer.started {
        out.say(&format!(
            "pool {pool}: rebalancing, {} connection(s) above their backend's fair share \
             (imbalance {percent:.0}%), moved at most {} a second",
            answer.to_move, answer.max_closes_per_second
        ));
    } else {
        out.say(&format!(
            "pool {pool}: balanced (imbalance {percent:.0}%), nothing to move"
        ));
    }
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

/// `upgrade-self`: one request; the answer comes once the new process serves (or says why not).
pub(super) async fn upgrade_self(client: &Client, out: &Output) -> Result<(), CtlError> {
    let mut client = client.clone();
    client.timeout = UPGRADE_TIMEOUT;
    let raw = client.post_json("/v1/upgrade", None, "upgrade").await?;
    out.json(&raw);
    if !out.json {
        let answer = decode::<UpgradeAnswer>(raw, "upgrade")?;
        let left = match answer.connections_left {
            0 => String::new(),
            n => format!("; {n} connections warren was closing end in the old process"),
        };
        out.say(&format!(
            "upgraded: pid {} serves (took over from pid {} in {} ms, {} connections handed over){left}",
            answer.new_pid, answer.old_pid, answer.took_ms, answer.connections
        ));
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
