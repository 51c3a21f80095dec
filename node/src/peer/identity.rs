//! Cluster identity (DESIGN §8, G13): the cluster CA that the first node creates, and
//! each node's certificate. A node's private key never leaves it: the CA signs the
//! node's public key (sent when joining), and the certificate names the node
//! (`node-<id>.ferry`, valid for TLS server and client use), so a peer proves its node
//! id by the certificate it connects with.
//!
//! Files in the data directory: `ca.pem` (the CA certificate, on every node), `ca.key`
//! (the CA's key, 0600, on nodes that issue certificates), `node.pem` and `node.key`
//! (0600).

use std::path::Path;

use crate::error::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SignatureAlgorithm,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// File names in the data directory.
pub(crate) mod files {
    /// The cluster CA certificate (PEM).
    pub(crate) const CA_CERT: &str = "ca.pem";
    /// The cluster CA key (PEM, 0600).
    pub(crate) const CA_KEY: &str = "ca.key";
    /// This node's certificate (PEM).
    pub(crate) const NODE_CERT: &str = "node.pem";
    /// This node's key (PEM, 0600).
    pub(crate) const NODE_KEY: &str = "node.key";
}

/// The TLS name of node `id`, carried by its certificate.
pub(crate) fn node_name(id: u64) -> String {
    format!("node-{id}.ferry")
}

/// The TLS name every member's certificate also carries: a joining node, which does
/// not know which member answers, checks it (with the pinned CA) to trust any of them.
pub(crate) const MEMBER_NAME: &str = "member.ferry";

/// The CA's distinguished name: fixed, so that the issuer can be rebuilt from the
/// stored key alone.
fn ca_params() -> crate::error::Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Ferry cluster CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

/// The cluster's certificate authority.
pub(crate) struct ClusterCa {
    key: KeyPair,
    cert: CertificateDer<'static>,
}

impl ClusterCa {
    /// A new CA with a fresh P-256 key.
    pub(crate) fn generate() -> crate::error::Result<Self> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = ca_params()?.self_signed(&key)?;
        Ok(Self { key, cert: cert.der().clone() })
    }

    /// Writes `ca.pem` and `ca.key` (0600) into `dir`.
    pub(crate) fn save(&self, dir: &Path) -> crate::error::Result<()> {
        write_private(&dir.join(files::CA_KEY), self.key.serialize_pem().as_bytes())?;
        write_public(&dir.join(files::CA_CERT), pem("CERTIFICATE", &self.cert).as_bytes())
    }

    /// Reads `ca.pem` and `ca.key` from `dir`.
    pub(crate) fn load(dir: &Path) -> crate::error::Result<Self> {
        let key_pem = std::fs::read_to_string(dir.join(files::CA_KEY))
            .with_context(|| format!("cannot read {}", dir.join(files::CA_KEY).display()))?;
        let key = KeyPair::from_pem(&key_pem).context("ca.key is not a PEM private key")?;
        let cert = read_cert(&dir.join(files::CA_CERT))?;
        Ok(Self { key, cert })
    }

    /// The CA key, PEM (handed to joining nodes, so that every member admits joins).
    pub(crate) fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The CA from its certificate and its key in PEM.
    pub(crate) fn from_parts(
        cert: CertificateDer<'static>,
        key_pem: &str,
    ) -> crate::error::Result<Self> {
        let key = KeyPair::from_pem(key_pem).context("the CA key is not a PEM private key")?;
        Ok(Self { key, cert })
    }

    /// The CA certificate.
    pub(crate) fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// Hex SHA-256 of the CA certificate: what a join token pins.
    pub(crate) fn fingerprint(&self) -> String {
        fingerprint(&self.cert)
    }

    /// Issues the certificate of node `id` for its raw P-256 public key.
    pub(crate) fn issue(
        &self,
        id: u64,
        public_key: &[u8],
    ) -> crate::error::Result<CertificateDer<'static>> {
        let issuer = Issuer::new(ca_params()?, &self.key);
        let mut params = CertificateParams::new(vec![node_name(id), MEMBER_NAME.to_owned()])?;
        params.distinguished_name.push(DnType::CommonName, node_name(id));
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params.signed_by(&RawPublicKey(public_key.to_vec()), &issuer)?;
        Ok(cert.der().clone())
    }
}

impl ClusterCa {
    /// A TLS server certificate for the HTTP API naming `names` (DNS names or IP
    /// addresses), with a fresh P-256 key: the certificate chain and the key.
    pub(crate) fn issue_api_cert(
        &self,
        names: Vec<String>,
    ) -> crate::error::Result<(CertificateDer<'static>, PrivateKeyDer<'static>)> {
        let issuer = Issuer::new(ca_params()?, &self.key);
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.push(DnType::CommonName, "Ferry API");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params.signed_by(&key, &issuer)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((cert.der().clone(), key))
    }
}

/// A raw P-256 public key (uncompressed point) sent by a joining node.
struct RawPublicKey(Vec<u8>);

