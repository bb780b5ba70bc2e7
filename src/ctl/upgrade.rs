//! `warren ctl upgrade`: a rolling upgrade of one pool, one backend at a time, the way an
//! operator walks a RabbitMQ cluster by hand: check the pool is healthy, drain the node (the
//! server refuses while RabbitMQ says the node is quorum-critical), run the operator's command
//! (stop, upgrade, start), wait until the node has passed `rise` probes again, undrain, next.
//!
//! With several `--admin` instances (a pair of warren in front of the same cluster), every
//! drain and undrain goes to each of them, and the drains start together; health is read from
//! the first. It uses only the admin API (like the rest of `ctl`) and the operator's command. Any failing
//! step stops the walk where it is: the node at hand stays drained (never put back into
//! service half-upgraded), and the error names the step and the command that continues.

use std::fmt::Write as _;
use std::process::Stdio;
use std::time::Duration;

use super::{
    decode, find_backend, rebalance, start_drain, undrain_backend, wait_drained, BackendDrain,
    Client, CtlError, Deadline, Output, Undrain,
};
use crate::api::{AdminState, BackendStatus, Health, PoolStatus, Status};

/// What `warren ctl upgrade` was asked to do.
#[derive(Debug, Clone)]
pub struct Plan {
    pub pool: String,
    /// The operator's command, run with `sh -c` once per backend after `{name}`, `{addr}`,
    /// `{host}` and `{port}` are replaced (each value shell-quoted).
    pub run: String,
    /// Connections still open this long after the drain started are closed.
    pub deadline: Deadline,
    /// Drain even when RabbitMQ says the node is quorum-critical or `min_available` objects.
    pub force: bool,
    /// Start at this backend (to continue a walk that stopped); earlier ones are skipped.
    pub from: Option<String>,
    /// How long the operator's command may run.
    pub command_timeout: Duration,
    /// How long a backend may take to pass `rise` probes after the command.
    pub healthy_timeout: Duration,
}

/// The steps of one backend, in order; their names appear in progress lines and errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    CheckPool,
    Drain,
    RunCommand,
    WaitHealthy,
    Undrain,
}

impl Step {
    fn number(self) -> usize {
        self as usize + 1
    }

    fn describe(self) -> &'static str {
        match self {
            Step::CheckPool => "check that the pool is healthy",
            Step::Drain => "quorum check and drain",
            Step::RunCommand => "run the upgrade command",
            Step::WaitHealthy => "wait until the backend passes its probes",
            Step::Undrain => "undrain",
        }
    }
}

const STEPS: usize = 5;

/// Walk the pool. On failure the error says where the walk stopped and how to go on.
pub(super) async fn upgrade(
    clients: &[Client],
    out: &Output,
    plan: &Plan,
    poll: Duration,
) -> Result<(), CtlError> {
    let client = &clients[0];
    let status = fetch_status(client).await?;
    let pool = pool_status(&status, &plan.pool)?;
    if pool.health_check.is_none() {
        return Err(CtlError::GaveUp(format!(
            "pool {} has no active health check: an upgrade needs probes to know when a node \
             is back (add [pool.{}.health])",
            plan.pool, plan.pool
        )));
    }
    let names: Vec<String> = pool.backends.iter().map(|b| b.name.clone()).collect();
    // A pool whose rebalancing is off (no management API: closes would cut sockets; or
    // source_hash) is left as the walk leaves it.
    let rebalances = pool.rebalance.as_ref().is_some_and(|r| r.mode != "off");
    let start = match &plan.from {
        None => 0,
        Some(from) => names.iter().position(|n| n == from).ok_or_else(|| {
            CtlError::GaveUp(format!(
                "--from {from}: no such backend in pool {} (backends: {})",
                plan.pool,
                names.join(", ")
            ))
        })?,
    };
    let walk = &names[start..];
    out.say(&format!(
        "upgrading pool {} one backend at a time: {}",
        plan.pool,
        walk.join(", ")
    ));
    for (i, name) in walk.iter().enumerate() {
        out.say(&format!("== {name} ({}/{})", i + 1, walk.len()));
        let resuming = i == 0 && plan.from.is_some();
        if let Err((step, reason)) = upgrade_one(clients, out, plan, name, resuming, poll).await {
            return Err(CtlError::GaveUp(stopped_message(
                plan,
                name,
                step,
                &reason,
                &walk[..i],
                &walk[i + 1..],
            )));
        }
    }
    out.say(&format!(
        "pool {}: all {} backend(s) upgraded, undrained and healthy",
        plan.pool,
        walk.len()
    ));
    if !rebalances {
        out.say(&format!(
            "pool {}: not rebalanced (its rebalance mode is off); `warren ctl rebalance {}` \
             moves connections back into balance",
            plan.pool, plan.pool
        ));
        return Ok(());
    }
    for c in clients {
        rebalance(c, out, &plan.pool).await.map_err(|e| {
            CtlError::GaveUp(format!(
                "{}; the walk itself is done",
                on_instance(clients, c, e)
            ))
        })?;
    }
    Ok(())
}

