//! Test support: every test gets its own database (a fresh copy of the control
//! plane and of TPC-H data) and its own namespace (queue names, Redis keys), so
//! tests run in parallel against the real services without sharing state.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod bench;
pub mod receiver;
pub mod ship_revenue;

use backfill_coordinator::demo;
use backfill_coordinator::run::{self, DriveOptions, Finish};
use backfill_shared::brief::{BatchRange, Brief};
use backfill_shared::config::Config;
use backfill_shared::control::{self, batches};
use backfill_shared::topology::Topology;
use lapin::options::QueueDeleteOptions;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, PgPool};
use std::path::PathBuf;
use std::str::FromStr as _;
use uuid::Uuid;

/// The TPC-H schema every test database holds.
pub const SCHEMA: &str = "tpch";

/// How long one `backfill` command of a test may take: one that hangs fails
/// its test with what it printed, rather than holding the suite.
const CLI_LIMIT: std::time::Duration = std::time::Duration::from_secs(300);

/// All a child's pipe gives until it closes, as text.
async fn read_to_end(pipe: Option<impl tokio::io::AsyncRead + Unpin>) -> String {
    use tokio::io::AsyncReadExt as _;
    let mut bytes = Vec::new();
    if let Some(mut pipe) = pipe {
        let _ = pipe.read_to_end(&mut bytes).await;
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The database role the briefs' reviewer (bob) is, in a test's world: not a
/// login; the test's own (superuser) session acts for it, as the console does
/// for the person logged in (migration 0013).
pub const REVIEWER_ROLE: &str = "bf_test_reviewer";

/// One test's world: its database, namespace and config.
#[derive(Debug)]
pub struct TestEnv {
    pub config: Config,
    /// The session of the briefs' owner (alice), who runs them.
    pub pool: PgPool,
    /// Connections acting for the briefs' reviewer (bob).
    pub reviewer: PgPool,
    pub database: String,
    admin: PgPool,
}

impl TestEnv {
    /// A fresh database holding the control plane and TPC-H at `scale`, with the
    /// buggy `tpch.order_revenue` the demo backfill fixes.
    pub async fn new(scale: f64) -> Self {
        let base = Config::from_env().expect("BACKFILL_* variables are invalid");
        let id = Uuid::new_v4().simple().to_string();
        let database = format!("bf_test_{}", &id[..12]);
        let admin = backfill_shared::services::postgres(&base, 2)
            .await
            .expect("PostgreSQL must be running for the tests (see README)");
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {database}")))
            .execute(&admin)
            .await
            .expect("create test database");
        let url = replace_database(&base.database_url, &database);
        let config = base
            .with_database_url(&url)
            .with_namespace(&format!("bf-test-{}", &id[..12]));
        let pool = backfill_shared::services::postgres(&config, 10)
            .await
            .expect("connect to the test database");
        control::migrate(&pool).await.expect("migrate");
        // The briefs' owner is this session's role; their reviewer is acted for.
        let role: String = sqlx::query_scalar("SELECT session_user::text")
            .fetch_one(&pool)
            .await
            .expect("session user");
        for (name, role) in [("alice", role.as_str()), ("bob", REVIEWER_ROLE)] {
            control::people::put(
                &pool,
                &control::people::Person {
                    name: name.into(),
                    role: role.into(),
                    email: None,
                },
            )
            .await
            .expect("map the owner and the reviewer");
        }
        let reviewer = control::people::acting_for(&pool, REVIEWER_ROLE)
            .await
            .expect("the tests' login acts for the reviewer");
        backfill_coordinator::tpch::load(&pool, SCHEMA, scale)
            .await
            .expect("load TPC-H");
        demo::build_buggy_target(&pool, SCHEMA)
            .await
            .expect("build order_revenue");
        Self {
            config,
            pool,
            reviewer,
            database,
            admin,
        }
    }

    /// The demo's brief, fixing `tpch.order_revenue` in about `batches` batches.
    pub async fn brief(&self, batches: i64, max_in_flight: u32) -> String {
        demo::brief_text(&self.pool, SCHEMA, batches, max_in_flight)
            .await
            .expect("brief")
    }

    /// The demo's brief cut into `batches` batches of one order key each, for
    /// large runs that are recorded rather than driven.
    pub async fn key_per_batch_brief(&self, batches: u64) -> String {
        let text = self.brief(1, 1).await;
        let start = text
            .find("batch_by = ")
            .expect("the demo brief has batch_by");
        let end = start + text[start..].find('\n').expect("batch_by ends its line");
        format!(
            "{}batch_by = {{ column = \"o_orderkey\", start = 1, end = {}, step = 1 }}{}",
            &text[..start],
            batches + 1,
            &text[end..]
        )
    }

    /// The demo's brief with every batch sleeping `secs` in the warehouse, so
    /// batches are in flight long enough to interfere with (`pg_sleep` is
    /// volatile: the brief says why that is harmless).
    pub async fn slow_brief(&self, batches: i64, max_in_flight: u32, secs: f64) -> String {
        let slow = self.brief(batches, max_in_flight).await.replace(
            " GROUP BY o.o_orderkey",
            &format!(" AND (SELECT pg_sleep({secs})) IS NOT NULL GROUP BY o.o_orderkey"),
        );
        in_scope(
            &slow,
            "volatile_ok = \"pg_sleep only slows each batch down\"",
        )
    }

    /// Rolls the run back as its owner with `--overwrite-newer`: what the
    /// tests do once a refusal was seen.
    pub async fn rollback_overwriting(
        &self,
        run_id: Uuid,
    ) -> backfill_coordinator::lifecycle::rollback::RollbackReport {
        use backfill_coordinator::lifecycle::rollback::{self, RollbackOptions};
        let report = rollback::rollback(
            &self.pool,
            run_id,
            "alice",
            RollbackOptions {
                overwrite_newer: true,
                ..RollbackOptions::default()
            },
        )
        .await
        .expect("rollback --overwrite-newer");
        println!("{}", report.render());
        report
    }

    /// Records a run of `text` (all batches pending) without driving it.
    pub async fn record_run(&self, text: &str) -> (Uuid, Brief, Vec<BatchRange>) {
        let brief = Brief::parse(text).expect("test brief lints");
        let plan = brief.scope.batch_by.plan().expect("test brief plans");
        let run_id = run::create(&self.pool, text, &brief, &plan)
            .await
            .expect("record run");
        (run_id, brief, plan)
    }

    /// Drives a recorded run on a task of its own, without a progress bar.
    #[must_use]
    pub fn drive_in_background(
        &self,
        run_id: Uuid,
    ) -> tokio::task::JoinHandle<backfill_coordinator::Result<Finish>> {
        self.drive_with(
            run_id,
            DriveOptions {
                progress: false,
                ..DriveOptions::default()
            },
        )
    }

    /// The same with other options (a quicker reconcile, a shorter cool-down).
    #[must_use]
    pub fn drive_with(
        &self,
        run_id: Uuid,
        options: DriveOptions,
    ) -> tokio::task::JoinHandle<backfill_coordinator::Result<Finish>> {
        let (config, pool) = (self.config.clone(), self.pool.clone());
        tokio::spawn(async move { run::drive(&config, &pool, run_id, options).await })
    }

    /// In-process workers (default options) pointed at this test's world.
    pub async fn workers(&self, count: u16) -> backfill_worker::InProcessWorkers {
        backfill_worker::InProcessWorkers::start(
            &self.config,
            count,
            &backfill_worker::WorkerOptions::default(),
        )
        .await
        .expect("start in-process workers")
    }

    /// Drives a recorded run to its end with `count` in-process workers, then stops them.
    pub async fn run_to_end(&self, run_id: Uuid, count: u16) -> Finish {
        let workers = self.workers(count).await;
        let finish = finish_within(self.drive_in_background(run_id), 120).await;
        workers.stop().await;
        finish
    }

    /// A `backfill-worker` process pointed at this test's world; killed when dropped.
    #[must_use]
    pub fn spawn_worker(&self, args: &[&str]) -> tokio::process::Child {
        tokio::process::Command::new(bin("backfill-worker"))
            .args(args)
            .envs(self.env())
            .env("RUST_LOG", "error")
            .kill_on_drop(true)
            .spawn()
            .expect("start backfill-worker")
    }

    /// A broker channel in confirm mode, with the namespace's topology declared.
    pub async fn channel(&self) -> (lapin::Connection, lapin::Channel, Topology) {
        let conn = backfill_shared::services::rabbit(&self.config, "test")
            .await
            .expect("RabbitMQ must be running for the tests");
        let channel = conn.create_channel().await.expect("channel");
        channel
            .confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await
            .expect("confirm mode");
        let topology = Topology::new(&self.config.namespace);
        topology.declare(&channel).await.expect("declare topology");
        (conn, channel, topology)
    }

    /// Rows of the target that differ from an independent recomputation.
    pub async fn differences(&self) -> i64 {
        demo::differences_from_recomputation(&self.pool, SCHEMA)
            .await
            .expect("recompute")
    }

    /// Runs the `backfill` CLI with `args` against this test's world: its exit
    /// code, stdout and stderr.
    pub async fn cli(&self, args: &[&str]) -> (Option<i32>, String, String) {
        self.cli_with(args, &[]).await
    }

    /// The same, as the briefs' reviewer (bob).
    pub async fn cli_as_reviewer(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let acting = format!("-c backfill.acting_role={REVIEWER_ROLE}");
        self.cli_with(args, &[("PGOPTIONS", acting.as_str())]).await
    }

    /// The same, with `vars` set too.
    pub async fn cli_with(
        &self,
        args: &[&str],
        vars: &[(&str, &str)],
    ) -> (Option<i32>, String, String) {
        let mut child = tokio::process::Command::new(bin("backfill"))
            .args(args)
            .envs(self.env())
            .env("RUST_LOG", "warn")
            .envs(vars.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run backfill");
        let stdout = tokio::spawn(read_to_end(child.stdout.take()));
        let stderr = tokio::spawn(read_to_end(child.stderr.take()));
        let ended = tokio::time::timeout(CLI_LIMIT, child.wait()).await;
        if ended.is_err() {
            let _ = child.kill().await;
        }
        let (stdout, stderr) = (stdout.await.unwrap(), stderr.await.unwrap());
        let Ok(status) = ended else {
            panic!(
                "`backfill {}` did not end within {} s; it printed:\n{stdout}\n{stderr}",
                args.join(" "),
                CLI_LIMIT.as_secs()
            );
        };
        (status.expect("wait for backfill").code(), stdout, stderr)
    }

    /// Environment variables that point a child process at this test's world.
    #[must_use]
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("BACKFILL_DATABASE_URL", self.config.database_url.clone()),
            ("BACKFILL_AMQP_URL", self.config.amqp_url.clone()),
            ("BACKFILL_REDIS_URL", self.config.redis_url.clone()),
            ("BACKFILL_NAMESPACE", self.config.namespace.clone()),
        ]
    }

    /// Batches applied more or less than once according to the run log.
    pub async fn not_applied_exactly_once(&self, run_id: Uuid) -> Vec<(i32, i64)> {
        sqlx::query_as(
            "SELECT b.batch_no, count(l.id)
               FROM backfill.batches b
               LEFT JOIN backfill.run_log l
                 ON l.run_id = b.run_id AND l.batch_no = b.batch_no AND l.event = 'batch_applied'
              WHERE b.run_id = $1
              GROUP BY b.batch_no HAVING count(l.id) <> 1 ORDER BY 1",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await
        .expect("ledger query")
    }

    /// How many entries of `event` the run's log holds.
    pub async fn logged(&self, run_id: Uuid, event: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM backfill.run_log WHERE run_id = $1 AND event = $2")
            .bind(run_id)
            .bind(event)
            .fetch_one(&self.pool)
            .await
            .expect("run log query")
    }

    /// Keeps a copy of the target as it is now (`tpch.pre_run`), to compare with later.
    pub async fn keep_pre_run_copy(&self) {
        sqlx::query("CREATE TABLE tpch.pre_run AS SELECT * FROM tpch.order_revenue")
            .execute(&self.pool)
            .await
            .expect("copy the target");
    }

    /// Rows in which the target and the pre-run copy differ (`EXCEPT ALL` both
    /// ways), and whether their row counts match.
    pub async fn differs_from_pre_run(&self) -> (i64, bool) {
        sqlx::query_as(
            "SELECT (SELECT count(*) FROM (SELECT * FROM tpch.order_revenue EXCEPT ALL SELECT * FROM tpch.pre_run) a)
                  + (SELECT count(*) FROM (SELECT * FROM tpch.pre_run EXCEPT ALL SELECT * FROM tpch.order_revenue) b),
                    (SELECT count(*) FROM tpch.order_revenue) = (SELECT count(*) FROM tpch.pre_run)",
        )
        .fetch_one(&self.pool)
        .await
        .expect("compare with the pre-run copy")
    }

    /// Rows in which `a` and `b` (tables, or parenthesised queries with an
    /// alias) differ, `EXCEPT ALL` both ways, among the rows `filter` picks.
    pub async fn differing_rows(&self, a: &str, b: &str, filter: &str) -> i64 {
        sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT (SELECT count(*) FROM (SELECT * FROM {a} WHERE {filter} EXCEPT ALL SELECT * FROM {b} WHERE {filter}) x)
                  + (SELECT count(*) FROM (SELECT * FROM {b} WHERE {filter} EXCEPT ALL SELECT * FROM {a} WHERE {filter}) y)"
        )))
        .fetch_one(&self.pool)
        .await
        .expect("compare two tables")
    }

    /// The end state every run must reach: the target equals an independent
    /// recomputation and the run log shows each batch applied exactly once.
    pub async fn assert_exactly_applied(&self, run_id: Uuid) {
        assert_eq!(
            self.differences().await,
            0,
            "target differs from the recomputation"
        );
        let wrong = self.not_applied_exactly_once(run_id).await;
        assert!(
            wrong.is_empty(),
            "batches not applied exactly once: {wrong:?}"
        );
    }

    /// Drops the database and the namespace's queues.
    pub async fn cleanup(self) {
        let runs: Vec<Uuid> = sqlx::query_scalar("SELECT run_id FROM backfill.runs")
            .fetch_all(&self.pool)
            .await
            .unwrap_or_default();
        // Whatever the test did, the totals the ledger keeps equal its rows:
        // read in one snapshot, as a coordinator a test left behind may
        // still move batches.
        for &run_id in &runs {
            let mut snapshot = self.pool.begin().await.expect("begin");
            sqlx::raw_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(&mut *snapshot)
                .await
                .expect("one snapshot");
            let kept = batches::counts(&mut *snapshot, run_id)
                .await
                .expect("totals");
            let counted = batches::recount(&mut *snapshot, run_id)
                .await
                .expect("recount");
            drop(snapshot);
            assert!(
                kept.applied_ms_spread.abs_diff(counted.applied_ms_spread) <= 1
                    && batches::Counts {
                        applied_ms_spread: 0,
                        ..kept
                    } == batches::Counts {
                        applied_ms_spread: 0,
                        ..counted
                    },
                "run {run_id}: the ledger's totals {kept:?} are not its rows {counted:?}"
            );
        }
        if let Ok(conn) = backfill_shared::services::rabbit(&self.config, "test cleanup").await
            && let Ok(ch) = conn.create_channel().await
        {
            let t = Topology::new(&self.config.namespace);
            // Runs that did not complete keep their event queues.
            let queues = [t.batches.clone(), t.dead.clone()]
                .into_iter()
                .chain(runs.into_iter().map(|r| t.run_events_queue(r)));
            for q in queues {
                let _ = ch
                    .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
            let _ = conn.close(200, "cleanup".into()).await;
        }
        self.reviewer.close().await;
        self.pool.close().await;
        let _ = sqlx::query(AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.database
        )))
        .execute(&self.admin)
        .await;
    }
}

