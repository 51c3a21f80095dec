//! TLS of the API (rustls with the ring provider): the configured certificate and key
//! (`[api] tls_cert`, `tls_key`), or else a certificate the cluster CA issues at each
//! start, so that clients that trust the cluster CA (`ferry --ca`) verify any member.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use crate::error::{Context as _, Error};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::ApiConfig;
use crate::peer::identity::{ClusterCa, node_name};

/// The server's TLS configuration, or `None` when `api` serves plain HTTP.
pub(super) fn server_config(
    api: &ApiConfig,
    data_dir: &Path,
    node_id: u64,
    bound: SocketAddr,
) -> crate::error::Result<Option<Arc<rustls::ServerConfig>>> {
    if !api.uses_tls() {
        return Ok(None);
    }
    let (chain, key) = match (&api.tls_cert, &api.tls_key) {
        (Some(cert), Some(key)) => (read_chain(cert)?, read_key(key)?),
        _ => {
            let ca = ClusterCa::load(data_dir).context(
                "the API needs TLS and no api.tls_cert is set, but this node holds no \
                 cluster CA key to issue one: set api.tls_cert and api.tls_key",
            )?;
            let (cert, key) = ca.issue_api_cert(names(api, node_id, bound))?;
            (vec![cert], key)
        }
    };
    Ok(Some(Arc::new(build(chain, key)?)))
}

/// Checks that the configured certificate and key, if any, make a usable server
/// configuration (`ferryd check-config`).
pub(crate) fn check_configured(api: &ApiConfig) -> crate::error::Result<()> {
    if let (Some(cert), Some(key)) = (&api.tls_cert, &api.tls_key) {
        build(read_chain(cert)?, read_key(key)?)?;
    }
    Ok(())
}

fn build(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> crate::error::Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("api.tls_cert and api.tls_key do not make a usable certificate and key")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The names of a cluster-CA-issued API certificate: the listen address (unless it is
/// unspecified), `tls_names`, loopback, `localhost` and the node's cluster name.
fn names(api: &ApiConfig, node_id: u64, bound: SocketAddr) -> Vec<String> {
    let mut names: Vec<String> = api.tls_names.clone();
    if !bound.ip().is_unspecified() {
        names.push(bound.ip().to_string());
    }
    names.extend(["localhost", "127.0.0.1", "::1"].map(str::to_owned));
    names.push(node_name(node_id));
    names.sort();
    names.dedup();
    names
}

fn read_pem(path: &Path, what: &str) -> crate::error::Result<Vec<pem::Pem>> {
    let text = std::fs::read(path)
        .with_context(|| format!("cannot read api.{what} {}", path.display()))?;
    pem::parse_many(&text).with_context(|| format!("api.{what} {} is not PEM", path.display()))
}

/// Every certificate of a PEM chain, leaf first.
fn read_chain(path: &Path) -> crate::error::Result<Vec<CertificateDer<'static>>> {
    let chain: Vec<_> = read_pem(path, "tls_cert")?
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| CertificateDer::from(p.into_contents()))
        .collect();
    if chain.is_empty() {
        return Err(Error::Config(format!("api.tls_cert {} holds no CERTIFICATE", path.display())));
    }
    Ok(chain)
}

/// The first private key of a PEM file.
fn read_key(path: &Path) -> crate::error::Result<PrivateKeyDer<'static>> {
    for block in read_pem(path, "tls_key")? {
        let der = block.contents().to_vec();
        let key = match block.tag() {
            "PRIVATE KEY" => PrivateKeyDer::Pkcs8(der.into()),
            "RSA PRIVATE KEY" => PrivateKeyDer::Pkcs1(der.into()),
            "EC PRIVATE KEY" => PrivateKeyDer::Sec1(der.into()),
            _ => continue,
        };
        return Ok(key);
    }
    Err(Error::Config(format!("api.tls_key {} holds no PRIVATE KEY", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ApiTls;

    fn data_dir_with_ca() -> anyhow::Result<tempfile::TempDir> {
        let dir = tempfile::tempdir()?;
        ClusterCa::generate()?.save(dir.path())?;
        Ok(dir)
    }

    #[test]
    fn beyond_loopback_the_cluster_ca_issues_the_api_certificate() -> anyhow::Result<()> {
        let dir = data_dir_with_ca()?;
        let mut api = ApiConfig {
            listen: "0.0.0.0:7070".parse()?,
            tls_names: vec!["ferry.example.com".into()],
            ..ApiConfig::default()
        };
        let bound = api.listen;
        assert!(server_config(&api, dir.path(), 3, bound)?.is_some());
        let names = names(&api, 3, bound);
        assert!(names.contains(&"ferry.example.com".to_owned()));
        assert!(names.contains(&"node-3.ferry".to_owned()));
        assert!(!names.contains(&"0.0.0.0".to_owned()));

        // The explicit opt-out, and loopback by default: plain HTTP.
        api.tls = ApiTls::Off;
        assert!(server_config(&api, dir.path(), 3, bound)?.is_none());
        let loopback = ApiConfig::default();
        assert!(server_config(&loopback, dir.path(), 3, loopback.listen)?.is_none());
        Ok(())
    }

    #[test]
    fn tls_without_a_certificate_or_a_ca_key_is_a_clear_error() -> anyhow::Result<()> {
        let empty = tempfile::tempdir()?;
        let api = ApiConfig { tls: ApiTls::On, ..ApiConfig::default() };
        let error = server_config(&api, empty.path(), 1, api.listen).err().map(|e| e.to_string());
        assert!(error.is_some_and(|e| e.contains("api.tls_cert")));
        Ok(())
    }
}
