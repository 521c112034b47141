//! The daemon's one clock.
//!
//! Scheduling runs on `tokio::time::Instant`, which tests pause and advance. Wall-clock times
//! (what the socket API and `status` print) are derived from that monotonic instant and one
//! wall-clock reading taken when the clock is made, so a paused runtime moves both together
//! and a step of the system clock (NTP) never makes a token look fresher than it is.
//! This is the only module allowed to read `SystemTime::now`.

use std::time::SystemTime;
use tokio::time::Instant;

/// Monotonic "now" plus the wall time it corresponds to.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base_instant: Instant,
    base_wall: SystemTime,
}

impl Clock {
    /// A clock anchored at the real wall time.
    pub fn system() -> Clock {
        #[allow(clippy::disallowed_methods)] // the one OK usage
        let base_wall = SystemTime::now();
        Clock {
            base_instant: Instant::now(),
            base_wall,
        }
    }

    /// A clock whose current wall time is `wall` (tests).
    pub fn anchored_at(wall: SystemTime) -> Clock {
        Clock {
            base_instant: Instant::now(),
            base_wall: wall,
        }
    }

    /// Monotonic now (tokio's clock: paused in tests).
    pub fn now(&self) -> Instant {
        Instant::now()
    }

    /// The wall time of a monotonic instant.
    pub fn wall(&self, at: Instant) -> SystemTime {
        if at >= self.base_instant {
            self.base_wall + (at - self.base_instant)
        } else {
            self.base_wall - (self.base_instant - at)
        }
    }

    /// Wall time now.
    pub fn wall_now(&self) -> SystemTime {
        self.wall(self.now())
    }

    /// The monotonic instant of a wall time (e.g. an STS `Expiration`), measured from now.
    pub fn instant_of(&self, wall: SystemTime) -> Instant {
        let now = self.now();
        let wall_now = self.wall(now);
        match wall.duration_since(wall_now) {
            Ok(ahead) => now + ahead,
            Err(behind) => now.checked_sub(behind.duration()).unwrap_or(now),
        }
    }
}

/// The raw `CLOCK_MONOTONIC` reading in microseconds, as systemd's `MONOTONIC_USEC=` wants it
/// (systemd compares it with its own reading of that clock). A wire value only: nothing is
/// scheduled on it, so it need not follow tokio's paused clock.
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}

/// RFC 3339 UTC with a `Z`, whole seconds: "2026-11-27T01:00:00Z".
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn wall_moves_with_paused_time() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let clock = Clock::anchored_at(start);
        tokio::time::advance(Duration::from_secs(90)).await;
        assert_eq!(clock.wall_now(), start + Duration::from_secs(90));
        let later = start + Duration::from_secs(3600);
        assert_eq!(
            clock.instant_of(later) - clock.now(),
            Duration::from_secs(3510)
        );
        assert_eq!(rfc3339(start), "2027-01-15T08:00:00Z");
    }
}
