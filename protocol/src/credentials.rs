//! Job credentials (`IBackgroundCopyJob2::SetCredentials` / `RemoveCredentials`): one
//! per (target, scheme). The password only ever exists in plaintext in the request
//! that sets it and in the engine that answers a challenge; the replicated state holds
//! it sealed ([`SealedCredential`]), the API never returns it and `Debug` never shows it.

use serde::{Deserialize, Serialize};
#[cfg(feature = "openapi")]
use utoipa::ToSchema;

use crate::codes::BitsCode;
use crate::command::CommandError;

/// Longest user name, in characters (BITS: 300).
pub const MAX_USER_NAME_CHARS: usize = 300;
/// Longest password, in characters (BITS: 65,535).
pub const MAX_PASSWORD_CHARS: usize = 65_535;

/// `BG_AUTH_TARGET`: who asks for the credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AuthTarget {
    /// The origin server (`401`).
    Server,
    /// The proxy (`407`).
    Proxy,
}

/// `BG_AUTH_SCHEME`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AuthScheme {
    /// RFC 7617 Basic.
    Basic,
    /// RFC 7616 Digest.
    Digest,
    /// NTLM (not supported by this build).
    Ntlm,
    /// Negotiate / SPNEGO (not supported by this build).
    Negotiate,
    /// Passport (retired by Microsoft; refused).
    Passport,
}

impl AuthScheme {
    /// The scheme's name in `WWW-Authenticate`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Basic => "basic",
            Self::Digest => "digest",
            Self::Ntlm => "ntlm",
            Self::Negotiate => "negotiate",
            Self::Passport => "passport",
        }
    }

    /// Whether this build answers challenges of the scheme; otherwise the error to give.
    pub fn supported(self) -> Result<(), CommandError> {
        match self {
            Self::Basic | Self::Digest => Ok(()),
            Self::Ntlm | Self::Negotiate => Err(CommandError::new(
                BitsCode::BG_E_INVALID_AUTH_SCHEME,
                format!(
                    "this build of Ferry does not support {} authentication; use basic or digest",
                    self.as_str()
                ),
            )),
            Self::Passport => Err(CommandError::new(
                BitsCode::BG_E_INVALID_AUTH_SCHEME,
                "Passport authentication is retired and not supported; use basic or digest",
            )),
        }
    }
}

impl std::str::FromStr for AuthScheme {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_lowercase().as_str() {
            "basic" => Ok(Self::Basic),
            "digest" => Ok(Self::Digest),
            "ntlm" => Ok(Self::Ntlm),
            "negotiate" => Ok(Self::Negotiate),
            "passport" => Ok(Self::Passport),
            _ => {
                Err(format!("unknown scheme {text:?}: basic, digest, ntlm, negotiate or passport"))
            }
        }
    }
}

impl std::str::FromStr for AuthTarget {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_lowercase().as_str() {
            "server" => Ok(Self::Server),
            "proxy" => Ok(Self::Proxy),
            _ => Err(format!("unknown target {text:?}: server or proxy")),
        }
    }
}

/// The refusal of NULL/NULL credentials: BITS takes them as the caller's implicit logon
/// credentials for NTLM, Negotiate and Passport only, which Ferry does not support.
pub fn implicit_credentials() -> CommandError {
    CommandError::new(
        BitsCode::E_INVALIDARG,
        "no user name and no password (implicit logon credentials) are only for NTLM, \
         Negotiate and Passport in BITS, which Ferry does not support; give a user name and \
         password for Basic or Digest",
    )
}

/// A password in memory. `Debug` prints `"<redacted>"`; it is never serialized back
/// out by the API (only accepted).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(transparent)]
#[cfg_attr(feature = "openapi", schema(value_type = String, format = Password))]
pub struct Secret(String);

