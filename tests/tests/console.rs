//! `backfill serve`: the console's JSON equals the ledger, its pages show the
//! run and its batch grid, a brief's HTML shows as inert text, and a 100,000-batch
//! run's grid stays a few thousand cells.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill_coordinator::console;
use backfill_coordinator::run::Finish;
use backfill_shared::control::maintenance;
use backfill_tests::{TestEnv, http, http_get, http_with_headers};
use serde_json::Value;

/// The console on a free port of loopback, with `auth`.
async fn serve(env: &TestEnv, auth: console::Auth) -> String {
    console::serve(
        env.pool.clone(),
        env.config.clone(),
        "127.0.0.1:0".parse().unwrap(),
        auth,
    )
    .await
    .unwrap()
    .to_string()
}

/// Hostile text in every field of the demo brief a page shows.
const HOSTILE: [(&str, &str); 5] = [
    (
        "reason = \"Refunds (l_returnflag = 'R') were never subtracted from net revenue.\"",
        "reason = \"<script>alert('reason')</script> & refunds\"",
    ),
    ("owner = \"alice\"", "owner = \"<i>alice</i>\""),
    (
        "stakeholders = [\"finance\", \"growth\"]",
        "stakeholders = [\"<u>finance</u>\"]",
    ),
    ("name = \"net revenue\"", "name = \"<svg onload=alert(1)>\""),
    (
        "plan = \"Before-images per batch in the run's image table restore every changed row.\"",
        "plan = \"<img src=x onerror=alert(1)> restore the images\"",
    ),
];

fn hostile(text: &str) -> String {
    HOSTILE.iter().fold(text.to_owned(), |text, (from, to)| {
        assert!(text.contains(from), "the demo brief no longer has {from}");
        text.replace(from, to)
    })
}

/// What no page may contain raw: markup from the brief.
fn assert_inert(page: &str, what: &str) {
    for raw in [
        "<script>alert",
        "<i>alice",
        "<u>finance",
        "<svg onload",
        "<img src=x",
    ] {
        assert!(!page.contains(raw), "{what} renders {raw:?} as markup");
    }
}

