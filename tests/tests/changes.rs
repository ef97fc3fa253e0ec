//! The change index (`COUPON.CHANGES`): which coupon event streams this node saw change, for
//! the persister. Every way a stream gets an entry is noted — the module's own writes, the
//! SDK's Lua fallback, replication, RESTORE, MIGRATE, RENAME — and only coupon streams are.

use coupon_layout::hash_slot;
use coupon_sdk::{Backend, Coupons, Outcome};
use coupon_tests::{on_every_server, Cluster, Flavor, Server};
use redis::{Connection, RedisResult, Value};
use std::time::{Duration, Instant};

/// One answer: `[next cursor, complete, streams]`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Changes {
    cursor: String,
    complete: bool,
    streams: Vec<String>,
}

fn try_changes(conn: &mut Connection, args: &[&str]) -> RedisResult<Changes> {
    let (cursor, complete, streams): (String, i64, Vec<String>) =
        redis::cmd("COUPON.CHANGES").arg(args).query(conn)?;
    assert!(complete == 0 || complete == 1, "complete is 0 or 1");
    Ok(Changes {
        cursor,
        complete: complete == 1,
        streams,
    })
}

fn changes(conn: &mut Connection, cursor: &str) -> Changes {
    try_changes(conn, &[cursor]).expect("COUPON.CHANGES")
}

/// The refusal's text, `CODE detail`.
fn refusal(conn: &mut Connection, args: &[&str]) -> String {
    let reply: RedisResult<Value> = redis::cmd("COUPON.CHANGES").arg(args).query(conn);
    match reply {
        Err(e) => format!("{} {}", e.code().unwrap_or("?"), e.detail().unwrap_or("")),
        Ok(value) => panic!("{args:?} answered {value:?}"),
    }
}

fn send(conn: &mut Connection, words: &[&str]) -> Value {
    redis::cmd(words[0])
        .arg(&words[1..])
        .query(conn)
        .unwrap_or_else(|e| panic!("{words:?}: {e}"))
}

fn issue(conn: &mut Connection, key: &str, user: &str) {
    let (status, _, _): (String, Option<i64>, i64) = redis::cmd("COUPON.ISSUE")
        .arg(key)
        .arg(user)
        .arg(5)
        .query(conn)
        .expect("COUPON.ISSUE");
    assert_eq!(status, "ISSUED", "{key} {user}");
}

/// The `INFO coupon` field `coupon_<name>`.
fn info_field(conn: &mut Connection, name: &str) -> String {
    let info: String = redis::cmd("INFO").arg("coupon").query(conn).expect("INFO");
    let prefix = format!("coupon_{name}:");
    info.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("{prefix} in INFO coupon:\n{info}"))
        .trim()
        .to_string()
}

fn names(streams: &[&str]) -> Vec<String> {
    streams.iter().map(|s| s.to_string()).collect()
}

fn epoch_of(cursor: &str) -> &str {
    cursor.split('-').next().expect("epoch-tick")
}

fn issue_and_revoke_note_the_stream(flavor: Flavor) {
    let server = Server::start(flavor);
    let mut conn = server.connect();
    let start = changes(&mut conn, "0");
    assert_eq!(start.streams, Vec::<String>::new());
    assert!(
        !start.complete,
        "0 cannot know what happened before the load"
    );
    assert_eq!(
        epoch_of(&start.cursor),
        info_field(&mut conn, "changes_epoch")
    );

    issue(&mut conn, "sale", "alice");
    issue(&mut conn, "shop{7}:sale", "alice");
    let issued = changes(&mut conn, &start.cursor);
    assert_eq!(
        issued.streams,
        names(&["sale:events{sale}", "shop{7}:sale:events"])
    );
    assert!(issued.complete);
    assert_eq!(info_field(&mut conn, "changes_streams"), "2");

    // Clicks that write nothing note nothing.
    send(&mut conn, &["COUPON.ISSUE", "sale", "alice", "5"]);
    send(&mut conn, &["COUPON.ISSUE", "sale", "late", "1"]);
    send(&mut conn, &["COUPON.REVOKE", "sale", "nobody"]);
    let quiet = changes(&mut conn, &issued.cursor);
    assert_eq!(quiet.streams, Vec::<String>::new());
    assert_eq!(quiet.cursor, issued.cursor);
    assert!(quiet.complete);

    send(&mut conn, &["COUPON.REVOKE", "sale", "alice"]);
    let revoked = changes(&mut conn, &quiet.cursor);
    assert_eq!(revoked.streams, names(&["sale:events{sale}"]));
    assert!(revoked.complete);
    // A stream changed again moves to the newest: listed once, after the other.
    assert_eq!(
        changes(&mut conn, &start.cursor).streams,
        names(&["shop{7}:sale:events", "sale:events{sale}"])
    );
}

