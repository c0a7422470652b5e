//! Where `fleetctl` finds its controller, CA and token: flags, environment,
//! `~/.config/fleet/fleetctl.toml`, then a controller running in the current
//! directory, in that order.

use std::path::{Path, PathBuf};

use fleet_net::client::FleetClient;

use super::error::CtlError;

/// `~/.config/fleet/fleetctl.toml` (or --config).
#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    server: Option<String>,
    token_file: Option<PathBuf>,
    ca: Option<PathBuf>,
}

/// Where the controller's files are when it runs from this directory
/// (`fleet-local`, then `fleet-controller` on its defaults), then where the
/// package's controller keeps them.
const LOCAL_DATA_DIRS: [&str; 3] = ["./fleet-data/controller", "./fleet-data", "/var/lib/fleet-controller"];

/// The server, CA file, token file and config file as given by flags (or their environment variables).
#[derive(Debug, Clone, Default)]
pub struct Given {
    pub server: Option<String>,
    pub token_file: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    pub config: Option<PathBuf>,
}

/// What a command connects with.
#[derive(Debug)]
pub struct Settings {
    pub server: String,
    pub ca_pem: Option<Vec<u8>>,
    pub token: Option<String>,
}

fn local_file(name: &str) -> Option<PathBuf> {
    LOCAL_DATA_DIRS.iter().map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

fn read_file_config(given: &Given) -> Result<FileConfig, CtlError> {
    let default_cfg = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .map(|d| d.join("fleet/fleetctl.toml"));
    let file = match (&given.config, default_cfg) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(p)) if p.is_file() => Some(p),
        _ => None,
    };
    let Some(p) = file else { return Ok(FileConfig::default()) };
    let text =
        std::fs::read_to_string(&p).map_err(|e| CtlError::Settings(format!("cannot read {}: {e}", p.display())))?;
    toml::from_str(&text).map_err(|e| CtlError::Settings(format!("{}: {}", p.display(), e.message())))
}

impl Settings {
    /// Server, CA and token from flags, environment (`FLEET_TOKEN`), the
    /// config file and the local controller's files, in that order.
    ///
    /// # Errors
    /// A file that cannot be read, or a token file others can read.
    pub fn resolve(given: &Given) -> Result<Self, CtlError> {
        let fc = read_file_config(given)?;
        let server = given.server.clone().or(fc.server).unwrap_or_else(|| "https://127.0.0.1:50051".into());
        let ca_path = given
            .ca
            .clone()
            .or(fc.ca)
            .or_else(|| server.starts_with("https://").then(|| local_file("tls/ca.pem")).flatten());
        let ca_pem = match ca_path {
            Some(p) => Some(
                std::fs::read(&p)
                    .map_err(|e| CtlError::Settings(format!("cannot read the CA {}: {e}", p.display())))?,
            ),
            None => None,
        };
        let token =
            match std::env::var("FLEET_TOKEN").ok().filter(|t| !t.trim().is_empty()) {
                Some(t) => Some(t),
                None => match given.token_file.clone().or(fc.token_file).or_else(|| local_file("admin.token")) {
                    Some(p) => {
                        check_private(&p)?;
                        Some(std::fs::read_to_string(&p).map_err(|e| {
                            CtlError::Settings(format!("cannot read the token file {}: {e}", p.display()))
                        })?)
                    }
                    None => None,
                },
            };
        Ok(Self { server, ca_pem, token })
    }

    /// A `FleetService` client with these settings.
    ///
    /// # Errors
    /// The controller not reachable (the message says what to check).
    pub async fn connect(&self) -> Result<FleetClient, CtlError> {
        fleet_net::client::fleet_client(&self.server, self.ca_pem.as_deref(), self.token.as_deref())
            .await
            .map_err(|e| CtlError::Connect(e.to_string()))
    }
}

/// Refuses a token file others can read.
fn check_private(p: &Path) -> Result<(), CtlError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(p) {
            let mode = m.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(CtlError::Settings(format!(
                    "the token file {} is readable by others (mode {mode:o}): run `chmod 600 {}`",
                    p.display(),
                    p.display()
                )));
            }
        }
    }
    Ok(())
}
