//! An HTTP endpoint on loopback that keeps every request it is sent: where
//! the tests point OpenLineage and webhooks. [`Receiver::slack`] answers as a
//! Slack incoming webhook does: `400 invalid_blocks` for a message outside
//! Slack's limits, and it notes text that would mention, ping or link, or
//! Markdown that Slack shows literally ([`slack_problems`]).

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
    /// What a Slack receiver found wrong with it (always empty for the
    /// plain receiver); a message with any is refused.
    pub problems: Vec<String>,
}

/// The receiver: its base URL, and what it took so far.
#[derive(Debug)]
pub struct Receiver {
    pub url: String,
    taken: Taken,
    server: tokio::task::JoinHandle<()>,
}

/// What the receiver took so far.
type Taken = Arc<Mutex<Vec<Received>>>;

/// A scripted answer: the status, and a `Retry-After` in seconds.
pub type Answer = (u16, Option<u64>);

/// How a receiver answers.
#[derive(Debug, Clone, Default)]
struct Answers {
    /// Judge bodies as Slack does.
    slack: bool,
    /// Per path, the status (and `Retry-After`) of its first requests, in
    /// order; then 200.
    scripted: Vec<(String, Vec<Answer>)>,
}

impl Receiver {
    /// Listens on a free loopback port, answering 200 to every POST.
    pub async fn start() -> Self {
        Self::listen(Answers::default()).await
    }

    /// The same, judging every body as a Slack incoming webhook would.
    pub async fn slack() -> Self {
        Self::listen(Answers {
            slack: true,
            ..Answers::default()
        })
        .await
    }

    /// The same, answering the first requests to each path as `scripted`
    /// says (a status, and a `Retry-After` in seconds), then 200.
    pub async fn answering(scripted: &[(&str, &[Answer])]) -> Self {
        Self::listen(Answers {
            slack: false,
            scripted: scripted
                .iter()
                .map(|(path, answers)| ((*path).to_owned(), answers.to_vec()))
                .collect(),
        })
        .await
    }

    async fn listen(answers: Answers) -> Self {
        let taken = Arc::new(Mutex::new(Vec::new()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let url = format!("http://{}", listener.local_addr().expect("local address"));
        let app = axum::Router::new()
            .fallback(axum::routing::post(take))
            .with_state((Arc::clone(&taken), Arc::new(answers)));
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
    State((taken, answers)): State<(Taken, Arc<Answers>)>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let body = serde_json::from_slice(&body)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&body).into()));
    let problems = if answers.slack {
        slack_problems(&body)
    } else {
        Vec::new()
    };
    let path = uri.path().to_owned();
    let received = Received {
        path: path.clone(),
        content_type: header("content-type").unwrap_or_default(),
        authorization: header("authorization"),
        body,
        problems,
    };
    let (before, refused) = match taken.lock() {
        Ok(mut taken) => {
            let before = taken.iter().filter(|r| r.path == path).count();
            let refused = !received.problems.is_empty();
            taken.push(received);
            (before, refused)
        }
        Err(_) => (0, false),
    };
    if refused {
        return (StatusCode::BAD_REQUEST, "invalid_blocks").into_response();
    }
    let scripted = answers.scripted.iter().find(|(p, _)| *p == path);
    match scripted.and_then(|(_, script)| script.get(before)) {
        Some((status, retry_after)) => {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::OK);
            let mut response = (status, "scripted answer").into_response();
            if let Some(secs) = retry_after
                && let Ok(value) = secs.to_string().parse()
            {
                response
                    .headers_mut()
                    .insert(axum::http::header::RETRY_AFTER, value);
            }
            response
        }
        None => (StatusCode::OK, "ok").into_response(),
    }
}

