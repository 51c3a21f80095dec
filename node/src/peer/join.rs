//! Joining a cluster (DESIGN §8): the join token carries the cluster CA's fingerprint,
//! the id of the node that founded the cluster, and a secret. The joining node connects
//! to any member over QUIC with the join ALPN, checks the server's certificate against
//! the pinned CA and the name every member carries (so it trusts the cluster before
//! sending anything), proves the secret, and sends its public key; it receives its node
//! id and certificate, and what makes it an admitter in turn (the CA key and the
//! token). Its private key never leaves it.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::error::{Context as _, Error};
use ferry_protocol::codec;
use quinn::crypto::rustls::QuicClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde::{Deserialize, Serialize};

use super::identity::{MEMBER_NAME, fingerprint};

/// The ALPN of joining (no client certificate yet; only a join request is served).
pub(crate) const JOIN_ALPN: &[u8] = b"ferry-join/1";
/// How long a join attempt waits for a member's handshake: a seed that is not serving
/// (a node still starting, or this node itself) must not hold up the others.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
/// Largest join request or answer.
pub(crate) const MAX_JOIN_FRAME: usize = 64 * 1024;

/// `ferry-join-1.<ca fingerprint>.<issuing node>.<secret>`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct JoinToken {
    /// Hex SHA-256 of the cluster CA certificate.
    pub(crate) ca_fingerprint: String,
    /// The node that founded the cluster (any member answers joins).
    pub(crate) issuer: u64,
    /// Proves the joiner was invited.
    pub(crate) secret: String,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken").field("issuer", &self.issuer).finish_non_exhaustive()
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ferry-join-1.{}.{}.{}", self.ca_fingerprint, self.issuer, self.secret)
    }
}

impl std::str::FromStr for JoinToken {
    type Err = Error;

    fn from_str(text: &str) -> crate::error::Result<Self> {
        let parts: Vec<&str> = text.trim().split('.').collect();
        let [prefix, ca, issuer, secret] = parts.as_slice() else {
            return Err(Error::Config(
                "a join token has four parts: ferry-join-1.<fingerprint>.<node>.<secret>"
                    .to_string(),
            ));
        };
        if *prefix != "ferry-join-1" || ca.len() != 64 || !ca.chars().all(|c| c.is_ascii_hexdigit())
        {
            return Err(Error::Config("this is not a Ferry join token".to_string()));
        }
        if secret.len() < 32 {
            return Err(Error::Config("the join token's secret is too short".to_string()));
        }
        Ok(Self {
            ca_fingerprint: ca.to_ascii_lowercase(),
            issuer: issuer.parse().context("the join token names no node")?,
            secret: (*secret).to_owned(),
        })
    }
}

impl JoinToken {
    /// A new token for the CA with `ca_fingerprint`, answered by node `issuer`.
    pub(crate) fn generate(ca_fingerprint: String, issuer: u64) -> crate::error::Result<Self> {
        let mut secret = [0u8; 24];
        getrandom::fill(&mut secret)
            .map_err(|e| Error::Config(format!("no randomness for the join token: {e}")))?;
        Ok(Self { ca_fingerprint, issuer, secret: hex::encode(secret) })
    }

    /// Checks a presented secret (blake3's `Hash` compares in constant time).
    pub(crate) fn admits(&self, secret: &str) -> bool {
        blake3::hash(self.secret.as_bytes()) == blake3::hash(secret.as_bytes())
    }
}

/// What a joining node sends.
#[derive(Serialize, Deserialize)]
pub(crate) struct JoinRequest {
    /// The token's secret.
    pub(crate) secret: String,
    /// Its raw P-256 public key, to be certified.
    pub(crate) public_key: Vec<u8>,
    /// Where peers reach it (QUIC).
    pub(crate) peer_addr: String,
    /// Its HTTP API address.
    pub(crate) api_addr: String,
}

/// What it gets back.
#[derive(Serialize, Deserialize)]
pub(crate) struct JoinAnswer {
    /// Its node id (never used before in this cluster).
    pub(crate) node_id: u64,
    /// Its certificate (DER).
    pub(crate) cert: Vec<u8>,
    /// The cluster CA certificate (DER).
    pub(crate) ca: Vec<u8>,
    /// The cluster's secret key (seals job passwords and header values), so that any
    /// member can open what another sealed. Sent over the pinned TLS connection only.
    pub(crate) secret_key: Vec<u8>,
    /// The CA key (PEM) and the join token, so that this node admits joins too (the
    /// cluster keeps admitting while any member is up). Pinned TLS connection only.
    pub(crate) ca_key_pem: String,
    /// The join token.
    pub(crate) token: String,
}

