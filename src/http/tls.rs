//! TLS to the pods (cargo feature `tls`): [`PodStream`], what [`TcpConnector`](super::TcpConnector) yields, and the rustls handshake behind it.
//!
//! ```text
//!  Endpoint { addr, server_name, protocol } ──► TCP connect ──► TLS handshake ──► PodStream::Tls
//!                                                                 SNI + certificate check: server_name
//!                                                                 ALPN: h2 (Http2, gRPC) or http/1.1 (Http1)
//! ```
//!
//! Every pod of a headless service presents the *service's* certificate
//! (`web.default.svc.cluster.local`), so the name to verify comes from the
//! target, not from the pod's IP: [`Endpoint::server_name`].

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::endpoint::Endpoint;

/// A connection [`TcpConnector`](super::TcpConnector) opened: plain TCP, or TLS over TCP when
/// the connector was given a TLS configuration.
///
/// Implements hyper's [`Read`](hyper::rt::Read) and
/// [`Write`](hyper::rt::Write).
pub struct PodStream {
    inner: Inner,
}

enum Inner {
    Tcp(TokioIo<TcpStream>),
    #[cfg(feature = "tls")]
    Tls(Box<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>),
}

/// The TLS part of a [`TcpConnector`](super::TcpConnector): nothing without the `tls` feature
/// or before `TcpConnector::tls`.
#[derive(Clone, Default)]
pub(crate) struct TlsSetting {
    #[cfg(feature = "tls")]
    configs: Option<std::sync::Arc<imp::Configs>>,
}

// ===== impl PodStream =====

impl PodStream {
    /// True when the connection is TLS.
    pub fn is_tls(&self) -> bool {
        match &self.inner {
            Inner::Tcp(_) => false,
            #[cfg(feature = "tls")]
            Inner::Tls(_) => true,
        }
    }

    /// The protocol the server chose by ALPN (`b"h2"`, `b"http/1.1"`), if
    /// this is TLS and it chose one.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        match &self.inner {
            Inner::Tcp(_) => None,
            #[cfg(feature = "tls")]
            Inner::Tls(tls) => tls.inner().get_ref().1.alpn_protocol(),
        }
    }

    /// The TCP connection underneath, e.g. to read its addresses or socket
    /// options.
    pub fn tcp(&self) -> &TcpStream {
        match &self.inner {
            Inner::Tcp(tcp) => tcp.inner(),
            #[cfg(feature = "tls")]
            Inner::Tls(tls) => tls.inner().get_ref().0,
        }
    }
}

impl fmt::Debug for PodStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PodStream")
            .field("peer", &self.tcp().peer_addr().ok())
            .field("tls", &self.is_tls())
            .finish()
    }
}

/// Forwards one hyper I/O method to whichever stream is inside.
macro_rules! forward {
    ($self:ident, $s:ident => $call:expr) => {
        match &mut $self.get_mut().inner {
            Inner::Tcp($s) => {
                let $s = Pin::new($s);
                $call
            }
            #[cfg(feature = "tls")]
            Inner::Tls($s) => {
                let $s = Pin::new(&mut **$s);
                $call
            }
        }
    };
}

impl hyper::rt::Read for PodStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        forward!(self, s => s.poll_read(cx, buf))
    }
}

impl hyper::rt::Write for PodStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        forward!(self, s => s.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        forward!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        forward!(self, s => s.poll_shutdown(cx))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.inner {
            Inner::Tcp(s) => s.is_write_vectored(),
            #[cfg(feature = "tls")]
            Inner::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        forward!(self, s => s.poll_write_vectored(cx, bufs))
    }
}

// ===== impl TlsSetting =====

impl TlsSetting {
    /// Hands `tcp` back as it is, or after a TLS handshake for `endpoint`.
    pub(crate) async fn wrap(&self, tcp: TcpStream, endpoint: &Endpoint) -> io::Result<PodStream> {
        #[cfg(feature = "tls")]
        if let Some(configs) = &self.configs {
            let tls = configs.handshake(tcp, endpoint).await?;
            return Ok(PodStream {
                inner: Inner::Tls(Box::new(TokioIo::new(tls))),
            });
        }
        let _ = endpoint;
        Ok(PodStream {
            inner: Inner::Tcp(TokioIo::new(tcp)),
        })
    }

    /// True when connections are TLS.
    pub(crate) fn is_on(&self) -> bool {
        #[cfg(feature = "tls")]
        return self.configs.is_some();
        #[cfg(not(feature = "tls"))]
        false
    }
}

impl fmt::Debug for TlsSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.is_on() { "Tls" } else { "None" })
    }
}

