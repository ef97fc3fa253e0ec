//! The example HTTP service (`examples/http-service`, binary `coupon-http`) against a real
//! Redis with the module: every route and status, bad input, Redis killed mid-run, timeouts
//! retried, SIGTERM with requests in flight, and the shipped wrk and Locust scripts.

use coupon_tests::http::{request, send_raw, tool_or_skip, HttpResponse, HttpService, Wrk};
use coupon_tests::{assert_redis_matches, Flavor, Ledger, Server};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// A problem document (RFC 9457) with this status and, if given, this type.
fn assert_problem(response: &HttpResponse, status: u16, kind: Option<&str>) -> Value {
    assert_eq!(response.status, status, "{response:?}");
    assert_eq!(
        response.header("content-type"),
        Some("application/problem+json"),
        "{response:?}"
    );
    let body = response.json();
    assert_eq!(body["status"], status, "{body}");
    assert!(
        body["title"].is_string() && body["detail"].is_string(),
        "{body}"
    );
    if let Some(kind) = kind {
        assert_eq!(
            body["type"],
            format!("tag:coupon.example,2026:{kind}"),
            "{body}"
        );
    }
    body
}

/// The sum of the metric lines named `name` that carry every label of `labels` (`k="v"`).
fn metric(service: &HttpService, name: &str, labels: &[&str]) -> f64 {
    let body = service.request("GET", "/metrics", None).body;
    body.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
                && labels.iter().all(|label| line.contains(label))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn info(service: &HttpService, coupon: &str) -> Value {
    let response = service.request("GET", &format!("/coupons/{coupon}"), None);
    assert_eq!(response.status, 200, "{response:?}");
    response.json()
}

fn ledger(coupon: &str, issued: &[(String, u64)]) -> Ledger {
    let mut ledger = Ledger::default();
    for (user, seq) in issued {
        ledger.rows.insert(
            (coupon.as_bytes().to_vec(), *seq as i64),
            (user.as_bytes().to_vec(), false),
        );
    }
    ledger
}

/// Pauses every Redis client for `ms` (`CLIENT PAUSE … ALL`): commands sent meanwhile wait in
/// Redis and run when the pause ends. In effect once this returns.
fn pause_redis(server: &Server, ms: u64) {
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(ms)
        .arg("ALL")
        .query(&mut server.connect())
        .expect("CLIENT PAUSE");
}

fn unpause_redis(server: &Server) {
    let _: () = redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query(&mut server.connect())
        .expect("CLIENT UNPAUSE");
}

#[test]
fn every_route_answers_with_its_status() {
    let server = Server::start(Flavor::Redis);
    let dir = tempfile::tempdir().expect("a temp dir");
    let file = dir.path().join("campaigns.toml");
    std::fs::write(
        &file,
        "[[campaign]]\ncoupon = \"sale\"\nstock = 2\n\n[[campaign]]\ncoupon = \"later\"\n\
         stock = 5\nstarts = \"2099-01-01T00:00:00Z\"\nends = \"2099-01-02T00:00:00Z\"\n",
    )
    .expect("write the campaigns file");
    let service = HttpService::start(&[
        "--redis-url",
        &server.url(),
        "--campaigns-file",
        &file.display().to_string(),
        "--campaign",
        "over=5@2001-01-01T00:00:00Z/2001-01-02T00:00:00Z",
        "--campaign",
        "open=5@2001-01-01T00:00:00Z/2099-01-01T00:00:00Z,shop{7}:sale=3",
    ]);

    // 201 issued now, with the holder's URL; 200 for the same user again, same seq.
    let alice = service.issue("sale", "alice");
    assert_eq!(alice.status, 201, "{alice:?}");
    assert_eq!(
        alice.header("location"),
        Some("/coupons/sale/holders/alice")
    );
    assert_eq!(alice.header("content-type"), Some("application/json"));
    assert_eq!(
        alice.json(),
        json!({"coupon": "sale", "user": "alice", "outcome": "issued", "seq": 1})
    );
    let again = service.issue("sale", "alice");
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(
        again.json(),
        json!({"coupon": "sale", "user": "alice", "outcome": "already_issued", "seq": 1})
    );
    assert_eq!(service.issue("sale", "bob").json()["seq"], 2);
    // 409 sold out, a problem document that carries the outcome.
    let sold_out = assert_problem(&service.issue("sale", "carol"), 409, Some("sold-out"));
    assert_eq!(
        (&sold_out["outcome"], &sold_out["coupon"]),
        (&json!("sold_out"), &json!("sale"))
    );
    // 403 outside the window, before or after; inside it, issued.
    let later = assert_problem(&service.issue("later", "dave"), 403, Some("not-started"));
    assert_eq!(later["outcome"], "not_started");
    let over = assert_problem(&service.issue("over", "dave"), 403, Some("ended"));
    assert_eq!(over["outcome"], "ended");
    assert_eq!(service.issue("open", "dave").status, 201);
    // 404 for a coupon not on sale, whatever the body.
    assert_problem(&service.issue("nope", "dave"), 404, Some("unknown-coupon"));

    // Holders: 200 with the seq, or 404.
    let holder = service.request("GET", "/coupons/sale/holders/alice", None);
    assert_eq!(holder.status, 200, "{holder:?}");
    assert_eq!(
        holder.json(),
        json!({"coupon": "sale", "user": "alice", "seq": 1})
    );
    assert_problem(
        &service.request("GET", "/coupons/sale/holders/carol", None),
        404,
        Some("not-a-holder"),
    );
    assert_problem(
        &service.request("GET", "/coupons/nope/holders/alice", None),
        404,
        Some("unknown-coupon"),
    );

    // Info: the campaign and its counters.
    assert_eq!(
        info(&service, "sale"),
        json!({"coupon": "sale", "stock": 2, "issued": 2, "remaining": 0, "revoked": 0, "last_seq": 2})
    );
    assert_eq!(
        info(&service, "later")["window"],
        json!({"starts": "2099-01-01T00:00:00Z", "ends": "2099-01-02T00:00:00Z"})
    );
    assert_problem(
        &service.request("GET", "/coupons/nope", None),
        404,
        Some("unknown-coupon"),
    );

    // Revoke: 204, then 404; the stock comes back, the seq does not.
    let revoked = service.request("DELETE", "/coupons/sale/holders/alice", None);
    assert_eq!((revoked.status, revoked.body.as_str()), (204, ""));
    assert_problem(
        &service.request("DELETE", "/coupons/sale/holders/alice", None),
        404,
        Some("not-a-holder"),
    );
    assert_eq!(service.issue("sale", "carol").json()["seq"], 3);
    let counters = info(&service, "sale");
    assert_eq!(
        (&counters["revoked"], &counters["last_seq"]),
        (&json!(1), &json!(3))
    );

    // Keys and users that need escaping in a URL: the Location is escaped and works.
    let spaced = service.issue("shop{7}:sale", "a b/c");
    assert_eq!(spaced.status, 201, "{spaced:?}");
    let location = spaced.header("location").expect("a Location").to_string();
    assert_eq!(location, "/coupons/shop%7B7%7D:sale/holders/a%20b%2Fc");
    assert_eq!(
        service.request("GET", &location, None).json()["user"],
        "a b/c"
    );
    assert_eq!(service.request("DELETE", &location, None).status, 204);

    // Unknown routes and methods: problem documents too.
    assert_problem(&service.request("GET", "/nothing", None), 404, None);
    let wrong_method = service.request("PUT", "/coupons/sale", None);
    assert_problem(&wrong_method, 405, None);

    // Health and metrics.
    let health = service.request("GET", "/healthz", None);
    assert_eq!(
        (health.status, health.json()),
        (200, json!({"status": "ok"}))
    );
    let metrics = service.request("GET", "/metrics", None);
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .body
            .contains("coupon_http_request_duration_seconds_bucket"),
        "{}",
        metrics.body
    );
    let issue_route = r#"route="/coupons/{coupon}/issue""#;
    let count = |status: &str| {
        metric(
            &service,
            "coupon_http_requests_total",
            &[issue_route, status],
        )
    };
    assert_eq!(count(r#"status="201""#), 5.0);
    assert_eq!(count(r#"status="200""#), 1.0);
    assert_eq!(count(r#"status="409""#), 1.0);
    assert_eq!(count(r#"status="403""#), 2.0);
    assert_eq!(count(r#"status="404""#), 1.0);
    assert_eq!(
        metric(
            &service,
            "coupon_http_requests_total",
            &[r#"route="unmatched""#, r#"status="404""#]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &service,
            "coupon_http_issue_outcomes_total",
            &[r#"outcome="issued""#]
        ),
        5.0
    );
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let server = Server::start(Flavor::Redis);
    let service = HttpService::start(&["--redis-url", &server.url(), "--campaign", "sale=10"]);
    let post = |body: &str| service.request("POST", "/coupons/sale/issue", Some(body));

    for body in [r#"{"user":"#, "not json", "", "[]"] {
        assert_problem(&post(body), 400, Some("bad-body"));
    }
    let missing = assert_problem(&post("{}"), 400, Some("bad-body"));
    assert!(
        missing["detail"].as_str().unwrap_or("").contains("user"),
        "{missing}"
    );
    assert_problem(&post(r#"{"user": 42}"#), 400, Some("bad-body"));
    assert_problem(&post(r#"{"user": ""}"#), 400, Some("bad-user"));
    let long = json!({ "user": "x".repeat(257) }).to_string();
    assert_problem(&post(&long), 400, Some("bad-user"));
    let huge = json!({ "user": "x".repeat(5_000) }).to_string();
    assert_problem(&post(&huge), 413, Some("bad-body"));
    let as_text = request(
        service.port(),
        "POST",
        "/coupons/sale/issue",
        Some(("text/plain", r#"{"user": "alice"}"#)),
    )
    .expect("an answer");
    assert_problem(&as_text, 415, Some("bad-body"));
    // A path that is not UTF-8 once decoded.
    assert_problem(
        &service.request("GET", "/coupons/sale/holders/%FF", None),
        400,
        None,
    );
    assert_problem(
        &service.request(
            "GET",
            &format!("/coupons/sale/holders/{}", "y".repeat(257)),
            None,
        ),
        400,
        Some("bad-user"),
    );
    // Not even HTTP.
    let garbage = send_raw(service.port(), b"HELLO\r\n\r\n").expect("an answer");
    assert_eq!(garbage.status, 400, "{garbage:?}");

    assert_eq!(info(&service, "sale")["issued"], 0);
    assert_eq!(
        metric(&service, "coupon_http_issue_outcomes_total", &[]),
        0.0
    );
    // Well-formed requests still work.
    assert_eq!(service.issue("sale", "alice").status, 201);
}

#[test]
fn redis_killed_mid_run_gives_503_then_recovers() {
    let mut server = Server::builder(Flavor::Redis).aof(true).start();
    let service = HttpService::start(&[
        "--redis-url",
        &server.url(),
        "--campaign",
        "sale=10",
        "--redis-timeout-ms",
        "300",
        "--retry-after-secs",
        "2",
    ]);
    assert_eq!(service.issue("sale", "alice").status, 201);

    server.kill();
    for response in [
        service.issue("sale", "bob"),
        service.request("GET", "/coupons/sale/holders/alice", None),
        service.request("DELETE", "/coupons/sale/holders/alice", None),
        service.request("GET", "/coupons/sale", None),
        service.request("GET", "/healthz", None),
    ] {
        assert_problem(&response, 503, Some("unavailable"));
        assert_eq!(response.header("retry-after"), Some("2"), "{response:?}");
    }
    assert!(
        metric(&service, "coupon_http_redis_errors_total", &[]) >= 5.0,
        "{}",
        service.log()
    );

    // Back on the same port with what it had written: the service reconnects by itself.
    server.restart(true);
    let deadline = Instant::now() + Duration::from_secs(15);
    let bob = loop {
        let bob = service.issue("sale", "bob");
        if bob.status != 503 || Instant::now() > deadline {
            break bob;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(bob.status, 201, "no recovery: {bob:?}\n{}", service.log());
    assert_eq!(bob.json()["seq"], 2);
    let alice = service.issue("sale", "alice");
    assert_eq!((alice.status, alice.json()["seq"].clone()), (200, json!(1)));
    assert_eq!(service.request("GET", "/healthz", None).status, 200);
}

#[test]
fn an_issue_timed_out_inside_the_service_is_retried_with_the_same_seq() {
    let server = Server::start(Flavor::Redis);
    let service = HttpService::start(&[
        "--redis-url",
        &server.url(),
        "--campaign",
        "sale=10",
        "--redis-timeout-ms",
        "600",
        "--issue-retries",
        "1",
        "--request-timeout-ms",
        "5000",
    ]);
    // Redis holds every command for 0.9 s: the first attempt times out at 0.6 s (but waits in
    // Redis), the retry is answered when the pause ends. One of the two issued, the other saw
    // it issued: the answer carries the one seq the user holds.
    pause_redis(&server, 900);
    let dave = service.issue("sale", "dave");
    assert!(
        matches!(dave.status, 200 | 201),
        "{dave:?}\n{}",
        service.log()
    );
    let holder = service
        .request("GET", "/coupons/sale/holders/dave", None)
        .json();
    assert_eq!(dave.json()["seq"], holder["seq"]);
    let counters = info(&service, "sale");
    assert_eq!(
        (&counters["issued"], &counters["last_seq"]),
        (&json!(1), &json!(1))
    );
    assert_eq!(
        metric(&service, "coupon_http_issue_retries_total", &[]),
        1.0
    );
}

#[test]
fn an_issue_answered_503_after_a_timeout_and_retried_by_the_client_gets_the_same_seq() {
    let server = Server::start(Flavor::Redis);
    let service = HttpService::start(&[
        "--redis-url",
        &server.url(),
        "--campaign",
        "sale=10",
        "--redis-timeout-ms",
        "300",
        "--issue-retries",
        "0",
    ]);
    pause_redis(&server, 2_000);
    let first = service.issue("sale", "erin");
    assert_problem(&first, 503, Some("unavailable"));
    assert_eq!(first.header("retry-after"), Some("1"));
    unpause_redis(&server);
    // The timed-out call reached Redis and issued; the retry says so, with that seq.
    let retry = service.issue("sale", "erin");
    assert_eq!(retry.status, 200, "{retry:?}");
    assert_eq!(retry.json()["outcome"], "already_issued");
    assert_eq!(retry.json()["seq"], 1);
    assert_eq!(info(&service, "sale")["issued"], 1);
}

#[test]
fn sigterm_lets_requests_in_flight_finish() {
    let server = Server::start(Flavor::Redis);
    let mut service = HttpService::start(&[
        "--redis-url",
        &server.url(),
        "--campaign",
        "sale=100",
        "--redis-timeout-ms",
        "5000",
        "--request-timeout-ms",
        "10000",
        "--shutdown-timeout-ms",
        "8000",
    ]);
    // An idle keep-alive connection must not hold the shutdown up.
    let idle = std::net::TcpStream::connect(("127.0.0.1", service.port())).expect("connect");

    pause_redis(&server, 1_500);
    let port = service.port();
    let clients: Vec<_> = (0..20)
        .map(|i| {
            std::thread::spawn(move || {
                let body = json!({ "user": format!("user-{i}") }).to_string();
                request(
                    port,
                    "POST",
                    "/coupons/sale/issue",
                    Some(("application/json", &body)),
                )
            })
        })
        .collect();
    // All twenty are inside the service, waiting on Redis (the metrics request is the 21st).
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&service, "coupon_http_requests_in_flight", &[]) < 21.0 {
        assert!(
            Instant::now() < deadline,
            "the requests never arrived\n{}",
            service.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let signalled = Instant::now();
    service.signal_term();
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        request(port, "GET", "/healthz", None).is_err(),
        "a new connection was accepted after SIGTERM"
    );

    let mut issued = Vec::new();
    for client in clients {
        let response = client
            .join()
            .expect("client thread")
            .unwrap_or_else(|e| panic!("a request in flight was cut: {e}\n{}", service.log()));
        assert_eq!(response.status, 201, "{response:?}");
        let body = response.json();
        issued.push((
            body["user"].as_str().unwrap_or("").to_string(),
            body["seq"].as_u64().unwrap_or(0),
        ));
    }
    let status = service.wait(Duration::from_secs(8));
    assert!(
        matches!(status, Some(s) if s.success()),
        "exit {status:?} after {:?}\n{}",
        signalled.elapsed(),
        service.log()
    );
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "{:?}",
        signalled.elapsed()
    );
    drop(idle);
    issued.sort_by_key(|(_, seq)| *seq);
    let seqs: Vec<u64> = issued.iter().map(|(_, seq)| *seq).collect();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
    assert_redis_matches(&server, &ledger("sale", &issued));
}

#[test]
fn sigterm_gives_up_on_requests_past_the_shutdown_timeout() {
    let server = Server::start(Flavor::Redis);
    let mut service = HttpService::start(&[
        "--redis-url",
        &server.url(),
        "--campaign",
        "sale=100",
        "--redis-timeout-ms",
        "5000",
        "--request-timeout-ms",
        "10000",
        "--shutdown-timeout-ms",
        "300",
    ]);
    pause_redis(&server, 2_000);
    let port = service.port();
    let client = std::thread::spawn(move || {
        request(
            port,
            "POST",
            "/coupons/sale/issue",
            Some(("application/json", r#"{"user":"late"}"#)),
        )
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&service, "coupon_http_requests_in_flight", &[]) < 2.0 {
        assert!(
            Instant::now() < deadline,
            "the request never arrived\n{}",
            service.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let signalled = Instant::now();
    let status = service.terminate(Duration::from_secs(5));
    let waited = signalled.elapsed();
    assert!(
        matches!(status, Some(s) if !s.success()),
        "{status:?}\n{}",
        service.log()
    );
    assert!(waited < Duration::from_millis(1_500), "{waited:?}");
    assert!(
        service.log().contains("did not finish within"),
        "{}",
        service.log()
    );
    assert!(
        client.join().expect("client thread").is_err(),
        "the cut request got an answer"
    );
}

#[test]
fn the_ceiling_answers_without_redis() {
    // No Redis anywhere: the ceiling never connects.
    let service = HttpService::start(&["--ceiling", "--redis-url", "redis://127.0.0.1:1/"]);
    let answer = service.issue("anything", "alice");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json()["outcome"], "issued");
    assert_eq!(
        metric(
            &service,
            "coupon_http_requests_total",
            &[r#"status="200""#, "issue"]
        ),
        1.0
    );
}

/// Exactly the stock issued, seen from the answers and from Redis.
fn assert_sold_exactly(
    service: &HttpService,
    server: &Server,
    coupon: &str,
    stock: u64,
    run: &coupon_tests::http::LoadRun,
) {
    run.check_issued(stock)
        .unwrap_or_else(|problem| panic!("{problem}\n{}", run.output));
    assert!(
        run.statuses
            .keys()
            .all(|status| matches!(status, 200 | 201 | 409)),
        "{}\n{}",
        run.answers(),
        run.output
    );
    assert!(
        run.statuses.get(&409).copied().unwrap_or(0) > 0,
        "never sold out: {}",
        run.answers()
    );
    let counters = info(service, coupon);
    assert_eq!(
        (&counters["issued"], &counters["last_seq"]),
        (&json!(stock), &json!(stock))
    );
    assert_redis_matches(server, &ledger(coupon, &run.issued));
    assert!(
        run.output
            .contains(&format!("issued: {stock} coupons, seqs issued twice: 0")),
        "{}",
        run.output
    );
}

#[test]
fn the_wrk_script_issues_exactly_the_stock() {
    if !tool_or_skip("wrk", "apt-get install wrk") {
        return;
    }
    let server = Server::start(Flavor::Redis);
    let service = HttpService::start(&["--redis-url", &server.url(), "--campaign", "sale=100"]);
    let run = Wrk {
        threads: 1,
        connections: 50,
        duration: Duration::from_secs(3),
        users: 1_000,
    }
    .run(&format!("{}/coupons/sale/issue", service.url()));
    assert_eq!(run.socket_errors(), 0, "{}", run.output);
    assert_sold_exactly(&service, &server, "sale", 100, &run);
}

#[test]
fn the_locust_file_issues_exactly_the_stock() {
    if !tool_or_skip("locust", "pip install locust") {
        return;
    }
    let server = Server::start(Flavor::Redis);
    let service = HttpService::start(&["--redis-url", &server.url(), "--campaign", "sale=100"]);
    let run =
        coupon_tests::http::run_locust(&service.url(), "sale", 1_000, 50, Duration::from_secs(5));
    assert_sold_exactly(&service, &server, "sale", 100, &run);
}

#[test]
fn the_spike_benchmark_runs_and_proves_its_counts() {
    if !tool_or_skip("wrk", "apt-get install wrk") {
        return;
    }
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_coupon-bench"))
        .args(["http", "--smoke"])
        .output()
        .expect("coupon-bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for part in [
        "service (SDK, Redis)",
        "ceiling (constant JSON)",
        "ratio service/ceiling",
        "seeds",
        "OK: exactly the stock issued",
    ] {
        assert!(stdout.contains(part), "{part} missing:\n{stdout}");
    }
}

/// With `--redis-cluster`, every request shares one SDK `Cluster` connection: requests racing
/// while the coupon's slot migrates (both keys on the target, so each call meets `-ASK`) and
/// then as the move ends (`-MOVED`) are all answered, and exactly the stock is sold.
#[test]
fn on_a_cluster_one_shared_connection_sells_exactly_the_stock_through_a_move() {
    const STOCK: u64 = 60;
    const USERS: usize = 120;
    let cluster = coupon_tests::Cluster::start(Flavor::Redis);
    let slot = *cluster.slots_of(0)[0].start();
    let coupon = coupon_tests::key_in_slot("sale", slot);
    let service = HttpService::start(&[
        "--redis-cluster",
        "--redis-url",
        &cluster.urls().join(","),
        "--campaign",
        &format!("{coupon}={STOCK}"),
    ]);
    assert_eq!(service.issue(&coupon, "first").status, 201);
    let events = coupon_layout::CouponKey::new(coupon.as_bytes())
        .expect("a coupon key")
        .events_key();
    cluster.begin_slot_move(slot, 0, 1);
    cluster.migrate(0, 1, &[coupon.as_bytes(), &events]);

    let answers: Vec<HttpResponse> = std::thread::scope(|scope| {
        let racers: Vec<_> = (0..12)
            .map(|racer| {
                let (service, coupon) = (&service, &coupon);
                scope.spawn(move || {
                    (racer..USERS)
                        .step_by(12)
                        .map(|n| service.issue(coupon, &format!("user-{n}")))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(50));
        cluster.finish_slot_move(slot, 0, 1);
        racers
            .into_iter()
            .flat_map(|racer| racer.join().expect("a racer"))
            .collect()
    });
    let issued: Vec<u64> = answers
        .iter()
        .filter(|answer| answer.status == 201)
        .map(|answer| answer.json()["seq"].as_u64().expect("a seq"))
        .collect();
    let sold_out = answers.iter().filter(|a| a.status == 409).count();
    assert_eq!(
        issued.len() + sold_out,
        USERS,
        "every request answered 201 or 409: {:?}",
        answers.iter().find(|a| !matches!(a.status, 201 | 409))
    );
    let mut seqs = issued.clone();
    seqs.sort_unstable();
    assert!(
        seqs.iter().copied().eq(2..=STOCK),
        "seqs 2..={STOCK} once each: {seqs:?}"
    );
    assert_eq!(info(&service, &coupon)["issued"], json!(STOCK));
    assert_eq!(cluster.owner_of(slot), 1);
}
