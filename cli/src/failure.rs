//! Failures: the exit code each one means, and how it is reported — one line on
//! stderr with the BITS name and code, a `hint:` line when there is a way out, and
//! with `-o json`/`-o yaml` one `{"error": {...}}` object on stdout.
//!
//! Exit codes (`ferry --help` lists them): 0 ok, 1 other, 2 usage, 3 not found,
//! 4 access denied, 5 transient (no node answers, timeouts, 503: try again).

use ferry_coordinator::ClientError;
use ferry_protocol::BitsCode;
use ferry_protocol::api::{ErrorInfo, JobInfo};
use serde_json::{Value, json};

use crate::output::{self, Format};
use crate::target::Target;

/// Exit code: any other failure.
pub(crate) const OTHER: u8 = 1;
/// Exit code: bad options or arguments (clap uses it too).
pub(crate) const USAGE: u8 = 2;
/// Exit code: no such job, code or file.
pub(crate) const NOT_FOUND: u8 = 3;
/// Exit code: missing or wrong token, not the caller's job.
pub(crate) const ACCESS_DENIED: u8 = 4;
/// Exit code: no node answers, a timeout, the cluster is electing; trying again may work.
pub(crate) const TRANSIENT: u8 = 5;

/// Failures the CLI finds itself (those of the API are [`ClientError`]s).
#[derive(Debug)]
pub(crate) enum Failure {
    /// The command line asks for something impossible.
    Usage(String),
    /// What the command names does not exist.
    NotFound(String),
    /// A job `ferry transfer` waited for ended in ERROR (it was cancelled).
    JobFailed {
        /// The job as it ended.
        job: Box<JobInfo>,
        /// Its error.
        error: Box<ErrorInfo>,
    },
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Usage(text) | Self::NotFound(text) => f.write_str(text),
            Self::JobFailed { error, .. } => {
                write!(f, "transfer failed: {} ({}): {}", error.name, error.code, error.detail)
            }
        }
    }
}

impl std::error::Error for Failure {}

/// A usage error (exit 2) as an `anyhow::Error`.
pub(crate) fn usage(text: impl Into<String>) -> anyhow::Error {
    Failure::Usage(text.into()).into()
}

/// The exit code for `error`.
pub(crate) fn exit_code(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if let Some(client) = cause.downcast_ref::<ClientError>() {
            return client_exit_code(client);
        }
        if let Some(failure) = cause.downcast_ref::<Failure>() {
            return match failure {
                Failure::Usage(_) => USAGE,
                Failure::NotFound(_) => NOT_FOUND,
                Failure::JobFailed { error, .. } => code_exit_code(error.code).unwrap_or(OTHER),
            };
        }
    }
    OTHER
}

fn client_exit_code(error: &ClientError) -> u8 {
    match error {
        ClientError::Api(problem) => {
            status_exit_code(problem.status).or(code_exit_code(problem.code)).unwrap_or(OTHER)
        }
        ClientError::Unexpected { status, .. } => status_exit_code(*status).unwrap_or(OTHER),
        ClientError::Transport { .. } => TRANSIENT,
        ClientError::BadUrl(..) => USAGE,
        _ => OTHER,
    }
}

fn status_exit_code(status: u16) -> Option<u8> {
    match status {
        404 | 410 => Some(NOT_FOUND),
        401 | 403 => Some(ACCESS_DENIED),
        429 | 502..=504 => Some(TRANSIENT),
        _ => None,
    }
}

/// The exit code a BITS code means, if a specific one: the API's and a job's.
fn code_exit_code(code: BitsCode) -> Option<u8> {
    match code {
        BitsCode::BG_E_NOT_FOUND => Some(NOT_FOUND),
        BitsCode::E_ACCESSDENIED => Some(ACCESS_DENIED),
        BitsCode::ERROR_RETRY => Some(TRANSIENT),
        _ => match code.http_status()? {
            407 => Some(ACCESS_DENIED),
            status => status_exit_code(status).filter(|c| *c != TRANSIENT),
        },
    }
}

/// The way out of a BITS error, if there is a known one.
pub(crate) fn code_hint(code: BitsCode) -> Option<&'static str> {
    match code {
        BitsCode::BG_E_INSUFFICIENT_RANGE_SUPPORT | BitsCode::BG_E_INSUFFICIENT_HTTP_SUPPORT => {
            Some(
                "the server ignores range requests: transfer with `--priority foreground` (files \
                 up to 2 GB, one stream) or `--dynamic` (no resume); for a job, `ferry job set \
                 JOB --priority foreground` or `--dynamic-content true` before its first resume",
            )
        }
        BitsCode::BG_E_MISSING_FILE_SIZE => Some(
            "the server gives no file size: transfer with `--dynamic`, or `ferry job set JOB \
             --dynamic-content true` before the job's first resume",
        ),
        _ => None,
    }
}

/// Prints `error` as `format` wants it; `target` is the node the command used, if it
/// got that far.
pub(crate) fn report(error: &anyhow::Error, format: Format, target: Option<&Target>) {
    let exit = exit_code(error);
    let (line, hint, mut object) = describe(error, target);
    eprintln!("ferry: {line}");
    if let Some(hint) = &hint {
        eprintln!("hint: {hint}");
    }
    if format.structured() {
        if let Some(fields) = object.get_mut("error").and_then(Value::as_object_mut) {
            fields.insert("exit_code".into(), json!(exit));
            if let Some(hint) = hint {
                fields.insert("hint".into(), json!(hint));
            }
        }
        let _ = output::structured(format, &object);
    }
}

