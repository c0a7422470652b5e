//! The one way to open a channel to the controller's gRPC API, shared by
//! `fleetctl`, `fleet-agent enroll`, `fleet-local` and the tests: plain
//! `http://` or TLS (`https://`) trusting a given CA, and the bearer token
//! every `FleetService` call carries.

use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::NetError;

/// A `FleetService` client that sends the bearer token.
pub type FleetClient = fleet_proto::v1::fleet_service_client::FleetServiceClient<InterceptedService<Channel, Bearer>>;

/// Adds `authorization: Bearer <token>` to every call (nothing when no token).
#[derive(Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// A bearer of `token`.
    ///
    /// # Errors
    /// When the token has characters a header cannot carry (it was mistyped).
    pub fn new(token: Option<&str>) -> Result<Self, NetError> {
        match token.map(str::trim) {
            None | Some("") => Ok(Self(None)),
            Some(t) => format!("Bearer {t}").parse().map(|v| Self(Some(v))).map_err(|_| NetError::BadToken),
        }
    }
}

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Bearer(<redacted>)" } else { "Bearer(none)" })
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// Opens a channel to `url`: `https://` trusts `ca_pem` (the controller's CA,
/// `tls/ca.pem` in its data directory) or, without it, the system's roots.
///
/// # Errors
/// A bad URL, a CA given for `http://`, or the controller not reachable;
/// each message says what to change.
pub async fn channel(url: &str, ca_pem: Option<&[u8]>) -> Result<Channel, NetError> {
    let mut endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| NetError::BadUrl { url: url.to_owned(), why: e.to_string() })?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    if url.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        tls = match ca_pem {
            Some(pem) => tls.ca_certificate(Certificate::from_pem(pem)),
            None => tls.with_enabled_roots(),
        };
        endpoint = endpoint.tls_config(tls).map_err(|e| NetError::Tls { url: url.to_owned(), why: e.to_string() })?;
    } else if ca_pem.is_some() {
        return Err(NetError::CaForHttp(url.to_owned()));
    }
    endpoint.connect().await.map_err(|e| {
        let mut why = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            why = format!("{why}: {s}");
            source = s.source();
        }
        let hint = if why.contains("certificate") || why.contains("Certificate") {
            " (the controller's certificate is not trusted: give its CA, tls/ca.pem in its data directory)"
        } else if url.starts_with("https://") && why.contains("corrupt message") {
            " (is the controller's TLS off? then use http://)"
        } else {
            ""
        };
        NetError::Unreachable { url: url.to_owned(), why, hint }
    })
}

/// A `FleetService` client for `url` carrying `token`.
///
/// # Errors
/// As [`channel`] and [`Bearer::new`].
pub async fn fleet_client(url: &str, ca_pem: Option<&[u8]>, token: Option<&str>) -> Result<FleetClient, NetError> {
    let bearer = Bearer::new(token)?;
    let ch = channel(url, ca_pem).await?;
    Ok(fleet_proto::v1::fleet_service_client::FleetServiceClient::with_interceptor(ch, bearer))
}
