//! `ferry`: the command line for Ferry operators. Nouns then verbs (`ferry job list`),
//! tables by default, `--json` everywhere, non-zero exit with the BITS code on failure.

mod args;
mod commands;
mod fleet;
mod node;
mod output;
mod target;
mod transfer;

use std::process::ExitCode;

use clap::Parser;
use ferry_coordinator::ClientError;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ferry: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(&cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(&cli, &e);
            ExitCode::FAILURE
        }
    }
}

/// Prints a failure: the BITS name, code and detail on stderr; with `--json` the problem
/// document on stdout as well.
fn report(cli: &args::Cli, e: &anyhow::Error) {
    match e.downcast_ref::<ClientError>() {
        Some(ClientError::Api(problem)) => {
            eprintln!("ferry: {} ({}): {}", problem.title, problem.code, problem.detail);
            if problem.status == 401 {
                eprintln!(
                    "hint: pass --token, set FERRY_TOKEN, or run where <data-dir>/admin.token exists"
                );
            }
            if cli.json {
                let _ = output::json(&serde_json::json!({ "error": problem }));
            }
        }
        _ => eprintln!("ferry: {e:#}"),
    }
}
