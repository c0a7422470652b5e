//! LazyFS, the FUSE file system that keeps every write in its own cache until
//! it is fsynced and drops the unsynced ones on command: a power cut for one
//! directory. `scripts/build-lazyfs` builds it (scripts/test runs it and sets
//! `FLEET_LAZYFS` to the binary). A cut here is what a Pi losing power does to
//! its SD card: the process dies without a word (SIGKILL, by the caller), every
//! write not yet fsynced is gone, and the file system is mounted afresh (no page
//! cache of the old mount survives).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

use crate::need::{self, Need};

/// The LazyFS program: `FLEET_LAZYFS`, else where `scripts/build-lazyfs` caches it.
fn program() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FLEET_LAZYFS") {
        return Some(PathBuf::from(p));
    }
    let home = std::env::var_os("HOME")?;
    let p = PathBuf::from(home).join(".cache/spark-fleet/lazyfs-a47a5ba/lazyfs");
    p.is_file().then_some(p)
}

/// A mounted LazyFS over a backing directory; unmounted on drop.
pub struct LazyFs {
    program: PathBuf,
    /// Where the system under test reads and writes.
    pub mnt: PathBuf,
    backing: PathBuf,
    config: PathBuf,
    fifo: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// Power cuts so far.
    pub cuts: u32,
}

impl LazyFs {
    /// What is missing for `test` to mount LazyFS here, said and counted as a skip
    /// (`Ok(None)`) or an error where scripts/test asked for it (`FLEET_REQUIRE_ROOT`,
    /// `FLEET_REQUIRE_LAZYFS`).
    ///
    /// # Errors
    /// When a required capability is missing.
    pub fn find(test: &str) -> anyhow::Result<Option<PathBuf>> {
        let root = Command::new("id").arg("-u").output().ok().is_some_and(|o| o.stdout.starts_with(b"0"));
        if !root {
            need::missing(Need::Root, test, "not root: mounting LazyFS (FUSE, allow_other) needs root")?;
            return Ok(None);
        }
        if !Path::new("/dev/fuse").exists() {
            need::missing(Need::Root, test, "/dev/fuse is missing: this machine cannot mount FUSE file systems")?;
            return Ok(None);
        }
        if Command::new("fusermount3").arg("-V").output().is_err() {
            need::missing(Need::Root, test, "fusermount3 is missing (apt-get install fuse3)")?;
            return Ok(None);
        }
        match program() {
            Some(p) if p.is_file() => Ok(Some(p)),
            _ => {
                need::missing(Need::LazyFs, test, "LazyFS is not built (scripts/build-lazyfs; or set FLEET_LAZYFS)")?;
                Ok(None)
            }
        }
    }

    /// Mounts LazyFS at `dir/mnt` over `dir/backing`.
    ///
    /// # Errors
    /// When it does not mount within 20 s.
    pub async fn mount(program: &Path, dir: &Path) -> anyhow::Result<Self> {
        let (mnt, backing) = (dir.join("mnt"), dir.join("backing"));
        std::fs::create_dir_all(&mnt)?;
        std::fs::create_dir_all(&backing)?;
        let fifo = dir.join("faults.fifo");
        let config = dir.join("lazyfs.toml");
        // A cache big enough for a test's writes between two fsyncs, and no
        // eviction: nothing reaches the backing directory without an fsync.
        std::fs::write(
            &config,
            format!(
                "[faults]\nfifo_path=\"{}\"\n[cache]\napply_eviction=false\n[cache.simple]\n\
                 custom_size=\"256mb\"\nblocks_per_page=1\n[filesystem]\nlog_all_operations=false\nlogfile=\"\"\n",
                fifo.display()
            ),
        )?;
        let mut fs = Self {
            program: program.to_owned(),
            mnt,
            backing,
            config,
            fifo,
            log: dir.join("lazyfs.log"),
            child: None,
            cuts: 0,
        };
        fs.up().await?;
        Ok(fs)
    }

    fn mounted(&self) -> bool {
        std::fs::read_to_string("/proc/self/mountinfo")
            .is_ok_and(|m| m.lines().any(|l| l.split(' ').nth(4) == Some(self.mnt.to_str().unwrap_or("?"))))
    }

    async fn up(&mut self) -> anyhow::Result<()> {
        let out = std::fs::File::options().create(true).append(true).open(&self.log)?;
        let err = out.try_clone()?;
        let child = Command::new(&self.program)
            .arg(&self.mnt)
            .arg("--config-path")
            .arg(&self.config)
            .args(["-o", "allow_other", "-o", "modules=subdir", "-o"])
            .arg(format!("subdir={}", self.backing.display()))
            .arg("-f")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {}", self.program.display()))?;
        self.child = Some(child);
        let start = Instant::now();
        while !self.mounted() || !self.ready() {
            if let Some(c) = self.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                bail!("LazyFS exited with {status} before mounting; its log:\n{}", self.log_text());
            }
            ensure!(start.elapsed() < Duration::from_secs(20), "LazyFS did not mount in 20 s:\n{}", self.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Its fault worker listens (commands written before that are lost).
    fn ready(&self) -> bool {
        self.log_text().matches("waiting for fault commands").count() > self.cuts as usize
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The power cut: every write not yet fsynced is dropped
    /// (`lazyfs::clear-cache`), then the file system is unmounted and mounted
    /// again. Whoever used it must already be dead (SIGKILL): an open file keeps
    /// the mount busy.
    ///
    /// # Errors
    /// When LazyFS does not confirm, or cannot be unmounted and mounted again.
    pub async fn power_cut(&mut self) -> anyhow::Result<()> {
        let cleared_before = self.log_text().matches("cache is cleared").count();
        std::fs::write(&self.fifo, "lazyfs::clear-cache\n").context("writing to LazyFS's fault FIFO")?;
        let start = Instant::now();
        while self.log_text().matches("cache is cleared").count() == cleared_before {
            ensure!(start.elapsed() < Duration::from_secs(20), "LazyFS did not clear its cache:\n{}", self.log_text());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.unmount().await?;
        self.cuts += 1;
        self.up().await
    }

    async fn unmount(&mut self) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            let out = Command::new("fusermount3").arg("-u").arg(&self.mnt).output()?;
            if out.status.success() {
                break;
            }
            ensure!(
                start.elapsed() < Duration::from_secs(20),
                "cannot unmount {}: {} (a process still uses it?)",
                self.mnt.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if let Some(mut c) = self.child.take() {
            let start = Instant::now();
            while c.try_wait()?.is_none() {
                if start.elapsed() > Duration::from_secs(10) {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3").arg("-u").arg("-z").arg(&self.mnt).output();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
