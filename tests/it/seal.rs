//! `[state] seal` (issue 13) against the real binary with a `CREDENTIALS_DIRECTORY` made by
//! the test: no refresh token in any state file after rotations, the newest one presented
//! after a restart with the same key, another key or a changed file moved aside with a
//! fallback to the configured source, migration of an unsealed file, `required` without a
//! key, a short key, and a key made and decrypted by `systemd-creds` when it can run here.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;

use crate::support::raw_http::get_on_socket;
use crate::support::{bin, Daemon, TestEnv};

const SEED: &str = "seed-refresh-token-for-sealing";

/// A credentials directory holding `key` as `state-key`, as systemd would set it up.
fn credentials(env: &TestEnv, name: &str, key: &[u8]) -> PathBuf {
    let dir = env.path(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("state-key"), key).unwrap();
    dir
}

fn random_key(len: usize) -> Vec<u8> {
    (0..len).map(|_| rand::random::<u8>()).collect()
}

async fn daemon_with_key(env: &TestEnv, creds: &Path) -> Daemon {
    env.daemon_with(&[("CREDENTIALS_DIRECTORY", creds.to_str().unwrap())])
        .await
}

/// Every file in the state dir, by name, as bytes.
fn state_files(env: &TestEnv) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(env.path("state"))
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

fn names(env: &TestEnv) -> Vec<String> {
    state_files(env).into_iter().map(|(n, _)| n).collect()
}

/// Fails if any file holds `token` whole, any 16-character piece of it, or its base64
/// (standard and url-safe, whole or any 16-character piece).
fn assert_absent(files: &[(String, Vec<u8>)], token: &str) {
    let b64 = [
        base64::engine::general_purpose::STANDARD.encode(token),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token),
    ];
    let mut needles: Vec<&str> = vec![token];
    for text in std::iter::once(token).chain(b64.iter().map(String::as_str)) {
        needles.push(text);
        needles.extend((0..=text.len().saturating_sub(16)).map(|i| &text[i..i + 16]));
    }
    for (name, bytes) in files {
        let text = String::from_utf8_lossy(bytes);
        for needle in &needles {
            assert!(
                !text.contains(needle),
                "{name} holds {needle:?} of a refresh token: {text}"
            );
        }
    }
}

fn presented(env: &TestEnv) -> Vec<String> {
    env.calls_for("reports")
        .iter()
        .map(|c| c.params["refreshToken"].clone())
        .collect()
}

/// The sealed format on disk: `{"v":1,"alg":"A256GCM","client_id","nonce","ct"}`.
fn assert_sealed_format(bytes: &[u8]) {
    let json: serde_json::Value = serde_json::from_slice(bytes).unwrap();
    let mut keys: Vec<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(keys, ["alg", "client_id", "ct", "nonce", "v"], "{json}");
    assert_eq!(json["v"], 1);
    assert_eq!(json["alg"], "A256GCM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_tokens_are_sealed_and_the_newest_is_presented_after_a_restart() {
    let env = TestEnv::new(3600).await;
    env.refresh_app("reports", SEED);
    let creds = credentials(&env, "creds", &random_key(48));
    let daemon = daemon_with_key(&env, &creds).await;
    daemon.wait_state("reports", "ready", 10).await;
    for _ in 0..3 {
        assert!(daemon.cli(&["refresh", "reports"]).await.status.success());
    }
    // Visible: the start-up log, status (table and JSON), /v1/apps and /metrics.
    let logs = daemon.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("state files are sealed") && l.contains("credentials:state-key")),
        "{logs}"
    );
    let table = String::from_utf8(daemon.cli(&["status"]).await.stdout).unwrap();
    assert!(
        table.contains("state: sealed (credentials:state-key)"),
        "{table}"
    );
    let out = daemon.cli(&["status", "--format", "json"]).await;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json["state"],
        serde_json::json!({"sealed": true, "key_source": "credentials:state-key"})
    );
    let metrics = get_on_socket(&daemon.socket, "/metrics").await;
    assert!(
        metrics
            .body
            .lines()
            .any(|l| l == "iamtokend_state_sealed 1"),
        "{}",
        metrics.body
    );
    assert_eq!(daemon.stop().code(), Some(0));
    let before = presented(&env);
    assert_eq!(before.len(), 4);
    let files = state_files(&env);
    assert_eq!(
        files.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["reports.json"]
    );
    assert_sealed_format(&files[0].1);

    // Same key: the newest token (issued by the last refresh, never presented yet) is used.
    let daemon = daemon_with_key(&env, &creds).await;
    daemon.wait_state("reports", "ready", 10).await;
    let after = presented(&env);
    assert_eq!(after.len(), 5, "one call after restart");
    assert_eq!(env.calls_for("reports")[4].status, 200);
    assert!(!before.contains(&after[4]), "a stale token was presented");
    assert!(after[4].len() >= 16);
    assert_eq!(daemon.stop().code(), Some(0));
    // No token of the whole run in the files, before or after the restart.
    let files_after = state_files(&env);
    for token in &after {
        assert_absent(&files, token);
        assert_absent(&files_after, token);
    }
    assert!(
        !daemon_logs_hold(&env, &after),
        "a refresh token reached a log"
    );
}

