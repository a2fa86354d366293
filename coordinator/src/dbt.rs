//! The dbt project's graph as blast radius. `dependencies.dbt_manifest` names
//! the `manifest.json` dbt writes (`dbt parse`, or any dbt command, into its
//! target directory). The target is found in it by relation (database, schema,
//! and identifier or alias), as a source or as a model, seed or snapshot; what
//! lies downstream of it, transitively, is:
//!
//! - models, seeds and snapshots, with their depth and materialization;
//! - exposures (dashboards, notebooks, ML models, applications) with their
//!   owners, who join the stakeholders;
//! - metrics, semantic models and saved queries;
//! - the tests on all of these, to run after cutover.

use crate::preflight::Dependent;
use backfill_shared::brief::Refresh;
use backfill_shared::sql::TableName;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt::Write as _;

/// What a dbt manifest says lies downstream of a backfill's target.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Radius {
    /// The manifest, as the brief names it.
    pub manifest: String,
    /// The manifest's nodes that are the target (`source:tpch.order_revenue`,
    /// `model.shop.order_revenue`); empty when none is.
    pub matched: Vec<String>,
    /// Models, seeds, snapshots, exposures and metrics downstream, nearest first.
    pub dependents: Vec<Dependent>,
    /// The exposures' owners, each as `name <email> (exposure NAME)`.
    pub owners: Vec<String>,
    /// The tests on the target and on everything downstream, by name.
    pub tests: Vec<String>,
    /// The dbt selector of the target and all it feeds
    /// (`source:tpch.order_revenue+`).
    pub selector: Option<String>,
    /// Incremental models downstream: a plain `dbt build` adds only new rows
    /// to them and keeps the history the backfill rewrote.
    pub incremental: Vec<Incremental>,
    /// The models, seeds and snapshots downstream by name, each with the
    /// relation it is in the warehouse (`analytics.monthly_net_revenue`).
    pub relations: std::collections::BTreeMap<String, String>,
}

/// An incremental model downstream, and how it is rebuilt for the past.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Incremental {
    /// The model's name (how dbt selects it).
    pub name: String,
    /// `incremental_strategy = 'microbatch'`: rebuilt for a period with
    /// `--event-time-start` and `--event-time-end`; otherwise `--full-refresh`.
    pub microbatch: bool,
}

impl Incremental {
    /// The dbt command that rebuilds it for the backfilled `period` (for a
    /// microbatch model; the others are rebuilt whole).
    #[must_use]
    pub fn command(&self, period: Option<(&str, &str)>) -> String {
        match period {
            Some((start, end)) if self.microbatch => format!(
                "dbt build --select {} --event-time-start {start} --event-time-end {end}",
                self.name
            ),
            _ => format!("dbt build --select {} --full-refresh", self.name),
        }
    }

    /// Whether one of `refresh`'s dbt commands rebuilds it for the past.
    fn rebuilt_by(&self, refresh: &[Refresh]) -> bool {
        refresh.iter().any(|step| match step {
            Refresh::Command { run, .. } => {
                let has = |flag: &str| run.iter().any(|a| a == flag);
                run.iter().any(|a| a == "build" || a == "run")
                    && (has("--full-refresh")
                        || (self.microbatch
                            && has("--event-time-start")
                            && has("--event-time-end")))
            }
            Refresh::Sql(_) => false,
        })
    }
}

impl Radius {
    /// The incremental models downstream that none of `refresh`'s dbt
    /// commands rebuilds for the past: after cutover they would keep the old
    /// history.
    #[must_use]
    pub fn left_stale(&self, refresh: &[Refresh]) -> Vec<&Incremental> {
        self.incremental
            .iter()
            .filter(|m| !m.rebuilt_by(refresh))
            .collect()
    }

