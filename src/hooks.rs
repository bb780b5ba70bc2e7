//! Operator hooks: runs the `[[hook]]`s of the config (an `exec` argv or a `webhook` POST) when
//! the health controller reports an [`Event`], off the data path. Each hook has one worker task
//! and a small bounded queue; [`Hooks::emit`] only pushes onto those queues, so a failing or
//! hanging hook never delays probes or traffic. This module must not touch routing, health or the
//! data plane's sockets.
//!
//! What a hook sees:
//! - **exec**: the argv from the config, run without a shell, stdin `/dev/null`, the working
//!   directory of warren, and a clean environment holding exactly [`HOOK_PATH`] as `PATH` and
//!   `WARREN_EVENT`, `WARREN_POOL`, `WARREN_BACKEND`, `WARREN_BACKEND_ADDR`,
//!   `WARREN_ADMIN_STATE` (the three empty for pool events), `WARREN_AVAILABLE`, `WARREN_TOTAL`,
//!   `WARREN_PLANNED` (`true` | `false`, see [`Event::planned`]). The hook is the leader of its own process
//!   group; at its `timeout` the whole group is killed with SIGKILL and the hook is reaped. A run
//!   ends when the hook's process exits: processes it leaves running are not waited for and their
//!   later output is not read (start daemons with `setsid cmd >/dev/null 2>&1 &`).
//! - **webhook**: `POST` of
//!   `{"event","pool","backend","backend_addr","available","total","admin_state","planned"}` as
//!   JSON (`backend`, `backend_addr` and `admin_state` are `null` for pool events), under the hook's `timeout`,
//!   through [`crate::http_client`] (the URL's `user:pass@` as basic authentication).
//!
//! The admin token is never passed to a hook nor logged: [`Event`] does not carry it and the exec
//! environment is built from nothing but an [`Event`].
//!
//! Per hook, runs are strictly sequential. Events that arrive during a run wait in a queue of
//! [`QUEUE_CAPACITY`]; an event with the same (kind, pool, backend) as a queued one replaces it
//! and moves to the back, so a flapping backend does not build a backlog and the last queued
//! event about a backend is always the newest. A full queue drops its oldest event.
//! Every run is logged (exit status, first lines of output) and counted in
//! `hook_runs_total{event,result}` with result `ok | failed | timeout | dropped`, a family this
//! module owns ([`HookMetrics`]).

use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hyper::Method;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::instrument::WithSubscriber;

use crate::api::AdminState;
use crate::config::{HookAction, HookConfig, HookEvent};
use crate::http_client::{BodyRead, HttpError, HttpUrl, Request};
use crate::metrics;

/// Events waiting per hook while it runs; beyond this the oldest is dropped.
pub const QUEUE_CAPACITY: usize = 64;

/// `PATH` of an exec hook: the usual system directories, nothing inherited from warren.
pub const HOOK_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Bytes of stdout and of stderr kept per run; the rest is read and discarded so the hook never
/// blocks on a full pipe.
const OUTPUT_KEPT: usize = 4096;
/// Lines of stdout and of stderr that go into the run's log line.
const LOG_LINES: usize = 5;
/// Characters kept of each logged output line.
const LOG_LINE_CHARS: usize = 200;
/// Bytes of a failed webhook's response body that go into the log line.
const WEBHOOK_BODY_LOGGED: usize = 200;
/// How long output is still read once the hook's process is gone: what it wrote is already in
/// the pipe, so only processes it left behind (still holding the pipe) can make us wait.
const OUTPUT_GRACE: Duration = Duration::from_millis(250);
/// Bound on reaping a hook after SIGKILL (a process stuck in the kernel cannot die at once);
/// past it Tokio reaps the child in the background.
const REAP_WAIT: Duration = Duration::from_secs(5);

/// One thing that happened, as hooks see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// What happened.
    pub kind: HookEvent,
    /// The pool it happened in.
    pub pool: String,
    /// The backend, for backend and drain events; `None` for pool events.
    pub backend: Option<String>,
    /// The backend's address (`host:port` as configured), with `backend`.
    pub backend_addr: Option<String>,
    /// Available backends in the pool after the change.
    pub available: usize,
    /// Backends in the pool.
    pub total: usize,
    /// The backend's admin state after the change, for backend and drain events.
    pub admin_state: Option<AdminState>,
    /// Planned work, not an outage: the event comes from a drain or an undrain, or it is about
    /// a backend an operator took out (draining or drained). Example hooks do not page on it.
    pub planned: bool,
}

