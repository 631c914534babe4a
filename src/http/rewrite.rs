//! Addressing a request to one endpoint: the URI hyper writes and the `Host` / `:authority` it carries.
//!
//! The caller's request names the *service* (`/api/x`, or
//! `http://web.default.svc.cluster.local:8080/api/x`); the connection already
//! goes to the pod, so only the authority the server sees has to be chosen:
//!
//! ```text
//! HTTP/1.1:  GET /api/x HTTP/1.1            HTTP/2:  :method GET
//!            Host: <authority>                       :scheme http
//!                                                    :authority <authority>
//!                                                    :path /api/x
//! ```

use std::net::SocketAddr;

use http::header::{HOST, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};

use super::Protocol;

/// The authority an endpoint's requests carry, parsed once.
#[derive(Debug, Clone)]
pub(crate) struct Addressing {
    /// Set by the user: always wins.
    configured: Option<(Authority, HeaderValue)>,
    /// The endpoint's own address, when neither the user nor the request names one.
    fallback: (Authority, HeaderValue),
    /// The connection is TLS: HTTP/2 requests carry `:scheme https`
    /// whatever their URI says, since the scheme names the transport.
    https: bool,
}

/// What [`Addressing::apply`] replaced, to hand an unsent request back unchanged.
#[derive(Debug)]
pub(crate) struct Restore {
    uri: Uri,
    host: Option<HeaderValue>,
}

// ===== impl Addressing =====

impl Addressing {
    pub(crate) fn new(configured: Option<Authority>, addr: SocketAddr) -> Self {
        Self {
            configured: configured.map(|a| {
                let v = header_value(&a);
                (a, v)
            }),
            fallback: {
                let a = socket_authority(addr);
                let v = header_value(&a);
                (a, v)
            },
            https: false,
        }
    }

    /// Over TLS (`true`), HTTP/2 requests carry `:scheme https`.
    pub(crate) fn with_https(mut self, https: bool) -> Self {
        self.https = https;
        self
    }

    /// Rewrites `req` for `protocol`. The authority is, in order: the
    /// configured one, the request URI's, the request's `Host` header, the
    /// endpoint address.
    pub(crate) fn apply<B>(
        &self,
        protocol: Protocol,
        req: &mut http::Request<B>,
    ) -> Result<Restore, http::Error> {
        let (authority, host) = match &self.configured {
            Some((a, v)) => (a.clone(), v.clone()),
            None => match req.uri().authority() {
                Some(a) => (a.clone(), header_value(a)),
                None => match req
                    .headers()
                    .get(HOST)
                    .and_then(|h| Authority::try_from(h.as_bytes()).ok())
                {
                    Some(a) => {
                        let v = header_value(&a);
                        (a, v)
                    }
                    None => self.fallback.clone(),
                },
            },
        };
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let uri = match protocol {
            // Origin-form: the connection already names the host.
            Protocol::Http1 => Uri::from(path),
            Protocol::Http2 => Uri::builder()
                .scheme(match self.https {
                    true => Scheme::HTTPS,
                    false => req.uri().scheme().cloned().unwrap_or(Scheme::HTTP),
                })
                .authority(authority)
                .path_and_query(path)
                .build()?,
        };
        let uri = std::mem::replace(req.uri_mut(), uri);
        let host = match protocol {
            Protocol::Http1 => req.headers_mut().insert(HOST, host),
            // hyper derives `:authority` from the URI; a `host` header next to
            // it is redundant at best (RFC 9113 §8.3.1) and may disagree.
            Protocol::Http2 => req.headers_mut().remove(HOST),
        };
        Ok(Restore { uri, host })
    }
}

// ===== impl Restore =====

impl Restore {
    /// Puts back the URI and `Host` header the caller passed in.
    pub(crate) fn undo<B>(self, req: &mut http::Request<B>) {
        *req.uri_mut() = self.uri;
        match self.host {
            Some(h) => req.headers_mut().insert(HOST, h),
            None => req.headers_mut().remove(HOST),
        };
    }
}

