//! `ferry`: the command line for Ferry operators. Nouns then verbs (`ferry job list`),
//! tables by default, one JSON object per command with `--json`, and exit codes that
//! say what kind of failure it was (`failure`).

mod args;
mod commands;
mod config;
mod duration;
mod failure;
mod fleet;
mod job;
mod job_args;
mod job_get;
mod job_input;
mod job_watch;
mod manual;
mod node;
mod output;
mod password;
mod progress;
mod signals;
mod target;
mod transfer;
mod yaml;

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{CommandFactory as _, FromArgMatches as _};
use ferry_coordinator::Client;

use crate::output::Format;
use crate::target::Target;

fn main() -> ExitCode {
    let matches = match args::Cli::command().try_get_matches() {
        Ok(matches) => matches,
        Err(e) => return usage_error(&e),
    };
    let cli = match args::Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    let format = cli.output();
    if let Some(done) = commands::run_offline(&cli) {
        return finish(done, format, None);
    }
    let target = config::load(cli.config.as_deref())
        .and_then(|loaded| target::resolve(&cli, matches.value_source("node"), &loaded));
    let target = match target {
        Ok(target) => target,
        Err(e) => return finish(Err(e), format, None),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ferry: cannot start: {e}");
            return ExitCode::from(failure::OTHER);
        }
    };
    let result = runtime.block_on(async {
        let client = client(&target)?;
        commands::run(&client, &cli).await
    });
    finish(result, format, Some(&target))
}

/// The API client for `target`.
fn client(target: &Target) -> anyhow::Result<Client> {
    Ok(match &target.ca {
        Some(path) => {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read the CA file {} (--ca)", path.display()))?;
            Client::with_ca(&target.url, target.token.clone(), &pem)?
        }
        None => Client::new(&target.url, target.token.clone())?,
    })
}

/// Reports a failure and turns the outcome into the exit code.
fn finish(result: anyhow::Result<()>, format: Format, target: Option<&Target>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            failure::report(&e, format, target);
            ExitCode::from(failure::exit_code(&e))
        }
    }
}

/// A command line clap refused (exit 2), or `--help`/`--version` (exit 0). With
/// `--json` (or `-o json`) somewhere on the line, the refusal is a JSON error object
/// on stdout too.
fn usage_error(error: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(error.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion)
        || !wants_json(std::env::args())
    {
        let _ = error.print();
        return ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(failure::USAGE));
    }
    let _ = error.print();
    let detail = error.render().to_string();
    let detail = detail.trim().trim_start_matches("error: ");
    let object = serde_json::json!({
        "error": { "title": "usage", "detail": detail, "exit_code": failure::USAGE }
    });
    let _ = output::json(&object);
    ExitCode::from(failure::USAGE)
}

/// True if the raw arguments ask for JSON (`--json`, `-o json`, `--format=json`...).
fn wants_json(args: impl Iterator<Item = String>) -> bool {
    let args: Vec<String> = args.collect();
    args.iter().enumerate().any(|(i, arg)| {
        let next_is_json = || args.get(i + 1).is_some_and(|next| next == "json");
        arg == "--json"
            || matches!(arg.as_str(), "-ojson" | "--format=json")
            || (matches!(arg.as_str(), "-o" | "--format") && next_is_json())
    })
}

#[cfg(test)]
mod tests {
    use super::wants_json;

    #[test]
    fn json_is_recognised_before_parsing() {
        let args = |line: &str| line.split(' ').map(str::to_owned).collect::<Vec<_>>().into_iter();
        assert!(wants_json(args("ferry --json job frob")));
        assert!(wants_json(args("ferry job frob -o json")));
        assert!(wants_json(args("ferry --format=json job")));
        assert!(!wants_json(args("ferry job info json")));
        assert!(!wants_json(args("ferry -o wide job list")));
    }
}
