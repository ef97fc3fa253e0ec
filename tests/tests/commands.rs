//! Every rule of COUPON.ISSUE / REVOKE / CHECK / INFO, against real servers.

use coupon_tests::{on_every_server, Flavor, Server};
use redis::{Connection, Value};

type Reply = (String, Option<i64>, i64);

fn issue(conn: &mut Connection, key: &str, user: &str, limit: i64) -> Reply {
    redis::cmd("COUPON.ISSUE")
        .arg(key)
        .arg(user)
        .arg(limit)
        .query(conn)
        .expect("COUPON.ISSUE")
}

fn issue_in(conn: &mut Connection, key: &str, user: &str, start: i64, end: i64) -> Reply {
    redis::cmd("COUPON.ISSUE")
        .arg(key)
        .arg(user)
        .arg(10)
        .arg("WINDOW")
        .arg(start)
        .arg(end)
        .query(conn)
        .expect("COUPON.ISSUE WINDOW")
}

fn revoke(conn: &mut Connection, key: &str, user: &str) -> i64 {
    redis::cmd("COUPON.REVOKE")
        .arg(key)
        .arg(user)
        .query(conn)
        .expect("COUPON.REVOKE")
}

fn check(conn: &mut Connection, key: &str, user: &str) -> Option<i64> {
    redis::cmd("COUPON.CHECK")
        .arg(key)
        .arg(user)
        .query(conn)
        .expect("COUPON.CHECK")
}

