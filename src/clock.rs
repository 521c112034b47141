//! The daemon's one clock, and the one place that notices a suspend.
//!
//! Two timelines. **Scheduling** (sleeps, timeouts) runs on `tokio::time::Instant`, which
//! tests pause and advance; on Linux it is `CLOCK_MONOTONIC`, which stops while the machine
//! is suspended. **Expiry** (is a token valid, how long has it left, when is it due) runs on
//! [`BootInstant`]: tokio's instant plus the time the machine has spent suspended since the
//! clock was made, i.e. `CLOCK_BOOTTIME` as tokio sees it. The suspended time is read as
//! `(CLOCK_BOOTTIME − CLOCK_MONOTONIC)` now minus that difference at start (two vDSO reads,
//! about 50 ns each, on every [`Clock::now`]), so a token that died while the lid was shut is
//! invalid from the first request after wake, whatever any timer believes. Tests add
//! suspended time without moving tokio's clock ([`Clock::suspend_for`]).
//!
//! Printed wall times (`expires_at`, `next_refresh_at`, an error's `at`) are one wall-clock
//! reading taken when the clock is made plus the boottime elapsed since: a step of the system
//! clock (NTP, `date -s`) moves neither a token's validity nor its printed expiry. Role
//! credentials carry an absolute STS `Expiration`; [`Clock::instant_of`] turns it into a
//! boottime instant on the more pessimistic of the anchored and the live wall clock, so a
//! step in either direction never makes them look fresher than they are.
//!
//! [`Clock::watch_resumes`] is the resume detector: every [`RESUME_CHECK`] it compares the
//! suspended time with what it last reported and, past [`RESUME_THRESHOLD`], logs
//! `resumed after N s` and bumps the epoch of [`Clock::resumes`], on which every owner task
//! recomputes its deadline. It also warns once per step of the system clock.
//!
//! This is the only module allowed to read `SystemTime::now`.

use std::ops::{Add, Sub};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tracing::{info, warn};

/// How often the resume detector compares the clocks: two `clock_gettime` calls and one
/// `SystemTime` read per tick (about 150 ns every 5 s while idle).
pub(crate) const RESUME_CHECK: Duration = Duration::from_secs(5);

/// Suspended time that counts as a resume (smaller growth is noise and is not reported).
pub(crate) const RESUME_THRESHOLD: Duration = Duration::from_secs(1);

/// A step of the system clock, relative to the daemon's wall timeline, worth a warning.
pub(crate) const WALL_STEP_THRESHOLD: Duration = Duration::from_secs(2);

/// The test control (debug builds only): a file holding the seconds of simulated suspend.
pub(crate) const TEST_SUSPEND_ENV: &str = "IAMTOKEND_TEST_SUSPEND_FILE";

/// How often the detector re-reads the test control's file (debug builds, control set).
#[cfg(debug_assertions)]
const TEST_RESUME_CHECK: Duration = Duration::from_millis(100);

/// An instant on the expiry timeline: time since the clock was made, suspended time included
/// (a boottime reading, offset to the clock's start). Tests write explicit instants with
/// [`BootInstant::from_secs`]. Differences saturate at zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub(crate) struct BootInstant(Duration);