/// Database logins of a test's people, one per name, each in a group role of
/// `deploy/roles.sql` (applied first), mapped to that name in `backfill.people`
/// when asked. Roles are the cluster's: [`Logins::drop`] them after the test.
#[derive(Debug)]
pub struct Logins {
    prefix: String,
    pools: Vec<(String, PgPool)>,
    /// The test's database URL, as the administrator.
    url: String,
}

impl TestEnv {
    /// `people`: (name, group role, whether `backfill.people` maps the name to it).
    pub async fn logins(&self, people: &[(&str, &str, bool)]) -> Logins {
        sqlx::raw_sql(AssertSqlSafe(include_str!("../../deploy/roles.sql")))
            .execute(&self.pool)
            .await
            .expect("deploy/roles.sql applies");
        // As a site grants: everyone reads what the sources read (a reviewer
        // validates before approving).
        sqlx::raw_sql(AssertSqlSafe(format!(
            "GRANT USAGE ON SCHEMA {SCHEMA} TO backfill_viewer;
             GRANT SELECT ON ALL TABLES IN SCHEMA {SCHEMA} TO backfill_viewer;"
        )))
        .execute(&self.pool)
        .await
        .expect("grant reading the warehouse");
        let prefix = format!("bf_{}", &self.database["bf_test_".len()..]);
        let mut pools = Vec::new();
        for (who, group, mapped) in people {
            let role = format!("{prefix}_{who}");
            sqlx::query(AssertSqlSafe(format!(
                "CREATE ROLE {role} LOGIN IN ROLE {group}"
            )))
            .execute(&self.pool)
            .await
            .expect("create a login");
            if *mapped {
                control::people::put(
                    &self.pool,
                    &control::people::Person {
                        name: (*who).into(),
                        role: role.clone(),
                        email: Some(format!("{who}@example.com")),
                    },
                )
                .await
                .expect("map a person");
            }
            let options = PgConnectOptions::from_str(&self.config.database_url)
                .expect("database URL")
                .username(&role);
            let pool = PgPoolOptions::new()
                .max_connections(2)
                .connect_with(options)
                .await
                .unwrap_or_else(|e| panic!("connect as {role}: {e}"));
            pools.push(((*who).to_owned(), pool));
        }
        Logins {
            prefix,
            pools,
            url: self.config.database_url.clone(),
        }
    }
}

