//! Checks of user-supplied job data: URLs, local paths, ranges and properties.
//!
//! Pure functions called by apply, so every node reaches the same verdict. Each returns
//! the BITS code the matching BITS method returns and a sentence saying what to fix.

use crate::codes::BitsCode;
use crate::command::{Command, CommandError, PropertyChanges};
use crate::file::{FileRange, NewFile};
use crate::job::{JobType, NotifyCmdLine, ProxySettings, ProxyUsage, acl, notify, peer_caching};
use crate::limits::*;

/// Every check of a command that needs no state: what the API runs before proposing
/// (so bad input costs no Raft write) and apply runs again before its stateful rules.
/// Checks that depend on the job (its type for `file://` and ranges, the policy for
/// counts) are apply's.
pub fn command_input(command: &Command) -> Result<(), CommandError> {
    match command {
        Command::CreateFleet { members, spec, credentials, .. } => {
            if !credentials.is_empty() && credentials.len() != members.len() {
                return Err(invalid("a fleet's credentials come one list per member"));
            }
            for (list, (job, _)) in credentials.iter().zip(members) {
                if list.len() > crate::peer_cache::MAX_FLEET_CREDENTIALS {
                    return Err(invalid("a fleet job takes at most 4 credentials"));
                }
                for credential in list {
                    let credential = credential.clone();
                    command_input(&Command::SetCredentials { job: *job, credential })?;
                }
            }
            let nodes: std::collections::BTreeSet<_> = members.iter().map(|m| m.1).collect();
            let ids: std::collections::BTreeSet<_> = members.iter().map(|m| m.0).collect();
            if members.is_empty()
                || members.len() > crate::peer_cache::MAX_FLEET_MEMBERS
                || nodes.len() != members.len()
                || ids.len() != members.len()
            {
                return Err(invalid(format!(
                    "a fleet reaches 1 to {} distinct nodes",
                    crate::peer_cache::MAX_FLEET_MEMBERS
                )));
            }
            if spec.job_type != JobType::Download || spec.files.len() != 1 {
                return Err(invalid("a fleet downloads exactly one file"));
            }
            let create = Command::CreateJob {
                id: members[0].0,
                home_node: members[0].1,
                spec: spec.clone(),
            };
            command_input(&create)
        }
        Command::CreateJob { spec, .. } => {
            text("display name", &spec.display_name, MAX_DISPLAY_NAME_CHARS)?;
            if spec.properties.display_name.is_some() {
                return Err(invalid(
                    "give the display name once, as display_name, not again in properties",
                ));
            }
            property_changes(&spec.properties)?;
            if spec.job_type.is_upload() && spec.files.len() > 1 {
                return Err(CommandError::new(
                    BitsCode::BG_E_TOO_MANY_FILES,
                    "an upload job holds exactly one file",
                ));
            }
            let whole_streams = spec.properties.dynamic_content == Some(true)
                || spec.properties.http_method.as_deref().is_some_and(|m| m != DEFAULT_METHOD);
            files(&spec.files, spec.job_type, whole_streams, true)
        }
        Command::AddFiles { files: list, .. } => files(list, JobType::Download, false, false),
        Command::SetProperties { changes, .. } => property_changes(changes),
        Command::ChangeFile { changes, .. } => {
            if changes.remote_url.is_none() && changes.valid.is_none() {
                return Err(invalid("give remote_url and/or valid"));
            }
            changes.remote_url.as_deref().map_or(Ok(()), |url| remote_url(url, JobType::Download))
        }
        Command::Lifecycle { .. }
        | Command::Engine { .. }
        | Command::RemoveCredentials { .. }
        | Command::AllocateNodeId { .. }
        | Command::WithdrawPeerCopy { .. }
        | Command::Upload(_) => Ok(()),
        Command::Principals(crate::principals::PrincipalCommand::Create { roots, .. }) => {
            crate::principals::check_roots(roots.as_deref())
        }
        Command::Principals(_) => Ok(()),
        Command::ReplaceRemotePrefix(replace) => prefix_change(&replace.change),
        Command::SetCredentials { credential, .. } => {
            credential.scheme.supported()?;
            if credential.sealed.len() > 2 * crate::credentials::MAX_PASSWORD_CHARS * 4 {
                return Err(invalid("the sealed password is too large"));
            }
            Ok(())
        }
        Command::SetPolicy(policy) => {
            let p = policy;
            if p.max_jobs_per_user == 0
                || p.max_jobs == 0
                || p.max_files_per_job == 0
                || p.max_ranges_per_file == 0
                || p.job_inactivity_timeout_secs == 0
            {
                return Err(invalid("policy limits must be at least 1"));
            }
            Ok(())
        }
    }
}

