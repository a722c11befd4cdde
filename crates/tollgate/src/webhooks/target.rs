//! Where a webhook may point. An account holder's URL must not reach the operator's own
//! network: loopback, private, link-local, unique-local, unspecified, multicast and
//! other special addresses are refused, by literal and after DNS resolution, both when
//! the webhook is created and on every connection (the resolver below is the one the
//! delivery client connects through, so a name that later resolves elsewhere is refused
//! too), unless `[webhook_policy] allow_private_targets = true`.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::http::Uri;
use hyper_util::client::legacy::connect::dns::Name;

/// Why a webhook URL is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("'{0}' is not an http(s) URL with a host")]
    NotHttp(String),
    #[error("the webhook URL must not carry credentials")]
    Credentials,
    #[error("the webhook URL points at {0}, a loopback, private or link-local address; webhooks may only call public addresses")]
    Private(IpAddr),
    #[error("the webhook host '{0}' cannot be resolved")]
    Unresolved(String),
}

/// Whether an address is public (not loopback, private, link-local or special).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (first & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (first & 0xffc0) == 0xfec0 // site-local (deprecated)
                || first == 0x2001 && v6.segments()[1] == 0x0db8 // documentation
                || first == 0x0064 && v6.segments()[1] == 0xff9b // NAT64 of any v4
                || v6.segments()[..6] == [0; 6]) // v4-compatible ::a.b.c.d
        }
    }
}

fn is_public_v4(v4: Ipv4Addr) -> bool {
    let [a, b, ..] = v4.octets();
    !(v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_multicast()
        || v4.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT
        || (a == 192 && b == 0) // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || a >= 240) // reserved
}

/// The host and port of an http(s) URL.
pub fn host_and_port(url: &str) -> Result<(String, u16), TargetError> {
    let not_http = || TargetError::NotHttp(url.chars().take(100).collect());
    let uri: Uri = url.parse().map_err(|_| not_http())?;
    let scheme = uri.scheme_str().ok_or_else(not_http)?;
    let default_port = match scheme {
        "http" => 80,
        "https" => 443,
        _ => return Err(not_http()),
    };
    let authority = uri.authority().ok_or_else(not_http)?;
    if authority.as_str().contains('@') {
        return Err(TargetError::Credentials);
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host.is_empty() {
        return Err(not_http());
    }
    Ok((
        host.to_string(),
        authority.port_u16().unwrap_or(default_port),
    ))
}

/// Resolves `host` and checks every address it names.
pub async fn check(url: &str, allow_private: bool) -> Result<(), TargetError> {
    let (host, port) = host_and_port(url)?;
    if allow_private {
        return Ok(());
    }
    let addrs = resolve(&host, port, false).await?;
    if addrs.is_empty() {
        return Err(TargetError::Unresolved(host));
    }
    Ok(())
}

async fn resolve(
    host: &str,
    port: u16,
    allow_private: bool,
) -> Result<Vec<SocketAddr>, TargetError> {
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|_| TargetError::Unresolved(host.to_string()))?
            .collect(),
    };
    if !allow_private {
        // One private address refuses the whole name: a name that mixes public and
        // private addresses is how a rebinding attack starts.
        if let Some(bad) = addrs.iter().find(|a| !is_public(a.ip())) {
            return Err(TargetError::Private(bad.ip()));
        }
    }
    Ok(addrs)
}

/// The resolver of the delivery client: refuses private addresses on every connection.
#[derive(Clone, Copy)]
pub struct GuardedResolver {
    pub allow_private: bool,
}

impl tower::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let addrs = resolve(name.as_str(), 0, allow_private)
                .await
                .map_err(|e| {
                    std::io::Error::new(std::io::ErrorKind::PermissionDenied, e.to_string())
                })?;
            Ok(addrs.into_iter())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_addresses_are_not_public() {
        for text in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::7f00:1",
            "::127.0.0.1",
        ] {
            let ip: IpAddr = text.parse().expect(text);
            assert!(!is_public(ip), "{text}");
        }
        for text in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            let ip: IpAddr = text.parse().expect(text);
            assert!(is_public(ip), "{text}");
        }
    }

    #[test]
    fn urls_need_http_and_a_host_without_credentials() {
        assert_eq!(
            host_and_port("https://example.com/x"),
            Ok(("example.com".into(), 443))
        );
        assert_eq!(
            host_and_port("http://[::1]:8080/"),
            Ok(("::1".into(), 8080))
        );
        assert!(matches!(
            host_and_port("ftp://example.com/"),
            Err(TargetError::NotHttp(_))
        ));
        assert!(matches!(
            host_and_port("example.com"),
            Err(TargetError::NotHttp(_))
        ));
        assert_eq!(
            host_and_port("https://u:p@example.com/"),
            Err(TargetError::Credentials)
        );
    }

    #[tokio::test]
    async fn names_are_checked_after_resolution() {
        assert!(matches!(
            check("http://localhost:9/hook", false).await,
            Err(TargetError::Private(_))
        ));
        assert!(matches!(
            check("http://127.0.0.1/", false).await,
            Err(TargetError::Private(_))
        ));
        assert!(matches!(
            check("http://[::1]/", false).await,
            Err(TargetError::Private(_))
        ));
        assert_eq!(check("http://localhost:9/hook", true).await, Ok(()));
    }
}