impl BootInstant {
    /// The instant `secs` after a clock's start (tests, tables).
    #[cfg(test)]
    pub(crate) const fn from_secs(secs: u64) -> BootInstant {
        BootInstant(Duration::from_secs(secs))
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub(crate) fn saturating_duration_since(self, earlier: BootInstant) -> Duration {
        self.0.saturating_sub(earlier.0)
    }

    /// `self − d`, if that is not before the clock's start.
    pub(crate) fn checked_sub(self, d: Duration) -> Option<BootInstant> {
        self.0.checked_sub(d).map(BootInstant)
    }

    /// Time since the clock's start.
    #[cfg(test)]
    pub(crate) fn since_start(self) -> Duration {
        self.0
    }
}

impl Add<Duration> for BootInstant {
    type Output = BootInstant;
    fn add(self, d: Duration) -> BootInstant {
        BootInstant(self.0.saturating_add(d))
    }
}

impl Sub<BootInstant> for BootInstant {
    type Output = Duration;
    /// Saturating: zero when `rhs` is later.
    fn sub(self, rhs: BootInstant) -> Duration {
        self.saturating_duration_since(rhs)
    }
}

/// Where the live system wall clock is read (the daemon: `SystemTime::now`; tests: a source
/// they step).
type WallSource = Box<dyn Fn() -> SystemTime + Send + Sync>;

/// The clock. Cheap to clone (one `Arc`); every clone shares the suspended time and the
/// resume epoch.
#[derive(Clone)]
pub struct Clock {
    inner: Arc<Inner>,
}

struct Inner {
    base_instant: tokio::time::Instant,
    base_wall: SystemTime,
    /// The live wall clock; `None`: one that never steps (it follows [`Clock::wall_now`]).
    wall_source: Option<WallSource>,
    /// `(BOOTTIME − MONOTONIC)` when the clock was made; `None`: the system's suspends are not
    /// read (test clocks: only injected suspend counts).
    system_base: Option<Duration>,
    /// The largest system suspended time seen, in ns: readings only ever raise it, so
    /// [`Clock::now`] never goes back.
    system_seen: AtomicU64,
    /// Injected suspended time, in ns (tests; the debug builds' test control).
    injected: AtomicU64,
    /// Bumped by the resume detector on every resume.
    resumes: watch::Sender<u64>,
    /// The debug builds' test control: a file of simulated suspend seconds.
    #[cfg(debug_assertions)]
    suspend_file: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clock")
            .field("base_wall", &self.inner.base_wall)
            .field("suspended", &self.suspended())
            .finish()
    }
}

/// `CLOCK_BOOTTIME − CLOCK_MONOTONIC` now, never more than the true difference: boottime is
/// read first, so a preemption between the reads can only make it smaller.
fn boot_minus_mono() -> Duration {
    let boot = read(libc::CLOCK_BOOTTIME);
    let mono = read(libc::CLOCK_MONOTONIC);
    boot.saturating_sub(mono)
}