/// A list of files to add: bounded, each valid for `job_type` (for a job whose type is
/// not known here, the download rules, the most permissive).
fn files(
    list: &[NewFile],
    job_type: JobType,
    whole_streams: bool,
    may_be_empty: bool,
) -> Result<(), CommandError> {
    if list.is_empty() && !may_be_empty {
        return Err(invalid("no files were given"));
    }
    if list.len() > MAX_FILES_PER_REQUEST {
        return Err(invalid(format!(
            "at most {MAX_FILES_PER_REQUEST} files can be added in one request"
        )));
    }
    list.iter().try_for_each(|file| new_file(file, job_type, whole_streams, None))
}

/// The property values themselves: lengths, flag bits, paths, header syntax.
pub fn property_changes(c: &PropertyChanges) -> Result<(), CommandError> {
    if let Some(name) = &c.display_name {
        text("display name", name, MAX_DISPLAY_NAME_CHARS)?;
    }
    if let Some(description) = &c.description {
        text("description", description, MAX_DESCRIPTION_CHARS)?;
    }
    if let Some(flags) = c.notify_flags {
        notify_flags(flags)?;
    }
    if let Some(Some(cmd)) = &c.notify_cmdline {
        notify_cmdline(cmd)?;
    }
    if let Some(settings) = &c.proxy {
        proxy(settings)?;
    }
    if let Some(Some(path)) = &c.reply_file_name {
        local_path(path)?;
    }
    if let Some(Some(lines)) = &c.custom_headers {
        custom_headers(lines)?;
    }
    if c.max_download_size == Some(Some(0)) {
        return Err(CommandError::new(
            BitsCode::BG_E_MAX_DOWNLOAD_SIZE_INVALID_VALUE,
            "the maximum download size must be at least one byte",
        ));
    }
    if let Some(flags) = c.peer_caching_flags {
        peer_caching_flags(flags)?;
    }
    if let Some(flags) = c.acl_flags {
        acl_flags(flags)?;
    }
    if let Some(flags) = c.security_flags {
        security_flags(flags)?;
    }
    if let Some(Some(path)) = &c.client_certificate {
        local_path(path)?;
    }
    if let Some(Some(n)) = c.max_connections
        && !(1..=MAX_CONNECTIONS_PER_FILE).contains(&n)
    {
        return Err(invalid(format!("max_connections must be 1 to {MAX_CONNECTIONS_PER_FILE}")));
    }
    if let Some(Some(n)) = c.max_helpers
        && n > MAX_HELPERS_PER_FILE
    {
        return Err(invalid(format!("max_helpers must be 0 to {}", MAX_HELPERS_PER_FILE)));
    }
    if let Some(method) = &c.http_method {
        http_method(method)?;
    }
    if let Some(Some(rate)) = c.max_bandwidth
        && rate < MIN_JOB_BANDWIDTH
    {
        return Err(invalid(format!(
            "max_bandwidth is in bytes per second and must be at least {MIN_JOB_BANDWIDTH}"
        )));
    }
    Ok(())
}

/// The verb of a download's requests when none is set.
pub const DEFAULT_METHOD: &str = "GET";

