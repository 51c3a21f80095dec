//! `[api]`: the listener, tokens, TLS and the request limits of the HTTP API.

use std::net::SocketAddr;
use std::path::PathBuf;

use ferry_coordinator::TokenEntry;
use serde::{Deserialize, Serialize};

/// `[api]`: the HTTP API (and later the BITS upload endpoint).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Address to listen on. Default `127.0.0.1:7070`. Port 0 picks a free port; the
    /// bound address is written to `<data_dir>/api.addr` either way.
    pub listen: SocketAddr,
    /// Bearer tokens and the principals they authenticate. With none configured,
    /// ferryd creates an admin token in `<data_dir>/admin.token` and refuses to listen
    /// on anything but loopback.
    pub tokens: Vec<TokenEntry>,
    /// Largest request body accepted, in bytes. Default 4 MiB.
    pub max_body_bytes: usize,
    /// Requests handled at once; further ones wait for a slot. Bounds the memory held
    /// by requests to about this times `max_body_bytes`. Default 256.
    pub max_concurrent_requests: usize,
    /// Requests one principal (one token's owner; callers without a valid token count
    /// as one) has in hand at once; its further requests wait. Less than
    /// `max_concurrent_requests`, so a single token never takes every slot: the rest
    /// stay for other principals, while one busy service still gets most of the
    /// server. `/healthz` and `/v1/openapi.json` need no slot. Default: seven eighths
    /// of `max_concurrent_requests` (224 of 256).
    pub max_requests_per_principal: Option<usize>,
    /// Open connections at most; further clients wait in the listen backlog. Default
    /// 1024.
    pub max_connections: usize,
    /// Seconds a client has to send a request's headers (and to finish the TLS
    /// handshake); an idle keep-alive connection is closed after as long. Default 10.
    #[serde(deserialize_with = "super::duration::secs")]
    pub header_timeout_secs: u64,
    /// Seconds a request body may take, plus one second per `body_min_bytes_per_sec`
    /// bytes received: a body that falls behind gets `408` and the connection closes.
    /// Also the longest wait for a request slot (`503` after it). Default 30.
    #[serde(deserialize_with = "super::duration::secs")]
    pub body_timeout_secs: u64,
    /// The body rate that earns more time beyond `body_timeout_secs`, bytes per second
    /// (slow but steady uploads go on; a trickle does not). Default 4096.
    pub body_min_bytes_per_sec: u64,
    /// TLS on the API: `auto` is TLS when listening beyond loopback and plain HTTP on
    /// loopback; `on` is TLS everywhere; `off` is plain HTTP everywhere, which beyond
    /// loopback sends bearer tokens across the network in clear (only behind a TLS
    /// proxy on the same host). Default `auto`.
    pub tls: ApiTls,
    /// PEM certificate chain of the API (with `tls_key`). Unset: a certificate issued
    /// at each start by the cluster CA (`<data_dir>/ca.pem`, which clients trust with
    /// `--ca`), naming the listen address, `tls_names`, loopback and `localhost`.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert` (PKCS#8, PKCS#1 or SEC1).
    pub tls_key: Option<PathBuf>,
    /// Extra DNS names or IP addresses of the cluster-CA-issued API certificate (the
    /// names clients use in `https://NAME:PORT`). Default none.
    pub tls_names: Vec<String>,
}

/// `[api] tls`: when the API speaks TLS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiTls {
    /// TLS beyond loopback, plain HTTP on loopback.
    #[default]
    Auto,
    /// TLS on every address.
    On,
    /// Plain HTTP on every address (an explicit opt-out beyond loopback).
    Off,
}

impl ApiConfig {
    /// True if the API is served with TLS.
    pub fn uses_tls(&self) -> bool {
        match self.tls {
            ApiTls::On => true,
            ApiTls::Off => false,
            ApiTls::Auto => self.tls_cert.is_some() || !self.listen.ip().is_loopback(),
        }
    }
}

impl ApiConfig {
    /// Requests one principal may have in hand at once (see
    /// `max_requests_per_principal`).
    pub fn requests_per_principal(&self) -> usize {
        self.max_requests_per_principal
            .unwrap_or_else(|| (self.max_concurrent_requests * 7 / 8).max(1))
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            tokens: Vec::new(),
            max_body_bytes: 4 * 1024 * 1024,
            max_concurrent_requests: 256,
            max_requests_per_principal: None,
            max_connections: 1024,
            header_timeout_secs: 10,
            body_timeout_secs: 30,
            body_min_bytes_per_sec: 4096,
            tls: ApiTls::Auto,
            tls_cert: None,
            tls_key: None,
            tls_names: Vec::new(),
        }
    }
}
