//! What `monitoring/` ships: promtool checks the alerting rules and the Prometheus config and
//! runs the rules' unit tests, which must fail for every rule replaced by one that never or
//! always fires; and every metric the rules and the dashboard name is exported by a real
//! persister, HTTP service and redis_exporter, scraped after a small sale with a refused write.
//! promtool (`apt-get install prometheus`) and redis_exporter (`apt-get install
//! prometheus-redis-exporter`) are skipped where missing, except under `CI=true`.

use coupon_tests::http::{request, tool_or_skip, HttpService};
use coupon_tests::{Flavor, Persister, Server, TestDb};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn monitoring_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../monitoring")
}

fn read(name: &str) -> String {
    let path = monitoring_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn promtool(args: &[&Path]) -> Output {
    Command::new("promtool")
        .args(args)
        .output()
        .expect("cannot run promtool")
}

fn promtool_ok(args: &[&Path]) -> String {
    let output = promtool(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?}:\n{text}");
    text
}

/// Each rule's `expr:` in alerts.yaml, as (first line, line after its last), so a test can
/// replace it: one line, or `expr: |` and the lines indented deeper.
fn expr_blocks(rules: &[&str]) -> Vec<(usize, usize, usize)> {
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < rules.len() {
        let line = rules[i];
        let indent = line.len() - line.trim_start().len();
        let Some(value) = line.trim_start().strip_prefix("expr:") else {
            i += 1;
            continue;
        };
        let mut end = i + 1;
        if value.trim() == "|" {
            while end < rules.len()
                && (rules[end].trim().is_empty()
                    || rules[end].len() - rules[end].trim_start().len() > indent)
            {
                end += 1;
            }
        }
        blocks.push((i, end, indent));
        i = end;
    }
    blocks
}

/// Every PromQL expression shipped: the rules' and the dashboard's.
fn shipped_queries() -> Vec<String> {
    let rules = read("alerts.yaml");
    let lines: Vec<&str> = rules.lines().collect();
    let mut queries: Vec<String> = expr_blocks(&lines)
        .into_iter()
        .map(|(start, end, _)| {
            let first = lines[start].trim_start().trim_start_matches("expr:");
            std::iter::once(first)
                .chain(lines[start + 1..end].iter().copied())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect();
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("dashboard.json")).expect("dashboard.json is JSON");
    fn walk(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::String(expr)) = map.get("expr") {
                    out.push(expr.clone());
                }
                map.values().for_each(|v| walk(v, out));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(&dashboard, &mut queries);
    queries
}

/// The metric names in `queries` that this project's processes or redis_exporter export:
/// identifiers starting `coupon_persister_`, `coupon_http_` or `redis_`.
fn metric_names(queries: &[String]) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for query in queries {
        let mut word = String::new();
        for c in query.chars().chain(std::iter::once(' ')) {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                word.push(c);
                continue;
            }
            if ["coupon_persister_", "coupon_http_", "redis_"]
                .iter()
                .any(|prefix| word.starts_with(prefix))
            {
                names.insert(std::mem::take(&mut word));
            }
            word.clear();
        }
    }
    names
}

/// Whether the exposition `text` has a sample of `name` (`name{…} v` or `name v`).
fn exports(text: &str, name: &str) -> bool {
    text.lines().any(|line| {
        line.strip_prefix(name)
            .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
    })
}

#[test]
fn promtool_checks_the_rules_and_the_prometheus_config() {
    if !tool_or_skip("promtool", "apt-get install prometheus") {
        return;
    }
    let dir = monitoring_dir();
    let checked = promtool_ok(&[
        Path::new("check"),
        Path::new("rules"),
        &dir.join("alerts.yaml"),
    ]);
    let rules = expr_blocks(&read("alerts.yaml").lines().collect::<Vec<_>>()).len();
    assert!(
        checked.contains(&format!("SUCCESS: {rules} rules found")),
        "{checked}"
    );
    promtool_ok(&[
        Path::new("check"),
        Path::new("config"),
        &dir.join("prometheus.yml"),
    ]);
}

