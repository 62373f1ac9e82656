//! The monitoring artefacts (docs/operations.md §12b): `promtool` checks the alert rules of
//! `deploy/prometheus/alerts.yml`, runs their unit tests (`alerts_test.yml`: every alert has a
//! case that fires and one that does not) and checks the example `prometheus.yml`; the Grafana
//! dashboard `deploy/grafana/lockbox.json` parses; and the rules, the dashboard and the docs
//! name only metrics and labels that lockboxd and lockbox-controller export ([`METRICS`]).
//! `promtool` comes from the Debian package `prometheus`, which `deploy/test.sh` installs: a
//! missing `promtool` fails these tests, it never skips them.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use lockbox_tests::{describe_output, run_with_timeout, workspace_root};
use serde_json::Value;

/// A metric's type: histograms are queried as `NAME_bucket`, `NAME_sum` and `NAME_count`.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Gauge,
    Counter,
    Histogram,
}

/// Every metric the daemons export, with its labels (besides Prometheus's own `job` and
/// `instance`, and `le` of a histogram). Keep equal to the metrics the code registers and to
/// the table in docs/operations.md §12b.
const METRICS: &[(&str, Kind, &[&str])] = &[
    // lockboxd
    ("lockbox_sealed", Kind::Gauge, &[]),
    ("lockbox_keys", Kind::Gauge, &["state"]),
    ("lockbox_requests_total", Kind::Counter, &["method", "code"]),
    (
        "lockbox_request_duration_seconds",
        Kind::Histogram,
        &["method"],
    ),
    ("lockbox_store_sync_duration_seconds", Kind::Histogram, &[]),
    ("lockbox_store_sync_batch_size", Kind::Histogram, &[]),
    (
        "lockbox_transfers_total",
        Kind::Counter,
        &["role", "op", "outcome"],
    ),
    (
        "lockbox_transferred_keys_total",
        Kind::Counter,
        &["role", "op"],
    ),
    ("lockbox_grants_refused_total", Kind::Counter, &["reason"]),
    (
        "lockbox_attestation_expiry_timestamp_seconds",
        Kind::Gauge,
        &[],
    ),
    ("lockbox_kek_rotations_total", Kind::Counter, &[]),
    ("lockbox_audit_records_total", Kind::Counter, &[]),
    ("lockbox_memory_locked", Kind::Gauge, &[]),
    ("lockbox_unseal_assists_total", Kind::Counter, &["outcome"]),
    ("lockbox_build_info", Kind::Gauge, &["version"]),
    // lockbox-controller
    (
        "lockbox_controller_grants_total",
        Kind::Counter,
        &["op", "outcome"],
    ),
    (
        "lockbox_controller_attestations_total",
        Kind::Counter,
        &["outcome"],
    ),
    (
        "lockbox_controller_vouches_total",
        Kind::Counter,
        &["outcome"],
    ),
    (
        "lockbox_controller_policy_refusals_total",
        Kind::Counter,
        &["rule"],
    ),
    (
        "lockbox_controller_requests_total",
        Kind::Counter,
        &["method", "code"],
    ),
    (
        "lockbox_controller_request_duration_seconds",
        Kind::Histogram,
        &["method"],
    ),
    (
        "lockbox_controller_audit_rollbacks_total",
        Kind::Counter,
        &[],
    ),
    ("lockbox_controller_build_info", Kind::Gauge, &["version"]),
];

/// Labels every series has (target labels) or that PromQL uses on histograms.
const COMMON_LABELS: &[&str] = &["job", "instance", "le"];

const ALERTS: &str = "deploy/prometheus/alerts.yml";
const ALERTS_TEST: &str = "deploy/prometheus/alerts_test.yml";
const PROMETHEUS_CONFIG: &str = "deploy/prometheus/prometheus.yml";
const DASHBOARD: &str = "deploy/grafana/lockbox.json";
const OPERATIONS: &str = "docs/operations.md";