fn read(id: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; both clocks exist on every supported Linux.
    let rc = unsafe { libc::clock_gettime(id, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Clock {
    fn make(
        base_wall: SystemTime,
        wall_source: Option<WallSource>,
        system_base: Option<Duration>,
    ) -> Clock {
        Clock {
            inner: Arc::new(Inner {
                base_instant: tokio::time::Instant::now(),
                base_wall,
                wall_source,
                system_base,
                system_seen: AtomicU64::new(0),
                injected: AtomicU64::new(0),
                resumes: watch::channel(0).0,
                #[cfg(debug_assertions)]
                suspend_file: None,
            }),
        }
    }

    /// The daemon's clock: anchored at the real wall time, counting the machine's suspends.
    /// In debug builds, [`TEST_SUSPEND_ENV`] names a file of simulated suspend seconds that
    /// the resume detector re-reads (release builds refuse to start with it set:
    /// [`refuse_test_controls`]).
    pub fn system() -> Clock {
        #[allow(clippy::disallowed_methods)] // the one OK usage
        let wall = || SystemTime::now();
        // The tightest of a few readings (each is a lower bound): a preemption while the
        // clock is made must not count as suspended time later.
        let base = (0..4).map(|_| boot_minus_mono()).max();
        #[allow(unused_mut)]
        let mut clock = Clock::make(wall(), Some(Box::new(wall)), base);
        #[cfg(debug_assertions)]
        if let Some(path) = std::env::var_os(TEST_SUSPEND_ENV) {
            if let Some(inner) = Arc::get_mut(&mut clock.inner) {
                inner.suspend_file = Some(path.into());
            }
        }
        clock
    }

    /// A clock whose current wall time is `wall`, whose system clock never steps and which
    /// sees no suspend but what a test injects (tests).
    #[cfg(test)]
    pub(crate) fn anchored_at(wall: SystemTime) -> Clock {
        Clock::make(wall, None, None)
    }

    /// A clock anchored at `wall_source()`'s reading now, with `wall_source` as the live
    /// system clock (tests that step it); no system suspends are read.
    #[cfg(test)]
    pub(crate) fn with_wall_source(
        wall_source: impl Fn() -> SystemTime + Send + Sync + 'static,
    ) -> Clock {
        Clock::make(wall_source(), Some(Box::new(wall_source)), None)
    }

    /// Time spent suspended since the clock was made: the system's (if read) plus injected.
    pub(crate) fn suspended(&self) -> Duration {
        let inner = &self.inner;
        let system = match inner.system_base {
            Some(base) => {
                let seen = nanos(boot_minus_mono().saturating_sub(base));
                // Read first: the write (a shared cache line) only when a reading is higher,
                // which after the first readings is only on a resume.
                let known = inner.system_seen.load(Ordering::Relaxed);
                let max = if seen > known {
                    inner
                        .system_seen
                        .fetch_max(seen, Ordering::Relaxed)
                        .max(seen)
                } else {
                    known
                };
                Duration::from_nanos(max)
            }
            None => Duration::ZERO,
        };
        system.saturating_add(Duration::from_nanos(inner.injected.load(Ordering::Relaxed)))
    }

    /// Now on the expiry timeline: what every validity and due decision uses.
    pub(crate) fn now(&self) -> BootInstant {
        let running =
            tokio::time::Instant::now().saturating_duration_since(self.inner.base_instant);
        BootInstant(running.saturating_add(self.suspended()))
    }

    /// The tokio instant to sleep until so as to wake at `at`, if no suspend comes between
    /// (one that does bumps [`Clock::resumes`], and the sleeper recomputes).
    pub(crate) fn deadline(&self, at: BootInstant) -> tokio::time::Instant {
        let tokio_now = tokio::time::Instant::now();
        tokio_now + (at - self.now())
    }

    /// Sleeps until `at` on the expiry timeline, or until the next resume, whichever is first
    /// (the caller then re-checks).
    pub(crate) async fn sleep_until(&self, at: BootInstant) {
        let mut resumes = self.resumes();
        tokio::select! {
            _ = tokio::time::sleep_until(self.deadline(at)) => {}
            _ = resumes.changed() => {}
        }
    }

    /// A receiver of the resume epoch: it changes on every resume the detector notices.
    pub(crate) fn resumes(&self) -> watch::Receiver<u64> {
        self.inner.resumes.subscribe()
    }

    /// The wall time of an instant: the anchor plus the boottime elapsed.
    pub(crate) fn wall(&self, at: BootInstant) -> SystemTime {
        self.inner.base_wall + at.0
    }

    /// Wall time now, on the daemon's timeline (not the live system clock).
    pub(crate) fn wall_now(&self) -> SystemTime {
        self.wall(self.now())
    }

    /// The live system wall clock (for comparison with the daemon's timeline).
    fn live_wall(&self) -> SystemTime {
        match &self.inner.wall_source {
            Some(source) => source(),
            None => self.wall_now(),
        }
    }

    /// The instant of an absolute wall time (an STS `Expiration`): now plus the time until it
    /// on the daemon's timeline or on the live system clock, whichever is less, so neither a
    /// step forward since start nor one back makes it later than it is.
    pub(crate) fn instant_of(&self, wall: SystemTime) -> BootInstant {
        let now = self.now();
        let signed = |reference: SystemTime| -> i128 {
            match wall.duration_since(reference) {
                Ok(ahead) => ahead.as_nanos() as i128,
                Err(behind) => -(behind.duration().as_nanos() as i128),
            }
        };
        let ahead = signed(self.wall(now)).min(signed(self.live_wall()));
        if ahead >= 0 {
            now + Duration::from_nanos(u64::try_from(ahead).unwrap_or(u64::MAX))
        } else {
            let behind = Duration::from_nanos(u64::try_from(-ahead).unwrap_or(u64::MAX));
            now.checked_sub(behind).unwrap_or_default()
        }
    }

    /// The live wall clock minus the daemon's, in milliseconds. Injected suspend is taken out:
    /// a real suspend moves the live clock too, a simulated one does not.
    fn wall_skew(&self) -> i128 {
        let injected = Duration::from_nanos(self.inner.injected.load(Ordering::Relaxed));
        let ours = self
            .wall_now()
            .checked_sub(injected)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        match self.live_wall().duration_since(ours) {
            Ok(d) => d.as_millis() as i128,
            Err(e) => -(e.duration().as_millis() as i128),
        }
    }

    /// Adds `d` of suspended time without moving tokio's clock (tests).
    #[cfg(test)]
    pub(crate) fn suspend_for(&self, d: Duration) {
        self.inner.injected.fetch_add(nanos(d), Ordering::Relaxed);
    }

    /// Reads the test control's file, if set, and raises the injected suspend to its value.
    #[cfg(debug_assertions)]
    fn read_test_control(&self) {
        let Some(path) = &self.inner.suspend_file else {
            return;
        };
        let secs = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e9);
        if let Some(secs) = secs {
            let d = nanos(Duration::from_secs_f64(secs));
            self.inner.injected.fetch_max(d, Ordering::Relaxed);
        }
    }

    fn check_every(&self) -> Duration {
        #[cfg(debug_assertions)]
        if self.inner.suspend_file.is_some() {
            return TEST_RESUME_CHECK;
        }
        RESUME_CHECK
    }

    /// The resume detector: runs until dropped. Every tick it compares the suspended time with
    /// what it last reported; a growth of more than [`RESUME_THRESHOLD`] is logged as
    /// `resumed after N s` and bumps [`Clock::resumes`]. A step of the live wall clock against
    /// the daemon's timeline of more than [`WALL_STEP_THRESHOLD`] is warned about once.
    pub(crate) async fn watch_resumes(self) {
        let mut ticks = tokio::time::interval(self.check_every());
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reported = self.suspended();
        let mut skew = self.wall_skew();
        loop {
            ticks.tick().await;
            #[cfg(debug_assertions)]
            self.read_test_control();
            let suspended = self.suspended();
            if let Some(slept) = resumed(reported, suspended) {
                reported = suspended;
                let secs = slept.as_secs();
                info!(suspend_secs = secs, "resumed after {secs} s of suspend");
                self.inner.resumes.send_modify(|epoch| *epoch += 1);
            }
            let now_skew = self.wall_skew();
            if let Some(step_ms) = stepped(skew, now_skew) {
                warn!(
                    step_secs = step_ms / 1000,
                    "the system clock stepped; expiry keeps the daemon's own timeline (printed times follow it until restart)"
                );
                skew = now_skew;
            }
        }
    }
}

/// The suspend to report, if `now` (suspended time) has grown past the threshold since
/// `reported`.
fn resumed(reported: Duration, now: Duration) -> Option<Duration> {
    let grown = now.saturating_sub(reported);
    (grown > RESUME_THRESHOLD).then_some(grown)
}

/// The step of the live wall clock, in ms (positive: forward), if the skew between it and the
/// daemon's timeline moved past [`WALL_STEP_THRESHOLD`] from `before` to `now`.
fn stepped(before: i128, now: i128) -> Option<i128> {
    let step = now - before;
    (step.unsigned_abs() > WALL_STEP_THRESHOLD.as_millis()).then_some(step)
}

/// Why the daemon must not start: a test control set in a release build. `release` and `set`
/// are the build kind and whether [`TEST_SUSPEND_ENV`] is set.
pub(crate) fn test_control_refusal(release: bool, set: bool) -> Option<String> {
    (release && set).then(|| {
        format!("refusing to start: {TEST_SUSPEND_ENV} is a test control that release builds do not have")
    })
}

/// [`test_control_refusal`] for this build and environment.
pub(crate) fn refuse_test_controls() -> Option<String> {
    test_control_refusal(
        !cfg!(debug_assertions),
        std::env::var_os(TEST_SUSPEND_ENV).is_some(),
    )
}

/// The raw `CLOCK_MONOTONIC` reading in microseconds, as systemd's `MONOTONIC_USEC=` wants it
/// (systemd compares it with its own reading of that clock). A wire value only: nothing is
/// scheduled on it, so it need not follow tokio's paused clock.
pub(crate) fn monotonic_usec() -> u64 {
    let d = read(libc::CLOCK_MONOTONIC);
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// RFC 3339 UTC with a `Z`, whole seconds: "2026-11-27T01:00:00Z".
pub(crate) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[tokio::test(start_paused = true)]
    async fn wall_moves_with_paused_time() {
        let start = SystemTime::UNIX_EPOCH + S(1_800_000_000);
        let clock = Clock::anchored_at(start);
        tokio::time::advance(S(90)).await;
        assert_eq!(clock.wall_now(), start + S(90));
        let later = start + S(3600);
        assert_eq!(clock.instant_of(later) - clock.now(), S(3510));
        assert_eq!(rfc3339(start), "2027-01-15T08:00:00Z");
    }

    #[tokio::test(start_paused = true)]
    async fn suspended_time_moves_the_expiry_timeline_and_the_wall_but_not_tokio() {
        let start = SystemTime::UNIX_EPOCH + S(1_800_000_000);
        let clock = Clock::anchored_at(start);
        let tokio_start = tokio::time::Instant::now();
        tokio::time::advance(S(60)).await;
        let due = clock.now() + S(600);
        assert_eq!(clock.now(), BootInstant::from_secs(60));
        clock.suspend_for(S(7200));
        assert_eq!(tokio::time::Instant::now() - tokio_start, S(60));
        assert_eq!(clock.now(), BootInstant::from_secs(7260));
        assert_eq!(clock.suspended(), S(7200));
        assert_eq!(clock.wall_now(), start + S(7260));
        // A deadline already passed in the suspend is due at once; a later one is counted
        // from the tokio instant of now.
        assert_eq!(clock.deadline(due), tokio::time::Instant::now());
        assert_eq!(
            clock.deadline(clock.now() + S(30)),
            tokio::time::Instant::now() + S(30)
        );
    }

    #[test]
    fn boot_instants_saturate() {
        let (a, b) = (BootInstant::from_secs(10), BootInstant::from_secs(25));
        assert_eq!(b - a, S(15));
        assert_eq!(a - b, Duration::ZERO);
        assert_eq!(a.checked_sub(S(11)), None);
        assert_eq!(a.checked_sub(S(10)), Some(BootInstant::default()));
        assert_eq!((a + S(5)).since_start(), S(15));
    }

    #[test]
    fn the_real_clocks_read_no_suspend_in_a_test_run_and_never_go_back() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let clock = Clock::system();
            let mut last = clock.now();
            for _ in 0..1000 {
                let now = clock.now();
                assert!(now >= last);
                last = now;
            }
            // The machine does not suspend during a unit test (a real suspend here would only
            // make this larger; a regression reading the wrong clock would make it huge).
            assert!(clock.suspended() < S(1), "{:?}", clock.suspended());
        });
    }

    #[test]
    fn a_resume_is_growth_past_the_threshold() {
        let ms = Duration::from_millis;
        // (reported, suspended now, resume reported)
        let cases = [
            (S(0), S(0), None),
            (S(0), ms(900), None),
            (S(0), S(1), None),
            (S(0), ms(1001), Some(ms(1001))),
            (S(10), S(7210), Some(S(7200))),
            (S(10), S(5), None),
        ];
        for (reported, now, want) in cases {
            assert_eq!(resumed(reported, now), want, "{reported:?} {now:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_wall_step_either_way_is_told_apart_from_drift_and_from_a_suspend() {
        let start = SystemTime::UNIX_EPOCH + S(1_800_000_000);
        let (live, clock) = stepping_wall(start);
        let before = clock.wall_skew();
        assert_eq!(before, 0);
        // A simulated suspend moves the daemon's timeline but not the test's wall source: not
        // a step (a real suspend moves both clocks).
        clock.suspend_for(S(600));
        assert_eq!(stepped(before, clock.wall_skew()), None);
        *live.lock().unwrap() = start + Duration::from_millis(1500);
        assert_eq!(stepped(before, clock.wall_skew()), None, "1.5 s is drift");
        *live.lock().unwrap() = start + S(3600);
        assert_eq!(stepped(before, clock.wall_skew()), Some(3_600_000));
        *live.lock().unwrap() = start - S(3600);
        assert_eq!(stepped(before, clock.wall_skew()), Some(-3_600_000));
    }

    #[test]
    fn release_builds_refuse_the_test_control() {
        assert!(test_control_refusal(false, true).is_none());
        assert!(test_control_refusal(true, false).is_none());
        let why = test_control_refusal(true, true).unwrap();
        assert!(
            why.contains(TEST_SUSPEND_ENV) && !why.contains('\n'),
            "{why}"
        );
    }

    /// A wall source the test steps.
    fn stepping_wall(start: SystemTime) -> (Arc<Mutex<SystemTime>>, Clock) {
        let live = Arc::new(Mutex::new(start));
        let source = live.clone();
        let clock = Clock::with_wall_source(move || *source.lock().unwrap());
        (live, clock)
    }

    #[tokio::test(start_paused = true)]
    async fn a_wall_step_moves_neither_the_timeline_nor_printed_times() {
        let start = SystemTime::UNIX_EPOCH + S(1_800_000_000);
        for step_forward in [true, false] {
            let (live, clock) = stepping_wall(start);
            let expires_at = clock.now() + S(3600);
            tokio::time::advance(S(60)).await;
            *live.lock().unwrap() = if step_forward {
                start + S(60) + S(7200)
            } else {
                start + S(60) - S(7200)
            };
            // The timeline and the printed expiry ignore the step: the same token has the
            // same 59 minutes left and prints the same expiry.
            assert_eq!(expires_at - clock.now(), S(3540));
            assert_eq!(clock.wall(expires_at), start + S(3600));
            assert_eq!(clock.wall_now(), start + S(60));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_absolute_expiry_is_judged_on_the_more_pessimistic_wall() {
        let start = SystemTime::UNIX_EPOCH + S(1_800_000_000);
        let expiration = start + S(3600);
        // No step: one hour left.
        let (_live, clock) = stepping_wall(start);
        assert_eq!(clock.instant_of(expiration) - clock.now(), S(3600));
        // The system clock was 30 min behind at start and NTP stepped it forward: the live
        // clock is right, and the credentials have its 60 min left, not the anchor's 90.
        let (live, clock) = stepping_wall(start - S(1800));
        *live.lock().unwrap() = start;
        assert_eq!(clock.instant_of(expiration) - clock.now(), S(3600));
        // Someone set the date 2 h back after start: the anchor is right, the live clock would
        // say 3 h left; it is 1 h.
        let (live, clock) = stepping_wall(start);
        *live.lock().unwrap() = start - S(7200);
        assert_eq!(clock.instant_of(expiration) - clock.now(), S(3600));
        // Already past on either: the instant is in the past.
        let (_live, clock) = stepping_wall(start);
        tokio::time::advance(S(4000)).await;
        assert!(clock.instant_of(expiration) < clock.now());
    }

    #[tokio::test(start_paused = true)]
    async fn the_detector_reports_a_resume_and_bumps_the_epoch() {
        let clock = Clock::anchored_at(SystemTime::UNIX_EPOCH + S(1_800_000_000));
        let mut resumes = clock.resumes();
        let detector = tokio::spawn(clock.clone().watch_resumes());
        tokio::time::sleep(RESUME_CHECK * 3).await;
        assert!(!resumes.has_changed().unwrap(), "no suspend, no resume");
        clock.suspend_for(S(7200));
        let started = tokio::time::Instant::now();
        resumes.changed().await.unwrap();
        assert!(tokio::time::Instant::now() - started <= RESUME_CHECK);
        assert_eq!(*resumes.borrow_and_update(), 1);
        // Noise below the threshold is not a resume.
        clock.suspend_for(Duration::from_millis(500));
        tokio::time::sleep(RESUME_CHECK * 3).await;
        assert!(!resumes.has_changed().unwrap());
        detector.abort();
    }
}
