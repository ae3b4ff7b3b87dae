//! The lease keepalive, on a thread of its own: a long reconcile (hundreds of claims) or
//! anything else the agent runs must never delay a renewal, or the lease deadline would
//! fence a healthy host. It renews every interval and reports to the main loop.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{interval, MissedTickBehavior};
use tracing::warn;

use super::lease::{LeaseDeadline, Renewal};
use super::sleep_until_some;
use crate::metrics::Metrics;
use crate::store::Dialer;

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

/// The running keepalive; stopped when dropped: its thread ends, and its connection
/// with it.
pub type KeepaliveTask = super::own_thread::OwnThread;

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

/// What the renewing loop needs.
pub struct Renewing {
    /// Opens the keepalive's own connection to the endpoint the agent uses.
    pub dialer: Dialer,
    /// The lease to renew.
    pub lease: i64,
    /// The deadline it moves.
    pub clock: SharedDeadline,
    /// How often to renew.
    pub every: Duration,
    /// A renewal unanswered this long is a failure.
    pub answer_timeout: Duration,
    /// Where latency, headroom and failures are counted.
    pub metrics: Arc<Metrics>,
}

/// Start renewing on a thread of its own, with its own runtime and its own etcd
/// connection: nothing else the agent runs (reconciles, watch and netlink connection
/// tasks, a worker blocked in a syscall) can hold a renewal back.
pub fn spawn(renewing: Renewing) -> (KeepaliveTask, mpsc::UnboundedReceiver<LeaseEvent>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (failed, runtime_failed) = (tx.clone(), tx.clone());
    let task = super::own_thread::spawn(
        "extip-keepalive",
        move || renew(renewing, tx),
        move |e| {
            let _ = runtime_failed.send(LeaseEvent::Failed(format!("keepalive runtime: {e}")));
        },
    )
    .unwrap_or_else(|e| {
        let _ = failed.send(LeaseEvent::Failed(format!("keepalive thread: {e}")));
        KeepaliveTask::default()
    });
    (task, rx)
}

/// Renew every interval and report each outcome, until a report other than a renewal.
async fn renew(r: Renewing, tx: mpsc::UnboundedSender<LeaseEvent>) {
    let Renewing {
        dialer,
        lease,
        clock,
        every,
        answer_timeout,
        metrics,
    } = r;
    let mut keepalive = match dialer.keep_alive(lease).await {
        Ok(keepalive) => keepalive,
        Err(e) => {
            metrics.keepalive_failures.inc();
            lock(&clock).stream_lost();
            let _ = tx.send(LeaseEvent::Failed(format!("keepalive connection: {e}")));
            return;
        }
    };
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
}
