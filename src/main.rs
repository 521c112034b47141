//! `iamtokend`: parse, run, and the one place results become exit codes.

use std::process::ExitCode;

use clap::Parser;
use iamtokend::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    // Client subcommands run once per AWS CLI call: a single-threaded runtime starts fastest.
    let runtime = match &cli.command {
        Command::Serve { .. } => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
        _ => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("iamtokend: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(iamtokend::cmd::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            for line in failure.message.lines() {
                eprintln!("iamtokend: {line}");
            }
            ExitCode::from(failure.code)
        }
    }
}