#[cfg(feature = "tls")]
pub use self::imp::TlsHandshakeError;
#[cfg(feature = "tls")]
pub(crate) use self::imp::check_server_name;

#[cfg(feature = "tls")]
mod imp {
    use std::fmt;
    use std::io;
    use std::sync::Arc;

    use rustls::ClientConfig;
    use rustls::pki_types::ServerName;
    use tokio::net::TcpStream;
    use tokio_rustls::TlsConnector;
    use tokio_rustls::client::TlsStream;

    use super::TlsSetting;
    use crate::endpoint::Endpoint;
    use crate::error::BuildError;
    use crate::http::Protocol;
    use crate::http::TcpConnector;

    /// ALPN ids (RFC 7301 registry).
    const ALPN_H2: &[u8] = b"h2";
    const ALPN_HTTP1: &[u8] = b"http/1.1";

    /// The user's configuration, once per protocol with its ALPN offer:
    /// made when TLS is configured, so that a connect only clones an `Arc`.
    pub(super) struct Configs {
        http1: TlsConnector,
        http2: TlsConnector,
    }

    /// A TLS handshake with a pod failed: its certificate is not valid for
    /// the expected server name, not issued by a trusted CA, expired, the
    /// pod does not speak TLS, wants a client certificate, …
    ///
    /// Found in the source chain of the [`ConnectError`](crate::http::ConnectError)
    /// (whose [`is_tls`](crate::http::ConnectError::is_tls) is then true),
    /// inside the `io::Error` that [`TcpConnector`] returns.
    #[derive(Debug)]
    pub struct TlsHandshakeError {
        server_name: Arc<str>,
        source: io::Error,
    }

    impl Configs {
        fn new(config: ClientConfig) -> Self {
            let with_alpn = |alpn: &[u8]| {
                let mut config = config.clone();
                config.alpn_protocols = vec![alpn.to_vec()];
                TlsConnector::from(Arc::new(config))
            };
            Self {
                http1: with_alpn(ALPN_HTTP1),
                http2: with_alpn(ALPN_H2),
            }
        }

        pub(super) async fn handshake(
            &self,
            tcp: TcpStream,
            endpoint: &Endpoint,
        ) -> io::Result<TlsStream<TcpStream>> {
            let server_name: Arc<str> = endpoint.server_name().into();
            let fail = |source: io::Error| {
                io::Error::new(
                    source.kind(),
                    TlsHandshakeError {
                        server_name: server_name.clone(),
                        source,
                    },
                )
            };
            // The builders check the name; an `Endpoint` made by hand may
            // still carry a bad one: fail this connect, never panic.
            let name = ServerName::try_from(endpoint.server_name().to_owned())
                .map_err(|e| fail(io::Error::new(io::ErrorKind::InvalidInput, e.to_string())))?;
            let connector = match endpoint.protocol() {
                Protocol::Http1 => &self.http1,
                Protocol::Http2 => &self.http2,
            };
            connector.connect(name, tcp).await.map_err(fail)
        }
    }

    // ===== impl TlsHandshakeError =====

    impl TlsHandshakeError {
        /// The name the pod's certificate was checked against (and sent as SNI).
        pub fn server_name(&self) -> &str {
            &self.server_name
        }
    }

    impl fmt::Display for TlsHandshakeError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(
                f,
                "TLS handshake for server name {:?} failed: {}",
                &*self.server_name, self.source
            )
        }
    }

    impl std::error::Error for TlsHandshakeError {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.source)
        }
    }

    /// `BuildError::ServerName` unless `name` is a DNS name or an IP address
    /// rustls can verify a certificate against.
    pub(crate) fn check_server_name(name: &str) -> Result<(), BuildError> {
        ServerName::try_from(name)
            .map(drop)
            .map_err(|e| BuildError::ServerName {
                name: name.to_owned(),
                reason: e.to_string(),
            })
    }

    // ===== impl TcpConnector =====

    impl TcpConnector {
        /// Speaks TLS over every connection with `config` (cargo feature
        /// `tls`): the pod's certificate is verified against the
        /// [`Endpoint`]'s server name, which is also sent as SNI, and ALPN
        /// offers `h2` for [`Protocol::Http2`] (and gRPC), `http/1.1` for
        /// [`Protocol::Http1`], replacing the config's own
        /// `alpn_protocols`. A client certificate in `config` (mTLS) is
        /// presented to every pod.
        pub fn tls(mut self, config: ClientConfig) -> Self {
            self.tls = TlsSetting {
                configs: Some(Arc::new(Configs::new(config))),
            };
            self
        }
    }
}
