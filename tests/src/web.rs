//! A small HTTP/1.1 client for the dashboard tests: every header under the
//! test's control (cookies, Origin, Sec-Fetch-Site, the CSRF token), over
//! plain TCP or TLS trusting the controller's CA.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

/// One answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    /// The first header named `name` (lower case).
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Null` when it is none).
    #[must_use]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_default()
    }
}

/// Where to send: the address, and the CA to trust for HTTPS.
#[derive(Clone)]
pub struct Web {
    pub addr: SocketAddr,
    pub ca_pem: Option<String>,
}

/// A TLS connector that trusts `ca_pem` only.
///
/// # Errors
/// PEM that holds no usable certificate.
pub fn connector(ca_pem: &str) -> anyhow::Result<TlsConnector> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c?)?;
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(cfg)))
}

impl Web {
    /// Sends `method path` with `headers` and a JSON `body`; reads the whole answer.
    ///
    /// # Errors
    /// The server unreachable, the TLS handshake refused, or an answer that is no HTTP.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> anyhow::Result<Reply> {
        let tcp = tokio::net::TcpStream::connect(self.addr).await?;
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n", self.addr);
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        let body = body.unwrap_or_default();
        if !body.is_empty() || method == "POST" {
            req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        req.push_str(body);
        match &self.ca_pem {
            Some(ca) => {
                let name = ServerName::try_from("localhost")?;
                let tls = connector(ca)?.connect(name, tcp).await?;
                exchange(tls, &req).await
            }
            None => exchange(tcp, &req).await,
        }
    }

    /// `GET path` with `headers`.
    ///
    /// # Errors
    /// As [`Web::send`].
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<Reply> {
        self.send("GET", path, headers, None).await
    }
}

async fn exchange(mut s: impl AsyncRead + AsyncWrite + Unpin, req: &str) -> anyhow::Result<Reply> {
    s.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    // A TLS peer may close without close_notify: what was read is the answer.
    let _ = s.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| anyhow::anyhow!("no HTTP answer: {text:?}"))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no status line: {head:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(Reply { status, headers, body: body.to_owned() })
}
