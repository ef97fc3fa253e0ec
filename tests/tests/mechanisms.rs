//! Redis' per-key mechanisms see a coupon through the key its commands name: `WATCH`,
//! client-side caching and ACL rules. Writes mark the coupon key modified; answers that write
//! nothing (a retry, a sold-out click, a refused write) do not.

use coupon_tests::{on_every_server, Flavor, Server};
use redis::{Connection, PushKind, RedisResult, Value};
use std::collections::BTreeSet;
use std::time::Duration;

/// Sends `words` as one command; the reply as one line (`ISSUED 1 1`, `nil`, `NOPERM …`).
fn send(conn: &mut Connection, words: &[&str]) -> String {
    let mut command = redis::cmd(words[0]);
    for word in &words[1..] {
        command.arg(*word);
    }
    one_line(command.query(conn))
}

fn one_line(reply: RedisResult<Value>) -> String {
    fn word(value: &Value) -> String {
        match value {
            Value::SimpleString(text) => text.clone(),
            Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
            Value::Int(n) => n.to_string(),
            Value::Nil => "nil".to_string(),
            Value::Okay => "OK".to_string(),
            Value::Array(items) => items.iter().map(word).collect::<Vec<_>>().join(" "),
            Value::Map(pairs) => {
                let pairs = pairs
                    .iter()
                    .map(|(k, v)| format!("{} {}", word(k), word(v)));
                pairs.collect::<Vec<_>>().join(" ")
            }
            Value::ServerError(e) => format!("{} {}", e.code(), e.details().unwrap_or("")),
            other => format!("{other:?}"),
        }
    }
    match reply {
        Ok(value) => word(&value),
        Err(e) => format!("{} {}", e.code().unwrap_or("?"), e.detail().unwrap_or("")),
    }
}

/// Whether a reply line is an ACL refusal.
fn is_noperm(reply: &str) -> bool {
    reply.starts_with("NOPERM ")
}

// ---- WATCH ----

/// `WATCH key`, `MULTI`, `COUPON.ISSUE key watcher 3`, then `rival` runs on another
/// connection and gets `rival_gets`, then `EXEC`: its reply, `nil` if aborted.
fn exec_after(server: &Server, key: &str, rival: &[&str], rival_gets: &str) -> String {
    let mut conn = server.connect();
    assert_eq!(send(&mut conn, &["WATCH", key]), "OK");
    assert_eq!(send(&mut conn, &["MULTI"]), "OK");
    let queued = send(&mut conn, &["COUPON.ISSUE", key, "watcher", "3"]);
    assert_eq!(queued, "QUEUED");
    assert_eq!(send(&mut server.connect(), rival), rival_gets, "{rival:?}");
    send(&mut conn, &["EXEC"])
}

fn watch_aborts_a_transaction_on_writes_only(flavor: Flavor) {
    let server = Server::start(flavor);
    let mut conn = server.connect();
    // Each case on its own coupon, held by alice: the rival's command, its answer, and
    // whether it aborts the transaction (whose issue to `watcher` otherwise runs).
    let cases: [(&[&str], &str, bool); 8] = [
        (&["COUPON.ISSUE", "k", "bob", "3"], "ISSUED 2 2", true),
        (&["COUPON.REVOKE", "k", "alice"], "1", true),
        (&["COUPON.ISSUE", "k", "alice", "3"], "DUPLICATE 1 1", false),
        (
            &["COUPON.ISSUE", "k", "carol", "1"],
            "SOLD_OUT nil 1",
            false,
        ),
        (
            &["COUPON.ISSUE", "k", "dave", "3", "WINDOW", "1", "2"],
            "ENDED nil 1",
            false,
        ),
        (&["COUPON.REVOKE", "k", "nobody"], "0", false),
        (&["COUPON.CHECK", "k", "alice"], "1", false),
        (
            &["COUPON.INFO", "k"],
            "issued 1 revoked 0 last_seq 1 events 1",
            false,
        ),
    ];
    for (n, (rival, answer, aborts)) in cases.into_iter().enumerate() {
        let key = format!("sale-{n}");
        let issued = send(&mut conn, &["COUPON.ISSUE", &key, "alice", "3"]);
        assert_eq!(issued, "ISSUED 1 1");
        let rival: Vec<&str> = rival
            .iter()
            .map(|w| if *w == "k" { key.as_str() } else { w })
            .collect();
        let exec = exec_after(&server, &key, &rival, answer);
        let (expected, watcher) = if aborts {
            ("nil", "nil")
        } else {
            ("ISSUED 2 2", "2")
        };
        assert_eq!(exec, expected, "EXEC after {rival:?}");
        assert_eq!(send(&mut conn, &["COUPON.CHECK", &key, "watcher"]), watcher);
    }
    // A write the guard refuses (the stream is gone) changes nothing, so aborts nothing.
    let issued = send(&mut conn, &["COUPON.ISSUE", "gone", "alice", "3"]);
    assert_eq!(issued, "ISSUED 1 1");
    assert_eq!(send(&mut conn, &["DEL", "gone:events{gone}"]), "1");
    let refused = "ERR the coupon exists but its event stream is missing (evicted or deleted), \
                   so nothing was changed; restore the stream, or delete the coupon to start it over";
    let rival = ["COUPON.ISSUE", "gone", "bob", "3"];
    assert_eq!(exec_after(&server, "gone", &rival, refused), refused);
}