async fn json(addr: &str, path: &str) -> (u16, Value) {
    let (status, body) = http_get(addr, path).await;
    let value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    (status, value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_shows_a_run_as_the_ledger_has_it_and_its_brief_as_text() {
    let env = TestEnv::new(0.01).await;
    let text = hostile(&env.brief(6, 2).await).replacen(
        "SELECT",
        "-- </script><script>alert(1)</script>\nSELECT",
        1,
    );
    // The owner's name is hostile too, and this login is that person.
    sqlx::query("UPDATE backfill.people SET name = '<i>alice</i>' WHERE name = 'alice'")
        .execute(&env.pool)
        .await
        .unwrap();
    let (run_id, brief, _) = env.record_run(&text).await;
    let workers = env.workers(2).await;
    assert_eq!(
        env.drive_in_background(run_id).await.unwrap().unwrap(),
        Finish::Applied
    );
    workers.stop().await;
    let addr = serve(&env, console::Auth::default()).await;

    // /api/runs/{run}: the counts by state and the rows equal the ledger's, by
    // whole id and by prefix.
    let by_state: Vec<(String, i64)> = sqlx::query_as(
        "SELECT state, count(*) FROM backfill.batches WHERE run_id = $1 GROUP BY state",
    )
    .bind(run_id)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let rows: (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT sum(rows_source)::bigint, sum(rows_inserted)::bigint, sum(rows_updated)::bigint,
                    sum(rows_deleted)::bigint FROM backfill.batches WHERE run_id = $1",
    )
    .bind(run_id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    let prefix = &run_id.simple().to_string()[..8];
    for id in [run_id.to_string(), prefix.to_owned()] {
        let (status, run) = json(&addr, &format!("/api/runs/{id}")).await;
        assert_eq!(status, 200, "{run}");
        assert_eq!(run["run_id"], run_id.to_string());
        assert_eq!(run["state"], "applied");
        let total: i64 = by_state.iter().map(|(_, n)| n).sum();
        assert_eq!(run["batch_count"], total);
        for state in ["pending", "queued", "running", "applied", "failed"] {
            let n = by_state.iter().find(|(s, _)| s == state).map_or(0, |c| c.1);
            assert_eq!(run["batches"][state], n, "{state}: {run}");
        }
        let r = &run["batches"]["rows"];
        assert_eq!(
            (r["source"].as_i64(), r["inserted"].as_i64()),
            (Some(rows.0), Some(rows.1))
        );
        assert_eq!(
            (r["updated"].as_i64(), r["deleted"].as_i64()),
            (Some(rows.2), Some(rows.3))
        );
    }

    // /api/runs: the run with its progress and rows written; a bad filter is a
    // 400 that names the states; a filter that matches nothing is empty.
    let (status, listed) = json(&addr, "/api/runs").await;
    assert_eq!(status, 200);
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 1);
    let written = rows.1 + rows.2 + rows.3;
    assert_eq!(listed[0]["rows_written"], written);
    assert_eq!(listed[0]["applied"], listed[0]["batches"]);
    assert_eq!(listed[0]["risk"], "metric-changing");
    assert_eq!(listed[0]["eta_seconds"], Value::Null, "no ETA once applied");
    let (status, err) = json(&addr, "/api/runs?state=bogus").await;
    assert_eq!(status, 400);
    assert!(err["error"].as_str().unwrap().contains("running"), "{err}");
    let (_, none) = json(&addr, "/api/runs?state=cancelled").await;
    assert_eq!(none, serde_json::json!([]));

    // /api/maintenance: a target's marker, as backfill.maintenance has it (a
    // merge run clears its own when applied: mark the target as a running one has it).
    let mut conn = env.pool.acquire().await.unwrap();
    maintenance::mark(&mut conn, &maintenance::Marker::of(&brief, run_id))
        .await
        .unwrap();
    drop(conn);
    let marked: Vec<(String, uuid::Uuid)> =
        sqlx::query_as("SELECT target, run_id FROM backfill.maintenance ORDER BY target")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(marked.len(), 1);
    let (status, under) = json(&addr, "/api/maintenance").await;
    assert_eq!(status, 200);
    let under = under.as_array().unwrap();
    assert_eq!(under.len(), 1);
    assert_eq!(under[0]["target"], marked[0].0);
    assert_eq!(under[0]["run_id"], marked[0].1.to_string());
    assert_eq!(under[0]["owner"], "<i>alice</i>");

    // The runs page and the run page: the run, its grid one applied cell per
    // batch, and the brief's markup as text.
    let (status, page) = http_get(&addr, "/").await;
    assert_eq!(status, 200);
    assert!(page.contains(&format!("/runs/{run_id}")), "{page}");
    assert!(page.contains("under maintenance"));
    assert_inert(&page, "the runs page");
    let (status, page) = http_get(&addr, "/?state=halted&target=tpch.order_revenue").await;
    assert_eq!(status, 200);
    assert!(page.contains("No run matches"), "{page}");
    let (status, page) = http_get(&addr, &format!("/runs/{prefix}")).await;
    assert_eq!(status, 200);
    let batches = by_state.iter().map(|(_, n)| n).sum::<i64>();
    assert_eq!(
        page.matches("<i class=\"applied\"").count(),
        usize::try_from(batches).unwrap(),
        "{page}"
    );
    assert!(page.contains("&lt;script&gt;alert('reason')&lt;/script&gt; &amp; refunds"));
    assert!(page.contains("-- &lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert_eq!(
        page.matches("<script").count(),
        1,
        "only the page's own refresh"
    );
    assert!(
        page.contains("<script src=\"/static/live.js\"></script>"),
        "{page}"
    );
    let (status, script) = http_get(&addr, "/static/live.js").await;
    assert_eq!(status, 200);
    assert!(script.contains("getElementById('live')"), "{script}");
    assert_inert(&page, "the run page");
    // The way back: the run's before-image table, kept for retain_days.
    let images: String =
        sqlx::query_scalar("SELECT image_table FROM backfill.runs WHERE run_id = $1")
            .bind(run_id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert!(
        page.contains(&format!("<code>{images}</code> — kept 14 days")),
        "{page}"
    );
    let live_path = format!("/runs/{run_id}/live");
    let (status, headers, live) = http_with_headers(&addr, "GET", &live_path, &[], "").await;
    assert_eq!(status, 200);
    assert!(live.contains("<div class=\"grid\""), "{live}");
    assert!(!live.contains("<html"), "the live part is a fragment");
    // Unchanged since the browser's copy: 304, no body.
    let tag = headers
        .lines()
        .find_map(|l| l.strip_prefix("etag: "))
        .unwrap_or_else(|| panic!("no ETag: {headers}"))
        .to_owned();
    assert!(
        headers.contains("cache-control: private, no-cache"),
        "{headers}"
    );
    let (status, again) = http(&addr, "GET", &live_path, &[("If-None-Match", &tag)], "").await;
    assert_eq!((status, again.as_str()), (304, ""));
    let (status, _) = http(
        &addr,
        "GET",
        &live_path,
        &[("If-None-Match", "\"stale\"")],
        "",
    )
    .await;
    assert_eq!(status, 200);

    // The metric's chart, an SVG image the run page shows; inert too.
    assert!(
        page.contains(&format!("src=\"/runs/{run_id}/charts/0\"")),
        "{page}"
    );
    let (status, svg) = http_get(&addr, &format!("/runs/{run_id}/charts/0")).await;
    assert_eq!(status, 200);
    assert!(
        svg.starts_with("<svg") && svg.contains("class=\"bar\""),
        "{svg}"
    );
    assert!(svg.contains("&lt;svg onload=alert(1)&gt;"), "{svg}");
    assert_eq!(
        http_get(&addr, &format!("/runs/{run_id}/charts/1")).await.0,
        404
    );

    // The change note: the report's HTML, with its chart, inert too.
    let (status, note) = http_get(&addr, &format!("/runs/{run_id}/note")).await;
    assert_eq!(status, 200);
    assert!(note.contains("<svg"), "{note}");
    assert!(!note.contains("<script"), "the note runs no script");
    // Its style sheet is the console's own: the policy allows no inline style.
    assert!(
        note.contains("<link rel=\"stylesheet\" href=\"/static/note.css\">")
            && !note.contains("<style")
            && !note.contains(" style="),
        "{note}"
    );
    let (status, sheet) = http_get(&addr, "/static/note.css").await;
    assert_eq!(status, 200);
    assert!(
        sheet.contains("td:first-child{white-space:nowrap}"),
        "{sheet}"
    );
    assert_inert(&note, "the change note");

    // Unknown runs and pages are 404s that say so; the probes and metrics answer.
    let (status, page) = http_get(&addr, &format!("/runs/{}", uuid::Uuid::new_v4())).await;
    assert_eq!(status, 404, "{page}");
    let (status, err) = json(&addr, "/api/runs/ffffffff").await;
    assert_eq!(status, 404);
    assert!(err["error"].as_str().unwrap().contains("no run"), "{err}");
    assert_eq!(http_get(&addr, "/nowhere").await.0, 404);
    assert_eq!(http_get(&addr, "/healthz").await, (200, "ok\n".into()));
    assert_eq!(http_get(&addr, "/ready").await.0, 200);
    let (status, metrics) = http_get(&addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("backfill_console_runs"), "{metrics}");
    env.cleanup().await;
}

/// A 100,000-batch run's grid is at most `GRID_CELLS` cells of 50 batches, in
/// order, with the bounds of their first and last batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_runs_grid_shares_cells() {
    let env = TestEnv::new(0.01).await;
    let text = env.key_per_batch_brief(100_000).await;
    let (run_id, ..) = env.record_run(&text).await;
    sqlx::query(
        "UPDATE backfill.batches SET state = 'applied' WHERE run_id = $1 AND batch_no < 30000",
    )
    .bind(run_id)
    .execute(&env.pool)
    .await
    .unwrap();
    let grid = backfill_shared::control::batches::grid(&env.pool, run_id, console::GRID_CELLS)
        .await
        .unwrap();
    assert_eq!(grid.len(), 2_000);
    assert!(grid.iter().all(|c| c.batches() == 50));
    assert_eq!((grid[0].first, grid[0].last), (0, 49));
    assert_eq!((grid[0].lo.as_str(), grid[0].hi.as_str()), ("1", "51"));
    assert_eq!(grid[599].applied, 50);
    assert_eq!(grid[600].pending, 50);
    for pair in grid.windows(2) {
        assert_eq!(pair[0].last + 1, pair[1].first);
    }
    let addr = serve(&env, console::Auth::default()).await;
    let (status, page) = http_get(&addr, &format!("/runs/{run_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(page.matches("<i class=\"applied\"").count(), 600);
    assert_eq!(page.matches("<i class=\"pending\"").count(), 1_400);
    assert!(page.contains("One cell per 50 batches"));
    // On the wire, compressed: the page and its live part each under 60 KB,
    // and an unchanged live part a 304 with no body (paused, the run has no
    // ETA that moves with the clock).
    backfill_coordinator::resume::pause(&env.pool, run_id, "alice")
        .await
        .unwrap();
    let gzip = [("Accept-Encoding", "gzip")];
    let live = format!("/runs/{run_id}/live");
    for path in [format!("/runs/{run_id}"), live.clone()] {
        let (status, bytes) = backfill_tests::wire_size(&addr, &path, &gzip).await;
        assert_eq!(status, 200);
        assert!(bytes < 60_000, "{path}: {bytes} bytes on the wire");
    }
    let (_, headers, _) = http_with_headers(&addr, "GET", &live, &gzip, "").await;
    let tag = headers
        .lines()
        .find_map(|l| l.strip_prefix("etag: "))
        .unwrap_or_else(|| panic!("no ETag: {headers}"))
        .to_owned();
    let (status, bytes) =
        backfill_tests::wire_size(&addr, &live, &[("If-None-Match", &tag), gzip[0]]).await;
    assert_eq!((status, bytes), (304, 0));
    env.cleanup().await;
}

/// `backfill serve` prints where it listens and serves until stopped; on an
/// address other machines reach with no way to log in, it warns first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_serve_listens_where_it_says_and_warns_when_exposed() {
    use tokio::io::{AsyncBufReadExt as _, BufReader};
    let env = TestEnv::new(0.01).await;
    // Reading open on an address other machines reach is warned of, with
    // tokens too (they guard only the actions) unless --require-login.
    for (addr, tokens, warns) in [
        ("127.0.0.1:0", "", false),
        ("0.0.0.0:0", "", true),
        ("0.0.0.0:0", TOKENS, true),
    ] {
        let mut child = tokio::process::Command::new(backfill_tests::bin("backfill"))
            .args(["serve", "--addr", addr])
            .envs(env.env())
            .env("BACKFILL_CONSOLE_TOKENS", tokens)
            .env("RUST_LOG", "warn")
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut warned = false;
        let url = loop {
            let line = tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line())
                .await
                .expect("backfill serve says where it listens")
                .unwrap()
                .expect("backfill serve exited early");
            warned |= line.starts_with("warning: the console on");
            if let Some(rest) = line.strip_prefix("console on http://") {
                break rest.split('/').next().unwrap().to_owned();
            }
        };
        assert_eq!(warned, warns, "{addr}");
        let port = url.rsplit(':').next().unwrap();
        let (status, page) = http_get(&format!("127.0.0.1:{port}"), "/").await;
        assert_eq!(status, 200);
        assert!(page.contains("No run matches"), "{page}");
        child.kill().await.unwrap();
    }
    env.cleanup().await;
}

const TOKENS: &str = "alice:alice-token-0123456789,bob:bob-token-0123456789abc,\
carol:carol-token-0123456789,mallory:mallory-token-0123456789";

fn bearer(who: &str) -> String {
    let token = TOKENS
        .split(',')
        .find_map(|p| p.strip_prefix(&format!("{who}:")))
        .unwrap();
    format!("Bearer {token}")
}

struct Console<'a> {
    addr: String,
    env: &'a TestEnv,
    run_id: uuid::Uuid,
}

