//! Soak: many concurrent socket clients for a while, the simulator issuing 5-second tokens so
//! the daemon refreshes constantly under load. Every request must succeed, no expired token
//! may be served, the daemon's memory must stay flat, and upstream calls must track the
//! refresh schedule (no hot loop).
//!
//! `soak_reduced` (8 clients, 5 s) runs with the suite; `soak_full` (64 clients, 60 s) is
//! `#[ignore]`d and run by `bench/soak.sh`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::Method;

use crate::support::{client_id, TestEnv};

/// The daemon's resident set, from /proc.
fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[derive(Default)]
struct Tally {
    ok: u64,
    failed: Vec<String>,
    expired: Vec<String>,
    /// First and last time each token was seen.
    seen: HashMap<String, (tokio::time::Instant, tokio::time::Instant)>,
}

async fn soak(clients: usize, seconds: u64) {
    const LIFETIME: u64 = 5;
    let env = TestEnv::new(LIFETIME).await;
    env.jwt_app("analytics");
    let daemon = env.daemon_with(&[("RUST_LOG", "info")]).await;
    daemon.wait_state("analytics", "ready", 10).await;
    let pid = daemon.pid();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let start = tokio::time::Instant::now();
    let end = start + Duration::from_secs(seconds);

    let mut tasks = Vec::new();
    for _ in 0..clients {
        let client = daemon.client();
        let tally = tally.clone();
        tasks.push(tokio::spawn(async move {
            while tokio::time::Instant::now() < end {
                let answer = client
                    .request(Method::GET, "/v1/apps/analytics/token", None)
                    .await;
                let received = tokio::time::Instant::now();
                // The test's own wall clock, independent of the daemon's, taken right after
                // the answer; the daemon's expiry is whole seconds.
                #[allow(clippy::disallowed_methods)]
                let wall = SystemTime::now();
                let mut t = tally.lock().unwrap();
                match answer {
                    Ok(a) if a.status == 200 => {
                        t.ok += 1;
                        let token = a.body["access_token"].as_str().unwrap_or("").to_owned();
                        let expires_at = a.body["expires_at"]
                            .as_str()
                            .and_then(|s| humantime::parse_rfc3339(s).ok());
                        match expires_at {
                            // expires_at is rounded to whole seconds: allow that much.
                            Some(at) if at + Duration::from_secs(1) >= wall => {}
                            _ => t.expired.push(a.body.to_string()),
                        }
                        let entry = t.seen.entry(token).or_insert((received, received));
                        entry.1 = received;
                    }
                    Ok(a) => t.failed.push(format!("{} {}", a.status, a.body)),
                    Err(e) => t.failed.push(e.to_string()),
                }
            }
        }));
    }
    let mut rss = Vec::new();
    while tokio::time::Instant::now() < end {
        rss.push(rss_kib(pid));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for task in tasks {
        task.await.unwrap();
    }
    rss.push(rss_kib(pid));

    let t = tally.lock().unwrap();
    assert!(
        t.failed.is_empty(),
        "{} failed: {:?}",
        t.failed.len(),
        &t.failed[..t.failed.len().min(5)]
    );
    assert!(
        t.expired.is_empty(),
        "expired tokens served: {:?}",
        &t.expired[..t.expired.len().min(5)]
    );
    assert!(
        t.ok > clients as u64 * seconds,
        "too few requests: {}",
        t.ok
    );
    // Independent of the daemon's clock: no token was seen for longer than it lives.
    for (first, last) in t.seen.values() {
        assert!(
            last.duration_since(*first)
                <= Duration::from_secs(LIFETIME) + Duration::from_millis(500),
            "a token was served for {:?}",
            last.duration_since(*first)
        );
    }
    // Tokens rotated: about one per half lifetime, and no hot loop upstream.
    let calls = env
        .sim
        .calls()
        .into_iter()
        .filter(|c| c.client_id.as_deref() == Some(client_id("analytics").as_str()))
        .count() as u64;
    assert!(
        t.seen.len() as u64 >= seconds / LIFETIME,
        "only {} tokens in {seconds} s",
        t.seen.len()
    );
    assert!(
        calls <= seconds + 2,
        "{calls} upstream calls in {seconds} s"
    );
    // Memory flat: the last third's peak within 25% + 4 MiB of the first third's.
    let third = (rss.len() / 3).max(1);
    let early = *rss[..third].iter().max().unwrap();
    let late = *rss[rss.len() - third..].iter().max().unwrap();
    assert!(early > 0, "cannot read the daemon's RSS");
    assert!(
        late <= early + early / 4 + 4096,
        "RSS grew from {early} KiB to {late} KiB: {rss:?}"
    );
    eprintln!(
        "soak: {clients} clients, {seconds} s: {} ok, 0 failed, 0 expired, {} tokens, {calls} upstream calls, RSS {early}..{late} KiB",
        t.ok,
        t.seen.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_reduced() {
    soak(8, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "60 s; run by bench/soak.sh"]
async fn soak_full() {
    soak(64, 60).await;
}
