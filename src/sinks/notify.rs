//! Telling a reader that its sink file changed (CONTRACT §3 reading, see the README): the
//! optional `notify` command and `signal` + `pid_file` of a `[[sink]]`, run after each
//! successful write. The command gets no shell, the allowlisted environment of an
//! `assertion_command` (`grant::COMMAND_ENV`) plus `IAMTOKEND_APP` and `IAMTOKEND_SINK`
//! (never a secret), its own process group, and [`NOTIFY_TIMEOUT`]; its output goes to the
//! log at debug. Failures are logged; they never undo or retry the write.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tracing::{debug, warn};

use crate::config::SinkSignal;

/// How long a `notify` command may run before its process group is killed.
pub(crate) const NOTIFY_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of its output is logged.
const OUTPUT_CAP: usize = 4096;
/// The largest pid file read.
const PID_FILE_CAP: u64 = 64;

/// Runs `argv` for the sink at `path` of `app`; logs how it went.
pub(crate) async fn run_notify(app: &str, path: &Path, argv: &[String]) {
    let Some((program, args)) = argv.split_first() else {
        return;
    };
    let spawned = tokio::process::Command::new(program)
        .args(args)
        .env_clear()
        .envs(std::env::vars_os().filter(|(name, _)| {
            crate::grant::COMMAND_ENV
                .iter()
                .any(|allowed| name == *allowed)
        }))
        .env("IAMTOKEND_APP", app)
        .env("IAMTOKEND_SINK", path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            warn!(app, path = %path.display(), program = %program, error = %e, "cannot run the sink's notify command");
            return;
        }
    };
    let group = child.id().map(|id| nix::unistd::Pid::from_raw(id as i32));
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let run = async {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let read_out = async {
            if let Some(s) = stdout.as_mut() {
                let _ = s.take(OUTPUT_CAP as u64).read_to_end(&mut out).await;
            }
        };
        let read_err = async {
            if let Some(s) = stderr.as_mut() {
                let _ = s.take(OUTPUT_CAP as u64).read_to_end(&mut err).await;
            }
        };
        tokio::join!(read_out, read_err);
        // Close the pipes: a command that prints more than the cap gets EPIPE, not a hang.
        drop(stdout.take());
        drop(stderr.take());
        let status = child.wait().await;
        (status, out, err)
    };
    match tokio::time::timeout(NOTIFY_TIMEOUT, run).await {
        Ok((Ok(status), out, err)) => {
            debug!(app, path = %path.display(), program = %program, %status,
                   stdout = %String::from_utf8_lossy(&out), stderr = %String::from_utf8_lossy(&err),
                   "sink notify command finished");
            if !status.success() {
                warn!(app, path = %path.display(), program = %program, %status, "the sink's notify command failed");
            }
        }
        Ok((Err(e), _, _)) => {
            warn!(app, path = %path.display(), program = %program, error = %e, "the sink's notify command could not be waited for");
        }
        Err(_) => {
            if let Some(group) = group {
                let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            }
            warn!(app, path = %path.display(), program = %program, timeout_secs = NOTIFY_TIMEOUT.as_secs(),
                  "the sink's notify command did not finish in time; killed");
        }
    }
}

/// Sends `signal` to the pid in its `pid_file` (read now: the reader may have restarted).
pub(crate) async fn send_signal(app: &str, path: &Path, signal: &SinkSignal) {
    let pid_file = signal.pid_file.clone();
    let read = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        let mut text = String::new();
        let file = std::fs::File::open(&pid_file)?;
        std::io::Read::read_to_string(&mut std::io::Read::take(file, PID_FILE_CAP), &mut text)?;
        Ok(text)
    })
    .await
    .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
    let pid = match read.map(|t| t.trim().parse::<i32>()) {
        Ok(Ok(pid)) if pid > 1 => pid,
        Ok(_) => {
            warn!(app, path = %path.display(), pid_file = %signal.pid_file.display(), "the sink's pid_file holds no usable pid");
            return;
        }
        Err(e) => {
            warn!(app, path = %path.display(), pid_file = %signal.pid_file.display(), error = %e, "cannot read the sink's pid_file");
            return;
        }
    };
    let sent = nix::sys::signal::Signal::try_from(signal.number)
        .map(|sig| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig));
    match sent {
        Ok(Ok(())) => {
            debug!(app, path = %path.display(), pid, signal = %signal.name, "sink reader signalled")
        }
        Ok(Err(e)) | Err(e) => {
            warn!(app, path = %path.display(), pid, signal = %signal.name, error = %e, "cannot signal the sink's reader")
        }
    }
}