/// The five steps for one backend; the error is the step that failed and why.
async fn upgrade_one(
    clients: &[Client],
    out: &Output,
    plan: &Plan,
    name: &str,
    resuming: bool,
    poll: Duration,
) -> Result<(), (Step, String)> {
    let step_line = |step: Step| {
        out.say(&format!(
            "[{}/{STEPS}] {name}: {}",
            step.number(),
            step.describe()
        ))
    };
    let client = &clients[0];

    step_line(Step::CheckPool);
    let command = check_pool(client, plan, name, resuming)
        .await
        .map_err(|e| (Step::CheckPool, e))?;

    step_line(Step::Drain);
    let drain = BackendDrain {
        pool: &plan.pool,
        name,
        deadline: Some(&plan.deadline),
        force: plan.force,
        local: false,
    };
    drain_everywhere(clients, out, &drain, plan.healthy_timeout, poll)
        .await
        .map_err(|e| (Step::Drain, e))?;

    step_line(Step::RunCommand);
    out.say(&format!("$ {command}"));
    run_command(&command, plan.command_timeout)
        .await
        .map_err(|e| (Step::RunCommand, e))?;
    // Only probes run after the command count toward `rise`.
    let after_command = fetch_status(client)
        .await
        .and_then(|s| find_backend(&s, &plan.pool, name).map(|b| b.probes_run))
        .map_err(|e| (Step::WaitHealthy, e.to_string()))?;

    step_line(Step::WaitHealthy);
    wait_probes_pass(client, out, plan, name, after_command, poll)
        .await
        .map_err(|e| (Step::WaitHealthy, e))?;

    step_line(Step::Undrain);
    for c in clients {
        // The pool is rebalanced once, at the end of the walk, not after every node.
        let how = Undrain {
            rebalance: false,
            local: false,
        };
        undrain_backend(c, out, &plan.pool, name, how)
            .await
            .map_err(|e| (Step::Undrain, on_instance(clients, c, e)))?;
    }
    Ok(())
}

/// Step 1: the pool is ready for `name` to go down (see [`pool_problems`]); the operator's
/// command for it, its placeholders filled.
async fn check_pool(
    client: &Client,
    plan: &Plan,
    name: &str,
    resuming: bool,
) -> Result<String, String> {
    let status = fetch_status(client).await.map_err(|e| e.to_string())?;
    let pool = pool_status(&status, &plan.pool).map_err(|e| e.to_string())?;
    let problems = pool_problems(pool, name, resuming);
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    let backend = find_backend(&status, &plan.pool, name).map_err(|e| e.to_string())?;
    Ok(render_command(&plan.run, backend))
}

/// Step 2 on every instance: every instance stops new connections before any closes one, so a
/// client cut off by one instance cannot reconnect through another to the node being drained.
async fn drain_everywhere(
    clients: &[Client],
    out: &Output,
    drain: &BackendDrain<'_>,
    patience: Duration,
    poll: Duration,
) -> Result<(), String> {
    let mut open = Vec::new();
    for c in clients {
        let started = drain_when_not_critical(c, out, drain, patience, poll)
            .await
            .map_err(|e| on_instance(clients, c, e))?;
        open.push(started);
    }
    for (c, open) in clients.iter().zip(open) {
        if let Some(open) = open {
            wait_drained(c, out, drain, open, poll)
                .await
                .map_err(|e| on_instance(clients, c, e))?;
        }
    }
    Ok(())
}

/// An instance's error, prefixed with its admin URL when there are several instances.
fn on_instance(clients: &[Client], c: &Client, e: CtlError) -> String {
    if clients.len() > 1 {
        format!("[{}] {e}", c.admin)
    } else {
        e.to_string()
    }
}