/// Whether any daemon log of this test holds one of `tokens`.
fn daemon_logs_hold(env: &TestEnv, tokens: &[String]) -> bool {
    std::fs::read_dir(env.dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("daemon-")
        })
        .any(|p| {
            let log = std::fs::read_to_string(p).unwrap_or_default();
            tokens.iter().any(|t| log.contains(t.as_str()))
        })
}

/// Runs with one key, restarts with another: the file does not open, is moved aside with
/// the app and the reason logged, and the app falls back to its refresh_token_file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_key_moves_the_file_aside_and_the_app_falls_back() {
    let env = TestEnv::new(3600).await;
    // Grace: the seed stays valid after its successor was issued (but not used), so the
    // fallback to the seed can succeed.
    env.sim.set_rotation_grace(true);
    env.refresh_app("reports", SEED);
    let first = credentials(&env, "creds-1", &random_key(32));
    let daemon = daemon_with_key(&env, &first).await;
    daemon.wait_state("reports", "ready", 10).await;
    assert_eq!(daemon.stop().code(), Some(0));
    let sealed = std::fs::read(env.path("state/reports.json")).unwrap();

    let second = credentials(&env, "creds-2", &random_key(32));
    let daemon = daemon_with_key(&env, &second).await;
    daemon.wait_state("reports", "ready", 10).await;
    let calls = presented(&env);
    assert_eq!(calls[1], SEED, "it did not fall back to refresh_token_file");
    let logs = daemon.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("moved aside"))
        .unwrap_or_else(|| panic!("nothing moved aside:\n{logs}"));
    assert!(line.contains("reports"), "{line}");
    assert!(line.contains("does not open with this state key"), "{line}");
    let aside: Vec<String> = names(&env)
        .into_iter()
        .filter(|n| n.starts_with("reports.json.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "{:?}", names(&env));
    // Kept as it was, for whoever restores the first key.
    assert_eq!(
        std::fs::read(env.path("state").join(&aside[0])).unwrap(),
        sealed
    );
    // And the new file is sealed with the second key.
    assert_eq!(daemon.stop().code(), Some(0));
    assert_sealed_format(&std::fs::read(env.path("state/reports.json")).unwrap());
}

/// Key rotation: the new key as `state-key`, the old one as `state-key-previous`; every
/// file opens (no fallback: the newest token is presented) and is resealed with the new key
/// at start, so the next start needs the new key alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_with_the_previous_key_keeps_the_newest_token() {
    let env = TestEnv::new(3600).await;
    env.refresh_app("reports", SEED);
    let old = random_key(32);
    let new = random_key(32);
    let first = credentials(&env, "creds-old", &old);
    let daemon = daemon_with_key(&env, &first).await;
    daemon.wait_state("reports", "ready", 10).await;
    assert_eq!(daemon.stop().code(), Some(0));

    let rotating = credentials(&env, "creds-rotating", &new);
    std::fs::write(rotating.join("state-key-previous"), &old).unwrap();
    let daemon = daemon_with_key(&env, &rotating).await;
    daemon.wait_state("reports", "ready", 10).await;
    let calls = presented(&env);
    assert_eq!(calls.len(), 2);
    assert_ne!(
        calls[1], SEED,
        "fell back instead of opening with the previous key"
    );
    let logs = daemon.logs();
    assert!(logs.contains("resealing it with state-key"), "{logs}");
    assert!(!logs.contains("moved aside"), "{logs}");
    assert_eq!(daemon.stop().code(), Some(0));

    let only_new = credentials(&env, "creds-new", &new);
    let daemon = daemon_with_key(&env, &only_new).await;
    daemon.wait_state("reports", "ready", 10).await;
    let calls = presented(&env);
    assert_eq!(calls.len(), 3);
    assert!(
        !calls[..2].contains(&calls[2]),
        "the newest token was not presented"
    );
    assert!(!daemon.logs().contains("moved aside"), "{}", daemon.logs());
    assert_eq!(daemon.stop().code(), Some(0));
}