impl Event {
    /// True when `other` is the same kind of event about the same pool and backend, i.e. one of
    /// the two is redundant in a queue.
    fn same_subject(&self, other: &Event) -> bool {
        self.kind == other.kind && self.pool == other.pool && self.backend == other.backend
    }

    /// The `WARREN_*` variables of an exec hook (`PATH` is added separately).
    fn env(&self) -> [(&'static str, String); 8] {
        [
            ("WARREN_EVENT", self.kind.as_str().to_string()),
            ("WARREN_POOL", self.pool.clone()),
            ("WARREN_BACKEND", self.backend.clone().unwrap_or_default()),
            (
                "WARREN_BACKEND_ADDR",
                self.backend_addr.clone().unwrap_or_default(),
            ),
            ("WARREN_AVAILABLE", self.available.to_string()),
            ("WARREN_TOTAL", self.total.to_string()),
            (
                "WARREN_ADMIN_STATE",
                self.admin_state
                    .map_or_else(String::new, |a| a.as_str().to_string()),
            ),
            ("WARREN_PLANNED", self.planned.to_string()),
        ]
    }

    /// The webhook's JSON body, fields in the documented order.
    fn json(&self) -> String {
        #[derive(serde::Serialize)]
        struct Body<'a> {
            event: &'static str,
            pool: &'a str,
            backend: Option<&'a str>,
            backend_addr: Option<&'a str>,
            available: usize,
            total: usize,
            admin_state: Option<AdminState>,
            planned: bool,
        }
        serde_json::to_string(&Body {
            event: self.kind.as_str(),
            pool: &self.pool,
            backend: self.backend.as_deref(),
            backend_addr: self.backend_addr.as_deref(),
            available: self.available,
            total: self.total,
            admin_state: self.admin_state,
            planned: self.planned,
        })
        .expect("a struct of strings and numbers serializes")
    }
}

/// `hook_runs_total`, registered once per process; a series appears with its first count.
/// Cheap to clone.
#[derive(Clone)]
pub struct HookMetrics {
    runs_total: prometheus::IntCounterVec,
}

impl HookMetrics {
    /// Register `hook_runs_total` into `registry` (once per process).
    pub fn register(registry: &prometheus::Registry) -> HookMetrics {
        HookMetrics {
            runs_total: metrics::counter_vec(
                registry,
                "hook_runs_total",
                "Hook runs (ok | failed | timeout)",
                &["event", "result"],
            ),
        }
    }

    /// A run for `event` ended with `outcome`.
    fn ran(&self, event: HookEvent, outcome: RunOutcome) {
        self.count(event, outcome.as_str());
    }

    /// An event for `event` was dropped from a full queue without running (result `dropped`).
    fn dropped(&self, event: HookEvent) {
        self.count(event, "dropped");
    }

    /// `result` is [`RunOutcome::as_str`] or `dropped`, from the two methods above only.
    fn count(&self, event: HookEvent, result: &'static str) {
        self.runs_total
            .with_label_values(&[event.as_str(), result])
            .inc();
    }
}

/// Runs the configured hooks; cheap to clone.
#[derive(Clone)]
pub struct Hooks {
    inner: Arc<Inner>,
}

struct Inner {
    /// In config order. A reload shares the hooks whose config did not change with the new
    /// set, so their worker, run in progress and queue carry on.
    hooks: Vec<Arc<Hook>>,
    metrics: HookMetrics,
}

/// One configured hook: its config, its queue and its worker.
struct Hook {
    config: HookConfig,
    /// Shared with the hook's worker, which is the only consumer.
    slot: Arc<Slot>,
    /// Taken by whoever stops the hook (shutdown, or the hook that replaces it) to wait for
    /// the run in progress.
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl Hook {
    /// Start a hook's worker on the current runtime with `queued` events waiting; it begins
    /// only once `after` (the worker of the hook it replaces) has ended, so an old and a new
    /// version of one hook never run at once.
    fn start(
        config: &HookConfig,
        queued: VecDeque<Event>,
        after: Option<JoinHandle<()>>,
        metrics: &HookMetrics,
    ) -> Arc<Hook> {
        let slot = Arc::new(Slot {
            queue: Mutex::new(Queue {
                events: queued,
                closed: false,
            }),
            wake: Notify::new(),
        });
        let worker = Worker {
            action: Action::new(&config.action),
            timeout: config.timeout,
            slot: slot.clone(),
            metrics: metrics.clone(),
            after,
        };
        // The workers log through the subscriber of whoever started them (the process's
        // global one in production, a capturing one in tests).
        let handle = tokio::spawn(worker.run().with_current_subscriber());
        Arc::new(Hook {
            config: config.clone(),
            slot,
            worker: Mutex::new(Some(handle)),
        })
    }

    /// Close the queue (the worker ends after its run in progress); returns what was queued.
    fn close(&self) -> VecDeque<Event> {
        let events = {
            let mut queue = self.slot.lock();
            queue.closed = true;
            std::mem::take(&mut queue.events)
        };
        self.slot.wake.notify_one();
        events
    }

    fn take_worker(&self) -> Option<JoinHandle<()>> {
        self.worker
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }

    /// Close the hook, log what it discards, and wait for its run in progress.
    async fn stop(&self) {
        for event in self.close() {
            tracing::warn!(
                event = event.kind.as_str(),
                pool = %event.pool,
                backend = event.backend.as_deref(),
                "hook stopped; queued hook event discarded"
            );
        }
        if let Some(worker) = self.take_worker() {
            if let Err(e) = worker.await {
                tracing::error!(error = %e, "hook worker failed");
            }
        }
    }
}

/// What a reload does with one hook of the new config (pure; see [`plan_reload`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookPlan {
    /// Unchanged: old hook `i` keeps running with its queue.
    Keep(usize),
    /// Changed: replaces old hook `i`, taking over its queue after its run in progress.
    Replace(usize),
    /// New: nothing to carry over.
    Start,
}

