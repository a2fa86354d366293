//! Telling the data stack what a run does: OpenLineage run events for the
//! lineage backend ([`lineage`]) and CloudEvents or Slack messages for
//! webhooks ([`webhook`]), at each step of a run's life ([`Happened`]).
//!
//! Delivery never blocks nor fails a backfill. [`emit`] builds the payloads and
//! puts each on its endpoint's bounded queue; one task per endpoint posts them
//! in order, retrying with backoff; a payload the queue has no room for, or
//! that every try failed to deliver, is dropped with a warning and a
//! `notification_dropped` entry in the run log. At exit
//! [`Notifier::shutdown`] gives what is queued a few seconds, then drops the
//! rest the same way.
//!
//! Like the tracing subscriber, the notifier is one per process, installed by
//! `main` from the environment ([`Settings::from_vars`]); a process that
//! installs none (the tests that drive runs in process) sends nothing.

pub mod lineage;
pub mod slack;
pub mod webhook;

use backfill_shared::control::{batches, log, runs};
use backon::{ExponentialBuilder, Retryable as _};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;
use uuid::Uuid;

/// How many payloads may wait for delivery before new ones are dropped.
const QUEUE: usize = 1024;
/// How long one delivery try may take.
const TRY_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest `Retry-After` a delivery waits for before its next try.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(30);
/// How long a process about to exit waits for what is still queued.
const EXIT_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingsError {
    #[error("{var}={value:?} is not an http:// or https:// URL; fix it or unset it")]
    Url { var: &'static str, value: String },
    #[error("{0:?} is not a webhook format: use cloudevents (the default) or slack")]
    Format(String),
    #[error(
        "BACKFILL_WEBHOOKS entry {0:?} is not format=url or format:event+event=url (for example slack:halted+cut_over=https://hooks.slack.com/services/…)"
    )]
    Entry(String),
    #[error("{var}: {event:?} is not an event; the events are {}", EVENTS.join(", "))]
    Event { var: &'static str, event: String },
}

/// Every event a webhook is sent: the names payloads carry and an
/// endpoint's filter lists.
pub const EVENTS: [&str; 18] = [
    "announced",
    "started",
    "resumed",
    "halted",
    "failed",
    "applied",
    "cancelled",
    "validated",
    "approved",
    "cutover.started",
    "cut_over",
    "cutover.failed",
    "rollback.started",
    "rolled_back",
    "rollback.failed",
    "cleaned_up",
    "done",
    "change_note",
];

/// Where the events go, read once from the environment.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Settings {
    /// The OpenLineage endpoint, unless unset or `OPENLINEAGE_DISABLED`.
    pub lineage: Option<LineageSettings>,
    /// `BACKFILL_WEBHOOK_URL` (comma-separated, in `BACKFILL_WEBHOOK_FORMAT`),
    /// then `BACKFILL_WEBHOOKS` (comma-separated `format=url`).
    pub webhooks: Vec<Webhook>,
    /// `BACKFILL_CONSOLE_URL`: where `backfill serve` is reached, for links
    /// to what a Slack message has no room for.
    pub console: Option<String>,
}

/// A webhook: where, in which format, and which events (all, unless it
/// names some).
#[derive(Clone, PartialEq, Eq)]
pub struct Webhook {
    pub url: String,
    pub format: webhook::Format,
    pub events: Option<Vec<&'static str>>,
}

impl Webhook {
    /// Whether the endpoint takes events named `what`.
    #[must_use]
    pub fn wants(&self, what: &str) -> bool {
        self.events
            .as_ref()
            .is_none_or(|events| events.contains(&what))
    }
}

