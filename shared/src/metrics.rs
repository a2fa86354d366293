//! The `--metrics-addr` endpoint: Prometheus (OpenMetrics) text at `/metrics`,
//! liveness at `/healthz`, readiness at `/ready`, served by `axum`. The console
//! (`backfill serve`) mounts the same routes beside its pages.

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use tokio::net::TcpListener;
use tracing::warn;

/// Whether the process can do its work now (broker connected, warehouse answering).
pub type ReadyCheck = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
#[error("cannot serve on {addr}: {source}. Pick a free address (e.g. 127.0.0.1:9464)")]
pub struct BindError {
    addr: SocketAddr,
    source: std::io::Error,
}

/// `/metrics`, `/healthz` and `/ready`, to serve alone or beside other routes.
pub fn router(registry: Arc<Registry>, ready: ReadyCheck) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let registry = Arc::clone(&registry);
                async move { metrics(&registry) }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/ready",
            get(move || {
                let ready = Arc::clone(&ready);
                async move {
                    if ready().await {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "not ready: the broker or the warehouse is unreachable\n",
                        )
                    }
                }
            }),
        )
}

fn metrics(registry: &Registry) -> Response {
    let mut text = String::new();
    match encode(&mut text, registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// Binds `addr`, the error naming the address and the fix.
pub async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), BindError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| BindError { addr, source })?;
    Ok((listener, bound))
}

/// Serves `app` on `listener` until the process ends, logging (not spinning
/// on) a failed accept.
pub fn spawn(listener: TcpListener, app: Router) {
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            warn!(error = %e, "the HTTP endpoint stopped");
        }
    });
}

/// Binds `addr` and serves the metrics and probes until the process ends.
/// Returns the bound address (useful with port 0).
pub async fn serve(
    addr: SocketAddr,
    registry: Arc<Registry>,
    ready: ReadyCheck,
) -> Result<SocketAddr, BindError> {
    let (listener, bound) = bind(addr).await?;
    let app = router(registry, ready)
        .fallback(|| async { (StatusCode::NOT_FOUND, "try /metrics, /healthz or /ready\n") });
    spawn(listener, app);
    Ok(bound)
}
