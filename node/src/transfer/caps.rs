//! Connection caps of a node toward origins: at most `max_origin_connections` range
//! requests in flight from this node in all, and at most `max_connections_per_origin`
//! to one origin (scheme, host and port), whether the node fetches for its own jobs or
//! helps another member. A request waits for both permits (per origin first, so that
//! waiters for a busy origin do not hold node-wide permits others could use). Also how
//! many connections one file's download opens.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The node's caps, shared by every run and every piece it fetches for others.
#[derive(Debug)]
pub(crate) struct ConnectionCaps {
    node: Arc<Semaphore>,
    per_origin: usize,
    origins: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// Held while a request is in flight (until its body is read).
#[derive(Debug)]
pub(crate) struct Permit {
    _origin: OwnedSemaphorePermit,
    _node: OwnedSemaphorePermit,
}

/// Origins whose semaphores are kept; beyond it, idle ones are forgotten.
const KEPT_ORIGINS: usize = 1_024;

impl ConnectionCaps {
    /// Caps of `node` requests in all and `per_origin` per origin (each at least 1).
    pub(crate) fn new(node: usize, per_origin: usize) -> Self {
        Self {
            node: Arc::new(Semaphore::new(node.max(1))),
            per_origin: per_origin.max(1),
            origins: Mutex::new(HashMap::new()),
        }
    }

    /// Waits until a request to `url` may go.
    pub(crate) async fn acquire(&self, url: &str) -> Permit {
        let origin = self.origin(&origin_of(url));
        // Never closed: the semaphores live as long as `self`.
        let origin = origin.acquire_owned().await.unwrap_or_else(|_| unreachable!("open"));
        let node = self.node.clone().acquire_owned().await.unwrap_or_else(|_| unreachable!("open"));
        Permit { _origin: origin, _node: node }
    }

    fn origin(&self, key: &str) -> Arc<Semaphore> {
        let mut origins = self.origins.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if origins.len() >= KEPT_ORIGINS && !origins.contains_key(key) {
            // Forget origins nobody is waiting on or fetching from.
            let per_origin = self.per_origin;
            origins.retain(|_, s| s.available_permits() < per_origin || Arc::strong_count(s) > 1);
        }
        origins
            .entry(key.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_origin)))
            .clone()
    }
}

/// `scheme://host:port` of `url` (the URL itself if it does not parse).
fn origin_of(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(parsed) => format!(
            "{}://{}:{}",
            parsed.scheme(),
            parsed.host_str().unwrap_or_default(),
            parsed.port_or_known_default().unwrap_or(0)
        ),
        Err(_) => url.to_owned(),
    }
}

impl super::EngineSettings {
    /// Range connections per file of `job`, at first and at most: its own count or the
    /// node's, or from one up to the most a file may have when the node picks them
    /// (`transfer.connections = "auto"`, see `download::ramp`). A fleet member picks
    /// one: the fleet's members are its parallel connections, and more per member
    /// fetch more pieces from the origin twice.
    pub(crate) fn connections_of(&self, job: &ferry_protocol::Job) -> (usize, usize) {
        use crate::config::Connections;
        let most = ferry_protocol::limits::MAX_CONNECTIONS_PER_FILE;
        match (job.props().max_connections, self.connections) {
            (Some(n), _) | (None, Connections::Fixed(n)) => {
                let n = n.clamp(1, most) as usize;
                (n, n)
            }
            (None, Connections::Auto) if job.fleet().is_some() => (1, 1),
            (None, Connections::Auto) => (1, most as usize),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn blocked(caps: &ConnectionCaps, url: &str) -> bool {
        tokio::time::timeout(Duration::from_millis(50), caps.acquire(url)).await.is_err()
    }

    #[tokio::test]
    async fn requests_wait_for_their_origin_and_for_the_node() {
        let caps = ConnectionCaps::new(3, 2);
        let a1 = caps.acquire("http://a.example/x").await;
        let _a2 = caps.acquire("http://a.example:80/y").await;
        // Same origin (the default port is explicit or not): the third waits.
        assert!(blocked(&caps, "http://a.example/z").await);
        // Another origin goes, up to the node's cap of 3.
        let _b1 = caps.acquire("https://a.example/x").await;
        assert!(blocked(&caps, "http://b.example/").await, "the node cap is 3");
        drop(a1);
        assert!(!blocked(&caps, "http://b.example/").await);
    }

    #[test]
    fn origins_are_scheme_host_and_port() {
        assert_eq!(origin_of("http://h.example/a?b"), "http://h.example:80");
        assert_eq!(origin_of("https://h.example:8443/"), "https://h.example:8443");
        assert_eq!(origin_of("not a url"), "not a url");
    }
}
