//! TEMPORARY shim until the real loader lands (same signatures).
mod types;
use std::path::{Path, PathBuf};
use std::time::Duration;
pub use types::*;
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
}
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);
impl std::fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for d in &self.0 {
            writeln!(
                f,
                "{}:{}:{}: {}",
                d.file.display(),
                d.line,
                d.col,
                d.message
            )?;
        }
        Ok(())
    }
}
impl std::error::Error for Diagnostics {}
pub fn load(main_file: &Path) -> Result<Config, Diagnostics> {
    Err(Diagnostics(vec![Diagnostic {
        file: main_file.into(),
        line: 0,
        col: 0,
        message: "loader not built".into(),
    }]))
}
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}
pub mod paths {
    use std::path::{Path, PathBuf};
    pub struct Env;
    impl Env {
        pub fn from_process() -> Env {
            Env
        }
    }
    pub fn config_file(flag: Option<&Path>, _env: &Env) -> PathBuf {
        flag.map(Path::to_owned)
            .unwrap_or_else(|| "/etc/iamtokend/iamtokend.toml".into())
    }
    pub fn socket_path(configured: Option<&Path>, _env: &Env) -> PathBuf {
        configured
            .map(Path::to_owned)
            .unwrap_or_else(|| "/run/iamtokend/iamtokend.sock".into())
    }
    pub fn state_dir(configured: Option<&Path>, _env: &Env) -> PathBuf {
        configured
            .map(Path::to_owned)
            .unwrap_or_else(|| "/var/lib/iamtokend".into())
    }
}
