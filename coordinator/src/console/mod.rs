//! `backfill serve`: the console, a web page over the control plane where the
//! operator, the reviewer and the stakeholders watch backfills. Server-rendered
//! HTML (`maud`), no JavaScript build step: a run's page refreshes its live part
//! by fetching it again every few seconds, and works without script too.
//!
//! - `/`: runs, newest first, filterable by state, target and owner; tables under
//!   maintenance stand out.
//! - `/runs/{run}`: the brief, progress, ETA, the batch grid, failures, breaches,
//!   the validation checklist and the run log; `/runs/{run}/live` is its live part.
//! - `/runs/{run}/note`: the change note stakeholders read (`backfill report`'s HTML).
//! - `/api/runs`, `/api/runs/{run}` (what `status --json` prints), `/api/maintenance`.
//! - `/healthz`, `/ready`, `/metrics`, as the other binaries serve them.
//!
//! Every value from a brief or the ledger is HTML-escaped by the templates.

use crate::{CliError, Result, list, report, status};
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use backfill_shared::control::{ControlError, batches, log, maintenance, runs, validations};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

mod pages;

/// Most cells a run's batch grid shows; more batches share a cell.
pub const GRID_CELLS: u32 = 2_000;

/// How often the console's gauges are read from the control plane.
const GAUGE_PERIOD: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
struct App {
    pool: PgPool,
}

/// The console's routes over `pool`, with the metrics and probes.
pub fn router(pool: PgPool) -> Router {
    let gauges = Gauges::default();
    let mut registry = Registry::default();
    gauges.register(&mut registry);
    tokio::spawn(gauges.keep_reading(pool.clone()));
    let ready_pool = pool.clone();
    let ready: backfill_shared::metrics::ReadyCheck = Arc::new(move || {
        let pool = ready_pool.clone();
        Box::pin(async move { sqlx::query("SELECT 1").execute(&pool).await.is_ok() })
    });
    Router::new()
        .route("/", get(runs_page))
        .route("/runs/{run}", get(run_page))
        .route("/runs/{run}/live", get(live_part))
        .route("/runs/{run}/note", get(change_note))
        .route("/api/runs", get(api_runs))
        .route("/api/runs/{run}", get(api_run))
        .route("/api/maintenance", get(api_maintenance))
        .with_state(App { pool })
        .merge(backfill_shared::metrics::router(Arc::new(registry), ready))
        .fallback(|| async { Failure::not_found("no such page: the runs are at /".into()) })
}

/// Binds `addr` and serves the console until the process ends; returns the
/// bound address (useful with port 0).
pub async fn serve(pool: PgPool, addr: SocketAddr) -> Result<SocketAddr> {
    let (listener, bound) = backfill_shared::metrics::bind(addr)
        .await
        .map_err(|e| CliError::BadInput(e.to_string()))?;
    backfill_shared::metrics::spawn(listener, router(pool));
    Ok(bound)
}

/// What `backfill serve` warns of before it serves on `addr`, if anything.
#[must_use]
pub fn exposure_warning(addr: SocketAddr) -> Option<String> {
    (!addr.ip().is_loopback()).then(|| {
        format!(
            "the console on {addr} is reachable from other machines, and anyone who reaches it \
             can read every run's brief and ledger; bind 127.0.0.1 or put it behind an \
             authenticating proxy"
        )
    })
}

/// The console's gauges: runs by state, and the batches of active runs by state.
#[derive(Debug, Clone, Default)]
struct Gauges {
    runs: Family<StateLabel, Gauge>,
    batches: Family<StateLabel, Gauge>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct StateLabel {
    state: String,
}

impl Gauges {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "backfill_console_runs",
            "Runs recorded in the control plane, by state",
            self.runs.clone(),
        );
        registry.register(
            "backfill_console_active_batches",
            "Batches of runs that are not finished, by state",
            self.batches.clone(),
        );
    }

    async fn keep_reading(self, pool: PgPool) {
        loop {
            if let Err(e) = self.read(&pool).await {
                tracing::warn!(error = %e, "cannot read the console's gauges");
            }
            tokio::time::sleep(GAUGE_PERIOD).await;
        }
    }

    async fn read(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let runs: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, count(*) FROM backfill.runs GROUP BY state")
                .fetch_all(pool)
                .await?;
        let active: Vec<&str> = runs::RunState::ALL
            .iter()
            .filter(|s| s.is_active())
            .map(|s| s.as_str())
            .collect();
        let batches: Vec<(String, i64)> = sqlx::query_as(
            "SELECT b.state, count(*) FROM backfill.batches b JOIN backfill.runs r USING (run_id)
              WHERE r.state = ANY($1) GROUP BY b.state",
        )
        .bind(&active)
        .fetch_all(pool)
        .await?;
        for (family, counts, states) in [
            (
                &self.runs,
                runs,
                runs::RunState::ALL
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>(),
            ),
            (
                &self.batches,
                batches,
                batches::BatchState::ALL
                    .iter()
                    .map(|s| s.as_str())
                    .collect(),
            ),
        ] {
            for state in states {
                let n = counts.iter().find(|(s, _)| s == state).map_or(0, |c| c.1);
                family
                    .get_or_create(&StateLabel {
                        state: state.to_owned(),
                    })
                    .set(n);
            }
        }
        Ok(())
    }
}

/// A page or call that could not be answered, with the status that says why.
#[derive(Debug)]
struct Failure {
    status: StatusCode,
    message: String,
}