// ---- Client-side caching ----

/// A RESP3 connection with `CLIENT TRACKING on <options>`, and the channel its pushes go to.
async fn tracking(
    server: &Server,
    options: &[&str],
) -> (
    redis::aio::MultiplexedConnection,
    tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>,
) {
    let (sender, pushes) = tokio::sync::mpsc::unbounded_channel();
    let config = redis::AsyncConnectionConfig::new().set_push_sender(sender);
    let client = redis::Client::open(format!("{}?protocol=resp3", server.url())).unwrap();
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("a RESP3 connection");
    let mut command = redis::cmd("CLIENT");
    command.arg("TRACKING").arg("on").arg(options);
    let _: () = command
        .query_async(&mut conn)
        .await
        .expect("CLIENT TRACKING");
    (conn, pushes)
}

/// The keys of the next invalidation push, waiting at most 5 s.
async fn next_invalidation(
    pushes: &mut tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>,
) -> BTreeSet<String> {
    let push = tokio::time::timeout(Duration::from_secs(5), pushes.recv())
        .await
        .expect("an invalidation within 5 s")
        .expect("the connection is open");
    assert_eq!(push.kind, PushKind::Invalidate, "{push:?}");
    let Some(Value::Array(keys)) = push.data.first() else {
        panic!("invalidation without keys: {push:?}")
    };
    keys.iter()
        .map(|key| match key {
            Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
            other => panic!("a key: {other:?}"),
        })
        .collect()
}

fn keys(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|name| name.to_string()).collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// A client that read the coupon is told when an issue or a revoke changes it, and not when
/// a click is answered without a write. The fence key's invalidation comes next in order,
/// so it proves the rejected clicks sent none.
fn tracking_invalidates_the_coupon_on_writes_only(flavor: Flavor) {
    let server = Server::start(flavor);
    let mut rival = server.connect();
    assert_eq!(
        send(&mut rival, &["COUPON.ISSUE", "sale", "alice", "1"]),
        "ISSUED 1 1"
    );
    runtime().block_on(async {
        let (mut reader, mut pushes) = tracking(&server, &[]).await;
        let read = |words: &[&str]| {
            let mut command = redis::cmd(words[0]);
            command.arg(&words[1..]);
            command
        };
        let bob: Option<i64> = read(&["COUPON.CHECK", "sale", "bob"])
            .query_async(&mut reader)
            .await
            .unwrap();
        assert_eq!(bob, None);
        let _: Option<String> = read(&["GET", "fence"])
            .query_async(&mut reader)
            .await
            .unwrap();

        let retry = send(&mut rival, &["COUPON.ISSUE", "sale", "alice", "1"]);
        assert_eq!(retry, "DUPLICATE 1 1");
        let late = send(&mut rival, &["COUPON.ISSUE", "sale", "bob", "1"]);
        assert_eq!(late, "SOLD_OUT nil 1");
        assert_eq!(send(&mut rival, &["SET", "fence", "1"]), "OK");
        assert_eq!(next_invalidation(&mut pushes).await, keys(&["fence"]));

        let issued = send(&mut rival, &["COUPON.ISSUE", "sale", "bob", "2"]);
        assert_eq!(issued, "ISSUED 2 2");
        assert_eq!(next_invalidation(&mut pushes).await, keys(&["sale"]));

        // Tracking is per read: read again to hear of the next change.
        let alice: Option<i64> = read(&["COUPON.CHECK", "sale", "alice"])
            .query_async(&mut reader)
            .await
            .unwrap();
        assert_eq!(alice, Some(1));
        assert_eq!(send(&mut rival, &["COUPON.REVOKE", "sale", "alice"]), "1");
        assert_eq!(next_invalidation(&mut pushes).await, keys(&["sale"]));
    });
}