impl Logins {
    /// The database role `who` logs in as.
    #[must_use]
    pub fn role(&self, who: &str) -> String {
        format!("{}_{who}", self.prefix)
    }

    /// The test's database URL with `who`'s role as its user.
    #[must_use]
    pub fn url(&self, who: &str) -> String {
        let (scheme, rest) = self.url.split_once("://").expect("a database URL");
        let rest = rest.split_once('@').map_or(rest, |(_, r)| r);
        format!("{scheme}://{}@{rest}", self.role(who))
    }

    /// A pool connected as `who`.
    #[must_use]
    pub fn pool(&self, who: &str) -> &PgPool {
        &self
            .pools
            .iter()
            .find(|(w, _)| w == who)
            .unwrap_or_else(|| panic!("no login for {who}"))
            .1
    }

    /// Closes the pools and drops the roles: after [`TestEnv::cleanup`], which
    /// drops the database their privileges are in.
    pub async fn drop(self) {
        let admin = backfill_shared::services::postgres(
            &Config::from_env().expect("BACKFILL_* variables"),
            1,
        )
        .await
        .expect("connect as the administrator");
        for (who, pool) in self.pools {
            pool.close().await;
            sqlx::query(AssertSqlSafe(format!(
                "DROP ROLE IF EXISTS {}_{who}",
                self.prefix
            )))
            .execute(&admin)
            .await
            .expect("drop a login");
        }
    }
}

