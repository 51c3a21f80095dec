//! BITS result codes (HRESULTs): the `BG_E_*`/`BG_S_*` table of `bitsmsg.h` with exact
//! values and English descriptions, the HTTP status mapping `0x80190000 | status`, the
//! few generic COM/Win32 codes BITS methods return, and the error contexts.
//!
//! Note the real numbering gap 0x80200049 → 0x80200050; it is Microsoft's, not a typo.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
#[cfg(feature = "openapi")]
use utoipa::ToSchema;

/// A BITS/COM result code. Success codes have the top bit clear.
///
/// Serialized as `"0x80200001"` in JSON and as a `u32` in the binary codec.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[cfg_attr(feature = "openapi", schema(value_type = String, example = "0x80200001"))]
pub struct BitsCode(pub u32);

/// One row of the code table.
#[derive(Debug, Clone, Copy)]
pub struct CodeInfo {
    /// The numeric value.
    pub code: u32,
    /// The symbolic name from `bitsmsg.h` / `winerror.h`.
    pub name: &'static str,
    /// The English description.
    pub description: &'static str,
}

macro_rules! code_table {
    ($( $name:ident = $value:literal, $text:literal; )*) => {
        #[allow(missing_docs)]
        impl BitsCode {
            $( pub const $name: Self = Self($value); )*
        }

        /// Every named code, in numeric order within each family.
        pub static CODES: &[CodeInfo] = &[
            $( CodeInfo { code: $value, name: stringify!($name), description: $text }, )*
        ];
    };
}