impl Secret {
    /// Wraps a password.
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// The plaintext, for sealing or for answering a challenge.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// `PUT /v1/jobs/{id}/credentials`: `BG_AUTH_CREDENTIALS`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewCredentials {
    /// Server or proxy.
    pub target: AuthTarget,
    /// Basic or Digest.
    pub scheme: AuthScheme,
    /// User name (at most 300 characters).
    pub user_name: String,
    /// Password (at most 65,535 characters); never returned.
    pub password: Secret,
}

impl NewCredentials {
    /// BITS's checks: supported scheme, name and password lengths.
    pub fn validate(&self) -> Result<(), CommandError> {
        self.scheme.supported()?;
        if self.user_name.is_empty() && self.password.expose().is_empty() {
            return Err(implicit_credentials());
        }
        if self.user_name.chars().count() > MAX_USER_NAME_CHARS {
            return Err(CommandError::new(
                BitsCode::BG_E_USERNAME_TOO_LARGE,
                format!("the user name is longer than {MAX_USER_NAME_CHARS} characters"),
            ));
        }
        if self.password.expose().chars().count() > MAX_PASSWORD_CHARS {
            return Err(CommandError::new(
                BitsCode::BG_E_PASSWORD_TOO_LARGE,
                format!("the password is longer than {MAX_PASSWORD_CHARS} characters"),
            ));
        }
        if self.user_name.contains(':') && self.scheme == AuthScheme::Basic {
            return Err(CommandError::new(
                BitsCode::BG_E_INVALID_CREDENTIALS,
                "a Basic user name cannot contain ':'",
            ));
        }
        if self.user_name.chars().any(char::is_control)
            || self.password.expose().chars().any(|c| c == '\r' || c == '\n' || c == '\0')
        {
            return Err(CommandError::new(
                BitsCode::BG_E_INVALID_CREDENTIALS,
                "user names and passwords cannot contain control characters",
            ));
        }
        Ok(())
    }
}

/// A credential as the replicated state stores it: the password sealed with the
/// cluster's secret key (authenticated encryption; the job id, target, scheme and user
/// name are bound to it as associated data).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedCredential {
    /// Server or proxy.
    pub target: AuthTarget,
    /// The scheme.
    pub scheme: AuthScheme,
    /// User name (not secret in BITS either, but never returned).
    pub user_name: String,
    /// Nonce and ciphertext of the password.
    pub sealed: Vec<u8>,
}

impl SealedCredential {
    /// The associated data the seal binds: job, target, scheme and user.
    pub fn associated_data(
        job: crate::ids::JobId,
        target: AuthTarget,
        scheme: AuthScheme,
        user: &str,
    ) -> Vec<u8> {
        format!("ferry-credential/1|{job}|{target:?}|{scheme:?}|{user}").into_bytes()
    }
}

impl std::fmt::Debug for SealedCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedCredential")
            .field("target", &self.target)
            .field("scheme", &self.scheme)
            .finish_non_exhaustive()
    }
}

/// Which credentials a job has, as the API shows them (no names, no secrets).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct CredentialInfo {
    /// Server or proxy.
    pub target: AuthTarget,
    /// The scheme.
    pub scheme: AuthScheme,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_password() {
        let c: NewCredentials = serde_json::from_str(
            r#"{"target":"server","scheme":"basic","user_name":"u","password":"hunter2"}"#,
        )
        .expect("json");
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(c.validate().is_ok());
    }

    #[test]
    fn unsupported_schemes_are_refused_with_a_bits_code() {
        for scheme in [AuthScheme::Ntlm, AuthScheme::Negotiate, AuthScheme::Passport] {
            let err = scheme.supported().expect_err("refused");
            assert_eq!(err.code, BitsCode::BG_E_INVALID_AUTH_SCHEME);
        }
        let long = NewCredentials {
            target: AuthTarget::Server,
            scheme: AuthScheme::Digest,
            user_name: "x".repeat(301),
            password: Secret::new("p"),
        };
        assert_eq!(long.validate().map_err(|e| e.code), Err(BitsCode::BG_E_USERNAME_TOO_LARGE));
    }
}
