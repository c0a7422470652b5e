//! `fleetctl audit`: every change made through the API, newest first.

use std::time::Duration;

use clap::Args;
use fleet_net::client::FleetClient;
use fleet_proto::v1::ListAuditLogRequest;

use super::args::Output;
use super::error::CtlError;
use super::output::{audit_json, audit_table, pretty};

#[derive(Args)]
pub struct AuditArgs {
    /// How far back, e.g. 1h, 7d (default: everything).
    #[arg(long)]
    since: Option<humantime::Duration>,
    /// Records at most.
    #[arg(long, default_value_t = 100)]
    limit: u32,
}

/// Prints the audit log.
///
/// # Errors
/// The controller's error, or JSON that cannot be written.
pub async fn run(client: &mut FleetClient, a: AuditArgs, out: Output) -> Result<(), CtlError> {
    let since_unix_ms = a.since.map_or(0, |d| {
        fleet_proto::now_unix_ms() - i64::try_from(Duration::from(d).as_millis()).unwrap_or(i64::MAX / 2)
    });
    let req = ListAuditLogRequest { since_unix_ms: since_unix_ms.max(0), limit: a.limit };
    let records = client.list_audit_log(req).await?.into_inner().records;
    if out == Output::Json {
        println!("{}", pretty(&audit_json(&records))?);
    } else {
        print!("{}", audit_table(&records));
    }
    Ok(())
}