impl PublicKeyData for RawPublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

/// Hex SHA-256 of a certificate.
pub(crate) fn fingerprint(cert: &CertificateDer<'_>) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, cert.as_ref()))
}

/// What a node authenticates with: its id, key, certificate and the cluster CA.
pub(crate) struct NodeIdentity {
    /// The node id the certificate names.
    pub(crate) node_id: u64,
    /// The node's private key (PKCS#8 DER).
    key_der: Vec<u8>,
    /// The node's certificate.
    pub(crate) cert: CertificateDer<'static>,
    /// The cluster CA certificate.
    pub(crate) ca: CertificateDer<'static>,
}

impl Clone for NodeIdentity {
    fn clone(&self) -> Self {
        Self {
            node_id: self.node_id,
            key_der: self.key_der.clone(),
            cert: self.cert.clone(),
            ca: self.ca.clone(),
        }
    }
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIdentity").field("node_id", &self.node_id).finish_non_exhaustive()
    }
}

impl NodeIdentity {
    /// The cluster CA certificate as PEM (what `GET /v1/cluster/ca` serves).
    pub(crate) fn ca_pem(&self) -> String {
        pem::encode(&pem::Pem::new("CERTIFICATE", self.ca.to_vec()))
    }

    /// A fresh key pair for a node that is about to ask for its certificate.
    pub(crate) fn new_key() -> crate::error::Result<KeyPair> {
        Ok(KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?)
    }

    /// The identity made of `key`, the `cert` issued for it and the CA.
    pub(crate) fn new(
        node_id: u64,
        key: &KeyPair,
        cert: CertificateDer<'static>,
        ca: CertificateDer<'static>,
    ) -> Self {
        Self { node_id, key_der: key.serialize_der(), cert, ca }
    }

    /// The private key's PKCS#8 bytes (also the seed of the QUIC reset key).
    pub(crate) fn key_der(&self) -> &[u8] {
        &self.key_der
    }

    /// The private key for rustls.
    pub(crate) fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }

    /// Writes `node.pem`, `node.key` (0600) and `ca.pem` into `dir`.
    pub(crate) fn save(&self, dir: &Path) -> crate::error::Result<()> {
        let key = PrivatePkcs8KeyDer::from(self.key_der.clone());
        write_private(
            &dir.join(files::NODE_KEY),
            pem("PRIVATE KEY", key.secret_pkcs8_der()).as_bytes(),
        )?;
        write_public(&dir.join(files::NODE_CERT), pem("CERTIFICATE", &self.cert).as_bytes())?;
        write_public(&dir.join(files::CA_CERT), pem("CERTIFICATE", &self.ca).as_bytes())
    }

    /// Reads this node's identity from `dir`, if it has one.
    pub(crate) fn load(dir: &Path, node_id: u64) -> crate::error::Result<Option<Self>> {
        let key_path = dir.join(files::NODE_KEY);
        let key_pem = match std::fs::read_to_string(&key_path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", key_path.display())),
        };
        let key = KeyPair::from_pem(&key_pem).context("node.key is not a PEM private key")?;
        let cert = read_cert(&dir.join(files::NODE_CERT))?;
        let ca = read_cert(&dir.join(files::CA_CERT))?;
        Ok(Some(Self::new(node_id, &key, cert, ca)))
    }
}

/// PEM text of one DER object.
fn pem(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der.to_vec()))
}

/// The first certificate of a PEM file.
fn read_cert(path: &Path) -> crate::error::Result<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_file(path)
        .with_context(|| format!("{} holds no PEM certificate", path.display()))
}

/// Writes `path` atomically, readable by this user only (0600).
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> crate::error::Result<()> {
    write_with_mode(path, bytes, 0o600)
}

fn write_public(path: &Path, bytes: &[u8]) -> crate::error::Result<()> {
    write_with_mode(path, bytes, 0o644)
}

/// Writes `path` atomically (temporary file, fsync, rename) with `mode`.
fn write_with_mode(path: &Path, bytes: &[u8], mode: u32) -> crate::error::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_survive_a_save_and_load() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let ca = ClusterCa::generate()?;
        ca.save(dir.path())?;
        let again = ClusterCa::load(dir.path())?;
        assert_eq!(again.fingerprint(), ca.fingerprint());
        let key = NodeIdentity::new_key()?;
        let cert = again.issue(7, key.public_key_raw())?;
        let identity = NodeIdentity::new(7, &key, cert, ca.cert().clone());
        identity.save(dir.path())?;
        let loaded = NodeIdentity::load(dir.path(), 7)?.context("saved")?;
        assert_eq!(loaded.cert, identity.cert);
        assert_eq!(loaded.private_key().secret_der(), identity.private_key().secret_der());
        use std::os::unix::fs::PermissionsExt;
        let mode =
            std::fs::metadata(dir.path().join(files::NODE_KEY))?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(NodeIdentity::load(&dir.path().join("missing"), 1)?.is_none());
        Ok(())
    }
}
