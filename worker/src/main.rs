//! `backfill-worker [--concurrency N] [--metrics-addr HOST:PORT]`: applies batches
//! until SIGTERM or Ctrl-C, then drains in-flight batches, flushes its traces and exits.

use backfill_shared::config::Config;
use backfill_shared::telemetry::{self, LogFormat};
use backfill_worker::{Worker, WorkerOptions};
use clap::Parser;
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "backfill-worker",
    version,
    about = "Applies Backfill batches from RabbitMQ, exactly once"
)]
struct Args {
    /// Batches applied at once (also the AMQP prefetch).
    #[arg(long, default_value_t = 2)]
    concurrency: u16,
    /// Lease lifetime in seconds; heartbeats renew it at a third of this.
    #[arg(long, default_value_t = 30)]
    lease_ttl: u64,
    /// Seconds to wait for in-flight batches on shutdown.
    #[arg(long, default_value_t = 120)]
    drain_timeout: u64,
    /// Log format: text or json.
    #[arg(long, default_value = "text")]
    log_format: LogFormat,
    /// Serve Prometheus metrics (/metrics), liveness (/healthz) and readiness
    /// (/ready) on this address, e.g. 0.0.0.0:9464.
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let telemetry = telemetry::init(
        args.log_format,
        &telemetry::quiet_default("info"),
        "backfill-worker",
    );
    let code = run(args).await;
    telemetry.shutdown().await;
    code
}

async fn run(args: Args) -> ExitCode {
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(2);
        }
    };
    let options = WorkerOptions {
        concurrency: args.concurrency,
        lease_ttl: Duration::from_secs(args.lease_ttl.max(1)),
        drain_timeout: Duration::from_secs(args.drain_timeout),
        ..WorkerOptions::default()
    };
    let worker = match Worker::connect(config, options).await {
        Ok(w) => w,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(3);
        }
    };
    if let Some(addr) = args.metrics_addr {
        let registry = std::sync::Arc::new(worker.stats().registry());
        match backfill_shared::metrics::serve(addr, registry, worker.ready_check()).await {
            Ok(bound) => tracing::info!(%bound, "serving /metrics, /healthz and /ready"),
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::from(2);
            }
        }
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(signals(shutdown.clone()));
    match worker.run(shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::from(3)
        }
    }
}

async fn signals(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("stop requested");
    shutdown.cancel();
}
