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
//! - `/login`, `/logout`; `POST /runs/{run}/actions/{action}`: pause, resume
//!   (accepting a halted run's breaches with a reason), cancel, retry, approve,
//!   promote, cutover, rollback, for people who may take them (`actions`).
//!
//! Every value from a brief or the ledger is HTML-escaped by the templates.

use crate::{CliError, Result, list, report, status};
use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, middleware};
use backfill_shared::config::Config;
use backfill_shared::control::people::{self, Person};
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

mod actions;
mod auth;
mod pages;

use actions::Action;
use auth::Csrf;
pub use auth::{Auth, Sessions};

/// Most cells a run's batch grid shows; more batches share a cell.
pub const GRID_CELLS: u32 = 2_000;

/// Most run-log entries a run's page shows (newest first).
const LOG_SHOWN: i64 = 300;

/// How often the console's gauges are read from the control plane.
const GAUGE_PERIOD: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
struct App {
    pool: PgPool,
    config: Config,
    auth: Arc<Auth>,
    csrf: Arc<Csrf>,
}

/// The console's routes over `pool`, with the metrics and probes; `config`
/// reaches the broker and Redis for the actions that need them.
pub fn router(pool: PgPool, config: Config, auth: Auth) -> Router {
    let gauges = Gauges::default();
    let mut registry = Registry::default();
    gauges.register(&mut registry);
    tokio::spawn(gauges.keep_reading(pool.clone()));
    let ready_pool = pool.clone();
    let ready: backfill_shared::metrics::ReadyCheck = Arc::new(move || {
        let pool = ready_pool.clone();
        Box::pin(async move { sqlx::query("SELECT 1").execute(&pool).await.is_ok() })
    });
    let app = App {
        pool,
        config,
        auth: Arc::new(auth),
        csrf: Arc::new(Csrf::new()),
    };
    let guarded = Router::new()
        .route("/", get(runs_page))
        .route("/runs/{run}", get(run_page))
        .route("/runs/{run}/live", get(live_part))
        .route("/runs/{run}/note", get(change_note))
        .route("/runs/{run}/charts/{n}", get(metric_chart))
        .route("/runs/{run}/actions/{action}", post(act))
        .route("/api/runs", get(api_runs))
        .route("/api/runs/{run}", get(api_run))
        .route("/api/maintenance", get(api_maintenance))
        .route(
            "/api/{*rest}",
            get(async || {
                Failure::not_found(
                    "no such API: /api/runs, /api/runs/RUN and /api/maintenance are".into(),
                )
                .json()
            }),
        )
        .route_layer(middleware::from_fn_with_state(app.clone(), gate));
    let auth = Arc::clone(&app.auth);
    Router::new()
        .merge(guarded)
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route(
            "/static/live.js",
            get(async || static_file("text/javascript; charset=utf-8", pages::LIVE_SCRIPT)),
        )
        .route(
            "/static/console.css",
            get(async || static_file(CSS, pages::STYLE_SHEET.as_str())),
        )
        .route(
            "/static/note.css",
            get(async || static_file(CSS, report::STYLE_SHEET)),
        )
        .with_state(app)
        .merge(backfill_shared::metrics::router(Arc::new(registry), ready))
        .fallback(|| async { Failure::not_found("no such page: the runs are at /".into()) })
        .layer(middleware::from_fn(move |request, next| {
            secured(Arc::clone(&auth), request, next)
        }))
        // Pages and their live parts are text that compresses tenfold.
        .layer(tower_http::compression::CompressionLayer::new())
}

/// What every response carries: a Content-Security-Policy that lets pages
/// load scripts, styles, images and everything else only from the console
/// itself (no inline script or style), and no framing, sniffing or cross-origin referrer. With `--require-login`,
/// `/metrics` too needs a login, unless `--public-metrics`.
async fn secured(
    auth: Arc<Auth>,
    request: axum::extract::Request,
    next: middleware::Next,
) -> Response {
    let closed_metrics = request.uri().path() == "/metrics"
        && auth.require_login
        && !auth.public_metrics
        && auth.login(request.headers()).is_none();
    let mut response = if closed_metrics {
        Failure {
            status: StatusCode::UNAUTHORIZED,
            message: "log in first: send Authorization: Bearer TOKEN, or start the console with --public-metrics for a scraper without one".into(),
        }
        .json()
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
    ] {
        headers.insert(name, axum::http::HeaderValue::from_static(value));
    }
    response
}

