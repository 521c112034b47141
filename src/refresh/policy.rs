//! Pure refresh, backoff and resume policy: functions of durations, a `now` (an instant on
//! the clock's boottime timeline) handed in and a random sample, with no clock read and no
//! runtime. [`after_resume`] is where a call that came due in a suspend goes. [`Retry`] is the one retry state of both the
//! token path (the owner task) and role credentials; [`uniform_sample`] is the one place the
//! engine draws randomness, and the owner and the credential cache hold it as an injected
//! `fn() -> f64` that tests replace. The limits on calls a request can force, [`forced_call_at`]
//! and [`capped_min_ttl`], are here too.

use std::time::Duration;

use crate::clock::BootInstant;

/// First backoff step after a failure; doubles per consecutive failure.
pub(crate) const BACKOFF_BASE: Duration = Duration::from_secs(1);

/// Never schedule a refresh sooner than this after a token arrives, however short its
/// lifetime: an upstream answering `expiresIn: 1` must not turn the daemon into a hot loop.
pub(crate) const MIN_REFRESH_DELAY: Duration = Duration::from_secs(1);

/// After a resume, an app whose refresh point passed in the suspend calls upstream after a
/// uniform wait in [0, this): a fleet of machines resumed together (a hypervisor's paused
/// VMs, a lab's laptops at 9:00) spreads its calls over it instead of one burst, and
/// `max_concurrent` bounds each daemon's calls as always. A request that finds no valid
/// token does not wait for it: it asks the owner, which calls at once.
pub(crate) const RESUME_JITTER: Duration = Duration::from_secs(2);

/// `[refresh]` knobs the policy needs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Policy {
    /// Fraction of the lifetime after which to refresh.
    pub(crate) at: f64,
    /// +/- fraction of the lifetime, scaled by the sample.
    pub(crate) jitter: f64,
    /// Refresh no later than this before expiry.
    pub(crate) min_lead: Duration,
    /// Cap of the exponential backoff.
    pub(crate) max_backoff: Duration,
}

/// The `[refresh]` policy as running apps read it: a reload replaces it, and every app uses
/// the new one from its next scheduling decision on.
#[derive(Debug, Clone, Default)]
pub(crate) struct LivePolicy(std::sync::Arc<std::sync::RwLock<Policy>>);

impl LivePolicy {
    /// A cell holding `policy`.
    pub(crate) fn new(policy: Policy) -> LivePolicy {
        LivePolicy(std::sync::Arc::new(std::sync::RwLock::new(policy)))
    }