    /// One line on what the manifest says about `target`: what it is there,
    /// and the tests to run after cutover.
    #[must_use]
    pub fn summary(&self, target: &str) -> String {
        if self.matched.is_empty() {
            return format!(
                "no source, model, seed or snapshot in it is {target}, so nothing in the dbt project reads it; check the manifest is the project's that does"
            );
        }
        let mut line = format!("{target} is {}", self.matched.join(", "));
        match self.test_command() {
            Some(command) => {
                let _ = write!(
                    line,
                    "; after cutover run its {} test(s) downstream: `{command}` ({})",
                    self.tests.len(),
                    self.tests.join(", ")
                );
            }
            None => line.push_str("; no dbt test covers it or anything downstream"),
        }
        if !self.incremental.is_empty() {
            let models: Vec<String> = self
                .incremental
                .iter()
                .map(|m| {
                    if m.microbatch {
                        format!("{} (microbatch: --event-time-start/--event-time-end over the backfilled period)", m.name)
                    } else {
                        format!("{} (--full-refresh)", m.name)
                    }
                })
                .collect();
            let _ = write!(
                line,
                "; incremental models downstream keep the old history unless rebuilt: {}",
                models.join(", ")
            );
        }
        line
    }

    /// The command that runs the tests downstream, if there are any.
    #[must_use]
    pub fn test_command(&self) -> Option<String> {
        let selector = self.selector.as_ref()?;
        (!self.tests.is_empty()).then(|| format!("dbt test --select {selector}"))
    }
}

/// The brief's stakeholders, then the owners of the exposures downstream.
#[must_use]
pub fn stakeholders(named: &[String], dbt: Option<&Radius>) -> Vec<String> {
    let mut all = named.to_vec();
    for owner in dbt.map(|r| r.owners.as_slice()).unwrap_or_default() {
        if !all.contains(owner) {
            all.push(owner.clone());
        }
    }
    all
}

/// Reads the manifest at `path` and finds what lies downstream of `target`
/// in `database`; `declared` (the brief's `dependencies.downstream`) marks the
/// relations it names. The error names the path and how to get a manifest.
pub fn radius(
    path: &str,
    database: &str,
    target: &TableName,
    declared: &[String],
) -> Result<Radius, String> {
    let fix = "run `dbt parse` in the dbt project to write target/manifest.json, or fix the path (a relative path is read from the current directory)";
    let text = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}; {fix}"))?;
    let manifest: Manifest = serde_json::from_slice(&text)
        .map_err(|e| format!("{path} is not a dbt manifest ({e}); {fix}"))?;
    if manifest.nodes.is_empty() && manifest.sources.is_empty() {
        return Err(format!("{path} holds no nodes and no sources; {fix}"));
    }
    Ok(manifest.radius(path, database, target, declared))
}

#[derive(Debug, Deserialize)]
struct Manifest {
    #[serde(default)]
    nodes: HashMap<String, Node>,
    #[serde(default)]
    sources: HashMap<String, Node>,
    #[serde(default)]
    exposures: HashMap<String, Exposure>,
    #[serde(default)]
    metrics: HashMap<String, Named>,
    #[serde(default)]
    semantic_models: HashMap<String, Named>,
    #[serde(default)]
    saved_queries: HashMap<String, Named>,
    /// dbt 1.8's unit tests, each on the model it names.
    #[serde(default)]
    unit_tests: HashMap<String, Named>,
    /// Each node's direct dependents; rebuilt from `depends_on` when absent.
    #[serde(default)]
    child_map: Option<HashMap<String, Vec<String>>>,
}

#[derive(Debug, Deserialize)]
struct Node {
    resource_type: String,
    name: String,
    #[serde(default)]
    database: Option<String>,
    #[serde(default)]
    schema: Option<String>,
    /// Models, seeds, snapshots: the relation's name when it is not `name`.
    #[serde(default)]
    alias: Option<String>,
    /// Sources: the relation's name when it is not `name`.
    #[serde(default)]
    identifier: Option<String>,
    /// Sources: the source's name (`source_name.name` selects it).
    #[serde(default)]
    source_name: Option<String>,
    #[serde(default)]
    config: NodeConfig,
    #[serde(default)]
    depends_on: DependsOn,
}

