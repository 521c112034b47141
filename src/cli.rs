//! The command line of CONTRACT §2, as clap derive types. No I/O here.

use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

/// Brokers AWS IAM Identity Center tokens to local programs over a Unix socket.
#[derive(Debug, Parser)]
#[command(name = "iamtokend", version, about)]
pub struct Cli {
    /// The daemon's socket (client subcommands).
    #[arg(long, global = true, env = "IAMTOKEND_SOCKET", value_name = "PATH")]
    pub(crate) socket: Option<PathBuf>,
    /// The main config file.
    #[arg(long, global = true, env = "IAMTOKEND_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// How long a client subcommand waits for the daemon's answer, in seconds (default 60;
    /// `login --timeout` is the wait for the browser instead).
    #[arg(long, env = "IAMTOKEND_TIMEOUT", value_name = "SECS", value_parser = timeout_secs())]
    pub(crate) timeout: Option<u64>,
    /// Also believe a daemon running as this uid (instead of the `iamtokend` user's); root
    /// and your own uid are always believed.
    #[arg(long, global = true, env = "IAMTOKEND_SERVER_UID", value_name = "UID")]
    pub(crate) server_uid: Option<u32>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground.
    Serve {
        /// Run against a built-in simulated Identity Center with demo apps of every grant.
        #[arg(long)]
        dev: bool,
    },
    /// Validate the config; print FILE:LINE:COL: message per problem.
    CheckConfig,
    /// Print an app's access token.
    Token {
        /// The flags of every client subcommand.
        #[command(flatten)]
        client: ClientArgs,
        /// The app.
        app: String,
        /// Refresh first if the cached token has fewer seconds left than this.
        #[arg(long, value_name = "SECS")]
        min_ttl: Option<u64>,
        /// raw: the token and a newline; json: the socket's token JSON.
        #[arg(long, value_enum, default_value_t = TokenFormat::Raw)]
        format: TokenFormat,
    },
    /// Print credential_process JSON for an app with a [role].
    CredentialProcess {
        /// The flags of every client subcommand.
        #[command(flatten)]
        client: ClientArgs,
        /// The app.
        app: String,
    },
    /// Run CMD with the app's AWS credentials from the credentials endpoint; exit with its
    /// status.
    Exec {
        /// The flags of every client subcommand.
        #[command(flatten)]
        client: ClientArgs,
        /// The app (it needs a [role]).
        app: String,
        /// The command and its arguments (`--` before them only if CMD looks like a flag).
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "CMD"
        )]
        command: Vec<std::ffi::OsString>,
    },
    /// One row per app: state, expiry, next refresh, last error.
    Status {
        /// The flags of every client subcommand.
        #[command(flatten)]
        client: ClientArgs,
        /// Output format.
        #[arg(long, value_enum, default_value_t = StatusFormat::Table)]
        format: StatusFormat,
    },
    /// Refresh an app's token now and wait for the result.
    Refresh {
        /// The flags of every client subcommand.
        #[command(flatten)]
        client: ClientArgs,
        /// The app.
        app: String,
    },
    /// Run an app's grant once, without a daemon, and print what Identity Center answered.
    Fetch {
        /// The app.
        app: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = FetchFormat::Text)]
        format: FetchFormat,
        /// Print tokens in full instead of masked.
        #[arg(long)]
        show_secrets: bool,
    },
    /// Authorization-code bootstrap with PKCE.
    Login {
        /// The app.
        app: String,
        /// Print the URL only; do not open a browser.
        #[arg(long)]
        no_browser: bool,
        /// How long to wait for the browser's redirect, in seconds.
        #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=3600))]
        timeout: u64,
    },
    /// Print a completion script for SHELL on stdout.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: CompletionShell,
    },
}

impl Command {
    /// The client flags of a client subcommand (`None` for the others, and for `login`, whose
    /// `--timeout` is the wait for the browser).
    pub(crate) fn client_args(&self) -> Option<ClientArgs> {
        match self {
            Command::Token { client, .. }
            | Command::CredentialProcess { client, .. }
            | Command::Exec { client, .. }
            | Command::Status { client, .. }
            | Command::Refresh { client, .. } => Some(*client),
            Command::Serve { .. }
            | Command::CheckConfig
            | Command::Fetch { .. }
            | Command::Login { .. }
            | Command::Completions { .. } => None,
        }
    }
}

/// Flags every client subcommand takes after its name too.
#[derive(Debug, Clone, Copy, Default, Args)]
pub struct ClientArgs {
    /// How long to wait for the daemon's answer, in seconds (default 60).
    #[arg(long, value_name = "SECS", value_parser = timeout_secs())]
    pub(crate) timeout: Option<u64>,
}

fn timeout_secs() -> clap::builder::RangedU64ValueParser {
    clap::value_parser!(u64).range(1..=3600)
}

/// `token --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TokenFormat {
    /// The token and a newline.
    Raw,
    /// The token JSON.
    Json,
}

/// `status --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusFormat {
    /// Aligned columns.
    Table,
    /// The `/v1/apps` JSON.
    Json,
}

/// `fetch --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FetchFormat {
    /// `field: value` lines.
    Text,
    /// One JSON object with the service's member names.
    Json,
    /// Aligned columns.
    Table,
}

/// `completions SHELL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompletionShell {
    /// Bash (bash-completion).
    Bash,
    /// Zsh.
    Zsh,
    /// Fish.
    Fish,
}

impl CompletionShell {
    /// The static completion script for this shell, from these definitions (subcommands,
    /// options, `--format` values); the packaged copies under `pkg/completions/` are these
    /// bytes. App names are not completed: see the README.
    pub fn script(self) -> String {
        let shell = match self {
            CompletionShell::Bash => clap_complete::Shell::Bash,
            CompletionShell::Zsh => clap_complete::Shell::Zsh,
            CompletionShell::Fish => clap_complete::Shell::Fish,
        };
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "iamtokend", &mut out);
        // clap writes UTF-8; lossy only so that this can never panic.
        String::from_utf8_lossy(&out).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_take_bash_zsh_fish_and_refuse_other_shells() {
        for (shell, marker) in [
            (CompletionShell::Bash, "complete -F _iamtokend"),
            (CompletionShell::Zsh, "#compdef iamtokend"),
            (CompletionShell::Fish, "complete -c iamtokend"),
        ] {
            let script = shell.script();
            assert!(script.contains(marker), "{shell:?}: no {marker:?}");
            assert!(script.contains("credential-process"), "{shell:?}");
        }
        let err = Cli::try_parse_from(["iamtokend", "completions", "tcsh"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::InvalidValue);
        assert!(err.use_stderr());
    }
}
