//! A circuit breaker per deployment, as a pure state machine over caller-supplied instants.
//!
//! Closed: calls flow; failures are counted in a row and in a fixed window. The breaker opens when
//! `consecutive_failures` fail in a row, or when at least `min_requests` calls of the current
//! window failed at `failure_rate` or more. Open: calls are refused until `cooldown` has passed.
//! Half-open: exactly one probe call is let through at a time; its success closes the breaker,
//! its failure opens it again for another cooldown. A probe whose caller went away (a client
//! cancellation) is released without counting as a failure. This is the pattern of Nygard,
//! "Release It!" (2nd ed., ch. 5), with the failure-rate trigger of resilience4j.

use std::time::{Duration, Instant};

use crate::catalog::BreakerPolicy;

/// The breaker's externally visible state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls flow.
    Closed,
    /// Calls are refused until the cooldown ends.
    Open,
    /// One probe call at a time decides.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// What [`Breaker::admit`] allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A normal call.
    Call,
    /// The single half-open probe; report its result, or [`Breaker::release_probe`].
    Probe,
    /// Refused: the breaker is open, or a probe is already in flight.
    Refused,
}

/// Breaker state of one deployment.
#[derive(Debug, Clone)]
pub struct Breaker {
    policy: BreakerPolicy,
    open_until: Option<Instant>,
    probe_in_flight: bool,
    consecutive: u32,
    window_start: Option<Instant>,
    window_calls: u32,
    window_failures: u32,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(policy: BreakerPolicy) -> Self {
        Breaker {
            policy,
            open_until: None,
            probe_in_flight: false,
            consecutive: 0,
            window_start: None,
            window_calls: 0,
            window_failures: 0,
        }
    }

