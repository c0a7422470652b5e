//! A controller that requires enrollment, with enrolled agents as processes,
//! and what tests ask of it through `fleetctl`: a node's status and
//! counters, the desired state it applied.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cluster::{
    AgentBin, Broker, ControllerProc, ControllerSetup, agent_config, enroll_with, output, start_agent_with,
};
use crate::procs::Proc;
use crate::wait_for;

/// How long a step may take.
pub const T: Duration = Duration::from_secs(30);

/// The controller and its enrolled agents (killed on drop).
pub struct EnrolledFleet {
    pub dir: tempfile::TempDir,
    pub ctl: ControllerProc,
    /// Each node's config file and its process, if running.
    pub agents: Vec<(String, PathBuf, Option<Proc>)>,
    /// The agent binary the nodes run.
    pub agent_bin: AgentBin,
}

impl EnrolledFleet {
    /// A controller on `broker` and the nodes `ids`, enrolled and running.
    ///
    /// # Errors
    /// When the controller or an agent does not start, or enrollment fails.
    pub async fn start(broker: Broker, ids: &[&str]) -> anyhow::Result<Self> {
        Self::start_with(broker, ids, AgentBin::Native).await
    }

    /// [`EnrolledFleet::start`] with the nodes running `agent_bin`.
    ///
    /// # Errors
    /// When the controller or an agent does not start, or enrollment fails.
    pub async fn start_with(broker: Broker, ids: &[&str], agent_bin: AgentBin) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let setup = ControllerSetup {
            database_url: None,
            broker: broker.clone(),
            lab: false,
            data: dir.path().join("controller"),
            extra: String::new(),
            timescaledb: false,
        };
        let ctl = ControllerProc::start(dir.path(), &setup).await?;
        let url = match &broker {
            Broker::Embedded(port) => format!("mqtt://127.0.0.1:{port}"),
            Broker::External(url) => url.clone(),
        };
        let mut fleet = Self { dir, ctl, agents: Vec::new(), agent_bin };
        for &node in ids {
            let conf = agent_config(node, fleet.dir.path(), &fleet.dir.path().join(node), &url, "1s", 1 << 20);
            enroll_with(&fleet.ctl, &conf, &fleet.agent_bin)?;
            fleet.agents.push((node.to_owned(), conf, None));
            fleet.start_node(node)?;
        }
        Ok(fleet)
    }

    /// A node's data directory.
    #[must_use]
    pub fn data_dir(&self, node: &str) -> PathBuf {
        self.dir.path().join(node)
    }

    /// Starts a node's agent (again).
    ///
    /// # Errors
    /// An unknown node, or an agent that does not start.
    pub fn start_node(&mut self, node: &str) -> anyhow::Result<()> {
        let dir: &Path = self.dir.path();
        let (_, conf, proc) =
            self.agents.iter_mut().find(|(n, ..)| n == node).ok_or_else(|| anyhow::anyhow!("no node {node}"))?;
        *proc = Some(start_agent_with(&self.agent_bin, node, dir, conf, None, "info")?);
        Ok(())
    }

    /// Stops a node's agent (SIGTERM, as systemd does).
    ///
    /// # Errors
    /// An unknown node, or an agent that does not stop.
    pub fn stop_node(&mut self, node: &str) -> anyhow::Result<()> {
        let (.., proc) =
            self.agents.iter_mut().find(|(n, ..)| n == node).ok_or_else(|| anyhow::anyhow!("no node {node}"))?;
        if let Some(mut p) = proc.take() {
            p.term(T)?;
        }
        Ok(())
    }

    /// `fleetctl args` with the admin token; its standard output.
    ///
    /// # Errors
    /// When it fails (its output says why).
    pub fn fleetctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = self.ctl.fleetctl()?;
        cmd.args(args);
        output(cmd, &format!("fleetctl {}", args.join(" ")))
    }

    /// A node as `fleetctl nodes list -o json` shows it.
    #[must_use]
    pub fn node(&self, id: &str) -> Option<serde_json::Value> {
        let nodes: Vec<serde_json::Value> =
            serde_json::from_str(&self.fleetctl(&["nodes", "list", "-o", "json"]).ok()?).ok()?;
        nodes.into_iter().find(|n| n["node_id"] == id)
    }

    /// The controller's messages the node refused so far (its last status).
    #[must_use]
    pub fn refused(&self, id: &str) -> u64 {
        self.node(id).and_then(|n| n["counters"]["controller_messages_refused"].as_u64()).unwrap_or(0)
    }

    /// The desired-state version the node reports it applied.
    #[must_use]
    pub fn applied(&self, id: &str) -> u64 {
        self.fleetctl(&["desired", "get", id])
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["reported"]["applied_version"].as_u64())
            .unwrap_or(0)
    }

    /// Sets a node's telemetry interval and waits until it applied `version`.
    ///
    /// # Errors
    /// When the node does not apply it within [`T`].
    pub async fn set_desired(&self, node: &str, interval: &str, version: u64) -> anyhow::Result<()> {
        self.fleetctl(&["desired", "set", node, "--telemetry-interval", interval])?;
        wait_for(T, &format!("{node} applied version {version}"), || async move {
            (self.applied(node) >= version).then_some(())
        })
        .await
    }

    /// Waits until every node `ids` has had samples stored.
    ///
    /// # Errors
    /// When one has none within [`T`].
    pub async fn wait_heard(&self, ids: &[&str]) -> anyhow::Result<()> {
        wait_for(T, &format!("{ids:?} heard"), || async move {
            ids.iter()
                .all(|n| self.node(n).is_some_and(|v| v["samples_stored"].as_u64().unwrap_or(0) > 0))
                .then_some(())
        })
        .await
    }
}
