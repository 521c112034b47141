//! Integration tests: the real `iamtokend` binary on a temporary socket against the in-repo
//! simulator (which verifies every request's SigV4 signature and body).
//!
//! - `grants`: each grant reaches ready and serves the simulator's token; assertion re-read.
//! - `refresh`: refresh before expiry, never an expired token, single flight, recovery,
//!   slow_down, bad signatures.
//! - `socket_api`: routes, the error envelope and codes.
//! - `cli`: client subcommands, output and exit codes; check-config.
//! - `cli_server`: whom a client believes (server uid), its timeout and answer cap, and the
//!   user-then-system socket fallback.
//! - `process`: SIGTERM, stale and live sockets, `serve --dev`.
//! - `lifecycle`: token-exchange chains, needs_login, a dependant without a subject token.
//! - `login`: `iamtokend login` end to end (PKCE, state, timeout, errors), the test as browser.
//! - `reload`: SIGHUP adds, removes, changes apps; a broken config is rejected whole.
//! - `redaction`: planted canary secrets never reach the logs.
//! - `systemd`: sd_notify messages in order, socket activation, a second SIGTERM.
//! - `metrics`: `/metrics` parses, names follow conventions, counters move, no secret in it.
//! - `faults`: upstream 500s, resets, hangs past the timeout, garbled and absurd answers,
//!   slow_down, invalid_grant: the end state, the answer, and no hot loop.
//! - `hostile`: garbage, HTTP/0.9, floods, slow and silent clients, connection limits.
//! - `soak`: concurrent clients while 5-second tokens rotate (reduced here; full: bench/soak.sh).
//! - `access`: per-app `[access]` from peer credentials (403, filtered `/v1/apps`).

mod support;

mod access;
mod cli;
mod cli_server;
mod credentials;
mod faults;
mod grants;
mod hostile;
mod lifecycle;
mod login;
mod metrics;
mod process;
mod redaction;
mod refresh;
mod reload;
mod soak;
mod socket_api;
mod state;
mod systemd;