/// The events `list` names (separated by `+`, or by `,` too when `commas`),
/// each one of [`EVENTS`].
fn events(var: &'static str, list: &str, commas: bool) -> Result<Vec<&'static str>, SettingsError> {
    list.split(|c| c == '+' || (commas && c == ','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| {
            EVENTS
                .iter()
                .find(|known| known.eq_ignore_ascii_case(e))
                .copied()
                .ok_or_else(|| SettingsError::Event {
                    var,
                    event: e.to_owned(),
                })
        })
        .collect()
}

#[derive(Clone, PartialEq, Eq)]
pub struct LineageSettings {
    /// `OPENLINEAGE_URL` joined with `OPENLINEAGE_ENDPOINT` (default `api/v1/lineage`).
    pub endpoint: String,
    /// `OPENLINEAGE_API_KEY`, sent as a bearer token; never printed.
    pub api_key: Option<String>,
    /// `OPENLINEAGE_NAMESPACE` (default `backfill`): the jobs' namespace.
    pub namespace: String,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("lineage", &self.lineage)
            .field("webhooks", &self.webhooks)
            .field("console", &self.console)
            .finish()
    }
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}={}",
            self.format.name(),
            backfill_shared::config::redact_endpoint(&self.url)
        )
    }
}

impl std::fmt::Debug for LineageSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineageSettings")
            .field(
                "endpoint",
                &backfill_shared::config::redact_endpoint(&self.endpoint),
            )
            .field("namespace", &self.namespace)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .finish()
    }
}

impl Settings {
    /// Reads the OpenLineage clients' variables (`OPENLINEAGE_URL`,
    /// `OPENLINEAGE_ENDPOINT`, `OPENLINEAGE_API_KEY`, `OPENLINEAGE_NAMESPACE`,
    /// `OPENLINEAGE_DISABLED`), `BACKFILL_WEBHOOK_URL`,
    /// `BACKFILL_WEBHOOK_FORMAT`, `BACKFILL_WEBHOOKS` and
    /// `BACKFILL_CONSOLE_URL` from a map of variables.
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self, SettingsError> {
        let get = |name: &str| vars.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
        let http = |var: &'static str, value: &str| {
            if value.starts_with("http://") || value.starts_with("https://") {
                Ok(value.to_owned())
            } else {
                Err(SettingsError::Url {
                    var,
                    value: backfill_shared::config::redact_endpoint(value),
                })
            }
        };
        let disabled = get("OPENLINEAGE_DISABLED")
            .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes"));
        let lineage = match get("OPENLINEAGE_URL") {
            Some(url) if !disabled => {
                let base = http("OPENLINEAGE_URL", url)?;
                let endpoint = get("OPENLINEAGE_ENDPOINT").unwrap_or("api/v1/lineage");
                Some(LineageSettings {
                    endpoint: format!(
                        "{}/{}",
                        base.trim_end_matches('/'),
                        endpoint.trim_start_matches('/')
                    ),
                    api_key: get("OPENLINEAGE_API_KEY").map(str::to_owned),
                    namespace: get("OPENLINEAGE_NAMESPACE")
                        .unwrap_or("backfill")
                        .to_owned(),
                })
            }
            _ => None,
        };
        let format = match get("BACKFILL_WEBHOOK_FORMAT") {
            None => webhook::Format::CloudEvents,
            Some(name) => webhook::Format::from_name(&name.to_ascii_lowercase())
                .ok_or_else(|| SettingsError::Format(name.to_owned()))?,
        };
        let list = |var: &'static str| {
            get(var)
                .into_iter()
                .flat_map(|list| list.split(','))
                .map(str::trim)
                .filter(|w| !w.is_empty())
        };
        let only = get("BACKFILL_WEBHOOK_EVENTS")
            .map(|list| events("BACKFILL_WEBHOOK_EVENTS", list, true))
            .transpose()?;
        let mut webhooks = Vec::new();
        for url in list("BACKFILL_WEBHOOK_URL") {
            webhooks.push(Webhook {
                url: http("BACKFILL_WEBHOOK_URL", url)?,
                format,
                events: only.clone(),
            });
        }
        for entry in list("BACKFILL_WEBHOOKS") {
            let Some((head, url)) = entry.split_once('=') else {
                return Err(SettingsError::Entry(
                    backfill_shared::config::redact_endpoint(entry),
                ));
            };
            let (name, filter) = match head.split_once(':') {
                Some((name, filter)) => (name, Some(events("BACKFILL_WEBHOOKS", filter, false)?)),
                None => (head, None),
            };
            let format = webhook::Format::from_name(&name.trim().to_ascii_lowercase())
                .ok_or_else(|| SettingsError::Format(name.trim().to_owned()))?;
            webhooks.push(Webhook {
                url: http("BACKFILL_WEBHOOKS", url.trim())?,
                format,
                events: filter,
            });
        }
        let console = get("BACKFILL_CONSOLE_URL")
            .map(|url| http("BACKFILL_CONSOLE_URL", url))
            .transpose()?;
        Ok(Self {
            lineage,
            webhooks,
            console,
        })
    }

    fn is_empty(&self) -> bool {
        self.lineage.is_none() && self.webhooks.is_empty()
    }
}