/// Where a worker's plan of a batch writes its before-images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Images {
    /// The run's image table, as the run recorded it.
    Kept,
    None,
}

impl TestEnv {
    /// Validates an applied run and approves it as its reviewer, bob.
    pub async fn validate_and_approve(&self, run_id: Uuid) {
        backfill_coordinator::validate::validate(&self.pool, run_id)
            .await
            .expect("validate");
        backfill_coordinator::lifecycle::approve::approve(&self.reviewer, run_id, Some("bob"))
            .await
            .expect("bob approves");
    }

    /// The statements a worker applies `brief`'s batches of the run with,
    /// writing its target (`partitioned`, when it is).
    pub async fn write_plan(
        &self,
        run_id: Uuid,
        brief: &Brief,
        partitioned: bool,
        images: Images,
    ) -> backfill_worker::apply::WritePlan {
        let image = match images {
            Images::Kept => control::runs::load(&self.pool, run_id)
                .await
                .expect("load the run")
                .image_table
                .as_deref()
                .and_then(backfill_shared::sql::TableName::parse),
            Images::None => None,
        };
        let types = backfill_worker::apply::column_types(
            &mut self.pool.acquire().await.expect("a connection"),
            &brief.scope.target,
        )
        .await
        .expect("the target's columns");
        backfill_worker::apply::WritePlan::new(
            brief,
            &brief.scope.target,
            partitioned,
            &types,
            image.as_ref(),
        )
    }