    /// The state at `now`.
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.open_until {
            None => BreakerState::Closed,
            Some(until) if now < until => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        }
    }

    /// Asks to make a call at `now`.
    pub fn admit(&mut self, now: Instant) -> Admission {
        match self.state(now) {
            BreakerState::Closed => Admission::Call,
            BreakerState::Open => Admission::Refused,
            BreakerState::HalfOpen if self.probe_in_flight => Admission::Refused,
            BreakerState::HalfOpen => {
                self.probe_in_flight = true;
                Admission::Probe
            }
        }
    }

    fn roll_window(&mut self, now: Instant) {
        let expired = self.window_start.is_none_or(|s| now.saturating_duration_since(s) >= self.policy.window);
        if expired {
            self.window_start = Some(now);
            self.window_calls = 0;
            self.window_failures = 0;
        }
    }

    /// Records a successful call (a probe's success closes the breaker).
    pub fn on_success(&mut self, now: Instant) {
        self.roll_window(now);
        self.window_calls += 1;
        self.consecutive = 0;
        self.probe_in_flight = false;
        self.open_until = None;
    }

    /// Records a failed call. Returns true when this failure opened the breaker.
    pub fn on_failure(&mut self, now: Instant) -> bool {
        self.on_failure_with(now, true, 0.5)
    }

    /// Records a failed call; returns true when this failure opened the breaker. When it would
    /// open but `may_open` is false (enough of the model's other deployments are ejected
    /// already, `BreakerPolicy::max_ejection`), the failure is counted and the breaker stays
    /// closed, its counts starting over. `jitter` in [0, 1] draws the cooldown in
    /// [0.8, 1.2] × `cooldown`, so breakers that open together do not probe together.
    pub fn on_failure_with(&mut self, now: Instant, may_open: bool, jitter: f64) -> bool {
        self.roll_window(now);
        self.window_calls += 1;
        self.window_failures += 1;
        self.consecutive += 1;
        let was_probe = std::mem::take(&mut self.probe_in_flight);
        let rate_tripped = self.window_calls >= self.policy.min_requests
            && f64::from(self.window_failures) >= self.policy.failure_rate * f64::from(self.window_calls);
        let trip = was_probe || self.consecutive >= self.policy.consecutive_failures || rate_tripped;
        if trip && !may_open && !was_probe {
            self.consecutive = 0;
            self.window_start = None;
            return false;
        }
        if trip {
            let already_open = self.open_until.is_some_and(|u| now < u);
            self.open_until = Some(now + self.policy.cooldown.mul_f64(0.8 + 0.4 * jitter.clamp(0.0, 1.0)));
            self.window_start = None;
            return !already_open;
        }
        false
    }

    /// True while the breaker is open or half-open (its deployment is ejected).
    pub fn is_ejected(&self) -> bool {
        self.open_until.is_some()
    }

    /// Releases a probe whose call ended without a verdict (the client went away).
    pub fn release_probe(&mut self) {
        self.probe_in_flight = false;
    }

    /// Failures / calls in the current window (0 when empty).
    pub fn error_rate(&self) -> f64 {
        if self.window_calls == 0 {
            0.0
        } else {
            f64::from(self.window_failures) / f64::from(self.window_calls)
        }
    }

    /// Time left until an open breaker lets a probe through.
    pub fn remaining(&self, now: Instant) -> Option<Duration> {
        self.open_until.and_then(|u| u.checked_duration_since(now)).filter(|d| !d.is_zero())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> BreakerPolicy {
        BreakerPolicy {
            consecutive_failures: 3,
            failure_rate: 0.5,
            min_requests: 10,
            window: Duration::from_secs(60),
            cooldown: Duration::from_secs(30),
            ..BreakerPolicy::default()
        }
    }

    /// A breaker that may not open (its siblings are ejected) counts the failures and stays
    /// closed; the cooldown of one that opens is drawn within ±20 %.
    #[test]
    fn a_capped_breaker_stays_closed_and_cooldowns_are_jittered() {
        let t0 = Instant::now();
        let mut b = Breaker::new(policy());
        // Three trips (three in a row each), none of which opens; the counts start over each time.
        for _ in 0..9 {
            assert!(!b.on_failure_with(t0, false, 0.0));
            assert_eq!(b.state(t0), BreakerState::Closed);
        }
        assert!(!b.is_ejected());
        assert!(!b.on_failure_with(t0, true, 0.0));
        assert!(!b.on_failure_with(t0, true, 0.0));
        assert!(b.on_failure_with(t0, true, 0.0), "three in a row once it may open");
        assert_eq!(b.remaining(t0), Some(Duration::from_secs(24)));
        let mut late = Breaker::new(policy());
        for _ in 0..3 {
            late.on_failure_with(t0, true, 1.0);
        }
        assert_eq!(late.remaining(t0), Some(Duration::from_secs(36)));
        assert!(late.is_ejected());
    }

    #[test]
    fn opens_after_consecutive_failures_then_half_opens_with_one_probe() {
        let t0 = Instant::now();
        let mut b = Breaker::new(policy());
        assert!(!b.on_failure(t0));
        assert!(!b.on_failure(t0));
        assert!(b.on_failure(t0));
        assert_eq!(b.state(t0), BreakerState::Open);
        assert_eq!(b.admit(t0 + Duration::from_secs(29)), Admission::Refused);
        let t1 = t0 + Duration::from_secs(30);
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        assert_eq!(b.admit(t1), Admission::Probe);
        assert_eq!(b.admit(t1), Admission::Refused, "only one probe in flight");
        b.on_success(t1);
        assert_eq!(b.state(t1), BreakerState::Closed);
        assert_eq!(b.admit(t1), Admission::Call);
    }

    #[test]
    fn failed_probe_reopens_and_cancelled_probe_is_released() {
        let t0 = Instant::now();
        let mut b = Breaker::new(policy());
        for _ in 0..3 {
            b.on_failure(t0);
        }
        let t1 = t0 + Duration::from_secs(31);
        assert_eq!(b.admit(t1), Admission::Probe);
        b.release_probe();
        assert_eq!(b.admit(t1), Admission::Probe, "a cancelled probe frees the slot");
        assert!(b.on_failure(t1));
        assert_eq!(b.state(t1 + Duration::from_secs(29)), BreakerState::Open);
        assert_eq!(b.remaining(t1), Some(Duration::from_secs(30)));
    }

    #[test]
    fn failure_rate_trips_only_with_enough_calls() {
        let t0 = Instant::now();
        let mut b = Breaker::new(policy());
        // Alternate success/failure: never 3 in a row, rate 50 %.
        for i in 0..9 {
            if i % 2 == 0 {
                assert!(!b.on_failure(t0));
            } else {
                b.on_success(t0);
            }
        }
        assert_eq!(b.state(t0), BreakerState::Closed);
        b.on_success(t0); // 10 calls, 5 failures: below? 5 >= 0.5 * 10 only on a failure
        assert!(b.on_failure(t0), "11 calls, 6 failures: rate 0.55 >= 0.5");
    }

    #[test]
    fn window_resets_old_failures() {
        let t0 = Instant::now();
        let mut b = Breaker::new(policy());
        b.on_failure(t0);
        b.on_failure(t0);
        b.on_success(t0 + Duration::from_secs(61));
        assert!(!b.on_failure(t0 + Duration::from_secs(62)));
        assert_eq!(b.error_rate(), 0.5);
    }
}
