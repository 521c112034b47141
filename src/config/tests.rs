//! Whole loads: the fixture trees under `tests/fixtures/config` (every diagnostic text and
//! position), the example config, defaults, the host seam faked, and property tests that
//! the loader never panics and reads back every well-formed config.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::main_file::default_refresh;
use super::system::System;
use super::*;

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Sorted subdirectories of `dir`.
fn cases(dir: &Path) -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    cases
}

/// Diagnostics as `check-config` prints them, paths relative to `case`.
fn relative(diags: &Diagnostics, case: &Path) -> String {
    diags
        .to_string()
        .replace(&format!("{}/", case.display()), "")
}

/// Every `invalid/<case>` yields exactly its `expected.txt` (whole-string compare, so
/// a wrong line or column fails), and every `valid/<case>` loads.
#[test]
fn fixture_trees() {
    let root = manifest_dir().join("tests/fixtures/config");
    let mut failures = Vec::new();

    let invalid = cases(&root.join("invalid"));
    assert!(invalid.len() >= 12, "only {} invalid cases", invalid.len());
    for case in &invalid {
        let expected = std::fs::read_to_string(case.join("expected.txt"))
            .unwrap_or_else(|e| panic!("{}: {e}", case.display()));
        match load(&case.join("iamtokend.toml")) {
            Ok(_) => failures.push(format!("{}: loaded, expected errors", case.display())),
            Err(diags) => {
                let got = relative(&diags, case);
                if got.trim_end() != expected.trim_end() {
                    failures.push(format!(
                        "{}:\n--- expected\n{}\n--- got\n{}\n",
                        case.display(),
                        expected.trim_end(),
                        got
                    ));
                }
            }
        }
    }
    for case in cases(&root.join("valid")) {
        if let Err(diags) = load(&case.join("iamtokend.toml")) {
            failures.push(format!(
                "{}:\n{}\n",
                case.display(),
                relative(&diags, &case)
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn example_config_is_valid() {
    let dir = manifest_dir().join("config");
    let config = load(&dir.join("iamtokend.toml")).unwrap_or_else(|d| panic!("{d}"));
    let names: Vec<&str> = config.apps.keys().map(String::as_str).collect();
    assert_eq!(names, ["analytics", "portal", "reports", "warehouse"]);
    let kinds: Vec<&str> = config
        .apps
        .values()
        .map(|a| a.grant.kind().as_str())
        .collect();
    assert_eq!(
        kinds,
        [
            "jwt-bearer",
            "authorization-code",
            "refresh-token",
            "token-exchange"
        ]
    );
    // The example shows the defaults, so it must equal an empty main file's result.
    assert_eq!(config.refresh, default_refresh());
    assert_eq!(config.server.socket_mode, 0o660);
    assert_eq!(config.log.format, LogFormat::Text);
    assert_eq!(config.log.level, "info");
    let analytics = &config.apps["analytics"];
    assert!(analytics.role.is_some() && analytics.access.is_some());
    match &config.apps["warehouse"].grant {
        Grant::TokenExchange { subject_app, .. } => assert_eq!(subject_app, "portal"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn minimal_gets_defaults() {
    let case = manifest_dir().join("tests/fixtures/config/valid/minimal");
    let config = load(&case.join("iamtokend.toml")).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(config.apps_dir, case.join("apps.d"));
    assert_eq!(
        config.server,
        ServerConfig {
            socket: None,
            socket_mode: 0o660,
            credentials_listen: None,
        }
    );
    assert_eq!(
        config.state,
        StateConfig {
            dir: None,
            seal: SealMode::Auto
        }
    );
    assert_eq!(config.refresh, default_refresh());
    assert_eq!(
        config.log,
        LogConfig {
            format: LogFormat::Text,
            level: "info".to_string()
        }
    );
    // Dotfiles, other extensions and subdirectories are ignored.
    assert_eq!(config.apps.keys().collect::<Vec<_>>(), ["app"]);
    let app = &config.apps["app"];
    assert_eq!(app.file, case.join("apps.d/app.toml"));
    assert_eq!(app.scopes, None);
    assert_eq!(app.endpoint_url, None);
    assert_eq!(app.aws, AwsConfig::default());
    assert_eq!(app.role, None);
    assert_eq!(app.access, None);
    assert_eq!(
        app.grant,
        Grant::JwtBearer {
            assertion: AssertionSource::File(case.join("apps.d/secrets/app.jwt"))
        }
    );
}

#[test]
fn full_sets_every_key() {
    let case = manifest_dir().join("tests/fixtures/config/valid/full");
    let config = load(&case.join("iamtokend.toml")).unwrap_or_else(|d| panic!("{d}"));
    let apps = case.join("apps");
    assert_eq!(config.apps_dir, apps);
    assert_eq!(config.server.socket, Some(case.join("run/iamtokend.sock")));
    assert_eq!(config.server.socket_mode, 0o600);
    assert_eq!(
        config.server.credentials_listen,
        Some("127.0.0.1:0".parse().unwrap())
    );
    assert_eq!(config.state.dir, Some(PathBuf::from("/var/lib/custom")));
    assert_eq!(config.state.seal, SealMode::Off);
    assert_eq!(
        config.refresh,
        RefreshConfig {
            at: 0.75,
            jitter: 0.0,
            min_lead: Duration::from_secs(90),
            max_backoff: Duration::from_secs(5400),
            max_concurrent: 2,
        }
    );
    assert_eq!(config.log.format, LogFormat::Json);
    assert_eq!(config.log.level, "debug,hyper=info");

    let a = &config.apps["a-1"];
    assert_eq!(
        a.scopes,
        Some(vec!["openid".to_string(), "aws".to_string()])
    );
    assert_eq!(a.endpoint_url.as_deref(), Some("http://127.0.0.1:8080"));
    assert_eq!(
        a.grant,
        Grant::JwtBearer {
            assertion: AssertionSource::Command(vec![
                "/bin/get-jwt".to_string(),
                "--aud".to_string(),
                "idc".to_string()
            ])
        }
    );
    assert_eq!(a.aws.profile.as_deref(), Some("broker"));
    assert_eq!(a.aws.connect_timeout, Duration::from_secs(2));
    assert_eq!(a.aws.read_timeout, Duration::from_secs(90));
    let bundle = a.aws.ca_bundle.as_ref().unwrap();
    assert_eq!(bundle.path, apps.join("intercept-ca.pem"));
    assert_eq!(bundle.certificates, 1);
    assert!(bundle.pem.starts_with(b"-----BEGIN CERTIFICATE-----"));
    assert_eq!(config.apps["b"].aws, AwsConfig::default());
    let role = a.role.as_ref().unwrap();
    assert_eq!(role.session_name, "iamtokend-a-1");
    assert_eq!(role.duration, Duration::from_secs(12 * 3600));
    assert_eq!(
        a.access,
        Some(AccessConfig {
            uids: vec![0, 1000],
            users: vec![Principal {
                name: "root".to_string(),
                id: 0
            }],
            groups: vec![Principal {
                name: "root".to_string(),
                id: 0
            }],
        })
    );
    assert_eq!(
        config.apps["b"].grant,
        Grant::TokenExchange {
            subject_app: "c".to_string(),
            requested_token_type: RequestedTokenType::RefreshToken
        }
    );
    assert_eq!(
        config.apps["c"].grant,
        Grant::TokenExchange {
            subject_app: "d.e_f".to_string(),
            requested_token_type: RequestedTokenType::AccessToken
        }
    );
    let d = &config.apps["d.e_f"];
    assert_eq!(d.role.as_ref().unwrap().duration, Duration::from_secs(3600));
    assert_eq!(
        config.apps["r"].grant,
        Grant::RefreshToken {
            refresh_token_file: apps.join("../tokens/r.refresh")
        }
    );
}

#[test]
fn default_session_name_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("apps.d")).unwrap();
    std::fs::write(dir.path().join("iamtokend.toml"), "").unwrap();
    let name = "n".repeat(70);
    std::fs::write(
        dir.path().join(format!("apps.d/{name}.toml")),
        "client_id = \"arn:aws:sso::123456789012:application/ssoins-1/apl-2\"\n\
         region = \"us-east-1\"\ngrant = \"jwt-bearer\"\nassertion_file = \"/a\"\n\
         [role]\narn = \"arn:aws:iam::123456789012:role/R\"\n",
    )
    .unwrap();
    let config = load(&dir.path().join("iamtokend.toml")).unwrap_or_else(|d| panic!("{d}"));
    let session = &config.apps[&name].role.as_ref().unwrap().session_name;
    assert_eq!(session.len(), 64);
    assert!(session.starts_with("iamtokend-nnn"));
}

/// Messages point at keys; the values written there (which may be secrets) never
/// appear in the output.
#[test]
fn secrets_are_not_echoed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("apps.d")).unwrap();
    std::fs::write(dir.path().join("iamtokend.toml"), "").unwrap();
    let canary = "CANARY-s3cr3t";
    std::fs::write(
        dir.path().join("apps.d/a.toml"),
        format!(
            "client_id = \"{canary}\"\nregion = \"{canary}\"\ngrant = \"{canary}\"\n\
             endpoint_url = \"{canary}\"\nassertion_command = [1, \"{canary}\"]\n\
             [role]\narn = \"{canary}\"\nsession_name = \"{canary} \"\n\
             endpoint_url = \"https://{canary}@\"\n"
        ),
    )
    .unwrap();
    let diags = load(&dir.path().join("iamtokend.toml")).unwrap_err();
    assert!(diags.0.len() >= 6, "{diags}");
    assert!(!diags.to_string().contains("CANARY"), "{diags}");
}

#[test]
fn never_panics_on_odd_input() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("apps.d")).unwrap();
    std::fs::write(dir.path().join("iamtokend.toml"), "").unwrap();
    let inputs: &[&[u8]] = &[
        b"",
        b"\xff\xfe",
        b"[[role]]\n[[role]]\n",
        b"role = []\naccess = { uids = [1e3, 99999999999] }\n",
        b"grant = \"jwt-bearer\"\nassertion_command = [[]]\n",
        b"grant = \"token-exchange\"\nsubject_app = 3\nrequested_token_type = 4\n",
        b"x.y.z = 1\n\"\" = 2\n'\xc3\xa9' = 3\n",
        b"scopes = [\"a\", [\"b\"]]\nendpoint_url = \"http://[::1\"\n",
        b"endpoint_url = \"http://:80\"\n[aws]\nprofile = 1\nzone = 2\n",
    ];
    for input in inputs {
        std::fs::write(dir.path().join("apps.d/a.toml"), input).unwrap();
        let result = load(&dir.path().join("iamtokend.toml"));
        assert!(result.is_err(), "{:?}", String::from_utf8_lossy(input));
    }
}

#[test]
fn diagnostic_display() {
    let d = |line, col| Diagnostic {
        file: PathBuf::from("apps.d/a.toml"),
        line,
        col,
        message: "boom".to_string(),
    };
    assert_eq!(d(3, 7).to_string(), "apps.d/a.toml:3:7: boom");
    assert_eq!(d(0, 0).to_string(), "apps.d/a.toml: boom");
    assert_eq!(
        Diagnostics(vec![d(1, 1), d(0, 0)]).to_string(),
        "apps.d/a.toml:1:1: boom\napps.d/a.toml: boom"
    );
}

/// A made-up host: users and groups that exist only here, one name whose look-up fails,
/// and a `ca_bundle` that cannot be read.
struct FakeHost;

impl System for FakeHost {
    fn user_id(&self, name: &str) -> Result<Option<u32>, String> {
        match name {
            "alice" => Ok(Some(4242)),
            "broken" => Err("NSS is down".to_string()),
            _ => Ok(None),
        }
    }

    fn group_id(&self, name: &str) -> Result<Option<u32>, String> {
        match name {
            "ops" => Ok(Some(777)),
            _ => Ok(None),
        }
    }

    fn read_ca_bundle(&self, _path: &Path) -> std::io::Result<Vec<u8>> {
        Err(std::io::Error::other("fake read error"))
    }

    fn dir_mode(&self, dir: &Path) -> std::io::Result<Option<u32>> {
        super::system::Host.dir_mode(dir)
    }

    fn env(&self) -> paths::Env {
        paths::Env::for_test(&[], false, Path::new("/home/fake"))
    }
}

/// The `[access]` names and the `ca_bundle` go through the [`System`] seam: a fake host's
/// answers become the resolved ids and the diagnostics, at each element.
#[test]
fn host_lookups_go_through_the_seam() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("apps.d")).unwrap();
    std::fs::write(dir.path().join("iamtokend.toml"), "").unwrap();
    let app = "client_id = \"arn:aws:sso::123456789012:application/ssoins-1/apl-2\"\n\
               region = \"us-east-1\"\ngrant = \"jwt-bearer\"\nassertion_file = \"/a\"\n\
               [access]\nusers = [\"alice\"]\ngroups = [\"ops\"]\n";
    std::fs::write(dir.path().join("apps.d/a.toml"), app).unwrap();
    let main = dir.path().join("iamtokend.toml");
    let config = load_with(&main, &FakeHost).unwrap_or_else(|d| panic!("{d}"));
    let access = config.apps["a"].access.as_ref().unwrap();
    assert_eq!(
        (access.users[0].id, access.groups[0].id),
        (4242, 777),
        "{access:?}"
    );

    let app = "client_id = \"arn:aws:sso::123456789012:application/ssoins-1/apl-2\"\n\
               region = \"us-east-1\"\ngrant = \"jwt-bearer\"\nassertion_file = \"/a\"\n\
               [access]\nusers = [\"alice\", \"broken\", \"bob\"]\ngroups = [\"wheel\"]\n\
               [aws]\nca_bundle = \"ca.pem\"\n";
    std::fs::write(dir.path().join("apps.d/a.toml"), app).unwrap();
    let diags = load_with(&main, &FakeHost).unwrap_err();
    let got = relative(&diags, dir.path());
    assert_eq!(
        got,
        "apps.d/a.toml:6:19: cannot look up user `broken`: NSS is down\n\
         apps.d/a.toml:6:29: user `bob` does not exist\n\
         apps.d/a.toml:7:11: group `wheel` does not exist\n\
         apps.d/a.toml:9:13: `ca_bundle`: cannot read apps.d/ca.pem: fake read error"
    );
}

