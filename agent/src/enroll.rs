//! Enrollment (docs/security.md): the node makes its keys on the device,
//! calls the controller's `Enroll` with a one-time bootstrap token and the
//! public halves, and keeps what it receives in `identity.toml` (mode 0600:
//! it holds the broker password) next to its keys. Every later start reads it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::identity::{Identity, IdentityError};

/// What the controller gave this node, in `data_dir`.
pub const ENROLLMENT_FILE: &str = "identity.toml";

/// Why enrollment failed; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("this node is enrolled already as {0} ({1}); enroll again with --force (and a new token)")]
    Already(String, PathBuf),
    #[error(transparent)]
    Keys(#[from] IdentityError),
    #[error(transparent)]
    Connect(#[from] fleet_net::NetError),
    #[error("the controller refused the enrollment: {0}")]
    Refused(String),
    #[error("the controller's answer is incomplete ({0}); is it a Spark Fleet controller of the same version?")]
    Answer(&'static str),
    #[error("{path}: {why}")]
    File { path: PathBuf, why: String },
}

/// The node's enrollment: its id, overlay address, the controller's
/// WireGuard peer and the broker credentials.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enrollment {
    pub node_id: String,
    pub overlay_address: String,
    pub overlay_prefix_len: u32,
    pub controller_wg_public_key: String,
    /// Empty: the controller has no overlay configured.
    pub controller_wg_endpoint: String,
    pub controller_allowed_ips: Vec<String>,
    pub persistent_keepalive_s: u32,
    pub broker_url: String,
    pub broker_username: String,
    pub broker_password: String,
    pub labels: BTreeMap<String, String>,
    pub enrolled_unix_ms: i64,
    /// The controller's public signing key (base64) and its generation:
    /// every message from the controller is checked with it. Empty in an
    /// enrollment made before the controller signed (enroll again).
    #[serde(default)]
    pub controller_signing_key: String,
    #[serde(default)]
    pub controller_key_generation: u64,
    /// During a rotation of the controller's key: the newest key (base64)
    /// and generation, taken from the controller's `ControllerKeys`.
    #[serde(default)]
    pub controller_next_signing_key: String,
    #[serde(default)]
    pub controller_next_key_generation: u64,
    /// The controller's API as the node enrolled through it, and its CA
    /// (PEM; empty: the system's roots): model downloads go there.
    #[serde(default)]
    pub controller_api_url: String,
    #[serde(default)]
    pub controller_ca_pem: String,
}

impl std::fmt::Debug for Enrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrollment")
            .field("node_id", &self.node_id)
            .field("overlay_address", &self.overlay_address)
            .field("broker_url", &self.broker_url)
            .field("broker_password", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// What `fleet-agent enroll` was given.
pub struct EnrollOptions {
    /// `https://controller:50051` (or `http://` for a lab without TLS).
    pub controller_url: String,
    /// The controller's CA (its `tls/ca.pem`).
    pub ca_pem: Option<Vec<u8>>,
    /// The bootstrap token.
    pub token: String,
    /// The id to ask for (the configured one or the hostname).
    pub node_id: String,
    /// Where keys and `identity.toml` go (the agent's `data_dir`).
    pub dir: PathBuf,
    /// Replace existing keys and enrollment.
    pub force: bool,
}

/// Enrolls this node: keys (made now, or kept from an enrollment that did
/// not finish), the `Enroll` call, then `identity.toml`.
///
/// # Errors
/// Already enrolled, key files, the controller unreachable or refusing.
pub async fn enroll(o: &EnrollOptions) -> Result<Enrollment, EnrollError> {
    let file = o.dir.join(ENROLLMENT_FILE);
    if !o.force
        && let Some(e) = load(&o.dir)?
    {
        return Err(EnrollError::Already(e.node_id, file));
    }
    // Keys from an attempt that never reached the controller are kept: the
    // controller has not seen them, so they are as good as new.
    let identity = match Identity::load(&o.dir) {
        Ok(i) if !o.force => i,
        _ => Identity::create(&o.dir, true)?,
    };
    let mem_total_bytes = sysinfo::System::new().map_or(0, |mut s| {
        s.refresh_memory();
        s.total_memory()
    });
    let req = fleet_proto::v1::EnrollRequest {
        token: o.token.trim().to_owned(),
        wg_public_key: identity.wg_public_base64(),
        signing_public_key: identity.signing_key().verifying_key().to_bytes().to_vec(),
        requested_node_id: o.node_id.clone(),
        hostname: sysinfo::System::host_name().unwrap_or_default(),
        arch: std::env::consts::ARCH.into(),
        cpu_count: std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX)),
        mem_total_bytes,
    };
    let channel = fleet_net::client::channel(&o.controller_url, o.ca_pem.as_deref()).await?;
    let mut client = fleet_proto::v1::enrollment_service_client::EnrollmentServiceClient::new(channel);
    let r = client
        .enroll(req)
        .await
        .map_err(|s| EnrollError::Refused(format!("{:?}: {}", s.code(), s.message())))?
        .into_inner();
    let peer = r.controller.ok_or(EnrollError::Answer("no controller peer"))?;
    if fleet_proto::signing::verifying_key(&r.controller_signing_key).is_err() || r.controller_key_generation == 0 {
        return Err(EnrollError::Answer("no controller signing key"));
    }
    let broker = r.broker.ok_or(EnrollError::Answer("no broker credentials"))?;
    let e = Enrollment {
        node_id: r.node_id,
        overlay_address: r.overlay_address,
        overlay_prefix_len: r.overlay_prefix_len,
        controller_wg_public_key: peer.public_key,
        controller_wg_endpoint: peer.endpoint,
        controller_allowed_ips: peer.allowed_ips,
        persistent_keepalive_s: peer.persistent_keepalive_s,
        broker_url: broker.url,
        broker_username: broker.username,
        broker_password: broker.password,
        labels: r.labels.into_iter().collect(),
        enrolled_unix_ms: fleet_proto::now_unix_ms(),
        controller_signing_key: {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(&r.controller_signing_key)
        },
        controller_key_generation: r.controller_key_generation,
        controller_next_signing_key: String::new(),
        controller_next_key_generation: 0,
        controller_api_url: o.controller_url.clone(),
        controller_ca_pem: o.ca_pem.as_deref().map(|p| String::from_utf8_lossy(p).into_owned()).unwrap_or_default(),
    };
    save(&file, &e)?;
    Ok(e)
}