impl Failure {
    fn not_found(message: String) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message,
        }
    }

    /// The same failure as JSON, for the API.
    fn json(self) -> Response {
        (
            self.status,
            axum::Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

impl From<CliError> for Failure {
    fn from(e: CliError) -> Self {
        let status = match &e {
            CliError::BadInput(_) => StatusCode::BAD_REQUEST,
            CliError::Service(_) | CliError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self {
            status,
            message: e.to_string(),
        }
    }
}

impl From<ControlError> for Failure {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::UnknownRun(_) => Self::not_found(e.to_string()),
            other => CliError::from(other).into(),
        }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (
            self.status,
            Html(pages::failure(self.status, &self.message).into_string()),
        )
            .into_response()
    }
}

/// The run a path names: a whole id or a unique prefix of one; 404 otherwise.
async fn resolve(pool: &PgPool, text: &str) -> Result<Uuid, Failure> {
    let run_id = list::resolve(pool, text)
        .await
        .map_err(|e| Failure::not_found(e.to_string()))?;
    runs::state(pool, run_id).await?;
    Ok(run_id)
}

/// `/` and `/api/runs`'s filter, as query parameters.
#[derive(Debug, Default, Deserialize, Serialize)]
struct Filter {
    state: Option<String>,
    target: Option<String>,
    owner: Option<String>,
    since: Option<String>,
    limit: Option<i64>,
}

impl Filter {
    /// The filter's fields, blank ones dropped (an empty form field means "any").
    fn parse(&self) -> Result<runs::ListFilter> {
        fn given(v: &Option<String>) -> Option<&str> {
            v.as_deref().map(str::trim).filter(|v| !v.is_empty())
        }
        list::filter(
            given(&self.state),
            given(&self.target),
            given(&self.owner),
            given(&self.since),
            self.limit.unwrap_or(100).min(1_000),
        )
    }
}

async fn runs_page(
    State(app): State<App>,
    Query(filter): Query<Filter>,
) -> Result<Html<String>, Failure> {
    let rows = list::list(&app.pool, &filter.parse()?).await?;
    let under = maintenance::current(&app.pool).await?;
    Ok(Html(pages::runs(&rows, &under, &filter).into_string()))
}

async fn api_runs(
    State(app): State<App>,
    Query(filter): Query<Filter>,
) -> Result<axum::Json<Vec<list::Row>>, Response> {
    let parsed = filter.parse().map_err(|e| Failure::from(e).json())?;
    let rows = list::list(&app.pool, &parsed)
        .await
        .map_err(|e| Failure::from(e).json())?;
    Ok(axum::Json(rows))
}

/// What a run's page shows.
struct RunView {
    run: runs::Run,
    status: status::Status,
    grid: Vec<batches::Cell>,
    log: Vec<log::Entry>,
    checks: Vec<(String, bool, String, chrono::DateTime<chrono::Utc>)>,
    under_maintenance: bool,
}

async fn run_view(pool: &PgPool, run_id: Uuid) -> Result<RunView, Failure> {
    let run = runs::load(pool, run_id).await?;
    let status = status::status(pool, run_id).await?;
    let grid = batches::grid(pool, run_id, GRID_CELLS).await?;
    let log = log::entries(pool, run_id).await?;
    let checks = validations::latest_results(pool, run_id).await?;
    let under_maintenance = maintenance::current(pool)
        .await?
        .iter()
        .any(|m| m.run_id == run_id);
    Ok(RunView {
        run,
        status,
        grid,
        log,
        checks,
        under_maintenance,
    })
}

async fn run_page(
    State(app): State<App>,
    Path(run): Path<String>,
) -> Result<Html<String>, Failure> {
    let run_id = resolve(&app.pool, &run).await?;
    let view = run_view(&app.pool, run_id).await?;
    Ok(Html(pages::run(&view).into_string()))
}

async fn live_part(State(app): State<App>, Path(run): Path<String>) -> Result<Response, Failure> {
    let run_id = resolve(&app.pool, &run).await?;
    let status = status::status(&app.pool, run_id).await?;
    let grid = batches::grid(&app.pool, run_id, GRID_CELLS).await?;
    Ok((
        [(header::CACHE_CONTROL, "no-store")],
        Html(pages::live(&status, &grid).into_string()),
    )
        .into_response())
}

async fn change_note(
    State(app): State<App>,
    Path(run): Path<String>,
) -> Result<Html<String>, Failure> {
    let run_id = resolve(&app.pool, &run).await?;
    Ok(Html(report::gather(&app.pool, run_id).await?.html()))
}

async fn api_run(
    State(app): State<App>,
    Path(run): Path<String>,
) -> Result<axum::Json<status::Status>, Response> {
    let run_id = resolve(&app.pool, &run).await.map_err(Failure::json)?;
    let status = status::status(&app.pool, run_id)
        .await
        .map_err(|e| Failure::from(e).json())?;
    Ok(axum::Json(status))
}

/// A table under maintenance, for BI tools' banners.
#[derive(Debug, Serialize)]
struct Maintenance {
    #[serde(flatten)]
    marker: maintenance::Current,
    /// When the run is expected to have applied every batch, at its pace so far.
    expected_end: Option<chrono::DateTime<chrono::Utc>>,
}

async fn api_maintenance(State(app): State<App>) -> Result<axum::Json<Vec<Maintenance>>, Response> {
    let fail = |e: ControlError| Failure::from(e).json();
    let mut out = Vec::new();
    for marker in maintenance::current(&app.pool).await.map_err(fail)? {
        let eta = status::status(&app.pool, marker.run_id)
            .await
            .map_err(|e| Failure::from(e).json())?
            .eta_seconds;
        out.push(Maintenance {
            expected_end: eta.map(|s| chrono::Utc::now() + chrono::Duration::seconds(s)),
            marker,
        });
    }
    Ok(axum::Json(out))
}