fn the_lua_fallback_notes_the_stream(flavor: Flavor) {
    let server = Server::start(flavor);
    let mut conn = server.connect();
    let before = changes(&mut conn, "0");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        let connection = server
            .client()
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        let coupons = Coupons::with_backend(connection, Backend::Script);
        let outcome = coupons.issue("lua", "alice", 5).await.expect("issue");
        assert!(matches!(outcome, Outcome::Issued { .. }), "{outcome:?}");
    });
    let after = changes(&mut conn, &before.cursor);
    assert_eq!(after.streams, names(&["lua:events{lua}"]));
    assert!(after.complete);
    runtime.block_on(async {
        let connection = server
            .client()
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        let coupons = Coupons::with_backend(connection, Backend::Script);
        assert!(coupons.revoke("lua", "alice").await.expect("revoke"));
    });
    let revoked = changes(&mut conn, &after.cursor);
    assert_eq!(revoked.streams, names(&["lua:events{lua}"]));
}

fn only_coupon_streams_are_listed(flavor: Flavor) {
    let server = Server::start(flavor);
    let mut conn = server.connect();
    let before = changes(&mut conn, "0");
    for stream in [
        "plain",
        "app:events",
        "sale:events{other}",
        "{t}:q",
        "a:events{a}x",
    ] {
        send(&mut conn, &["XADD", stream, "*", "f", "v"]);
    }
    send(&mut conn, &["HSET", "sale:events{x}", "f", "v"]);
    send(&mut conn, &["SET", "x:events{x}", "v"]);
    send(&mut conn, &["DEL", "x:events{x}"]);
    let none = changes(&mut conn, &before.cursor);
    assert_eq!(none.streams, Vec::<String>::new());
    assert_eq!(info_field(&mut conn, "changes_streams"), "0");
    // A plain XADD to a stream named as a coupon's is noted: the persister reads it too.
    send(&mut conn, &["XADD", "x:events{x}", "*", "f", "v"]);
    assert_eq!(
        changes(&mut conn, &none.cursor).streams,
        names(&["x:events{x}"])
    );
}

fn count_pages_through_the_index(flavor: Flavor) {
    let server = Server::start(flavor);
    let mut conn = server.connect();
    let start = changes(&mut conn, "0").cursor;
    let coupons = ["c1", "c2", "c3", "c4", "c5"];
    for coupon in coupons {
        issue(&mut conn, coupon, "alice");
    }
    let stream = |coupon: &str| format!("{coupon}:events{{{coupon}}}");
    let mut cursor = start.clone();
    let mut pages = Vec::new();
    loop {
        let page = try_changes(&mut conn, &[&cursor, "COUNT", "2"]).expect("a page");
        assert!(page.complete, "{page:?}");
        if page.streams.is_empty() {
            assert_eq!(page.cursor, cursor, "nothing new: the cursor stays");
            break;
        }
        assert!(page.streams.len() <= 2, "{page:?}");
        cursor = page.cursor.clone();
        pages.push(page.streams);
    }
    let expected: Vec<Vec<String>> = vec![
        vec![stream("c1"), stream("c2")],
        vec![stream("c3"), stream("c4")],
        vec![stream("c5")],
    ];
    assert_eq!(pages, expected);
    // A coupon issued again between two pages is listed on a later page.
    let first = try_changes(&mut conn, &[&start, "count", "1"]).expect("a page");
    assert_eq!(first.streams, vec![stream("c1")]);
    issue(&mut conn, "c1", "bob");
    let rest = try_changes(&mut conn, &[&first.cursor, "COUNT", "10000"]).expect("the rest");
    let rest_expected: Vec<String> = ["c2", "c3", "c4", "c5", "c1"].map(stream).to_vec();
    assert_eq!(rest.streams, rest_expected);
    assert!(rest.complete);
}

