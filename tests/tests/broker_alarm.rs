//! A broker short of disk keeps its connections open but blocks every
//! publisher, which looks like a hang to whoever publishes. `backfill run`
//! under such an alarm says what the broker said and how to fix it, stops
//! waiting for confirms after `CONFIRM_WAIT`, retries as after a lost
//! connection, and once the alarm clears finishes the run, each batch applied
//! exactly once.
//!
//! It raises the machine's RabbitMQ disk alarm (`rabbitmqctl
//! set_disk_free_limit`), so it needs the rights to do that (root, or the
//! rabbitmq user), and it is alone in its test binary: every other test's
//! publishes would block too. The limit is put back as it was, even when the
//! test fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill_shared::control::batches;
use backfill_shared::topology::CONFIRM_WAIT;
use backfill_tests::{TestEnv, bin};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::time::Instant;
use uuid::Uuid;

/// Runs `rabbitmqctl` (or `rabbitmq-diagnostics`) and returns what it printed,
/// or why it failed.
fn rabbit_cli(program: &str, args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

/// The broker's disk alarm, raised by asking for more free disk than any
/// machine has; dropping it puts the limit back.
struct DiskAlarm {
    bytes_before: String,
}

impl DiskAlarm {
    async fn raise() -> Self {
        let before = rabbit_cli(
            "rabbitmqctl",
            &["-q", "eval", "rabbit_disk_monitor:get_disk_free_limit()."],
        )
        .unwrap_or_else(|e| {
            panic!("this test must be able to run rabbitmqctl (root or the rabbitmq user): {e}")
        });
        let alarm = Self {
            bytes_before: before.trim().to_owned(),
        };
        assert!(
            alarm.bytes_before.parse::<u64>().is_ok(),
            "the disk free limit is not a number of bytes: {before}"
        );
        rabbit_cli("rabbitmqctl", &["set_disk_free_limit", "1000000GB"]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while rabbit_cli("rabbitmq-diagnostics", &["-q", "check_local_alarms"]).is_ok() {
            assert!(
                Instant::now() < deadline,
                "RabbitMQ raised no disk alarm within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        alarm
    }
}

impl Drop for DiskAlarm {
    fn drop(&mut self) {
        let _ = rabbit_cli("rabbitmqctl", &["set_disk_free_limit", &self.bytes_before]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blocked_broker_is_named_waited_out_and_the_run_finishes_exactly_once() {
    let env = TestEnv::new(0.01).await;
    let dir = std::env::temp_dir().join(format!("bf-alarm-{}", env.config.namespace));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("brief.toml");
    std::fs::write(&path, env.brief(6, 2).await).unwrap();
    let mut worker = env.spawn_worker(&[]);

    let alarm = DiskAlarm::raise().await;
    let started = Instant::now();
    let mut run = tokio::process::Command::new(bin("backfill"))
        .args(["run", path.to_str().unwrap(), "--unannounced", "a test"])
        .envs(env.env())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(run.stderr.take().unwrap()).lines();

    // What the broker said, then the publish given up after CONFIRM_WAIT.
    let mut said = Vec::new();
    let told = tokio::time::timeout(CONFIRM_WAIT + Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            said.push(line);
            let all = said.join("\n");
            if all.contains("RabbitMQ blocks this connection's publishes")
                && all.contains("has not confirmed a message to")
            {
                return;
            }
        }
    })
    .await;
    let all = said.join("\n");
    assert!(told.is_ok(), "the run did not say it was blocked:\n{all}");
    assert!(
        started.elapsed() >= CONFIRM_WAIT,
        "gave up before CONFIRM_WAIT"
    );
    for part in [
        "low on disk",
        "rabbitmq-diagnostics check_local_alarms",
        "free the disk or memory",
        "reconnecting",
    ] {
        assert!(all.contains(part), "{part:?} not in:\n{all}");
    }
    let run_id: Uuid = sqlx::query_scalar("SELECT run_id FROM backfill.runs")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(
        batches::counts(&env.pool, run_id).await.unwrap().applied,
        0,
        "nothing can be applied while nothing is published"
    );

    // The alarm clears: the run goes on by itself and ends applied.
    drop(alarm);
    let rest = tokio::spawn(async move {
        let mut rest = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            rest.push(line);
        }
        rest.join("\n")
    });
    let status = tokio::time::timeout(Duration::from_secs(300), run.wait())
        .await
        .expect("the run did not end within 300 s of the alarm clearing")
        .unwrap();
    let rest = rest.await.unwrap();
    assert_eq!(status.code(), Some(0), "{all}\n{rest}");
    assert!(env.not_applied_exactly_once(run_id).await.is_empty());
    assert_eq!(env.differences().await, 0);

    worker.start_kill().unwrap();
    let _ = worker.wait().await;
    let _ = std::fs::remove_dir_all(&dir);
    env.cleanup().await;
}