/// A step of a run's life that the data stack hears of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Happened {
    /// A coordinator began driving the run for the first time.
    Started,
    /// A coordinator took the run up again (after `resume`, or a restart).
    Resumed,
    /// A batch failed or a limit was breached: the reason names which.
    Halted(String),
    /// The coordinator driving the run stopped on an error; the run goes on
    /// when driven again.
    Failed(String),
    /// Every batch is applied.
    Applied,
    Cancelled,
    Validated {
        passed: bool,
    },
    Approved {
        by: String,
    },
    Cutover(Step),
    Rollback(Step),
    CleanedUp,
    /// `backfill done`: every item of the definition of done is recorded.
    Done,
    /// `backfill report --send`: the change note, in Markdown.
    ChangeNote(String),
}

/// Where a cutover or a rollback is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Started,
    Done,
    Failed(String),
}

impl Happened {
    /// The name webhooks carry (`dev.backfill.run.<name>`) and the run log uses.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::Resumed => "resumed",
            Self::Halted(_) => "halted",
            Self::Failed(_) => "failed",
            Self::Applied => "applied",
            Self::Cancelled => "cancelled",
            Self::Validated { .. } => "validated",
            Self::Approved { .. } => "approved",
            Self::Cutover(Step::Started) => "cutover.started",
            Self::Cutover(Step::Done) => "cut_over",
            Self::Cutover(Step::Failed(_)) => "cutover.failed",
            Self::Rollback(Step::Started) => "rollback.started",
            Self::Rollback(Step::Done) => "rolled_back",
            Self::Rollback(Step::Failed(_)) => "rollback.failed",
            Self::CleanedUp => "cleaned_up",
            Self::Done => "done",
            Self::ChangeNote(_) => "change_note",
        }
    }

    /// What went wrong, for the events that say.
    #[must_use]
    pub fn error(&self) -> Option<&str> {
        match self {
            Self::Halted(why)
            | Self::Failed(why)
            | Self::Cutover(Step::Failed(why))
            | Self::Rollback(Step::Failed(why)) => Some(why),
            _ => None,
        }
    }
}

/// What the payloads are built from: the recorded run and its ledger now.
#[derive(Debug)]
pub struct Facts<'a> {
    pub run: &'a runs::Run,
    pub counts: &'a batches::Counts,
    pub happened: &'a Happened,
    pub time: chrono::DateTime<chrono::Utc>,
    /// What the brief's dbt manifest has downstream, as it reads now (an
    /// unreadable manifest leaves it out: a notification never fails on it).
    pub dbt: Option<crate::dbt::Radius>,
}

impl Facts<'_> {
    /// The brief's stakeholders, then the owners of the dbt exposures downstream.
    #[must_use]
    pub fn stakeholders(&self) -> Vec<String> {
        crate::dbt::stakeholders(&self.run.brief.dependencies.stakeholders, self.dbt.as_ref())
    }
}

/// What the run's dbt manifest has downstream, for its notifications: as
/// `plan` and cutover read it; left out when it cannot be read.
async fn dbt_radius(pool: &PgPool, run: &runs::Run) -> Option<crate::dbt::Radius> {
    crate::preflight::dbt_radius(pool, &run.brief)
        .await
        .ok()
        .flatten()
        .and_then(Result::ok)
}