code_table! {
    S_OK = 0x0000_0000, "The operation completed successfully.";
    S_FALSE = 0x0000_0001, "The operation succeeded and did nothing (what it was to change had already changed).";
    BG_S_ERROR_CONTEXT_NONE = 0x0020_0006, "No errors have occurred.";
    BG_S_PARTIAL_COMPLETE = 0x0020_0017, "A subset of the job's files transferred successfully before the Complete method was called. Those that were not complete were deleted.";
    BG_S_UNABLE_TO_DELETE_FILES = 0x0020_001A, "Unable to delete all temporary files associated with the job.";
    BG_S_PROXY_CHANGED = 0x0020_002A, "The proxy server was changed.";
    BG_S_OVERRIDDEN_BY_POLICY = 0x0020_0055, "The configuration preference has been saved successfully, but the preference will not be used because a configured Group Policy setting overrides the preference.";

    BG_E_NOT_FOUND = 0x8020_0001, "The requested job was not found.";
    BG_E_INVALID_STATE = 0x8020_0002, "The requested action is not allowed in the current job state.";
    BG_E_EMPTY = 0x8020_0003, "The job must contain one or more files before you can resume the job.";
    BG_E_FILE_NOT_AVAILABLE = 0x8020_0004, "File information is not available because the error is not associated with a local or remote file.";
    BG_E_PROTOCOL_NOT_AVAILABLE = 0x8020_0005, "Protocol information is not available because the error is not associated with the specified transfer protocol.";
    BG_E_ERROR_CONTEXT_UNKNOWN = 0x8020_0007, "The error occurred in an unknown location.";
    BG_E_ERROR_CONTEXT_GENERAL_QUEUE_MANAGER = 0x8020_0008, "The error occurred in the transfer queue manager.";
    BG_E_ERROR_CONTEXT_LOCAL_FILE = 0x8020_0009, "The error occurred while processing the local file. Verify that the file is not in use, and then try again.";
    BG_E_ERROR_CONTEXT_REMOTE_FILE = 0x8020_000A, "The error occurred while processing the remote file.";
    BG_E_ERROR_CONTEXT_GENERAL_TRANSPORT = 0x8020_000B, "The error occurred in the transport layer. The client could not connect to the server.";
    BG_E_ERROR_CONTEXT_QUEUE_MANAGER_NOTIFICATION = 0x8020_000C, "The error occurred while the queue manager was notifying the program.";
    BG_E_DESTINATION_LOCKED = 0x8020_000D, "The destination file system volume, specified in the local file name, is locked.";
    BG_E_VOLUME_CHANGED = 0x8020_000E, "The destination volume, specified in the local file name, has changed.";
    BG_E_ERROR_INFORMATION_UNAVAILABLE = 0x8020_000F, "Error information is only available when the state of the job is ERROR or TRANSIENT_ERROR.";
    BG_E_NETWORK_DISCONNECTED = 0x8020_0010, "The network adapter is inactive or disconnected. All jobs are placed in the TRANSIENT_ERROR state.";
    BG_E_MISSING_FILE_SIZE = 0x8020_0011, "The server did not return the file size. The server must return the Content-Length header unless the job allows dynamic content.";
    BG_E_INSUFFICIENT_HTTP_SUPPORT = 0x8020_0012, "The server does not support the HTTP/1.1 protocol.";
    BG_E_INSUFFICIENT_RANGE_SUPPORT = 0x8020_0013, "The server does not support the Content-Range header. Typically, you receive this error when you try to download dynamic content, or an intermediate proxy removes the Content-Range or Content-Length header.";
    BG_E_REMOTE_NOT_SUPPORTED = 0x8020_0014, "Remote use of BITS is not supported.";
    BG_E_NEW_OWNER_DIFF_MAPPING = 0x8020_0015, "The network drive mapping for the local file is different for the current owner than for the previous owner.";
    BG_E_NEW_OWNER_NO_FILE_ACCESS = 0x8020_0016, "The new owner has insufficient permissions to the temporary job files.";
    BG_E_PROXY_LIST_TOO_LARGE = 0x8020_0018, "The HTTP proxy list is too long. The list must not exceed 32 KB.";
    BG_E_PROXY_BYPASS_LIST_TOO_LARGE = 0x8020_0019, "The HTTP proxy bypass list is too long. The list must not exceed 32 KB.";
    BG_E_INVALID_SERVER_RESPONSE = 0x8020_001B, "The server returned an invalid response, for example merged byte ranges.";
    BG_E_TOO_MANY_FILES = 0x8020_001C, "You cannot add more than one file to an upload job.";
    BG_E_LOCAL_FILE_CHANGED = 0x8020_001D, "The contents of the local file changed after the transfer process began. The contents of the local file cannot change after the transfer process begins on an upload or upload-reply job.";
    BG_E_ERROR_CONTEXT_REMOTE_APPLICATION = 0x8020_001E, "The error was reported by the server application that processed the upload.";
    BG_E_SESSION_NOT_FOUND = 0x8020_001F, "The upload session was not found on the server.";
    BG_E_TOO_LARGE = 0x8020_0020, "The size of the upload file exceeds the maximum allowed upload size specified on the server.";
    BG_E_STRING_TOO_LONG = 0x8020_0021, "The specified string is too long.";
    BG_E_CLIENT_SERVER_PROTOCOL_MISMATCH = 0x8020_0022, "The client and server were unable to negotiate a protocol to use for the upload job.";
    BG_E_SERVER_EXECUTE_ENABLE = 0x8020_0023, "Scripting or execute permissions are enabled on the server directory associated with the job. Disable them to upload files there.";
    BG_E_NO_PROGRESS = 0x8020_0024, "The job made no progress within its no-progress timeout.";
    BG_E_USERNAME_TOO_LARGE = 0x8020_0025, "The user name cannot exceed 300 characters.";
    BG_E_PASSWORD_TOO_LARGE = 0x8020_0026, "The password cannot exceed 65535 characters.";
    BG_E_INVALID_AUTH_TARGET = 0x8020_0027, "The specified authentication target is not valid.";
    BG_E_INVALID_AUTH_SCHEME = 0x8020_0028, "The specified authentication scheme is not valid.";
    BG_E_FILE_NOT_FOUND = 0x8020_0029, "The specified file was not found.";
    BG_E_INVALID_RANGE = 0x8020_002B, "The specified byte range is invalid. The byte range must exist within the specified remote file.";
    BG_E_OVERLAPPING_RANGES = 0x8020_002C, "The list of byte ranges contains overlapping or duplicate ranges, which are not supported.";
    BG_E_CONNECT_FAILURE = 0x8020_002D, "A connection could not be established to the server.";
    BG_E_CONNECTION_CLOSED = 0x8020_002E, "The connection to the server was closed unexpectedly.";
    BG_E_KEEP_ALIVE_FAILURE = 0x8020_002F, "A connection that was expected to be kept alive was closed by the server.";
    BG_E_MESSAGE_LENGTH_LIMIT_EXCEEDED = 0x8020_0030, "A message was received that exceeded the allowed length.";
    BG_E_NAME_RESOLUTION_FAILURE = 0x8020_0031, "The server name could not be resolved.";
    BG_E_PENDING = 0x8020_0032, "An internal asynchronous request is pending.";
    BG_E_PIPELINE_FAILURE = 0x8020_0033, "The request was pipelined and the connection was closed before the response was received.";
    BG_E_PROTOCOL_ERROR = 0x8020_0034, "The response received from the server was complete but indicated a protocol-level error.";
    BG_E_PROXY_NAME_RESOLUTION_FAILURE = 0x8020_0035, "The proxy server name could not be resolved.";
    BG_E_RECEIVE_FAILURE = 0x8020_0036, "A complete response was not received from the server.";
    BG_E_REQUEST_CANCELED = 0x8020_0037, "The request was canceled.";
    BG_E_SECURE_CHANNEL_FAILURE = 0x8020_0038, "An error occurred while establishing a connection using TLS.";
    BG_E_SEND_FAILURE = 0x8020_0039, "A complete request could not be sent to the server.";
    BG_E_SERVER_PROTOCOL_VIOLATION = 0x8020_003A, "The server response was not valid.";
    BG_E_TIMEOUT = 0x8020_003B, "The operation exceeded the time limit.";
    BG_E_TRUST_FAILURE = 0x8020_003C, "The server certificate could not be validated.";
    BG_E_UNKNOWN_ERROR = 0x8020_003D, "An unknown transport error occurred.";
    BG_E_BLOCKED_BY_POLICY = 0x8020_003E, "Policy settings prevent background jobs from running at this time.";
    BG_E_INVALID_PROXY_INFO = 0x8020_003F, "The proxy list or proxy bypass list specified for the job is invalid.";
    BG_E_INVALID_CREDENTIALS = 0x8020_0040, "The format of the supplied security credentials is not valid.";
    BG_E_INVALID_HASH_ALGORITHM = 0x8020_0041, "The hash algorithm is not valid.";
    BG_E_RECORD_DELETED = 0x8020_0042, "The cache record has been deleted. The attempt to update it has been abandoned.";
    BG_E_COMMIT_IN_PROGRESS = 0x8020_0043, "A cache commit is in progress.";
    BG_E_DISCOVERY_IN_PROGRESS = 0x8020_0044, "Peer discovery is in progress.";
    BG_E_UPNP_ERROR = 0x8020_0045, "A Universal Plug and Play (UPnP) error has occurred.";
    BG_E_TEST_OPTION_BLOCKED_DOWNLOAD = 0x8020_0046, "A test option blocked the download.";
    BG_E_PEERCACHING_DISABLED = 0x8020_0047, "Peer-caching is disabled.";
    BG_E_BUSYCACHERECORD = 0x8020_0048, "The cache record is in use and cannot be changed or deleted. Try again after a few seconds.";
    BG_E_TOO_MANY_JOBS_PER_USER = 0x8020_0049, "The job count for the user has exceeded the per user job limit (MaxJobsPerUser).";
    BG_E_TOO_MANY_JOBS_PER_MACHINE = 0x8020_0050, "The job count for the cluster has exceeded the job limit (MaxJobsPerMachine).";
    BG_E_TOO_MANY_FILES_IN_JOB = 0x8020_0051, "The file count for the job has exceeded the per job file limit (MaxFilesPerJob).";
    BG_E_TOO_MANY_RANGES_IN_FILE = 0x8020_0052, "The range count for the file has exceeded the per file range limit (MaxRangesPerFile).";
    BG_E_VALIDATION_FAILED = 0x8020_0053, "The application marked the downloaded content as not valid.";
    BG_E_MAXDOWNLOAD_TIMEOUT = 0x8020_0054, "The download did not complete within the maximum download time set on the job.";
    BG_E_TOKEN_REQUIRED = 0x8020_0056, "A helper token is required for this job.";
    BG_E_UNKNOWN_PROPERTY_ID = 0x8020_0057, "The property id is not known.";
    BG_E_READ_ONLY_PROPERTY = 0x8020_0058, "The property is read-only.";
    BG_E_BLOCKED_BY_COST_TRANSFER_POLICY = 0x8020_0059, "The job's transfer policy does not allow transfers on the current network cost.";
    BG_E_PROPERTY_SUPPORTED_FOR_DOWNLOAD_JOBS_ONLY = 0x8020_0060, "The property is supported for download jobs only.";
    BG_E_READ_ONLY_PROPERTY_AFTER_ADDFILE = 0x8020_0061, "The property cannot be changed after files have been added to the job.";
    BG_E_READ_ONLY_PROPERTY_AFTER_RESUME = 0x8020_0062, "The property cannot be changed after the job has been resumed for the first time.";
    BG_E_MAX_DOWNLOAD_SIZE_INVALID_VALUE = 0x8020_0063, "The maximum download size is not a valid value.";
    BG_E_MAX_DOWNLOAD_SIZE_LIMIT_REACHED = 0x8020_0064, "The download exceeded the job's maximum download size.";
    BG_E_STANDBY_MODE = 0x8020_0065, "The transfer is paused while the system is in standby mode.";
    BG_E_USE_STORED_CREDENTIALS_NOT_SUPPORTED = 0x8020_0066, "Stored credentials are not supported for this authentication target.";
    BG_E_BLOCKED_BY_BATTERY_POLICY = 0x8020_0067, "The battery policy prevents the transfer.";
    BG_E_BLOCKED_BY_BATTERY_SAVER = 0x8020_0068, "Battery saver prevents the transfer.";
    BG_E_WATCHDOG_TIMEOUT = 0x8020_0069, "The transfer was stopped by a watchdog timeout.";
    BG_E_APP_PACKAGE_NOT_FOUND = 0x8020_006A, "The application package was not found.";
    BG_E_APP_PACKAGE_SCENARIO_NOT_SUPPORTED = 0x8020_006B, "The application package scenario is not supported.";
    BG_E_DATABASE_CORRUPT = 0x8020_006C, "The job store is corrupt.";
    BG_E_RANDOM_ACCESS_NOT_SUPPORTED = 0x8020_006D, "The server does not meet the requirements for random access (on-demand) downloads.";
    BG_E_BLOCKED_BY_BACKGROUND_ACCESS_POLICY = 0x8020_006E, "The background access policy prevents the transfer.";
    BG_E_BLOCKED_BY_GAME_MODE = 0x8020_006F, "Game mode prevents the transfer.";
    BG_E_BLOCKED_BY_SYSTEM_POLICY = 0x8020_0070, "A system policy prevents the transfer.";
    BG_E_NOT_SUPPORTED_WITH_CUSTOM_HTTP_METHOD = 0x8020_0071, "The operation is not supported for jobs with a custom HTTP method.";
    BG_E_UNSUPPORTED_JOB_CONFIGURATION = 0x8020_0072, "The combination of job properties is not supported.";
    BG_E_REMOTE_FILE_CHANGED = 0x8020_0073, "The remote file changed during the transfer.";
    BG_E_SERVER_CERT_VALIDATION_INTERFACE_REQUIRED = 0x8020_0074, "A server certificate validation callback is required.";
    BG_E_READ_ONLY_WHEN_JOB_ACTIVE = 0x8020_0075, "The property cannot be changed while the job is active.";
    BG_E_ERROR_CONTEXT_SERVER_CERTIFICATE_CALLBACK = 0x8020_0076, "The error occurred in the server certificate validation callback.";

    E_NOTIMPL = 0x8000_4001, "The operation is not supported for this job or argument.";
    E_FAIL = 0x8000_4005, "Unspecified failure.";
    E_PENDING = 0x8000_000A, "The data necessary to complete this operation is not yet available.";
    E_UNEXPECTED = 0x8000_FFFF, "Catastrophic failure.";
    E_ACCESSDENIED = 0x8007_0005, "Access is denied.";
    E_INVALIDARG = 0x8007_0057, "One or more arguments are not valid.";
    ERROR_FILE_NOT_FOUND = 0x8007_0002, "The system cannot find the file specified.";
    ERROR_PATH_NOT_FOUND = 0x8007_0003, "The system cannot find the path specified.";
    ERROR_FILE_EXISTS = 0x8007_0050, "The file exists.";
    ERROR_DISK_FULL = 0x8007_0070, "There is not enough space on the disk.";
    ERROR_WRITE_FAULT = 0x8007_001D, "The system cannot write to the specified device.";
    ERROR_NOT_SUPPORTED = 0x8007_0032, "The request is not supported.";
    ERROR_RETRY = 0x8007_04D5, "The operation could not be completed. A retry should be performed.";
}

