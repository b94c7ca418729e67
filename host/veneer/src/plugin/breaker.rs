//! A circuit breaker per loaded plugin.
//!
//! A broken deploy (a plugin that traps or spins on every request) would otherwise cost every
//! request its full time budget, and hold a worker for it. After `faults` consecutive faulted
//! requests the plugin is skipped for `cooldown` (costing nothing); then one request tries it
//! (half-open): success closes the breaker, another fault opens it again.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// When to trip.
#[derive(Debug, Clone, Copy)]
pub struct BreakerPolicy {
    /// Consecutive faulted requests that open the breaker; 0 never opens it.
    pub faults: u32,
    /// How long it stays open before one request may try again.
    pub cooldown: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        BreakerPolicy {
            faults: 5,
            cooldown: Duration::from_secs(30),
        }
    }
}

/// What [`Breaker::admit`] decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Run the plugin.
    Run,
    /// Run it as the one trial after a cool-down.
    Trial,
    /// Skip it: the breaker is open.
    Skip,
}

/// How a request's use of the plugin ended, reported once per instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It ran without a fault.
    Success,
    /// It faulted.
    Fault,
}

/// What changed in the breaker's state, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Nothing worth reporting.
    None,
    /// The breaker opened (or re-opened after a failed trial).
    Opened,
    /// A trial succeeded and the breaker closed.
    Closed,
}

/// The shared state of one plugin's breaker.
#[derive(Debug)]
pub struct Breaker {
    policy: BreakerPolicy,
    consecutive: AtomicU32,
    /// Milliseconds since `epoch()` until which the plugin is skipped; 0 when closed.
    open_until_ms: AtomicU64,
    /// A trial request is in flight.
    trial: AtomicBool,
    /// When the current trial started (ms since `epoch()`): a trial still unresolved after a
    /// cool-down (its response is stuck streaming) lets another request try.
    trial_started_ms: AtomicU64,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Breaker {
    /// A closed breaker.
    pub fn new(policy: BreakerPolicy) -> Self {
        Breaker {
            policy,
            consecutive: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            trial: AtomicBool::new(false),
            trial_started_ms: AtomicU64::new(0),
        }
    }

    /// Whether the breaker is open now.
    pub fn is_open(&self) -> bool {
        self.open_until_ms.load(Ordering::Relaxed) != 0
    }

    /// Decides whether this request runs the plugin.
    pub fn admit(&self) -> Admission {
        let until = self.open_until_ms.load(Ordering::Relaxed);
        if until == 0 {
            return Admission::Run;
        }
        if now_ms() < until {
            return Admission::Skip;
        }
        // Cool-down over: exactly one request gets to try (or another, once a trial has gone
        // unresolved for a whole cool-down).
        let now = now_ms();
        let cooldown = u64::try_from(self.policy.cooldown.as_millis()).unwrap_or(u64::MAX);
        let stale = now.saturating_sub(self.trial_started_ms.load(Ordering::Relaxed)) > cooldown;
        let expected = stale && self.trial.load(Ordering::Acquire);
        if self
            .trial
            .compare_exchange(expected, true, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            self.trial_started_ms.store(now, Ordering::Relaxed);
            Admission::Trial
        } else {
            Admission::Skip
        }
    }

    /// Gives up a trial that never ran, so another request can take it.
    pub fn release_trial(&self) {
        self.trial.store(false, Ordering::Release);
    }

    /// Records how a request that ran the plugin ended.
    pub fn record(&self, outcome: Outcome, trial: bool) -> Transition {
        if self.policy.faults == 0 {
            return Transition::None;
        }
        match outcome {
            Outcome::Success => {
                self.consecutive.store(0, Ordering::Relaxed);
                if trial {
                    self.open_until_ms.store(0, Ordering::Relaxed);
                    self.trial.store(false, Ordering::Release);
                    return Transition::Closed;
                }
                Transition::None
            }
            Outcome::Fault => {
                let n = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
                if trial || (n >= self.policy.faults && !self.is_open()) {
                    let cooldown =
                        u64::try_from(self.policy.cooldown.as_millis()).unwrap_or(u64::MAX);
                    self.open_until_ms
                        .store(now_ms().saturating_add(cooldown).max(1), Ordering::Relaxed);
                    self.trial.store(false, Ordering::Release);
                    return Transition::Opened;
                }
                Transition::None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_faults_then_lets_one_trial_through() {
        let b = Breaker::new(BreakerPolicy {
            faults: 3,
            cooldown: Duration::from_millis(30),
        });
        for _ in 0..2 {
            assert_eq!(b.admit(), Admission::Run);
            assert_eq!(b.record(Outcome::Fault, false), Transition::None);
        }
        // A success in between resets the count.
        assert_eq!(b.record(Outcome::Success, false), Transition::None);
        for _ in 0..2 {
            b.record(Outcome::Fault, false);
        }
        assert_eq!(b.record(Outcome::Fault, false), Transition::Opened);
        assert_eq!(b.admit(), Admission::Skip);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.admit(), Admission::Trial);
        assert_eq!(b.admit(), Admission::Skip, "only one trial at a time");
        assert_eq!(b.record(Outcome::Fault, true), Transition::Opened);
        assert_eq!(b.admit(), Admission::Skip);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.admit(), Admission::Trial);
        assert_eq!(b.record(Outcome::Success, true), Transition::Closed);
        assert_eq!(b.admit(), Admission::Run);
    }

    #[test]
    fn zero_faults_never_opens() {
        let b = Breaker::new(BreakerPolicy {
            faults: 0,
            cooldown: Duration::from_secs(1),
        });
        for _ in 0..100 {
            b.record(Outcome::Fault, false);
        }
        assert_eq!(b.admit(), Admission::Run);
    }
}
