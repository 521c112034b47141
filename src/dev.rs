//! `serve --dev` (filled in once the simulator lands).
use crate::cmd::Failure;
/// Runs dev mode.
pub async fn run() -> Result<(), Failure> {
    Err(Failure::failed("dev mode not built yet"))
}
