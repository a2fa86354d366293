//! The demo's fleet: `backfill-worker` processes, as an operator would start them.
//! The coordinator talks to them only through the broker and the control plane.

use crate::error::{CliError, Result};
use backfill_shared::config::Config;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

const PROGRAM: &str = "backfill-worker";

/// Worker processes; killed if dropped without [`WorkerProcesses::stop`].
#[derive(Debug)]
pub(super) struct WorkerProcesses {
    children: Vec<Child>,
}

impl WorkerProcesses {
    /// Starts `count` workers pointed at `config`'s services and namespace. Their
    /// log (warnings and errors, unless `RUST_LOG` says otherwise) goes to stderr.
    pub(super) fn start(program: &Path, config: &Config, count: u16) -> Result<Self> {
        let mut children = Vec::with_capacity(count.into());
        for _ in 0..count {
            let mut command = Command::new(program);
            command
                .args(["--concurrency", "2"])
                .env("BACKFILL_DATABASE_URL", &config.database_url)
                .env("BACKFILL_AMQP_URL", &config.amqp_url)
                .env("BACKFILL_REDIS_URL", &config.redis_url)
                .env("BACKFILL_NAMESPACE", &config.namespace)
                .env(
                    "RUST_LOG",
                    std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
                )
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .kill_on_drop(true);
            match &config.message_key {
                Some(key) => command.env("BACKFILL_MESSAGE_KEY", key),
                None => command.env_remove("BACKFILL_MESSAGE_KEY"),
            };
            let child = command.spawn().map_err(|e| {
                CliError::Internal(format!("cannot start {}: {e}", program.display()))
            })?;
            children.push(child);
        }
        Ok(Self { children })
    }

    /// Resolves when any worker has exited, with which and how: a worker that
    /// cannot reach a service says why on stderr and exits at once.
    pub(super) async fn first_exit(&mut self) -> String {
        loop {
            for (i, child) in self.children.iter_mut().enumerate() {
                if let Ok(Some(status)) = child.try_wait() {
                    return format!("demo worker {i} exited ({status}): its error is above");
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// SIGTERM to each (they finish their in-flight batches), then waits; a worker
    /// still running after a minute is killed.
    pub(super) async fn stop(mut self) {
        for child in &self.children {
            if let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        for child in &mut self.children {
            if !matches!(
                tokio::time::timeout(Duration::from_secs(60), child.wait()).await,
                Ok(Ok(_))
            ) {
                let _ = child.kill().await;
            }
        }
    }
}

/// `backfill-worker` beside this executable (as `cargo build` and packages place
/// it), else on `PATH`.
pub(super) fn program() -> Result<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name(PROGRAM))
        .filter(|p| p.is_file());
    let on_path = || {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(PROGRAM))
                .find(|p| p.is_file())
        })
    };
    beside.or_else(on_path).ok_or_else(|| {
        CliError::BadInput(format!(
            "the demo starts {PROGRAM} processes, and none is beside {} or on PATH: \
             build it with `cargo build --bins` (or install it), then run the demo again",
            std::env::current_exe()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| "this executable".into())
        ))
    })
}