/// One payload on its way to one endpoint.
#[derive(Debug)]
struct Delivery {
    run_id: Uuid,
    /// `openlineage` or `webhook`, for the drop's log entry.
    sink: &'static str,
    what: &'static str,
    url: String,
    bearer: Option<String>,
    content_type: &'static str,
    body: Vec<u8>,
    pool: PgPool,
}

/// The process's notifier: what `main` keeps to shut it down.
#[derive(Debug)]
pub struct Notifier {
    tasks: tokio::task::JoinSet<()>,
    pending: Arc<AtomicUsize>,
    stop: CancellationToken,
}

/// One endpoint's queue: its payloads go out in order, one at a time, so a
/// `START` never arrives after its `COMPLETE`, and a dead endpoint delays
/// only its own.
#[derive(Debug)]
struct Endpoint {
    url: String,
    queue: mpsc::Sender<Delivery>,
}

#[derive(Debug)]
struct Installed {
    settings: Settings,
    client: reqwest::Client,
    warehouse: lineage::Warehouse,
    endpoints: Vec<Endpoint>,
    pending: Arc<AtomicUsize>,
}

static INSTALLED: OnceLock<Installed> = OnceLock::new();

/// Starts a delivery task per endpoint and makes [`emit`] send to
/// `settings`' endpoints; `database_url` names the warehouse's datasets.
/// `None` when nothing is configured (or a notifier is installed already).
#[must_use]
pub fn install(settings: Settings, database_url: &str) -> Option<Notifier> {
    if settings.is_empty() {
        return None;
    }
    let warehouse = lineage::Warehouse::from_url(database_url).unwrap_or(lineage::Warehouse {
        namespace: "postgres://localhost:5432".into(),
        database: "postgres".into(),
    });
    backfill_shared::services::tls_with_ring();
    let client = match reqwest::Client::builder().timeout(TRY_TIMEOUT).build() {
        Ok(client) => client,
        Err(e) => {
            warn!(error = %e, "cannot build the HTTP client: no OpenLineage events nor webhooks will be sent");
            return None;
        }
    };
    let pending = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    let urls = settings
        .lineage
        .iter()
        .map(|l| l.endpoint.clone())
        .chain(settings.webhooks.iter().map(|w| w.url.clone()));
    let endpoints = urls
        .map(|url| {
            let (queue, received) = mpsc::channel(QUEUE);
            tasks.spawn(deliver_in_order(
                client.clone(),
                received,
                Arc::clone(&pending),
                stop.clone(),
            ));
            Endpoint { url, queue }
        })
        .collect();
    INSTALLED
        .set(Installed {
            settings,
            client,
            warehouse,
            endpoints,
            pending: Arc::clone(&pending),
        })
        .ok()?;
    Some(Notifier {
        tasks,
        pending,
        stop,
    })
}