    /// Claims `batch` of the run on `pool` as worker `w`: the work to apply
    /// under the fence it was granted.
    pub async fn claimed(
        &self,
        pool: &PgPool,
        run_id: Uuid,
        batch: &BatchRange,
    ) -> backfill_worker::apply::BatchWork {
        let bounds = (batch.lo.to_string(), batch.hi.to_string());
        let batches::Claim::Granted { fence } =
            batches::claim(pool, run_id, batch.no, (&bounds.0, &bounds.1), "w")
                .await
                .expect("claim")
        else {
            panic!("the claim of batch {} was refused", batch.no)
        };
        backfill_worker::apply::BatchWork {
            run_id,
            batch_no: batch.no,
            lo: batch.lo,
            hi: batch.hi,
            fence,
        }
    }
}

/// `text` (a brief whose `[write]` follows `[scope]`) with `lines` added at
/// the end of `[scope]`: a field, or a `[[scope.periods]]` table.
#[must_use]
pub fn in_scope(text: &str, lines: &str) -> String {
    text.replace("\n[write]", &format!("{lines}\n\n[write]"))
}

impl TestEnv {
    /// Plans `text` and returns why the plan was refused; panics if it was not.
    pub async fn plan_refused(&self, text: &str) -> String {
        let brief = Brief::parse(text).expect("the brief lints");
        backfill_coordinator::plan::plan(&self.pool, &brief)
            .await
            .map(|_| ())
            .expect_err("the plan must be refused")
            .to_string()
    }
}