fn read(rel: &str) -> String {
    let path: PathBuf = workspace_root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Runs `promtool ARGS` in the workspace root and asserts it succeeds. A missing promtool is
/// a failure naming the package, not a skip.
fn promtool(args: &[&str]) -> String {
    match Command::new("promtool").arg("--version").output() {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool is not on PATH: install the Debian package prometheus (apt-get install \
             prometheus); deploy/test.sh does"
        ),
        Err(e) => panic!("cannot run promtool: {e}"),
    }
    let mut cmd = Command::new("promtool");
    cmd.args(args).current_dir(workspace_root());
    let out = run_with_timeout(&mut cmd, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "promtool {} failed:\n{}",
        args.join(" "),
        describe_output(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every identifier in `text` that starts with `lockbox_` (CamelCase alert names and
/// `lockboxd` are not metric names and do not match).
fn lockbox_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    let mut before: Option<char> = None;
    while let Some(i) = rest.find("lockbox_") {
        let prev = rest[..i].chars().next_back().or(before);
        let tail = &rest[i..];
        let len = tail.find(|c: char| !is_name_char(c)).unwrap_or(tail.len());
        if !prev.is_some_and(is_name_char) {
            names.insert(tail[..len].to_owned());
        }
        before = tail[..len].chars().next_back();
        rest = &tail[len..];
    }
    names
}

/// The metric (and its kind) that a queried series name belongs to.
fn metric_of(name: &str) -> Option<&'static (&'static str, Kind, &'static [&'static str])> {
    METRICS.iter().find(|(m, kind, _)| {
        name == *m
            || (*kind == Kind::Histogram
                && ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| name.strip_suffix(s) == Some(m)))
    })
}

/// Asserts that `text` (from `what`) names only exported metrics, and returns those it names.
fn assert_known_metrics(what: &str, text: &str) -> BTreeSet<&'static str> {
    let mut used = BTreeSet::new();
    for name in lockbox_names(text) {
        let Some((metric, _, _)) = metric_of(&name) else {
            panic!("{what} names {name}, which lockboxd and lockbox-controller do not export");
        };
        used.insert(*metric);
    }
    used
}

/// Asserts that every `by (…)` / `without (…)` / `on (…)` clause of the PromQL in `text`
/// names only labels the metrics have.
fn assert_known_labels(what: &str, text: &str) {
    let known: BTreeSet<&str> = METRICS
        .iter()
        .flat_map(|(_, _, labels)| labels.iter().copied())
        .chain(COMMON_LABELS.iter().copied())
        .collect();
    for keyword in ["by (", "without (", "on (", "ignoring (", "by(", "on("] {
        for (i, _) in text.match_indices(keyword) {
            if i > 0 && text[..i].chars().next_back().is_some_and(is_name_char) {
                continue; // e.g. "nearby (" in prose
            }
            let inner = &text[i + keyword.len()..];
            let inner = &inner[..inner.find(')').unwrap()];
            for label in inner.split(',').map(str::trim).filter(|l| !l.is_empty()) {
                assert!(
                    known.contains(label),
                    "{what}: `{keyword}{inner})` names label {label:?}, which no metric has \
                     (known: {known:?})"
                );
            }
        }
    }
}

/// The alerts of alerts.yml, each with the text of its rule (line-based: the file's own
/// layout, `- alert: Name` starting each rule).
fn alert_rules() -> Vec<(String, String)> {
    let text = read(ALERTS);
    let mut rules: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let t = line.trim_start();
        if let Some(name) = t.strip_prefix("- alert: ") {
            rules.push((name.trim().to_owned(), String::new()));
        } else if t.starts_with("- name: ") {
            continue;
        } else if let Some((_, body)) = rules.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    assert!(!rules.is_empty(), "no `- alert:` in {ALERTS}");
    rules
}

/// GitHub's anchors for the headings of a Markdown file.
fn anchors(markdown: &str) -> BTreeSet<String> {
    markdown
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| {
            l.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter_map(|c| match c {
                    ' ' => Some('-'),
                    c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                    _ => None,
                })
                .collect()
        })
        .collect()
}

#[test]
fn alert_rules_pass_promtool_check() {
    let out = promtool(&["check", "rules", ALERTS]);
    assert!(out.contains("SUCCESS"), "promtool check rules: {out}");
}

#[test]
fn alert_rule_unit_tests_pass() {
    promtool(&["test", "rules", ALERTS_TEST]);
}

#[test]
fn example_prometheus_config_is_valid() {
    // Also checks the rule files it names (alerts.yml, relative to the config).
    let out = promtool(&["check", "config", PROMETHEUS_CONFIG]);
    assert!(
        out.contains("1 rule files found"),
        "prometheus.yml must load alerts.yml: {out}"
    );
}