#[derive(Debug, Default, Deserialize)]
struct NodeConfig {
    #[serde(default)]
    materialized: Option<String>,
    #[serde(default)]
    incremental_strategy: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct DependsOn {
    #[serde(default)]
    nodes: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Exposure {
    name: String,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    owner: Owner,
    #[serde(default)]
    depends_on: DependsOn,
}

#[derive(Debug, Default, Deserialize)]
struct Owner {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    email: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Named {
    name: String,
    #[serde(default)]
    depends_on: DependsOn,
}

/// Whether `t` is the relation `schema`.`table` (as dbt writes names, in any case).
fn names(t: &TableName, schema: &str, table: &str) -> bool {
    t.schema.eq_ignore_ascii_case(schema) && t.table.eq_ignore_ascii_case(table)
}

impl Node {
    /// The relation this node is in the warehouse, if it is one.
    fn relation(&self) -> Option<(Option<&str>, &str, &str)> {
        let schema = self.schema.as_deref()?;
        let table = match self.resource_type.as_str() {
            "source" => self.identifier.as_deref().unwrap_or(&self.name),
            "model" | "seed" | "snapshot" => self.alias.as_deref().unwrap_or(&self.name),
            _ => return None,
        };
        Some((self.database.as_deref(), schema, table))
    }

    fn is(&self, database: &str, target: &TableName) -> bool {
        self.relation().is_some_and(|(db, schema, table)| {
            db.is_none_or(|db| db.is_empty() || db.eq_ignore_ascii_case(database))
                && names(target, schema, table)
        })
    }

    /// How dbt selects this node.
    fn selector(&self) -> String {
        match &self.source_name {
            Some(source) if self.resource_type == "source" => {
                format!("source:{source}.{}", self.name)
            }
            _ => self.name.clone(),
        }
    }
}

impl Manifest {
    fn radius(
        &self,
        path: &str,
        database: &str,
        target: &TableName,
        declared: &[String],
    ) -> Radius {
        let mut matched: Vec<&String> = self
            .sources
            .iter()
            .chain(&self.nodes)
            .filter(|(_, node)| node.is(database, target))
            .map(|(id, _)| id)
            .collect();
        matched.sort();
        let children = self.children();
        // Breadth first from the target: each node at its nearest depth.
        let mut depth: HashMap<&str, i32> = matched.iter().map(|id| (id.as_str(), 0)).collect();
        let mut queue: VecDeque<&str> = matched.iter().map(|id| id.as_str()).collect();
        while let Some(id) = queue.pop_front() {
            let next = depth[id] + 1;
            for child in children.get(id).into_iter().flatten() {
                if !depth.contains_key(child.as_str()) {
                    depth.insert(child, next);
                    queue.push_back(child);
                }
            }
        }
        // A relation is declared by its name, anything else by `kind:name`
        // (`exposure:board`, `metric:revenue`) or its bare name.
        let named = |kind: &str, name: &str| {
            declared
                .iter()
                .any(|d| d.trim() == name || d.trim() == format!("{kind}:{name}"))
        };
        let declared: Vec<TableName> = declared
            .iter()
            .filter_map(|d| TableName::parse(d))
            .collect();
        let mut radius = Radius {
            manifest: path.to_owned(),
            matched: matched.iter().map(|id| (*id).clone()).collect(),
            selector: matched
                .first()
                .and_then(|id| self.sources.get(*id).or_else(|| self.nodes.get(*id)))
                .map(|node| format!("{}+", node.selector())),
            ..Radius::default()
        };
        let mut tests = BTreeSet::new();
        for (&id, &d) in &depth {
            if d == 0 {
                continue;
            }
            if let Some(node) = self.nodes.get(id) {
                match node.resource_type.as_str() {
                    "test" | "unit_test" => {
                        tests.insert(node.name.clone());
                    }
                    "model" | "seed" | "snapshot" => {
                        let (name, is_declared) = match node.relation() {
                            Some((_, schema, table)) => {
                                let relation = TableName {
                                    schema: schema.to_owned(),
                                    table: table.to_owned(),
                                };
                                radius
                                    .relations
                                    .insert(node.name.clone(), relation.to_string());
                                (
                                    format!("{schema}.{table}"),
                                    declared.iter().any(|t| names(t, schema, table)),
                                )
                            }
                            None => (node.name.clone(), false),
                        };
                        let kind = match node.config.materialized.as_deref() {
                            Some(m) if node.resource_type == "model" => format!("dbt model, {m}"),
                            _ => format!("dbt {}", node.resource_type),
                        };
                        if node.resource_type == "model"
                            && node.config.materialized.as_deref() == Some("incremental")
                        {
                            radius.incremental.push(Incremental {
                                name: node.name.clone(),
                                microbatch: node.config.incremental_strategy.as_deref()
                                    == Some("microbatch"),
                            });
                        }
                        radius.dependents.push(Dependent {
                            name,
                            kind,
                            depth: d,
                            declared: is_declared,
                            owner: None,
                        });
                    }
                    _ => {}
                }
            } else if let Some(exposure) = self.exposures.get(id) {
                let owner = match (&exposure.owner.name, &exposure.owner.email) {
                    (Some(name), Some(email)) => Some(format!("{name} <{email}>")),
                    (Some(who), None) | (None, Some(who)) => Some(who.clone()),
                    (None, None) => None,
                };
                if let Some(owner) = &owner {
                    radius
                        .owners
                        .push(format!("{owner} (exposure {})", exposure.name));
                }
                radius.dependents.push(Dependent {
                    name: exposure.name.clone(),
                    kind: format!(
                        "dbt exposure, {}",
                        exposure.kind.as_deref().unwrap_or("unspecified")
                    ),
                    depth: d,
                    declared: named("exposure", &exposure.name),
                    owner,
                });
            } else if let Some((kind, node)) = self
                .metrics
                .get(id)
                .map(|m| ("metric", m))
                .or_else(|| self.semantic_models.get(id).map(|m| ("semantic_model", m)))
                .or_else(|| self.saved_queries.get(id).map(|m| ("saved_query", m)))
            {
                radius.dependents.push(Dependent {
                    name: node.name.clone(),
                    kind: format!("dbt {}", kind.replace('_', " ")),
                    depth: d,
                    declared: named(kind, &node.name),
                    owner: None,
                });
            }
        }
        // Unit tests of the models downstream (dbt keeps them apart from the
        // nodes, and its child map may leave them out).
        for test in self.unit_tests.values() {
            if test
                .depends_on
                .nodes
                .iter()
                .any(|parent| depth.get(parent.as_str()).is_some_and(|d| *d > 0))
            {
                tests.insert(test.name.clone());
            }
        }
        radius
            .dependents
            .sort_by(|a, b| (a.depth, &a.name).cmp(&(b.depth, &b.name)));
        radius.owners.sort();
        radius.owners.dedup();
        radius.incremental.sort_by(|a, b| a.name.cmp(&b.name));
        radius.tests = tests.into_iter().collect();
        radius
    }

    /// Each node's direct dependents: the manifest's `child_map`, or the same
    /// built from every node's `depends_on`.
    fn children(&self) -> HashMap<&str, Vec<&String>> {
        if let Some(map) = &self.child_map {
            return map
                .iter()
                .map(|(id, children)| (id.as_str(), children.iter().collect()))
                .collect();
        }
        let mut children: HashMap<&str, Vec<&String>> = HashMap::new();
        let parents = self
            .nodes
            .iter()
            .map(|(id, n)| (id, &n.depends_on))
            .chain(self.exposures.iter().map(|(id, e)| (id, &e.depends_on)))
            .chain(self.metrics.iter().map(|(id, m)| (id, &m.depends_on)))
            .chain(
                self.semantic_models
                    .iter()
                    .map(|(id, m)| (id, &m.depends_on)),
            )
            .chain(self.saved_queries.iter().map(|(id, m)| (id, &m.depends_on)));
        for (id, depends_on) in parents {
            for parent in &depends_on.nodes {
                children.entry(parent.as_str()).or_default().push(id);
            }
        }
        children
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(child_map: bool) -> String {
        let map = if child_map {
            r#", "child_map": {
                "source.shop.tpch.order_revenue": ["model.shop.monthly", "test.shop.not_null_src"],
                "model.shop.monthly": ["model.shop.top", "test.shop.unique_monthly", "exposure.shop.board"],
                "model.shop.top": ["exposure.shop.board", "metric.shop.revenue"],
                "model.shop.unrelated": [],
                "exposure.shop.board": [], "metric.shop.revenue": [],
                "test.shop.not_null_src": [], "test.shop.unique_monthly": []
            }"#
        } else {
            ""
        };
        format!(
            r#"{{
            "metadata": {{"dbt_version": "1.10.0"}},
            "sources": {{"source.shop.tpch.order_revenue": {{"resource_type": "source", "name": "order_revenue",
                "source_name": "tpch", "database": "warehouse", "schema": "tpch", "identifier": "order_revenue"}}}},
            "nodes": {{
              "model.shop.monthly": {{"resource_type": "model", "name": "monthly", "database": "warehouse",
                "schema": "analytics", "alias": "monthly_revenue", "config": {{"materialized": "table"}},
                "depends_on": {{"nodes": ["source.shop.tpch.order_revenue"]}}}},
              "model.shop.top": {{"resource_type": "model", "name": "top", "database": "warehouse",
                "schema": "analytics", "config": {{"materialized": "view"}},
                "depends_on": {{"nodes": ["model.shop.monthly"]}}}},
              "model.shop.unrelated": {{"resource_type": "model", "name": "unrelated", "database": "warehouse",
                "schema": "analytics", "config": {{"materialized": "view"}}, "depends_on": {{"nodes": []}}}},
              "test.shop.not_null_src": {{"resource_type": "test", "name": "not_null_src",
                "depends_on": {{"nodes": ["source.shop.tpch.order_revenue"]}}}},
              "test.shop.unique_monthly": {{"resource_type": "test", "name": "unique_monthly",
                "depends_on": {{"nodes": ["model.shop.monthly"]}}}}
            }},
            "exposures": {{"exposure.shop.board": {{"name": "board", "type": "dashboard",
                "owner": {{"name": "Fin Ance", "email": "fin@example.com"}},
                "depends_on": {{"nodes": ["model.shop.monthly", "model.shop.top"]}}}}}},
            "metrics": {{"metric.shop.revenue": {{"name": "revenue", "depends_on": {{"nodes": ["model.shop.top"]}}}}}}
            {map}
        }}"#
        )
    }

    fn radius_of(text: &str) -> Radius {
        let manifest: Manifest = serde_json::from_str(text).unwrap();
        let target = TableName::parse("tpch.order_revenue").unwrap();
        manifest.radius(
            "m.json",
            "warehouse",
            &target,
            &["analytics.monthly_revenue".into()],
        )
    }

    #[test]
    fn finds_everything_downstream_at_its_nearest_depth_with_or_without_the_child_map() {
        for child_map in [true, false] {
            let radius = radius_of(&manifest(child_map));
            assert_eq!(radius.matched, ["source.shop.tpch.order_revenue"]);
            assert_eq!(
                radius.selector.as_deref(),
                Some("source:tpch.order_revenue+")
            );
            let found: Vec<(&str, &str, i32, bool)> = radius
                .dependents
                .iter()
                .map(|d| (d.name.as_str(), d.kind.as_str(), d.depth, d.declared))
                .collect();
            assert_eq!(
                found,
                [
                    ("analytics.monthly_revenue", "dbt model, table", 1, true),
                    ("analytics.top", "dbt model, view", 2, false),
                    ("board", "dbt exposure, dashboard", 2, false),
                    ("revenue", "dbt metric", 3, false),
                ],
                "child_map: {child_map}"
            );
            assert_eq!(
                radius.owners,
                ["Fin Ance <fin@example.com> (exposure board)"]
            );
            assert_eq!(radius.tests, ["not_null_src", "unique_monthly"]);
            assert_eq!(
                radius.test_command().as_deref(),
                Some("dbt test --select source:tpch.order_revenue+")
            );
        }
    }

    #[test]
    fn another_database_or_table_matches_nothing() {
        let manifest: Manifest = serde_json::from_str(&manifest(true)).unwrap();
        let target = TableName::parse("tpch.order_revenue").unwrap();
        assert!(
            manifest
                .radius("m", "other", &target, &[])
                .matched
                .is_empty()
        );
        let other = TableName::parse("tpch.orders").unwrap();
        let radius = manifest.radius("m", "warehouse", &other, &[]);
        assert!(radius.matched.is_empty() && radius.dependents.is_empty());
        assert_eq!(radius.selector, None);
    }

    #[test]
    fn unreadable_or_foreign_files_name_the_path_and_the_fix() {
        let target = TableName::parse("tpch.order_revenue").unwrap();
        let missing = radius("/nonexistent/manifest.json", "db", &target, &[]).unwrap_err();
        assert!(
            missing.contains("cannot read /nonexistent/manifest.json")
                && missing.contains("dbt parse"),
            "{missing}"
        );
        let path = std::env::temp_dir().join(format!("not-a-manifest-{}.json", std::process::id()));
        std::fs::write(&path, "[1, 2]").unwrap();
        let foreign = radius(path.to_str().unwrap(), "db", &target, &[]).unwrap_err();
        assert!(foreign.contains("is not a dbt manifest"), "{foreign}");
        std::fs::write(&path, "{}").unwrap();
        let empty = radius(path.to_str().unwrap(), "db", &target, &[]).unwrap_err();
        assert!(empty.contains("holds no nodes"), "{empty}");
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn incremental_models_need_rebuilding_for_the_past() {
        let text = r#"{
            "sources": {"source.shop.tpch.order_revenue": {"resource_type": "source", "name": "order_revenue",
                "source_name": "tpch", "schema": "tpch", "identifier": "order_revenue"}},
            "nodes": {
              "model.shop.inc": {"resource_type": "model", "name": "inc", "schema": "analytics",
                "config": {"materialized": "incremental"},
                "depends_on": {"nodes": ["source.shop.tpch.order_revenue"]}},
              "model.shop.batches": {"resource_type": "model", "name": "batches", "schema": "analytics",
                "config": {"materialized": "incremental", "incremental_strategy": "microbatch"},
                "depends_on": {"nodes": ["model.shop.inc"]}}
            }
        }"#;
        let radius = radius_of(text);
        let names: Vec<(&str, bool)> = radius
            .incremental
            .iter()
            .map(|m| (m.name.as_str(), m.microbatch))
            .collect();
        assert_eq!(names, [("batches", true), ("inc", false)]);
        let command = |run: &[&str]| Refresh::Command {
            run: run.iter().map(|a| (*a).to_owned()).collect(),
            dir: None,
        };
        let stale = |refresh: &[Refresh]| -> Vec<String> {
            radius
                .left_stale(refresh)
                .iter()
                .map(|m| m.name.clone())
                .collect()
        };
        // A plain build leaves both; a full refresh rebuilds both; a period
        // rebuilds only the microbatch model; SQL rebuilds no dbt model.
        assert_eq!(
            stale(&[command(&[
                "dbt",
                "build",
                "--select",
                "source:tpch.order_revenue+"
            ])]),
            ["batches", "inc"]
        );
        assert!(
            stale(&[command(&[
                "dbt",
                "build",
                "--select",
                "x+",
                "--full-refresh"
            ])])
            .is_empty()
        );
        assert_eq!(
            stale(&[command(&[
                "dbt",
                "run",
                "--event-time-start",
                "1992-01-01",
                "--event-time-end",
                "1999-01-01"
            ])]),
            ["inc"]
        );
        assert_eq!(
            stale(&[Refresh::Sql("REFRESH MATERIALIZED VIEW x".into())]).len(),
            2
        );
        let period = Some(("1992-01-01T00:00:00Z", "1999-01-01T00:00:00Z"));
        assert_eq!(
            radius.incremental[0].command(period),
            "dbt build --select batches --event-time-start 1992-01-01T00:00:00Z --event-time-end 1999-01-01T00:00:00Z"
        );
        assert_eq!(
            radius.incremental[1].command(period),
            "dbt build --select inc --full-refresh"
        );
        assert!(
            radius
                .summary("tpch.order_revenue")
                .contains("inc (--full-refresh)")
        );
    }
}