fn info(conn: &mut Connection, key: &str) -> Vec<(String, i64)> {
    redis::cmd("COUPON.INFO")
        .arg(key)
        .query(conn)
        .expect("COUPON.INFO")
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

fn reply(status: &str, seq: Option<i64>, holders: i64) -> Reply {
    (status.to_string(), seq, holders)
}

fn issues_in_order_until_sold_out(flavor: Flavor) {
    let server = Server::start(flavor);
    let mut conn = server.connect();
    assert_eq!(
        issue(&mut conn, "sale", "alice", 2),
        reply("ISSUED", Some(1), 1)
    );
    assert_eq!(
        issue(&mut conn, "sale", "bob", 2),
        reply("ISSUED", Some(2), 2)
    );
    assert_eq!(
        issue(&mut conn, "sale", "carol", 2),
        reply("SOLD_OUT", None, 2)
    );
    assert_eq!(
        issue(&mut conn, "sale", "alice", 2),
        reply("DUPLICATE", Some(1), 2)
    );
    assert_eq!(check(&mut conn, "sale", "bob"), Some(2));
    assert_eq!(check(&mut conn, "sale", "carol"), None);
}

fn limit_zero_one_and_i64_max(flavor: Flavor) {
    let server = Server::start(flavor);
    let mut conn = server.connect();
    assert_eq!(issue(&mut conn, "zero", "a", 0), reply("SOLD_OUT", None, 0));
    assert_eq!(issue(&mut conn, "one", "a", 1), reply("ISSUED", Some(1), 1));
    assert_eq!(issue(&mut conn, "one", "b", 1), reply("SOLD_OUT", None, 1));
    for n in 1..=50 {
        let user = format!("user-{n}");
        assert_eq!(
            issue(&mut conn, "max", &user, i64::MAX),
            reply("ISSUED", Some(n), n)
        );
    }
    // The limit is per call: a raised limit opens more stock, a lowered one closes it.
    assert_eq!(issue(&mut conn, "one", "b", 2), reply("ISSUED", Some(2), 2));
    assert_eq!(
        issue(&mut conn, "max", "late", 10),
        reply("SOLD_OUT", None, 50)
    );
}

fn the_window_opens_and_closes(flavor: Flavor) {
    let server = Server::start(flavor);
    let mut conn = server.connect();
    let now = now_ms();
    let hour = 3_600_000;
    assert_eq!(
        issue_in(&mut conn, "w", "a", now + hour, now + 2 * hour),
        reply("NOT_STARTED", None, 0)
    );
    assert_eq!(
        issue_in(&mut conn, "w", "a", now - 2 * hour, now - hour),
        reply("ENDED", None, 0)
    );
    assert_eq!(
        issue_in(&mut conn, "w", "a", now - hour, now + hour),
        reply("ISSUED", Some(1), 1)
    );
    // A holder learns their seq whatever the window says.
    assert_eq!(
        issue_in(&mut conn, "w", "a", now - 2 * hour, now - hour),
        reply("DUPLICATE", Some(1), 1)
    );
    assert_eq!(info(&mut conn, "w")[3], ("events".to_string(), 1));
}

fn revoke_returns_stock_never_the_seq(flavor: Flavor) {
    let server = Server::start(flavor);
    let mut conn = server.connect();
    issue(&mut conn, "sale", "alice", 1);
    assert_eq!(revoke(&mut conn, "sale", "alice"), 1);
    assert_eq!(
        revoke(&mut conn, "sale", "alice"),
        0,
        "a second revoke changes nothing"
    );
    assert_eq!(revoke(&mut conn, "sale", "nobody"), 0);
    assert_eq!(check(&mut conn, "sale", "alice"), None);
    assert_eq!(
        issue(&mut conn, "sale", "bob", 1),
        reply("ISSUED", Some(2), 1)
    );
    assert_eq!(
        issue(&mut conn, "sale", "alice", 2),
        reply("ISSUED", Some(3), 2)
    );
    let expected = [
        ("issued", 2),
        ("revoked", 1),
        ("last_seq", 3),
        ("events", 4),
    ];
    let expected: Vec<_> = expected.iter().map(|(f, v)| (f.to_string(), *v)).collect();
    assert_eq!(info(&mut conn, "sale"), expected);
}

fn info_of_an_unknown_coupon_is_zero(flavor: Flavor) {
    let server = Server::start(flavor);
    let mut conn = server.connect();
    let values: Vec<i64> = info(&mut conn, "nothing")
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert_eq!(values, [0, 0, 0, 0]);
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
    assert!(keys.is_empty(), "reads create nothing: {keys:?}");
}

fn events_record_every_issue_and_revoke(flavor: Flavor) {
    let server = Server::start(flavor);
    let mut conn = server.connect();
    let before = now_ms();
    issue(&mut conn, "sale", "alice", 5);
    issue(&mut conn, "sale", "alice", 5);
    issue(&mut conn, "sale", "bob", 5);
    revoke(&mut conn, "sale", "alice");
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg("sale:events{sale}")
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .unwrap();
    let summary: Vec<Vec<String>> = entries
        .iter()
        .map(|(_, fields)| fields.iter().map(|(f, v)| format!("{f}={v}")).collect())
        .collect();
    assert_eq!(
        summary,
        [
            ["op=issue", "user=alice", "seq=1"],
            ["op=issue", "user=bob", "seq=2"],
            ["op=revoke", "user=alice", "seq=1"],
        ]
    );
    // The entry ID is the event's time: the server's clock when it was written.
    for (id, _) in &entries {
        let id_ms: i64 = id.split('-').next().unwrap().parse().unwrap();
        assert!(
            id_ms >= before - 1_000 && id_ms <= now_ms() + 1_000,
            "entry {id} carries the server's clock"
        );
    }
}

fn the_layout_is_plain_redis_data(flavor: Flavor) {
    let server = Server::start(flavor);
    let mut conn = server.connect();
    issue(&mut conn, "sale", "alice", 5);
    issue(&mut conn, "sale", "bob", 5);
    revoke(&mut conn, "sale", "bob");
    issue(&mut conn, "shop{7}", "bob", 5);
    let mut keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
    keys.sort();
    assert_eq!(
        keys,
        ["sale", "sale:events{sale}", "shop{7}", "shop{7}:events"]
    );
    // The coupon key is the hash of its holders, with the last seq under the empty field.
    let coupon: std::collections::BTreeMap<String, String> =
        redis::cmd("HGETALL").arg("sale").query(&mut conn).unwrap();
    let expected = [("", "2"), ("alice", "1")];
    let expected = expected.iter().map(|(f, v)| (f.to_string(), v.to_string()));
    assert_eq!(coupon, expected.collect());
    for (key, kind) in [("sale", "hash"), ("sale:events{sale}", "stream")] {
        let found: String = redis::cmd("TYPE").arg(key).query(&mut conn).unwrap();
        assert_eq!(found, kind, "{key}");
    }
    // `sale` and `{sale}` are two keys, so two coupons, each with its own stream.
    assert_eq!(
        issue(&mut conn, "{sale}", "alice", 5),
        reply("ISSUED", Some(1), 1)
    );
    let stream: String = redis::cmd("TYPE")
        .arg("{sale}:events")
        .query(&mut conn)
        .unwrap();
    assert_eq!(stream, "stream");
}

fn users_and_keys_are_binary_safe(flavor: Flavor) {
    let server = Server::start(flavor);
    let mut conn = server.connect();
    let user: &[u8] = b"\x00\xffuser\r\n with spaces";
    let key: &[u8] = b"k\x00\xfe";
    let first: Reply = redis::cmd("COUPON.ISSUE")
        .arg(key)
        .arg(user)
        .arg(5)
        .query(&mut conn)
        .unwrap();
    assert_eq!(first, reply("ISSUED", Some(1), 1));
    let again: Reply = redis::cmd("COUPON.ISSUE")
        .arg(key)
        .arg(user)
        .arg(5)
        .query(&mut conn)
        .unwrap();
    assert_eq!(again, reply("DUPLICATE", Some(1), 1));
    let other: Reply = redis::cmd("COUPON.ISSUE")
        .arg(key)
        .arg(&user[..5])
        .arg(5)
        .query(&mut conn)
        .unwrap();
    assert_eq!(other, reply("ISSUED", Some(2), 2));
    let stored: Vec<u8> = redis::cmd("XRANGE")
        .arg(b"k\x00\xfe:events{k\x00\xfe}")
        .arg("-")
        .arg("+")
        .query::<Vec<(String, Vec<(String, Vec<u8>)>)>>(&mut conn)
        .unwrap()[0]
        .1[1]
        .1
        .clone();
    assert_eq!(stored, user);
}

fn info_is_a_map_under_resp3(flavor: Flavor) {
    let server = Server::start(flavor);
    let client = redis::Client::open(format!("{}?protocol=resp3", server.url())).unwrap();
    let mut conn = client.get_connection().unwrap();
    issue(&mut conn, "sale", "alice", 5);
    let value: Value = redis::cmd("COUPON.INFO")
        .arg("sale")
        .query(&mut conn)
        .unwrap();
    let Value::Map(pairs) = value else {
        panic!("expected a map, got {value:?}")
    };
    assert_eq!(pairs.len(), 4);
    let nil: Value = redis::cmd("COUPON.ISSUE")
        .arg("sale")
        .arg("bob")
        .arg(1)
        .query(&mut conn)
        .unwrap();
    assert_eq!(
        nil,
        Value::Array(vec![
            Value::BulkString(b"SOLD_OUT".to_vec()),
            Value::Nil,
            Value::Int(1)
        ])
    );
}

fn server_info_counts_outcomes(flavor: Flavor) {
    let server = Server::start(flavor);
    let mut conn = server.connect();
    issue(&mut conn, "s", "a", 1);
    issue(&mut conn, "s", "a", 1);
    issue(&mut conn, "s", "b", 1);
    issue_in(&mut conn, "s", "c", now_ms() + 100_000, now_ms() + 200_000);
    issue_in(&mut conn, "s", "c", 1, 2);
    revoke(&mut conn, "s", "a");
    let _ = redis::cmd("COUPON.ISSUE")
        .arg("s")
        .arg("a")
        .arg(-1)
        .query::<Value>(&mut conn);
    let text: String = redis::cmd("INFO").arg("coupon").query(&mut conn).unwrap();
    for line in [
        "coupon_issued:1",
        "coupon_duplicate:1",
        "coupon_sold_out:1",
        "coupon_not_started:1",
        "coupon_ended:1",
        "coupon_revoked:1",
        "coupon_errors:1",
    ] {
        assert!(
            text.lines().any(|l| l.trim() == line),
            "{line} missing from:\n{text}"
        );
    }
}

/// The events a coupon's writes emit, and the same writes made with the built-in commands.
fn keyspace_events_match_the_built_in_commands(flavor: Flavor) {
    let server = Server::start(flavor);
    let mut conn = server.connect();
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("notify-keyspace-events")
        .arg("KEA")
        .query::<()>(&mut conn)
        .unwrap();
    let mut listener = server.connect();
    let mut pubsub = listener.as_pubsub();
    pubsub.psubscribe("__keyevent@0__:*").unwrap();
    pubsub
        .set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .unwrap();
    let mut heard = |count: usize| -> Vec<String> {
        (0..count)
            .map(|_| {
                let message = pubsub.get_message().expect("a keyspace event");
                let key: String = message.get_payload().unwrap();
                let event = message.get_channel_name();
                format!("{} {key}", event.trim_start_matches("__keyevent@0__:"))
            })
            .collect()
    };
    issue(&mut conn, "sale", "alice", 1);
    issue(&mut conn, "sale", "bob", 1); // sold out: nothing written, no event
    revoke(&mut conn, "sale", "alice");
    let module = heard(4);
    assert_eq!(
        module,
        [
            "xadd sale:events{sale}",
            "hset sale",
            "xadd sale:events{sale}",
            "hdel sale",
        ]
    );
    let stream = "plain:events{plain}";
    let built_in: [&[&str]; 4] = [
        &[
            "XADD", stream, "*", "op", "issue", "user", "alice", "seq", "1",
        ],
        &["HSET", "plain", "alice", "1", "", "1"],
        &[
            "XADD", stream, "*", "op", "revoke", "user", "alice", "seq", "1",
        ],
        &["HDEL", "plain", "alice"],
    ];
    for command in built_in {
        let mut cmd = redis::cmd(command[0]);
        command[1..].iter().for_each(|arg| {
            cmd.arg(*arg);
        });
        cmd.query::<Value>(&mut conn).unwrap();
    }
    let plain: Vec<String> = heard(4)
        .iter()
        .map(|line| line.replace("plain", "sale"))
        .collect();
    assert_eq!(module, plain);
}

fn the_commands_declare_their_key(flavor: Flavor) {
    let server = Server::start(flavor);
    let mut conn = server.connect();
    for command in [
        "coupon.issue",
        "coupon.revoke",
        "coupon.restore",
        "coupon.check",
        "coupon.info",
    ] {
        let keys: Vec<String> = redis::cmd("COMMAND")
            .arg("GETKEYS")
            .arg(command)
            .arg("the-key")
            .arg("u")
            .arg("1")
            .query(&mut conn)
            .or_else(|_| {
                redis::cmd("COMMAND")
                    .arg("GETKEYS")
                    .arg(command)
                    .arg("the-key")
                    .arg("u")
                    .query(&mut conn)
            })
            .or_else(|_| {
                redis::cmd("COMMAND")
                    .arg("GETKEYS")
                    .arg(command)
                    .arg("the-key")
                    .query(&mut conn)
            })
            .unwrap();
        assert_eq!(keys, ["the-key"], "{command}");
    }
    let flags: Value = redis::cmd("COMMAND")
        .arg("INFO")
        .arg("coupon.issue")
        .query(&mut conn)
        .unwrap();
    let text = format!("{flags:?}");
    for flag in ["write", "fast"] {
        assert!(text.contains(flag), "{flag} missing from {text}");
    }
    // A retry or a sold-out click writes nothing: the command decides OOM itself.
    assert!(
        !text.contains("denyoom"),
        "coupon.issue is deny-oom: {text}"
    );
    if flavor != Flavor::Redis {
        // Servers from 7.2 on (Valkey 8, Redis 8) take ACL categories for module commands.
        let writers: Vec<String> = redis::cmd("ACL")
            .arg("CAT")
            .arg("write")
            .query(&mut conn)
            .unwrap();
        assert!(writers.iter().any(|c| c == "coupon.issue"), "{writers:?}");
        let readers: Vec<String> = redis::cmd("ACL")
            .arg("CAT")
            .arg("read")
            .query(&mut conn)
            .unwrap();
        assert!(readers.iter().any(|c| c == "coupon.check"), "{readers:?}");
    }
}

on_every_server!(
    issues_in_order_until_sold_out,
    limit_zero_one_and_i64_max,
    the_window_opens_and_closes,
    revoke_returns_stock_never_the_seq,
    info_of_an_unknown_coupon_is_zero,
    events_record_every_issue_and_revoke,
    the_layout_is_plain_redis_data,
    users_and_keys_are_binary_safe,
    info_is_a_map_under_resp3,
    server_info_counts_outcomes,
    keyspace_events_match_the_built_in_commands,
    the_commands_declare_their_key,
);