/// `ip:port`, with IPv6 addresses bracketed. A scope id (`%eth0`) is left
/// out: it means nothing to the server and `%` is not allowed there.
pub(crate) fn socket_authority(addr: SocketAddr) -> Authority {
    let s = match addr {
        SocketAddr::V4(a) => a.to_string(),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    };
    Authority::try_from(s).expect("a socket address is a valid authority")
}

fn header_value(a: &Authority) -> HeaderValue {
    HeaderValue::from_str(a.as_str()).expect("an authority is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addressing(configured: Option<&str>, addr: &str) -> Addressing {
        Addressing::new(
            configured.map(|c| c.parse().unwrap()),
            addr.parse().unwrap(),
        )
    }

    fn request(uri: &str) -> http::Request<()> {
        http::Request::get(uri).body(()).unwrap()
    }

    #[test]
    fn http1_sends_origin_form_with_configured_host() {
        let a = addressing(Some("web.default.svc.cluster.local:8080"), "10.0.0.1:8080");
        let mut req = request("http://web:8080/api/x?q=1");
        a.apply(Protocol::Http1, &mut req).unwrap();
        assert_eq!(req.uri(), "/api/x?q=1");
        assert_eq!(req.headers()[HOST], "web.default.svc.cluster.local:8080");
    }

    #[test]
    fn http2_sends_absolute_uri_with_configured_authority_and_no_host_header() {
        let a = addressing(Some("web.default.svc.cluster.local:8080"), "10.0.0.1:8080");
        let mut req = request("/api/x");
        req.headers_mut()
            .insert(HOST, HeaderValue::from_static("other"));
        a.apply(Protocol::Http2, &mut req).unwrap();
        assert_eq!(req.uri(), "http://web.default.svc.cluster.local:8080/api/x");
        assert!(req.headers().get(HOST).is_none());
    }

    #[test]
    fn http2_over_tls_sends_https_whatever_the_request_says() {
        let a = addressing(Some("web.default.svc.cluster.local:8443"), "10.0.0.1:8443")
            .with_https(true);
        for uri in ["/x", "http://web/x"] {
            let mut req = request(uri);
            a.apply(Protocol::Http2, &mut req).unwrap();
            assert_eq!(req.uri(), "https://web.default.svc.cluster.local:8443/x");
        }
    }

    #[test]
    fn request_authority_is_used_when_none_is_configured() {
        let a = addressing(None, "10.0.0.1:8080");
        let mut req = request("http://web:8080/x");
        a.apply(Protocol::Http1, &mut req).unwrap();
        assert_eq!(req.headers()[HOST], "web:8080");
    }

    #[test]
    fn ipv6_endpoint_address_is_bracketed_when_nothing_names_the_service() {
        let a = addressing(None, "[fe80::1%2]:8080");
        let mut req = request("/x");
        a.apply(Protocol::Http2, &mut req).unwrap();
        assert_eq!(req.uri(), "http://[fe80::1]:8080/x");
        let mut req = request("/x");
        a.apply(Protocol::Http1, &mut req).unwrap();
        assert_eq!(req.headers()[HOST], "[fe80::1]:8080");
    }

    #[test]
    fn empty_path_becomes_slash() {
        let a = addressing(None, "10.0.0.1:80");
        let mut req = request("http://web");
        a.apply(Protocol::Http1, &mut req).unwrap();
        assert_eq!(req.uri(), "/");
    }

    #[test]
    fn undo_restores_the_callers_uri_and_host() {
        let a = addressing(Some("svc:80"), "10.0.0.1:80");
        for protocol in [Protocol::Http1, Protocol::Http2] {
            let mut req = request("http://web/x");
            req.headers_mut()
                .insert(HOST, HeaderValue::from_static("mine"));
            let original = (req.uri().clone(), req.headers().clone());
            a.apply(protocol, &mut req).unwrap().undo(&mut req);
            assert_eq!((req.uri().clone(), req.headers().clone()), original);

            let mut req = request("/x");
            a.apply(protocol, &mut req).unwrap().undo(&mut req);
            assert_eq!(req.uri(), "/x");
            assert!(req.headers().get(HOST).is_none());
        }
    }
}
