//! An HTTP endpoint on loopback that keeps every request it is sent: where
//! the tests point OpenLineage and webhooks.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request the receiver took.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub content_type: String,
    pub authorization: Option<String>,
    pub body: serde_json::Value,
}

/// The receiver: its base URL, and what it took so far.
#[derive(Debug)]
pub struct Receiver {
    pub url: String,
    taken: Arc<Mutex<Vec<Received>>>,
    server: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Listens on a free loopback port, answering 200 to every POST.
    pub async fn start() -> Self {
        let taken = Arc::new(Mutex::new(Vec::new()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let url = format!("http://{}", listener.local_addr().expect("local address"));
        let app = axum::Router::new()
            .fallback(axum::routing::post(take))
            .with_state(Arc::clone(&taken));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, taken, server }
    }

    /// Everything taken so far, oldest first.
    #[must_use]
    pub fn taken(&self) -> Vec<Received> {
        self.taken.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Waits until `done` holds of what was taken (at most 30 s), and returns it.
    pub async fn until(&self, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let taken = self.taken();
            if done(&taken) {
                return taken;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the receiver did not get {what} within 30 s; it got: {:#?}",
                taken.iter().map(|r| (&r.path, &r.body)).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn take(
    State(taken): State<Arc<Mutex<Vec<Received>>>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let received = Received {
        path: uri.path().to_owned(),
        content_type: header("content-type").unwrap_or_default(),
        authorization: header("authorization"),
        body: serde_json::from_slice(&body)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&body).into())),
    };
    if let Ok(mut taken) = taken.lock() {
        taken.push(received);
    }
    StatusCode::OK
}
