//! The deployment files parse and agree with the code: the compose file and the
//! Kubernetes manifests are valid YAML with the expected objects, the worker's
//! probes, arguments and grace period fit what `backfill-worker` does, KEDA watches
//! the queue the workers consume, and the Dockerfile copies what exists and
//! builds binaries the workspace has.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use yaml_rust2::{Yaml, YamlLoader};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn documents(path: &str) -> Vec<Yaml> {
    let text = std::fs::read_to_string(root().join(path)).unwrap();
    YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{path} is not valid YAML: {e}"))
}

fn kind<'a>(docs: &'a [Yaml], kind: &str) -> &'a Yaml {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind}"))
}

fn flag(args: &[Yaml], name: &str) -> String {
    args.iter()
        .filter_map(Yaml::as_str)
        .find_map(|a| a.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} in {args:?}"))
        .to_owned()
}

/// The container exposes the port of `addr` (host:port), with readiness on
/// `/ready` and liveness on `/healthz` there.
fn probes_on(container: &Yaml, addr: &str) {
    let port: i64 = addr.rsplit_once(':').unwrap().1.parse().unwrap();
    assert_eq!(container["ports"][0]["containerPort"].as_i64(), Some(port));
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/ready")
    );
    assert_eq!(
        container["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
}

#[test]
fn the_compose_file_parses_and_builds_from_the_dockerfile() {
    let compose = documents("deploy/compose.yaml");
    let services = &compose[0]["services"];
    for name in ["postgres", "redis", "rabbitmq", "jaeger", "worker"] {
        assert!(!services[name].is_badvalue(), "no service {name}");
    }
    let worker = &services["worker"];
    assert!(
        worker["container_name"].is_badvalue(),
        "a container name stops --scale"
    );
    let dockerfile = root()
        .join("deploy")
        .join(worker["build"]["context"].as_str().unwrap())
        .join(worker["build"]["dockerfile"].as_str().unwrap());
    assert!(dockerfile.exists(), "{}", dockerfile.display());
    // The optional lineage profile: Marquez' API on the port the README's
    // OPENLINEAGE_URL names, with a database of its own.
    let marquez = &services["marquez"];
    assert_eq!(marquez["profiles"][0].as_str(), Some("lineage"));
    assert!(
        marquez["ports"][0].as_str().unwrap().ends_with(":5000"),
        "Marquez' API port"
    );
    let db = marquez["environment"]["POSTGRES_HOST"].as_str().unwrap();
    assert_eq!(services[db]["profiles"][0].as_str(), Some("lineage"));
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    assert!(
        readme.contains("--profile lineage")
            && readme.contains("OPENLINEAGE_URL=http://127.0.0.1:5000")
    );
    let env = &worker["environment"];
    assert!(
        env["OTEL_EXPORTER_OTLP_ENDPOINT"]
            .as_str()
            .unwrap()
            .ends_with(":4318"),
        "traces go over OTLP/HTTP"
    );
}

#[test]
fn the_kubernetes_manifests_fit_the_worker() {
    let config = documents("deploy/k8s/config.yaml");
    let namespace = kind(&config, "ConfigMap")["data"]["BACKFILL_NAMESPACE"]
        .as_str()
        .unwrap()
        .to_owned();
    let worker = documents("deploy/k8s/worker.yaml");
    let deployment = kind(&worker, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args = container["args"].as_vec().unwrap();
    let drain: i64 = flag(args, "--drain-timeout").parse().unwrap();
    let grace = pod["terminationGracePeriodSeconds"].as_i64().unwrap();
    assert!(
        grace > drain,
        "the grace period ({grace} s) must outlast the drain ({drain} s)"
    );
    probes_on(container, &flag(args, "--metrics-addr"));
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));

    let keda = documents("deploy/k8s/keda.yaml");
    let scaled = kind(&keda, "ScaledObject");
    assert_eq!(
        scaled["spec"]["scaleTargetRef"]["name"].as_str(),
        deployment["metadata"]["name"].as_str()
    );
    assert_eq!(
        scaled["spec"]["triggers"][0]["metadata"]["queueName"].as_str(),
        Some(format!("{namespace}.batches").as_str()),
        "KEDA must watch the queue workers consume"
    );
    let auth = kind(&keda, "TriggerAuthentication");
    assert_eq!(
        scaled["spec"]["triggers"][0]["authenticationRef"]["name"].as_str(),
        auth["metadata"]["name"].as_str()
    );

    let job = documents("deploy/k8s/coordinator-job.yaml");
    let job_spec = &kind(&job, "Job")["spec"]["template"]["spec"];
    assert_eq!(
        job_spec["containers"][0]["command"][0].as_str(),
        Some("backfill")
    );
    assert_eq!(job_spec["restartPolicy"].as_str(), Some("Never"));
    assert!(!kind(&job, "ConfigMap")["data"]["brief.toml"].is_badvalue());
    assert!(!kind(&documents("deploy/k8s/secret.example.yaml"), "Secret")["stringData"]["BACKFILL_DATABASE_URL"].is_badvalue());

    // The console: `backfill serve` on the port its probes and Service use,
    // trusting the proxy's header and asking for a login to read.
    let console = documents("deploy/k8s/console.yaml");
    let deployment = kind(&console, "Deployment");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["command"][0].as_str(), Some("backfill"));
    let args = container["args"].as_vec().unwrap();
    assert!(args.iter().any(|a| a.as_str() == Some("serve")), "{args:?}");
    assert!(args.iter().any(|a| a.as_str() == Some("--require-login")));
    assert_eq!(flag(args, "--auth-header"), "X-Forwarded-User");
    probes_on(container, &flag(args, "--addr"));
    assert_eq!(
        kind(&console, "Service")["spec"]["selector"]["app.kubernetes.io/name"],
        deployment["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
    );
    // Only the proxy reaches it: it believes the header from anyone who does.
    let policy = kind(&console, "NetworkPolicy");
    assert_eq!(
        policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
        deployment["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
    );
    let from = policy["spec"]["ingress"].as_vec().unwrap();
    assert_eq!(from.len(), 1, "{from:?}");
    assert_eq!(
        from[0]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"].as_str(),
        Some("backfill-console-proxy")
    );

    let kustomization = documents("deploy/k8s/kustomization.yaml");
    for resource in kustomization[0]["resources"].as_vec().unwrap() {
        let file = root().join("deploy/k8s").join(resource.as_str().unwrap());
        assert!(file.exists(), "{}", file.display());
    }
}

#[test]
fn the_dockerfile_copies_what_exists_and_builds_real_binaries() {
    let text = std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap();
    for line in text
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from="))
    {
        let parts: Vec<&str> = line.split_whitespace().skip(1).collect();
        for source in &parts[..parts.len() - 1] {
            assert!(
                root().join(source).exists(),
                "{line}: {source} does not exist"
            );
        }
    }
    let stages: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("FROM "))
        .filter_map(|l| l.split(" AS ").nth(1))
        .collect();
    for line in text.lines().filter(|l| l.contains("--from=")) {
        let stage = line
            .split("--from=")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap();
        assert!(stages.contains(&stage), "{line}: no stage {stage}");
    }
    // Man pages and completions come from the binary's own clap definitions.
    for generated in [
        "backfill man --out-dir",
        "backfill completions bash",
        "backfill completions zsh",
        "backfill completions fish",
        "/usr/local/share/man/man1/",
    ] {
        assert!(text.contains(generated), "the image installs {generated}");
    }
    for package in ["backfill-worker", "backfill-coordinator"] {
        assert!(
            text.contains(&format!("-p {package}")),
            "the image builds {package}"
        );
    }
    for (binary, crate_dir) in [("backfill-worker", "worker"), ("backfill", "coordinator")] {
        assert!(
            text.contains(&format!("target/release/{binary}")),
            "{binary} is copied out"
        );
        let manifest = std::fs::read_to_string(root().join(crate_dir).join("Cargo.toml")).unwrap();
        assert!(
            manifest.contains(&format!("name = \"{binary}\"")),
            "{crate_dir} builds {binary}"
        );
    }
}

