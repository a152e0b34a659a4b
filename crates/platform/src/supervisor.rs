//! The platform's background tasks (ingest, presence, alarms, webhooks,
//! retention, statistics), each watched: a panic or an unexpected end is
//! logged, counted and followed by a restart after a growing pause, and
//! each task's state is there for `/metrics` and `GET /api/v1/health`.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The pause before the first restart; it doubles up to [`MAX_PAUSE`] and
/// starts over once a task has run for [`STABLE_AFTER`].
const FIRST_PAUSE: Duration = Duration::from_secs(1);
const MAX_PAUSE: Duration = Duration::from_secs(60);
const STABLE_AFTER: Duration = Duration::from_secs(300);

/// One task as the operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskStatus {
    pub name: &'static str,
    pub running: bool,
    pub restarts: u64,
    /// The last panic or unexpected end, with when (ms since the epoch).
    pub last_failure: Option<(i64, String)>,
}

#[derive(Debug)]
pub struct Supervisor {
    tasks: Mutex<BTreeMap<&'static str, TaskStatus>>,
    stop: watch::Receiver<bool>,
}

fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

impl Supervisor {
    /// Tasks are not restarted once `stop` is true.
    pub fn new(stop: watch::Receiver<bool>) -> Arc<Self> {
        Arc::new(Supervisor {
            tasks: Mutex::default(),
            stop,
        })
    }

    fn update(&self, name: &'static str, change: impl FnOnce(&mut TaskStatus)) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        let status = tasks.entry(name).or_insert(TaskStatus {
            name,
            running: false,
            restarts: 0,
            last_failure: None,
        });
        change(status);
    }

    /// Runs the future `make` returns as task `name`, again after each
    /// failure, until the stop signal. The returned handle ends when the
    /// task has ended for good.
    pub fn spawn<F, Fut>(self: &Arc<Self>, name: &'static str, mut make: F) -> JoinHandle<()>
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let supervisor = self.clone();
        supervisor.update(name, |s| s.running = true);
        tokio::spawn(async move {
            let mut pause = FIRST_PAUSE;
            loop {
                let started = tokio::time::Instant::now();
                supervisor.update(name, |s| s.running = true);
                let outcome = tokio::spawn(make()).await;
                supervisor.update(name, |s| s.running = false);
                let stopping = *supervisor.stop.borrow();
                let failure = match outcome {
                    Ok(()) if stopping => return,
                    Ok(()) => "ended without being asked to".to_owned(),
                    Err(e) if e.is_panic() => format!("panicked: {}", panic_text(e.into_panic())),
                    Err(e) => e.to_string(),
                };
                tracing::error!(task = name, %failure, "background task failed; restarting");
                supervisor.update(name, |s| {
                    s.restarts += 1;
                    s.last_failure = Some((store::now_millis(), failure));
                });
                if started.elapsed() >= STABLE_AFTER {
                    pause = FIRST_PAUSE;
                }
                let mut stop = supervisor.stop.clone();
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                pause = (pause * 2).min(MAX_PAUSE);
            }
        })
    }

    /// Every task, by name.
    pub fn status(&self) -> Vec<TaskStatus> {
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// `telemark_task_up` and `telemark_task_restarts_total` per task.
    pub fn prometheus(&self) -> String {
        let mut out = String::from(
            "# HELP telemark_task_up whether a background task is running\n# TYPE telemark_task_up gauge\n",
        );
        let tasks = self.status();
        for t in &tasks {
            out.push_str(&format!(
                "telemark_task_up{{task=\"{}\"}} {}\n",
                t.name,
                u8::from(t.running)
            ));
        }
        out.push_str("# HELP telemark_task_restarts_total background task restarts after a panic or an unexpected end\n# TYPE telemark_task_restarts_total counter\n");
        for t in &tasks {
            out.push_str(&format!(
                "telemark_task_restarts_total{{task=\"{}\"}} {}\n",
                t.name, t.restarts
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_is_counted_and_restarted() {
        let (stop, stopped) = watch::channel(false);
        let supervisor = Supervisor::new(stopped.clone());
        let runs = Arc::new(AtomicU32::new(0));
        let counted = runs.clone();
        let handle = supervisor.spawn("ingest", move || {
            let run = counted.fetch_add(1, Ordering::SeqCst);
            let mut stop = stopped.clone();
            async move {
                if run == 0 {
                    panic!("a reading the ingest did not expect");
                }
                let _ = stop.wait_for(|s| *s).await;
            }
        });
        // The pause before the restart passes in paused time.
        for _ in 0..50 {
            if runs.load(Ordering::SeqCst) == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(runs.load(Ordering::SeqCst), 2, "restarted once");
        let status = supervisor.status();
        assert_eq!(status.len(), 1);
        assert!(status[0].running);
        assert_eq!(status[0].restarts, 1);
        let failure = status[0].last_failure.clone().expect("recorded").1;
        assert!(failure.contains("did not expect"), "{failure}");
        assert!(
            supervisor
                .prometheus()
                .contains("telemark_task_restarts_total{task=\"ingest\"} 1")
        );
        stop.send(true).expect("stop");
        handle.await.expect("ends");
        assert!(!supervisor.status()[0].running);
        assert_eq!(runs.load(Ordering::SeqCst), 2, "not restarted after stop");
    }
}
