//! The daemon's own secrets: its AWS keys from a systemd credential (the documented
//! `LoadCredential=` drop-in), and `check-config`'s warning for secret files that others can read.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{bin, TestEnv};

/// What systemd does for `LoadCredential=aws-credentials:...`: a credentials directory holding
/// the file, mode 0400. Returns the directory and the path `%d/aws-credentials` expands to.
fn credentials_directory(env: &TestEnv, access_key_id: &str, secret: &str) -> (PathBuf, PathBuf) {
    let dir = env.path("credentials");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let file = dir.join("aws-credentials");
    std::fs::write(
        &file,
        format!(
            "[default]\naws_access_key_id = {access_key_id}\naws_secret_access_key = {secret}\n"
        ),
    )
    .unwrap();
    chmod(&file, 0o400);
    (dir, file)
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The simulator's keys only in `$CREDENTIALS_DIRECTORY/aws-credentials`, none in the
/// environment: the daemon's calls are signed with them and the simulator accepts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_signs_with_the_keys_of_the_credentials_directory() {
    let env = TestEnv::new(3600).await;
    env.jwt_app("analytics");
    let (dir, file) = credentials_directory(
        &env,
        &env.options.access_key_id,
        &env.options.secret_access_key,
    );
    let daemon = env.spawn_daemon_without(
        &["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"],
        &[
            ("CREDENTIALS_DIRECTORY", dir.to_str().unwrap()),
            ("AWS_SHARED_CREDENTIALS_FILE", file.to_str().unwrap()),
        ],
    );
    daemon.wait_listening().await;
    daemon.wait_state("analytics", "ready", 10).await;
    assert!(!daemon.token("analytics").await.is_empty());
    let calls = env.calls_for("analytics");
    assert!(!calls.is_empty());
    for call in &calls {
        assert!(call.signature_valid, "{call:?}");
        assert_eq!(
            call.access_key_id.as_deref(),
            Some(env.options.access_key_id.as_str())
        );
    }
}

/// The same with a wrong secret key in that file: every call is refused as badly signed, so
/// the file (not some other source) is what the daemon signs with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_in_the_credentials_directory_is_refused() {
    let env = TestEnv::new(3600).await;
    env.jwt_app("analytics");
    let (dir, file) = credentials_directory(&env, &env.options.access_key_id, "not-the-secret");
    let daemon = env.spawn_daemon_without(
        &["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"],
        &[
            ("CREDENTIALS_DIRECTORY", dir.to_str().unwrap()),
            ("AWS_SHARED_CREDENTIALS_FILE", file.to_str().unwrap()),
        ],
    );
    daemon.wait_listening().await;
    let row = daemon.wait_state("analytics", "failing", 10).await;
    assert_eq!(row["last_error"]["code"], "invalid_signature", "{row}");
    let calls = env.calls_for("analytics");
    assert!(!calls.is_empty());
    for call in &calls {
        assert!(!call.signature_valid, "{call:?}");
        assert_eq!(
            call.access_key_id.as_deref(),
            Some(env.options.access_key_id.as_str())
        );
    }
}

/// `check-config` names each secret file its group or others may read, on stderr, and
/// still exits 0; once they are 0600 it says nothing but "ok".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_warns_about_secret_files_others_can_read() {
    let env = TestEnv::new(3600).await;
    env.jwt_app("analytics");
    env.refresh_app("seeded", "seed-refresh-token");
    let jwt = env.path("analytics.jwt");
    let seed = env.path("seeded.refresh");
    let creds = env.path("aws-credentials");
    std::fs::write(&creds, "[default]\n").unwrap();
    chmod(&jwt, 0o640);
    chmod(&seed, 0o600);
    chmod(&creds, 0o604);
    let check = || {
        Command::new(bin())
            .args(["check-config", "--config"])
            .arg(env.main_file())
            .env("AWS_SHARED_CREDENTIALS_FILE", &creds)
            .output()
            .unwrap()
    };

    let out = check();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(out.stdout.is_empty());
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("iamtokend: warning: "))
        .collect();
    assert_eq!(warnings.len(), 2, "{stderr}");
    assert!(
        warnings[0].contains(&format!(
            "{}: app analytics: `assertion_file`",
            jwt.display()
        )) && warnings[0].contains("mode 0640"),
        "{stderr}"
    );
    assert!(
        warnings[1].contains(&format!("{}: AWS_SHARED_CREDENTIALS_FILE", creds.display()))
            && warnings[1].contains("mode 0604"),
        "{stderr}"
    );
    assert!(!stderr.contains("seeded.refresh"), "{stderr}");
    assert!(stderr.contains("ok (2 apps)"), "{stderr}");

    chmod(&jwt, 0o600);
    chmod(&creds, 0o600);
    chmod(&seed, 0o644);
    let out = check();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(stderr.lines().count(), 2, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}: app seeded: `refresh_token_file`",
            seed.display()
        )),
        "{stderr}"
    );

    chmod(&seed, 0o600);
    let out = check();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("ok (2 apps)"), "{stderr}");
}