#[test]
fn every_alert_is_labelled_linked_and_tested_both_ways() {
    let rules = alert_rules();
    let ops_anchors = anchors(&read(OPERATIONS));
    let tests = read(ALERTS_TEST);
    let test_lines: Vec<&str> = tests.lines().map(str::trim).collect();
    for (name, body) in &rules {
        assert!(
            body.contains("severity: critical") || body.contains("severity: warning"),
            "{name}: no severity label (critical or warning)"
        );
        for key in ["summary:", "description:"] {
            assert!(body.contains(key), "{name}: no {key} annotation");
        }
        let runbook = body
            .lines()
            .find_map(|l| l.trim().strip_prefix("runbook_url: "))
            .unwrap_or_else(|| panic!("{name}: no runbook_url annotation"));
        let anchor = runbook
            .strip_prefix("docs/operations.md#")
            .unwrap_or_else(|| panic!("{name}: runbook_url {runbook} is not docs/operations.md#…"));
        assert!(
            ops_anchors.contains(anchor),
            "{name}: runbook_url {runbook}: {OPERATIONS} has no heading with that anchor"
        );
        // Each `alertname: X` in the tests is followed by its exp_alerts: `[]` when it must
        // stay quiet, a list when it must fire.
        let (mut fires, mut quiet) = (false, false);
        for (i, line) in test_lines.iter().enumerate() {
            if line.strip_prefix("alertname: ") == Some(name.as_str()) {
                match test_lines.get(i + 1) {
                    Some(&"exp_alerts: []") => quiet = true,
                    Some(&"exp_alerts:") => fires = true,
                    other => panic!("{ALERTS_TEST}: alertname {name} followed by {other:?}"),
                }
            }
        }
        assert!(
            fires && quiet,
            "{ALERTS_TEST} must test {name} both firing ({fires}) and quiet ({quiet})"
        );
    }
    // And the tests name no alert that does not exist.
    for line in &test_lines {
        if let Some(n) = line.strip_prefix("alertname: ") {
            assert!(
                rules.iter().any(|(name, _)| name == n),
                "{ALERTS_TEST} tests {n}, which {ALERTS} does not define"
            );
        }
    }
}

#[test]
fn alert_rules_use_only_exported_metrics_and_labels() {
    let text = read(ALERTS);
    let used = assert_known_metrics(ALERTS, &text);
    assert!(!used.is_empty(), "{ALERTS} names no lockbox metric");
    assert_known_labels(ALERTS, &text);
}

#[test]
fn grafana_dashboard_parses_and_queries_only_exported_metrics() {
    let dash: Value = serde_json::from_str(&read(DASHBOARD))
        .unwrap_or_else(|e| panic!("{DASHBOARD} is not valid JSON: {e}"));
    assert!(
        dash["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "{DASHBOARD}: schemaVersion {}",
        dash["schemaVersion"]
    );
    let vars = dash["templating"]["list"].as_array().unwrap();
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("{DASHBOARD}: no template variable {name}"))
    };
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    assert_eq!(var("instance")["type"], "query");

    // Every query of every panel (rows included) and of the variables.
    let mut exprs = Vec::new();
    let mut panels: Vec<&Value> = dash["panels"].as_array().unwrap().iter().collect();
    let mut n_panels = 0;
    while let Some(p) = panels.pop() {
        if let Some(inner) = p["panels"].as_array() {
            panels.extend(inner);
        }
        if p["type"] == "row" {
            continue;
        }
        n_panels += 1;
        let title = p["title"].as_str().unwrap_or("?");
        let targets = p["targets"].as_array();
        assert!(
            targets.is_some_and(|t| !t.is_empty()),
            "{DASHBOARD}: panel {title:?} has no query"
        );
        for t in targets.unwrap() {
            assert_eq!(
                t["datasource"]["uid"], "${datasource}",
                "{DASHBOARD}: panel {title:?} must query the $datasource variable"
            );
            let expr = t["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{DASHBOARD}: panel {title:?} has a query without expr"));
            exprs.push((title.to_owned(), expr.to_owned()));
        }
    }
    for v in vars {
        if let Some(q) = v["definition"].as_str() {
            exprs.push((format!("variable {}", v["name"]), q.to_owned()));
        }
    }
    assert!(n_panels >= 12, "{DASHBOARD}: only {n_panels} panels");
    let mut used = BTreeSet::new();
    for (title, expr) in &exprs {
        let what = format!("{DASHBOARD}, {title:?}");
        let names = assert_known_metrics(&what, expr);
        assert!(
            !names.is_empty(),
            "{what}: `{expr}` names no lockbox metric"
        );
        used.extend(names);
        assert_known_labels(&what, expr);
    }
    // The dashboard shows every metric there is.
    for (metric, _, _) in METRICS {
        assert!(
            used.contains(metric),
            "{DASHBOARD} shows no panel of {metric}"
        );
    }
}

#[test]
fn operations_guide_describes_every_metric_and_no_other() {
    let text = read(OPERATIONS);
    let used = assert_known_metrics(OPERATIONS, &text);
    for (metric, _, _) in METRICS {
        assert!(
            used.contains(metric),
            "{OPERATIONS} does not describe {metric}"
        );
    }
}