impl Console<'_> {
    /// The run's page as `who` sees it.
    async fn page_of(&self, who: &str) -> String {
        self.get_as(who, &format!("/runs/{}", self.run_id)).await
    }

    async fn get_as(&self, who: &str, path: &str) -> String {
        let auth = bearer(who);
        let (status, page) =
            backfill_tests::http(&self.addr, "GET", path, &[("Authorization", &auth)], "").await;
        assert_eq!(status, 200);
        page
    }

    /// What the runs page's "Needs you" says to `who` of this run, if it
    /// lists it.
    async fn needs(&self, who: &str) -> Option<String> {
        let page = self.get_as(who, "/").await;
        let start = page
            .find("<section class=\"needs\">")
            .expect("a Needs you section");
        let section = &page[start..start + page[start..].find("</section>").unwrap()];
        section
            .split("<li>")
            .find(|item| item.contains(&self.run_id.to_string()))
            .map(str::to_owned)
    }

    /// The CSRF token `who`'s forms on the run's page carry.
    async fn csrf_of(&self, who: &str) -> String {
        backfill_tests::form_csrf(&self.page_of(who).await)
    }

    /// `POST`s the action as `who` (no login when `None`) with `csrf`,
    /// confirmed (a cancel, rollback or cutover asks first otherwise).
    async fn act(
        &self,
        who: Option<&str>,
        action: &str,
        csrf: &str,
        reason: &str,
    ) -> (u16, String) {
        self.post(
            who,
            action,
            &format!("csrf={csrf}&reason={reason}&confirm=yes"),
        )
        .await
    }

    /// `POST`s the action as `who` with `body`.
    async fn post(&self, who: Option<&str>, action: &str, body: &str) -> (u16, String) {
        let auth = who.map(bearer);
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        backfill_tests::http(
            &self.addr,
            "POST",
            &format!("/runs/{}/actions/{action}", self.run_id),
            &headers,
            body,
        )
        .await
    }

    /// The action posted as `who` without confirming: the page that asks,
    /// saying `says`, and nothing changed.
    async fn asks_first(&self, who: &str, action: &str, csrf: &str, says: &str) {
        let state = self.state().await;
        let (status, page) = self
            .post(Some(who), action, &format!("csrf={csrf}&reason="))
            .await;
        assert_eq!(status, 200, "{page}");
        assert!(
            page.contains(&format!("Confirm {action}"))
                && page.contains(says)
                && page.contains("name=\"confirm\" value=\"yes\""),
            "{page}"
        );
        assert_eq!(self.state().await, state, "{action} was taken unconfirmed");
    }

    async fn state(&self) -> String {
        sqlx::query_scalar("SELECT state FROM backfill.runs WHERE run_id = $1")
            .bind(self.run_id)
            .fetch_one(&self.env.pool)
            .await
            .unwrap()
    }

    async fn logged(&self, event: &str) -> Vec<(String, String)> {
        sqlx::query_as(
            "SELECT actor, session_role::text FROM backfill.run_log WHERE run_id = $1 AND event = $2 ORDER BY id",
        )
        .bind(self.run_id)
        .bind(event)
        .fetch_all(&self.env.pool)
        .await
        .unwrap()
    }

    /// Refused with 403, the run still in `state`, nothing logged as `event`.
    async fn refused(&self, (status, page): (u16, String), state: &str, event: &str, says: &str) {
        assert_eq!(status, 403, "{page}");
        assert!(page.contains(says), "{says:?} not in {page}");
        assert_eq!(self.state().await, state);
        assert!(self.logged(event).await.is_empty(), "{event} was logged");
    }
}