/// A script or style sheet of the console's own: served from the console so
/// the Content-Security-Policy allows no inline script or style.
fn static_file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

const CSS: &str = "text/css; charset=utf-8";

/// Binds `addr` and serves the console until the process ends; returns the
/// bound address (useful with port 0).
pub async fn serve(
    pool: PgPool,
    config: Config,
    addr: SocketAddr,
    auth: Auth,
) -> Result<SocketAddr> {
    let (listener, bound) = backfill_shared::metrics::bind(addr)
        .await
        .map_err(|e| CliError::BadInput(e.to_string()))?;
    backfill_shared::metrics::spawn(listener, router(pool, config, auth));
    Ok(bound)
}

/// What `backfill serve` warns of before it serves on `addr`, if anything: an
/// address other machines reach where reading needs no login.
#[must_use]
pub fn exposure_warning(addr: SocketAddr, auth: &Auth) -> Option<String> {
    if addr.ip().is_loopback() || auth.require_login {
        return None;
    }
    Some(if auth.is_set() {
        format!(
            "the console on {addr} is reachable from other machines and anyone who reaches it can read \
             every run's brief and ledger without logging in (a login is needed only to act); \
             add --require-login"
        )
    } else {
        format!(
            "the console on {addr} is reachable from other machines with no way to log in: anyone \
             who reaches it can read every run's brief and ledger, and nobody can act; set \
             --auth-header behind an authenticating proxy, or BACKFILL_CONSOLE_TOKENS, \
             and --require-login to ask for a login to read too"
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
            "SELECT t.state, sum(t.batches)::bigint FROM backfill.batch_totals t JOIN backfill.runs r USING (run_id)
              WHERE r.state = ANY($1) GROUP BY t.state",
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

    fn bad_request(message: String) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message,
        }
    }

    fn forbidden(message: String) -> Self {
        Self {
            status: StatusCode::FORBIDDEN,
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
            CliError::NotFound(_) => StatusCode::NOT_FOUND,
            CliError::NotAllowed(_) => StatusCode::FORBIDDEN,
            // Not now: the run's state (or a halt on what it found) refuses it.
            CliError::WrongState(_) | CliError::Halted(_) => StatusCode::CONFLICT,
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
    /// The filter's fields, blank ones dropped (an empty form field means
    /// "any"); a `limit` outside 1 to 1,000 is refused.
    fn parse(&self) -> Result<runs::ListFilter> {
        fn given(v: &Option<String>) -> Option<&str> {
            v.as_deref().map(str::trim).filter(|v| !v.is_empty())
        }
        let limit = self.limit.unwrap_or(100);
        if !(1..=1_000).contains(&limit) {
            return Err(CliError::BadInput(format!(
                "limit={limit}: ask for 1 to 1000 runs"
            )));
        }
        list::filter(
            given(&self.state),
            given(&self.target),
            given(&self.owner),
            given(&self.since),
            limit,
        )
    }
}

async fn runs_page(
    State(app): State<App>,
    headers: HeaderMap,
    Query(filter): Query<Filter>,
) -> Result<Html<String>, Failure> {
    let viewer = app.viewer(&headers).await?;
    let rows = list::list(&app.pool, &filter.parse()?).await?;
    let under = maintenance::current(&app.pool).await?;
    let yours = match &viewer.person {
        Some(person) => Some(list::awaiting_person(&app.pool, &person.name).await?),
        None => None,
    };
    Ok(Html(
        pages::runs(&viewer, &rows, yours.as_deref(), &under, &filter).into_string(),
    ))
}

async fn api_runs(
    State(app): State<App>,
    filter: Result<Query<Filter>, QueryRejection>,
) -> Result<axum::Json<Vec<list::Row>>, Response> {
    let Query(filter) = filter.map_err(|e| Failure::bad_request(e.body_text()).json())?;
    let parsed = filter.parse().map_err(|e| Failure::from(e).json())?;
    let rows = list::list(&app.pool, &parsed)
        .await
        .map_err(|e| Failure::from(e).json())?;
    Ok(axum::Json(rows))
}

/// The part of a run's page that changes while it runs: its state and what it
/// waits for, the actions, progress, the grid.
struct Live {
    run: runs::Run,
    status: status::Status,
    grid: Vec<batches::Cell>,
    /// The run as `list` shows it: what holds it and whose decision it waits for.
    row: list::Row,
    /// The latest validation's checks: name, passed, summary, when.
    checks: Vec<(String, bool, String, chrono::DateTime<chrono::Utc>)>,
}

async fn live_view(pool: &PgPool, run_id: Uuid) -> Result<Live, Failure> {
    Ok(Live {
        run: runs::load(pool, run_id).await?,
        status: status::status(pool, run_id).await?,
        grid: batches::grid(pool, run_id, GRID_CELLS).await?,
        row: list::row(pool, run_id).await?,
        checks: validations::latest_results(pool, run_id).await?,
    })
}

/// What a run's page shows.
struct RunView {
    live: Live,
    /// The latest notable entries of the run log, and how many are left out.
    log: (Vec<log::Entry>, i64),
    under_maintenance: bool,
    /// How the run was announced, or why not (`None`: neither is recorded).
    announced: Option<String>,
    /// How the stakeholders were told after it.
    told: Vec<String>,
    /// Its rollback copies that still exist.
    copies: Vec<String>,
}

async fn run_view(pool: &PgPool, run_id: Uuid) -> Result<RunView, Failure> {
    let live = live_view(pool, run_id).await?;
    let log = log::notable(pool, run_id, LOG_SHOWN).await?;
    let under_maintenance = maintenance::current(pool)
        .await?
        .iter()
        .any(|m| m.run_id == run_id);
    let announced = log::latest_of(pool, run_id, &["announced", "unannounced"])
        .await?
        .as_ref()
        .and_then(report::announcement);
    let told = log
        .0
        .iter()
        .rev()
        .filter_map(crate::lifecycle::done::told)
        .collect();
    let copies = report::temporary_objects(pool, &live.run).await?;
    Ok(RunView {
        live,
        announced,
        told,
        copies,
        log,
        under_maintenance,
    })
}

async fn run_page(
    State(app): State<App>,
    headers: HeaderMap,
    Path(run): Path<String>,
) -> Result<Html<String>, Failure> {
    let viewer = app.viewer(&headers).await?;
    let run_id = resolve(&app.pool, &run).await?;
    let view = run_view(&app.pool, run_id).await?;
    Ok(Html(pages::run(&viewer, &view).into_string()))
}

/// A run page's live part, fetched every few seconds: with an `ETag` of its
/// content, so a part that has not changed since the browser's copy is a
/// `304 Not Modified` with no body (the browser revalidates: `no-cache`).
async fn live_part(
    State(app): State<App>,
    headers: HeaderMap,
    Path(run): Path<String>,
) -> Result<Response, Failure> {
    let viewer = app.viewer(&headers).await?;
    let run_id = resolve(&app.pool, &run).await?;
    let part = pages::live(&viewer, &live_view(&app.pool, run_id).await?).into_string();
    // The SHA-256 that names a text (as a brief's), cut to 96 bits.
    let tag = format!("\"{}\"", &backfill_shared::brief::Brief::hash(&part)[..24]);
    let cache = [
        (header::CACHE_CONTROL, "private, no-cache".to_owned()),
        (header::ETAG, tag.clone()),
    ];
    let unchanged = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().trim_start_matches("W/") == tag);
    if unchanged {
        return Ok((StatusCode::NOT_MODIFIED, cache).into_response());
    }
    Ok((cache, Html(part)).into_response())
}

async fn change_note(
    State(app): State<App>,
    Path(run): Path<String>,
) -> Result<Html<String>, Failure> {
    let run_id = resolve(&app.pool, &run).await?;
    let note = report::gather(&app.pool, run_id).await?;
    Ok(Html(
        note.html_styled(report::Styles::Linked("/static/note.css")),
    ))
}

/// The `n`-th metric's before/after chart, as an SVG image (the run page shows
/// it; summing every applied batch's figures is left out of the page itself).
async fn metric_chart(
    State(app): State<App>,
    Path((run, n)): Path<(String, usize)>,
) -> Result<Response, Failure> {
    let run_id = resolve(&app.pool, &run).await?;
    let run = runs::load(&app.pool, run_id).await?;
    let charts = report::metric_charts(&app.pool, &run).await?;
    let (_, svg) = charts
        .into_iter()
        .nth(n)
        .ok_or_else(|| Failure::not_found(format!("run {run_id} has no metric {n}")))?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        svg,
    )
        .into_response())
}