/// `SetHttpMethod`: an HTTP token (RFC 9110 §5.6.2) of at most 32 characters, and not
/// `CONNECT` (a proxy would open a tunnel) or `TRACE` (a server echoes the request, its
/// credentials and custom headers included), in any case.
pub fn http_method(method: &str) -> Result<(), CommandError> {
    if ["CONNECT", "TRACE"].iter().any(|refused| method.eq_ignore_ascii_case(refused)) {
        return Err(invalid(format!("{method} cannot be a download's HTTP method")));
    }
    const TOKEN_SYMBOLS: &str = "!#$%&'*+-.^_`|~";
    let token = !method.is_empty()
        && method
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || TOKEN_SYMBOLS.as_bytes().contains(&b));
    if !token || method.len() > MAX_HTTP_METHOD_BYTES {
        return Err(invalid(format!(
            "{method:?} is not an HTTP method (a token of 1 to {MAX_HTTP_METHOD_BYTES} letters, digits or !#$%&'*+-.^_`|~)"
        )));
    }
    Ok(())
}

/// A file's expected SHA-256: 64 hexadecimal digits.
pub fn sha256_hex(hex: &str) -> Result<(), CommandError> {
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid(format!("{hex:?} is not a SHA-256 (64 hexadecimal digits)")));
    }
    Ok(())
}

/// `SetSecurityFlags`: defined bits only, one redirect policy, no CRL checking.
fn security_flags(flags: u32) -> Result<(), CommandError> {
    use crate::job::security::*;
    if flags & !VALID != 0 {
        return Err(CommandError::new(
            BitsCode::E_INVALIDARG,
            format!("security flags 0x{flags:X} include undefined bits (defined: 0x{VALID:X})"),
        ));
    }
    let policy = flags & REDIRECT_POLICY_MASK;
    if ![REDIRECT_ALLOW_SILENT, REDIRECT_ALLOW_REPORT, REDIRECT_DISALLOW].contains(&policy) {
        return Err(invalid(format!(
            "0x{policy:X} is not a redirect policy (0x0, 0x100 or 0x200)"
        )));
    }
    if flags & ENABLE_CRL_CHECK != 0 {
        return Err(CommandError::new(
            BitsCode::E_NOTIMPL,
            "this build of Ferry does not check certificate revocation (BG_SSL_ENABLE_CRL_CHECK)",
        ));
    }
    Ok(())
}

/// Characters of a header line as the owner wrote it: a sealed value counts as its
/// plaintext (hex of nonce, ciphertext and tag: 2 × (12 + n + 16) characters).
fn header_line_chars(line: &str) -> usize {
    match line.split_once(':') {
        Some((name, value)) => match value.trim().strip_prefix(crate::job::SEALED_PREFIX) {
            Some(hex) => name.chars().count() + 2 + (hex.len() / 2).saturating_sub(28),
            None => line.chars().count(),
        },
        None => line.chars().count(),
    }
}

fn invalid(detail: impl Into<String>) -> CommandError {
    CommandError::new(BitsCode::E_INVALIDARG, detail)
}

/// A remote URL: at most 2,200 characters, each path segment at most 260, scheme http
/// or https (and `file` for downloads), with a host for http(s).
pub fn remote_url(url: &str, job_type: JobType) -> Result<(), CommandError> {
    let chars = url.chars().count();
    if chars > MAX_REMOTE_URL_CHARS {
        return Err(invalid(format!(
            "the remote URL has {chars} characters; BITS allows at most {MAX_REMOTE_URL_CHARS}"
        )));
    }
    let parsed = url::Url::parse(url)
        .map_err(|e| invalid(format!("the remote URL {url:?} is not a valid URL: {e}")))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        // Userinfo would be stored, replicated and returned in clear: secrets go through
        // the credentials call, which seals them.
        return Err(invalid(format!(
            "the remote URL {} carries a user name or password; remove it from the URL and \
             give it with the credentials call (PUT /v1/jobs/{{id}}/credentials, \
             `ferry job credentials set`), which keeps it secret",
            without_userinfo(&parsed)
        )));
    }
    match (parsed.scheme(), job_type) {
        ("http" | "https", _) => {
            if parsed.host_str().is_none_or(str::is_empty) {
                return Err(invalid(format!("the remote URL {url:?} has no host")));
            }
        }
        ("file", JobType::Download) => {}
        (scheme, JobType::Download) => {
            return Err(invalid(format!(
                "the remote URL scheme {scheme:?} is not supported; use http, https or file"
            )));
        }
        (scheme, _) => {
            return Err(invalid(format!(
                "upload jobs need an http or https remote URL, not {scheme:?}"
            )));
        }
    }
    if let Some(segment) = url.split(['/', '?']).find(|s| s.chars().count() > MAX_URL_SEGMENT_CHARS)
    {
        return Err(invalid(format!(
            "a segment of the remote URL has {} characters; at most {MAX_URL_SEGMENT_CHARS} are allowed",
            segment.chars().count()
        )));
    }
    Ok(())
}