/// HTTP statuses for which `bitsmsg.h` defines `BG_E_HTTP_ERROR_<nnn>`.
pub const BITS_HTTP_STATUSES: &[u16] = &[
    100, 101, 200, 201, 202, 203, 204, 205, 206, 300, 301, 302, 303, 304, 305, 307, 400, 401, 402,
    403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415, 416, 417, 449, 500, 501, 502,
    503, 504, 505,
];

/// The facility prefix of HTTP-status codes.
const HTTP_FACILITY: u32 = 0x8019_0000;

impl BitsCode {
    /// `BG_E_HTTP_ERROR_<status>` = `0x80190000 | status`.
    pub const fn http(status: u16) -> Self {
        Self(HTTP_FACILITY | status as u32)
    }

    /// The HTTP status this code carries, if it is a `BG_E_HTTP_ERROR_*` code.
    pub fn http_status(self) -> Option<u16> {
        let status = self.0 & 0xFFFF;
        (self.0 & 0xFFFF_0000 == HTTP_FACILITY && (100..600).contains(&status))
            .then(|| u16::try_from(status).ok())
            .flatten()
    }

    /// True for success codes (`S_OK`, `BG_S_*`).
    pub const fn is_success(self) -> bool {
        self.0 & 0x8000_0000 == 0
    }

