//! Keeping each app's token fresh. Callers hold an [`AppHandle`] (`handle.rs`); each app's
//! owner task (`owner.rs`) runs one attempt of its grant at a time (`attempt.rs`) and decides
//! what follows with pure functions: the app states and [`state::after_attempt`] in
//! `state.rs`, the refresh delay, backoff and [`policy::Retry`] in `policy.rs`. Role
//! credentials (`credentials.rs`) reuse that retry state and reach the token side only
//! through the [`credentials::TokenSource`] trait the handle implements. `error.rs` holds
//! the one error they all answer with.

pub(crate) mod attempt;
pub(crate) mod credentials;
pub(crate) mod error;
pub(crate) mod handle;
pub(crate) mod owner;
pub(crate) mod policy;
pub(crate) mod state;
#[cfg(test)]
mod tests;

pub(crate) use error::ServeError;
pub(crate) use handle::AppHandle;
pub(crate) use state::{AppState, Token};
