//! Suspend and resume of the real daemon, simulated with the debug builds' test control
//! `IAMTOKEND_TEST_SUSPEND_FILE`: the seconds in the file count as time the machine spent
//! suspended (the daemon's resume detector re-reads it every 100 ms in that mode), while the
//! monotonic clock, like a real suspend's, does not move. Release builds refuse the variable
//! (unit-tested in `clock.rs`).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::support::{Daemon, TestEnv};

/// The control file, holding 0 s of suspend, and the daemon started with it.
async fn daemon_with_control(env: &TestEnv) -> (Daemon, PathBuf) {
    let control = env.path("suspend-secs");
    set_suspend(&control, 0);
    let daemon = env
        .daemon_with(&[("IAMTOKEND_TEST_SUSPEND_FILE", control.to_str().unwrap())])
        .await;
    (daemon, control)
}

/// Sets the total simulated suspend (written whole: the daemon never reads half a number).
fn set_suspend(control: &Path, secs: u64) {
    let tmp = control.with_extension("tmp");
    std::fs::write(&tmp, format!("{secs}\n")).unwrap();
    std::fs::rename(&tmp, control).unwrap();
}

fn wall(v: &Value) -> SystemTime {
    humantime::parse_rfc3339(v.as_str().unwrap()).unwrap()
}

fn real_now() -> SystemTime {
    #[allow(clippy::disallowed_methods)] // the test's own wall clock
    SystemTime::now()
}

/// Seconds from `a` to `b`, negative if `b` is earlier.
fn secs_between(a: SystemTime, b: SystemTime) -> i64 {
    match b.duration_since(a) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_two_hour_suspend_no_request_gets_the_old_token() {
    let env = TestEnv::new(3600).await;
    env.jwt_app("analytics");
    let (daemon, control) = daemon_with_control(&env).await;
    daemon.wait_state("analytics", "ready", 20).await;
    let old = daemon.token("analytics").await;
    let old_row = daemon.app("analytics").await;
    let calls = env.calls_for("analytics").len();

    set_suspend(&control, 7200);
    daemon.wait_log("resumed after 7200 s", 1, 20).await;
    // status right after the resume: the token died in the suspend, so the app is expired
    // or already refreshing, or refreshed; never "ready" with the old expiry.
    let row = daemon.app("analytics").await;
    let fresh_ready = row["state"] == "ready" && row["expires_at"] != old_row["expires_at"];
    assert!(
        row["state"] == "expired" || row["state"] == "refreshing" || fresh_ready,
        "status after a 2 h suspend of a 1 h token: {row}"
    );
    // Every request from now on gets a new token, at once.
    for _ in 0..20 {
        let (status, body) = daemon.get("/v1/apps/analytics/token").await;
        assert_eq!(status, 200, "{body}");
        assert_ne!(
            body["access_token"].as_str().unwrap(),
            old,
            "served the dead token"
        );
        let expires_in = body["expires_in"].as_u64().unwrap();
        assert!(
            (3500..=3600).contains(&expires_in),
            "expires_in {expires_in}"
        );
        // In wall terms the daemon resumed 2 h after the test's clock (the suspend is
        // simulated), and the token lives an hour from then.
        let ahead = secs_between(real_now(), wall(&body["expires_at"]));
        assert!(
            (7200 + 3500..=7200 + 3600 + 5).contains(&ahead),
            "expires_at {} is {ahead} s from now",
            body["expires_at"]
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        env.calls_for("analytics").len(),
        calls + 1,
        "one refresh for the resume"
    );
    let row = daemon.wait_state("analytics", "ready", 20).await;
    let next = secs_between(real_now(), wall(&row["next_refresh_at"]));
    assert!(
        (7200 + 1000..=7200 + 2400).contains(&next),
        "next_refresh_at {next} s from now: {row}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_suspends_keep_serving_the_token_until_its_refresh_point_comes_due() {
    let env = TestEnv::new(3600).await;
    env.jwt_app("analytics");
    let (daemon, control) = daemon_with_control(&env).await;
    daemon.wait_state("analytics", "ready", 20).await;
    let token = daemon.token("analytics").await;
    let row = daemon.app("analytics").await;
    let calls = env.calls_for("analytics").len();
    // The refresh point lies at 24–36 min (at 0.5 ± 0.1 of 60 min).
    let due_in = secs_between(wall(&row["last_refresh_at"]), wall(&row["next_refresh_at"]));
    assert!((1440..=2160).contains(&due_in), "{row}");

    // 10 min, then 10 more: 50, then 40 min left. Served, no call, nothing moved in wall
    // terms (a daemon blind to the suspend would print both times 10 min late).
    for (total, count) in [(600, 1), (1200, 2)] {
        set_suspend(&control, total);
        daemon.wait_log("resumed after 600 s", count, 20).await;
        let (status, body) = daemon.get("/v1/apps/analytics/token").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["access_token"], token.as_str());
        let expires_in = body["expires_in"].as_u64().unwrap();
        assert!(
            (3600 - total - 120..=3600 - total).contains(&expires_in),
            "{total} s suspended: expires_in {expires_in}"
        );
        let now_row = daemon.app("analytics").await;
        assert_eq!(now_row["state"], "ready", "{now_row}");
        assert_eq!(now_row["expires_at"], row["expires_at"]);
        assert_eq!(now_row["next_refresh_at"], row["next_refresh_at"]);
        assert_eq!(env.calls_for("analytics").len(), calls);
    }

    // 20 min more (40 min since issue): past the refresh point, so the owner refreshes right
    // after the resume, on its own.
    set_suspend(&control, 2400);
    daemon.wait_log("resumed after 1200 s", 1, 20).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while env.calls_for("analytics").len() == calls {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no refresh after the resume:\n{}",
            daemon.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    daemon.wait_log("token issued", 2, 20).await;
    let (status, body) = daemon.get("/v1/apps/analytics/token").await;
    assert_eq!(status, 200, "{body}");
    assert_ne!(body["access_token"], token.as_str());
    assert!(body["expires_in"].as_u64().unwrap() >= 3500, "{body}");
    assert_eq!(env.calls_for("analytics").len(), calls + 1);
}
