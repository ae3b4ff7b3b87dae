//! The lease keepalive, in a task of its own: a long reconcile (hundreds of claims)
//! must never delay a renewal, or the lease deadline would fence a healthy host. The
//! task runs at every await of the main loop, renews every interval, and reports.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{interval, MissedTickBehavior};
use tracing::warn;

use super::lease::{LeaseDeadline, Renewal};
use super::sleep_until_some;
use crate::metrics::Metrics;
use crate::store::LeaseKeepAlive;

/// The lease deadline, shared by the main loop and the keepalive task.
pub type SharedDeadline = Arc<Mutex<LeaseDeadline>>;

/// Lock the shared deadline (a panic elsewhere cannot leave it inconsistent).
pub fn lock(clock: &SharedDeadline) -> MutexGuard<'_, LeaseDeadline> {
    clock
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What the keepalive task reports to the main loop.
#[derive(Debug)]
pub enum LeaseEvent {
    /// etcd renewed the lease; the deadline moved.
    Renewed,
    /// etcd no longer knows the lease.
    Expired,
    /// The stream broke or answers stopped coming: reconnect.
    Failed(String),
}

/// The running task; aborted when dropped, with its connection.
pub struct KeepaliveTask {
    handle: JoinHandle<()>,
}

impl Drop for KeepaliveTask {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// Record what a keepalive answer says about etcd: its latency, how close the lease
/// came to its deadline, the TTL granted.
fn observe_answer(metrics: &Metrics, clock: &LeaseDeadline, ttl: i64) {
    let now = std::time::Instant::now();
    if let Some(sent) = clock.oldest_unanswered() {
        metrics
            .keepalive_latency
            .observe(now.saturating_duration_since(sent).as_secs_f64());
    }
    if let Some(share) = clock.headroom(now, ttl) {
        metrics.lease_headroom.observe(share);
    }
    if ttl > 0 {
        metrics.lease_ttl.set(ttl);
    }
}

/// Say so when a renewal goes out more than an interval after it was due: the task's
/// threads were not run, or sending the previous one blocked. A stall of about the TTL
/// costs the lease (one seen in bench-scale, cause unknown: docs/benchmarks.md).
fn report_late(due: tokio::time::Instant, every: Duration) {
    let late = due.elapsed();
    if late > every {
        warn!(
            late_ms = late.as_millis() as u64,
            "keepalive task ran late: not scheduled, or the last send blocked"
        );
    }
}

/// Start renewing every `every`; a renewal unanswered for `answer_timeout` is a failure.
pub fn spawn(
    mut keepalive: LeaseKeepAlive,
    clock: SharedDeadline,
    every: Duration,
    answer_timeout: Duration,
    metrics: Arc<Metrics>,
) -> (KeepaliveTask, mpsc::UnboundedReceiver<LeaseEvent>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handle = tokio::spawn(async move {
        let mut tick = interval(every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let answer_due = lock(&clock)
                .oldest_unanswered()
                .map(|t| tokio::time::Instant::from_std(t + answer_timeout));
            let event = tokio::select! {
                due = tick.tick() => {
                    report_late(due, every);
                    lock(&clock).sent(std::time::Instant::now());
                    match keepalive.send().await {
                        Ok(()) => continue,
                        Err(e) => LeaseEvent::Failed(e.to_string()),
                    }
                }
                answer = keepalive.recv() => match answer.map(|ttl| {
                    let mut clock = lock(&clock);
                    observe_answer(&metrics, &clock, ttl);
                    clock.answered(ttl)
                }) {
                    Ok(Renewal::Renewed) => LeaseEvent::Renewed,
                    Ok(Renewal::Expired) => LeaseEvent::Expired,
                    Err(e) => LeaseEvent::Failed(e.to_string()),
                },
                _ = sleep_until_some(answer_due) => LeaseEvent::Failed("keepalive unanswered".into()),
            };
            let last = !matches!(event, LeaseEvent::Renewed);
            if matches!(event, LeaseEvent::Failed(_)) {
                metrics.keepalive_failures.inc();
            }
            if tx.send(event).is_err() || last {
                lock(&clock).stream_lost();
                return;
            }
        }
    });
    (KeepaliveTask { handle }, rx)
}