pub(crate) fn save(path: &Path, e: &Enrollment) -> Result<(), EnrollError> {
    let text = toml::to_string(e).map_err(|x| EnrollError::File { path: path.into(), why: x.to_string() })?;
    let text = format!("# Written by `fleet-agent enroll`; holds the broker password (mode 0600).\n{text}");
    Ok(crate::identity::write_secret(path, &text)?)
}

/// Keeps the controller's keys the node holds (the one that signs, and the
/// newest during a rotation) in the enrollment in `dir`.
///
/// # Errors
/// No enrollment, or one that cannot be read or written.
pub fn keep_controller_keys(
    dir: &Path,
    current: (u64, [u8; 32]),
    next: Option<(u64, [u8; 32])>,
) -> Result<(), EnrollError> {
    use base64::Engine;
    let b64 = |k: &[u8; 32]| base64::engine::general_purpose::STANDARD.encode(k);
    let path = dir.join(ENROLLMENT_FILE);
    let mut e = load(dir)?.ok_or_else(|| EnrollError::File { path: path.clone(), why: "missing".into() })?;
    e.controller_key_generation = current.0;
    e.controller_signing_key = b64(&current.1);
    e.controller_next_key_generation = next.map_or(0, |(g, _)| g);
    e.controller_next_signing_key = next.map_or_else(String::new, |(_, k)| b64(&k));
    save(&path, &e)
}

/// The enrollment in `dir`, if the node is enrolled.
///
/// # Errors
/// A file others can read, or one that is damaged.
pub fn load(dir: &Path) -> Result<Option<Enrollment>, EnrollError> {
    let path = dir.join(ENROLLMENT_FILE);
    let text = match crate::identity::read_secret(&path) {
        Ok(t) => t,
        Err(IdentityError::Missing(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    toml::from_str(&text)
        .map(Some)
        .map_err(|e| EnrollError::File { path, why: format!("damaged ({}); enroll again with --force", e.message()) })
}
