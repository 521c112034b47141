//! `iamtokend check-config`: every problem as FILE:LINE:COL: message on stderr; exit 1 on any.

use std::path::Path;

use super::Failure;

/// Validates the config at `file`.
pub fn run(file: &Path) -> Result<(), Failure> {
    match crate::config::load(file) {
        Ok(config) => {
            eprintln!(
                "{}: ok ({} app{})",
                file.display(),
                config.apps.len(),
                if config.apps.len() == 1 { "" } else { "s" }
            );
            Ok(())
        }
        Err(diagnostics) => Err(Failure::failed(
            diagnostics.to_string().trim_end().to_owned(),
        )),
    }
}
