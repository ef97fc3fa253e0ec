//! Memory pressure, eviction policies and a coupon missing one of its two keys: the worst case
//! is a clear error with nothing changed, never a reused seq or a holder beyond the limit.

use coupon_tests::{on_every_server, Flavor, Server};
use redis::{Connection, Value};

type Reply = (String, Option<i64>, i64);

fn issue(conn: &mut Connection, key: &str, user: &str, limit: i64) -> redis::RedisResult<Reply> {
    redis::cmd("COUPON.ISSUE")
        .arg(key)
        .arg(user)
        .arg(limit)
        .query(conn)
}

fn revoke(conn: &mut Connection, key: &str, user: &str) -> redis::RedisResult<i64> {
    redis::cmd("COUPON.REVOKE").arg(key).arg(user).query(conn)
}

fn config_set(conn: &mut Connection, name: &str, value: &str) {
    redis::cmd("CONFIG")
        .arg("SET")
        .arg(name)
        .arg(value)
        .query::<()>(conn)
        .unwrap_or_else(|e| panic!("CONFIG SET {name} {value}: {e}"));
}

/// Asserts `result` is an error saying `expected`, and that the dataset did not change.
fn refused<T: std::fmt::Debug>(
    server: &Server,
    before: &str,
    result: redis::RedisResult<T>,
    expected: &str,
) {
    let error = result.expect_err("the write must be refused");
    assert!(
        error.to_string().contains(expected),
        "{error} should say {expected:?}"
    );
    assert_eq!(
        server.digest(),
        before,
        "a refused write changed the dataset"
    );
}

fn used_memory(conn: &mut Connection) -> u64 {
    let info: String = redis::cmd("INFO").arg("memory").query(conn).unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .and_then(|bytes| bytes.trim().parse().ok())
        .expect("used_memory in INFO memory")
}

/// Fills memory with junk until a write of ~1 KiB is refused at `maxmemory`.
fn fill_until_out_of_memory(conn: &mut Connection) {
    let junk = "x".repeat(1024);
    for i in 0..100_000 {
        let stored: redis::RedisResult<()> = redis::cmd("SET")
            .arg(format!("junk:{i}"))
            .arg(&junk)
            .query(conn);
        if stored.is_err() {
            return;
        }
    }
    panic!("memory never filled up");
}

fn at_maxmemory_reads_answer_and_writes_get_oom(flavor: Flavor) {
    let server = Server::start(flavor);
    let mut conn = server.connect();
    assert_eq!(issue(&mut conn, "sale", "alice", 1).unwrap().0, "ISSUED");
    let used = used_memory(&mut conn);
    config_set(&mut conn, "maxmemory-policy", "noeviction");
    config_set(&mut conn, "maxmemory", &(used + 2_000_000).to_string());
    fill_until_out_of_memory(&mut conn);
    let before = server.digest();

    // What writes nothing keeps answering: a holder's retry, a sold-out click, the reads.
    assert_eq!(
        issue(&mut conn, "sale", "alice", 1).unwrap(),
        ("DUPLICATE".to_string(), Some(1), 1)
    );
    assert_eq!(
        issue(&mut conn, "sale", "bob", 1).unwrap(),
        ("SOLD_OUT".to_string(), None, 1)
    );
    let seq: Option<i64> = redis::cmd("COUPON.CHECK")
        .arg("sale")
        .arg("alice")
        .query(&mut conn)
        .unwrap();
    assert_eq!(seq, Some(1));
    // What would write gets Redis' own -OOM, and nothing changes.
    let grant = issue(&mut conn, "sale", "bob", 2);
    assert!(
        matches!(&grant, Err(e) if e.code() == Some("OOM")),
        "{grant:?}"
    );
    refused(&server, &before, grant, "maxmemory");
    refused(
        &server,
        &before,
        revoke(&mut conn, "sale", "alice"),
        "maxmemory",
    );
    refused(
        &server,
        &before,
        issue(&mut conn, "new", "carol", 5),
        "maxmemory",
    );
}