    fn info(self) -> Option<&'static CodeInfo> {
        CODES.iter().find(|info| info.code == self.0)
    }

    /// The symbolic name (`BG_E_NOT_FOUND`, `BG_E_HTTP_ERROR_404`), if the code is known.
    pub fn name(self) -> Option<Cow<'static, str>> {
        if let Some(info) = self.info() {
            return Some(Cow::Borrowed(info.name));
        }
        self.http_status().map(|status| Cow::Owned(format!("BG_E_HTTP_ERROR_{status}")))
    }

    /// The English description (BITS `GetErrorDescription`), if the code is known.
    pub fn description(self) -> Option<Cow<'static, str>> {
        if let Some(info) = self.info() {
            return Some(Cow::Borrowed(info.description));
        }
        self.http_status().map(http_description)
    }
}

/// Descriptions of the HTTP-status codes: Microsoft's wording where its docs give one,
/// otherwise the status and its reason phrase.
fn http_description(status: u16) -> Cow<'static, str> {
    let documented = match status {
        400 => {
            "The server could not process the transfer request because the syntax of the remote file name is invalid."
        }
        401 => {
            "The user does not have permission to access the remote file. The requested resource requires user authentication."
        }
        403 => "The server understood the request but refuses to fulfill it.",
        404 => "The requested URL does not exist on the server.",
        407 => {
            "The user does not have permission to access the proxy. The proxy requires user authentication."
        }
        414 => {
            "The server cannot process the transfer request. The URI in the remote file name is longer than the server can interpret."
        }
        416 => "The server cannot satisfy the requested byte range.",
        501 => "The server does not support the functionality required to fulfill the request.",
        503 => {
            "The service is temporarily overloaded and cannot process the request. Resume the job at a later time."
        }
        504 => {
            "The transfer request timed out while waiting for a gateway. Resume the job at a later time."
        }
        505 => {
            "The server does not support the HTTP protocol version specified in the remote file name."
        }
        _ => "",
    };
    if !documented.is_empty() {
        return Cow::Borrowed(documented);
    }
    Cow::Owned(format!("The server returned HTTP status {status} ({}).", reason_phrase(status)))
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        305 => "Use Proxy",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        402 => "Payment Required",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        429 => "Too Many Requests",
        449 => "Retry With",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        _ => "unrecognized status",
    }
}