/// `url` with its userinfo removed, for messages: the secret is never echoed.
fn without_userinfo(url: &url::Url) -> String {
    let mut clean = url.clone();
    // Only fails for URLs that cannot have userinfo, which then have none to hide.
    let _ = clean.set_username("");
    let _ = clean.set_password(None);
    clean.to_string()
}

/// `url` without the password of its userinfo (for views of URLs stored before
/// userinfo was refused); other URLs unchanged.
pub fn without_password(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(None);
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

/// A local path: absolute, naming a file, no `.`/`..` components, no NUL, bounded.
pub fn local_path(path: &str) -> Result<(), CommandError> {
    if !path.starts_with('/') {
        return Err(invalid(format!(
            "the local name {path:?} must be an absolute path (it starts with '/')"
        )));
    }
    if path.len() > MAX_LOCAL_PATH_BYTES {
        return Err(invalid(format!("the local name is longer than {MAX_LOCAL_PATH_BYTES} bytes")));
    }
    if path.contains('\0') {
        return Err(invalid("the local name contains a NUL character"));
    }
    if path.ends_with('/') {
        return Err(invalid(format!("the local name {path:?} names a directory, not a file")));
    }
    if path.split('/').any(|c| c == "." || c == "..") {
        return Err(invalid(format!(
            "the local name {path:?} contains '.' or '..'; give the canonical path"
        )));
    }
    Ok(())
}

/// `AddFileWithRanges` rules: a range may not start at `BG_LENGTH_TO_EOF` or overflow;
/// ranges sorted by offset may not overlap or repeat an offset (a zero-length range at
/// the same offset as another counts as a duplicate, as in BITS).
pub fn ranges(ranges: &[FileRange], max: Option<u32>) -> Result<(), CommandError> {
    if let Some(max) = max
        && ranges.len() > max as usize
    {
        return Err(CommandError::new(
            BitsCode::BG_E_TOO_MANY_RANGES_IN_FILE,
            format!("{} ranges given; the policy allows {max} per file", ranges.len()),
        ));
    }
    for r in ranges {
        if r.offset == crate::file::LENGTH_TO_EOF || (!r.to_eof() && r.end().is_none()) {
            return Err(CommandError::new(
                BitsCode::BG_E_INVALID_RANGE,
                format!("the range at offset {} is not valid", r.offset),
            ));
        }
    }
    let mut sorted: Vec<&FileRange> = ranges.iter().collect();
    sorted.sort_by_key(|r| (r.offset, r.length));
    for pair in sorted.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        let overlaps = a.offset == b.offset || a.end().is_none_or(|end| end > b.offset);
        if overlaps {
            return Err(CommandError::new(
                BitsCode::BG_E_OVERLAPPING_RANGES,
                format!("the ranges at offsets {} and {} overlap", a.offset, b.offset),
            ));
        }
    }
    Ok(())
}

