//! The chaos test: a backfill of TPC-H data by a `backfill` coordinator process and
//! three `backfill-worker` processes while the test
//!
//! - SIGKILLs a random worker and starts a new one, again and again;
//! - restarts RabbitMQ (the whole node);
//! - empties Redis of its namespace (every lease, idempotency key and cached
//!   run state; other tests share the server);
//! - SIGKILLs the coordinator and resumes the run from a new process;
//! - SIGSTOPs a worker in the middle of a batch for longer than its lease, then
//!   SIGCONTs it.
//!
//! At the end the target must equal an independent SQL recomputation, hold no
//! duplicate key, and every batch must have been applied exactly once. It prints
//! what it survived. Run it alone with
//! `cargo test -p backfill-tests --test chaos -- --nocapture`.
//!
//! It restarts the machine's RabbitMQ node (`rabbitmqctl shutdown`, then
//! `rabbitmq-server -detached`), so it needs the rights to do that (root, or the
//! rabbitmq user).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use backfill_shared::control::batches;
use backfill_tests::{TestEnv, bin};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio::time::Instant;
use uuid::Uuid;

/// Seconds each worker's lease lives; the SIGSTOP lasts longer than this.
const LEASE_TTL: u64 = 3;

/// The worker processes, and what was done to them.
struct Fleet {
    env: Vec<(&'static str, String)>,
    logs: PathBuf,
    workers: Vec<Child>,
    started: usize,
    killed: usize,
}

impl Fleet {
    fn start(&mut self) {
        self.started += 1;
        let log = std::fs::File::create(self.logs.join(format!("worker-{}.log", self.started)))
            .expect("worker log file");
        let child = Command::new(bin("backfill-worker"))
            .args(["--concurrency", "2", "--lease-ttl", &LEASE_TTL.to_string()])
            .envs(self.env.clone())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start backfill-worker");
        self.workers.push(child);
    }

    /// SIGKILLs a worker picked at random and starts a new one in its place.
    async fn kill_random_and_replace(&mut self) -> u32 {
        let pick =
            usize::try_from(Uuid::new_v4().as_u128() % self.workers.len() as u128).expect("index");
        let mut victim = self.workers.swap_remove(pick);
        let pid = victim.id().expect("a running worker");
        victim.start_kill().expect("SIGKILL");
        victim.wait().await.expect("reap the killed worker");
        self.killed += 1;
        self.start();
        pid
    }

