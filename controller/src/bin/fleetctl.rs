//! `fleetctl`: the operator's command line for the controller's gRPC API
//! (the commands are `fleet_controller::fleetctl`).

use std::process::ExitCode;

use clap::Parser;
use fleet_controller::fleetctl::{Cli, run};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fleetctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleetctl: {e}");
            ExitCode::from(1)
        }
    }
}
