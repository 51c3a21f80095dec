//! OpenAPI schemas of API fields whose valid values a plain type cannot state: flag
//! words where only some combinations of bits are accepted. Each lists exactly the
//! values `validate` accepts, so the document promises no more and no less.

use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType, Type};

use crate::job::{peer_caching, security};

/// An integer field (absent or `null` meaning "leave alone") that takes one of `values`.
fn flags(description: &str, values: impl IntoIterator<Item = u32>) -> Schema {
    let values: Vec<serde_json::Value> = values.into_iter().map(Into::into).collect();
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Integer, Type::Null]))
        .description(Some(description))
        .enum_values(Some(values.into_iter().chain([serde_json::Value::Null])))
        .into()
}

/// The words of `valid`'s bits (every subset of them).
fn subsets(valid: u32) -> impl Iterator<Item = u32> {
    (0..=valid).filter(move |v| v & !valid == 0)
}

/// `peer_caching_flags`: any combination of the defined bits.
pub fn peer_caching_flags() -> Schema {
    flags(
        "BG_JOB_ENABLE_PEERCACHING_* flags: 1 client, 2 server, 0x100 serve validated files only",
        subsets(peer_caching::VALID),
    )
}

/// `security_flags`: the certificate-ignore bits, one redirect policy and the
/// https-to-http bit (CRL checking, 0x1, is refused).
pub fn security_flags() -> Schema {
    let ignore = security::IGNORE_CERT_CN_INVALID
        | security::IGNORE_CERT_DATE_INVALID
        | security::IGNORE_UNKNOWN_CA
        | security::IGNORE_CERT_WRONG_USAGE;
    let policies = [
        security::REDIRECT_ALLOW_SILENT,
        security::REDIRECT_ALLOW_REPORT,
        security::REDIRECT_DISALLOW,
    ];
    let values = subsets(ignore).flat_map(move |bits| {
        policies.into_iter().flat_map(move |policy| {
            [0, security::REDIRECT_ALLOW_HTTPS_TO_HTTP].map(|https| bits | policy | https)
        })
    });
    flags(
        "BG_SSL_* flags: ignore bits 0x2-0x10, redirect policy 0x0, 0x100 or 0x200, 0x800 \
         allow https to http",
        values,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_security_word_is_accepted_and_no_other() {
        let Schema::Object(object) = security_flags() else { panic!("an object schema") };
        let listed: Vec<u32> = object
            .enum_values
            .iter()
            .flatten()
            .filter_map(|v| v.as_u64().and_then(|v| u32::try_from(v).ok()))
            .collect();
        assert_eq!(listed.len(), 16 * 3 * 2);
        for word in 0..0x1000u32 {
            let changes = crate::command::PropertyChanges {
                security_flags: Some(word),
                ..Default::default()
            };
            let accepted = crate::validate::property_changes(&changes).is_ok();
            assert_eq!(accepted, listed.contains(&word), "0x{word:X}");
        }
    }
}