/// Publishes a genuine batch message of a run (as the coordinator would, unsigned), confirmed.
pub async fn publish_batch(
    channel: &lapin::Channel,
    topology: &Topology,
    run_id: Uuid,
    brief_text: &str,
    batch: &BatchRange,
) {
    use backfill_shared::message::{self, BatchMessage, VERSION};
    let payload = message::encode(&BatchMessage {
        version: VERSION,
        run_id,
        batch_no: batch.no,
        lo: batch.lo,
        hi: batch.hi,
        brief_hash: Brief::hash(brief_text),
    })
    .expect("encode a batch message");
    backfill_shared::topology::publish_confirmed(
        channel,
        "",
        &topology.batches,
        &payload,
        backfill_shared::topology::persistent(),
    )
    .await
    .expect("publish a batch message");
}

/// Waits for a driven run to end, at most `secs` seconds.
pub async fn finish_within(
    driver: tokio::task::JoinHandle<backfill_coordinator::Result<Finish>>,
    secs: u64,
) -> Finish {
    tokio::time::timeout(std::time::Duration::from_secs(secs), driver)
        .await
        .expect("the run did not end in time")
        .expect("the driver task panicked")
        .expect("driving the run failed")
}

/// Takes dead letters off the namespace's dead-letter queue until `expected` have
/// arrived (or 10 s have passed), and returns their reasons; each must have one.
pub async fn dead_letter_reasons(
    channel: &lapin::Channel,
    topology: &Topology,
    expected: usize,
) -> Vec<String> {
    use lapin::options::{BasicAckOptions, BasicGetOptions};
    use lapin::types::AMQPValue;
    let mut reasons = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while reasons.len() < expected && tokio::time::Instant::now() < deadline {
        let got = channel
            .basic_get(topology.dead.as_str().into(), BasicGetOptions::default())
            .await
            .expect("basic.get on the dead-letter queue");
        let Some(msg) = got else {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let headers = msg
            .delivery
            .properties
            .headers()
            .clone()
            .unwrap_or_default();
        match headers
            .inner()
            .get(backfill_shared::topology::REASON_HEADER)
        {
            Some(AMQPValue::LongString(r)) => reasons.push(r.to_string()),
            other => panic!("a dead letter without a reason header: {other:?}"),
        }
        msg.delivery
            .ack(BasicAckOptions::default())
            .await
            .expect("ack");
    }
    reasons
}

fn replace_database(url: &str, database: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| i + scheme_end);
    let mut out = format!("{}/{database}", &base[..path_start]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// `GET path` from the HTTP endpoint at `addr` (host:port): the status and the
/// body, read to the end of a closed connection.
pub async fn http_get(addr: &str, path: &str) -> (u16, String) {
    http(addr, "GET", path, &[], "").await
}

/// The CSRF token of the forms on a console page.
#[must_use]
pub fn form_csrf(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token")
        + 19;
    page[at..at + page[at..].find('"').unwrap()].to_owned()
}

/// A request to the HTTP endpoint at `addr` with `headers` and a form `body`
/// (sent as `application/x-www-form-urlencoded` when not empty): the status,
/// and the body read to the end of a closed connection.
pub async fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let (status, _, body) = http_with_headers(addr, method, path, headers, body).await;
    (status, body)
}

/// The same, with the response's headers too (one `name: value` a line, names
/// in lower case).
/// How many bytes the body of a `GET` of `path` takes on the wire (after
/// any compression and chunking), and the response's status.
pub async fn wire_size(addr: &str, path: &str, headers: &[(&str, &str)]) -> (u16, usize) {
    let bytes = exchange(addr, "GET", path, headers, "").await;
    let head_end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(bytes.len(), |p| p + 4);
    let status = String::from_utf8_lossy(&bytes[..head_end])
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, bytes.len() - head_end)
}