fn an_allkeys_policy_warns_and_refuses_writes(flavor: Flavor) {
    let server = Server::builder(flavor)
        .arg("maxmemory-policy", "allkeys-lru")
        .start();
    let warning = "coupon data must not live under an evicting policy";
    assert!(
        server.log().contains(warning),
        "no warning at load:\n{}",
        server.log()
    );
    let mut conn = server.connect();
    let info =
        |conn: &mut Connection| -> String { redis::cmd("INFO").arg("coupon").query(conn).unwrap() };
    assert!(info(&mut conn).contains("coupon_eviction_safe:no"));
    assert!(info(&mut conn).contains("coupon_eviction_maxmemory_policy:allkeys-lru"));
    assert!(info(&mut conn).contains(warning));
    // No maxmemory yet: nothing is evicted, so writes go ahead (with the warning standing).
    assert_eq!(issue(&mut conn, "sale", "alice", 5).unwrap().0, "ISSUED");

    // With maxmemory set, any key may be evicted: every coupon write is refused.
    config_set(&mut conn, "maxmemory", "1gb");
    let before = server.digest();
    let refusal = "refused under maxmemory-policy allkeys-lru";
    refused(
        &server,
        &before,
        issue(&mut conn, "sale", "bob", 5),
        refusal,
    );
    refused(
        &server,
        &before,
        revoke(&mut conn, "sale", "alice"),
        refusal,
    );
    assert_eq!(
        issue(&mut conn, "sale", "alice", 5).unwrap(),
        ("DUPLICATE".to_string(), Some(1), 1),
        "reads still answer"
    );

    // A safe policy, set at run time, is seen at once.
    config_set(&mut conn, "maxmemory-policy", "volatile-lru");
    assert!(info(&mut conn).contains("coupon_eviction_safe:yes"));
    assert!(!info(&mut conn).contains(warning));
    assert_eq!(issue(&mut conn, "sale", "bob", 5).unwrap().0, "ISSUED");
}

/// A write refused for the eviction policy, or with -OOM when eviction cannot keep up.
fn refused_safely(error: &redis::RedisError) -> bool {
    error.code() == Some("OOM") || error.to_string().contains("refused under maxmemory-policy")
}

/// Under an allkeys policy with memory running out, coupon keys really get evicted; whatever
/// goes, no seq is handed out twice and no one is told ISSUED beyond the limit.
fn eviction_never_reissues_a_seq(flavor: Flavor) {
    let server = Server::start(flavor);
    let mut conn = server.connect();
    let coupons: Vec<String> = (0..50).map(|i| format!("sale:{i}")).collect();
    for coupon in &coupons {
        for user in 0..3 {
            issue(&mut conn, coupon, &format!("u{user}"), 3).unwrap();
        }
    }
    let used = used_memory(&mut conn);
    config_set(&mut conn, "maxmemory-policy", "allkeys-random");
    config_set(&mut conn, "maxmemory", &(used + 1_000_000).to_string());
    let junk = "x".repeat(1024);
    for i in 0..20_000 {
        let _: redis::RedisResult<()> = redis::cmd("SET")
            .arg(format!("junk:{i}"))
            .arg(&junk)
            .query(&mut conn);
    }
    let evicted: String = redis::cmd("INFO").arg("stats").query(&mut conn).unwrap();
    assert!(!evicted.contains("evicted_keys:0\r"), "nothing was evicted");
    for coupon in &coupons {
        // A revoke would free stock; a new user would take it. Both are writes: refused.
        match revoke(&mut conn, coupon, "u0") {
            Ok(0) => {} // the coupon key itself was evicted: u0 holds nothing here any more
            Ok(other) => panic!("{coupon}: a revoke went through ({other}) under eviction"),
            Err(e) => assert!(refused_safely(&e), "{e}"),
        }
        match issue(&mut conn, coupon, "late", 3) {
            Ok((status, seq, _)) => assert!(
                status != "ISSUED",
                "{coupon}: issued seq {seq:?} under eviction"
            ),
            Err(e) => assert!(refused_safely(&e), "{e}"),
        }
    }
}

