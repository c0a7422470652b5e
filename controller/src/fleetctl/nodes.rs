//! `fleetctl nodes`: the fleet's nodes, revoking them and rotating their keys.

use clap::Subcommand;
use fleet_net::client::FleetClient;
use fleet_proto::v1::{GetNodeRequest, ListNodesRequest, RevokeNodeRequest, RotateNodeKeyRequest, WatchNodesRequest};

use super::args::Output;
use super::error::CtlError;
use super::output::{node_json, node_table, pretty, watch_line};

#[derive(Subcommand)]
pub enum NodesCommand {
    /// Every node with its state and latest vitals.
    List,
    /// One node in full.
    Get { node: String },
    /// Print every status change as it happens (Ctrl-C to stop).
    Watch,
    /// Revoke a node: its broker access and tunnel end, its jobs go elsewhere (admin).
    Revoke { node: String },
    /// Rotate a node's WireGuard key; the old key works until the node confirms the new one (admin).
    RotateKey { node: String },
}

/// Runs one `nodes` command.
///
/// # Errors
/// The controller's error, or JSON that cannot be written.
pub async fn run(client: &mut FleetClient, command: NodesCommand, out: Output) -> Result<(), CtlError> {
    match command {
        NodesCommand::List => {
            let nodes = client.list_nodes(ListNodesRequest::default()).await?.into_inner().nodes;
            if out == Output::Json {
                println!("{}", pretty(&nodes.iter().map(node_json).collect())?);
            } else {
                print!("{}", node_table(&nodes, fleet_proto::now_unix_ms()));
            }
        }
        NodesCommand::Get { node } => {
            let n = client.get_node(GetNodeRequest { node_id: node }).await?.into_inner();
            println!("{}", pretty(&node_json(&n))?);
        }
        NodesCommand::Watch => {
            let mut stream = client.watch_nodes(WatchNodesRequest {}).await?.into_inner();
            while let Some(n) = stream.message().await? {
                if out == Output::Json {
                    println!("{}", serde_json::to_string(&node_json(&n))?);
                } else {
                    println!("{}", watch_line(&n, fleet_proto::now_unix_ms()));
                }
            }
        }
        NodesCommand::Revoke { node } => {
            client.revoke_node(RevokeNodeRequest { node_id: node.clone() }).await?;
            println!("node {node} revoked: it must enroll again with a new token to come back");
        }
        NodesCommand::RotateKey { node } => {
            let r = client.rotate_node_key(RotateNodeKeyRequest { node_id: node.clone() }).await?.into_inner();
            println!(
                "key rotation {} of {node} started: the node makes a new key; its old one works until it confirms",
                r.generation
            );
        }
    }
    Ok(())
}