/// Broadcast tracking by prefix: both of the coupon's keys start with its name, so a write
/// invalidates both at once; a click answered without a write invalidates nothing.
fn broadcast_tracking_invalidates_both_keys_on_writes_only(flavor: Flavor) {
    let server = Server::start(flavor);
    let mut rival = server.connect();
    assert_eq!(
        send(&mut rival, &["COUPON.ISSUE", "sale", "alice", "1"]),
        "ISSUED 1 1"
    );
    runtime().block_on(async {
        let (_listener, mut pushes) = tracking(&server, &["BCAST", "PREFIX", "sale"]).await;
        let retry = send(&mut rival, &["COUPON.ISSUE", "sale", "alice", "1"]);
        assert_eq!(retry, "DUPLICATE 1 1");
        let late = send(&mut rival, &["COUPON.ISSUE", "sale", "bob", "1"]);
        assert_eq!(late, "SOLD_OUT nil 1");
        assert_eq!(send(&mut rival, &["SET", "sale-fence", "1"]), "OK");
        assert_eq!(next_invalidation(&mut pushes).await, keys(&["sale-fence"]));

        let both = keys(&["sale", "sale:events{sale}"]);
        let issued = send(&mut rival, &["COUPON.ISSUE", "sale", "bob", "2"]);
        assert_eq!(issued, "ISSUED 2 2");
        assert_eq!(next_invalidation(&mut pushes).await, both);
        assert_eq!(send(&mut rival, &["COUPON.REVOKE", "sale", "alice"]), "1");
        assert_eq!(next_invalidation(&mut pushes).await, both);
    });
}

// ---- ACL ----

/// Runs `ACL SETUSER` with the words of `line` (`name rule rule …`), password `pw`.
fn set_user(server: &Server, line: &str) {
    let mut command = redis::cmd("ACL");
    command
        .arg("SETUSER")
        .arg(line.split_whitespace().collect::<Vec<_>>());
    let _: () = command.query(&mut server.connect()).expect(line);
}

fn connect_as(server: &Server, user: &str) -> Connection {
    let url = format!("redis://{user}:pw@127.0.0.1:{}/", server.port());
    redis::Client::open(url)
        .and_then(|client| client.get_connection())
        .unwrap_or_else(|e| panic!("cannot log in as {user}: {e}"))
}

/// Whether the server files module commands under ACL categories: an API from Redis 7.2
/// (Valkey 8 reports 7.2.4). Redis 7.0 leaves them in none.
fn module_commands_have_categories(server: &Server) -> bool {
    let info = send(&mut server.connect(), &["INFO", "server"]);
    let version = info
        .lines()
        .find_map(|line| line.strip_prefix("redis_version:"))
        .expect("redis_version in INFO");
    let mut parts = version.trim().split('.').map(|p| p.parse::<u32>().unwrap());
    (parts.next(), parts.next()) >= (Some(7), Some(2))
}

/// `+@all -@write` covers the module's writes only where module commands have categories:
/// on Redis 7.0 such a user can still issue and take coupons away.
fn subtracting_write_covers_coupon_writes_only_with_categories(flavor: Flavor) {
    let server = Server::start(flavor);
    let mut admin = server.connect();
    assert_eq!(
        send(&mut admin, &["COUPON.ISSUE", "sale", "alice", "5"]),
        "ISSUED 1 1"
    );
    set_user(&server, "sub on >pw ~* +@all -@write");
    let mut sub = connect_as(&server, "sub");
    let revoke = send(&mut sub, &["COUPON.REVOKE", "sale", "alice"]);
    let issue = send(&mut sub, &["COUPON.ISSUE", "sale", "mallory", "5"]);
    let info = send(&mut admin, &["COUPON.INFO", "sale"]);
    if module_commands_have_categories(&server) {
        assert!(is_noperm(&revoke), "{revoke}");
        assert!(is_noperm(&issue), "{issue}");
        assert_eq!(info, "issued 1 revoked 0 last_seq 1 events 1");
        assert_eq!(send(&mut sub, &["COUPON.CHECK", "sale", "alice"]), "1");
    } else {
        // Redis 7.0: the user took alice's coupon away and gave one to mallory.
        assert_eq!(revoke, "1");
        assert_eq!(issue, "ISSUED 2 1");
        assert_eq!(info, "issued 1 revoked 1 last_seq 2 events 3");
        assert_eq!(send(&mut sub, &["COUPON.CHECK", "sale", "alice"]), "nil");
    }
}

