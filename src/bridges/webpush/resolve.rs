//! The push client's DNS resolver: a subscription's endpoint was checked when it was stored
//! (`https` on a public host), but a DNS name can point anywhere later, at the internal
//! network included (DNS rebinding: server-side request forgery at send time). So every
//! name is resolved here and only public addresses are kept; a name with none is refused,
//! and the push counts as a failure with no answer (retried with backoff, like an outage).
//! Endpoints given as IP literals are never resolved; they were checked when stored.

use crate::domain::is_public_ip;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
#[error("{0} resolves to no public address (a push service is never on a private, loopback or link-local one)")]
pub struct PrivateHost(String);

/// Resolves with the system's resolver; `allow_private` (tests with a local push service,
/// `TIDINGS__WEBPUSH__ALLOW_INSECURE_ENDPOINTS`) keeps every address.
#[derive(Debug, Clone, Copy)]
pub struct PublicOnly {
    pub allow_private: bool,
}

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        let allow_private = self.allow_private;
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| allow_private || is_public_ip(a.ip()))
                .collect();
            if found.is_empty() {
                return Err(Box::new(PrivateHost(host)) as _);
            }
            Ok(Box::new(found.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn resolve(host: &str, allow_private: bool) -> Result<Vec<SocketAddr>, String> {
        let name: Name = host.parse().map_err(|_| "not a name".to_string())?;
        PublicOnly { allow_private }
            .resolve(name)
            .await
            .map(Iterator::collect)
            .map_err(|e| e.to_string())
    }

    /// `localhost` resolves without a network (the hosts file), to loopback only.
    #[tokio::test]
    async fn a_name_that_resolves_to_loopback_is_refused_unless_allowed() {
        let refused = resolve("localhost", false).await;
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.contains("no public address")),
            "{refused:?}"
        );
        let allowed = resolve("localhost", true).await.unwrap_or_default();
        assert!(!allowed.is_empty());
        assert!(allowed.iter().all(|a| a.ip().is_loopback()));
    }
}