/// Start the drain; while RabbitMQ calls the node quorum-critical, ask again until `patience`
/// runs out. Right after the previous node came back its quorum queue replicas may still be
/// catching up, which makes this node critical for a few seconds.
async fn drain_when_not_critical(
    client: &Client,
    out: &Output,
    drain: &BackendDrain<'_>,
    patience: Duration,
    poll: Duration,
) -> Result<Option<i64>, CtlError> {
    // Checked: `patience` comes from the command line; an unrepresentable end means never.
    let give_up = tokio::time::Instant::now().checked_add(patience);
    let mut said = false;
    loop {
        match start_drain(client, out, drain).await {
            Err(e) if e.is_quorum_critical() => {
                if give_up.is_some_and(|at| tokio::time::Instant::now() >= at) {
                    return Err(e);
                }
                if !said {
                    out.say(&format!(
                        "{} is quorum-critical for now; asking again until it is not (up to {})",
                        drain.name,
                        humantime::format_duration(patience)
                    ));
                    said = true;
                }
                tokio::time::sleep(poll.max(Duration::from_secs(1))).await;
            }
            other => return other,
        }
    }
}

async fn fetch_status(client: &Client) -> Result<Status, CtlError> {
    decode::<Status>(client.get_json("/v1/status", "status").await?, "status")
}

fn pool_status<'s>(status: &'s Status, pool: &str) -> Result<&'s PoolStatus, CtlError> {
    status.pools.iter().find(|p| p.name == pool).ok_or_else(|| {
        CtlError::GaveUp(format!(
            "no pool {pool} (pools: {})",
            status
                .pools
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })
}

/// Why the pool is not ready for `name` to go down: every other backend must be up and active.
/// `name` itself must be up and active too, unless the walk resumes at it (a stopped walk left
/// it drained, and possibly down).
fn pool_problems(pool: &PoolStatus, name: &str, resuming: bool) -> Vec<String> {
    let mut problems = Vec::new();
    for b in &pool.backends {
        if b.name == name && resuming {
            continue;
        }
        if b.health != Health::Up {
            problems.push(format!("{} is {}", b.name, describe_health(b)));
        }
        if b.admin != AdminState::Active {
            problems.push(format!("{} is {}", b.name, b.admin));
        }
    }
    problems
}

fn describe_health(b: &BackendStatus) -> String {
    match &b.last_probe {
        Some(p) if !p.up && !p.reason.is_empty() => {
            format!("{} (last probe: {})", b.health, p.reason)
        }
        _ => b.health.to_string(),
    }
}

/// Wait until `name` is up and has passed `rise` probes in a row, all run after the probe
/// count `probes_before` (a node that came back before any probe noticed it was gone must
/// still prove itself `rise` times).
async fn wait_probes_pass(
    client: &Client,
    out: &Output,
    plan: &Plan,
    name: &str,
    probes_before: u64,
    poll: Duration,
) -> Result<(), String> {
    let mut last_line = String::new();
    let mut last_seen = String::from("no answer yet");
    let waiting = async {
        loop {
            let status = fetch_status(client).await.map_err(|e| e.to_string())?;
            let rise = pool_status(&status, &plan.pool)
                .map_err(|e| e.to_string())?
                .rise
                .unwrap_or(1)
                .max(1);
            let b = find_backend(&status, &plan.pool, name).map_err(|e| e.to_string())?;
            let fresh = b.probes_run.saturating_sub(probes_before);
            let passed = u64::from(b.probes_ok_in_a_row).min(fresh);
            if b.health == Health::Up && passed >= u64::from(rise) {
                out.say(&format!(
                    "{name}: up, {passed} probe(s) in a row passed since the command (rise = {rise})"
                ));
                return Ok(());
            }
            let mut line = format!("{name}: health {}, {passed}/{rise} probes passed", b.health);
            if let Some(p) = b.last_probe.as_ref().filter(|p| !p.up) {
                let _ = write!(line, " (last probe: {})", p.reason);
            }
            if line != last_line {
                out.say(&line);
                last_seen.clone_from(&line);
                last_line = line;
            }
            tokio::time::sleep(poll).await;
        }
    };
    match tokio::time::timeout(plan.healthy_timeout, waiting).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "not healthy after {} ({last_seen})",
            humantime::format_duration(plan.healthy_timeout)
        )),
    }
}

