//! iamtokend brokers AWS IAM Identity Center tokens to the programs on a host.
//!
//! # Layout
//! - [`config`]: TOML main file + `apps.d/*.toml` → validated [`config::Config`]; default paths.
//! - [`upstream`]: `CreateTokenWithIAM` (and STS) behind small traits; SDK errors →
//!   [`upstream::UpstreamError`], named for what the caller does next.
//! - [`grant`]: each grant's request, its inputs read anew (assertion file/command,
//!   refresh-token file, subject token); shared by the owner task and `fetch`.
//! - [`refresh`]: the handle callers hold, the per-app owner task (single flight) and one
//!   attempt of a grant, with the next step a pure function (`state.rs`, `policy.rs`); role
//!   credentials.
//! - [`endpoint`]: the credentials endpoint's per-app tokens (CONTRACT §5b).
//! - [`broker`]: the running apps, started in dependency order; SIGHUP reload.
//! - [`login`]: the browser half of `iamtokend login` (authorize URL, loopback listener).
//! - [`server`]: the Unix-socket HTTP API; [`client`]: its client for the subcommands.
//! - [`cli`], [`cmd`]: the command line (`cmd::dev` is `serve --dev`); `main.rs` maps results
//!   to exit codes.
//! - [`clock`]: the one clock (expiry on a boottime timeline) and the resume detector;
//!   [`secret`]: the one secret type; [`logging`], [`signals`].
//! - [`systemd`]: sd_notify notifications, the watchdog and `STATUS=` line, socket activation.
//! - [`metrics`]: the Prometheus counters and per-app gauges of `GET /metrics`.
//! - [`sinks`]: `[[sink]]` files kept current (one task per sink on the app's snapshot; the
//!   atomic no-follow write in `sinks/write.rs`; notify/signal after a write).
//! - [`store`]: the state dir; [`seal`]: its files sealed at rest (the systemd credential
//!   `state-key`, HKDF, AES-256-GCM, the sealed format).
//! - [`harden`]: non-dumpable, no core files, for the commands that hold secrets.
//! - [`sim`]: a simulated Identity Center + STS on loopback (tests and `serve --dev`).
#![warn(missing_docs, unreachable_pub)]

pub mod broker;
pub mod cli;
pub mod client;
pub mod clock;
pub mod cmd;
pub mod config;
pub(crate) mod endpoint;
pub mod grant;
pub(crate) mod harden;
pub(crate) mod logging;
pub(crate) mod login;
pub(crate) mod metrics;
pub mod pkce;
pub(crate) mod refresh;
pub(crate) mod seal;
pub mod secret;
pub mod server;
pub(crate) mod signals;
pub mod sim;
pub(crate) mod sinks;
pub(crate) mod store;
pub(crate) mod systemd;
pub mod upstream;