fn a_coupon_missing_its_stream_is_never_papered_over(flavor: Flavor) {
    let server = Server::start(flavor);
    let mut conn = server.connect();
    issue(&mut conn, "sale", "alice", 3).unwrap();
    let _: i64 = redis::cmd("DEL")
        .arg("sale:events{sale}")
        .query(&mut conn)
        .unwrap();
    let before = server.digest();
    let missing = "the coupon exists but its event stream is missing";
    refused(
        &server,
        &before,
        issue(&mut conn, "sale", "bob", 3),
        missing,
    );
    refused(
        &server,
        &before,
        revoke(&mut conn, "sale", "alice"),
        missing,
    );
    // No second stream was created; reads keep answering from the coupon key.
    let kind: String = redis::cmd("TYPE")
        .arg("sale:events{sale}")
        .query(&mut conn)
        .unwrap();
    assert_eq!(kind, "none");
    assert_eq!(
        issue(&mut conn, "sale", "alice", 3).unwrap(),
        ("DUPLICATE".to_string(), Some(1), 1)
    );
    assert_eq!(
        issue(&mut conn, "sale", "bob", 1).unwrap(),
        ("SOLD_OUT".to_string(), None, 1)
    );
}

fn a_stream_missing_its_coupon_never_restarts_the_seqs(flavor: Flavor) {
    let server = Server::start(flavor);
    let mut conn = server.connect();
    for user in ["a", "b", "c"] {
        issue(&mut conn, "sale", user, 3).unwrap();
    }
    // The coupon key expires (as if evicted); its stream stays.
    let _: i64 = redis::cmd("PEXPIRE")
        .arg("sale")
        .arg(1)
        .query(&mut conn)
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while redis::cmd("EXISTS")
        .arg("sale")
        .query::<i64>(&mut conn)
        .unwrap()
        == 1
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the key never expired"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let before = server.digest();
    let missing = "the coupon's event stream exists but the coupon is missing";
    for user in ["d", "e", "f", "a"] {
        refused(&server, &before, issue(&mut conn, "sale", user, 3), missing);
    }
    // Deleting the stream too is the deliberate way to start the coupon over.
    let _: i64 = redis::cmd("DEL")
        .arg("sale:events{sale}")
        .query(&mut conn)
        .unwrap();
    assert_eq!(
        issue(&mut conn, "sale", "d", 3).unwrap(),
        ("ISSUED".to_string(), Some(1), 1)
    );
}

fn the_script_refuses_a_missing_sibling_alike(flavor: Flavor) {
    let server = Server::builder(flavor).module(false).start();
    let mut conn = server.connect();
    let script = redis::Script::new(coupon_sdk::SCRIPT_SOURCE);
    let call = |conn: &mut Connection, op: &str, user: &str| -> redis::RedisResult<Value> {
        let mut invocation = script.key("sale");
        invocation.key("sale:events{sale}").arg(op).arg(user);
        if op == "issue" {
            invocation.arg(3);
        }
        invocation.invoke(conn)
    };
    call(&mut conn, "issue", "alice").unwrap();
    let _: i64 = redis::cmd("DEL")
        .arg("sale:events{sale}")
        .query(&mut conn)
        .unwrap();
    let before = server.digest();
    let missing = "the coupon exists but its event stream is missing";
    refused(&server, &before, call(&mut conn, "issue", "bob"), missing);
    refused(
        &server,
        &before,
        call(&mut conn, "revoke", "alice"),
        missing,
    );
}

on_every_server!(
    at_maxmemory_reads_answer_and_writes_get_oom,
    an_allkeys_policy_warns_and_refuses_writes,
    eviction_never_reissues_a_seq,
    a_coupon_missing_its_stream_is_never_papered_over,
    a_stream_missing_its_coupon_never_restarts_the_seqs,
    the_script_refuses_a_missing_sibling_alike,
);