fn deleted_renamed_copied_and_flushed_streams(flavor: Flavor) {
    let server = Server::start(flavor);
    let mut conn = server.connect();
    for coupon in ["a", "b", "c", "e", "f"] {
        issue(&mut conn, coupon, "alice");
    }
    let all = changes(&mut conn, "0");
    assert_eq!(all.streams.len(), 5);

    send(&mut conn, &["DEL", "a:events{a}"]);
    send(&mut conn, &["UNLINK", "e:events{e}"]);
    send(&mut conn, &["RENAME", "b:events{b}", "r:events{r}"]);
    send(&mut conn, &["COPY", "c:events{c}", "k:events{k}"]);
    // Renamed to a name that is no coupon's: gone from the index.
    send(&mut conn, &["RENAME", "f:events{f}", "archive"]);
    let moved = changes(&mut conn, &all.cursor);
    assert_eq!(moved.streams, names(&["r:events{r}", "k:events{k}"]));
    assert!(moved.complete, "a stream that is gone has nothing to read");
    assert_eq!(
        changes(&mut conn, "0").streams,
        names(&["c:events{c}", "r:events{r}", "k:events{k}"])
    );

    // An expired stream is forgotten when the server removes it.
    send(&mut conn, &["PEXPIRE", "c:events{c}", "1"]);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(send(&mut conn, &["EXISTS", "c:events{c}"]), Value::Int(0));
    assert_eq!(
        changes(&mut conn, "0").streams,
        names(&["r:events{r}", "k:events{k}"])
    );
    assert_eq!(info_field(&mut conn, "changes_streams"), "2");

    // A flush removes keys without an event each: the index empties, and a reader who had
    // not caught up is told to sweep.
    let behind = changes(&mut conn, &all.cursor);
    send(&mut conn, &["FLUSHALL"]);
    assert_eq!(info_field(&mut conn, "changes_streams"), "0");
    let after_flush = changes(&mut conn, &all.cursor);
    assert_eq!(after_flush.streams, Vec::<String>::new());
    assert!(!after_flush.complete, "{after_flush:?}");
    assert!(!behind.streams.is_empty());
    assert!(changes(&mut conn, &after_flush.cursor).complete);
}

fn replica_of(primary: &Server) -> Server {
    Server::builder(primary.flavor())
        .arg("replicaof", &format!("127.0.0.1 {}", primary.port()))
        .start()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{what} did not happen within 20 s");
}

fn a_replica_indexes_what_its_primary_writes(flavor: Flavor) {
    let primary = Server::start(flavor);
    let replica = replica_of(&primary);
    let mut on_replica = replica.connect();
    wait_until("the replica links", || {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query(&mut on_replica)
            .unwrap_or_default();
        info.contains("master_link_status:up")
    });
    let replica_start = changes(&mut on_replica, "0");
    let mut conn = primary.connect();
    issue(&mut conn, "sale", "alice");
    let acked: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(10_000)
        .query(&mut conn)
        .unwrap();
    assert_eq!(acked, 1);
    let seen = changes(&mut on_replica, &replica_start.cursor);
    assert_eq!(seen.streams, names(&["sale:events{sale}"]));
    assert!(seen.complete);
    // Each node has its own index: the primary's cursor means nothing on the replica.
    let primary_cursor = changes(&mut conn, "0").cursor;
    assert_ne!(epoch_of(&primary_cursor), epoch_of(&seen.cursor));
    let foreign = changes(&mut on_replica, &primary_cursor);
    assert!(!foreign.complete);
    assert_eq!(foreign.streams, names(&["sale:events{sale}"]));
}

fn restore_and_migrate_note_the_stream_on_the_target(flavor: Flavor) {
    let source = Server::start(flavor);
    let target = Server::start(flavor);
    let mut from = source.connect();
    let mut to = target.connect();
    issue(&mut from, "moved", "alice");
    issue(&mut from, "dumped", "alice");
    let target_start = changes(&mut to, "0").cursor;

    let dump: Vec<u8> = redis::cmd("DUMP")
        .arg("dumped:events{dumped}")
        .query(&mut from)
        .unwrap();
    let _: () = redis::cmd("RESTORE")
        .arg("dumped:events{dumped}")
        .arg(0)
        .arg(dump)
        .query(&mut to)
        .unwrap();
    let restored = changes(&mut to, &target_start);
    assert_eq!(restored.streams, names(&["dumped:events{dumped}"]));

    let source_before = changes(&mut from, "0").cursor;
    let port = target.port().to_string();
    let migrated = send(
        &mut from,
        &[
            "MIGRATE",
            "127.0.0.1",
            &port,
            "",
            "0",
            "5000",
            "KEYS",
            "moved",
            "moved:events{moved}",
        ],
    );
    assert_eq!(migrated, Value::Okay);
    let arrived = changes(&mut to, &restored.cursor);
    assert_eq!(arrived.streams, names(&["moved:events{moved}"]));
    assert!(arrived.complete);
    // The source forgot it: the stream left with its keys.
    assert_eq!(
        changes(&mut from, "0").streams,
        names(&["dumped:events{dumped}"])
    );
    assert!(changes(&mut from, &source_before).complete);
}

