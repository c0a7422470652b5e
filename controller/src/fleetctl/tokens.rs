//! `fleetctl tokens` (one-time bootstrap tokens that enroll nodes) and
//! `fleetctl api-tokens` (tokens for the API, with a role).

use std::time::Duration;

use clap::{Args, Subcommand};
use fleet_net::client::FleetClient;
use fleet_proto::v1::{
    CreateApiTokenRequest, CreateBootstrapTokenRequest, ListBootstrapTokensRequest, RevokeApiTokenRequest,
    RevokeBootstrapTokenRequest, SetTokenQuotaRequest, TokenQuota,
};

use super::args::{Output, parse_label};
use super::error::CtlError;
use super::output::{pretty, token_table, when};

#[derive(Subcommand)]
pub enum TokensCommand {
    /// Make a token; it is printed once (only its hash is kept).
    Create {
        /// Lifetime, e.g. 1h, 2d [default: the controller's security.bootstrap_ttl].
        #[arg(long)]
        ttl: Option<humantime::Duration>,
        /// Labels the enrolled node gets: k=v, repeatable or comma-separated (--labels site=barn,rack=3).
        #[arg(long = "label", alias = "labels", value_parser = parse_label, value_delimiter = ',')]
        labels: Vec<(String, String)>,
    },
    /// Every token with its state.
    List,
    /// Revoke an unused token by id.
    Revoke { token_id: String },
}

/// A token's quotas (docs/security.md, "Usage and quotas"); 0 is unlimited.
#[derive(Args)]
pub struct QuotaArgs {
    /// Jobs per UTC day.
    #[arg(long)]
    jobs_per_day: Option<u64>,
    /// Inference seconds (nodes and cloud tier together) per UTC day.
    #[arg(long)]
    inference_s_per_day: Option<u64>,
    /// Telemetry queries per minute.
    #[arg(long)]
    queries_per_minute: Option<u64>,
}

impl QuotaArgs {
    fn message(&self) -> TokenQuota {
        TokenQuota {
            jobs_per_day: self.jobs_per_day,
            inference_s_per_day: self.inference_s_per_day,
            queries_per_minute: self.queries_per_minute,
        }
    }
}

/// How a token's quotas read: "2 jobs per day, unlimited inference seconds per day, ...".
fn quota_text(q: Option<&TokenQuota>) -> String {
    let q = q.cloned().unwrap_or_default();
    let one = |v: Option<u64>, what: &str| match v.unwrap_or(0) {
        0 => format!("unlimited {what}"),
        n => format!("{n} {what}"),
    };
    [
        one(q.jobs_per_day, "jobs per day"),
        one(q.inference_s_per_day, "inference seconds per day"),
        one(q.queries_per_minute, "queries per minute"),
    ]
    .join(", ")
}

#[derive(Subcommand)]
pub enum ApiTokensCommand {
    /// Make a token with a role (and quotas); it is printed once.
    Create {
        name: String,
        /// viewer (reads), operator (desired state, jobs, bootstrap tokens), admin.
        #[arg(long, default_value = "viewer")]
        role: String,
        #[command(flatten)]
        quota: QuotaArgs,
    },
    /// Set a token's quotas: the ones given change, 0 makes one unlimited.
    Quota {
        name: String,
        #[command(flatten)]
        quota: QuotaArgs,
    },
    /// Revoke a token by name.
    Revoke { name: String },
}

/// Runs one `tokens` command.
///
/// # Errors
/// The controller's error, or JSON that cannot be written.
pub async fn run(client: &mut FleetClient, command: TokensCommand, out: Output) -> Result<(), CtlError> {
    match command {
        TokensCommand::Create { ttl, labels } => {
            let ttl_s = ttl.map_or(0, |d| u32::try_from(Duration::from(d).as_secs().max(1)).unwrap_or(u32::MAX));
            let req = CreateBootstrapTokenRequest { ttl_s, labels: labels.into_iter().collect() };
            let t = client.create_bootstrap_token(req).await?.into_inner();
            if out == Output::Json {
                let v =
                    serde_json::json!({"token_id": t.token_id, "token": t.token, "expires_unix_ms": t.expires_unix_ms});
                println!("{}", pretty(&v)?);
            } else {
                println!("{}", t.token);
                eprintln!(
                    "token {} expires {}; shown once. On the node: fleet-agent enroll --controller URL --token <token>",
                    t.token_id,
                    when(t.expires_unix_ms)
                );
            }
        }
        TokensCommand::List => {
            let tokens = client.list_bootstrap_tokens(ListBootstrapTokensRequest {}).await?.into_inner().tokens;
            print!("{}", token_table(&tokens, fleet_proto::now_unix_ms()));
        }
        TokensCommand::Revoke { token_id } => {
            client.revoke_bootstrap_token(RevokeBootstrapTokenRequest { token_id: token_id.clone() }).await?;
            println!("bootstrap token {token_id} revoked");
        }
    }
    Ok(())
}

/// Runs one `api-tokens` command.
///
/// # Errors
/// The controller's error.
pub async fn run_api(client: &mut FleetClient, command: ApiTokensCommand) -> Result<(), CtlError> {
    match command {
        ApiTokensCommand::Create { name, role, quota } => {
            let req = CreateApiTokenRequest { name, role, quota: Some(quota.message()) };
            let t = client.create_api_token(req).await?.into_inner();
            println!("{}", t.token);
            eprintln!(
                "API token {} ({}; {}); shown once. Keep it in a file with mode 0600 and use --token-file.",
                t.name,
                t.role,
                quota_text(t.quota.as_ref())
            );
        }
        ApiTokensCommand::Quota { name, quota } => {
            let req = SetTokenQuotaRequest { name, quota: Some(quota.message()) };
            let t = client.set_token_quota(req).await?.into_inner();
            println!("API token {}: {}", t.name, quota_text(t.quota.as_ref()));
        }
        ApiTokensCommand::Revoke { name } => {
            client.revoke_api_token(RevokeApiTokenRequest { name: name.clone() }).await?;
            println!("API token {name} revoked");
        }
    }
    Ok(())
}