/// The stderr line, the hint and the JSON object of `error`.
fn describe(error: &anyhow::Error, target: Option<&Target>) -> (String, Option<String>, Value) {
    for cause in error.chain() {
        if let Some(client) = cause.downcast_ref::<ClientError>() {
            return describe_client(client, target);
        }
        if let Some(Failure::JobFailed { job, error: info }) = cause.downcast_ref::<Failure>() {
            let object = json!({
                "error": {
                    "title": info.name,
                    "code": info.code,
                    "detail": info.detail,
                    "description": info.description,
                    "context": info.context,
                    "file_index": info.file_index,
                },
                "job": job,
            });
            return (format!("{error:#}"), code_hint(info.code).map(Into::into), object);
        }
    }
    let title = match error.downcast_ref::<Failure>() {
        Some(Failure::Usage(_)) => "usage",
        Some(Failure::NotFound(_)) => "not found",
        _ => "failed",
    };
    let object = json!({ "error": { "title": title, "detail": format!("{error:#}") } });
    (format!("{error:#}"), None, object)
}

fn describe_client(
    error: &ClientError,
    target: Option<&Target>,
) -> (String, Option<String>, Value) {
    match error {
        ClientError::Api(problem) => {
            let line = format!("{} ({}): {}", problem.title, problem.code, problem.detail);
            let hint = match problem.status {
                401 => Some(
                    "pass --token or --token-file, set FERRY_TOKEN, put token_file in the config \
                     file, or run where <data-dir>/admin.token exists"
                        .to_owned(),
                ),
                503 => Some("the cluster may be electing a leader: try again".to_owned()),
                _ => code_hint(problem.code).map(Into::into),
            };
            (line, hint, json!({ "error": problem }))
        }
        ClientError::Transport { url, source } => {
            let tried = target.map_or_else(|| url.clone(), |t| format!("{} ({})", t.url, t.source));
            let why = transport_reason(source);
            let line = format!("no node answers at {tried}: {why}");
            let config = crate::config::default_path()
                .map_or_else(|| "the config file".to_owned(), |p| p.display().to_string());
            let hint = format!(
                "point ferry at a node with --node URL, FERRY_NODE or `node = \"URL\"` in \
                 {config}; or start one here with `ferryd`"
            );
            let object = json!({ "error": { "title": "unreachable", "detail": line, "url": url } });
            (line, Some(hint), object)
        }
        other => {
            let line = other.to_string();
            (line.clone(), None, json!({ "error": { "title": "failed", "detail": line } }))
        }
    }
}

/// A few words on why a request got no answer.
fn transport_reason(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        return "timed out".into();
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
                std::io::ErrorKind::ConnectionReset => "connection reset".into(),
                std::io::ErrorKind::TimedOut => "timed out".into(),
                _ => io.to_string(),
            };
        }
        cause = e.source();
    }
    if error.is_connect() { "cannot connect".into() } else { "the request failed".into() }
}

#[cfg(test)]
mod tests {
    use ferry_protocol::api::Problem;

    use super::*;

    #[test]
    fn api_errors_map_to_exit_codes() {
        let api =
            |status, code| anyhow::Error::from(ClientError::Api(Problem::new(status, code, "x")));
        assert_eq!(exit_code(&api(404, BitsCode::BG_E_NOT_FOUND)), NOT_FOUND);
        assert_eq!(exit_code(&api(401, BitsCode::E_ACCESSDENIED)), ACCESS_DENIED);
        assert_eq!(exit_code(&api(403, BitsCode::E_ACCESSDENIED)), ACCESS_DENIED);
        assert_eq!(exit_code(&api(503, BitsCode::ERROR_RETRY)), TRANSIENT);
        assert_eq!(exit_code(&api(400, BitsCode::E_INVALIDARG)), OTHER);
        assert_eq!(exit_code(&api(409, BitsCode::BG_E_INVALID_STATE)), OTHER);
        assert_eq!(exit_code(&usage("give --all or a job")), USAGE);
        let context = api(404, BitsCode::BG_E_NOT_FOUND).context("while resolving");
        assert_eq!(exit_code(&context), NOT_FOUND, "found through context");
        assert_eq!(exit_code(&anyhow::anyhow!("disk full")), OTHER);
    }

    #[test]
    fn job_errors_map_by_their_code() {
        assert_eq!(code_exit_code(BitsCode::http(404)), Some(NOT_FOUND));
        assert_eq!(code_exit_code(BitsCode::http(403)), Some(ACCESS_DENIED));
        assert_eq!(code_exit_code(BitsCode::http(407)), Some(ACCESS_DENIED));
        assert_eq!(code_exit_code(BitsCode::http(503)), None, "a job's fatal 503 is not transient");
        assert_eq!(code_exit_code(BitsCode::BG_E_INSUFFICIENT_RANGE_SUPPORT), None);
    }

    #[test]
    fn range_errors_name_the_flags_that_exist() {
        let hint = code_hint(BitsCode::BG_E_INSUFFICIENT_RANGE_SUPPORT).expect("a hint");
        assert!(hint.contains("--priority foreground") && hint.contains("--dynamic"));
        // The flags named are the CLI's own.
        use clap::CommandFactory as _;
        let cli = crate::args::Cli::command();
        let transfer = cli.find_subcommand("transfer").expect("transfer");
        for flag in ["priority", "dynamic"] {
            assert!(transfer.get_arguments().any(|a| a.get_long() == Some(flag)), "{flag}");
        }
        let set =
            cli.find_subcommand("job").and_then(|job| job.find_subcommand("set")).expect("job set");
        assert!(set.get_arguments().any(|a| a.get_long() == Some("dynamic-content")));
    }
}
