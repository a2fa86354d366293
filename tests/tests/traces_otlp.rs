//! Traces over OTLP, end to end: a `backfill run` process and a `backfill-worker`
//! process export to an OTLP/HTTP receiver listening on loopback (this test), and
//! the spans received form the run's tree: the run span, a publish span per
//! batch under it, the worker's apply span under each publish span, and the
//! lease, transaction and event spans under each apply span.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill_tests::{TestEnv, bin};
use serde_json::Value;
use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// One received span: its service, ids, name and attributes.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    trace: String,
    id: String,
    parent: String,
    name: String,
    attributes: HashMap<String, Value>,
}

/// An OTLP/HTTP JSON receiver: answers every POST with 200 and keeps the bodies.
async fn receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&bodies);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, Arc::clone(&keep)));
        }
    });
    (endpoint, bodies)
}

async fn serve(mut stream: TcpStream, bodies: Arc<Mutex<Vec<Value>>>) {
    let mut buf = Vec::new();
    loop {
        // The head of the next request.
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        while buf.len() < end + length {
            let mut chunk = [0u8; 65536];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buf.drain(..end + length).skip(end).collect();
        assert!(
            head.starts_with("post /v1/traces "),
            "unexpected request: {head}"
        );
        let json: Value = serde_json::from_slice(&body).expect("an OTLP/HTTP JSON body");
        bodies.lock().unwrap().push(json);
        let _ = stream
            .write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
            )
            .await;
    }
}

fn spans(bodies: &[Value]) -> Vec<Received> {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let mut out = Vec::new();
    for body in bodies {
        for resource in body["resourceSpans"].as_array().into_iter().flatten() {
            let service = resource["resource"]["attributes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|a| a["key"] == "service.name")
                .map(|a| text(&a["value"]["stringValue"]))
                .unwrap_or_default();
            for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                for span in scope["spans"].as_array().into_iter().flatten() {
                    let attributes = span["attributes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|a| (text(&a["key"]), a["value"].clone()))
                        .collect();
                    out.push(Received {
                        service: service.clone(),
                        trace: text(&span["traceId"]),
                        id: text(&span["spanId"]),
                        parent: text(&span["parentSpanId"]),
                        name: text(&span["name"]),
                        attributes,
                    });
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_exports_its_span_tree_over_otlp() {
    let (endpoint, bodies) = receiver().await;
    let env = TestEnv::new(0.01).await;
    let text = env.brief(4, 2).await;
    let dir = std::env::temp_dir().join(format!("{}-otlp", env.config.namespace));
    std::fs::create_dir_all(&dir).unwrap();
    let brief = dir.join("brief.toml");
    std::fs::write(&brief, &text).unwrap();
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];

    let mut worker = tokio::process::Command::new(bin("backfill-worker"))
        .envs(env.env())
        .envs(otel)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let run = tokio::process::Command::new(bin("backfill"))
        .args(["run", brief.to_str().unwrap(), "--unannounced", "a test"])
        .envs(env.env())
        .envs(otel)
        // Traces do not depend on the log level.
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    assert!(
        run.status.success(),
        "backfill run failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let run_id = String::from_utf8_lossy(&run.stdout)
        .lines()
        .next()
        .unwrap()
        .trim()
        .to_owned();
    // SIGTERM: the worker drains and flushes its last spans before exiting.
    let pid = worker.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(Duration::from_secs(30), worker.wait())
        .await
        .expect("the worker stops on SIGTERM")
        .unwrap();
    assert!(status.success(), "worker exit: {status}");

    let received = spans(&bodies.lock().unwrap());
    let named =
        |name: &str| -> Vec<&Received> { received.iter().filter(|s| s.name == name).collect() };
    let runs = named("backfill.run");
    let [root] = runs.as_slice() else {
        panic!(
            "{} run spans among {:?}; the coordinator said: {}",
            runs.len(),
            received
                .iter()
                .map(|s| (&s.service, &s.name))
                .collect::<Vec<_>>(),
            String::from_utf8_lossy(&run.stderr)
        );
    };
    assert_eq!(root.service, "backfill");
    assert_eq!(root.parent, "", "the run span is the root");
    assert_eq!(root.attributes["run.id"]["stringValue"], run_id.as_str());
    let publishes = named("batch.publish");
    assert_eq!(publishes.len(), 4, "one publish span per batch");
    for publish in publishes {
        assert_eq!(
            (publish.trace.as_str(), publish.parent.as_str()),
            (root.trace.as_str(), root.id.as_str())
        );
        let applies: Vec<&Received> = received
            .iter()
            .filter(|s| s.name == "batch.apply" && s.parent == publish.id)
            .collect();
        let [apply] = applies.as_slice() else {
            panic!("{} apply spans under publish {publish:?}", applies.len());
        };
        assert_eq!(apply.service, "backfill-worker");
        assert_eq!(apply.trace, root.trace);
        assert_eq!(apply.attributes["batch.no"], publish.attributes["batch.no"]);
        assert_eq!(
            apply.attributes["target.table"]["stringValue"],
            "tpch.order_revenue"
        );
        assert!(
            apply.attributes.contains_key("batch.rows_updated"),
            "{apply:?}"
        );
        for child in ["batch.lease", "batch.transaction", "batch.event"] {
            assert!(
                received
                    .iter()
                    .any(|s| s.name == child && s.parent == apply.id),
                "no {child} span under {apply:?}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    env.cleanup().await;
}