/// The ACL lines the README recommends, on every server: a read-only role by allow-list and
/// by subtraction, a writer limited to `sale*` keys (which covers the coupon's stream too),
/// and a writer on the Lua fallback.
fn the_recommended_acl_lines_hold(flavor: Flavor) {
    let server = Server::start(flavor);
    let mut admin = server.connect();
    assert_eq!(
        send(&mut admin, &["COUPON.ISSUE", "sale", "alice", "5"]),
        "ISSUED 1 1"
    );
    let digest = server.digest();
    for line in [
        "reader on >pw ~* +@read +coupon.check +coupon.info",
        "auditor on >pw ~* +@all -@write -coupon.issue -coupon.revoke -coupon.restore",
    ] {
        set_user(&server, line);
        let name = line.split(' ').next().unwrap();
        let mut conn = connect_as(&server, name);
        for write in [
            &["COUPON.ISSUE", "sale", "mallory", "5"][..],
            &["COUPON.REVOKE", "sale", "alice"],
            &["COUPON.RESTORE", "sale", "9", "mallory", "7"],
        ] {
            let reply = send(&mut conn, write);
            assert!(is_noperm(&reply), "{line}: {write:?} -> {reply}");
        }
        assert_eq!(send(&mut conn, &["COUPON.CHECK", "sale", "alice"]), "1");
        assert_eq!(
            send(&mut conn, &["COUPON.INFO", "sale"]),
            "issued 1 revoked 0 last_seq 1 events 1"
        );
        assert_eq!(server.digest(), digest, "{line} changed nothing");
    }

    set_user(
        &server,
        "clerk on >pw ~sale* +coupon.issue +coupon.revoke +coupon.check +coupon.info",
    );
    let mut clerk = connect_as(&server, "clerk");
    assert_eq!(
        send(&mut clerk, &["COUPON.ISSUE", "sale", "bob", "5"]),
        "ISSUED 2 2"
    );
    assert_eq!(send(&mut clerk, &["COUPON.REVOKE", "sale", "bob"]), "1");
    let other = send(&mut clerk, &["COUPON.ISSUE", "other", "bob", "5"]);
    assert!(is_noperm(&other), "{other}");
    assert_eq!(send(&mut admin, &["EXISTS", "other"]), "0");

    // The script declares the stream too, and its inner calls are checked as the caller's.
    set_user(
        &server,
        "scripted on >pw ~sale* +evalsha +eval +hget +hlen +exists +time +hset +hdel +xadd",
    );
    let mut scripted = connect_as(&server, "scripted");
    let script = |key: &str, events: &str, op: &str, user: &str| {
        let words = [
            "EVAL",
            coupon_sdk::SCRIPT_SOURCE,
            "2",
            key,
            events,
            op,
            user,
            "5",
        ];
        words.map(str::to_string)
    };
    let call = |conn: &mut Connection, words: [String; 8]| {
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        send(conn, &words)
    };
    let issued = call(
        &mut scripted,
        script("sale", "sale:events{sale}", "issue", "carol"),
    );
    assert_eq!(issued, "ISSUED 3 2");
    let revoked = call(
        &mut scripted,
        script("sale", "sale:events{sale}", "revoke", "carol"),
    );
    assert_eq!(revoked, "1");
    let other = call(
        &mut scripted,
        script("other", "other:events{other}", "issue", "carol"),
    );
    assert!(is_noperm(&other), "{other}");
    assert_eq!(
        send(&mut admin, &["COUPON.INFO", "sale"]),
        "issued 1 revoked 2 last_seq 3 events 5"
    );
}

on_every_server!(
    watch_aborts_a_transaction_on_writes_only,
    tracking_invalidates_the_coupon_on_writes_only,
    broadcast_tracking_invalidates_both_keys_on_writes_only,
    subtracting_write_covers_coupon_writes_only_with_categories,
    the_recommended_acl_lines_hold,
);
