//! TLS for test pods (features `testing` and `tls`): [`TestCa`] makes certificates, [`Pod::start_tls`](super::Pod::start_tls) serves with them.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// How long a test pod waits for a client's TLS handshake before dropping
/// the connection, so a client that never speaks does not hold a task.
#[cfg(feature = "tls")]
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The TLS side of a test pod: nothing (plain TCP), or a rustls acceptor.
#[derive(Clone, Default)]
pub(crate) struct ServerTls {
    #[cfg(feature = "tls")]
    acceptor: Option<tokio_rustls::TlsAcceptor>,
}

/// An accepted connection: plain, or TLS after the handshake.
pub(crate) enum ServerStream {
    Tcp(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

// ===== impl ServerTls =====

impl ServerTls {
    /// Serves TLS with `config`.
    #[cfg(feature = "tls")]
    pub(crate) fn new(config: std::sync::Arc<rustls::ServerConfig>) -> Self {
        Self {
            acceptor: Some(tokio_rustls::TlsAcceptor::from(config)),
        }
    }

    /// The connection to serve on, after a TLS handshake if this serves TLS;
    /// `None` if the handshake failed or timed out (the client sees its end
    /// of the failure, e.g. a certificate alert).
    pub(crate) async fn accept(&self, tcp: TcpStream) -> Option<ServerStream> {
        #[cfg(feature = "tls")]
        if let Some(acceptor) = &self.acceptor {
            return match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => Some(ServerStream::Tls(Box::new(tls))),
                Ok(Err(err)) => {
                    tracing::debug!(error = %err, "pod: TLS handshake failed");
                    None
                }
                Err(_) => {
                    tracing::debug!("pod: TLS handshake timed out");
                    None
                }
            };
        }
        Some(ServerStream::Tcp(tcp))
    }
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        #[cfg(feature = "tls")]
        let on = self.acceptor.is_some();
        #[cfg(not(feature = "tls"))]
        let on = false;
        f.write_str(if on { "Tls" } else { "None" })
    }
}

// ===== impl ServerStream =====

impl ServerStream {
    /// The protocol chosen by ALPN, if TLS and one was.
    pub(crate) fn alpn_protocol(&self) -> Option<Vec<u8>> {
        match self {
            ServerStream::Tcp(_) => None,
            #[cfg(feature = "tls")]
            ServerStream::Tls(tls) => tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec),
        }
    }
}

macro_rules! forward {
    ($self:ident, $s:ident => $call:expr) => {
        match $self.get_mut() {
            ServerStream::Tcp($s) => {
                let $s = Pin::new($s);
                $call
            }
            #[cfg(feature = "tls")]
            ServerStream::Tls($s) => {
                let $s = Pin::new(&mut **$s);
                $call
            }
        }
    };
}

impl AsyncRead for ServerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        forward!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for ServerStream {
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

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        forward!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ServerStream::Tcp(s) => s.is_write_vectored(),
            #[cfg(feature = "tls")]
            ServerStream::Tls(s) => s.is_write_vectored(),
        }
    }
}

#[cfg(feature = "tls")]
pub use self::ca::{TestCa, TestCert};

#[cfg(feature = "tls")]
mod ca {
    use std::io;
    use std::sync::Arc;

    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    use rustls::crypto::CryptoProvider;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use rustls::server::WebPkiClientVerifier;
    use rustls::{ClientConfig, RootCertStore, ServerConfig};

    /// A certificate authority for tests: issues server and client
    /// certificates for any names, and makes rustls configurations that
    /// trust it. Everything is generated in memory (rcgen, ECDSA P-256)
    /// and uses the *ring* provider.
    ///
    /// ```
    /// # fn main() -> std::io::Result<()> {
    /// use headless_lb::testing::TestCa;
    ///
    /// let ca = TestCa::new()?;
    /// let server = ca.server_config(&["web.default.svc.cluster.local"])?; // for Pod::start_tls
    /// let client = ca.client_config()?;                                 // for Builder::tls
    /// # let _ = (server, client); Ok(()) }
    /// ```
    pub struct TestCa {
        issuer: CertifiedIssuer<'static, KeyPair>,
    }

    /// A certificate issued by a [`TestCa`], with its private key.
    #[derive(Clone)]
    pub struct TestCert {
        cert: CertificateDer<'static>,
        cert_pem: String,
        key_der: Vec<u8>,
        key_pem: String,
    }

