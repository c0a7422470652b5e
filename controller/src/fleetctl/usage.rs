//! `fleetctl usage`: what each API token used, per UTC day and per hour, and
//! where it stands against its quotas (admin).

use clap::Args;
use fleet_net::client::FleetClient;
use fleet_proto::v1::GetUsageRequest;

use super::args::Output;
use super::error::CtlError;
use super::output::{pretty, usage_json, usage_table};

#[derive(Args)]
pub struct UsageArgs {
    /// Only this API token (default: every token).
    #[arg(long)]
    token: Option<String>,
    /// Hourly rows of this many hours, the current one included (at most 744).
    #[arg(long, default_value_t = 24)]
    hours: u32,
    /// Daily rows of this many UTC days, today included (at most 400).
    #[arg(long, default_value_t = 7)]
    days: u32,
}

/// Prints the usage of every token, or of one.
///
/// # Errors
/// The controller's error (NOT_FOUND for an unknown token), or JSON that cannot be written.
pub async fn run(client: &mut FleetClient, a: UsageArgs, out: Output) -> Result<(), CtlError> {
    let req = GetUsageRequest { token: a.token.unwrap_or_default(), hours: a.hours.max(1), days: a.days.max(1) };
    let usage = client.get_usage(req).await?.into_inner();
    if out == Output::Json {
        println!("{}", pretty(&usage_json(&usage))?);
    } else {
        print!("{}", usage_table(&usage));
    }
    Ok(())
}
