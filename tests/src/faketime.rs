//! A controller process's wall clock under libfaketime (Debian's `faketime`
//! package), moved while the process runs: the offset lives in a file the
//! library reads again at every call (`FAKETIME_TIMESTAMP_FILE` with
//! `FAKETIME_NO_CACHE`), and the monotonic clock is left alone (tokio's
//! timers run on it). Tests move time with it instead of waiting for it.

use std::path::{Path, PathBuf};

/// libfaketime's thread-safe build, when installed.
#[must_use]
pub fn library() -> Option<PathBuf> {
    ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib"]
        .iter()
        .map(|d| Path::new(d).join("faketime/libfaketimeMT.so.1"))
        .find(|p| p.exists())
}

/// Now on the real wall clock, ms since the Unix epoch.
fn real_now_ms() -> i64 {
    fleet_proto::now_unix_ms()
}

/// A wall clock a process started with [`FakeClock::env`] reads.
pub struct FakeClock {
    lib: String,
    file: String,
}

impl FakeClock {
    /// A clock in `dir` that reads `at_ms` now and runs on from there.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn new(lib: &Path, dir: &Path, at_ms: i64) -> anyhow::Result<Self> {
        let c = Self {
            lib: lib.to_string_lossy().into_owned(),
            file: dir.join("faketime.rc").to_string_lossy().into_owned(),
        };
        c.set(at_ms)?;
        Ok(c)
    }

    /// Moves the clock: it reads `at_ms` now (to the second) and runs on.
    /// The file is replaced whole, so the library never reads half of it.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn set(&self, at_ms: i64) -> anyhow::Result<()> {
        let offset_s = (at_ms - real_now_ms()).div_euclid(1000);
        let tmp = format!("{}.tmp", self.file);
        std::fs::write(&tmp, format!("{offset_s:+}\n"))?;
        std::fs::rename(&tmp, &self.file)?;
        Ok(())
    }

    /// The environment that puts a process on this clock.
    #[must_use]
    pub fn env(&self) -> [(&str, &str); 4] {
        [
            ("LD_PRELOAD", self.lib.as_str()),
            ("FAKETIME_TIMESTAMP_FILE", self.file.as_str()),
            ("FAKETIME_NO_CACHE", "1"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ]
    }
}