/// Pair the hooks of a reloaded config with the running ones: equal configs are kept; a
/// changed hook replaces the old one with the same action (argv or URL), else the old one at
/// the same place among those left. Old hooks paired with nothing are retired.
pub fn plan_reload(old: &[HookConfig], new: &[HookConfig]) -> Vec<HookPlan> {
    let mut taken = vec![false; old.len()];
    let mut plan = vec![HookPlan::Start; new.len()];
    let mut pair = |plan: &mut Vec<HookPlan>,
                    matches: &dyn Fn(&HookConfig, &HookConfig) -> bool,
                    make: fn(usize) -> HookPlan| {
        for (n, new_hook) in new.iter().enumerate() {
            if plan[n] != HookPlan::Start {
                continue;
            }
            if let Some(o) = (0..old.len()).find(|&o| !taken[o] && matches(&old[o], new_hook)) {
                taken[o] = true;
                plan[n] = make(o);
            }
        }
    };
    pair(&mut plan, &|a, b| a == b, HookPlan::Keep);
    pair(&mut plan, &|a, b| a.action == b.action, HookPlan::Replace);
    pair(&mut plan, &|_, _| true, HookPlan::Replace);
    plan
}

impl Hooks {
    /// Start one worker task per configured hook on the current Tokio runtime.
    pub fn start(configs: &[HookConfig], metrics: HookMetrics) -> Hooks {
        let hooks = configs
            .iter()
            .map(|config| Hook::start(config, VecDeque::new(), None, &metrics))
            .collect();
        Hooks {
            inner: Arc::new(Inner { hooks, metrics }),
        }
    }

    /// The hooks of a reloaded config, built from these (see [`plan_reload`]): unchanged hooks
    /// keep running with their queue; a changed hook takes over the queue of the one it
    /// replaces (the events it still subscribes to) and starts once that one's run in
    /// progress ends. Returns the new set and a future that stops the hooks retired by the
    /// reload (their queues are discarded and logged).
    pub fn reload(
        &self,
        configs: &[HookConfig],
    ) -> (
        Hooks,
        impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let old = &self.inner.hooks;
        let old_configs: Vec<HookConfig> = old.iter().map(|h| h.config.clone()).collect();
        let plan = plan_reload(&old_configs, configs);
        let mut used = vec![false; old.len()];
        let hooks = configs
            .iter()
            .zip(&plan)
            .map(|(config, step)| match *step {
                HookPlan::Keep(o) => {
                    used[o] = true;
                    old[o].clone()
                }
                HookPlan::Replace(o) => {
                    used[o] = true;
                    let mut queued = old[o].close();
                    queued.retain(|e| config.on.contains(&e.kind));
                    if !queued.is_empty() {
                        tracing::info!(
                            hook = Action::new(&config.action).name(),
                            events = queued.len(),
                            "hook changed by the reload: its queued events carry over"
                        );
                    }
                    Hook::start(config, queued, old[o].take_worker(), &self.inner.metrics)
                }
                HookPlan::Start => Hook::start(config, VecDeque::new(), None, &self.inner.metrics),
            })
            .collect();
        let retired: Vec<Arc<Hook>> = old
            .iter()
            .zip(&used)
            .filter(|(_, used)| !**used)
            .map(|(h, _)| h.clone())
            .collect();
        let next = Hooks {
            inner: Arc::new(Inner {
                hooks,
                metrics: self.inner.metrics.clone(),
            }),
        };
        let stop_retired = async move {
            for hook in retired {
                hook.stop().await;
            }
        };
        (next, stop_retired)
    }
}