/// A sealed file cut short, or with one bit flipped: moved aside, fallback, the daemon runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_or_bit_flipped_file_is_moved_aside() {
    let env = TestEnv::new(3600).await;
    env.sim.set_rotation_grace(true);
    env.refresh_app("reports", SEED);
    let creds = credentials(&env, "creds", &random_key(64));
    let daemon = daemon_with_key(&env, &creds).await;
    daemon.wait_state("reports", "ready", 10).await;
    assert_eq!(daemon.stop().code(), Some(0));
    let good = std::fs::read(env.path("state/reports.json")).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&good).unwrap();
    let ct = json["ct"].as_str().unwrap().to_owned();
    let b64 = base64::engine::general_purpose::STANDARD;

    // Cut inside the ciphertext, the JSON kept whole (the tag is gone); the file cut short
    // (no longer JSON); one bit flipped in the middle of the ciphertext.
    let mut cut_json = json.clone();
    cut_json["ct"] = serde_json::Value::String(ct[..ct.len() - 8].to_owned());
    let mut raw = b64.decode(&ct).unwrap();
    let middle = raw.len() / 2;
    raw[middle] ^= 0x01;
    let flipped = String::from_utf8(good.clone())
        .unwrap()
        .replace(&ct, &b64.encode(&raw))
        .into_bytes();
    assert_eq!(flipped.len(), good.len());
    let cases: [(&str, Vec<u8>, &str); 3] = [
        (
            "ciphertext cut",
            cut_json.to_string().into_bytes(),
            "does not open",
        ),
        (
            "file cut",
            good[..good.len() / 2].to_vec(),
            "not a state file",
        ),
        ("bit flipped", flipped, "does not open"),
    ];
    for (case, bytes, reason) in cases {
        std::fs::write(env.path("state/reports.json"), &bytes).unwrap();
        let calls_before = presented(&env).len();
        let daemon = daemon_with_key(&env, &creds).await;
        daemon.wait_state("reports", "ready", 10).await;
        assert_eq!(presented(&env)[calls_before], SEED, "{case}: no fallback");
        let logs = daemon.logs();
        assert!(
            logs.lines()
                .any(|l| l.contains("moved aside") && l.contains("reports") && l.contains(reason)),
            "{case}:\n{logs}"
        );
        assert_eq!(daemon.stop().code(), Some(0));
        let aside = names(&env)
            .into_iter()
            .filter(|n| n.starts_with("reports.json.corrupt-"))
            .count();
        // Two rounds within one second share a `.corrupt-<secs>` name (the later replaces
        // the earlier): at least one, and the live file is a good sealed one again.
        assert!(aside >= 1, "{case}: {:?}", names(&env));
        assert_sealed_format(&std::fs::read(env.path("state/reports.json")).unwrap());
    }
}

