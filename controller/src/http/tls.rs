//! TLS on the HTTP listener: the controller's certificate (the one gRPC
//! serves), handshakes run beside the accept loop (a slow client holds up
//! no one), each within a time limit and at most [`MAX_HANDSHAKES`] at once.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::ControllerError;

/// Handshakes in progress at most; more connections wait to be accepted.
const MAX_HANDSHAKES: usize = 256;
/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The server side of TLS from a certificate chain and key in PEM.
///
/// # Errors
/// PEM that holds no certificate or no usable key.
pub fn server_config(cert_pem: &str, key_pem: &str) -> Result<Arc<ServerConfig>, ControllerError> {
    let bad = |e: String| ControllerError::Config(format!("HTTP TLS: {e}; check security.tls_cert/tls_key"));
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| bad(format!("certificate: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| bad(format!("key: {e}")))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad(e.to_string()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A listener whose connections arrive with their TLS handshake done.
pub struct TlsListener {
    done: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    addr: SocketAddr,
}

impl TlsListener {
    /// Accepts on `tcp` until `shutdown`.
    ///
    /// # Errors
    /// The listener's address unreadable.
    pub fn start(tcp: TcpListener, cfg: Arc<ServerConfig>, shutdown: CancellationToken) -> io::Result<Self> {
        let addr = tcp.local_addr()?;
        let (tx, done) = mpsc::channel(MAX_HANDSHAKES);
        tokio::spawn(accept_loop(tcp, TlsAcceptor::from(cfg), tx, shutdown));
        Ok(Self { done, addr })
    }
}

async fn accept_loop(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
    shutdown: CancellationToken,
) {
    let limit = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(permit) = limit.clone().acquire_owned().await else { return };
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => return,
            r = tcp.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "HTTP accept failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (acceptor, tx) = (acceptor.clone(), tx.clone());
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = tx.send((tls, peer)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "HTTP TLS handshake failed."),
                Err(_) => tracing::debug!(%peer, "HTTP TLS handshake timed out."),
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.done.recv().await {
            Some(c) => c,
            // The accept loop ended (shutdown): nothing more arrives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.addr)
    }
}
