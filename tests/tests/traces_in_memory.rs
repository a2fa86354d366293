//! One run is one trace: with an in-memory span exporter, the worker's apply span
//! of each batch is a child of the coordinator's publish span of that batch,
//! across a real RabbitMQ delivery (the W3C trace context travels in the message
//! headers), and carries the attributes dashboards query by.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill_coordinator::run::Finish;
use backfill_tests::TestEnv;
use opentelemetry::trace::SpanId;
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|KeyValue { key: k, .. }| k.as_str() == key)
        .map(|kv| &kv.value)
}

fn of_batch<'a>(spans: &'a [SpanData], name: &str, batch: i64) -> Vec<&'a SpanData> {
    spans
        .iter()
        .filter(|s| s.name == name && attr(s, "batch.no") == Some(&Value::I64(batch)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_apply_span_is_a_child_of_the_publish_span_across_rabbitmq() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new(
            backfill_shared::telemetry::TRACED.join(","),
        ))
        .with(backfill_shared::telemetry::layer(&provider))
        .init();
    opentelemetry::global::set_tracer_provider(provider.clone());

    let env = TestEnv::new(0.01).await;
    let text = env.brief(4, 2).await;
    let (run_id, _, plan) = env.record_run(&text).await;
    assert_eq!(env.run_to_end(run_id, 1).await, Finish::Applied);
    let spans = exporter.get_finished_spans().unwrap();

    let run = spans
        .iter()
        .find(|s| s.name == "backfill.run")
        .expect("a run span");
    let run_attr = Value::String(run_id.to_string().into());
    assert_eq!(attr(run, "run.id"), Some(&run_attr));
    assert_eq!(
        attr(run, "target.table"),
        Some(&Value::String("tpch.order_revenue".into()))
    );
    assert_eq!(
        run.parent_span_id,
        SpanId::INVALID,
        "the run span is the root"
    );
    let trace = run.span_context.trace_id();

    for batch in &plan {
        let no = i64::from(batch.no);
        let publishes = of_batch(&spans, "batch.publish", no);
        let [publish] = publishes.as_slice() else {
            panic!("batch {no}: {} publish spans", publishes.len());
        };
        assert_eq!(
            publish.span_context.trace_id(),
            trace,
            "batch {no}: one trace"
        );
        assert_eq!(publish.parent_span_id, run.span_context.span_id());
        assert_eq!(publish.span_kind, opentelemetry::trace::SpanKind::Producer);

        let applies = of_batch(&spans, "batch.apply", no);
        let [apply] = applies.as_slice() else {
            panic!("batch {no}: {} apply spans", applies.len());
        };
        assert_eq!(
            apply.span_context.trace_id(),
            trace,
            "batch {no}: one trace"
        );
        assert_eq!(
            apply.parent_span_id,
            publish.span_context.span_id(),
            "batch {no}: the apply span is the publish span's child"
        );
        assert!(
            apply.parent_span_is_remote,
            "the parent came over the broker"
        );
        assert_eq!(apply.span_kind, opentelemetry::trace::SpanKind::Consumer);
        assert_eq!(attr(apply, "run.id"), Some(&run_attr));
        assert_eq!(
            attr(apply, "target.table"),
            Some(&Value::String("tpch.order_revenue".into()))
        );
        let updated: i64 = sqlx::query_scalar(
            "SELECT rows_updated FROM backfill.batches WHERE run_id = $1 AND batch_no = $2",
        )
        .bind(run_id)
        .bind(no)
        .fetch_one(&env.pool)
        .await
        .unwrap();
        assert_eq!(
            attr(apply, "batch.rows_updated"),
            Some(&Value::I64(updated))
        );
        for child in ["batch.lease", "batch.transaction", "batch.event"] {
            let found = of_batch(&spans, child, no);
            assert!(
                found
                    .iter()
                    .any(|s| s.parent_span_id == apply.span_context.span_id()),
                "batch {no}: no {child} span under the apply span"
            );
        }
    }
    env.cleanup().await;
}
