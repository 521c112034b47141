//! The generator of iamtokend's checked-in derived files, so that `cargo deb` needs no build
//! step of its own and `cargo build` of the daemon never runs one:
//! - `man/iamtokend.1` and `man/iamtokend-SUBCOMMAND.1` from the clap definitions
//!   (clap_mangen); `man/iamtokend.toml.5` is hand-written and not touched here;
//! - `pkg/completions/` from `iamtokend completions SHELL`'s own generator;
//! - `pkg/systemd/`: the units of `systemd/` with `ExecStart=` pointing at the packaged
//!   `/usr/bin/iamtokend` (the units in `systemd/` point at `/usr/local/bin` and
//!   `~/.cargo/bin`, where the manual install puts the binary).
//!
//! `gen [--out DIR]` writes them under DIR (default: the repository); CI writes them to a
//! temporary directory and diffs it with the repository.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory;
use iamtokend::cli::{Cli, CompletionShell};

/// A unit of `systemd/` and the one line the package changes in it.
struct Unit {
    /// Path under `systemd/` and under `pkg/systemd/`.
    path: &'static str,
    /// The `ExecStart=` line of the manual install.
    from: &'static str,
    /// The packaged one.
    to: &'static str,
}

const UNITS: [Unit; 2] = [
    Unit {
        path: "iamtokend.service",
        from: "ExecStart=/usr/local/bin/iamtokend serve",
        to: "ExecStart=/usr/bin/iamtokend serve",
    },
    Unit {
        path: "user/iamtokend.service",
        from: "ExecStart=%h/.cargo/bin/iamtokend serve",
        to: "ExecStart=/usr/bin/iamtokend serve",
    },
];

/// Sections clap does not know about, appended to iamtokend(1) (roff).
const MAIN_PAGE_EXTRA: &str = r#".SH "EXIT STATUS"
.TP
0
Success.
.TP
1
A failure the daemon reported, or a bad config.
.TP
2
A usage error.
.TP
3
The daemon cannot be reached.
.SH FILES
.TP
\fI/etc/iamtokend/iamtokend.toml\fR
The main config file when run as root or by systemd; see \fBiamtokend.toml\fR(5).
A user's own: \fI~/.config/iamtokend/iamtokend.toml\fR.
.TP
\fI/etc/iamtokend/apps.d/NAME.toml\fR
One file per application; NAME is the app's name everywhere.
.TP
\fI/run/iamtokend/iamtokend.sock\fR
The system daemon's socket (mode 0660, group iamtokend). A user daemon's:
\fI$XDG_RUNTIME_DIR/iamtokend/iamtokend.sock\fR, which clients try first.
.TP
\fI/var/lib/iamtokend\fR
State: refresh tokens and endpoint tokens (0700, files 0600).
.SH "SEE ALSO"
\fBiamtokend.toml\fR(5), \fBsystemctl\fR(1), \fBsystemd.socket\fR(5)
"#;

/// Appended to every subcommand's page.
const SUB_PAGE_EXTRA: &str = r#".SH "SEE ALSO"
\fBiamtokend\fR(1), \fBiamtokend.toml\fR(5)
"#;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let out = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["gen"] => repo.clone(),
        ["gen", "--out", dir] => PathBuf::from(dir),
        _ => {
            eprintln!("usage: cargo run -p xtask -- gen [--out DIR]");
            return ExitCode::from(2);
        }
    };
    match generate(&repo, &out) {
        Ok(written) => {
            eprintln!("xtask: wrote {written} files under {}", out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::from(1)
        }
    }
}

/// Writes every generated file under `out`; returns how many.
fn generate(repo: &Path, out: &Path) -> Result<usize, String> {
    let mut written = 0;
    let man = out.join("man");
    mkdir(&man)?;
    // Pages of subcommands that no longer exist must not linger.
    remove_stale_pages(&man)?;
    let mut cli = Cli::command().disable_help_subcommand(true);
    // Propagates the global options (--socket, --config) into every subcommand's page.
    cli.build();
    let mut top = render(cli.clone())?;
    top.extend_from_slice(MAIN_PAGE_EXTRA.as_bytes());
    write(&man.join("iamtokend.1"), &top)?;
    written += 1;
    for sub in cli.get_subcommands().filter(|sub| sub.get_name() != "help") {
        let name = format!("iamtokend-{}", sub.get_name());
        // The page of `iamtokend serve` is named and titled iamtokend-serve(1), and its
        // synopsis reads `iamtokend serve ...`.
        let page = sub
            .clone()
            .name(name.clone())
            .bin_name(format!("iamtokend {}", sub.get_name()))
            .version(cli.get_version().unwrap_or_default().to_owned());
        let mut text = render(page)?;
        text.extend_from_slice(SUB_PAGE_EXTRA.as_bytes());
        write(&man.join(format!("{name}.1")), &text)?;
        written += 1;
    }

    let completions = out.join("pkg/completions");
    mkdir(&completions)?;
    for (shell, file) in [
        (CompletionShell::Bash, "iamtokend"),
        (CompletionShell::Zsh, "_iamtokend"),
        (CompletionShell::Fish, "iamtokend.fish"),
    ] {
        write(&completions.join(file), shell.script().as_bytes())?;
        written += 1;
    }

    for unit in &UNITS {
        let source = repo.join("systemd").join(unit.path);
        let text = fs::read_to_string(&source)
            .map_err(|e| format!("cannot read {}: {e}", source.display()))?;
        if text.lines().filter(|line| *line == unit.from).count() != 1 {
            return Err(format!(
                "{} no longer has exactly one line `{}`: update UNITS in xtask/src/main.rs",
                source.display(),
                unit.from
            ));
        }
        let body = text.replace(unit.from, unit.to);
        let packaged = format!(
            "# Generated from systemd/{} by `cargo run -p xtask -- gen` for the Debian package:\n\
             # only ExecStart= differs (the packaged binary is /usr/bin/iamtokend).\n{body}",
            unit.path
        );
        let target = out.join("pkg/systemd").join(unit.path);
        if let Some(dir) = target.parent() {
            mkdir(dir)?;
        }
        write(&target, packaged.as_bytes())?;
        written += 1;
    }
    Ok(written)
}

/// The roff of one page.
fn render(cmd: clap::Command) -> Result<Vec<u8>, String> {
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd)
        .render(&mut page)
        .map_err(|e| format!("cannot render a man page: {e}"))?;
    Ok(page)
}

/// Removes the generated section-1 pages; the hand-written `iamtokend.toml.5` stays.
fn remove_stale_pages(man: &Path) -> Result<(), String> {
    let entries = fs::read_dir(man).map_err(|e| format!("cannot list {}: {e}", man.display()))?;
    for entry in entries {
        let path = entry
            .map_err(|e| format!("cannot list {}: {e}", man.display()))?
            .path();
        let generated = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("iamtokend") && n.ends_with(".1"));
        if generated {
            fs::remove_file(&path).map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
        }
    }
    Ok(())
}

fn mkdir(dir: &Path) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), String> {
    fs::write(path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))
}