/// One file to add to a job of `job_type`; `whole_streams`: the job fetches each file
/// in one request from its start (dynamic content, or an HTTP method of its own).
pub fn new_file(
    file: &NewFile,
    job_type: JobType,
    whole_streams: bool,
    max_ranges: Option<u32>,
) -> Result<(), CommandError> {
    remote_url(&file.remote_url, job_type)?;
    local_path(&file.local_path)?;
    if !file.ranges.is_empty() {
        if job_type.is_upload() {
            return Err(CommandError::new(
                BitsCode::E_NOTIMPL,
                "byte ranges can only be requested for download jobs",
            ));
        }
        if whole_streams {
            return Err(CommandError::new(
                BitsCode::BG_E_UNSUPPORTED_JOB_CONFIGURATION,
                "a job with dynamic content or an HTTP method of its own cannot download byte ranges",
            ));
        }
        ranges(&file.ranges, max_ranges)?;
    }
    if let Some(hex) = &file.sha256 {
        sha256_hex(hex)?;
        if job_type.is_upload() {
            return Err(CommandError::new(
                BitsCode::E_NOTIMPL,
                "an expected SHA-256 can only be given for downloaded files",
            ));
        }
        if !file.ranges.is_empty() {
            return Err(CommandError::new(
                BitsCode::BG_E_UNSUPPORTED_JOB_CONFIGURATION,
                "an expected SHA-256 is checked against a whole file; this one asks for byte ranges",
            ));
        }
    }
    Ok(())
}

/// Display name and description lengths.
pub fn text(what: &str, value: &str, max_chars: usize) -> Result<(), CommandError> {
    let chars = value.chars().count();
    if chars > max_chars {
        return Err(CommandError::new(
            BitsCode::BG_E_STRING_TOO_LONG,
            format!("the {what} has {chars} characters; at most {max_chars} are allowed"),
        ));
    }
    if value.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(invalid(format!("the {what} contains control characters")));
    }
    Ok(())
}

/// `SetNotifyFlags`: unknown bits are `E_NOTIMPL`, as in BITS.
pub fn notify_flags(flags: u32) -> Result<(), CommandError> {
    if flags & !notify::VALID != 0 {
        return Err(CommandError::new(
            BitsCode::E_NOTIMPL,
            format!(
                "notify flags 0x{flags:X} contain undefined bits (valid: 0x{:X})",
                notify::VALID
            ),
        ));
    }
    Ok(())
}

/// `SetNotifyCmdLine`: an absolute program path and bounded arguments.
pub fn notify_cmdline(cmd: &NotifyCmdLine) -> Result<(), CommandError> {
    if !cmd.program.starts_with('/') || cmd.program.contains('\0') {
        return Err(invalid(format!(
            "the notify program {:?} must be an absolute path (no search path is used)",
            cmd.program
        )));
    }
    if cmd.program.len() > MAX_NOTIFY_PROGRAM_BYTES {
        return Err(CommandError::new(
            BitsCode::BG_E_STRING_TOO_LONG,
            "the notify program path is too long",
        ));
    }
    let chars: usize = cmd.args.iter().map(|a| a.chars().count() + 1).sum();
    if chars > MAX_NOTIFY_ARGS_CHARS || cmd.args.len() > MAX_NOTIFY_ARGS {
        return Err(CommandError::new(
            BitsCode::BG_E_STRING_TOO_LONG,
            format!(
                "the notify arguments have {chars} characters; at most {MAX_NOTIFY_ARGS_CHARS} are allowed"
            ),
        ));
    }
    if cmd.args.iter().any(|a| a.contains('\0')) {
        return Err(invalid("a notify argument contains a NUL character"));
    }
    Ok(())
}