/// The queue between `emit` (many producers, never waiting) and one worker.
struct Slot {
    /// Held only to push or pop, never across an await or a run.
    queue: Mutex<Queue>,
    /// Wakes the worker; `notify_one` keeps a permit when the worker is busy, so no push is missed.
    wake: Notify,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Nothing panics while holding the lock; if it ever did, the queue is still consistent
        // and `emit` must not panic on the health controller's behalf.
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The next event to run, or `None` once the hook is shut down.
    async fn next(&self) -> Option<Event> {
        loop {
            {
                let mut queue = self.lock();
                if queue.closed {
                    return None;
                }
                if let Some(event) = queue.events.pop_front() {
                    return Some(event);
                }
            }
            self.wake.notified().await;
        }
    }
}

/// A hook's pending events. Pure: no I/O, no clock.
#[derive(Debug, Default)]
struct Queue {
    events: VecDeque<Event>,
    /// Set by shutdown: the worker stops and `emit` no longer queues.
    closed: bool,
}

impl Queue {
    /// Queues `event`, coalescing it with a queued event about the same subject; returns the
    /// event dropped to make room, if any.
    fn push(&mut self, event: Event) -> Option<Event> {
        // Moving the newer event to the back (rather than updating the old one in place) keeps
        // the queue's last word about each backend the newest: with down, up queued, a new down
        // gives up, down, not down, up.
        if let Some(i) = self.events.iter().position(|e| e.same_subject(&event)) {
            self.events.remove(i);
        }
        let dropped = if self.events.len() >= QUEUE_CAPACITY {
            self.events.pop_front()
        } else {
            None
        };
        self.events.push_back(event);
        dropped
    }
}

impl Hooks {
    /// Queue `event` for every hook subscribed to `event.kind`. Never blocks, never fails: a
    /// full queue drops the oldest queued event for that hook (logged at warn, counted as
    /// `hook_runs_total{event, result="dropped"}`).
    pub fn emit(&self, event: Event) {
        for hook in self
            .inner
            .hooks
            .iter()
            .filter(|h| h.config.on.contains(&event.kind))
        {
            let dropped = {
                let mut queue = hook.slot.lock();
                if queue.closed {
                    tracing::debug!(
                        event = event.kind.as_str(),
                        pool = %event.pool,
                        "hooks are shut down; event not queued"
                    );
                    continue;
                }
                queue.push(event.clone())
            };
            hook.slot.wake.notify_one();
            if let Some(old) = dropped {
                self.inner.metrics.dropped(old.kind);
                tracing::warn!(
                    event = old.kind.as_str(),
                    pool = %old.pool,
                    backend = old.backend.as_deref(),
                    capacity = QUEUE_CAPACITY,
                    "hook queue full; dropped its oldest event"
                );
            }
        }
    }

    /// Stop the workers after the run in progress (if any) finishes or is killed; used on
    /// shutdown (bounded wait: at most the longest hook timeout, plus reaping a killed hook).
    /// Events still queued are discarded and logged.
    pub async fn shutdown(self) {
        for hook in &self.inner.hooks {
            hook.stop().await;
        }
    }
}

/// How a run ended; the `result` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunOutcome {
    Ok,
    Failed,
    Timeout,
}

impl RunOutcome {
    fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Ok => "ok",
            RunOutcome::Failed => "failed",
            RunOutcome::Timeout => "timeout",
        }
    }
}

/// What one run produced, for the log line and the metric.
#[derive(Debug)]
struct Report {
    outcome: RunOutcome,
    /// `exit 0`, `signal 9`, `HTTP 500`; `None` when the hook never got that far.
    status: Option<String>,
    /// First lines of stdout (exec) or of the response body (webhook).
    stdout: Option<String>,
    stderr: Option<String>,
    /// Why the run failed or ended early, in words.
    error: Option<String>,
}

impl Report {
    fn error(outcome: RunOutcome, error: impl ToString) -> Report {
        Report {
            outcome,
            status: None,
            stdout: None,
            stderr: None,
            error: Some(error.to_string()),
        }
    }
}

/// A hook's action, with the name it has in logs.
enum Action {
    Exec(Vec<String>),
    /// The URL (parsed at config load) and its name without user info or query.
    Webhook(HttpUrl, String),
}