/// An unsealed file from before sealing is read (its token presented) and rewritten sealed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsealed_file_is_migrated() {
    let env = TestEnv::new(3600).await;
    env.refresh_app("reports", SEED);
    let daemon = env.daemon().await;
    daemon.wait_state("reports", "ready", 10).await;
    assert!(daemon.cli(&["refresh", "reports"]).await.status.success());
    let table = String::from_utf8(daemon.cli(&["status"]).await.stdout).unwrap();
    assert!(table.contains("state: not sealed"), "{table}");
    let metrics = get_on_socket(&daemon.socket, "/metrics").await;
    assert!(metrics
        .body
        .lines()
        .any(|l| l == "iamtokend_state_sealed 0"));
    assert_eq!(daemon.stop().code(), Some(0));
    let plain = std::fs::read_to_string(env.path("state/reports.json")).unwrap();
    let held: serde_json::Value = serde_json::from_str(&plain).unwrap();
    let newest = held["refresh_token"].as_str().unwrap().to_owned();
    assert!(!presented(&env).contains(&newest));

    let creds = credentials(&env, "creds", &random_key(40));
    let daemon = daemon_with_key(&env, &creds).await;
    daemon.wait_state("reports", "ready", 10).await;
    assert_eq!(
        presented(&env)[2],
        newest,
        "the unsealed token was not used"
    );
    assert!(daemon
        .logs()
        .contains("state file rewritten sealed with state-key"));
    assert_eq!(daemon.stop().code(), Some(0));
    let files = state_files(&env);
    assert_eq!(files.len(), 1, "{:?}", names(&env));
    assert_sealed_format(&files[0].1);
    for token in presented(&env) {
        assert_absent(&files, &token);
    }
    assert_absent(&files, &newest);
}

/// `check-config` with `CREDENTIALS_DIRECTORY` as given (or unset).
fn check_config(env: &TestEnv, creds: Option<&Path>) -> std::process::Output {
    let mut cmd = Command::new(bin());
    cmd.args(["check-config", "--config"])
        .arg(env.main_file())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", env.dir.path());
    if let Some(creds) = creds {
        cmd.env("CREDENTIALS_DIRECTORY", creds);
    }
    cmd.output().unwrap()
}

/// One line of ours on stderr, exit 1, nothing listening.
fn refused(env: &TestEnv, daemon: Daemon) -> String {
    let log = daemon.log.clone();
    let status = daemon.wait_exit();
    let stderr = std::fs::read_to_string(log).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("iamtokend: "))
        .collect();
    assert_eq!(ours.len(), 1, "{stderr}");
    assert!(!stderr.contains("listening"), "{stderr}");
    assert!(!env.socket().exists());
    ours[0].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_without_a_key_and_a_short_key_refuse_to_start() {
    let env = TestEnv::new(3600).await;
    env.refresh_app("reports", SEED);
    env.write_main("[refresh]\nmin_lead = \"1s\"\n");
    let main = std::fs::read_to_string(env.main_file()).unwrap();
    std::fs::write(
        env.main_file(),
        main.replace("[state]\n", "[state]\nseal = \"required\"\n"),
    )
    .unwrap();
    let empty = env.path("no-creds");
    std::fs::create_dir_all(&empty).unwrap();
    for creds in [None, Some(empty.as_path())] {
        let vars: Vec<(&str, &str)> = creds
            .map(|c| ("CREDENTIALS_DIRECTORY", c.to_str().unwrap()))
            .into_iter()
            .collect();
        let line = refused(&env, env.spawn_daemon(&vars));
        assert!(
            line.starts_with("iamtokend: refusing to start: [state] seal = \"required\", but "),
            "{line}"
        );
        let out = check_config(&env, creds);
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("seal = \"required\", but"), "{stderr}");
    }
    assert!(!env.path("state/reports.json").exists());

    // A key under 32 bytes is an error in auto mode too, naming its length, not its bytes.
    env.write_main("[refresh]\nmin_lead = \"1s\"\n");
    let short = credentials(&env, "short", b"0123456789abcdef0123456789abcde");
    let line = refused(
        &env,
        env.spawn_daemon(&[("CREDENTIALS_DIRECTORY", short.to_str().unwrap())]),
    );
    assert!(
        line.contains("is 31 bytes; it must be at least 32"),
        "{line}"
    );
    assert!(!line.contains("0123456789"), "{line}");
    let out = check_config(&env, Some(&short));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is 31 bytes"));
    // With 32 bytes it checks out, and says the state will be sealed.
    let ok = credentials(&env, "ok", &random_key(32));
    let out = check_config(&env, Some(&ok));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("ok (1 app); state sealed"));
}

