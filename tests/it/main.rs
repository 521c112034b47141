//! Integration tests: the real `iamtokend` binary on a temporary socket against the in-repo
//! simulator (which verifies every request's SigV4 signature and body).
//!
//! Ignored tests, and who runs them: `soak::soak_full` (60 s) is run by `bench/soak.sh`;
//! tests that switch users live in a module `as_root`, are `#[ignore = "needs root"]`, and
//! `.ci/run` (as root) runs them with `cargo test --test it -- --ignored as_root::`.

// The temporary config tree, the simulator, the daemon handle, and raw HTTP on a socket.
mod support;

// Per-app `[access]` from peer credentials: 403, a filtered `/v1/apps`, a second uid as root.
mod access;
// `login` driven by headless Chromium: the redirect, the rendered pages, a screenshot.
mod browser;
// Client subcommands, their output and exit codes; `check-config` against the fixtures.
mod cli;
// Whom a client believes (server uid), its timeout and answer cap, the socket fallback.
mod cli_server;
// Role credentials: `/credentials`, `credential-process` under the AWS SDK, caching, refresh.
mod credentials;
// The loopback credentials endpoint and `exec`: the Rust SDK's ECS provider and botocore
// through it, the token, Origin, hostile bytes on the port, exit codes and signals.
mod endpoint;
// Upstream 500s, resets, hangs, garbled and absurd answers: the end state, no hot loop.
mod faults;
// Each grant reaches ready and serves the simulator's token; the assertion is re-read.
mod grants;
// Garbage, HTTP/0.9, floods, slow and silent clients, connection limits.
mod hostile;
// Token-exchange chains, needs_login, a dependant without a subject token.
mod lifecycle;
// `iamtokend login` end to end (PKCE, state, timeout, errors), the test as the browser.
mod login;
// `/metrics` parses, names follow conventions, counters move, no secret in it.
mod metrics;
// SIGTERM, stale and live sockets, the socket mode, `serve --dev`.
mod process;
// Planted canary secrets never reach logs, errors or status; no core dumps.
mod redaction;
// Refresh before expiry, never an expired token, single flight, recovery, slow_down, SigV4.
mod refresh;
// SIGHUP adds, removes and changes apps; a broken config is rejected whole.
mod reload;
// The daemon's AWS keys from a systemd credentials directory; check-config's secret-file warnings.
mod secret_files;
// Concurrent clients while 5-second tokens rotate (reduced here; full: bench/soak.sh).
mod soak;
// Routes, the error envelope and its codes, login body errors.
mod socket_api;
// Simulated suspends (debug builds' test control): no dead token served, refresh on resume.
mod suspend;
// File sinks: contents, modes, owners, atomic rewrites, links, expiry, reload, failures.
mod sinks;
// The state dir: rotated refresh tokens survive restarts and SIGKILL; damaged files aside.
mod state;
// `[state] seal`: sealed state files, restart, another key, tampering, migration, the key's checks.
mod seal;
// sd_notify messages in order, socket activation, a second SIGTERM, reload notifications.
mod systemd;