async fn api_run(
    State(app): State<App>,
    run: Result<Path<String>, PathRejection>,
) -> Result<axum::Json<status::Status>, Response> {
    let Path(run) = run.map_err(|e| Failure::bad_request(e.body_text()).json())?;
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

/// Who is looking at a page: their login, the person it maps to, and the CSRF
/// token their forms carry.
#[derive(Debug, Default)]
struct Viewer {
    /// Whether the console has any way to log in.
    can_log_in: bool,
    login: Option<String>,
    person: Option<Person>,
    csrf: String,
}

impl App {
    async fn viewer(&self, headers: &HeaderMap) -> Result<Viewer, Failure> {
        let login = self.auth.login(headers);
        let person = match &login {
            Some(login) => people::by_login(&self.pool, login).await?,
            None => None,
        };
        Ok(Viewer {
            can_log_in: self.auth.is_set(),
            csrf: login
                .as_deref()
                .map(|l| self.csrf.token(l))
                .unwrap_or_default(),
            login,
            person,
        })
    }
}

/// With `--require-login`, pages and the API need a login: a page sends the
/// browser to `/login`, the API answers 401.
async fn gate(
    State(app): State<App>,
    request: axum::extract::Request,
    next: middleware::Next,
) -> Response {
    if !app.auth.require_login || app.auth.login(request.headers()).is_some() {
        return next.run(request).await;
    }
    if request.uri().path().starts_with("/api/") {
        return Failure {
            status: StatusCode::UNAUTHORIZED,
            message: "log in first: send Authorization: Bearer TOKEN (BACKFILL_CONSOLE_TOKENS), \
                      or come through the authenticating proxy"
                .into(),
        }
        .json();
    }
    Redirect::to("/login").into_response()
}

async fn login_page(State(app): State<App>, headers: HeaderMap) -> Result<Html<String>, Failure> {
    let viewer = app.viewer(&headers).await?;
    Ok(Html(
        pages::login(&viewer, !app.auth.tokens.is_empty(), None).into_string(),
    ))
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(State(app): State<App>, Form(form): Form<LoginForm>) -> Response {
    match app.auth.token_login(form.token.trim()) {
        Some(login) => (
            [(
                header::SET_COOKIE,
                app.auth.session_cookie(&app.auth.sessions.open(&login)),
            )],
            Redirect::to("/"),
        )
            .into_response(),
        None => (
            StatusCode::FORBIDDEN,
            Html(
                pages::login(
                    &Viewer::default(),
                    !app.auth.tokens.is_empty(),
                    Some("That token is nobody's: ask for yours to be in BACKFILL_CONSOLE_TOKENS."),
                )
                .into_string(),
            ),
        )
            .into_response(),
    }
}

/// Ends the session and clears its cookie; the form carries the login's CSRF
/// token, so no other site can log a person out.
async fn logout(
    State(app): State<App>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Response {
    if let Some(login) = app.auth.login(&headers)
        && !app.csrf.verify(&login, &form.csrf)
    {
        return Failure::forbidden("the form's CSRF token is not this login's".into())
            .into_response();
    }
    if let Some(id) = auth::session_id(&headers) {
        app.auth.sessions.close(id);
    }
    (
        [(
            header::SET_COOKIE,
            format!(
                "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
                auth::COOKIE
            ),
        )],
        Redirect::to("/"),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct ActionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: String,
    /// `yes` once the person has read what a cancel, a rollback or a cutover
    /// will do.
    #[serde(default)]
    confirm: String,
}

/// `POST /runs/{run}/actions/{action}`: refused with 403 (nothing changed) for
/// no login, a CSRF token not the login's, someone not in `backfill.people` or
/// not allowed the action; 409 with the reason when the run's state refuses it;
/// otherwise done, and back to the run's page.
async fn act(
    State(app): State<App>,
    Path((run, action)): Path<(String, String)>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Result<Response, Failure> {
    let Some(login) = app.auth.login(&headers) else {
        return Err(Failure::forbidden(if app.auth.is_set() {
            "log in first (/login) to act on a run".into()
        } else {
            "this console has no way to log in, so nobody can act from it; start it with \
             --auth-header or BACKFILL_CONSOLE_TOKENS, or use the CLI"
                .into()
        }));
    };
    if !app.csrf.verify(&login, &form.csrf) {
        return Err(Failure::forbidden(
            "the form's CSRF token is not this login's (an old page, or a form from another site); \
             reload the run's page and try again"
                .into(),
        ));
    }
    let action = Action::parse(&action)
        .ok_or_else(|| Failure::not_found(format!("no action {action:?}")))?;
    let run_id = resolve(&app.pool, &run).await?;
    let person = people::by_login(&app.pool, &login).await?.ok_or_else(|| {
        Failure::forbidden(format!(
            "login {login} is nobody in backfill.people; an administrator maps it: \
             `backfill people add NAME --role ROLE --email {login}`"
        ))
    })?;
    let brief = runs::load(&app.pool, run_id).await?.brief;
    if let Some(why) = action.refusal(&person, &brief) {
        return Err(Failure::forbidden(why));
    }
    // A cancel, a rollback or a cutover is taken only once confirmed: the
    // first post shows what it will do, nothing changed.
    if action.is_dangerous() && form.confirm != "yes" {
        let counts = batches::counts(&app.pool, run_id).await?;
        if let Some(consequence) = action.consequence(&counts, &brief) {
            return Ok(Html(
                pages::confirm(run_id, action, &consequence, &form.csrf, &form.reason)
                    .into_string(),
            )
            .into_response());
        }
    }
    let reason = Some(form.reason.trim()).filter(|r| !r.is_empty());
    let acting = people::acting_for(&app.pool, &person.role)
        .await
        .map_err(|e| Failure::forbidden(e.to_string()))?;
    let taken = actions::take(
        action,
        &acting,
        (&app.pool, &app.config),
        run_id,
        &person,
        reason,
    )
    .await;
    acting.close().await;
    match taken {
        Ok(()) => Ok(Redirect::to(&format!("/runs/{run_id}")).into_response()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_refusal_has_its_status() {
        let status = |e: CliError| Failure::from(e).status;
        let said = || "why".to_owned();
        assert_eq!(status(CliError::BadInput(said())), StatusCode::BAD_REQUEST);
        assert_eq!(status(CliError::NotFound(said())), StatusCode::NOT_FOUND);
        assert_eq!(status(CliError::NotAllowed(said())), StatusCode::FORBIDDEN);
        assert_eq!(status(CliError::WrongState(said())), StatusCode::CONFLICT);
        assert_eq!(status(CliError::Halted(said())), StatusCode::CONFLICT);
        assert_eq!(
            status(CliError::Unavailable(said())),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[test]
    fn reading_open_beyond_loopback_is_warned_of() {
        let tokens = Auth {
            tokens: Auth::parse_tokens("alice:0123456789abcdef0").unwrap(),
            ..Auth::default()
        };
        let (open, local): (SocketAddr, SocketAddr) = (
            "0.0.0.0:8080".parse().unwrap(),
            "127.0.0.1:8080".parse().unwrap(),
        );
        let warned = |addr, auth: &Auth| exposure_warning(addr, auth).unwrap_or_default();
        assert!(warned(open, &Auth::default()).contains("no way to log in"));
        assert!(warned(open, &tokens).contains("--require-login"));
        let closed = Auth {
            require_login: true,
            ..tokens.clone()
        };
        assert_eq!(exposure_warning(open, &closed), None);
        assert_eq!(exposure_warning(local, &tokens), None);
    }
}
