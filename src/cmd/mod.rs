//! The subcommands. Each returns `Result<(), Failure>`; `main` alone turns that into an exit
//! code (0 ok, 1 failed, 2 usage, 3 daemon unreachable).

pub(crate) mod check_config;
pub(crate) mod clients;
pub(crate) mod dev;
pub(crate) mod exec;
pub(crate) mod fetch;
pub(crate) mod login;
pub(crate) mod serve;

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::cli::{Cli, Command};
use crate::client::{Answer, ClientError, SocketClient, TrustedServers};
use crate::config::paths::{self, Env};

/// A failed command: its exit code and one line for stderr.
#[derive(Debug)]
pub struct Failure {
    /// Exit code.
    pub code: u8,
    /// What to print (may be several lines for config diagnostics).
    pub message: String,
}

impl Failure {
    /// Exit 1: the daemon reported a failure, or the config is bad.
    pub(crate) fn failed(message: impl Into<String>) -> Failure {
        Failure {
            code: 1,
            message: message.into(),
        }
    }

    /// Exit 2: the command line is wrong.
    pub(crate) fn usage(message: impl Into<String>) -> Failure {
        Failure {
            code: 2,
            message: message.into(),
        }
    }
}

impl From<ClientError> for Failure {
    fn from(err: ClientError) -> Failure {
        let code = match err {
            ClientError::Unreachable { .. }
            | ClientError::Untrusted { .. }
            | ClientError::Timeout { .. } => 3,
            ClientError::Protocol(_) => 1,
        };
        Failure {
            code,
            message: err.to_string(),
        }
    }
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> Result<(), Failure> {
    // Before anything is read; `serve` logs the result once its logging is up.
    let hardened = holds_secrets(&cli.command).then(crate::harden::harden);
    let env = Env::from_process();
    let config_file = paths::config_file(cli.config.as_deref(), &env);
    match cli.command {
        Command::Completions { shell } => print_stdout(&shell.script()),
        Command::Serve { dev: true } => dev::run().await,
        Command::Serve { dev: false } => serve::run(&config_file, hardened).await,
        Command::CheckConfig => check_config::run(&config_file),
        Command::Fetch {
            app,
            format,
            show_secrets,
        } => fetch::run(&config_file, &app, format, show_secrets).await,
        command => {
            let sockets = match cli.socket.clone() {
                Some(socket) => vec![socket],
                None => client_sockets(&config_file, &env),
            };
            // The subcommand's own `--timeout` wins over the one before it.
            let timeout = command
                .client_args()
                .and_then(|a| a.timeout)
                .or(cli.timeout)
                .map_or(
                    crate::client::DEFAULT_TIMEOUT,
                    std::time::Duration::from_secs,
                );
            let client = SocketClient::with_candidates(sockets)
                .with_timeout(timeout)
                .with_trust(TrustedServers::new(cli.server_uid));
            match command {
                Command::Login {
                    app,
                    no_browser,
                    timeout,
                } => {
                    let options = login::Options {
                        open_browser: !no_browser,
                        timeout: std::time::Duration::from_secs(timeout),
                    };
                    login::run(&config_file, &app, &client, options).await
                }
                command => clients::run(command, &client).await,
            }
        }
    }
}

/// The commands that hold tokens, refresh tokens, assertions, codes or keys in memory.
fn holds_secrets(command: &Command) -> bool {
    matches!(
        command,
        Command::Serve { .. }
            | Command::Fetch { .. }
            | Command::Token { .. }
            | Command::CredentialProcess { .. }
            | Command::Login { .. }
    )
}

/// Where a client looks for the daemon without `--socket`: the config's `[server] socket` if
/// the main file is readable and sets it, else the default paths (the user socket, then the
/// system one). Only the main file is read (not the apps), so a client that may not read app
/// files still finds the socket.
fn client_sockets(config_file: &Path, env: &Env) -> Vec<PathBuf> {
    let configured = std::fs::read_to_string(config_file)
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
        .and_then(|table| {
            let socket = table.get("server")?.get("socket")?.as_str()?.to_owned();
            let socket = PathBuf::from(socket);
            Some(match config_file.parent() {
                Some(dir) if socket.is_relative() => dir.join(socket),
                _ => socket,
            })
        });
    paths::client_sockets(configured.as_deref(), env)
}

/// Prints to stdout; a closed pipe (`| head`) is not an error.
pub(crate) fn print_stdout(text: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Failure::failed(format!("cannot write to stdout: {e}"))),
    }
}

/// An error answer as a failure: the daemon's own sentence.
pub(crate) fn daemon_failure(answer: &Answer) -> Failure {
    Failure::failed(answer.error_message())
}