fn a_restart_starts_a_new_epoch(flavor: Flavor) {
    let mut server = Server::builder(flavor).aof(true).start();
    let mut conn = server.connect();
    issue(&mut conn, "sale", "alice");
    let old = changes(&mut conn, "0").cursor;
    server.restart(true);
    let mut conn = server.connect();
    let after = changes(&mut conn, &old);
    assert!(!after.complete, "a cursor of the last run: {after:?}");
    assert_ne!(epoch_of(&after.cursor), epoch_of(&old));
    assert_eq!(
        epoch_of(&after.cursor),
        info_field(&mut conn, "changes_epoch")
    );
    // Going on from the new cursor is complete again.
    issue(&mut conn, "sale", "bob");
    let next = changes(&mut conn, &after.cursor);
    assert!(next.complete);
    assert_eq!(next.streams, names(&["sale:events{sale}"]));
}

fn bad_input_errors_and_changes_nothing(flavor: Flavor) {
    let server = Server::start(flavor);
    let mut conn = server.connect();
    issue(&mut conn, "sale", "alice");
    let digest = server.digest();
    let now = changes(&mut conn, "0");
    let epoch = epoch_of(&now.cursor).to_string();
    let ahead = format!("{epoch}-999");
    let bad_cursor = |text: &str| {
        format!(
            "ERR invalid cursor '{text}': expected 0 or a cursor COUPON.CHANGES returned \
             (<epoch>-<tick>)"
        )
    };
    let cases: Vec<(Vec<&str>, String)> = vec![
        (vec!["x"], bad_cursor("x")),
        (vec!["-1"], bad_cursor("-1")),
        (vec!["00"], bad_cursor("00")),
        (vec![&epoch], bad_cursor(&epoch)),
        (
            vec![&ahead],
            format!(
                "ERR invalid cursor '{ahead}': it is ahead of this node's change index, which \
                 never returned it"
            ),
        ),
        (
            vec!["0", "COUNT", "0"],
            "ERR COUNT must be an integer from 1 to 10000".into(),
        ),
        (
            vec!["0", "COUNT", "10001"],
            "ERR COUNT must be an integer from 1 to 10000".into(),
        ),
        (
            vec!["0", "COUNT", "many"],
            "ERR COUNT must be an integer from 1 to 10000".into(),
        ),
        (
            vec!["0", "COUNT"],
            "ERR syntax error: COUNT takes <n>".into(),
        ),
        (
            vec!["0", "COUNT", "1", "COUNT", "2"],
            "ERR syntax error: COUNT given more than once".into(),
        ),
        (
            vec!["0", "MATCH", "*"],
            "ERR syntax error: unknown option 'MATCH' (expected COUNT)".into(),
        ),
    ];
    for (args, expected) in cases {
        assert_eq!(refusal(&mut conn, &args), expected, "{args:?}");
    }
    let arity = refusal(&mut conn, &[]);
    assert!(
        arity.starts_with("ERR wrong number of arguments"),
        "{arity}"
    );
    assert_eq!(server.digest(), digest);
    assert_eq!(changes(&mut conn, "0"), now, "the index is unchanged");
}

/// Keyless and read-only: allowed in a transaction, from a script (also one flagged
/// `no-writes`) and on a replica; it names no key for cluster routing.
fn works_in_multi_and_scripts(flavor: Flavor) {
    let server = Server::start(flavor);
    let mut conn = server.connect();
    issue(&mut conn, "sale", "alice");
    let direct = changes(&mut conn, "0");

    let (in_multi,): ((String, i64, Vec<String>),) = redis::pipe()
        .atomic()
        .cmd("COUPON.CHANGES")
        .arg("0")
        .query(&mut conn)
        .expect("MULTI/EXEC");
    assert_eq!(in_multi, (direct.cursor.clone(), 0, direct.streams.clone()));

    for script in [
        "return redis.call('COUPON.CHANGES', ARGV[1])",
        "#!lua flags=no-writes\nreturn redis.call('COUPON.CHANGES', ARGV[1])",
    ] {
        let from_script: (String, i64, Vec<String>) = redis::cmd("EVAL")
            .arg(script)
            .arg(0)
            .arg("0")
            .query(&mut conn)
            .unwrap_or_else(|e| panic!("{script}: {e}"));
        assert_eq!(
            from_script,
            (direct.cursor.clone(), 0, direct.streams.clone())
        );
    }
    let keys: RedisResult<Value> = redis::cmd("COMMAND")
        .arg("GETKEYS")
        .arg("COUPON.CHANGES")
        .arg("0")
        .query(&mut conn);
    let error = keys.expect_err("no keys");
    assert!(
        error.to_string().contains("no key arguments"),
        "COMMAND GETKEYS: {error}"
    );
}

