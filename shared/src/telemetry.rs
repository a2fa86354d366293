//! Logs and traces, shared by both binaries.
//!
//! Logs: human-readable lines on stderr by default, one JSON object per line with
//! `--log-format json`. `RUST_LOG` filters them (the default is the binary's).
//! Spans carry `run.id` and `batch.no`, so every line logged inside a batch names it.
//!
//! Traces: OpenTelemetry, exported over OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT`
//! (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, and not set up at all
//! otherwise. The other standard variables apply: `OTEL_EXPORTER_OTLP_PROTOCOL`
//! (`http/protobuf`, the default, or `http/json`), `OTEL_EXPORTER_OTLP_HEADERS`,
//! `OTEL_SERVICE_NAME`, `OTEL_BSP_*`. Spans of Backfill's own crates are exported
//! whatever `RUST_LOG` says (and their info lines are then logged too). One run
//! is one trace: the coordinator's run span ([`RootSpan`]), a publish span per
//! batch, and the worker's apply span as its child, the W3C trace context
//! travelling in the AMQP message headers ([`inject`], [`extract`]).

use lapin::types::{AMQPValue, FieldTable};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::collections::HashMap;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("unknown log format {other:?}; use text or json")),
        }
    }
}

/// The installed logs and traces; [`Telemetry::shutdown`] flushes the traces.
#[derive(Debug)]
#[must_use = "call shutdown() before exiting, or the last spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// Installs the global subscriber. Call once, first thing in `main`; `service`
/// names the process in traces unless `OTEL_SERVICE_NAME` does.
/// A default log filter without the broker client's own lines: lapin logs
/// every refused login or dropped connection at ERROR, before (and beside) the
/// one line of ours that says what happened and what to do. `RUST_LOG` still
/// shows them (`RUST_LOG=lapin=debug`).
#[must_use]
pub fn quiet_default(filter: &str) -> String {
    format!("{filter},lapin=off")
}

pub fn init(format: LogFormat, default_filter: &str, service: &'static str) -> Telemetry {
    let provider = if exporter_configured() {
        match otlp_provider(service) {
            Ok(provider) => Some(provider),
            Err(e) => {
                // Traces are an aid, not a precondition: say so and go on.
                #[allow(clippy::print_stderr)]
                {
                    eprintln!("warning: traces are off: cannot set up the OTLP exporter: {e}");
                }
                None
            }
        }
    } else {
        None
    };
    // One filter for logs and traces alike: per-layer filters that disagree lose
    // spans (a span one layer's filter rejects can leave the other layer without
    // its close). With traces on, Backfill's own spans always pass, so its info
    // lines are logged too.
    let mut filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    if provider.is_some() {
        for directive in TRACED {
            if let Ok(d) = directive.parse() {
                filter = filter.add_directive(d);
            }
        }
    }
    let logs = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_target(false)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    if let Some(provider) = &provider {
        // Root spans (see [`RootSpan`]) come from the global tracer.
        opentelemetry::global::set_tracer_provider(provider.clone());
    }
    let traces = provider.as_ref().map(layer);
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(traces)
        .try_init();
    Telemetry { provider }
}

/// Filter directives that let Backfill's spans through whatever `RUST_LOG` says.
pub const TRACED: [&str; 3] = [
    "backfill_coordinator=info",
    "backfill_worker=info",
    "backfill_shared=info",
];

impl Telemetry {
    /// Exports the spans not yet sent (waiting at most a few seconds).
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            // The exporter's client blocks; keep it off the runtime's threads.
            match tokio::task::spawn_blocking(move || provider.shutdown()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "could not flush the last spans"),
                Err(e) => tracing::warn!(error = %e, "could not flush the last spans"),
            }
        }
    }
}

/// The OpenTelemetry layer over `provider`. Public for tests that install their
/// own provider (with a filter made of [`TRACED`]).
pub fn layer<S>(provider: &SdkTracerProvider) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("backfill"))
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_tracked_inactivity(false)
}

fn env_set(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn exporter_configured() -> bool {
    env_set("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        || env_set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
}

fn otlp_provider(service: &'static str) -> Result<SdkTracerProvider, String> {
    crate::services::tls_with_ring();
    let protocol = match env_set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|| env_set("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .map(|p| p.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("http/protobuf") => Protocol::HttpBinary,
        Some("http/json") => Protocol::HttpJson,
        Some(other) => {
            return Err(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL={other} is not supported; use http/protobuf or http/json"
            ));
        }
    };
    let exporter = SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .build()
        .map_err(|e| e.to_string())?;
    let mut resource = Resource::builder();
    if env_set("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service);
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// The root span of a run, made with the OpenTelemetry API rather than through
/// `tracing`, so that it ends exactly when the run does: a `tracing` span stays
/// open while anything still refers to it, and a long-lived task that does
/// would keep the root from ever being exported. Its children name it with
/// `set_parent(root.context())`. A no-op when traces are off.
#[derive(Debug)]
pub struct RootSpan {
    cx: opentelemetry::Context,
}

impl RootSpan {
    #[must_use]
    pub fn start(name: &'static str, attributes: Vec<opentelemetry::KeyValue>) -> Self {
        use opentelemetry::trace::{TraceContextExt as _, Tracer as _};
        let tracer = opentelemetry::global::tracer("backfill");
        let span = tracer
            .span_builder(name)
            .with_kind(opentelemetry::trace::SpanKind::Internal)
            .with_attributes(attributes)
            .start(&tracer);
        Self {
            cx: opentelemetry::Context::current_with_span(span),
        }
    }

    /// The context children take as their parent.
    #[must_use]
    pub fn context(&self) -> opentelemetry::Context {
        self.cx.clone()
    }

    /// Ends the span, with an error status if `failure` says why.
    pub fn end(self, failure: Option<String>) {
        use opentelemetry::trace::TraceContextExt as _;
        let span = self.cx.span();
        if let Some(description) = failure {
            span.set_status(opentelemetry::trace::Status::error(description));
        }
        span.end();
    }
}

/// AMQP headers as a carrier of the W3C trace context.
struct Headers<'a>(&'a mut HashMap<String, String>);

impl Injector for Headers<'_> {
    fn set(&mut self, key: &str, value: String) {
        if !value.is_empty() {
            self.0.insert(key.to_owned(), value);
        }
    }
}

struct ReadHeaders(HashMap<String, String>);

impl Extractor for ReadHeaders {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// Adds the current span's trace context (`traceparent`, `tracestate`) to
/// message headers. Adds nothing when traces are off.
pub fn inject(headers: &mut FieldTable) {
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(
        &tracing::Span::current().context(),
        &mut Headers(&mut carrier),
    );
    for (key, value) in carrier {
        headers.insert(key.into(), AMQPValue::LongString(value.into()));
    }
}

/// The trace context a message's headers carry (empty if none).
#[must_use]
pub fn extract(headers: Option<&FieldTable>) -> opentelemetry::Context {
    let carrier = headers
        .map(|h| {
            h.inner()
                .iter()
                .filter_map(|(k, v)| match v {
                    AMQPValue::LongString(s) => Some((k.to_string(), s.to_string())),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    TraceContextPropagator::new().extract(&ReadHeaders(carrier))
}