/// `plan.run` with the backend's placeholders replaced by shell-quoted values.
fn render_command(template: &str, backend: &BackendStatus) -> String {
    let (host, port) = match backend.addr.rsplit_once(':') {
        Some((host, port)) => (host.trim_matches(['[', ']']), port),
        None => (backend.addr.as_str(), ""),
    };
    template
        .replace("{name}", &shell_quote(&backend.name))
        .replace("{addr}", &shell_quote(&backend.addr))
        .replace("{host}", &shell_quote(host))
        .replace("{port}", &shell_quote(port))
}

/// A word the shell reads back as `value`: as is when it is plainly safe, else single-quoted.
fn shell_quote(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:@/+=,%".contains(c));
    if plain {
        value.to_string()
    } else {
        format!("'{}'", value.replace('\'', r"'\''"))
    }
}

/// Run the operator's command with the shell, its output passed through; an error says how it
/// ended. At the timeout the command's whole process group is killed.
async fn run_command(command: &str, timeout: Duration) -> Result<(), String> {
    let mut cmd = shell(command);
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    #[cfg(unix)]
    cmd.process_group(0);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start the command: {e}"))?;
    let pid = child.id();
    // The command runs in its own process group (so a timeout can kill all of it), which also
    // keeps the terminal's Ctrl-C from reaching it: pass an interrupt on, then stop the walk.
    let ended = tokio::select! {
        ended = tokio::time::timeout(timeout, child.wait()) => ended,
        _ = tokio::signal::ctrl_c() => {
            kill_group(pid);
            let _ = child.kill().await;
            return Err("interrupted (Ctrl-C): the command was killed".to_string());
        }
    };
    match ended {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!("the command failed: {status}")),
        Ok(Err(e)) => Err(format!("waiting for the command failed: {e}")),
        Err(_) => {
            kill_group(pid);
            let _ = child.kill().await;
            Err(format!(
                "the command did not finish within {} and was killed",
                humantime::format_duration(timeout)
            ))
        }
    }
}

#[cfg(unix)]
fn shell(command: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c").arg(command);
    cmd
}

#[cfg(windows)]
fn shell(command: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("cmd.exe");
    cmd.arg("/C").arg(command);
    cmd
}

#[cfg(unix)]
fn kill_group(pid: Option<u32>) {
    if let Some(pgid) = pid.and_then(|p| i32::try_from(p).ok()) {
        let _ =
            nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), nix::sys::signal::SIGKILL);
    }
}

#[cfg(not(unix))]
fn kill_group(_pid: Option<u32>) {}