/// Every action is taken for the person allowed it, as that person in the
/// database and the run log, and refused with 403 (nothing changed, nothing
/// logged) without a login, with a forged CSRF token, for a login nobody in
/// `backfill.people`, for someone neither owner nor reviewer, and for the owner
/// approving.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn actions_are_taken_for_the_people_allowed_them_and_refused_for_others() {
    let env = TestEnv::new(0.01).await;
    // alice (the owner) is the test's login, bob its reviewer's role; carol is
    // neither.
    backfill_shared::control::people::put(
        &env.pool,
        &backfill_shared::control::people::Person {
            name: "carol".into(),
            role: "carol_role".into(),
            email: None,
        },
    )
    .await
    .unwrap();
    let alice_role: String = sqlx::query_scalar("SELECT session_user::text")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    let bob_role = backfill_tests::REVIEWER_ROLE.to_owned();
    let wrong_before = env.differences().await;
    let (run_id, ..) = env.record_run(&env.brief(6, 2).await).await;
    let auth = console::Auth {
        tokens: console::Auth::parse_tokens(TOKENS).unwrap(),
        ..console::Auth::default()
    };
    let c = Console {
        addr: serve(&env, auth).await,
        env: &env,
        run_id,
    };
    assert_eq!(c.state().await, "running");

    // Pausing: anyone in backfill.people, with their own CSRF token.
    let carol = c.csrf_of("carol").await;
    let mallory = c.csrf_of("mallory").await;
    c.refused(
        c.act(None, "pause", &carol, "").await,
        "running",
        "run_paused",
        "log in first",
    )
    .await;
    c.refused(
        c.act(Some("alice"), "pause", &carol, "").await,
        "running",
        "run_paused",
        "CSRF",
    )
    .await;
    c.refused(
        c.act(Some("mallory"), "pause", &mallory, "").await,
        "running",
        "run_paused",
        "nobody in backfill.people",
    )
    .await;
    let (status, page) = c.act(Some("carol"), "pause", &carol, "").await;
    assert_eq!(status, 303, "{page}");
    assert_eq!(c.state().await, "paused");
    assert_eq!(
        c.logged("run_paused").await,
        [("carol".into(), "carol_role".into())]
    );

    // Resuming is the owner's or the reviewer's; the console then drives the run.
    c.refused(
        c.act(Some("carol"), "resume", &carol, "").await,
        "paused",
        "run_running",
        "only the run's owner (alice) or reviewer (bob)",
    )
    .await;
    let alice = c.csrf_of("alice").await;
    let (status, page) = c.act(Some("alice"), "resume", &alice, "").await;
    assert_eq!(status, 303, "{page}");
    let workers = env.workers(2).await;
    let applied = tokio::time::timeout(std::time::Duration::from_secs(120), async {
        while c.state().await != "applied" {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    })
    .await;
    workers.stop().await;
    assert!(
        applied.is_ok(),
        "the console's drive applies the run: {}",
        c.state().await
    );
    // Applied, the run awaits its validation: no approve yet; the owner
    // validates from the console, and then it awaits bob's approval.
    let page = c.page_of("bob").await;
    assert!(
        page.contains("Waiting for <strong>alice or bob</strong> to validate it.")
            && page.contains("/actions/validate")
            && !page.contains("/actions/approve"),
        "{page}"
    );
    let needs = c.needs("alice").await.expect("alice is to validate");
    assert!(needs.contains("validate it"), "{needs}");
    assert!(c.needs("carol").await.is_none());
    let (status, page) = c.act(Some("alice"), "validate", &alice, "").await;
    assert_eq!(status, 303, "{page}");
    assert!(c.needs("alice").await.is_none(), "approving is bob's");
    let needs = c.needs("bob").await.expect("bob is to approve");
    assert!(needs.contains("approve it"), "{needs}");
    let page = c.page_of("bob").await;
    assert!(
        page.contains("Waiting for <strong>bob</strong> to approve it. <span class=\"you\">Your decision.</span>"),
        "{page}"
    );
    assert!(page.contains("/actions/approve"), "{page}");

    // Approving is the reviewer's, never the owner's; the database sees bob's role.
    c.refused(
        c.act(Some("alice"), "approve", &alice, "").await,
        "applied",
        "run_approved",
        "alice owns this run and cannot approve it",
    )
    .await;
    let approved_by: Option<String> =
        sqlx::query_scalar("SELECT approved_by FROM backfill.runs WHERE run_id = $1")
            .bind(run_id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(approved_by, None);
    let bob = c.csrf_of("bob").await;
    let (status, page) = c.act(Some("bob"), "approve", &bob, "").await;
    assert_eq!(status, 303, "{page}");
    assert_eq!(c.state().await, "approved");
    let approvals: Vec<(String, String)> = sqlx::query_as(
        "SELECT actor, session_role::text FROM backfill.run_log WHERE run_id = $1 AND event LIKE '%approved%'",
    )
    .bind(run_id)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(approvals, [("bob".to_owned(), bob_role)]);

    // A second approval is the state's to refuse: 409, with the reason.
    let (status, page) = c.act(Some("bob"), "approve", &bob, "").await;
    assert_eq!(status, 409, "{page}");
    assert!(page.contains("already approved"), "{page}");

    // Cutover, by the owner; the run page then offers bob only a rollback.
    c.asks_first(
        "alice",
        "cutover",
        &alice,
        "exposes the run to everyone who reads",
    )
    .await;
    let (status, page) = c.act(Some("alice"), "cutover", &alice, "").await;
    assert_eq!(status, 303, "{page}");
    assert_eq!(c.state().await, "cut_over");
    let (_, page) = backfill_tests::http(
        &c.addr,
        "GET",
        &format!("/runs/{run_id}"),
        &[("Authorization", &bearer("bob"))],
        "",
    )
    .await;
    assert!(page.contains("signed in as bob"), "{page}");
    assert!(page.contains("/actions/rollback"));
    assert!(!page.contains("/actions/approve") && !page.contains("/actions/pause"));

    // Rolling back is the owner's or the reviewer's: carol may not, bob may.
    c.refused(
        c.act(Some("carol"), "rollback", &carol, "").await,
        "cut_over",
        "run_rolled_back",
        "only the run's owner (alice) or reviewer (bob)",
    )
    .await;
    assert!(
        page.contains("class=\"danger\""),
        "rollback looks unlike approve: {page}"
    );
    c.asks_first("bob", "rollback", &bob, "6 applied batch(es) undone")
        .await;
    let (status, page) = c.act(Some("bob"), "rollback", &bob, "").await;
    assert_eq!(status, 303, "{page}");
    assert_eq!(c.state().await, "rolled_back");
    assert!(wrong_before > 0);
    assert_eq!(
        env.differences().await,
        wrong_before,
        "the target is as it was"
    );

    // A second run on the target: retried (nothing failed: its drive goes on)
    // and cancelled by its owner; every action logged with the person.
    let (second, ..) = env.record_run(&env.slow_brief(20, 1, 0.3).await).await;
    let c = Console {
        run_id: second,
        ..c
    };
    let (status, page) = c.act(Some("alice"), "retry", &alice, "").await;
    assert_eq!(status, 303, "{page}");
    c.asks_first("alice", "cancel", &alice, "stops the run for good")
        .await;
    let (status, page) = c.act(Some("alice"), "cancel", &alice, "").await;
    assert_eq!(status, 303, "{page}");
    assert_eq!(c.state().await, "cancelled");
    assert_eq!(
        c.logged("run_cancelled").await,
        [("alice".into(), alice_role)]
    );
    env.cleanup().await;
}

/// The login page sets a cookie that logs the browser in; a wrong token is
/// refused; `--require-login` keeps pages and the API from anyone without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_in_with_a_token_and_requiring_a_login() {
    let env = TestEnv::new(0.01).await;
    let addr = serve(
        &env,
        console::Auth {
            tokens: console::Auth::parse_tokens(TOKENS).unwrap(),
            require_login: true,
            ..console::Auth::default()
        },
    )
    .await;
    assert_eq!(http_get(&addr, "/").await.0, 303);
    let (status, body) = http_get(&addr, "/api/runs").await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(http_get(&addr, "/healthz").await.0, 200);
    let (status, page) = http_get(&addr, "/login").await;
    assert_eq!(status, 200);
    assert!(page.contains("name=\"token\""));
    let (status, page) =
        backfill_tests::http(&addr, "POST", "/login", &[], "token=not-a-token-0123456789").await;
    assert_eq!(status, 403, "{page}");
    // The login page opens a session: the cookie holds a random id, never
    // the token, and says HttpOnly, SameSite=Strict, Secure and when it ends.
    let (status, head, _) = backfill_tests::http_with_headers(
        &addr,
        "POST",
        "/login",
        &[],
        "token=carol-token-0123456789",
    )
    .await;
    assert_eq!(status, 303);
    let set = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .unwrap_or_else(|| panic!("no cookie set: {head}"));
    assert!(!set.contains("carol-token"), "{set}");
    for part in ["HttpOnly", "SameSite=Strict", "Secure", "Max-Age=43200"] {
        assert!(set.contains(part), "{part} not in {set}");
    }
    let cookie = set.split(';').next().unwrap().to_owned();
    assert_eq!(
        cookie.len(),
        "backfill_console_session=".len() + 64,
        "{cookie}"
    );
    let (status, page) = backfill_tests::http(&addr, "GET", "/", &[("Cookie", &cookie)], "").await;
    assert_eq!(status, 200);
    assert!(page.contains("signed in as carol"), "{page}");
    let old_style = "backfill_console_session=carol-token-0123456789";
    assert_eq!(
        backfill_tests::http(&addr, "GET", "/", &[("Cookie", old_style)], "")
            .await
            .0,
        303,
        "a token in the cookie logs nobody in"
    );
    // Every response carries the policy headers.
    let (_, head, _) =
        backfill_tests::http_with_headers(&addr, "GET", "/", &[("Cookie", &cookie)], "").await;
    for header in [
        "content-security-policy: default-src 'self'",
        "x-frame-options: DENY",
        "x-content-type-options: nosniff",
        "referrer-policy: same-origin",
    ] {
        assert!(head.contains(header), "{header} not in:\n{head}");
    }
    // /metrics is behind the login too; the bearer scheme in any case.
    assert_eq!(http_get(&addr, "/metrics").await.0, 401);
    let lower = bearer("bob").replace("Bearer", "bearer");
    let (status, metrics) =
        backfill_tests::http(&addr, "GET", "/metrics", &[("Authorization", &lower)], "").await;
    assert_eq!(status, 200, "{metrics}");
    // Logging out ends the session: its cookie logs nobody in any more.
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no CSRF token on the page"))
        .to_owned();
    let (status, _) = backfill_tests::http(
        &addr,
        "POST",
        "/logout",
        &[("Cookie", &cookie)],
        &format!("csrf={csrf}"),
    )
    .await;
    assert_eq!(status, 303);
    assert_eq!(
        backfill_tests::http(&addr, "GET", "/", &[("Cookie", &cookie)], "")
            .await
            .0,
        303,
        "the session outlived its logout"
    );
    let (status, _) = backfill_tests::http(
        &addr,
        "GET",
        "/api/runs",
        &[("Authorization", &bearer("bob"))],
        "",
    )
    .await;
    assert_eq!(status, 200);
    env.cleanup().await;
}