/// Why a member did not admit a joining node (sent back to it).
#[derive(Debug, Serialize, Deserialize, thiserror::Error)]
pub(crate) enum JoinRefusal {
    /// The secret is wrong: asking again cannot help.
    #[error("the join token is not valid for this cluster")]
    BadToken,
    /// The request cannot be served as it is.
    #[error("{0}")]
    BadRequest(String),
    /// The cluster cannot admit now (no leader, a membership change in progress, a
    /// member unreachable): the joiner asks again.
    #[error("the cluster cannot admit a node now: {0}")]
    Busy(String),
}

/// Why one join attempt failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum JoinFailure {
    /// The member answered with a refusal.
    #[error("the cluster refused the join: {0}")]
    Refused(JoinRefusal),
    /// No answer: the member is unreachable, or the exchange broke.
    #[error(transparent)]
    Failed(#[from] Error),
}

impl JoinFailure {
    /// Whether asking again later may succeed.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            Self::Refused(refusal) => matches!(refusal, JoinRefusal::Busy(_)),
            // A configuration error (a token pinning another CA) stays one.
            Self::Failed(e) => !matches!(e, Error::Config(_)),
        }
    }
}

/// Asks the member at `seed` to admit this node.
pub(crate) async fn request_join(
    seed: SocketAddr,
    token: &JoinToken,
    request: &JoinRequest,
) -> Result<JoinAnswer, JoinFailure> {
    ask(seed, token, request).await?.map_err(JoinFailure::Refused)
}

/// One join exchange with the member at `seed`: its answer, or why there was none.
async fn ask(
    seed: SocketAddr,
    token: &JoinToken,
    request: &JoinRequest,
) -> crate::error::Result<Result<JoinAnswer, JoinRefusal>> {
    let verifier = Arc::new(PinnedCa::new(token.ca_fingerprint.clone()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    tls.alpn_protocols = vec![JOIN_ALPN.to_vec()];
    let local = SocketAddr::new(
        if seed.is_ipv4() {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        },
        0,
    );
    let mut endpoint = quinn::Endpoint::client(local)?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(
        QuicClientConfig::try_from(tls)?,
    )));
    let outcome = async {
        let connecting = endpoint.connect(seed, MEMBER_NAME)?;
        let Ok(connected) = tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await else {
            return Err(Error::Unavailable(format!(
                "cannot reach the cluster at {seed}: no answer within {} s",
                HANDSHAKE_TIMEOUT.as_secs()
            )));
        };
        let connection = match connected {
            Ok(connection) => connection,
            // Our verifier refused the member's certificate: it is not of the cluster the
            // token pins, and asking again cannot change that.
            Err(quinn::ConnectionError::TransportError(e)) if is_crypto(e.code) => {
                return Err(Error::Config(format!(
                    "{seed} is not part of the cluster the join token names ({e})"
                )));
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot reach the cluster at {seed}"));
            }
        };
        let (mut send, mut recv) = connection.open_bi().await?;
        send.write_all(&codec::encode(request)?).await?;
        send.finish()?;
        let bytes = recv
            .read_to_end(MAX_JOIN_FRAME)
            .await
            .context("the cluster did not answer the join")?;
        connection.close(0u32.into(), b"joined");
        Ok(codec::decode::<Result<JoinAnswer, JoinRefusal>>(&bytes)?)
    }
    .await;
    endpoint.wait_idle().await;
    outcome
}

/// Whether a QUIC transport error is a TLS alert (codes 0x100-0x1ff, RFC 9001 §4.8).
fn is_crypto(code: quinn::TransportErrorCode) -> bool {
    (0x100..0x200).contains(&u64::from(code))
}

/// Trusts a server whose chain includes the pinned CA and whose certificate that CA
/// signed for a member.
#[derive(Debug)]
struct PinnedCa {
    fingerprint: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl PinnedCa {
    fn new(fingerprint: String) -> Self {
        Self { fingerprint, provider: Arc::new(rustls::crypto::ring::default_provider()) }
    }
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|cert| fingerprint(cert) == self.fingerprint)
            .ok_or_else(|| {
                rustls::Error::General(
                    "the server is not part of the cluster the join token names".into(),
                )
            })?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone().into_owned()).map_err(|e| rustls::Error::General(e.to_string()))?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        let token = JoinToken::generate("ab".repeat(32), 1).expect("token");
        let parsed: JoinToken = token.to_string().parse().expect("parses");
        assert_eq!(parsed, token);
        assert!(parsed.admits(&token.secret) && !parsed.admits("nope"));
        assert!(!format!("{parsed:?}").contains(&token.secret));
        for bad in [
            "",
            "ferry-join-1.xx.1.secret",
            "other.abab.1.0123456789abcdef0123456789abcdef",
            &format!("ferry-join-1.{}.x.{}", "ab".repeat(32), "0".repeat(32)),
        ] {
            assert!(bad.parse::<JoinToken>().is_err(), "{bad}");
        }
    }
}