/// Where the walk stopped, what state it left, and the commands that continue it.
fn stopped_message(
    plan: &Plan,
    name: &str,
    step: Step,
    reason: &str,
    done: &[String],
    not_started: &[String],
) -> String {
    let pool = &plan.pool;
    let mut msg = format!(
        "upgrade of pool {pool} stopped at {name}, step {}/{STEPS} ({}): {reason}",
        step.number(),
        step.describe()
    );
    let left = match step {
        Step::CheckPool => format!("{name} was not touched"),
        Step::Drain if reason.contains("HTTP 409") => format!("{name} was not drained"),
        Step::Drain => format!("{name} is draining or drained"),
        Step::RunCommand | Step::WaitHealthy | Step::Undrain => {
            format!("{name} is left drained")
        }
    };
    let _ = write!(msg, "\n  state: {left}");
    if !done.is_empty() {
        let _ = write!(msg, "; upgraded: {}", done.join(", "));
    }
    if !not_started.is_empty() {
        let _ = write!(msg, "; not started: {}", not_started.join(", "));
    }
    let mut again = format!(
        "warren ctl upgrade --pool {} --run {} --deadline {} --from {}",
        shell_quote(pool),
        shell_quote(&plan.run),
        shell_quote(&plan.deadline.text),
        shell_quote(name)
    );
    if plan.force {
        again.push_str(" --force");
    }
    let _ = write!(
        msg,
        "\n  to continue once {name} is fixed, run the same command (same --admin, --token-file \
         and timeouts) with --from {name}: {again}"
    );
    if matches!(step, Step::RunCommand | Step::WaitHealthy | Step::Undrain) {
        let _ = write!(
            msg,
            "\n  to put {name} back into service as it is: warren ctl undrain {} --pool {} --wait-healthy",
            shell_quote(name),
            shell_quote(pool)
        );
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(name: &str, health: &str, admin: &str) -> BackendStatus {
        BackendStatus {
            name: name.into(),
            addr: "127.0.1.1:5672".into(),
            backup: false,
            connecting: 0,
            // The wire names, as the server sends them.
            health: serde_json::from_value(serde_json::json!(health)).unwrap(),
            admin: serde_json::from_value(serde_json::json!(admin)).unwrap(),
            available: admin == "active" && health != "down",
            active_connections: 0,
            drain_deadline: None,
            health_changed_at: None,
            health_reason: None,
            host_name: None,
            tags: Vec::new(),
            last_probe: None,
            local_change: None,
            probes_run: 0,
            probes_ok_in_a_row: 0,
            slow_start_percent: None,
            weight: 1,
        }
    }

    fn pool(backends: Vec<BackendStatus>) -> PoolStatus {
        PoolStatus {
            name: "rabbitmq".into(),
            balance: "round_robin".into(),
            health_check: Some(crate::api::ProbeKind::Http),
            min_available: 1,
            available: 0,
            total: backends.len(),
            rise: Some(2),
            fall: Some(2),
            on_down: None,
            rebalance: None,
            slow_start: None,
            backends,
        }
    }

    fn plan() -> Plan {
        Plan {
            pool: "rabbitmq".into(),
            run: "ssh {host} 'sudo apt-get install -y rabbitmq-server'".into(),
            deadline: super::super::parse_deadline("1m").unwrap(),
            force: false,
            from: None,
            command_timeout: Duration::from_secs(60),
            healthy_timeout: Duration::from_secs(60),
        }
    }

    #[test]
    fn the_pool_must_be_up_and_active_except_a_resumed_backend() {
        // (backends as (name, health, admin), resuming at a, problems found)
        type Case<'a> = (&'a [(&'a str, &'a str, &'a str)], bool, &'a [&'a str]);
        let cases: &[Case] = &[
            (&[("a", "up", "active"), ("b", "up", "active")], false, &[]),
            (
                &[("a", "up", "active"), ("b", "down", "active")],
                false,
                &["b is down"],
            ),
            (
                &[("a", "up", "active"), ("b", "up", "drained")],
                false,
                &["b is drained"],
            ),
            (
                &[("a", "unknown", "draining"), ("b", "up", "active")],
                false,
                &["a is unknown", "a is draining"],
            ),
            // Resuming at a: a stopped walk left it drained and down; the others must be fine.
            (
                &[("a", "down", "drained"), ("b", "up", "active")],
                true,
                &[],
            ),
            (
                &[("a", "down", "drained"), ("b", "down", "active")],
                true,
                &["b is down"],
            ),
        ];
        for (backends, resuming, want) in cases {
            let p = pool(backends.iter().map(|(n, h, a)| backend(n, h, a)).collect());
            assert_eq!(pool_problems(&p, "a", *resuming), *want, "{backends:?}");
        }
    }

    #[test]
    fn placeholders_are_replaced_and_quoted() {
        let mut b = backend("rabbit-1", "up", "active");
        assert_eq!(
            render_command("upgrade.sh {name} {addr} {host} {port}", &b),
            "upgrade.sh rabbit-1 127.0.1.1:5672 127.0.1.1 5672"
        );
        b.name = "it's odd".into();
        b.addr = "[::1]:5672".into();
        assert_eq!(
            render_command("x {name} {host}", &b),
            r"x 'it'\''s odd' ::1"
        );
    }

    /// A warren on loopback with three TCP-probed backends a, b, c (listeners of this test)
    /// and its admin API; stopped when the token is cancelled.
    async fn walkable_warren() -> (
        std::net::SocketAddr,
        Vec<tokio::net::TcpListener>,
        tokio_util::sync::CancellationToken,
    ) {
        let mut backends = Vec::new();
        // The config wants fixed ports: take free ones (bound, then released).
        // Both held while their addresses are read: released one by one, the kernel may hand
        // out the same port twice (the admin API then takes the listener's address).
        let held: Vec<std::net::TcpListener> = (0..2)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let mut ports = held.iter().map(|l| l.local_addr().unwrap());
        let mut free = || ports.next().unwrap();
        let mut text = format!(
            "[admin]\nlisten = \"{}\"\n\n[[listener]]\nname = \"amqp\"\nlisten = \"{}\"\n\
             pool = \"rabbitmq\"\n\n[pool.rabbitmq.health]\nkind = \"tcp\"\ninterval = \"50ms\"\n\
             timeout = \"500ms\"\nrise = 1\nfall = 1\n\n",
            free(),
            free()
        );
        drop(held);
        for name in ["a", "b", "c"] {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            text += &format!("[[pool.rabbitmq.backend]]\nname = \"{name}\"\naddr = \"{addr}\"\n\n");
            backends.push(l);
        }
        let config =
            crate::config::from_toml_offline(&text, std::path::Path::new("walk.toml")).unwrap();
        let server = crate::Server::bind(&config, crate::Options::default()).unwrap();
        let admin = server.admin_addr().unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(server.run(stop.clone()));
        (admin, backends, stop)
    }

    /// Run `upgrade` against `admin` once every backend is up; its error message.
    async fn walk_until_it_stops(admin: std::net::SocketAddr, plan: &Plan) -> String {
        let client = Client::new(&format!("http://{admin}"), None).unwrap();
        let all_up = async {
            loop {
                let status = fetch_status(&client).await.unwrap();
                let pool = pool_status(&status, "rabbitmq").unwrap();
                if pool.backends.iter().all(|b| b.health == Health::Up) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), all_up)
            .await
            .expect("a, b and c up within 10 s");
        let out = Output::new(false, None);
        let clients = [client];
        let walk = upgrade(&clients, &out, plan, Duration::from_millis(20));
        match tokio::time::timeout(Duration::from_secs(30), walk)
            .await
            .expect("the walk ends within 30 s")
        {
            Err(CtlError::GaveUp(msg)) => msg,
            other => panic!("the walk should stop at b: {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stopped_walk_says_where_and_how_to_continue() {
        let (admin, _backends, stop) = walkable_warren().await;
        // The command fails on b only: the walk upgrades a, stops at b's step 3, leaves c.
        let mut walk = Plan {
            run: "test {name} != b".into(),
            force: true,
            ..plan()
        };
        let msg = walk_until_it_stops(admin, &walk).await;
        assert!(
            msg.starts_with(
                "upgrade of pool rabbitmq stopped at b, step 3/5 (run the upgrade command): \
                 the command failed: exit status: 1"
            ),
            "{msg}"
        );
        assert!(
            msg.contains("state: b is left drained; upgraded: a; not started: c"),
            "{msg}"
        );
        // The same command again, from b, keeping --force.
        assert!(
            msg.contains(
                "with --from b: warren ctl upgrade --pool rabbitmq --run 'test {name} != b' \
                 --deadline 1m --from b --force"
            ),
            "{msg}"
        );
        assert!(
            msg.contains("warren ctl undrain b --pool rabbitmq --wait-healthy"),
            "{msg}"
        );

        // Resumed from b (after an undrain, as the message says), it starts at b: nothing
        // upgraded in this walk, c still to do; without --force none is suggested.
        let client = Client::new(&format!("http://{admin}"), None).unwrap();
        let how = Undrain {
            rebalance: true,
            local: false,
        };
        undrain_backend(&client, &Output::new(false, None), "rabbitmq", "b", how)
            .await
            .unwrap();
        walk.from = Some("b".into());
        walk.force = false;
        let msg = walk_until_it_stops(admin, &walk).await;
        assert!(msg.contains("stopped at b, step 3/5"), "{msg}");
        assert!(
            msg.contains("state: b is left drained; not started: c"),
            "{msg}"
        );
        assert!(!msg.contains("upgraded:"), "{msg}");
        assert!(msg.contains("--deadline 1m --from b\n"), "{msg}");
        stop.cancel();

        let refused = stopped_message(
            &plan(),
            "rabbit-1",
            Step::Drain,
            "drain of rabbit-1 (pool rabbitmq) refused (HTTP 409): rabbit-1 is quorum-critical",
            &[],
            &["rabbit-2".into()],
        );
        assert!(refused.contains("state: rabbit-1 was not drained; not started: rabbit-2"));
        assert!(!refused.contains("undrain"));
    }

    #[tokio::test]
    async fn the_command_reports_how_it_ended() {
        assert_eq!(run_command("true", Duration::from_secs(10)).await, Ok(()));
        let failed = run_command("exit 3", Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(failed.contains("exit status: 3"), "{failed}");
        let started = std::time::Instant::now();
        let killed = run_command("sleep 30 & sleep 30", Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(killed.contains("did not finish within 200ms"), "{killed}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
