//! The charged-request rate of each peer uid, shared by all of its connections: a uid that
//! opens more connections gets no more upstream-capable work out of the daemon than one
//! connection's worth times two. Each connection also keeps its own [`Bucket`]; a charged
//! request must get a token from both.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::time::Instant;

use super::connection::Bucket;

/// One token bucket per peer uid seen (bounded by the uids on the host).
pub(crate) struct UidRates {
    burst: f64,
    rate: f64,
    /// std `Mutex`: held to take one token, never across an await.
    buckets: Mutex<HashMap<u32, Bucket>>,
}

impl UidRates {
    /// Every uid gets `burst` charged requests at once, refilled at `rate` per second.
    pub(crate) fn new(burst: f64, rate: f64) -> UidRates {
        UidRates {
            burst,
            rate,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token from `uid`'s bucket if there is one.
    pub(crate) fn take(&self, uid: u32, now: Instant) -> bool {
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(uid)
            .or_insert_with(|| Bucket::new(self.burst, self.rate, now))
            .take(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_uid_shares_one_bucket_and_uids_do_not_share() {
        let t0 = Instant::now();
        let rates = UidRates::new(3.0, 1.0);
        // Whichever connection asks, uid 1 has 3 in all.
        assert!((0..3).all(|_| rates.take(1, t0)));
        assert!(!rates.take(1, t0));
        // uid 2 is not charged for uid 1.
        assert!((0..3).all(|_| rates.take(2, t0)));
        assert!(!rates.take(2, t0));
        // The rate refills: one a second.
        assert!(rates.take(1, t0 + Duration::from_secs(1)));
        assert!(!rates.take(1, t0 + Duration::from_secs(1)));
    }
}
