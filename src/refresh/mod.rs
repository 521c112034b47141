//! Keeping each app's token fresh: the pure policy, the app states, and the owner task.

pub mod credentials;
pub mod policy;
pub mod scheduler;
pub mod state;

pub use scheduler::{AppHandle, ServeError};
pub use state::{AppState, LastError, Snapshot, Token};