fn set_user(server: &Server, line: &str) {
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(line.split_whitespace().collect::<Vec<_>>())
        .query(&mut server.connect())
        .expect(line);
}

fn connect_as(server: &Server, user: &str) -> Connection {
    let url = format!("redis://{user}:pw@127.0.0.1:{}/", server.port());
    redis::Client::open(url)
        .and_then(|client| client.get_connection())
        .unwrap_or_else(|e| panic!("cannot log in as {user}: {e}"))
}

/// The persister's user needs `+coupon.changes` (no key pattern: it names no key); a user
/// without it is refused.
fn acl_allows_it_by_name(flavor: Flavor) {
    let server = Server::start(flavor);
    let mut admin = server.connect();
    issue(&mut admin, "sale", "alice");
    set_user(&server, "feed on >pw resetkeys +coupon.changes");
    set_user(&server, "other on >pw ~* +@all -coupon.changes");
    let mut feed = connect_as(&server, "feed");
    assert_eq!(
        changes(&mut feed, "0").streams,
        names(&["sale:events{sale}"])
    );
    let mut other = connect_as(&server, "other");
    let refused = refusal(&mut other, &["0"]);
    assert!(refused.starts_with("NOPERM"), "{refused}");
    // Where module commands have categories (Redis 7.2+, Valkey): @read, @slow, @keyspace.
    let version: String = redis::cmd("INFO").arg("server").query(&mut admin).unwrap();
    let has_categories = version
        .lines()
        .find_map(|line| line.strip_prefix("redis_version:"))
        .map(|v| {
            v.trim()
                .split('.')
                .map(|p| p.parse::<u32>().unwrap_or(0))
                .collect::<Vec<_>>()
        })
        .is_some_and(|v| v >= vec![7, 2]);
    for category in ["read", "slow", "keyspace", "write", "fast"] {
        let members: Vec<String> = redis::cmd("ACL")
            .arg("CAT")
            .arg(category)
            .query(&mut admin)
            .unwrap();
        let listed = members.iter().any(|name| name == "coupon.changes");
        let expected = has_categories && ["read", "slow", "keyspace"].contains(&category);
        assert_eq!(listed, expected, "coupon.changes in @{category}");
    }
}

fn node(cluster: &Cluster, node: usize) -> Connection {
    redis::Client::open(cluster.urls()[node].as_str())
        .and_then(|client| client.get_connection())
        .expect("connect to a cluster node")
}

/// On a cluster every node answers (the command names no key, so nothing redirects it), about
/// its own streams; a slot moved by resharding takes the stream into the target's index.
fn on_a_cluster_each_node_lists_its_own_streams(flavor: Flavor) {
    let cluster = Cluster::start(flavor);
    let slot = hash_slot(b"sale");
    let owner = cluster.owner_of(slot);
    issue(&mut node(&cluster, owner), "sale", "alice");
    let primaries = cluster.primaries();
    for &each in &primaries {
        let listed = changes(&mut node(&cluster, each), "0").streams;
        let expected = if each == owner {
            names(&["sale:events{sale}"])
        } else {
            Vec::new()
        };
        assert_eq!(listed, expected, "node {each}");
    }
    let target = *primaries
        .iter()
        .find(|&&n| n != owner)
        .expect("another primary");
    let before = changes(&mut node(&cluster, target), "0").cursor;
    cluster.begin_slot_move(slot, owner, target);
    cluster.migrate(owner, target, &[b"sale", b"sale:events{sale}"]);
    cluster.finish_slot_move(slot, owner, target);
    let arrived = changes(&mut node(&cluster, target), &before);
    assert_eq!(arrived.streams, names(&["sale:events{sale}"]));
    assert!(arrived.complete);
    assert_eq!(
        changes(&mut node(&cluster, owner), "0").streams,
        Vec::<String>::new()
    );
}

on_every_server!(
    issue_and_revoke_note_the_stream,
    the_lua_fallback_notes_the_stream,
    only_coupon_streams_are_listed,
    count_pages_through_the_index,
    deleted_renamed_copied_and_flushed_streams,
    a_replica_indexes_what_its_primary_writes,
    restore_and_migrate_note_the_stream_on_the_target,
    a_restart_starts_a_new_epoch,
    bad_input_errors_and_changes_nothing,
    works_in_multi_and_scripts,
    acl_allows_it_by_name,
    on_a_cluster_each_node_lists_its_own_streams,
);
