//! Server-side HTTP authentication for the test origin: Basic (RFC 7617) and Digest
//! (RFC 7616, `qop="auth"`, MD5 and SHA-256), plus the auth-param parser they share.
//!
//! Only checks and challenges live here; which status to send and when is in `serve`.
//! No secret is ever logged: the request log keeps the scheme name only.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::prelude::BASE64_STANDARD;
use md5::Md5;
use sha2::{Digest as _, Sha256};

/// Digest nonces kept at once; past this the table is cleared (clients then get a
/// `stale=true` challenge and retry), so a long test cannot grow it without bound.
const MAX_NONCES: usize = 4096;

/// The scheme of an `Authorization`-style header value (`Basic`, `Digest`, ...), for
/// the request log.
pub(super) fn scheme(value: &str) -> String {
    value.split_whitespace().next().unwrap_or_default().to_owned()
}

/// Whether `value` is `Basic base64(user:password)` with exactly these credentials.
pub(super) fn basic_matches(value: Option<&str>, user: &str, password: &str) -> bool {
    let Some((scheme, token)) = value.and_then(|v| v.trim().split_once(' ')) else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return false;
    }
    match BASE64_STANDARD.decode(token.trim()) {
        Ok(decoded) => decoded == format!("{user}:{password}").as_bytes(),
        Err(_) => false,
    }
}

/// The result of checking a Digest `Authorization` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum DigestVerdict {
    /// The response hash is right and the nonce count is fresh.
    Allowed,
    /// The credentials are right but the nonce is not (or no longer) known: challenge
    /// again with `stale=true` so the client retries without asking the user.
    Stale,
    /// Missing, malformed or wrong credentials, or a replayed nonce count.
    Denied,
}

/// The Digest nonces the origin issued and the last nonce count seen for each.
#[derive(Debug)]
pub(super) struct DigestNonces {
    /// Nonce → highest `nc` accepted so far (0 before the first use).
    issued: HashMap<String, u32>,
    /// Makes nonces unique within this origin.
    counter: u64,
    /// Makes nonces differ between origins.
    salt: u64,
    /// The `opaque` value echoed by clients.
    opaque: String,
}

impl DigestNonces {
    /// An empty table.
    pub(super) fn new() -> Self {
        let salt = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            .rotate_left(17);
        Self { issued: HashMap::new(), counter: 0, salt, opaque: format!("{salt:016x}") }
    }

    /// A `WWW-Authenticate` value with a fresh nonce.
    pub(super) fn challenge(&mut self, realm: &str, stale: bool) -> String {
        if self.issued.len() >= MAX_NONCES {
            self.issued.clear();
        }
        self.counter += 1;
        let nonce = format!("{:016x}{:08x}", self.salt, self.counter);
        self.issued.insert(nonce.clone(), 0);
        let stale = if stale { ", stale=true" } else { "" };
        format!(
            "Digest realm=\"{realm}\", qop=\"auth\", nonce=\"{nonce}\", opaque=\"{}\", \
             algorithm=MD5{stale}",
            self.opaque
        )
    }

    /// Checks `value` (a whole `Authorization` header) for a request with `method` and
    /// request-target `target` against the expected credentials.
    pub(super) fn verify(
        &mut self,
        value: Option<&str>,
        method: &str,
        target: &Target<'_>,
        expected: &Credentials<'_>,
    ) -> DigestVerdict {
        let Some(params) = value.and_then(digest_params) else { return DigestVerdict::Denied };
        let get = |name: &str| params.get(name).map(String::as_str);
        let (Some(user), Some(realm), Some(nonce), Some(uri), Some(response)) =
            (get("username"), get("realm"), get("nonce"), get("uri"), get("response"))
        else {
            return DigestVerdict::Denied;
        };
        let (Some("auth"), Some(nc_text), Some(cnonce)) = (get("qop"), get("nc"), get("cnonce"))
        else {
            return DigestVerdict::Denied;
        };
        let Ok(nc) = u32::from_str_radix(nc_text, 16) else { return DigestVerdict::Denied };
        let hash: fn(&str) -> String = match get("algorithm") {
            None => md5_hex,
            Some(a) if a.eq_ignore_ascii_case("MD5") => md5_hex,
            Some(a) if a.eq_ignore_ascii_case("SHA-256") => sha256_hex,
            Some(_) => return DigestVerdict::Denied,
        };
        if user != expected.user
            || realm != expected.realm
            || get("opaque").is_some_and(|o| o != self.opaque)
            || !(uri == target.full || uri == target.path_and_query)
        {
            return DigestVerdict::Denied;
        }
        let ha1 = hash(&format!("{user}:{realm}:{}", expected.password));
        let ha2 = hash(&format!("{method}:{uri}"));
        let right = hash(&format!("{ha1}:{nonce}:{nc_text}:{cnonce}:auth:{ha2}"));
        if !right.eq_ignore_ascii_case(response) {
            return DigestVerdict::Denied;
        }
        match self.issued.get_mut(nonce) {
            None => DigestVerdict::Stale,
            Some(last) if nc > *last => {
                *last = nc;
                DigestVerdict::Allowed
            }
            Some(_) => DigestVerdict::Denied,
        }
    }
}