impl fmt::Display for BitsCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:08X}", self.0)
    }
}

impl fmt::Debug for BitsCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name}({self})"),
            None => write!(f, "BitsCode({self})"),
        }
    }
}

impl std::str::FromStr for BitsCode {
    type Err = std::num::ParseIntError;

    /// Accepts `0x80200001`, `80200001` (hex) and a symbolic name such as `BG_E_NOT_FOUND`
    /// or `BG_E_HTTP_ERROR_404`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Some(info) = CODES.iter().find(|info| info.name.eq_ignore_ascii_case(s)) {
            return Ok(Self(info.code));
        }
        let upper = s.to_ascii_uppercase();
        if let Some(status) = upper.strip_prefix("BG_E_HTTP_ERROR_") {
            return status.parse::<u16>().map(Self::http);
        }
        let hex = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")).unwrap_or(s);
        u32::from_str_radix(hex, 16).map(Self)
    }
}

impl Serialize for BitsCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() { s.collect_str(self) } else { s.serialize_u32(self.0) }
    }
}

impl<'de> Deserialize<'de> for BitsCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            text.parse().map_err(serde::de::Error::custom)
        } else {
            u32::deserialize(d).map(Self)
        }
    }
}

/// Where an error happened (`BG_ERROR_CONTEXT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorContext {
    /// 0: no error context.
    None,
    /// 1: unknown.
    Unknown,
    /// 2: the queue manager.
    GeneralQueueManager,
    /// 3: notifying the owner (callback or command line).
    QueueManagerNotification,
    /// 4: the local file.
    LocalFile,
    /// 5: the remote file.
    RemoteFile,
    /// 6: the transport (connect, TLS, DNS, proxy).
    GeneralTransport,
    /// 7: the server application that processed an upload-reply.
    RemoteApplication,
    /// 8: the server certificate validation callback.
    ServerCertificateCallback,
}

