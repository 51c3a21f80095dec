//! Whether two URLs belong to one site: the same scheme and the same registrable
//! domain (the public suffix list decides where a domain's registrable part starts:
//! `a.example.co.uk` and `b.example.co.uk` are one site, `a.co.uk` and `b.co.uk` are
//! not). IP-literal hosts are one site only with the same address. Used for the hosts
//! an upload server names in `BITS-Host-Id`, which receive the job's credentials.

use url::{Host, Url};

/// Whether `a` and `b` share scheme and registrable domain.
pub(crate) fn same_site(a: &Url, b: &Url) -> bool {
    if a.scheme() != b.scheme() {
        return false;
    }
    match (a.host(), b.host()) {
        (Some(Host::Domain(x)), Some(Host::Domain(y))) => {
            match (registrable(x), registrable(y)) {
                (Some(x), Some(y)) => x == y,
                // Single-label or suffix-only names: only the very same host.
                _ => normalise(x) == normalise(y),
            }
        }
        (Some(Host::Ipv4(x)), Some(Host::Ipv4(y))) => x == y,
        (Some(Host::Ipv6(x)), Some(Host::Ipv6(y))) => x == y,
        _ => false,
    }
}

/// Whether `host` is `entry` or under it (`farm.example` covers `n1.farm.example`).
pub(crate) fn host_listed(host: &str, entry: &str) -> bool {
    let (host, entry) = (normalise(host), normalise(entry));
    !entry.is_empty() && (host == entry || host.ends_with(&format!(".{entry}")))
}

/// The registrable domain of `host` (lower case, no trailing dot), if it has one.
fn registrable(host: &str) -> Option<String> {
    let host = normalise(host);
    let domain = psl::domain_str(&host)?;
    // A name the list does not know ends in its own one-label suffix: `files.local`
    // has registrable domain `files.local`, and `local` alone has none.
    (domain.contains('.')).then(|| domain.to_owned())
}

fn normalise(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same(a: &str, b: &str) -> bool {
        same_site(&Url::parse(a).expect("url"), &Url::parse(b).expect("url"))
    }

    #[test]
    fn registrable_domains_decide() {
        assert!(same("https://upload.example.com/x", "https://node7.example.com:8443/"));
        assert!(same("https://a.example.co.uk/", "https://b.example.co.uk/"));
        assert!(same("http://Files.Example.com./", "http://farm.example.com/"));
        assert!(!same("https://a.co.uk/", "https://b.co.uk/"));
        assert!(!same("https://upload.example.com/", "http://node7.example.com/"));
        assert!(!same("https://upload.example.com/", "https://example.net/"));
        assert!(!same("https://x.github.io/", "https://y.github.io/"), "a private suffix");
        assert!(!same("http://localhost/", "http://169.254.169.254/"));
        assert!(!same("http://example.com/", "http://[::ffff:a9fe:a9fe]/"));
        assert!(same("http://127.0.0.1:1/", "http://127.0.0.1:2/"));
        assert!(!same("http://127.0.0.1/", "http://127.0.0.2/"));
        assert!(same("http://farm/", "http://farm/"));
        assert!(!same("http://farm/", "http://other/"));
    }

    #[test]
    fn listed_hosts() {
        assert!(host_listed("n1.farm.example", "farm.example"));
        assert!(host_listed("farm.example", "Farm.Example."));
        assert!(!host_listed("evilfarm.example", "farm.example"));
        assert!(!host_listed("x", ""));
    }
}