#[test]
fn the_rule_tests_pass_and_catch_every_rule_that_never_or_always_fires() {
    if !tool_or_skip("promtool", "apt-get install prometheus") {
        return;
    }
    let dir = monitoring_dir();
    let tests = dir.join("alerts.test.yaml");
    promtool_ok(&[Path::new("test"), Path::new("rules"), &tests]);

    // The same tests against broken copies of the rules: each must fail.
    let scratch = tempfile::tempdir().expect("temp dir");
    let copied_tests = scratch.path().join("alerts.test.yaml");
    std::fs::copy(&tests, &copied_tests).expect("copy the tests");
    let rules = read("alerts.yaml");
    let lines: Vec<&str> = rules.lines().collect();
    let blocks = expr_blocks(&lines);
    assert!(blocks.len() >= 19, "{} rules", blocks.len());
    let mut uncaught = Vec::new();
    for &(start, end, indent) in &blocks {
        for broken in ["vector(0) > 1", "vector(1)"] {
            let mut text: Vec<String> = lines[..start].iter().map(|l| l.to_string()).collect();
            text.push(format!("{}expr: {broken}", " ".repeat(indent)));
            text.extend(lines[end..].iter().map(|l| l.to_string()));
            std::fs::write(scratch.path().join("alerts.yaml"), text.join("\n"))
                .expect("write the broken rules");
            if promtool(&[Path::new("test"), Path::new("rules"), &copied_tests])
                .status
                .success()
            {
                uncaught.push(format!(
                    "line {}: `{}` replaced by `{broken}`",
                    start + 1,
                    lines[start].trim()
                ));
            }
        }
    }
    assert!(
        uncaught.is_empty(),
        "the tests pass with a broken rule:\n{}",
        uncaught.join("\n")
    );
}

/// redis_exporter against `server`, on a free port; killed on drop.
struct RedisExporter {
    child: Child,
    port: u16,
}

impl RedisExporter {
    fn start(server: &Server) -> RedisExporter {
        let port = coupon_testkit::free_port();
        let child = Command::new("prometheus-redis-exporter")
            .args(["-redis.addr", &server.url()])
            .args(["-web.listen-address", &format!("127.0.0.1:{port}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start prometheus-redis-exporter");
        RedisExporter { child, port }
    }

    fn scrape(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match request(self.port, "GET", "/metrics", None) {
                Ok(response) if response.status == 200 => return response.body,
                _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                other => panic!("redis_exporter does not answer: {other:?}"),
            }
        }
    }
}

impl Drop for RedisExporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "{what} never happened");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn every_metric_the_rules_and_the_dashboard_name_is_exported() {
    let names = metric_names(&shipped_queries());
    assert!(names.len() > 20, "{names:?}");
    let exporter_present = tool_or_skip(
        "prometheus-redis-exporter",
        "apt-get install prometheus-redis-exporter",
    );

    let server = Server::start(Flavor::Redis);
    let database = TestDb::sqlite();
    let persister = Persister::start(&server.url(), &database.url(), &[]);
    let service = HttpService::start(&[
        "--redis-url",
        &server.url(),
        "--campaign",
        "sale=3",
        "--campaign",
        "later=3",
    ]);
    // A sale: three issued, a repeat click, two sold out; persisted.
    for user in ["alice", "bob", "carol", "alice", "dave", "erin"] {
        service.issue("sale", user);
    }
    wait_for("the persister acknowledging the three issues", || {
        persister.metric("coupon_persister_acked_total") >= 3.0
    });
    // Redis at maxmemory: a new issue is refused (OOM), counted by the service and by Redis.
    let mut redis = server.connect();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(1)
        .query(&mut redis)
        .expect("CONFIG SET maxmemory");
    let refused = service.issue("later", "frank");
    assert_eq!(refused.status, 503, "{refused:?}");
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(0)
        .query(&mut redis)
        .expect("CONFIG SET maxmemory");

    // The service's stock gauges follow Redis within a second.
    wait_for("the stock gauges", || {
        let text = service.request("GET", "/metrics", None).body;
        text.contains("coupon_http_coupon_remaining{coupon=\"sale\"} 0")
            && text.contains("coupon_http_coupon_remaining{coupon=\"later\"} 3")
    });
    let http = service.request("GET", "/metrics", None).body;
    for line in [
        "coupon_http_coupon_stock{coupon=\"sale\"} 3",
        "coupon_http_request_timeout_seconds 2.5",
        "coupon_http_issue_outcomes_total{coupon=\"sale\",outcome=\"issued\"} 3",
        "coupon_http_issue_outcomes_total{coupon=\"sale\",outcome=\"sold_out\"} 2",
        "coupon_http_writes_refused_total{reason=\"oom\"} 1",
    ] {
        assert!(http.lines().any(|l| l == line), "no `{line}` in\n{http}");
    }
    let (_, persisted) = persister
        .http_get("/metrics")
        .expect("the persister's /metrics");
    let redis_figures = exporter_present.then(|| RedisExporter::start(&server).scrape());

    let mut missing = Vec::new();
    for name in &names {
        let text = if name.starts_with("coupon_persister_") {
            &persisted
        } else if name.starts_with("coupon_http_") {
            &http
        } else if let Some(text) = &redis_figures {
            text
        } else {
            continue;
        };
        if !exports(text, name) {
            missing.push(name.as_str());
        }
    }
    assert!(
        missing.is_empty(),
        "named by monitoring/ but not exported: {missing:?}"
    );
}