impl Action {
    fn new(action: &HookAction) -> Action {
        match action {
            HookAction::Exec(argv) => Action::Exec(argv.clone()),
            HookAction::Webhook(url) => Action::Webhook(url.clone(), url.to_string()),
        }
    }

    /// How the hook is named in logs: argv[0] or the URL.
    fn name(&self) -> &str {
        match self {
            Action::Exec(argv) => argv.first().map(String::as_str).unwrap_or(""),
            Action::Webhook(_, name) => name,
        }
    }
}

/// One hook's worker: takes events off its queue and runs them one at a time.
struct Worker {
    action: Action,
    timeout: Duration,
    slot: Arc<Slot>,
    metrics: HookMetrics,
    /// The worker of the hook this one replaces: waited for before the first run.
    after: Option<JoinHandle<()>>,
}

impl Worker {
    async fn run(mut self) {
        if let Some(previous) = self.after.take() {
            let _ = previous.await;
        }
        while let Some(event) = self.slot.next().await {
            let started = Instant::now();
            let report = match &self.action {
                Action::Exec(argv) => run_exec(argv, &event, self.timeout).await,
                Action::Webhook(url, _) => run_webhook(url, &event, self.timeout).await,
            };
            let duration_ms = started.elapsed().as_millis() as u64;
            self.metrics.ran(event.kind, report.outcome);
            self.log(&event, &report, duration_ms);
        }
    }

    fn log(&self, event: &Event, report: &Report, duration_ms: u64) {
        macro_rules! log_run {
            ($level:ident, $message:literal) => {
                tracing::$level!(
                    hook = self.action.name(),
                    event = event.kind.as_str(),
                    pool = %event.pool,
                    backend = event.backend.as_deref(),
                    result = report.outcome.as_str(),
                    status = report.status.as_deref(),
                    duration_ms,
                    stdout = report.stdout.as_deref(),
                    stderr = report.stderr.as_deref(),
                    error = report.error.as_deref(),
                    $message
                )
            };
        }
        match report.outcome {
            RunOutcome::Ok => log_run!(info, "hook ran"),
            RunOutcome::Failed => log_run!(warn, "hook failed"),
            RunOutcome::Timeout => log_run!(warn, "hook timed out"),
        }
    }
}

/// Runs an exec hook for `event`, killing its process group at `timeout`.
async fn run_exec(argv: &[String], event: &Event, timeout: Duration) -> Report {
    // Checked: config bounds `timeout`, and an unrepresentable deadline must not panic either.
    let deadline = Instant::now()
        .checked_add(timeout)
        .unwrap_or_else(|| Instant::now() + crate::config::MAX_HOOK_TIMEOUT);
    let Some((program, args)) = argv.split_first() else {
        return Report::error(RunOutcome::Failed, "exec hook has no program");
    };
    let mut child = match exec_command(program, args, event).spawn() {
        Ok(child) => child,
        Err(e) => return Report::error(RunOutcome::Failed, format!("cannot run {program}: {e}")),
    };
    let pid = child.id();
    // Declared after `child`, so dropped before it: if this future is dropped mid-run (the
    // control runtime shutting down, retired hooks after a reload), the whole group dies, not
    // only the leader that `kill_on_drop` reaches.
    let mut group_guard = KillGroupOnDrop(pid);

    // Both pipes are read while the hook runs, or a chatty hook would block on a full pipe.
    let stop_reading = CancellationToken::new();
    let stdout = child
        .stdout
        .take()
        .map(|pipe| tokio::spawn(capture(pipe, stop_reading.clone())));
    let stderr = child
        .stderr
        .take()
        .map(|pipe| tokio::spawn(capture(pipe, stop_reading.clone())));

    let (outcome, status, mut error) = wait_or_kill(&mut child, pid, deadline, timeout).await;
    // Reaped, or its group killed: nothing of this run is ours to kill any more.
    group_guard.0 = None;

    // The hook is gone: what it wrote is in the pipes. Only processes it left behind, still
    // holding a pipe, keep the readers from seeing EOF; they get a short grace, then are ignored.
    let grace = {
        let stop = stop_reading.clone();
        tokio::spawn(async move {
            tokio::time::sleep(OUTPUT_GRACE).await;
            stop.cancel();
        })
    };
    let stdout = collect(stdout).await;
    let stderr = collect(stderr).await;
    grace.abort();
    if stop_reading.is_cancelled() {
        let note = "processes it left behind still hold its output; not waiting for them";
        error = Some(match error {
            Some(e) => format!("{e}; {note}"),
            None => note.to_string(),
        });
    }
    Report {
        outcome,
        status,
        stdout,
        stderr,
        error,
    }
}

