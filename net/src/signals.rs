//! The stop signals: SIGTERM (systemd, Kubernetes) and SIGINT (Ctrl-C).
//!
//! Handlers are registered when [`Signals::install`] runs, not when first
//! awaited: a waiter spawned on a one-thread runtime is first polled only
//! when the main task yields, and a SIGTERM before that would end the
//! process without its clean stop.

/// SIGTERM and SIGINT, registered when made (not when first awaited).
pub struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    pub fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Self { term: signal(SignalKind::terminate()).ok(), int: signal(SignalKind::interrupt()).ok() }
        }
        #[cfg(not(unix))]
        Self {}
    }

    pub async fn wait(self) {
        #[cfg(unix)]
        {
            let (mut term, mut int) = (self.term, self.int);
            if term.is_none() && int.is_none() {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
            tokio::select! {
                Some(()) = async { term.as_mut()?.recv().await } => {}
                Some(()) = async { int.as_mut()?.recv().await } => {}
                else => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
