//! `iamtokend check-config`: every problem as FILE:LINE:COL: message on stderr; exit 1 on any.
//! Also the state key `serve` would read (`[state] seal`): missing when required, or too short.

use std::path::Path;

use super::Failure;

/// Validates the config at `file`.
pub fn run(file: &Path) -> Result<(), Failure> {
    match crate::config::load(file) {
        Ok(config) => {
            // The key `serve` would read: `seal = "required"` without one, or a key too
            // short, fails here too (run it under the unit's credentials to see the real one).
            let env = crate::config::paths::Env::from_process();
            let sealing = crate::seal::Sealing::from_credentials(
                config.state.seal,
                env.credentials_dir().as_deref(),
            )
            .map_err(|e| Failure::failed(format!("{}: {e}", file.display())))?;
            eprintln!(
                "{}: ok ({} app{}; state {})",
                file.display(),
                config.apps.len(),
                if config.apps.len() == 1 { "" } else { "s" },
                if sealing.status().sealed {
                    "sealed"
                } else {
                    "not sealed"
                }
            );
            Ok(())
        }
        Err(diagnostics) => Err(Failure::failed(
            diagnostics.to_string().trim_end().to_owned(),
        )),
    }
}