/// The hook's command: `argv` with a clean environment (`PATH` and the event's variables),
/// its output piped, in a process group of its own so a timeout kills whatever it started too.
fn exec_command(program: &str, args: &[String], event: &Event) -> Command {
    let mut command = Command::new(program);
    command
        .args(args)
        .env_clear()
        .env("PATH", HOOK_PATH)
        .envs(event.env())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Only a safety net (it kills the leader alone): every path of `run_exec` reaps the
        // child.
        .kill_on_drop(true);
    #[cfg(unix)]
    command.process_group(0);
    command
}

/// Wait for the hook until `deadline`; past it (or when waiting fails) kill its process group
/// and reap it. The outcome, the exit status and why the run failed, if it did.
async fn wait_or_kill(
    child: &mut Child,
    pid: Option<u32>,
    deadline: Instant,
    timeout: Duration,
) -> (RunOutcome, Option<String>, Option<String>) {
    match tokio::time::timeout_at(deadline, child.wait()).await {
        Ok(Ok(status)) => {
            let outcome = if status.success() {
                RunOutcome::Ok
            } else {
                RunOutcome::Failed
            };
            (outcome, Some(describe(status)), None)
        }
        Ok(Err(e)) => {
            let status = kill_and_reap(child, pid).await;
            (
                RunOutcome::Failed,
                status,
                Some(format!("waiting for the hook failed: {e}")),
            )
        }
        Err(_) => {
            let status = kill_and_reap(child, pid).await;
            let error = format!(
                "still running after {}; killed its process group",
                humantime::format_duration(timeout)
            );
            (RunOutcome::Timeout, status, Some(error))
        }
    }
}

/// Reads `pipe` to EOF (or until `stop`), keeping the first [`OUTPUT_KEPT`] bytes.
async fn capture(mut pipe: impl AsyncRead + Unpin, stop: CancellationToken) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::select! {
            biased;
            read = pipe.read(&mut chunk) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            _ = stop.cancelled() => break,
        };
        let room = OUTPUT_KEPT - kept.len();
        kept.extend_from_slice(&chunk[..n.min(room)]);
    }
    kept
}

/// The summary of one captured stream, or `None` when the hook wrote nothing there.
async fn collect(reader: Option<JoinHandle<Vec<u8>>>) -> Option<String> {
    let bytes = reader?.await.unwrap_or_default();
    summarize(&String::from_utf8_lossy(&bytes))
}

/// The first [`LOG_LINES`] non-empty lines, each cut to [`LOG_LINE_CHARS`], joined by " | ".
fn summarize(output: &str) -> Option<String> {
    let mut lines = output.lines().map(str::trim).filter(|l| !l.is_empty());
    let mut kept: Vec<String> = lines
        .by_ref()
        .take(LOG_LINES)
        .map(|line| line.chars().take(LOG_LINE_CHARS).collect())
        .collect();
    if kept.is_empty() {
        return None;
    }
    if lines.next().is_some() {
        kept.push("…".to_string());
    }
    Some(kept.join(" | "))
}

/// `exit N` or `signal N`.
fn describe(status: std::process::ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return format!("signal {signal}");
        }
    }
    match status.code() {
        Some(code) => format!("exit {code}"),
        None => status.to_string(),
    }
}

/// Kills the hook and everything in its process group, then reaps the hook (bounded).
async fn kill_and_reap(child: &mut Child, pid: Option<u32>) -> Option<String> {
    kill_group(child, pid);
    match tokio::time::timeout(REAP_WAIT, child.wait()).await {
        Ok(Ok(status)) => Some(describe(status)),
        Ok(Err(e)) => {
            tracing::warn!(pid, error = %e, "could not reap a killed hook");
            None
        }
        Err(_) => {
            // Dropping the child hands it to Tokio's orphan reaper.
            tracing::warn!(
                pid,
                "a killed hook did not exit; it will be reaped in the background"
            );
            None
        }
    }
}

/// Kills the process group of a hook whose run was abandoned before it was reaped.
struct KillGroupOnDrop(Option<u32>);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(pgid) = self.0.and_then(|p| libc::pid_t::try_from(p).ok()) {
            // Not reaped yet (the guard is disarmed once it is), so the id is still this group's.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid),
                nix::sys::signal::SIGKILL,
            );
        }
    }
}

#[cfg(unix)]
fn kill_group(child: &mut Child, pid: Option<u32>) {
    // `pid` is None only when the child was already reaped, and then its group cannot be ours
    // to kill any more.
    let Some(pgid) = pid.and_then(|p| libc::pid_t::try_from(p).ok()) else {
        return;
    };
    // The group id is the hook's pid, not yet reaped, so it cannot have been reused.
    match nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), nix::sys::signal::SIGKILL) {
        // ESRCH: the group is already gone, which is what we wanted.
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => {
            tracing::warn!(pgid, error = %e, "could not kill a hook's process group");
            let _ = child.start_kill();
        }
    }
}