impl Notifier {
    /// Gives what is still queued a few seconds; what is left then is
    /// dropped, each logged as such.
    pub async fn shutdown(mut self) {
        let settled = async |pending: &AtomicUsize| {
            let deadline = tokio::time::Instant::now() + EXIT_GRACE;
            while pending.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        settled(&self.pending).await;
        self.stop.cancel();
        // Each task logs what it still holds as dropped: quick.
        settled(&self.pending).await;
        self.tasks.abort_all();
    }
}

/// A coordinator begins to drive the run: [`Happened::Started`] the first
/// time, [`Happened::Resumed`] after. Asks the run log which only when
/// something listens (a resumed run's log can be long).
pub async fn taken_up(pool: &PgPool, run_id: Uuid) {
    if INSTALLED.get().is_none() {
        return;
    }
    let happened = match log::latest_of(pool, run_id, &["coordinator_attached"]).await {
        Ok(Some(_)) => Happened::Resumed,
        Ok(None) => Happened::Started,
        Err(e) => {
            warn!(run.id = %run_id, error = %e, "cannot read the run log to notify of the run's start");
            return;
        }
    };
    emit(pool, run_id, happened).await;
}

/// Tells the configured endpoints that `happened` to the run. Never fails and
/// never waits on an endpoint: a problem is a warning and a run-log entry.
pub async fn emit(pool: &PgPool, run_id: Uuid, happened: Happened) {
    let Some(installed) = INSTALLED.get() else {
        return;
    };
    let facts = async {
        let run = runs::load(pool, run_id).await?;
        let counts = batches::counts(pool, run_id).await?;
        Ok::<_, backfill_shared::control::ControlError>((run, counts))
    };
    let (run, counts) = match facts.await {
        Ok(facts) => facts,
        Err(e) => {
            warn!(run.id = %run_id, error = %e, event = happened.name(), "cannot read the run to notify of it");
            return;
        }
    };
    let facts = Facts {
        run: &run,
        counts: &counts,
        happened: &happened,
        time: chrono::Utc::now(),
        dbt: dbt_radius(pool, &run).await,
    };
    let settings = &installed.settings;
    let mut out = Vec::new();
    if let Some(lineage) = &settings.lineage
        && let Some(event) = lineage::event(&facts, &lineage.namespace, &installed.warehouse)
    {
        out.push(Delivery {
            run_id,
            sink: "openlineage",
            what: happened.name(),
            url: lineage.endpoint.clone(),
            bearer: lineage.api_key.clone(),
            content_type: "application/json",
            body: event.to_string().into_bytes(),
            pool: pool.clone(),
        });
    }
    for hook in settings
        .webhooks
        .iter()
        .filter(|h| h.wants(happened.name()))
    {
        let (content_type, body) =
            webhook::payload(&facts, hook.format, settings.console.as_deref());
        out.push(Delivery {
            run_id,
            sink: "webhook",
            what: happened.name(),
            url: hook.url.clone(),
            bearer: None,
            content_type,
            body: body.to_string().into_bytes(),
            pool: pool.clone(),
        });
    }
    for delivery in out {
        let Some(endpoint) = installed.endpoints.iter().find(|e| e.url == delivery.url) else {
            continue;
        };
        installed.pending.fetch_add(1, Ordering::AcqRel);
        if let Err(mpsc::error::TrySendError::Full(d) | mpsc::error::TrySendError::Closed(d)) =
            endpoint.queue.try_send(delivery)
        {
            installed.pending.fetch_sub(1, Ordering::AcqRel);
            dropped(&d, "its endpoint's queue is full").await;
        }
    }
}

/// Posts one endpoint's payloads in order, each retried with backoff; once
/// `stop` is cancelled, drops what is left, logging each.
async fn deliver_in_order(
    client: reqwest::Client,
    mut received: mpsc::Receiver<Delivery>,
    pending: Arc<AtomicUsize>,
    stop: CancellationToken,
) {
    while let Some(delivery) = received.recv().await {
        let outcome = tokio::select! {
            biased;
            () = stop.cancelled() => Err("the process exited before it was delivered".to_owned()),
            posted = post_with_retries(&client, &delivery) => posted,
        };
        if let Err(why) = outcome {
            dropped(&delivery, &why).await;
        }
        pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Posts one payload, with three retries after the first try (backoff from
/// 0.2 s): `Err` says why the last try failed.
async fn post_with_retries(client: &reqwest::Client, delivery: &Delivery) -> Result<(), String> {
    let post = || async {
        let mut request = client
            .post(&delivery.url)
            .header(reqwest::header::CONTENT_TYPE, delivery.content_type)
            .body(delivery.body.clone());
        if let Some(token) = &delivery.bearer {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| {
            let why = if e.is_timeout() {
                format!("no answer within {} s (timed out)", TRY_TIMEOUT.as_secs())
            } else if e.is_connect() {
                format!("could not connect: {}", e.without_url())
            } else {
                e.without_url().to_string()
            };
            Refusal::again(why)
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|secs| Duration::from_secs(secs.min(RETRY_AFTER_MAX.as_secs())));
        // What the endpoint said, briefly (Slack answers `invalid_blocks`).
        let said: String = response
            .text()
            .await
            .unwrap_or_default()
            .chars()
            .take(200)
            .collect();
        let said = said.trim();
        let why = if said.is_empty() {
            format!("the endpoint answered {status}")
        } else {
            format!("the endpoint answered {status}: {said}")
        };
        // A request the endpoint refuses as it is will be refused again.
        let again = status.is_server_error() || matches!(status.as_u16(), 408 | 429);
        Err(Refusal {
            why,
            again,
            retry_after,
        })
    };
    let tries = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(2))
        .with_max_times(3);
    post.retry(tries)
        .when(|r: &Refusal| r.again)
        .adjust(|r: &Refusal, backoff| backoff.map(|b| r.retry_after.unwrap_or(b)))
        .await
        .map_err(|r| r.why)
}

/// Why a delivery try failed, and whether trying again may help.
struct Refusal {
    why: String,
    again: bool,
    /// What a 429 or 503 asked to wait (`Retry-After` in seconds).
    retry_after: Option<Duration>,
}

impl Refusal {
    fn again(why: String) -> Self {
        Self {
            why,
            again: true,
            retry_after: None,
        }
    }
}

/// Posts one payload to every webhook now, waiting for each (the commands
/// that tell people something and must know it arrived). The addresses that
/// took it, and for the others why not; `None` when no webhook takes `what`.
async fn post_to_webhooks(
    pool: &PgPool,
    run_id: Option<Uuid>,
    what: &'static str,
    payload: impl Fn(webhook::Format, Option<&str>) -> (&'static str, serde_json::Value),
) -> Option<(Vec<String>, Vec<String>)> {
    let installed = INSTALLED.get()?;
    let hooks: Vec<&Webhook> = installed
        .settings
        .webhooks
        .iter()
        .filter(|h| h.wants(what))
        .collect();
    if hooks.is_empty() {
        return None;
    }
    let (mut delivered, mut failed) = (Vec::new(), Vec::new());
    for hook in hooks {
        let (content_type, body) = payload(hook.format, installed.settings.console.as_deref());
        let delivery = Delivery {
            run_id: run_id.unwrap_or_default(),
            sink: "webhook",
            what,
            url: hook.url.clone(),
            bearer: None,
            content_type,
            body: body.to_string().into_bytes(),
            pool: pool.clone(),
        };
        let shown = backfill_shared::config::redact_endpoint(&hook.url);
        match post_with_retries(&installed.client, &delivery).await {
            Ok(()) => delivered.push(shown),
            Err(why) => {
                if run_id.is_some() {
                    dropped(&delivery, &why).await;
                }
                failed.push(format!("{shown}: {why}"));
            }
        }
    }
    Some((delivered, failed))
}

/// Sends the run's change note (the report's Markdown) to every webhook now,
/// waiting for each, and records in the run log where it was delivered.
/// Refused when no webhook is configured or none took it.
pub async fn send_change_note(
    pool: &PgPool,
    run_id: Uuid,
    actor: &str,
    markdown: &str,
) -> crate::Result<Vec<String>> {
    let run = runs::load(pool, run_id).await?;
    let counts = batches::counts(pool, run_id).await?;
    let happened = Happened::ChangeNote(markdown.to_owned());
    let facts = Facts {
        run: &run,
        counts: &counts,
        happened: &happened,
        time: chrono::Utc::now(),
        dbt: dbt_radius(pool, &run).await,
    };
    let sent = post_to_webhooks(pool, Some(run_id), happened.name(), |format, console| {
        webhook::payload(&facts, format, console)
    })
    .await;
    let Some((delivered, failed)) = sent else {
        return Err(crate::CliError::BadInput(
            "no webhook takes the change note: set BACKFILL_WEBHOOK_URL (or add change_note to an endpoint's events), or tell the stakeholders another way and record it with `backfill done RUN --told \"how\"`".into(),
        ));
    };
    if delivered.is_empty() {
        return Err(crate::CliError::Halted(format!(
            "the change note reached no webhook ({}); each failure is in the run log (notification_dropped), and the note is not recorded as delivered",
            failed.join("; ")
        )));
    }
    log::append(
        pool,
        run_id,
        actor,
        "change_note_delivered",
        None,
        serde_json::json!({ "endpoints": &delivered, "failed": &failed }),
    )
    .await?;
    Ok(delivered)
}

/// Sends an announcement to every webhook now: the addresses that took it,
/// and for the others why not (both empty when no webhook is configured).
pub async fn send_announcement(
    pool: &PgPool,
    announcement: &backfill_shared::control::announcements::Announcement,
    brief: &backfill_shared::brief::Brief,
) -> (Vec<String>, Vec<String>) {
    post_to_webhooks(pool, None, "announced", |format, _| {
        webhook::announcement(announcement, brief, format)
    })
    .await
    .unwrap_or_default()
}

/// A payload that will not arrive: a warning, and the run log says so.
async fn dropped(delivery: &Delivery, why: &str) {
    let url = backfill_shared::config::redact_endpoint(&delivery.url);
    warn!(run.id = %delivery.run_id, sink = delivery.sink, event = delivery.what, url = %url, error = why, "notification dropped");
    let entry = serde_json::json!({
        "sink": delivery.sink, "event": delivery.what, "url": url, "error": why,
    });
    if let Err(e) = log::append(
        &delivery.pool,
        delivery.run_id,
        "coordinator",
        "notification_dropped",
        None,
        entry,
    )
    .await
    {
        warn!(run.id = %delivery.run_id, error = %e, "cannot record the dropped notification in the run log");
    }
}

/// Where the run's history sits: its first and last bound when `batch_by` is
/// a date or a timestamp (OpenLineage's `nominalTime`).
pub(crate) fn nominal_time(run: &runs::Run) -> Option<(String, String)> {
    use backfill_shared::brief::Bound;
    let at = |b: &Bound| match b {
        Bound::Integer(_) => None,
        Bound::Date(d) => Some(format!("{d}T00:00:00Z")),
        Bound::Timestamp(t) => Some(format!("{}Z", t.format("%Y-%m-%dT%H:%M:%S"))),
    };
    let by = &run.brief.scope.batch_by;
    Some((at(&by.start)?, at(&by.end)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn nothing_is_configured_by_default() {
        assert!(Settings::from_vars(&vars(&[])).unwrap().is_empty());
    }

    #[test]
    fn the_openlineage_variables_are_read_as_its_clients_read_them() {
        let s = Settings::from_vars(&vars(&[
            ("OPENLINEAGE_URL", "http://marquez:5000/"),
            ("OPENLINEAGE_API_KEY", "sekrit"),
        ]))
        .unwrap();
        let lineage = s.lineage.clone().unwrap();
        assert_eq!(lineage.endpoint, "http://marquez:5000/api/v1/lineage");
        assert_eq!(lineage.namespace, "backfill");
        assert!(!format!("{s:?}").contains("sekrit"));
        let s = Settings::from_vars(&vars(&[
            ("OPENLINEAGE_URL", "https://lineage.example"),
            ("OPENLINEAGE_ENDPOINT", "/v2/events"),
            ("OPENLINEAGE_NAMESPACE", "warehouse"),
        ]))
        .unwrap();
        let lineage = s.lineage.unwrap();
        assert_eq!(lineage.endpoint, "https://lineage.example/v2/events");
        assert_eq!(lineage.namespace, "warehouse");
        let off = Settings::from_vars(&vars(&[
            ("OPENLINEAGE_URL", "http://marquez:5000"),
            ("OPENLINEAGE_DISABLED", "true"),
        ]))
        .unwrap();
        assert!(off.is_empty());
    }

    #[test]
    fn bad_values_are_refused_naming_the_variable() {
        let e = Settings::from_vars(&vars(&[("OPENLINEAGE_URL", "marquez:5000")])).unwrap_err();
        assert!(e.to_string().contains("OPENLINEAGE_URL"), "{e}");
        let e = Settings::from_vars(&vars(&[(
            "BACKFILL_WEBHOOK_URL",
            "http://a.example/hook, ftp://b.example",
        )]))
        .unwrap_err();
        assert!(e.to_string().contains("BACKFILL_WEBHOOK_URL"), "{e}");
        let e = Settings::from_vars(&vars(&[("BACKFILL_WEBHOOK_FORMAT", "teams")])).unwrap_err();
        assert_eq!(e, SettingsError::Format("teams".into()));
        let two = Settings::from_vars(&vars(&[
            (
                "BACKFILL_WEBHOOK_URL",
                "http://a.example/hook, https://b.example/x",
            ),
            ("BACKFILL_WEBHOOK_FORMAT", "Slack"),
        ]))
        .unwrap();
        assert_eq!(two.webhooks.len(), 2);
        assert!(
            two.webhooks
                .iter()
                .all(|w| w.format == webhook::Format::Slack)
        );
        // Each endpoint in its own format, beside the single-URL variables.
        let mixed = Settings::from_vars(&vars(&[
            ("BACKFILL_WEBHOOK_URL", "http://a.example/hook"),
            (
                "BACKFILL_WEBHOOKS",
                "slack=https://hooks.slack.com/services/T0/B0/SeCrEtXyZ1234, CloudEvents=http://bus.example/e",
            ),
        ]))
        .unwrap();
        let formats: Vec<_> = mixed.webhooks.iter().map(|w| w.format).collect();
        assert_eq!(
            formats,
            [
                webhook::Format::CloudEvents,
                webhook::Format::Slack,
                webhook::Format::CloudEvents
            ]
        );
        assert!(!format!("{mixed:?}").contains("SeCrEt"), "{mixed:?}");
        let e = Settings::from_vars(&vars(&[("BACKFILL_WEBHOOKS", "https://x.example/h")]))
            .unwrap_err();
        assert!(e.to_string().contains("format=url"), "{e}");
        let e = Settings::from_vars(&vars(&[("BACKFILL_WEBHOOKS", "teams=https://x.example/h")]))
            .unwrap_err();
        assert_eq!(e, SettingsError::Format("teams".into()));
    }

    #[test]
    fn an_endpoint_takes_the_events_it_names() {
        let s = Settings::from_vars(&vars(&[
            ("BACKFILL_WEBHOOK_URL", "http://a.example/hook"),
            ("BACKFILL_WEBHOOK_EVENTS", "Halted, applied+done"),
            (
                "BACKFILL_WEBHOOKS",
                "slack:halted+cut_over=https://hooks.slack.com/services/T0/B0/X, cloudevents=http://bus.example/e",
            ),
        ]))
        .unwrap();
        let taken = |i: usize| {
            EVENTS
                .into_iter()
                .filter(|e| s.webhooks[i].wants(e))
                .collect::<Vec<_>>()
        };
        assert_eq!(taken(0), ["halted", "applied", "done"]);
        assert_eq!(taken(1), ["halted", "cut_over"]);
        assert_eq!(taken(2), EVENTS);
        let e = Settings::from_vars(&vars(&[(
            "BACKFILL_WEBHOOKS",
            "slack:halted+cutover=https://x.example/h",
        )]))
        .unwrap_err();
        assert_eq!(
            e,
            SettingsError::Event {
                var: "BACKFILL_WEBHOOKS",
                event: "cutover".into()
            }
        );
        assert!(e.to_string().contains("cut_over, cutover.failed"), "{e}");
        let e =
            Settings::from_vars(&vars(&[("BACKFILL_WEBHOOK_EVENTS", "everything")])).unwrap_err();
        assert!(e.to_string().starts_with("BACKFILL_WEBHOOK_EVENTS"), "{e}");
    }

    #[test]
    fn every_event_sent_is_one_a_filter_can_name() {
        let failed = || Step::Failed(String::new());
        let all = [
            Happened::Started,
            Happened::Resumed,
            Happened::Halted(String::new()),
            Happened::Failed(String::new()),
            Happened::Applied,
            Happened::Cancelled,
            Happened::Validated { passed: true },
            Happened::Approved { by: String::new() },
            Happened::Cutover(Step::Started),
            Happened::Cutover(Step::Done),
            Happened::Cutover(failed()),
            Happened::Rollback(Step::Started),
            Happened::Rollback(Step::Done),
            Happened::Rollback(failed()),
            Happened::CleanedUp,
            Happened::Done,
            Happened::ChangeNote(String::new()),
        ];
        let mut names: Vec<&str> = all.iter().map(Happened::name).collect();
        names.insert(0, "announced");
        assert_eq!(names, EVENTS);
    }
}
