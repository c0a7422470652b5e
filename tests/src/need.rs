//! What a test needs from the machine, and what happens when it is missing:
//! where `scripts/test` asked for it (`FLEET_REQUIRE_ROOT`, `FLEET_REQUIRE_MODEL`,
//! `FLEET_REQUIRE_TANSU`, `FLEET_REQUIRE_LAZYFS`, `FLEET_REQUIRE_TIMESCALEDB`,
//! `FLEET_REQUIRE_PROMETHEUS`, `FLEET_REQUIRE_PI` set to 1) the test fails saying what to install or do;
//! elsewhere it says on stderr that it skipped, and writes one line to
//! `FLEET_SKIP_LOG` (if set) so `scripts/test` can count the skips at the end.
//! A test never passes silently without having run.

use std::io::Write;

/// A capability a test may need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Root and what only root can use: network namespaces, WireGuard
    /// interfaces, FUSE mounts (and the tools scripts/test installs for them).
    Root,
    /// The all-MiniLM-L6-v2 model (scripts/fetch-model).
    Model,
    /// The Tansu Kafka broker.
    Tansu,
    /// LazyFS, built by scripts/build-lazyfs.
    LazyFs,
    /// TimescaleDB preloaded in the test PostgreSQL (scripts/build-timescaledb).
    TimescaleDb,
    /// Debian's `prometheus` (the server; promtool comes with it).
    Prometheus,
    /// The Pi's aarch64 binaries (scripts/build-pi, in `FLEET_PI_BIN_DIR`) and `qemu-aarch64-static`.
    Pi,
}

impl Need {
    /// The switch `scripts/test` sets when it provides this.
    #[must_use]
    pub fn switch(self) -> &'static str {
        match self {
            Need::Root => "FLEET_REQUIRE_ROOT",
            Need::Model => "FLEET_REQUIRE_MODEL",
            Need::Tansu => "FLEET_REQUIRE_TANSU",
            Need::LazyFs => "FLEET_REQUIRE_LAZYFS",
            Need::TimescaleDb => "FLEET_REQUIRE_TIMESCALEDB",
            Need::Prometheus => "FLEET_REQUIRE_PROMETHEUS",
            Need::Pi => "FLEET_REQUIRE_PI",
        }
    }

    fn required(self) -> bool {
        std::env::var(self.switch()).is_ok_and(|v| v == "1")
    }
}

/// `test` cannot run here because of `why`: an error when `need` is
/// required, else `Ok` after the skip is said and counted.
///
/// # Errors
/// When `scripts/test` asked for `need` (its switch is 1).
pub fn missing(need: Need, test: &str, why: &str) -> anyhow::Result<()> {
    if need.required() {
        anyhow::bail!("{test} cannot run: {why} ({} = 1: scripts/test provides it; fix the machine)", need.switch());
    }
    eprintln!("SKIPPED {test}: {why} (set {}=1 to make this a failure)", need.switch());
    if let Some(path) = std::env::var_os("FLEET_SKIP_LOG")
        && let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path)
    {
        let _ = writeln!(f, "{test}: {why}");
    }
    Ok(())
}
