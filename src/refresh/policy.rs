//! Pure refresh and backoff policy: functions of durations and a random sample, no clock,
//! no runtime. The scheduler draws the sample and adds the result to its own `now`.

use std::time::Duration;

/// First backoff step after a failure; doubles per consecutive failure.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);

/// Never schedule a refresh sooner than this after a token arrives, however short its
/// lifetime: an upstream answering `expiresIn: 1` must not turn the daemon into a hot loop.
pub const MIN_REFRESH_DELAY: Duration = Duration::from_secs(1);

/// `[refresh]` knobs the policy needs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// Fraction of the lifetime after which to refresh.
    pub at: f64,
    /// +/- fraction of the lifetime, scaled by the sample.
    pub jitter: f64,
    /// Refresh no later than this before expiry.
    pub min_lead: Duration,
    /// Cap of the exponential backoff.
    pub max_backoff: Duration,
}

/// The `[refresh]` policy as running apps read it: a reload replaces it, and every app uses
/// the new one from its next scheduling decision on.
#[derive(Debug, Clone, Default)]
pub struct LivePolicy(std::sync::Arc<std::sync::RwLock<Policy>>);

impl LivePolicy {
    /// A cell holding `policy`.
    pub fn new(policy: Policy) -> LivePolicy {
        LivePolicy(std::sync::Arc::new(std::sync::RwLock::new(policy)))
    }

    /// The current policy.
    pub fn get(&self) -> Policy {
        // Policy is Copy and written whole, so a poisoned lock still holds a whole value.
        *self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the policy.
    pub fn set(&self, policy: Policy) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = policy;
    }
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            at: 0.5,
            jitter: 0.1,
            min_lead: Duration::from_secs(300),
            max_backoff: Duration::from_secs(300),
        }
    }
}

/// How long after issue to refresh a token that lives `lifetime`. `sample` is a uniform
/// draw in [-1, 1] that scales the jitter.
///
/// Worked example (defaults, 1 h token): at 0.5 + 0.1 × sample 0.5 = 0.55 → 33 min; the
/// min_lead cap is 60 − 5 = 55 min, so 33 min. An 8 min token: 0.55 → 4 min 24 s, capped at
/// 8 − 5 = 3 min. The lead never exceeds three quarters of the lifetime, so `min_lead` holds
/// for every token of at least 4/3 × min_lead (6 min 40 s by default), and a shorter one (a
/// 60 s token against the default 5 min) is refreshed after a quarter of its life (15 s)
/// rather than the moment it arrives.
pub fn refresh_delay(lifetime: Duration, policy: &Policy, sample: f64) -> Duration {
    let sample = if sample.is_finite() {
        sample.clamp(-1.0, 1.0)
    } else {
        0.0
    };
    let fraction = (policy.at + policy.jitter * sample).clamp(0.0, 1.0);
    let by_fraction = lifetime.mul_f64(fraction);
    let lead = policy.min_lead.min(lifetime.mul_f64(0.75));
    let latest = lifetime.saturating_sub(lead);
    let floor = MIN_REFRESH_DELAY.min(lifetime / 2);
    by_fraction.min(latest).max(floor)
}

/// How long to wait after the `failures`-th consecutive failure (1-based). `sample` is a
/// uniform draw in [0, 1). Equal jitter: the wait lies in [step/2, step), where step doubles
/// per failure from [`BACKOFF_BASE`] up to `max_backoff`. `throttled` (slow_down, throttling)
/// doubles the result, past the cap: the service asked for less traffic.
///
/// Worked example, max 5 min: failures 1 → 0.5–1 s, 4 → 4–8 s, 10 → 150–300 s (512 s capped).
pub fn backoff(failures: u32, max_backoff: Duration, sample: f64, throttled: bool) -> Duration {
    let sample = if sample.is_finite() {
        sample.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let exponent = failures.saturating_sub(1).min(30);
    let step = BACKOFF_BASE
        .checked_mul(1u32 << exponent)
        .unwrap_or(max_backoff)
        .min(max_backoff);
    let wait = step / 2 + (step / 2).mul_f64(sample);
    if throttled {
        wait * 2
    } else {
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn refresh_delay_table() {
        let p = Policy::default();
        // (lifetime, sample, expected)
        let cases = [
            (S(3600), 0.0, S(1800)),
            (S(3600), 1.0, S(2160)),
            (S(3600), -1.0, S(1440)),
            (S(3600), 0.5, S(1980)),
            // min_lead caps: 8 min token, 0.55 would be 264 s, cap 180 s.
            (S(480), 0.5, S(180)),
            // 6 min 40 s is the shortest lifetime where min_lead holds in full.
            (S(400), 0.0, S(100)),
            // shorter: the lead is capped at 3/4 of the lifetime; a 60 s token → 15 s.
            (S(60), -1.0, S(15)),
            (S(60), 1.0, S(15)),
            // absurdly short tokens never schedule a hot loop.
            (S(1), 0.0, Duration::from_millis(500)),
            (S(0), 0.0, S(0)),
        ];
        for (lifetime, sample, want) in cases {
            assert_eq!(
                refresh_delay(lifetime, &p, sample),
                want,
                "lifetime {lifetime:?} sample {sample}"
            );
        }
    }

    #[test]
    fn refresh_delay_never_past_min_lead() {
        let p = Policy {
            at: 0.9,
            jitter: 0.09,
            ..Policy::default()
        };
        for secs in [600u64, 3600, 28_800, 86_400] {
            for sample in [-1.0, 0.0, 1.0] {
                let d = refresh_delay(S(secs), &p, sample);
                assert!(d <= S(secs) - S(300), "{secs} {sample} {d:?}");
            }
        }
    }

    #[test]
    fn refresh_delay_ignores_garbage_samples() {
        let p = Policy::default();
        assert_eq!(refresh_delay(S(3600), &p, f64::NAN), S(1800));
        assert_eq!(refresh_delay(S(3600), &p, 7.0), S(2160));
    }

    #[test]
    fn backoff_table() {
        let max = S(300);
        let cases = [
            (1, 0.0, false, Duration::from_millis(500)),
            (1, 0.5, false, Duration::from_millis(750)),
            (2, 0.0, false, S(1)),
            (4, 0.5, false, S(6)),
            (9, 0.0, false, S(128)),
            (10, 0.0, false, S(150)),
            (10, 1.0, false, S(300)),
            (u32::MAX, 0.0, false, S(150)),
            (1, 0.0, true, S(1)),
            (10, 1.0, true, S(600)),
        ];
        for (failures, sample, throttled, want) in cases {
            assert_eq!(
                backoff(failures, max, sample, throttled),
                want,
                "failures {failures} sample {sample} throttled {throttled}"
            );
        }
    }

    #[test]
    fn backoff_zero_failures_is_like_one() {
        assert_eq!(backoff(0, S(300), 0.0, false), Duration::from_millis(500));
    }
}
