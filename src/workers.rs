//! The data plane's workers: one thread per worker, each with its own current-thread Tokio
//! runtime (its own epoll, timers and run queue), as NGINX runs one event loop per worker process.
//! A connection lives its whole life on the worker that accepted it, so no wake-up crosses a
//! thread. On Linux every worker accepts on its own `SO_REUSEPORT` socket and the kernel spreads
//! new connections over them; elsewhere worker 0 accepts and hands connections out in turn
//! (see [`crate::proxy::serve`]). Nothing here knows about listeners or connections.

use std::io;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

/// How often an idle worker wakes up (see the tick in [`Workers::start`]).
const TICK: Duration = Duration::from_secs(1);

/// Running workers; dropping this stops them (their tasks are dropped).
pub struct Workers {
    handles: Arc<[Handle]>,
    stop: CancellationToken,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Workers {
    /// Start `n` workers (at least one), named `warren-worker-<i>`.
    pub fn start(n: usize) -> io::Result<Workers> {
        let stop = CancellationToken::new();
        let mut handles = Vec::new();
        let mut threads = Vec::new();
        for i in 0..n.max(1) {
            let (tx, rx) = mpsc::sync_channel(1);
            let worker_stop = stop.clone();
            let thread = std::thread::Builder::new()
                .name(format!("warren-worker-{i}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = tx.send(Ok(runtime.handle().clone()));
                    runtime.block_on(async move {
                        // A timer due within a second at all times: Tokio wakes its own parked
                        // driver (an eventfd write and one more epoll_wait) whenever a new timer
                        // is due before every existing one, which otherwise is what each
                        // connection's connect timeout does on a busy worker.
                        let mut tick = tokio::time::interval(TICK);
                        loop {
                            tokio::select! {
                                () = worker_stop.cancelled() => break,
                                _ = tick.tick() => {}
                            }
                        }
                    });
                });
            let started = thread.and_then(|thread| {
                threads.push(thread);
                rx.recv().map_err(io::Error::other)?
            });
            match started {
                Ok(handle) => handles.push(handle),
                Err(e) => {
                    stop.cancel();
                    return Err(e);
                }
            }
        }
        Ok(Workers {
            handles: handles.into(),
            stop,
            threads: Mutex::new(threads),
        })
    }

    /// One runtime handle per worker, in worker order.
    pub fn handles(&self) -> &Arc<[Handle]> {
        &self.handles
    }

    /// How many workers run.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Always false: there is at least one worker.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Whether every worker ran a task within `within` (a wedged worker fails this).
    pub async fn all_alive(&self, within: Duration) -> bool {
        let pings: Vec<_> = self.handles.iter().map(|h| h.spawn(async {})).collect();
        tokio::time::timeout(within, async {
            for ping in pings {
                if ping.await.is_err() {
                    return false;
                }
            }
            true
        })
        .await
        .unwrap_or(false)
    }

    /// Stop every worker and wait for its thread; their remaining tasks are dropped.
    /// Blocks: call it from a blocking context.
    pub fn join(&self) {
        self.stop.cancel();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for thread in threads {
            let _ = thread.join();
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The default number of workers: one per CPU this process may use.
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_run_tasks_on_their_own_threads_and_stop() {
        let workers = Workers::start(2).unwrap();
        assert_eq!(workers.len(), 2);
        let names: Vec<String> = workers
            .handles()
            .iter()
            .map(|h| {
                let (tx, rx) = mpsc::channel();
                h.spawn(async move {
                    let _ = tx.send(std::thread::current().name().unwrap_or("").to_owned());
                });
                rx.recv_timeout(Duration::from_secs(10)).unwrap()
            })
            .collect();
        assert_eq!(names, ["warren-worker-0", "warren-worker-1"]);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        assert!(runtime.block_on(workers.all_alive(Duration::from_secs(10))));
        workers.join();
        assert!(!runtime.block_on(workers.all_alive(Duration::from_millis(200))));
    }
}