    fn pids(&self) -> Vec<u32> {
        self.workers.iter().filter_map(Child::id).collect()
    }
}

fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// The coordinator as its own process, its log in `logs`.
fn coordinator(env: &[(&'static str, String)], logs: &std::path::Path, args: &[&str]) -> Child {
    let name = args.first().copied().unwrap_or("coordinator");
    let log = std::fs::File::create(logs.join(format!("coordinator-{name}.log"))).expect("log");
    Command::new(bin("backfill"))
        .args(args)
        .envs(env.iter().cloned())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("start backfill")
}

/// Runs a command that restarts RabbitMQ, for at most `limit`.
async fn run_command(program: &str, args: &[&str], limit: Duration) {
    let mut command = Command::new(program);
    command.args(args).stdin(Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(limit, command.output())
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} did not finish within {limit:?}"))
        .unwrap_or_else(|e| panic!("cannot run {program} (needed to restart RabbitMQ): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed (the chaos test must be able to restart RabbitMQ: run it as root or as the rabbitmq user): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Stops the RabbitMQ node and starts it again; returns once it takes connections.
async fn restart_rabbitmq(env: &TestEnv) {
    run_command("rabbitmqctl", &["shutdown"], Duration::from_secs(120)).await;
    run_command("rabbitmq-server", &["-detached"], Duration::from_secs(60)).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        // The probe's handshake is bounded: a node still booting may take the
        // connection without answering.
        if let Ok(conn) = backfill_shared::services::rabbit(&env.config, "chaos probe").await {
            let _ = conn.close(200, "probe".into()).await;
            return;
        }
        assert!(
            Instant::now() < deadline,
            "RabbitMQ did not come back within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits until at least `n` batches are applied; fails if the run gets stuck.
async fn await_applied(env: &TestEnv, run_id: Uuid, n: i64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let applied = batches::counts(&env.pool, run_id).await.unwrap().applied;
        if applied >= n {
            return applied;
        }
        assert!(
            Instant::now() < deadline,
            "the run stalled at {applied} applied batches (waiting for {n})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A worker of the fleet in the middle of a batch it started moments ago.
async fn worker_mid_batch(env: &TestEnv, run_id: Uuid, pids: &[u32]) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let busy: Vec<String> = sqlx::query_scalar(
            "SELECT worker FROM backfill.batches WHERE run_id = $1 AND state = 'running'
                AND started_at > now() - interval '200 milliseconds'",
        )
        .bind(run_id)
        .fetch_all(&env.pool)
        .await
        .unwrap();
        if let Some(pid) = pids
            .iter()
            .find(|pid| busy.iter().any(|w| w.contains(&format!("-{pid}-"))))
        {
            return *pid;
        }
        assert!(Instant::now() < deadline, "no worker took a batch");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The last lines of every log in `dir`, each under its file name.
fn log_tails(dir: &std::path::Path) -> String {
    let mut out = String::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        out.push_str(&format!("\n--- {}\n{tail}", entry.path().display()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backfill_survives_chaos() {
    let env = TestEnv::new(0.02).await;
    // 300 batches of 100 orders, each sleeping 0.4 s in the warehouse: about 20 s
    // of work for six worker slots, long enough for every fault to land mid-run.
    // Batches this small move a year's revenue a lot; the limit is not the point here.
    let text =
        backfill_coordinator::demo::with_max_change_pct(&env.slow_brief(300, 6, 0.4).await, 100);
    let logs = std::env::temp_dir().join(format!("{}-chaos", env.config.namespace));
    std::fs::create_dir_all(&logs).unwrap();
    let brief_path = logs.join("brief.toml");
    std::fs::write(&brief_path, &text).unwrap();
    let child_env = env.env();
    let mut fleet = Fleet {
        env: child_env.clone(),
        logs: logs.clone(),
        workers: Vec::new(),
        started: 0,
        killed: 0,
    };
    for _ in 0..3 {
        fleet.start();
    }

    // Every wait inside has its own deadline; this one turns a hang anywhere
    // else into a failure that says where it stuck, with the processes' logs.
    let stage = std::cell::Cell::new("start");
    let scenario = async {
        stage.set("the first coordinator printing its run id");
        let mut first = coordinator(
            &child_env,
            &logs,
            &[
                "run",
                brief_path.to_str().unwrap(),
                "--unannounced",
                "a chaos test",
            ],
        );
        let run_id: Uuid = {
            use tokio::io::AsyncBufReadExt as _;
            let stdout = first.stdout.take().unwrap();
            let mut line = String::new();
            tokio::io::BufReader::new(stdout)
                .read_line(&mut line)
                .await
                .unwrap();
            line.trim().parse().unwrap_or_else(|_| {
                panic!(
                    "`backfill run` printed no run id; its log: {}",
                    std::fs::read_to_string(logs.join("coordinator-run.log")).unwrap_or_default()
                )
            })
        };
        let total = batches::counts(&env.pool, run_id).await.unwrap().total();

        stage.set("worker kills while the run warms up");
        // 1. Random worker kills while the run warms up.
        let mut progress = await_applied(&env, run_id, 5).await;
        for _ in 0..2 {
            fleet.kill_random_and_replace().await;
            progress = await_applied(&env, run_id, progress + 3).await;
        }
        stage.set("the RabbitMQ restart");
        // 2. The broker goes away and comes back: everyone reconnects.
        restart_rabbitmq(&env).await;
        progress = await_applied(&env, run_id, progress + 3).await;
        fleet.kill_random_and_replace().await;
        progress = await_applied(&env, run_id, progress + 3).await;
        stage.set("the Redis flush");
        // 3. Redis forgets every lease, idempotency key and cached run state of
        //    this deployment (its namespace; other tests share the server).
        let mut redis = backfill_shared::services::redis(&env.config).await.unwrap();
        let pattern = format!("{}:*", env.config.namespace);
        let (mut cursor, mut keys) = (0_u64, Vec::<String>::new());
        loop {
            let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut redis)
                .await
                .unwrap();
            keys.extend(found);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        assert!(!keys.is_empty(), "no keys of {pattern} to forget");
        let _: () = redis::cmd("UNLINK")
            .arg(&keys)
            .query_async(&mut redis)
            .await
            .unwrap();
        progress = await_applied(&env, run_id, progress + 3).await;
        stage.set("the coordinator kill and resume");
        // 4. The coordinator dies; another process resumes the run.
        first.start_kill().unwrap();
        first.wait().await.unwrap();
        let mut second = coordinator(&child_env, &logs, &["resume", &run_id.to_string()]);
        progress = await_applied(&env, run_id, progress + 3).await;
        stage.set("the frozen worker");
        // 5. A worker freezes mid-batch for longer than its lease lives, then thaws.
        let frozen = worker_mid_batch(&env, run_id, &fleet.pids()).await;
        signal(frozen, "STOP");
        tokio::time::sleep(Duration::from_secs(LEASE_TTL + 6)).await;
        signal(frozen, "CONT");
        progress = await_applied(&env, run_id, progress + 3).await;
        stage.set("the last worker kill");
        // 6. One more kill for good measure.
        fleet.kill_random_and_replace().await;
        let applied_when_chaos_ended = batches::counts(&env.pool, run_id).await.unwrap().applied;
        assert!(
            applied_when_chaos_ended < total,
            "the run ended before the chaos did ({progress} of {total} applied); make the batches slower"
        );

        stage.set("the resumed coordinator finishing the run");
        let status = tokio::time::timeout(Duration::from_secs(300), second.wait())
            .await
            .expect("the resumed coordinator did not finish the run within 300 s")
            .unwrap();
        assert!(
            status.success(),
            "`backfill resume` failed ({status}); its log: {}",
            std::fs::read_to_string(logs.join("coordinator-resume.log")).unwrap_or_default()
        );
        (run_id, total, frozen)
    };
    let Ok((run_id, total, frozen)) =
        tokio::time::timeout(Duration::from_secs(900), scenario).await
    else {
        panic!(
            "the chaos test stuck at {} for 15 minutes; the logs: {}",
            stage.get(),
            log_tails(&logs)
        );
    };

    env.assert_exactly_applied(run_id).await;
    let (rows, distinct_keys): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT o_orderkey) FROM tpch.order_revenue")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(rows, distinct_keys, "duplicate keys in the target");
    let lease_lost = env.logged(run_id, "lease_lost").await;
    let stale = env.logged(run_id, "stale_commit_refused").await;
    let republished = env.logged(run_id, "batches_republished").await;
    let attachments = env.logged(run_id, "coordinator_attached").await;
    assert!(
        lease_lost + stale >= 1,
        "the frozen worker (pid {frozen}) committed a batch after its lease expired"
    );
    assert!(
        attachments >= 3,
        "the coordinator attached only {attachments} times: the broker restart and the resume should each re-attach"
    );
    println!(
        "chaos survived: {} worker kills ({} workers started), 1 RabbitMQ restart, 1 Redis flush of its namespace, \
         1 coordinator kill and resume ({attachments} attachments), 1 worker frozen past its lease; \
         refused commits: {lease_lost} after a lost lease, {stale} under a stale fencing token; \
         {republished} republish sweeps; {total} batches applied exactly once; {rows} rows checked \
         against the recomputation",
        fleet.killed, fleet.started
    );

    for mut w in fleet.workers {
        let _ = w.start_kill();
        let _ = w.wait().await;
    }
    let _ = std::fs::remove_dir_all(&logs);
    env.cleanup().await;
}
