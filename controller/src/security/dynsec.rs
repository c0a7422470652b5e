//! Mosquitto's dynamic-security plugin, driven by the controller
//! (docs/security.md, "Broker access"): each enrolled node is a client with
//! its own password and a role that allows publishing and subscribing only
//! under `fleet/v1/nodes/{its id}/`; revoking deletes the client, which
//! Mosquitto disconnects at once. Commands go to the plugin's control topic
//! through the link, over the controller's own MQTT session (it logs in as
//! the dynsec admin).

use serde_json::json;

use crate::link::Link;

/// The role the controller gives itself: every fleet topic.
const CONTROLLER_ROLE: &str = "fleet-controller";

fn node_role(node_id: &str) -> String {
    format!("fleet-node-{node_id}")
}

/// Sends dynamic-security commands.
#[derive(Clone)]
pub struct Dynsec {
    /// Sends the commands to the plugin's control topic.
    link: Link,
    /// The controller's own broker username (the dynsec admin).
    username: String,
}

impl Dynsec {
    #[must_use]
    pub fn new(link: Link, username: String) -> Self {
        Self { link, username }
    }

    fn send(&self, commands: &serde_json::Value) -> bool {
        // Queued: sent at once, or after the reconnect if the broker is away.
        self.link.dynsec(json!({ "commands": commands }).to_string()).is_ok()
    }

    /// The controller's own rights on fleet topics (sent at every connect,
    /// before its subscriptions; "already exists" answers are expected).
    pub fn setup(&self) -> bool {
        let acl = |t: &str| json!({ "acltype": t, "topic": "fleet/#", "priority": 0, "allow": true });
        let share = json!({ "acltype": "subscribePattern", "topic": "$share/#", "priority": 0, "allow": true });
        self.send(&json!([
            { "command": "createRole", "rolename": CONTROLLER_ROLE,
              "acls": [acl("publishClientSend"), acl("publishClientReceive"), acl("subscribePattern"), share] },
            { "command": "addClientRole", "username": self.username, "rolename": CONTROLLER_ROLE, "priority": 10 },
        ]))
    }

    /// A client for an enrolled node, allowed only its own topics.
    pub fn add_node(&self, node_id: &str, password: &str) -> bool {
        let topic = format!("fleet/v1/nodes/{node_id}/#");
        let acl = |t: &str| json!({ "acltype": t, "topic": topic, "priority": 0, "allow": true });
        self.send(&json!([
            { "command": "createRole", "rolename": node_role(node_id),
              "acls": [acl("publishClientSend"), acl("publishClientReceive"), acl("subscribePattern")] },
            { "command": "createClient", "username": node_id, "password": password,
              "roles": [{ "rolename": node_role(node_id), "priority": 0 }] },
        ]))
    }

    /// Deletes a node's client (Mosquitto disconnects it) and its role.
    pub fn remove_node(&self, node_id: &str) -> bool {
        self.send(&json!([
            { "command": "deleteClient", "username": node_id },
            { "command": "deleteRole", "rolename": node_role(node_id) },
        ]))
    }
}

/// Logs what the plugin refused (expected "already exists"/"not found" answers aside).
pub fn log_response(payload: &[u8]) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) else { return };
    for r in v["responses"].as_array().into_iter().flatten() {
        if let Some(err) = r["error"].as_str() {
            let expected = err.contains("already") || err.contains("not found") || err.contains("Not found");
            if !expected {
                tracing::error!(command = %r["command"], error = err, "Mosquitto dynamic security refused a command.");
            }
        }
    }
}