/// `SetProxySettings`: lists only with OVERRIDE (where the proxy list is required),
/// each list at most 32 KB.
pub fn proxy(proxy: &ProxySettings) -> Result<(), CommandError> {
    for (list, code) in [
        (&proxy.list, BitsCode::BG_E_PROXY_LIST_TOO_LARGE),
        (&proxy.bypass, BitsCode::BG_E_PROXY_BYPASS_LIST_TOO_LARGE),
    ] {
        if list.as_ref().is_some_and(|l| l.len() > MAX_PROXY_LIST_BYTES) {
            return Err(CommandError::new(code, "the list is longer than 32 KB"));
        }
    }
    match proxy.usage {
        ProxyUsage::Override if proxy.list.as_deref().is_none_or(|l| l.trim().is_empty()) => {
            Err(invalid("proxy usage 'override' needs a proxy list"))
        }
        ProxyUsage::Override => Ok(()),
        _ if proxy.list.is_some() || proxy.bypass.is_some() => {
            Err(invalid("proxy and bypass lists are only allowed with proxy usage 'override'"))
        }
        _ => Ok(()),
    }
}

/// `SetCustomHeaders`: `Name: value` lines with a token name and no CR/LF inside, at
/// most 16 KB in all.
pub fn custom_headers(lines: &[String]) -> Result<(), CommandError> {
    let chars: usize = lines.iter().map(|l| header_line_chars(l) + 2).sum();
    if chars > MAX_CUSTOM_HEADERS_CHARS {
        return Err(CommandError::new(
            BitsCode::BG_E_STRING_TOO_LONG,
            format!(
                "the custom headers have {chars} characters; at most {MAX_CUSTOM_HEADERS_CHARS} are allowed"
            ),
        ));
    }
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(invalid(format!(
                "custom header {line:?} is not of the form 'Name: value'"
            )));
        };
        let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if name.is_empty() || !name.chars().all(token) {
            return Err(invalid(format!("custom header name {name:?} is not a valid HTTP token")));
        }
        if let Some(why) = reserved_header(name) {
            return Err(invalid(format!(
                "custom header {name:?} cannot be set: {why}; remove it from the custom headers"
            )));
        }
        if value.chars().any(|c| c == '\r' || c == '\n' || c == '\0') {
            return Err(invalid(format!("custom header {name:?} has a line break in its value")));
        }
    }
    Ok(())
}

/// Why a header name may not be a custom header, or `None` if it may. Ferry sets these
/// itself: framing (`Content-Length`, `Transfer-Encoding`: a second value desynchronizes
/// the connection), hop-by-hop headers (RFC 9110 §7.6.1, which a proxy strips), proxy
/// credentials, the range requests of the engine and the BITS upload protocol. Names
/// compare case-insensitively. `Authorization` stays allowed: a bearer token in a
/// write-only custom header is how BITS jobs reach token-authenticated origins
/// (`MakeCustomHeadersWriteOnly`), and custom headers go only to the job's origin.
pub fn reserved_header(name: &str) -> Option<&'static str> {
    const FRAMING: &str = "it frames the HTTP message, which Ferry does itself";
    const HOP: &str = "it is a hop-by-hop header, which Ferry manages per connection";
    const RANGES: &str =
        "Ferry sends it to fetch byte ranges and check that the file did not change";
    let lower = name.to_ascii_lowercase();
    let why = match lower.as_str() {
        "host" => "Ferry sends the host of the remote URL",
        "content-length" | "transfer-encoding" | "content-range" => FRAMING,
        "connection" | "keep-alive" | "te" | "trailer" | "upgrade" | "expect"
        | "http2-settings" => HOP,
        "range" | "if-range" => RANGES,
        "max-forwards" | "via" | "forwarded" => "it belongs to proxies",
        _ if lower.starts_with("proxy-") => {
            "proxy headers are set by Ferry from the job's proxy settings and credentials"
        }
        _ if lower.starts_with("bits-") => "Ferry speaks the BITS upload protocol itself",
        _ => return None,
    };
    Some(why)
}

/// Peer caching and ACL flags: only defined bits.
pub fn flag_bits(what: &str, flags: u32, valid: u32) -> Result<(), CommandError> {
    if flags & !valid != 0 {
        return Err(invalid(format!(
            "{what} 0x{flags:X} contain undefined bits (valid: 0x{valid:X})"
        )));
    }
    Ok(())
}