/// Every API answer is JSON, errors included, with a 4xx status; a `limit`
/// outside 1 to 1,000 is refused; pages come gzip-compressed to a browser
/// that takes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_json_and_pages_come_compressed() {
    let env = TestEnv::new(0.01).await;
    let (run_id, ..) = env.record_run(&env.brief(6, 2).await).await;
    let addr = serve(&env, console::Auth::default()).await;
    for (path, status) in [
        ("/api/runs?limit=abc", 400),
        ("/api/runs?limit=0", 400),
        ("/api/runs?limit=-5", 400),
        ("/api/runs?limit=1001", 400),
        ("/api/runs/%ff%fe", 400),
        ("/api/runs/x/extra", 404),
        ("/api/nothing", 404),
        ("/api/runs/ffffffff", 404),
    ] {
        let (code, headers, body) =
            backfill_tests::http_with_headers(&addr, "GET", path, &[], "").await;
        assert_eq!(code, status, "{path}: {body}");
        assert!(
            headers.contains("content-type: application/json"),
            "{path}: {headers}"
        );
        let error: Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
        assert!(
            error["error"].as_str().is_some_and(|m| !m.is_empty()),
            "{path}: {body}"
        );
    }
    let (code, _, body) =
        backfill_tests::http_with_headers(&addr, "GET", "/api/runs?limit=1", &[], "").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body)
            .unwrap()
            .as_array()
            .map(Vec::len),
        Some(1)
    );

    // Compressed for a browser that takes gzip; as is for one that does not.
    let page = format!("/runs/{run_id}");
    let (code, headers, _) =
        backfill_tests::http_with_headers(&addr, "GET", &page, &[("Accept-Encoding", "gzip")], "")
            .await;
    assert_eq!(code, 200);
    assert!(headers.contains("content-encoding: gzip"), "{headers}");
    let (_, headers, body) = backfill_tests::http_with_headers(&addr, "GET", &page, &[], "").await;
    assert!(!headers.contains("content-encoding"), "{headers}");
    assert!(body.contains("order-revenue-refunds"));
    env.cleanup().await;
}
