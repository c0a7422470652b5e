//! The bench's nodes as production runs them: each enrolled with a one-time
//! token through the controller's `Enroll` (its keys made here, as
//! `fleet-agent enroll` makes them), logging in to the broker with the
//! credentials it was given, and every batch sealed in the signed envelope.
//! Signing is done before the clock starts: on a fleet each node signs on its
//! own CPU; what the bench measures is the controller, which verifies every one.

use std::path::Path;

use ed25519_dalek::SigningKey;
use fleet_proto::v1::{CreateBootstrapTokenRequest, MessageKind, TelemetryBatch};
use prost::Message;

/// What a node logs in to the broker with.
#[derive(Clone)]
pub struct Login {
    pub node_id: String,
    pub username: String,
    pub password: String,
}

/// One enrolled bench node.
pub struct BenchNode {
    pub login: Login,
    key: SigningKey,
}

/// How the bench reaches the controller's API: URL, CA, admin token.
pub struct Api {
    pub url: String,
    pub ca_pem: Vec<u8>,
    pub admin_token: String,
}

impl Api {
    /// The API of a controller whose data directory is `data` (its CA and first admin token).
    ///
    /// # Errors
    /// When the files are not there.
    pub fn of(url: &str, data: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            url: url.to_owned(),
            ca_pem: std::fs::read(data.join("tls/ca.pem"))?,
            admin_token: std::fs::read_to_string(data.join("admin.token"))?.trim().to_owned(),
        })
    }
}

/// Enrolls `nodes` nodes `node-0`... (their keys in `dir`).
///
/// # Errors
/// When the controller refuses.
pub async fn enroll(api: &Api, nodes: usize, dir: &Path) -> anyhow::Result<Vec<BenchNode>> {
    let mut admin = fleet_net::client::fleet_client(&api.url, Some(&api.ca_pem), Some(&api.admin_token)).await?;
    let mut out = Vec::with_capacity(nodes);
    for i in 0..nodes {
        let node_id = format!("node-{i}");
        let token = admin.create_bootstrap_token(CreateBootstrapTokenRequest::default()).await?.into_inner().token;
        let opts = fleet_agent::enroll::EnrollOptions {
            controller_url: api.url.clone(),
            ca_pem: Some(api.ca_pem.clone()),
            token,
            node_id: node_id.clone(),
            dir: dir.join(&node_id),
            force: false,
        };
        let e = fleet_agent::enroll::enroll(&opts).await?;
        let key = fleet_agent::identity::Identity::load(&opts.dir)?.signing_key().clone();
        out.push(BenchNode { login: Login { node_id, username: e.broker_username, password: e.broker_password }, key });
    }
    Ok(out)
}

impl BenchNode {
    /// This node's batches, each sealed as the agent sends it (boot 1, one
    /// message seq per send).
    #[must_use]
    pub fn seal(&self, batches: &[TelemetryBatch]) -> Vec<(String, Vec<u8>)> {
        batches
            .iter()
            .zip(1u64..)
            .map(|(b, seq)| {
                let id = &self.login.node_id;
                let signed =
                    fleet_proto::signing::sign(&self.key, id, MessageKind::Telemetry, 1, seq, b.encode_to_vec());
                (id.clone(), signed.encode_to_vec())
            })
            .collect()
    }
}