/// What Slack would refuse in a message (its documented Block Kit limits:
/// 50 blocks, a header's plain text 150 characters, a section's text 3,000,
/// ten fields of 2,000, ten context elements), and what it would get wrong:
/// a `<!…>`, `<@…>` or `<#…>` that mentions or pings, a link to anywhere but
/// the console, an `&` that is not an entity, Markdown it shows as is.
#[must_use]
pub fn slack_problems(message: &serde_json::Value) -> Vec<String> {
    use serde_json::Value;
    let mut problems = Vec::new();
    let count = |t: &str| t.chars().count();
    let mut texts: Vec<(String, String)> = Vec::new();
    match message.get("text").and_then(Value::as_str) {
        Some(t) => texts.push(("text".into(), t.to_owned())),
        None => problems.push("no top-level text".into()),
    }
    let blocks = message.get("blocks").and_then(Value::as_array);
    let blocks = blocks.map_or(&[][..], Vec::as_slice);
    if blocks.len() > 50 {
        problems.push(format!("{} blocks (at most 50)", blocks.len()));
    }
    for (i, block) in blocks.iter().enumerate() {
        let kind = block.get("type").and_then(Value::as_str).unwrap_or("");
        let text = block.pointer("/text/text").and_then(Value::as_str);
        match kind {
            "header" => {
                if block.pointer("/text/type").and_then(Value::as_str) != Some("plain_text") {
                    problems.push(format!("block {i}: a header's text must be plain_text"));
                }
                match text {
                    Some(t) if count(t) <= 150 => {}
                    Some(t) => problems.push(format!(
                        "block {i}: header of {} characters (at most 150)",
                        count(t)
                    )),
                    None => problems.push(format!("block {i}: header without text")),
                }
            }
            "section" => {
                let fields = block.get("fields").and_then(Value::as_array);
                if text.is_none() && fields.is_none() {
                    problems.push(format!("block {i}: a section needs text or fields"));
                }
                if let Some(t) = text {
                    if count(t) > 3000 {
                        problems.push(format!(
                            "block {i}: section text of {} characters (at most 3000)",
                            count(t)
                        ));
                    }
                    texts.push((format!("block {i}"), t.to_owned()));
                }
                for (j, field) in fields.map_or(&[][..], Vec::as_slice).iter().enumerate() {
                    let t = field.get("text").and_then(Value::as_str).unwrap_or("");
                    if count(t) > 2000 {
                        problems.push(format!(
                            "block {i} field {j}: {} characters (at most 2000)",
                            count(t)
                        ));
                    }
                    texts.push((format!("block {i} field {j}"), t.to_owned()));
                }
                if fields.is_some_and(|f| f.len() > 10) {
                    problems.push(format!("block {i}: more than 10 fields"));
                }
            }
            "context" => {
                let elements = block.get("elements").and_then(Value::as_array);
                let elements = elements.map_or(&[][..], Vec::as_slice);
                if elements.is_empty() || elements.len() > 10 {
                    problems.push(format!("block {i}: a context has 1 to 10 elements"));
                }
                for e in elements {
                    let t = e.get("text").and_then(Value::as_str).unwrap_or("");
                    if count(t) > 3000 {
                        problems.push(format!("block {i}: context text over 3000 characters"));
                    }
                    texts.push((format!("block {i} context"), t.to_owned()));
                }
            }
            "divider" => {}
            other => problems.push(format!("block {i}: unknown type {other:?}")),
        }
    }
    for (where_, text) in &texts {
        problems.extend(
            mrkdwn_problems(text)
                .into_iter()
                .map(|p| format!("{where_}: {p}")),
        );
    }
    problems
}

/// What mrkdwn would do with `text` that a message should not: mention,
/// ping, link (other than `<http…|…>` to loopback, where the tests' console
/// is), a bare `&`, Markdown shown as is.
fn mrkdwn_problems(text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for (at, _) in text.match_indices('<') {
        let rest = &text[at + 1..];
        let control = rest.split('>').next().unwrap_or("");
        if control.starts_with('!') || control.starts_with('@') || control.starts_with('#') {
            problems.push(format!("mentions or pings: <{control}>"));
        } else if !(control.starts_with("http://127.0.0.1")
            || control.starts_with("http://localhost"))
        {
            problems.push(format!("links or is unescaped: <{control}>"));
        }
    }
    for (at, _) in text.match_indices('&') {
        let rest = &text[at..];
        if !["&amp;", "&lt;", "&gt;"]
            .iter()
            .any(|e| rest.starts_with(e))
        {
            problems.push("an & that is not an entity".into());
        }
    }
    if text.contains("**") {
        problems.push("Markdown bold (**)".into());
    }
    for line in text.lines() {
        let l = line.trim_start();
        if l.starts_with("# ") || l.starts_with("## ") || l.starts_with("### ") {
            problems.push(format!("a Markdown heading: {l:?}"));
        }
        if l.starts_with('|') && l.ends_with('|') {
            problems.push(format!("a Markdown table row: {l:?}"));
        }
    }
    problems
}
