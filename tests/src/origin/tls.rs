//! TLS for the test origin: a throwaway CA and a server certificate for `127.0.0.1`
//! and `localhost`, generated at start with rcgen, served with rustls on ring.
//!
//! Clients trust the CA certificate (`Origin::ca_pem`). Only `http/1.1` is offered in
//! ALPN: the origin speaks HTTP/1.1 only.

use std::sync::Arc;

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::ServerConfig;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

/// A generated server identity.
pub(super) struct TlsIdentity {
    /// The CA certificate, PEM: what clients must trust.
    pub(super) ca_pem: String,
    /// Accepts TLS connections with the server certificate.
    pub(super) acceptor: TlsAcceptor,
}

/// Generates a CA, a server certificate it signs, and a rustls acceptor.
pub(super) fn generate() -> anyhow::Result<TlsIdentity> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "Ferry test origin CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)
        .context("cannot generate the test CA")?;

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
    params.distinguished_name.push(DnType::CommonName, "localhost");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &ca).context("cannot sign the test certificate")?;

    let chain = vec![cert.der().clone(), ca.der().clone()];
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .context("cannot build the TLS server configuration")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsIdentity { ca_pem: ca.pem(), acceptor: TlsAcceptor::from(Arc::new(config)) })
}
