//! Integration tests: the real `iamtokend` binary on a temporary socket against the in-repo
//! simulator (which verifies every request's SigV4 signature and body).
//!
//! - `grants`: each grant reaches ready and serves the simulator's token; assertion re-read.
//! - `refresh`: refresh before expiry, never an expired token, single flight, recovery,
//!   slow_down, bad signatures.
//! - `socket_api`: routes, the error envelope and codes.
//! - `cli`: client subcommands, output and exit codes; check-config.
//! - `process`: SIGTERM, stale and live sockets, `serve --dev`.
//! - `redaction`: planted canary secrets never reach the logs.
//! - `faults`: upstream 500s, resets, hangs past the timeout, garbled and absurd answers,
//!   slow_down, invalid_grant: the end state, the answer, and no hot loop.
//! - `hostile`: garbage, HTTP/0.9, floods, slow and silent clients, connection limits.
//! - `soak`: concurrent clients while 5-second tokens rotate (reduced here; full: bench/soak.sh).
//! - `access`: per-app `[access]` from peer credentials (403, filtered `/v1/apps`).

mod support;

mod access;
mod cli;
mod credentials;
mod faults;
mod grants;
mod hostile;
mod process;
mod redaction;
mod refresh;
mod soak;
mod socket_api;
mod state;
