//! `fleetctl jobs`: submit a job and see where it ran and why, or list recent ones.

use std::time::Duration;

use clap::{Subcommand, ValueEnum};
use fleet_net::client::FleetClient;
use fleet_proto::v1::{
    GetJobRequest, JobConstraints, JobStatus, JobView, ListJobsRequest, Placement, SubmitJobRequest,
};

use super::args::{Output, parse_label};
use super::error::CtlError;
use super::output::{job_json, job_table, job_text, pretty};

#[derive(Subcommand)]
pub enum JobsCommand {
    /// Route a job, wait for its result, print it with where it ran and how long each step took.
    Submit {
        /// Model: minilm (sentence embedding) or severity (built-in classifier).
        #[arg(long)]
        model: String,
        /// Input text.
        #[arg(long)]
        text: String,
        /// Time the job gets, e.g. 10s.
        #[arg(long, default_value = "10s")]
        timeout: humantime::Duration,
        /// Re-run an edge answer under this confidence on the cloud tier (0: never).
        #[arg(long, default_value_t = 0.0)]
        min_confidence: f32,
        /// The node must carry label k=v (repeatable; keeps the job at the edge).
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Where it may run.
        #[arg(long, value_enum, default_value_t = Where::Any)]
        placement: Where,
        /// Only this node.
        #[arg(long)]
        node: Option<String>,
        /// Only nodes running this version of the model (keeps the job at the edge).
        #[arg(long)]
        model_version: Option<String>,
        /// Return at once with the job id instead of waiting.
        #[arg(long)]
        detach: bool,
    },
    /// One job with every attempt.
    Get { job: String },
    /// Recent jobs, newest first.
    List {
        /// Only jobs that ran on this node.
        #[arg(long)]
        node: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
}

/// Where a job may run.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Where {
    Any,
    Edge,
    Cloud,
}

fn show(j: &JobView, out: Output) -> Result<(), CtlError> {
    if out == Output::Json {
        println!("{}", pretty(&job_json(j))?);
    } else {
        print!("{}", job_text(j));
    }
    Ok(())
}

/// Runs one `jobs` command.
///
/// # Errors
/// The controller's error, JSON that cannot be written, or a submitted job
/// that did not succeed (after it is printed).
pub async fn run(client: &mut FleetClient, command: JobsCommand, out: Output) -> Result<(), CtlError> {
    match command {
        JobsCommand::Submit {
            model,
            text,
            timeout,
            min_confidence,
            labels,
            placement,
            node,
            model_version,
            detach,
        } => {
            let placement = match placement {
                Where::Any => Placement::Any,
                Where::Edge => Placement::EdgeOnly,
                Where::Cloud => Placement::CloudOnly,
            };
            let req = SubmitJobRequest {
                model,
                text,
                timeout_ms: u32::try_from(Duration::from(timeout).as_millis()).unwrap_or(u32::MAX),
                min_confidence,
                constraints: Some(JobConstraints {
                    required_labels: labels.into_iter().collect(),
                    placement: placement as i32,
                    node_id: node.unwrap_or_default(),
                    model_version: model_version.unwrap_or_default(),
                }),
                detach,
            };
            let j = client.submit_job(req).await?.into_inner();
            show(&j, out)?;
            if j.status != JobStatus::Succeeded as i32 && !detach {
                return Err(CtlError::JobFailed);
            }
        }
        JobsCommand::Get { job } => show(&client.get_job(GetJobRequest { job_id: job }).await?.into_inner(), out)?,
        JobsCommand::List { node, limit } => {
            let req = ListJobsRequest { node_id: node.unwrap_or_default(), status: 0, limit };
            let r = client.list_jobs(req).await?.into_inner();
            if out == Output::Json {
                println!("{}", pretty(&r.jobs.iter().map(job_json).collect())?);
            } else {
                print!("{}", job_table(&r.jobs));
            }
        }
    }
    Ok(())
}
