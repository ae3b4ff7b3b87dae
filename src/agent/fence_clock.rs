//! The fence's timeout and everything that decides it, behind one lock: the lease
//! deadline, the holder's vouching state. The main loop and the heartbeat thread both
//! arm through it, and each arm computes the deadline and writes it to the kernel under
//! the lock, so an older, later deadline can never overwrite a newer, earlier one.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use super::keepalive::{self, SharedDeadline};
use crate::net::fence::{Fence, FenceError};
use crate::vouch::{Holder, ARM_SLACK};

/// How much later the deadline must be before it is written again.
const REARM_STEP: std::time::Duration = std::time::Duration::from_millis(10);

/// The fence, shared.
pub type SharedFence = Arc<Mutex<FenceClock>>;

/// Lock the shared fence (a panic elsewhere cannot leave it inconsistent).
pub fn lock(fence: &SharedFence) -> MutexGuard<'_, FenceClock> {
    fence
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What the fence's timeout is made of.
pub struct FenceClock {
    fence: Fence,
    lease: SharedDeadline,
    /// The holder side of peer vouching: its deadline bounds the lease's.
    pub holder: Holder,
    /// Held closed whatever the deadlines say (stopping with addresses left, a passed
    /// lease deadline), until the main loop opens it again.
    shut: bool,
    /// The deadline last written (`None`: closed).
    armed: Option<Instant>,
    /// The lease deadline at the last arm, to tell a renewal.
    armed_lease: Option<Instant>,
}

impl FenceClock {
    /// A clock over `fence` (its own socket), the lease deadline and a holder.
    pub fn new(fence: Fence, lease: SharedDeadline, holder: Holder) -> Self {
        FenceClock {
            fence,
            lease,
            holder,
            shut: false,
            armed: None,
            armed_lease: None,
        }
    }

    /// The deadline the rules give now: the lease's, bounded by the peers' vouching.
    pub fn deadline(&self) -> Option<Instant> {
        let lease_at = keepalive::lock(&self.lease).fence_at();
        self.holder.fence_deadline(lease_at)
    }

    /// Write the deadline to the kernel, or close the fence when there is none. The
    /// timeout is read off the clock just before the send; if the kernel's answer came
    /// more than [`ARM_SLACK`] after, the fence is closed at once (a stall in between
    /// would have stretched it).
    pub fn arm(&mut self) -> Result<Option<Instant>, FenceError> {
        self.armed_lease = keepalive::lock(&self.lease).deadline();
        let deadline = self.deadline().filter(|_| !self.shut);
        let now = Instant::now();
        let left = deadline
            .and_then(|d| d.checked_duration_since(now))
            .filter(|l| !l.is_zero());
        let Some(left) = left else {
            self.armed = None;
            return self.fence.disarm().map(|()| None);
        };
        let written = self.fence.arm(left);
        if now.elapsed() > ARM_SLACK {
            self.armed = None;
            self.fence.disarm()?;
            written?;
            return Ok(None);
        }
        written?;
        self.armed = deadline;
        Ok(deadline)
    }

    /// Arm again if the deadline the rules give is earlier than the one written, or
    /// later by more than [`REARM_STEP`] (each acknowledgement moves it a little).
    pub fn rearm_if_moved(&mut self) -> Result<(), FenceError> {
        let wanted = self.deadline().filter(|_| !self.shut);
        let due = match (wanted, self.armed) {
            (Some(w), Some(a)) => w < a || w > a + REARM_STEP,
            (None, None) => false,
            _ => true,
        };
        if due {
            self.arm()?;
        }
        Ok(())
    }

    /// Whether the lease was renewed since the last arm.
    pub fn lease_moved(&self) -> bool {
        keepalive::lock(&self.lease).deadline() != self.armed_lease
    }

    /// Close now and keep closed until [`FenceClock::open`].
    pub fn shut(&mut self) -> Result<(), FenceError> {
        self.shut = true;
        self.armed = None;
        self.fence.disarm()
    }

    /// Let the deadlines decide again (a lease was granted or renewed).
    pub fn open(&mut self) -> Result<Option<Instant>, FenceError> {
        self.shut = false;
        self.arm()
    }
}
