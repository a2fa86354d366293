//! Several workers in one process, for the tests and benchmarks that drive runs
//! without starting `backfill-worker` processes.

use crate::{Worker, WorkerError, WorkerOptions};
use backfill_shared::config::Config;
use tokio_util::sync::CancellationToken;

/// Workers running in this process until [`InProcessWorkers::stop`].
#[derive(Debug)]
pub struct InProcessWorkers {
    stop: CancellationToken,
    tasks: tokio::task::JoinSet<()>,
}

impl InProcessWorkers {
    /// Connects `count` workers (ids `<options.worker_id>-<i>`) and starts them.
    ///
    /// # Errors
    /// A service a worker needs is unreachable.
    pub async fn start(
        config: &Config,
        count: u16,
        options: &WorkerOptions,
    ) -> Result<Self, WorkerError> {
        let stop = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..count {
            let options = WorkerOptions {
                worker_id: format!("{}-{i}", options.worker_id),
                ..options.clone()
            };
            let worker = Worker::connect(config.clone(), options).await?;
            let stop = stop.child_token();
            tasks.spawn(async move {
                if let Err(e) = worker.run(stop).await {
                    tracing::error!("{e}");
                }
            });
        }
        Ok(Self { stop, tasks })
    }

    /// Stops them and waits for their in-flight batches.
    pub async fn stop(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}
