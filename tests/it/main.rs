//! Integration tests: the real `iamtokend` binary on a temporary socket against the in-repo
//! simulator (which verifies every request's SigV4 signature and body).
//!
//! - `grants`: each grant reaches ready and serves the simulator's token; assertion re-read.
//! - `refresh`: refresh before expiry, never an expired token, single flight, recovery,
//!   slow_down, bad signatures.
//! - `socket_api`: routes, the error envelope and codes.
//! - `cli`: client subcommands, output and exit codes; check-config.
//! - `process`: SIGTERM, stale and live sockets, `serve --dev`.
//! - `lifecycle`: token-exchange chains, needs_login, a dependant without a subject token.
//! - `login`: `iamtokend login` end to end (PKCE, state, timeout, errors), the test as browser.
//! - `reload`: SIGHUP adds, removes, changes apps; a broken config is rejected whole.
//! - `redaction`: planted canary secrets never reach the logs.
//! - `systemd`: sd_notify messages in order, socket activation, a second SIGTERM.
//! - `metrics`: `/metrics` parses, names follow conventions, counters move, no secret in it.

mod support;

mod cli;
mod credentials;
mod grants;
mod lifecycle;
mod login;
mod metrics;
mod process;
mod redaction;
mod refresh;
mod reload;
mod socket_api;
mod state;
mod systemd;