    /// The current policy.
    pub(crate) fn get(&self) -> Policy {
        // Policy is Copy and written whole, so a poisoned lock still holds a whole value.
        *self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the policy.
    pub(crate) fn set(&self, policy: Policy) {
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
pub(crate) fn refresh_delay(lifetime: Duration, policy: &Policy, sample: f64) -> Duration {
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
pub(crate) fn backoff(
    failures: u32,
    max_backoff: Duration,
    sample: f64,
    throttled: bool,
) -> Duration {
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

/// How a failure bears on the next call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailureKind {
    /// Only a login (or a config change, or a forced refresh) can go on: no timer, and the
    /// failure count stays as it was.
    NeedsLogin,
    /// The service asked for less traffic (`slow_down`, throttling): the backoff, doubled.
    Throttled,
    /// The app's config is at fault (`invalid_client`, access denied): retried only every
    /// `max_backoff`, in case the fault is fixed on the service's side.
    ConfigFault,
    /// Anything else (a transient upstream error, a refused grant, an unreadable input): the
    /// plain backoff.
    Retryable,
}

/// Consecutive failures and how long they hold off the next call. The owner task keeps one
/// per app and the credential cache one per app's credentials: the same type, so both back
/// off alike.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Retry {
    /// Failures in a row; 0 after a success.
    failures: u32,
    /// No call before this; `None` once a success (or a needed login) ends the backoff.
    until: Option<BootInstant>,
}

impl Retry {
    /// Failures in a row (what `status` shows as `consecutive_failures`).
    pub(crate) fn failures(self) -> u32 {
        self.failures
    }

    /// When the backoff lets the next call go, if one is scheduled.
    pub(crate) fn until(self) -> Option<BootInstant> {
        self.until
    }

    /// Whether a call at `now` would cut the backoff short: callers asking harder must not
    /// defeat it.
    pub(crate) fn holds_off(self, now: BootInstant) -> bool {
        self.until.is_some_and(|at| now < at)
    }

    /// The retry state after a failure of `kind` at `now`. `sample` is a uniform draw in
    /// [0, 1) for the backoff jitter (see [`backoff`]).
    ///
    /// Worked example, `max_backoff` 5 min, sample 0.5: the first retryable failure holds off
    /// for 0.75 s, the fourth for 6 s; throttled ones for twice that (1.5 s, 12 s); a config
    /// fault for the whole 5 min at any count; a needed login sets no timer and counts nothing.
    pub(crate) fn failed(
        self,
        kind: FailureKind,
        max_backoff: Duration,
        now: BootInstant,
        sample: f64,
    ) -> Retry {
        let failures = self.failures.saturating_add(1);
        let wait = match kind {
            FailureKind::NeedsLogin => {
                return Retry {
                    failures: self.failures,
                    until: None,
                }
            }
            FailureKind::Throttled => backoff(failures, max_backoff, sample, true),
            FailureKind::ConfigFault => max_backoff,
            FailureKind::Retryable => backoff(failures, max_backoff, sample, false),
        };
        Retry {
            failures,
            until: Some(now + wait),
        }
    }
}

/// The owner's next call after a resume noticed at `now`: one due in the suspend (at or before
/// `now`) moves to `now` plus [`RESUME_JITTER`] scaled by `sample` (a uniform draw in
/// [0, 1)); a later one, or none, stays. Worked example: due at 40 min, resumed at 2 h 30 min,
/// sample 0.5: 2 h 30 min 1 s.
pub(crate) fn after_resume(
    next: Option<BootInstant>,
    now: BootInstant,
    sample: f64,
) -> Option<BootInstant> {
    let sample = if sample.is_finite() {
        sample.clamp(0.0, 1.0)
    } else {
        0.0
    };
    match next {
        Some(at) if at <= now => Some(now + RESUME_JITTER.mul_f64(sample)),
        other => other,
    }
}

/// Calls a request forces (`POST .../refresh`, a `min_ttl` the token does not meet) start at
/// least this far apart for one app (CONTRACT §4).
pub(crate) const FORCED_CALL_INTERVAL: Duration = Duration::from_secs(1);

/// When a call a request forces at `now` may start, given when the app's last upstream call
/// started: at once if that was [`FORCED_CALL_INTERVAL`] or more ago (or never), else at the
/// next slot, a second after it. Requests waiting for the slot share the call made then.
///
/// Worked example: the last call started at t = 10 s; a forced refresh at 10.3 s waits until
/// 11 s; one at 11.5 s calls at once.
pub(crate) fn forced_call_at(last_start: Option<BootInstant>, now: BootInstant) -> BootInstant {
    match last_start {
        Some(last) => now.max(last + FORCED_CALL_INTERVAL),
        None => now,
    }
}

/// `min_ttl` as the owner judges it: one no fresh token could meet is capped at 90 % of the
/// lifetime of the token last issued, so asking for more than upstream gives cannot force a
/// call per request. Before any token was issued it is taken as asked.
///
/// Worked example: 1 h tokens, `min_ttl=999999` → 3240 s (54 min): a fresh token meets it,
/// one 6 min old does not.
pub(crate) fn capped_min_ttl(min_ttl: Duration, last_lifetime: Option<Duration>) -> Duration {
    match last_lifetime {
        Some(lifetime) => min_ttl.min(lifetime.mul_f64(0.9)),
        None => min_ttl,
    }
}

/// A uniform draw in [0, 1): the default of every injected sample function, and the engine's
/// only use of the global random generator.
pub(crate) fn uniform_sample() -> f64 {
    rand::random()
}

/// Maps a uniform draw in [0, 1) to the refresh jitter's [-1, 1): 0 → -1, 0.5 → 0, 0.75 → 0.5.
pub(crate) fn centered(sample: f64) -> f64 {
    sample * 2.0 - 1.0
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

    #[test]
    fn retry_table() {
        let now = BootInstant::from_secs(1_000);
        let max = S(300);
        let after = |failures: u32| Retry {
            failures,
            until: None,
        };
        let ms = Duration::from_millis;
        use FailureKind::{ConfigFault, NeedsLogin, Retryable, Throttled};
        // (before, kind, sample, failures after, hold-off after)
        let cases = [
            (after(0), Retryable, 0.5, 1, Some(ms(750))),
            (after(3), Retryable, 0.5, 4, Some(S(6))),
            (after(0), Throttled, 0.5, 1, Some(ms(1500))),
            (after(3), Throttled, 0.5, 4, Some(S(12))),
            (after(0), ConfigFault, 0.5, 1, Some(S(300))),
            (after(7), ConfigFault, 0.0, 8, Some(S(300))),
            (after(0), NeedsLogin, 0.5, 0, None),
            (after(4), NeedsLogin, 0.5, 4, None),
            (after(u32::MAX), Retryable, 0.0, u32::MAX, Some(S(150))),
        ];
        for (before, kind, sample, failures, wait) in cases {
            let next = before.failed(kind, max, now, sample);
            assert_eq!(next.failures(), failures, "{before:?} {kind:?}");
            assert_eq!(next.until(), wait.map(|w| now + w), "{before:?} {kind:?}");
        }
    }

    #[test]
    fn retry_holds_off_until_its_time_and_a_login_ends_it() {
        let now = BootInstant::from_secs(1_000);
        let retry = Retry::default().failed(FailureKind::Retryable, S(300), now, 0.0);
        assert!(retry.holds_off(now));
        assert!(retry.holds_off(now + Duration::from_millis(499)));
        assert!(!retry.holds_off(now + Duration::from_millis(500)));
        assert!(!Retry::default().holds_off(now));
        let login = retry.failed(FailureKind::NeedsLogin, S(300), now, 0.0);
        assert!(!login.holds_off(now));
    }

    #[test]
    fn after_resume_table() {
        let at = BootInstant::from_secs;
        let ms = Duration::from_millis;
        // (next call, resumed at, sample, next call after)
        let cases = [
            // Due in a 2 h suspend: at once plus the jitter.
            (Some(at(2_400)), at(9_000), 0.0, Some(at(9_000))),
            (Some(at(2_400)), at(9_000), 0.5, Some(at(9_000) + S(1))),
            (
                Some(at(2_400)),
                at(9_000),
                0.999,
                Some(at(9_000) + ms(1998)),
            ),
            // Due exactly now counts as due.
            (Some(at(9_000)), at(9_000), 0.0, Some(at(9_000))),
            // A 10 min suspend that left the refresh point ahead: unchanged.
            (Some(at(9_001)), at(9_000), 0.5, Some(at(9_001))),
            // Waiting for a login: still no timer.
            (None, at(9_000), 0.5, None),
            // Garbage samples are no jitter, never a panic or a far future.
            (Some(at(1)), at(9_000), f64::NAN, Some(at(9_000))),
            (Some(at(1)), at(9_000), 7.0, Some(at(9_000) + RESUME_JITTER)),
        ];
        for (next, now, sample, want) in cases {
            assert_eq!(
                after_resume(next, now, sample),
                want,
                "{next:?} {now:?} {sample}"
            );
        }
    }

    #[test]
    fn centered_maps_the_unit_interval_onto_the_jitter_range() {
        assert_eq!(centered(0.0), -1.0);
        assert_eq!(centered(0.5), 0.0);
        assert_eq!(centered(0.75), 0.5);
    }

    #[test]
    fn forced_call_at_table() {
        let t0 = BootInstant::from_secs(1_000);
        let ms = Duration::from_millis;
        // (last call started at t0 + ?, now at t0 + ?, may call at t0 + ?)
        let cases = [
            (None, ms(0), ms(0)),
            (None, ms(5000), ms(5000)),
            (Some(ms(0)), ms(0), ms(1000)),
            (Some(ms(0)), ms(300), ms(1000)),
            (Some(ms(0)), ms(999), ms(1000)),
            (Some(ms(0)), ms(1000), ms(1000)),
            (Some(ms(0)), ms(1500), ms(1500)),
            (Some(ms(10_000)), ms(10_300), ms(11_000)),
            (Some(ms(10_000)), ms(11_500), ms(11_500)),
        ];
        for (last, now, at) in cases {
            assert_eq!(
                forced_call_at(last.map(|l| t0 + l), t0 + now),
                t0 + at,
                "last {last:?} now {now:?}"
            );
        }
    }

    #[test]
    fn capped_min_ttl_table() {
        let s = Duration::from_secs;
        // (min_ttl asked, last lifetime, judged)
        let cases = [
            (s(999_999), Some(s(3600)), s(3240)),
            (s(3240), Some(s(3600)), s(3240)),
            (s(3000), Some(s(3600)), s(3000)),
            (s(0), Some(s(3600)), s(0)),
            (s(700), Some(s(600)), s(540)),
            (s(60), Some(s(1)), Duration::from_millis(900)),
            (s(60), Some(s(0)), s(0)),
            (s(999_999), None, s(999_999)),
        ];
        for (asked, lifetime, judged) in cases {
            assert_eq!(
                capped_min_ttl(asked, lifetime),
                judged,
                "{asked:?} {lifetime:?}"
            );
        }
    }
}