/// The metric names the Grafana dashboard and Prometheus use are ones the
/// binaries export, and the compose file serves the console and scrapes it.
#[test]
fn the_dashboard_queries_metrics_the_binaries_export() {
    let compose = documents("deploy/compose.yaml");
    let services = &compose[0]["services"];
    for name in ["console", "prometheus", "grafana"] {
        assert_eq!(
            services[name]["profiles"][0].as_str(),
            Some("console"),
            "{name}"
        );
    }
    assert_eq!(
        services["console"]["entrypoint"][0].as_str(),
        Some("backfill")
    );
    assert_eq!(services["console"]["command"][0].as_str(), Some("serve"));
    // Reading needs a login; Prometheus scrapes without one.
    let command: Vec<&str> = services["console"]["command"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    for flag in ["--require-login", "--public-metrics"] {
        assert!(command.contains(&flag), "{flag}: {command:?}");
    }
    let prometheus = documents("deploy/prometheus.yml");
    let jobs: Vec<&str> = prometheus[0]["scrape_configs"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|j| j["job_name"].as_str())
        .collect();
    assert_eq!(jobs, ["backfill-worker", "backfill-console", "rabbitmq"]);

    let text =
        std::fs::read_to_string(root().join("deploy/grafana/dashboards/backfill.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    // The names the code registers (prefix + name), as Prometheus exposes them.
    let sources = [
        "worker/src/lib.rs",
        "coordinator/src/console/mod.rs",
        "coordinator/src/run/metrics.rs",
    ]
    .map(|f| std::fs::read_to_string(root().join(f)).unwrap())
    .join("\n");
    let exported = |metric: &str| {
        let base = metric
            .trim_end_matches("_bucket")
            .trim_end_matches("_total")
            .trim_end_matches("_seconds");
        let name = base
            .strip_prefix("backfill_worker_")
            .or_else(|| base.strip_prefix("backfill_run_"))
            .unwrap_or(base);
        sources.contains(&format!("\"{name}\""))
    };
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 7, "{} panels", panels.len());
    let mut checked = 0;
    for panel in panels {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for metric in expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("backfill_"))
            {
                assert!(
                    exported(metric),
                    "{}: {metric} is not exported",
                    panel["title"]
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 10, "{checked} metrics checked");
}