#[cfg(not(unix))]
fn kill_group(child: &mut Child, _pid: Option<u32>) {
    if let Err(e) = child.start_kill() {
        tracing::warn!(error = %e, "could not kill a hook");
    }
}

/// Runs a webhook for `event`: one POST on a fresh connection, all within `timeout`.
async fn run_webhook(url: &HttpUrl, event: &Event, timeout: Duration) -> Report {
    let answer = Request::new(Method::POST, url)
        .json(event.json())
        // Only a failure's body is logged, and only its start.
        .read(BodyRead::FailurePrefix(WEBHOOK_BODY_LOGGED))
        .send_within(timeout)
        .await;
    match answer {
        Ok(response) => {
            let outcome = if response.status.is_success() {
                RunOutcome::Ok
            } else {
                RunOutcome::Failed
            };
            Report {
                outcome,
                status: Some(format!("HTTP {}", response.status.as_u16())),
                stdout: if outcome == RunOutcome::Ok {
                    None
                } else {
                    summarize(&String::from_utf8_lossy(&response.body))
                },
                stderr: None,
                error: None,
            }
        }
        Err(HttpError::Timeout { .. }) => Report::error(
            RunOutcome::Timeout,
            format!("no answer within {}", humantime::format_duration(timeout)),
        ),
        Err(e) => Report::error(RunOutcome::Failed, e),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reload_pairs_hooks_unchanged_then_by_action_then_in_order() {
        use HookPlan::*;
        let hook = |argv: &str, on: HookEvent, secs: u64| HookConfig {
            on: vec![on],
            action: HookAction::Exec(vec![argv.to_owned()]),
            timeout: Duration::from_secs(secs),
        };
        let (a, b, c) = (
            hook("a", HookEvent::BackendDown, 5),
            hook("b", HookEvent::PoolDown, 5),
            hook("c", HookEvent::PoolDown, 5),
        );
        let a_longer = hook("a", HookEvent::BackendDown, 60);
        let cases: Vec<(Vec<HookConfig>, Vec<HookConfig>, Vec<HookPlan>)> = vec![
            // Nothing changed.
            (
                vec![a.clone(), b.clone()],
                vec![a.clone(), b.clone()],
                vec![Keep(0), Keep(1)],
            ),
            // Reordered: still the same hooks.
            (
                vec![a.clone(), b.clone()],
                vec![b.clone(), a.clone()],
                vec![Keep(1), Keep(0)],
            ),
            // A hook inserted at the top: the others are kept, it starts fresh.
            (
                vec![a.clone()],
                vec![c.clone(), a.clone()],
                vec![Replace(0), Keep(0)][..0]
                    .iter()
                    .copied()
                    .chain([Start, Keep(0)])
                    .collect(),
            ),
            // A's timeout changed: same action, so it replaces A (not B).
            (
                vec![b.clone(), a.clone()],
                vec![a_longer.clone(), b.clone()],
                vec![Replace(1), Keep(0)],
            ),
            // B's command changed and nothing else matches it: replaces B by order.
            (
                vec![a.clone(), b.clone()],
                vec![a.clone(), c.clone()],
                vec![Keep(0), Replace(1)],
            ),
            // One hook removed, one added.
            (vec![a.clone(), b.clone()], vec![b.clone()], vec![Keep(1)]),
            (vec![], vec![a.clone()], vec![Start]),
        ];
        for (old, new, expected) in cases {
            assert_eq!(plan_reload(&old, &new), expected, "{old:?} -> {new:?}");
        }
    }

    use super::*;

    fn event(kind: HookEvent, backend: Option<&str>, available: usize) -> Event {
        Event {
            kind,
            pool: "rabbitmq".to_string(),
            backend: backend.map(str::to_string),
            backend_addr: backend.map(|_| "10.0.0.1:5672".to_string()),
            available,
            total: 2,
            admin_state: backend.map(|_| AdminState::Active),
            planned: false,
        }
    }

    fn kinds_and_available(queue: &Queue) -> Vec<(HookEvent, Option<&str>, usize)> {
        queue
            .events
            .iter()
            .map(|e| (e.kind, e.backend.as_deref(), e.available))
            .collect()
    }

    #[test]
    fn identical_events_coalesce_newest_wins() {
        let mut queue = Queue::default();
        for available in 1..=10 {
            assert_eq!(
                queue.push(event(HookEvent::BackendDown, Some("a"), available)),
                None
            );
        }
        queue.push(event(HookEvent::BackendUp, Some("a"), 2));
        assert_eq!(
            kinds_and_available(&queue),
            vec![
                (HookEvent::BackendDown, Some("a"), 10),
                (HookEvent::BackendUp, Some("a"), 2)
            ]
        );
    }

    #[test]
    fn flapping_keeps_the_newest_state_last() {
        use HookEvent::{BackendDown, BackendUp};
        let mut queue = Queue::default();
        for (kind, available) in [(BackendDown, 1), (BackendUp, 2), (BackendDown, 1)] {
            queue.push(event(kind, Some("a"), available));
        }
        assert_eq!(
            kinds_and_available(&queue),
            vec![(BackendUp, Some("a"), 2), (BackendDown, Some("a"), 1)]
        );
    }

    #[test]
    fn different_subjects_do_not_coalesce() {
        let mut queue = Queue::default();
        queue.push(event(HookEvent::BackendDown, Some("a"), 1));
        queue.push(event(HookEvent::BackendDown, Some("b"), 0));
        queue.push(event(HookEvent::PoolDown, None, 0));
        let mut other_pool = event(HookEvent::PoolDown, None, 0);
        other_pool.pool = "other".to_string();
        queue.push(other_pool);
        assert_eq!(queue.events.len(), 4);
    }

    #[test]
    fn full_queue_drops_the_oldest() {
        let mut queue = Queue::default();
        let mut dropped = Vec::new();
        for i in 0..QUEUE_CAPACITY + 3 {
            let name = format!("b{i}");
            dropped.extend(queue.push(event(HookEvent::BackendDown, Some(&name), i)));
        }
        assert_eq!(queue.events.len(), QUEUE_CAPACITY);
        let dropped: Vec<_> = dropped.iter().map(|e| e.available).collect();
        assert_eq!(dropped, vec![0, 1, 2]);
        assert_eq!(queue.events.front().map(|e| e.available), Some(3));
    }

    #[test]
    fn exec_environment_and_webhook_body() {
        let backend = event(HookEvent::BackendDown, Some("rabbit-a"), 1);
        assert_eq!(
            backend.json(),
            r#"{"event":"backend_down","pool":"rabbitmq","backend":"rabbit-a","backend_addr":"10.0.0.1:5672","available":1,"total":2,"admin_state":"active","planned":false}"#
        );
        let drained = Event {
            admin_state: Some(AdminState::Drained),
            planned: true,
            ..backend.clone()
        };
        assert_eq!(
            drained.json(),
            r#"{"event":"backend_down","pool":"rabbitmq","backend":"rabbit-a","backend_addr":"10.0.0.1:5672","available":1,"total":2,"admin_state":"drained","planned":true}"#
        );
        let env: Vec<(&str, String)> = drained.env().into_iter().collect();
        assert_eq!(
            env[6..],
            [
                ("WARREN_ADMIN_STATE", "drained".to_string()),
                ("WARREN_PLANNED", "true".to_string()),
            ]
        );
        let pool = event(HookEvent::PoolFailover, None, 0);
        assert_eq!(
            pool.json(),
            r#"{"event":"pool_failover","pool":"rabbitmq","backend":null,"backend_addr":null,"available":0,"total":2,"admin_state":null,"planned":false}"#
        );
        let env: Vec<(&str, String)> = pool.env().into_iter().collect();
        assert_eq!(
            env,
            vec![
                ("WARREN_EVENT", "pool_failover".to_string()),
                ("WARREN_POOL", "rabbitmq".to_string()),
                ("WARREN_BACKEND", String::new()),
                ("WARREN_BACKEND_ADDR", String::new()),
                ("WARREN_AVAILABLE", "0".to_string()),
                ("WARREN_TOTAL", "2".to_string()),
                ("WARREN_ADMIN_STATE", String::new()),
                ("WARREN_PLANNED", "false".to_string()),
            ]
        );
    }

    #[test]
    fn output_summary() {
        assert_eq!(summarize(""), None);
        assert_eq!(summarize("\n  \n"), None);
        assert_eq!(summarize("one\n\ntwo  \n").as_deref(), Some("one | two"));
        let many = "1\n2\n3\n4\n5\n6\n";
        assert_eq!(summarize(many).as_deref(), Some("1 | 2 | 3 | 4 | 5 | …"));
        let long = "x".repeat(500);
        assert_eq!(
            summarize(&long).map(|s| s.chars().count()),
            Some(LOG_LINE_CHARS)
        );
    }
}