    impl TestCa {
        /// A new CA with a fresh key.
        pub fn new() -> io::Result<Self> {
            let mut params = CertificateParams::new(Vec::<String>::new()).map_err(other)?;
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(DnType::CommonName, "headless-lb test CA");
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let key = KeyPair::generate().map_err(other)?;
            let issuer = CertifiedIssuer::self_signed(params, key).map_err(other)?;
            Ok(Self { issuer })
        }

        /// The CA certificate, PEM-encoded (for `--tls-ca`, nginx, curl).
        pub fn cert_pem(&self) -> String {
            self.issuer.pem()
        }

        /// A server certificate for `names` (DNS names or IP addresses).
        pub fn server_cert(&self, names: &[&str]) -> io::Result<TestCert> {
            self.issue(names, ExtendedKeyUsagePurpose::ServerAuth)
        }

        /// A client certificate for `name`, for mTLS.
        pub fn client_cert(&self, name: &str) -> io::Result<TestCert> {
            self.issue(&[name], ExtendedKeyUsagePurpose::ClientAuth)
        }

        fn issue(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> io::Result<TestCert> {
            let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
            let mut params = CertificateParams::new(names.clone()).map_err(other)?;
            if let Some(first) = names.first() {
                params.distinguished_name.push(DnType::CommonName, first);
            }
            params.extended_key_usages = vec![usage];
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            let key = KeyPair::generate().map_err(other)?;
            let cert = params.signed_by(&key, &self.issuer).map_err(other)?;
            Ok(TestCert {
                cert: cert.der().clone(),
                cert_pem: cert.pem(),
                key_der: key.serialize_der(),
                key_pem: key.serialize_pem(),
            })
        }

        /// A server configuration presenting a certificate for `names`,
        /// offering `h2` and `http/1.1` by ALPN.
        pub fn server_config(&self, names: &[&str]) -> io::Result<Arc<ServerConfig>> {
            let cert = self.server_cert(names)?;
            let mut config = ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(other)?
                .with_no_client_auth()
                .with_single_cert(vec![cert.cert.clone()], cert.key())
                .map_err(other)?;
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            Ok(Arc::new(config))
        }

        /// Like [`server_config`](Self::server_config), and every client
        /// must present a certificate this CA issued (mTLS).
        pub fn server_config_requiring_client_cert(
            &self,
            names: &[&str],
        ) -> io::Result<Arc<ServerConfig>> {
            let cert = self.server_cert(names)?;
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(self.roots()?), provider())
                    .build()
                    .map_err(other)?;
            let mut config = ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(other)?
                .with_client_cert_verifier(verifier)
                .with_single_cert(vec![cert.cert.clone()], cert.key())
                .map_err(other)?;
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            Ok(Arc::new(config))
        }

        /// A client configuration that trusts this CA only.
        pub fn client_config(&self) -> io::Result<ClientConfig> {
            Ok(ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(other)?
                .with_root_certificates(self.roots()?)
                .with_no_client_auth())
        }

        /// A client configuration that trusts this CA and presents a
        /// client certificate for `name` that it issued (mTLS).
        pub fn client_config_with_cert(&self, name: &str) -> io::Result<ClientConfig> {
            let cert = self.client_cert(name)?;
            ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(other)?
                .with_root_certificates(self.roots()?)
                .with_client_auth_cert(vec![cert.cert.clone()], cert.key())
                .map_err(other)
        }

        fn roots(&self) -> io::Result<RootCertStore> {
            let mut roots = RootCertStore::empty();
            roots.add(self.issuer.der().clone()).map_err(other)?;
            Ok(roots)
        }
    }

    impl std::fmt::Debug for TestCa {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("TestCa").finish_non_exhaustive()
        }
    }

    impl TestCert {
        /// The certificate, PEM-encoded.
        pub fn cert_pem(&self) -> &str {
            &self.cert_pem
        }

        /// The private key, PKCS#8 PEM-encoded.
        pub fn key_pem(&self) -> &str {
            &self.key_pem
        }

        /// The certificate, DER-encoded.
        pub fn cert_der(&self) -> CertificateDer<'static> {
            self.cert.clone()
        }

        /// The private key, for rustls.
        pub fn key(&self) -> PrivateKeyDer<'static> {
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
        }
    }

    impl std::fmt::Debug for TestCert {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("TestCert").finish_non_exhaustive()
        }
    }

    /// *ring*, named explicitly: a process-wide default would be ambiguous
    /// where another crate enables aws-lc-rs too.
    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn other(e: impl std::fmt::Display) -> io::Error {
        io::Error::other(e.to_string())
    }
}