/// `seal = "off"` never seals, even with a key, and moves a sealed file aside (it cannot
/// read it) instead of overwriting it unsealed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_never_seals_and_sets_a_sealed_file_aside() {
    let env = TestEnv::new(3600).await;
    env.sim.set_rotation_grace(true);
    env.refresh_app("reports", SEED);
    let creds = credentials(&env, "creds", &random_key(32));
    let daemon = daemon_with_key(&env, &creds).await;
    daemon.wait_state("reports", "ready", 10).await;
    assert_eq!(daemon.stop().code(), Some(0));
    let sealed = std::fs::read(env.path("state/reports.json")).unwrap();
    assert_sealed_format(&sealed);

    let main = std::fs::read_to_string(env.main_file()).unwrap();
    std::fs::write(
        env.main_file(),
        main.replace("[state]\n", "[state]\nseal = \"off\"\n"),
    )
    .unwrap();
    let daemon = daemon_with_key(&env, &creds).await;
    daemon.wait_state("reports", "ready", 10).await;
    assert_eq!(presented(&env)[1], SEED);
    let logs = daemon.logs();
    assert!(
        logs.lines().any(|l| l.contains("moved aside")
            && l.contains("reports")
            && l.contains("sealed, but [state] seal = ")),
        "{logs}"
    );
    let out = daemon.cli(&["status", "--format", "json"]).await;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["state"]["sealed"], false);
    assert_eq!(daemon.stop().code(), Some(0));
    let plain: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.path("state/reports.json")).unwrap()).unwrap();
    assert!(plain["refresh_token"].is_string(), "{plain}");
    let aside: Vec<String> = names(&env)
        .into_iter()
        .filter(|n| n.starts_with("reports.json.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1);
    assert_eq!(
        std::fs::read(env.path("state").join(&aside[0])).unwrap(),
        sealed
    );
}

/// The key made the way an operator makes it (`systemd-creds encrypt`), decrypted the way
/// systemd does before the service starts (`systemd-creds decrypt` into the credentials
/// directory), then used. The null key (systemd 252 spells it `tpm2-absent`, later ones
/// `null`) needs neither a host key nor a TPM, so it runs in a container; real hosts use
/// `--with-key=auto`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_made_with_systemd_creds_seals_the_state() {
    if Command::new("systemd-creds")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: systemd-creds is not installed");
        return;
    }
    let env = TestEnv::new(3600).await;
    env.refresh_app("reports", SEED);
    let plain = env.path("state-key.plain");
    std::fs::write(&plain, random_key(32)).unwrap();
    let encrypted = env.path("state-key.cred");
    let made = ["null", "tpm2-absent"].iter().any(|with_key| {
        Command::new("systemd-creds")
            .args(["encrypt", "--name=state-key"])
            .arg(format!("--with-key={with_key}"))
            .arg(&plain)
            .arg(&encrypted)
            .output()
            .is_ok_and(|o| o.status.success())
    });
    assert!(
        made,
        "systemd-creds encrypt failed with both null-key spellings"
    );
    std::fs::remove_file(&plain).unwrap();
    let encrypted_bytes = std::fs::read(&encrypted).unwrap();
    let creds = env.path("creds");
    std::fs::create_dir_all(&creds).unwrap();
    let out = Command::new("systemd-creds")
        .args(["decrypt", "--name=state-key"])
        .arg(&encrypted)
        .arg(creds.join("state-key"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read(creds.join("state-key")).unwrap().len(), 32);

    let daemon = daemon_with_key(&env, &creds).await;
    daemon.wait_state("reports", "ready", 10).await;
    assert!(daemon.cli(&["refresh", "reports"]).await.status.success());
    assert_eq!(daemon.stop().code(), Some(0));
    let files = state_files(&env);
    assert_sealed_format(&files[0].1);
    // Restarted with a fresh decryption of the same credential: the same key.
    std::fs::remove_file(creds.join("state-key")).unwrap();
    std::fs::write(&encrypted, encrypted_bytes).unwrap();
    let out = Command::new("systemd-creds")
        .args(["decrypt", "--name=state-key"])
        .arg(&encrypted)
        .arg(creds.join("state-key"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let daemon = daemon_with_key(&env, &creds).await;
    daemon.wait_state("reports", "ready", 10).await;
    let calls = presented(&env);
    assert_eq!(calls.len(), 3);
    assert!(
        !calls[..2].contains(&calls[2]),
        "the newest token was not presented"
    );
    assert!(!daemon.logs().contains("moved aside"), "{}", daemon.logs());
    assert_eq!(daemon.stop().code(), Some(0));
    for token in &calls {
        assert_absent(&files, token);
    }
}