/// Valid peer-caching flags.
pub fn peer_caching_flags(flags: u32) -> Result<(), CommandError> {
    flag_bits("peer caching flags", flags, peer_caching::VALID)
}

/// `ReplaceRemotePrefix`'s prefixes: the old one not empty, neither longer than a
/// remote URL, and the new one no `file:` URL (local sources are named one by one with
/// `SetRemoteName`, where the caller's roots are checked).
pub fn prefix_change(change: &crate::command::PrefixChange) -> Result<(), CommandError> {
    if change.old_prefix.is_empty() {
        return Err(invalid("old_prefix is empty"));
    }
    if change.old_prefix.len() > MAX_REMOTE_URL_CHARS
        || change.new_prefix.len() > MAX_REMOTE_URL_CHARS
    {
        return Err(invalid(format!("a prefix is longer than {MAX_REMOTE_URL_CHARS} characters")));
    }
    if change.new_prefix.get(..5).is_some_and(|s| s.eq_ignore_ascii_case("file:")) {
        return Err(invalid(
            "new_prefix may not be a file: URL; use SetRemoteName for local sources",
        ));
    }
    Ok(())
}

/// Valid ACL flags.
pub fn acl_flags(flags: u32) -> Result<(), CommandError> {
    flag_bits("ACL flags", flags, acl::VALID)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(r: Result<(), CommandError>) -> Option<BitsCode> {
        r.err().map(|e| e.code)
    }

    #[test]
    fn remote_urls() {
        let dl = JobType::Download;
        assert_eq!(code(remote_url("https://example.com/a.iso", dl)), None);
        assert_eq!(code(remote_url("file:///srv/a.iso", dl)), None);
        assert_eq!(
            code(remote_url("file:///srv/a.iso", JobType::Upload)),
            Some(BitsCode::E_INVALIDARG)
        );
        assert_eq!(code(remote_url("ftp://example.com/a", dl)), Some(BitsCode::E_INVALIDARG));
        assert_eq!(code(remote_url("not a url", dl)), Some(BitsCode::E_INVALIDARG));
        let long = format!("http://example.com/{}", "a/".repeat(1100));
        assert_eq!(code(remote_url(&long, dl)), Some(BitsCode::E_INVALIDARG));
        let long_segment = format!("http://example.com/{}", "a".repeat(261));
        assert_eq!(code(remote_url(&long_segment, dl)), Some(BitsCode::E_INVALIDARG));
    }

    #[test]
    fn urls_with_userinfo_are_refused_without_echoing_the_password() {
        for url in [
            "https://u:hunter2@example.com/a",
            "https://u@example.com/a",
            "http://:hunter2@example.com/a",
            "HTTP://U:hunter2@EXAMPLE.COM/a",
        ] {
            for job_type in [JobType::Download, JobType::Upload, JobType::UploadReply] {
                let error = remote_url(url, job_type).expect_err(url);
                assert_eq!(error.code, BitsCode::E_INVALIDARG);
                assert!(error.detail.contains("credentials"), "{}", error.detail);
                assert!(!error.detail.contains("hunter2"), "{}", error.detail);
            }
        }
        assert_eq!(without_password("https://u:hunter2@example.com/a"), "https://u@example.com/a");
        assert_eq!(without_password("https://example.com/a@b"), "https://example.com/a@b");
        // An '@' in the path or query is not userinfo.
        assert_eq!(code(remote_url("https://example.com/a@b?c=d@e", JobType::Download)), None);
    }

    #[test]
    fn framing_hop_by_hop_and_proxy_headers_are_refused() {
        for name in [
            "Host",
            "Content-Length",
            "content-length",
            "TRANSFER-ENCODING",
            "Connection",
            "Keep-Alive",
            "TE",
            "Trailer",
            "Upgrade",
            "Proxy-Authorization",
            "Proxy-Connection",
            "proxy-authenticate",
            "Range",
            "If-Range",
            "Expect",
            "BITS-Packet-Type",
        ] {
            let line = format!("{name}: 5");
            let error = custom_headers(&[line]).expect_err(name);
            assert_eq!(error.code, BitsCode::E_INVALIDARG);
            assert!(error.detail.contains(name), "{}", error.detail);
        }
        for fine in ["X-Trace: 1", "Accept: */*", "Authorization: Bearer t", "If-None-Match: x"] {
            assert_eq!(code(custom_headers(&[fine.into()])), None, "{fine}");
        }
    }

    #[test]
    fn local_paths() {
        assert_eq!(code(local_path("/srv/file")), None);
        for bad in ["relative/file", "./file", "/srv/../etc/passwd", "/srv/dir/", "", "/a\0b"] {
            assert_eq!(code(local_path(bad)), Some(BitsCode::E_INVALIDARG), "{bad:?}");
        }
    }

    fn r(offset: u64, length: u64) -> FileRange {
        FileRange { offset, length }
    }

    #[test]
    fn range_rules_follow_add_file_with_ranges() {
        use crate::file::LENGTH_TO_EOF as EOF;
        assert_eq!(code(ranges(&[r(100, 100), r(900, 100), r(400, 100)], None)), None);
        assert_eq!(code(ranges(&[r(0, 10), r(10, EOF)], None)), None);
        assert_eq!(code(ranges(&[r(EOF, 1)], None)), Some(BitsCode::BG_E_INVALID_RANGE));
        assert_eq!(code(ranges(&[r(u64::MAX - 1, 5)], None)), Some(BitsCode::BG_E_INVALID_RANGE));
        assert_eq!(
            code(ranges(&[r(0, 10), r(5, 10)], None)),
            Some(BitsCode::BG_E_OVERLAPPING_RANGES)
        );
        assert_eq!(
            code(ranges(&[r(5, 0), r(5, 10)], None)),
            Some(BitsCode::BG_E_OVERLAPPING_RANGES)
        );
        assert_eq!(
            code(ranges(&[r(0, EOF), r(50, 1)], None)),
            Some(BitsCode::BG_E_OVERLAPPING_RANGES)
        );
        let many: Vec<FileRange> = (0..501).map(|i| r(i * 10, 5)).collect();
        assert_eq!(code(ranges(&many, Some(500))), Some(BitsCode::BG_E_TOO_MANY_RANGES_IN_FILE));
        assert_eq!(code(ranges(&many, None)), None);
    }

    #[test]
    fn properties() {
        assert_eq!(code(notify_flags(0x3F)), None);
        assert_eq!(code(notify_flags(0x40)), Some(BitsCode::E_NOTIMPL));
        let over = ProxySettings { usage: ProxyUsage::Override, list: None, bypass: None };
        assert_eq!(code(proxy(&over)), Some(BitsCode::E_INVALIDARG));
        let huge = ProxySettings {
            usage: ProxyUsage::Override,
            list: Some("p ".repeat(20_000)),
            bypass: None,
        };
        assert_eq!(code(proxy(&huge)), Some(BitsCode::BG_E_PROXY_LIST_TOO_LARGE));
        assert_eq!(code(custom_headers(&["X-A: 1".into()])), None);
        assert_eq!(code(custom_headers(&["X-A 1".into()])), Some(BitsCode::E_INVALIDARG));
        assert_eq!(
            code(custom_headers(&["X-A: 1\r\nX-B: 2".into()])),
            Some(BitsCode::E_INVALIDARG)
        );
        assert_eq!(
            code(custom_headers(&["X: ".to_string() + &"v".repeat(16_400)])),
            Some(BitsCode::BG_E_STRING_TOO_LONG)
        );
        let rel = NotifyCmdLine { program: "notify.sh".into(), args: vec![] };
        assert_eq!(code(notify_cmdline(&rel)), Some(BitsCode::E_INVALIDARG));
        assert_eq!(
            code(text("description", &"d".repeat(1025), MAX_DESCRIPTION_CHARS)),
            Some(BitsCode::BG_E_STRING_TOO_LONG)
        );
    }
}