impl ErrorContext {
    /// The `BG_ERROR_CONTEXT` value.
    pub fn value(self) -> u32 {
        match self {
            Self::None => 0,
            Self::Unknown => 1,
            Self::GeneralQueueManager => 2,
            Self::QueueManagerNotification => 3,
            Self::LocalFile => 4,
            Self::RemoteFile => 5,
            Self::GeneralTransport => 6,
            Self::RemoteApplication => 7,
            Self::ServerCertificateCallback => 8,
        }
    }

    /// The context's message code (BITS `GetErrorContextDescription` reads its text).
    pub fn code(self) -> BitsCode {
        match self {
            Self::None => BitsCode::BG_S_ERROR_CONTEXT_NONE,
            Self::Unknown => BitsCode::BG_E_ERROR_CONTEXT_UNKNOWN,
            Self::GeneralQueueManager => BitsCode::BG_E_ERROR_CONTEXT_GENERAL_QUEUE_MANAGER,
            Self::QueueManagerNotification => {
                BitsCode::BG_E_ERROR_CONTEXT_QUEUE_MANAGER_NOTIFICATION
            }
            Self::LocalFile => BitsCode::BG_E_ERROR_CONTEXT_LOCAL_FILE,
            Self::RemoteFile => BitsCode::BG_E_ERROR_CONTEXT_REMOTE_FILE,
            Self::GeneralTransport => BitsCode::BG_E_ERROR_CONTEXT_GENERAL_TRANSPORT,
            Self::RemoteApplication => BitsCode::BG_E_ERROR_CONTEXT_REMOTE_APPLICATION,
            Self::ServerCertificateCallback => {
                BitsCode::BG_E_ERROR_CONTEXT_SERVER_CERTIFICATE_CALLBACK
            }
        }
    }