/// Property tests: the loader never panics on any text, and every well-formed config (random
/// values inside the documented bounds) loads with no diagnostic and the values written.
mod proptests {
    use super::*;
    use proptest::prelude::*;

    /// A config tree in a temp dir: `main` as the main file, `app` as `apps.d/a.toml`.
    fn load_texts(main: &[u8], app: &[u8]) -> Result<Config, crate::config::Diagnostics> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("apps.d")).unwrap();
        std::fs::write(dir.path().join("iamtokend.toml"), main).unwrap();
        std::fs::write(dir.path().join("apps.d/a.toml"), app).unwrap();
        load(&dir.path().join("iamtokend.toml"))
    }

    /// TOML-ish text: the characters TOML is made of, so the parser gets past the first byte.
    fn tomlish() -> impl Strategy<Value = String> {
        let line = prop_oneof![
            "[a-z_]{1,12} = \"[ -~]{0,20}\"",
            "[a-z_]{1,12} = [0-9-]{1,12}",
            "[a-z_]{1,12} = \\[[\"a-z0-9, ]{0,20}\\]",
            "\\[{1,2}[a-z_.]{0,12}\\]{1,2}",
            "[a-z_]{1,12} = [0-9]{1,3}(ms|s|m|h|d|x)?",
            "[ -~]{0,30}",
        ];
        prop::collection::vec(line, 0..12).prop_map(|lines| lines.join("\n"))
    }

    /// Keys the app files know, with values of every type.
    fn app_key_soup() -> impl Strategy<Value = String> {
        let key = prop::sample::select(vec![
            "client_id",
            "region",
            "grant",
            "scopes",
            "endpoint_url",
            "assertion_file",
            "assertion_command",
            "refresh_token_file",
            "subject_app",
            "requested_token_type",
            "redirect_uri",
            "aws.profile",
            "aws.connect_timeout",
            "aws.read_timeout",
            "aws.ca_bundle",
            "role.arn",
            "role.duration",
            "role.session_name",
            "access.uids",
            "access.users",
            "access.groups",
        ]);
        let value = prop_oneof![
            Just("\"jwt-bearer\"".to_string()),
            Just("\"token-exchange\"".to_string()),
            Just("\"a\"".to_string()),
            Just("\"5m\"".to_string()),
            Just("[\"root\", \"\"]".to_string()),
            Just("[-1, 0, 4294967296]".to_string()),
            Just("{ x = 1 }".to_string()),
            Just("1e400".to_string()),
            Just("nan".to_string()),
            "\"[ -~]{0,24}\"",
            "-?[0-9]{1,20}",
        ];
        prop::collection::vec((key, value), 0..10).prop_map(|kvs| {
            kvs.into_iter()
                .map(|(k, v)| format!("{k} = {v}"))
                .collect::<Vec<_>>()
                .join("\n")
        })
    }

    fn duration_text(ms: u64) -> String {
        if ms.is_multiple_of(3_600_000) {
            format!("{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) {
            format!("{}m", ms / 60_000)
        } else if ms.is_multiple_of(1000) {
            format!("{}s", ms / 1000)
        } else {
            format!("{ms}ms")
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

        #[test]
        fn any_bytes_never_panic(main in prop::collection::vec(any::<u8>(), 0..200),
                                 app in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = load_texts(&main, &app);
        }

        #[test]
        fn tomlish_text_never_panics(main in tomlish(), app in tomlish()) {
            let _ = load_texts(main.as_bytes(), app.as_bytes());
        }

        #[test]
        fn app_keys_with_odd_values_never_panic(app in app_key_soup()) {
            // Dotted keys make the tables; every diagnostic has a position in the file.
            if let Err(diags) = load_texts(b"", app.as_bytes()) {
                for d in &diags.0 {
                    prop_assert!(!d.message.is_empty());
                    prop_assert!(d.line <= app.lines().count() + 1, "{d}");
                }
            }
        }

        /// Random values inside every documented bound: loads, and reads back what was written.
        #[test]
        fn valid_configs_load_with_their_values(
            at in 0.2f64..0.8,
            jitter in 0.0f64..0.15,
            min_lead_s in 0u64..7200,
            max_backoff_s in 1u64..7200,
            max_concurrent in 1usize..64,
            mode in 0u32..0o777,
            json_logs in any::<bool>(),
            scopes in prop::option::of(prop::collection::vec("[a-z:_]{1,20}", 1..5)),
            connect_ms in 100u64..300_000,
            read_s in 1u64..600,
            role_minutes in 15u64..=720,
            uids in prop::collection::vec(any::<u32>(), 0..4),
            grant in 0usize..3,
        ) {
            let main = format!(
                "[server]\nsocket_mode = \"{mode:o}\"\n[refresh]\nat = {at}\njitter = {jitter}\n\
                 min_lead = \"{}\"\nmax_backoff = \"{}\"\nmax_concurrent = {max_concurrent}\n\
                 [log]\nformat = \"{}\"\n",
                duration_text(min_lead_s * 1000),
                duration_text(max_backoff_s * 1000),
                if json_logs { "json" } else { "text" },
            );
            let scopes_line = scopes
                .as_ref()
                .map(|s| format!("scopes = {s:?}\n"))
                .unwrap_or_default();
            let grant_lines = match grant {
                0 => "grant = \"jwt-bearer\"\nassertion_file = \"a.jwt\"\n",
                1 => "grant = \"refresh-token\"\nrefresh_token_file = \"a.refresh\"\n",
                _ => "grant = \"authorization-code\"\nredirect_uri = \"http://127.0.0.1:8400/cb\"\n",
            };
            let app = format!(
                "client_id = \"arn:aws:sso::123456789012:application/ssoins-1/apl-2\"\n\
                 region = \"eu-west-3\"\n{scopes_line}{grant_lines}\
                 [aws]\nconnect_timeout = \"{}\"\nread_timeout = \"{}\"\n\
                 [role]\narn = \"arn:aws:iam::123456789012:role/R\"\nduration = \"{}\"\n\
                 [access]\nuids = {uids:?}\nusers = [\"root\"]\ngroups = [\"root\"]\n",
                duration_text(connect_ms),
                duration_text(read_s * 1000),
                duration_text(role_minutes * 60_000),
            );
            let config = match load_texts(main.as_bytes(), app.as_bytes()) {
                Ok(config) => config,
                Err(diags) => return Err(TestCaseError::fail(format!("{diags}\n--\n{main}\n--\n{app}"))),
            };
            prop_assert_eq!(config.server.socket_mode, mode);
            prop_assert_eq!(config.refresh.at, at);
            prop_assert_eq!(config.refresh.jitter, jitter);
            prop_assert_eq!(config.refresh.min_lead, Duration::from_secs(min_lead_s));
            prop_assert_eq!(config.refresh.max_backoff, Duration::from_secs(max_backoff_s));
            prop_assert_eq!(config.refresh.max_concurrent, max_concurrent);
            let a = &config.apps["a"];
            prop_assert_eq!(&a.scopes, &scopes);
            prop_assert_eq!(a.aws.connect_timeout, Duration::from_millis(connect_ms));
            prop_assert_eq!(a.aws.read_timeout, Duration::from_secs(read_s));
            prop_assert_eq!(a.role.as_ref().unwrap().duration, Duration::from_secs(role_minutes * 60));
            let access = a.access.as_ref().unwrap();
            prop_assert_eq!(&access.uids, &uids);
            prop_assert_eq!(access.users[0].id, 0);
            prop_assert_eq!(access.groups[0].id, 0);
        }
    }
}

/// `[[sink]]`: every value read back, and each problem at its value (relative path, a
/// missing or world-writable directory, a bad mode or content, a credentials content
/// without `[role]`, unknown owner names) and the whole-config ones (two sinks on one path
/// across apps, a sink in the state dir or on the socket).
#[test]
fn sinks_are_checked_at_their_values() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("apps.d")).unwrap();
    std::fs::create_dir(root.join("out")).unwrap();
    std::fs::create_dir(root.join("open")).unwrap();
    std::fs::set_permissions(root.join("open"), std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::create_dir(root.join("state")).unwrap();
    let r = root.display();
    let main = root.join("iamtokend.toml");
    std::fs::write(
        &main,
        format!("[server]\nsocket = \"{r}/out/d.sock\"\n[state]\ndir = \"{r}/state\"\n"),
    )
    .unwrap();
    let head = "client_id = \"arn:aws:sso::123456789012:application/ssoins-1/apl-2\"\n\
                region = \"us-east-1\"\ngrant = \"jwt-bearer\"\nassertion_file = \"/a\"\n";
    let role = "[role]\narn = \"arn:aws:iam::123456789012:role/R\"\n";
    std::fs::write(
        root.join("apps.d/a.toml"),
        format!(
            "{head}{role}[[sink]]\npath = \"{r}/out/token\"\ncontent = \"access_token\"\n\
             [[sink]]\npath = \"{r}/out/creds\"\ncontent = \"aws_credentials\"\nmode = \"0640\"\n\
             user = \"alice\"\ngroup = 777\n"
        ),
    )
    .unwrap();
    let config = load_with(&main, &FakeHost).unwrap_or_else(|d| panic!("{d}"));
    let sinks = &config.apps["a"].sinks;
    assert_eq!(sinks.len(), 2);
    assert_eq!(
        (sinks[0].content, sinks[0].mode, &sinks[0].user),
        (SinkContent::AccessToken, 0o600, &None)
    );
    assert_eq!(sinks[1].path, root.join("out/creds"));
    assert_eq!(
        (
            sinks[1].content,
            sinks[1].mode,
            sinks[1].user.as_ref().map(|u| u.id),
            sinks[1].group.as_ref().map(|g| g.id)
        ),
        (SinkContent::AwsCredentials, 0o640, Some(4242), Some(777))
    );

    // Each line of the sink tables below, 1-based: line 5 is the first `[[sink]]`.
    std::fs::write(
        root.join("apps.d/b.toml"),
        format!(
            "{head}[[sink]]\npath = \"relative/token\"\ncontent = \"access_token\"\n\
             [[sink]]\npath = \"{r}/missing/token\"\ncontent = \"token_json\"\n\
             [[sink]]\npath = \"{r}/open/token\"\ncontent = \"token_json\"\n\
             [[sink]]\npath = \"{r}/out/token\"\ncontent = \"credentials_json\"\nmode = \"644\"\n\
             [[sink]]\npath = \"{r}/out/x\"\ncontent = \"jwt\"\nmode = \"0999\"\nuser = \"bob\"\ngroup = \"nogroup\"\n\
             [[sink]]\npath = \"{r}/state/token\"\ncontent = \"access_token\"\n\
             [[sink]]\npath = \"{r}/out/d.sock\"\ncontent = \"access_token\"\n\
             [[sink]]\npath = \"{r}/out/token\"\ncontent = \"token_json\"\ncolour = 1\n\
             [[sink]]\npath = \"{r}/out/n\"\ncontent = \"access_token\"\nsignal = \"WINCH\"\npid_file = \"/p\"\nnotify = []\n\
             [[sink]]\npath = \"{r}/out/m\"\ncontent = \"access_token\"\nsignal = \"HUP\"\n\
             [[sink]]\npath = \"{r}/out/o\"\ncontent = \"access_token\"\nsignal = \"SIGHUP\"\npid_file = \"p\"\n"
        ),
    )
    .unwrap();
    let diags = load_with(&main, &FakeHost).unwrap_err();
    let got = relative(&diags, root);
    assert_eq!(
        got,
        format!(
            "apps.d/b.toml:6:8: `path` must be absolute, not relative/token\n\
             apps.d/b.toml:9:8: the directory {r}/missing of `path` does not exist\n\
             apps.d/b.toml:12:8: the directory {r}/open of `path` is writable by everyone (mode 0777); use a directory only the readers' owner can write\n\
             apps.d/b.toml:16:11: `content = \"credentials_json\"` needs a [role] in this app (role credentials are what it holds)\n\
             apps.d/b.toml:20:11: `content` must be one of access_token, token_json, credentials_json, aws_credentials\n\
             apps.d/b.toml:21:8: `mode` must be an octal string like \"0660\"\n\
             apps.d/b.toml:22:8: user `bob` does not exist\n\
             apps.d/b.toml:23:9: group `nogroup` does not exist\n\
             apps.d/b.toml:25:8: `path` {r}/state/token is inside the state dir {r}/state\n\
             apps.d/b.toml:28:8: `path` {r}/out/d.sock is the daemon's socket\n\
             apps.d/b.toml:31:8: `path` {r}/out/token is already a sink of app `a` (apps.d/a.toml:8:8)\n\
             apps.d/b.toml:33:1: unknown key `colour` in [sink]\n\
             apps.d/b.toml:37:10: `signal` must be one of HUP, USR1, USR2, INT, TERM\n\
             apps.d/b.toml:39:10: `notify` must be a non-empty array of strings (program first, then its arguments)\n\
             apps.d/b.toml:43:10: `signal` needs a `pid_file` (whom to send it to)\n\
             apps.d/b.toml:48:12: `pid_file` must be absolute, not p"
        )
        .replace(&format!("{r}/"), "")
    );
}