/// The request-target of the request being checked, in the two spellings a client may
/// put in the Digest `uri` parameter.
#[derive(Debug)]
pub(super) struct Target<'a> {
    /// As on the request line (absolute form for requests through a proxy).
    pub(super) full: &'a str,
    /// Path and query only.
    pub(super) path_and_query: &'a str,
}

/// The credentials a Digest check expects.
#[derive(Debug)]
pub(super) struct Credentials<'a> {
    /// User name.
    pub(super) user: &'a str,
    /// Password.
    pub(super) password: &'a str,
    /// Realm the challenge named.
    pub(super) realm: &'a str,
}

/// Lower-case hex MD5 of `text`.
pub(super) fn md5_hex(text: &str) -> String {
    hex::encode(Md5::digest(text.as_bytes()))
}

/// Lower-case hex SHA-256 of `text`.
pub(super) fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// The auth-params of a `Digest ...` header value, names lower-cased, or `None` if it
/// is another scheme or malformed.
fn digest_params(value: &str) -> Option<HashMap<String, String>> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("digest") {
        return None;
    }
    parse_auth_params(rest)
}

/// Parses `name=token, name="quoted \"string\"", ...` (RFC 9110 §11.2).
pub(super) fn parse_auth_params(text: &str) -> Option<HashMap<String, String>> {
    let mut params = HashMap::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace() || *c == ',').is_some() {}
        if chars.peek().is_none() {
            return Some(params);
        }
        let mut name = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            name.push(c.to_ascii_lowercase());
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') || name.is_empty() {
            return None;
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => value.push(chars.next()?),
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| *c != ',') {
                value.push(c);
            }
            value.truncate(value.trim_end().len());
        }
        params.insert(name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_params_with_quotes_and_tokens() {
        let params = parse_auth_params(r#"a="x, \"y\"", b=tok , C = "z""#);
        let params = params.unwrap_or_default();
        assert_eq!(params.get("a").map(String::as_str), Some(r#"x, "y""#));
        assert_eq!(params.get("b").map(String::as_str), Some("tok"));
        assert_eq!(params.get("c").map(String::as_str), Some("z"));
        assert!(parse_auth_params(r#"a="unterminated"#).is_none());
        assert!(parse_auth_params("=x").is_none());
    }

    #[test]
    fn basic_credentials() {
        // "user:pass"
        assert!(basic_matches(Some("Basic dXNlcjpwYXNz"), "user", "pass"));
        assert!(!basic_matches(Some("Basic dXNlcjpwYXNz"), "user", "other"));
        assert!(!basic_matches(Some("Bearer dXNlcjpwYXNz"), "user", "pass"));
        assert!(!basic_matches(Some("Basic !!!"), "user", "pass"));
        assert!(!basic_matches(None, "user", "pass"));
    }

    /// RFC 7616 §3.9.1: the worked example (SHA-256 and MD5).
    #[test]
    fn rfc7616_example_is_accepted_once_per_nonce_count() {
        let mut nonces = DigestNonces::new();
        let nonce = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
        nonces.issued.insert(nonce.to_owned(), 0);
        nonces.opaque = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS".to_owned();
        let target = Target { full: "/dir/index.html", path_and_query: "/dir/index.html" };
        let expected = Credentials {
            user: "Mufasa",
            password: "Circle of Life",
            realm: "http-auth@example.org",
        };
        let header = |algorithm: &str, response: &str| {
            format!(
                "Digest username=\"Mufasa\", realm=\"http-auth@example.org\", \
                 uri=\"/dir/index.html\", algorithm={algorithm}, nonce=\"{nonce}\", \
                 nc=00000001, cnonce=\"f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ\", \
                 qop=auth, response=\"{response}\", \
                 opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\""
            )
        };
        let sha =
            header("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1");
        let md5 = header("MD5", "8ca523f5e9506fed4657c9700eebdbec");
        assert_eq!(nonces.verify(Some(&sha), "GET", &target, &expected), DigestVerdict::Allowed);
        // The same nonce count again is a replay.
        assert_eq!(nonces.verify(Some(&md5), "GET", &target, &expected), DigestVerdict::Denied);
        nonces.issued.insert(nonce.to_owned(), 0);
        assert_eq!(nonces.verify(Some(&md5), "GET", &target, &expected), DigestVerdict::Allowed);
        nonces.issued.clear();
        assert_eq!(nonces.verify(Some(&md5), "GET", &target, &expected), DigestVerdict::Stale);
        let wrong = Credentials { password: "Circle of Death", ..expected };
        assert_eq!(nonces.verify(Some(&md5), "GET", &target, &wrong), DigestVerdict::Denied);
    }
}