/// Sends one HTTP/1.1 request and returns every byte of the response.
async fn exchange(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Vec<u8> {
    use std::fmt::Write as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        let _ = write!(request, "{name}: {value}\r\n");
    }
    if !body.is_empty() || method == "POST" {
        let _ = write!(
            request,
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            body.len()
        );
    }
    request.push_str("\r\n");
    request.push_str(body);
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).await.unwrap();
    bytes
}

pub async fn http_with_headers(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    // Bytes: a compressed body is not text.
    let bytes = exchange(addr, method, path, headers, body).await;
    let response = String::from_utf8_lossy(&bytes).into_owned();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let head = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| format!("{}: {}\n", n.trim().to_ascii_lowercase(), v.trim()))
        .collect();
    (status, head, body.to_owned())
}

/// How many pixels of a PNG screenshot are within a small distance of `rgb`.
#[must_use]
pub fn count_pixels(path: &std::path::Path, rgb: [u8; 3]) -> usize {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("a PNG's size")];
    let info = reader.next_frame(&mut buf).expect("a PNG frame");
    let channels = info.color_type.samples();
    buf[..info.buffer_size()]
        .chunks(channels)
        .filter(|p| p.len() >= 3 && p.iter().zip(rgb).all(|(a, b)| a.abs_diff(b) < 12))
        .count()
}

/// A binary of this workspace, built beside the test executable.
#[must_use]
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`)",
        path.display()
    );
    path
}

#[cfg(test)]
mod tests {
    #[test]
    fn replaces_the_database_of_a_url() {
        assert_eq!(
            super::replace_database("postgres://u@h:5432/postgres", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            super::replace_database("postgres://u@h?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
    }
}