    /// The English context description.
    pub fn description(self) -> Cow<'static, str> {
        self.code().description().unwrap_or(Cow::Borrowed("Unknown error context."))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_values_of_well_known_codes() {
        assert_eq!(BitsCode::BG_E_NOT_FOUND.0, 0x8020_0001);
        assert_eq!(BitsCode::BG_E_TOO_MANY_FILES.0, 0x8020_001C);
        assert_eq!(BitsCode::BG_E_TOO_MANY_JOBS_PER_USER.0, 0x8020_0049);
        assert_eq!(BitsCode::BG_E_TOO_MANY_JOBS_PER_MACHINE.0, 0x8020_0050);
        assert_eq!(BitsCode::BG_E_TOO_MANY_FILES_IN_JOB.0, 0x8020_0051);
        assert_eq!(BitsCode::BG_S_PARTIAL_COMPLETE.0, 0x0020_0017);
        assert_eq!(BitsCode::BG_E_ERROR_CONTEXT_UNKNOWN.0, 0x8020_0007);
        assert_eq!(BitsCode::BG_E_ERROR_CONTEXT_SERVER_CERTIFICATE_CALLBACK.0, 0x8020_0076);
    }

    #[test]
    fn table_has_unique_values_and_names_and_real_descriptions() {
        let mut values: Vec<u32> = CODES.iter().map(|c| c.code).collect();
        values.sort_unstable();
        values.dedup();
        assert_eq!(values.len(), CODES.len(), "duplicate value in the code table");
        for info in CODES {
            assert!(info.description.ends_with('.'), "{} needs a sentence", info.name);
            assert_eq!(BitsCode(info.code).name().as_deref(), Some(info.name));
        }
    }

    #[test]
    fn http_statuses_map_into_the_http_facility() {
        assert_eq!(BitsCode::http(404).0, 0x8019_0194);
        assert_eq!(BitsCode::http(416).0, 0x8019_01A0);
        assert_eq!(BitsCode::http(503).0, 0x8019_01F7);
        for &status in BITS_HTTP_STATUSES {
            let code = BitsCode::http(status);
            assert_eq!(code.http_status(), Some(status));
            assert_eq!(code.name().as_deref(), Some(format!("BG_E_HTTP_ERROR_{status}").as_str()));
            let text = code.description().expect("every BITS HTTP code has a description");
            assert!(!text.contains("unrecognized"), "{status}: {text}");
        }
        assert_eq!(BitsCode::BG_E_NOT_FOUND.http_status(), None);
    }

    #[test]
    fn parses_hex_and_names() {
        assert_eq!("0x80200001".parse::<BitsCode>().ok(), Some(BitsCode::BG_E_NOT_FOUND));
        assert_eq!("80200002".parse::<BitsCode>().ok(), Some(BitsCode::BG_E_INVALID_STATE));
        assert_eq!("bg_e_empty".parse::<BitsCode>().ok(), Some(BitsCode::BG_E_EMPTY));
        assert_eq!("BG_E_HTTP_ERROR_404".parse::<BitsCode>().ok(), Some(BitsCode::http(404)));
        assert!("nonsense".parse::<BitsCode>().is_err());
    }

    #[test]
    fn json_form_is_hex_text() {
        let json = serde_json::to_string(&BitsCode::BG_E_NOT_FOUND).expect("serialize");
        assert_eq!(json, "\"0x80200001\"");
        assert!(ErrorContext::RemoteFile.description().contains("remote file"));
        assert_eq!(ErrorContext::RemoteApplication.value(), 7);
    }
}
