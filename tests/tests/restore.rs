//! COUPON.RESTORE and its Lua twin: holders put back from a database after Redis lost data,
//! never overwriting, idempotent, replicated and persisted as plain effects.

use coupon_sdk::{Backend, Coupons, Error, Outcome, Restore};
use coupon_tests::{on_every_server, Flavor, Server};
use redis::aio::MultiplexedConnection;
use redis::{Connection, Value};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

async fn coupons_on(server: &Server, backend: Backend) -> Coupons<MultiplexedConnection> {
    let connection = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    Coupons::with_backend(connection, backend)
}

fn restore_raw(conn: &mut Connection, args: &[&[u8]]) -> redis::RedisResult<Value> {
    let mut command = redis::cmd("COUPON.RESTORE");
    for arg in args {
        command.arg(*arg);
    }
    command.query(conn)
}

/// An event entry's fields.
type Entry = Vec<(String, Vec<u8>)>;

fn events(conn: &mut Connection, coupon: &str) -> Vec<Entry> {
    let stream = coupon_layout::CouponKey::new(coupon.as_bytes())
        .expect("a coupon key")
        .events_key();
    let entries: Vec<(String, Entry)> = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query(conn)
        .expect("XRANGE");
    entries.into_iter().map(|(_, fields)| fields).collect()
}

fn entry(op: &str, user: &str, seq: u64) -> Entry {
    vec![
        ("op".into(), op.as_bytes().to_vec()),
        ("user".into(), user.as_bytes().to_vec()),
        ("seq".into(), seq.to_string().into_bytes()),
    ]
}

/// Each answer, a re-run, the floor, and one event per restored holder: on both backends.
fn every_answer_on_both_backends(flavor: Flavor) {
    let with_module = Server::start(flavor);
    let without_module = Server::builder(flavor).module(false).start();
    let rt = runtime();
    let mut data = Vec::new();
    for (server, backend) in [
        (&with_module, Backend::Module),
        (&without_module, Backend::Script),
    ] {
        rt.block_on(async {
            let coupons = coupons_on(server, backend).await;
            // Redis after a loss: it kept alice #1 and handed #3 to erin again.
            assert_eq!(
                coupons.issue("sale", "alice", 100).await.unwrap(),
                Outcome::Issued { seq: 1 }
            );
            coupons.issue("sale", "x", 100).await.unwrap();
            coupons.issue("sale", "erin", 100).await.unwrap();
            assert!(coupons.revoke("sale", "x").await.unwrap());
            // The database knew: alice #1, bob #2, carol #3, dave #4, alice... and seq 9 revoked.
            let db: [(&str, u64); 5] = [
                ("alice", 1),
                ("bob", 2),
                ("carol", 3),
                ("dave", 4),
                ("erin", 5),
            ];
            let answers = coupons.restore("sale", 9, &db).await.unwrap();
            assert_eq!(
                answers,
                [
                    Restore::Held,
                    Restore::Restored,
                    Restore::SeqTaken {
                        user: b"erin".to_vec()
                    },
                    Restore::Restored,
                    Restore::UserHolds { seq: 3 },
                ],
                "{backend:?}"
            );
            let digest = server.digest();
            let again = coupons.restore("sale", 9, &db).await.unwrap();
            assert_eq!(
                again,
                [
                    Restore::Held,
                    Restore::Held,
                    Restore::SeqTaken {
                        user: b"erin".to_vec()
                    },
                    Restore::Held,
                    Restore::UserHolds { seq: 3 },
                ]
            );
            assert_eq!(server.digest(), digest, "a re-run changes nothing");
            assert_eq!(coupons.info("sale").await.unwrap().last_seq, 9);
            assert_eq!(
                coupons.issue("sale", "frank", 100).await.unwrap(),
                Outcome::Issued { seq: 10 },
                "no seq the database knows is handed out again"
            );
            let mut conn = server.connect();
            let log = events(&mut conn, "sale");
            assert_eq!(log.len(), 4 + 2 + 1, "{log:?}");
            assert_eq!(log[4], entry("restore", "bob", 2));
            assert_eq!(log[5], entry("restore", "dave", 4));
            // A floor alone raises the last seq; a lower one changes nothing.
            assert_eq!(
                coupons
                    .restore("sale", 50, &[] as &[(&str, u64)])
                    .await
                    .unwrap(),
                []
            );
            assert_eq!(coupons.info("sale").await.unwrap().last_seq, 50);
            let digest = server.digest();
            coupons
                .restore("sale", 20, &[] as &[(&str, u64)])
                .await
                .unwrap();
            assert_eq!(server.digest(), digest);
            assert_eq!(events(&mut conn, "sale").len(), 7, "a floor is no event");
            // A coupon Redis lost whole, with nothing to restore but its floor: both keys
            // exist afterwards, the stream empty, and the next issue follows the floor.
            coupons
                .restore("lost", 7, &[] as &[(&str, u64)])
                .await
                .unwrap();
            assert_eq!(events(&mut conn, "lost"), Vec::<Vec<_>>::new());
            let info = coupons.info("lost").await.unwrap();
            assert_eq!((info.issued, info.last_seq, info.events), (0, 7, 0));
            assert_eq!(
                coupons.issue("lost", "gina", 10).await.unwrap(),
                Outcome::Issued { seq: 8 }
            );
            // Binary users, and a restore that creates the coupon.
            let binary: [(&[u8], u64); 2] = [(b"\x00\xff\r\n", 2), (b"h", 12)];
            assert_eq!(
                coupons.restore("gone", 3, &binary).await.unwrap(),
                [Restore::Restored, Restore::Restored]
            );
        });
        data.push(dump(server));
    }
    assert_eq!(data[1], data[0], "the script leaves the module's data");
}

/// The data left behind, the stream IDs aside.
fn dump(server: &Server) -> Vec<(Vec<u8>, String)> {
    let mut conn = server.connect();
    let mut keys: Vec<Vec<u8>> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
    keys.sort();
    keys.into_iter()
        .map(|key| {
            let kind: String = redis::cmd("TYPE").arg(&key).query(&mut conn).unwrap();
            let shown = if kind == "hash" {
                let map: std::collections::BTreeMap<Vec<u8>, Vec<u8>> =
                    redis::cmd("HGETALL").arg(&key).query(&mut conn).unwrap();
                format!("{map:?}")
            } else {
                let entries: Vec<(String, Entry)> = redis::cmd("XRANGE")
                    .arg(&key)
                    .arg("-")
                    .arg("+")
                    .query(&mut conn)
                    .unwrap();
                let entries: Vec<_> = entries.into_iter().map(|(_, fields)| fields).collect();
                format!("{entries:?}")
            };
            (key, shown)
        })
        .collect()
}

/// The raw command's reply shapes and its refusals: bad input changes nothing.
fn the_reply_and_bad_input(flavor: Flavor) {
    let server = Server::start(flavor);
    let mut conn = server.connect();
    let reply = restore_raw(&mut conn, &[b"s", b"3", b"a", b"1", b"b", b"2"]).unwrap();
    assert_eq!(
        reply,
        Value::Array(vec![
            Value::BulkString(b"restored".to_vec()),
            Value::BulkString(b"restored".to_vec()),
        ])
    );
    let reply = restore_raw(&mut conn, &[b"s", b"0", b"a", b"5", b"c", b"1", b"b", b"2"]);
    assert_eq!(
        reply.unwrap(),
        Value::Array(vec![
            Value::Array(vec![
                Value::BulkString(b"user-holds".to_vec()),
                Value::Int(1)
            ]),
            Value::Array(vec![
                Value::BulkString(b"seq-taken".to_vec()),
                Value::BulkString(b"a".to_vec())
            ]),
            Value::BulkString(b"held".to_vec()),
        ])
    );
    let digest = server.digest();
    for (args, expected) in [
        (&[b"s".as_slice()][..], "wrong number of arguments"),
        (&[b"s", b"1", b"a"], "wrong number of arguments"),
        (&[b"s", b"-1"], "floor must be an integer"),
        (&[b"s", b"007"], "floor must be an integer"),
        (&[b"s", b"9", b"z", b"0"], "seq must be an integer"),
        (&[b"s", b"9", b"z", b"+4"], "seq must be an integer"),
        (
            &[b"s", b"9", b"z", b"9223372036854775808"],
            "seq must be an integer",
        ),
        (&[b"s", b"9", b"", b"4"], "user must not be empty"),
        (&[b"s", b"9", b"z", b"4", b"z", b"5"], "named twice"),
        (&[b"s", b"9", b"y", b"4", b"z", b"4"], "named twice"),
        (&[b"a}b", b"9"], "not part of a hash tag"),
    ] {
        let error = restore_raw(&mut conn, args).unwrap_err().to_string();
        assert!(error.contains(expected), "{args:?}: {error}");
    }
    redis::cmd("SET")
        .arg("str")
        .arg("x")
        .query::<()>(&mut conn)
        .unwrap();
    let digest_with_str = server.digest();
    let error = restore_raw(&mut conn, &[b"str", b"9", b"z", b"4"]).unwrap_err();
    assert_eq!(error.code(), Some("WRONGTYPE"));
    assert_eq!(server.digest(), digest_with_str);
    redis::cmd("DEL").arg("str").query::<()>(&mut conn).unwrap();
    assert_eq!(server.digest(), digest, "bad input changed the dataset");
    // A coupon without its stream is refused as any write is, but a re-run that writes
    // nothing still answers.
    redis::cmd("DEL")
        .arg("s:events{s}")
        .query::<()>(&mut conn)
        .unwrap();
    let digest = server.digest();
    let error = restore_raw(&mut conn, &[b"s", b"9", b"z", b"9"]).unwrap_err();
    assert!(
        error.to_string().contains("event stream is missing"),
        "{error}"
    );
    let held = restore_raw(&mut conn, &[b"s", b"1", b"a", b"1"]).unwrap();
    assert_eq!(
        held,
        Value::Array(vec![Value::BulkString(b"held".to_vec())])
    );
    assert_eq!(server.digest(), digest);
    // Under an evicting policy a restore that would write is refused like every write.
    redis::cmd("SET")
        .arg("s:events{s}")
        .arg("x")
        .query::<()>(&mut conn)
        .unwrap();
    redis::cmd("DEL")
        .arg("s:events{s}")
        .query::<()>(&mut conn)
        .unwrap();
    let config = |conn: &mut Connection, name: &str, value: &str| {
        redis::cmd("CONFIG")
            .arg("SET")
            .arg(name)
            .arg(value)
            .query::<()>(conn)
            .unwrap()
    };
    config(&mut conn, "maxmemory", "1gb");
    config(&mut conn, "maxmemory-policy", "allkeys-lru");
    let error = restore_raw(&mut conn, &[b"new", b"9"]).unwrap_err();
    assert!(error.to_string().contains("allkeys-lru"), "{error}");
    config(&mut conn, "maxmemory-policy", "noeviction");
    // Over maxmemory: a restore that writes gets Redis' own -OOM, a re-run still answers.
    config(&mut conn, "maxmemory", "1");
    let error = restore_raw(&mut conn, &[b"new", b"9", b"z", b"9"]).unwrap_err();
    assert_eq!(error.code(), Some("OOM"), "{error}");
    let held = restore_raw(&mut conn, &[b"s", b"1", b"a", b"1"]).unwrap();
    assert_eq!(
        held,
        Value::Array(vec![Value::BulkString(b"held".to_vec())])
    );
    config(&mut conn, "maxmemory", "0");
    assert_eq!(server.digest(), digest);
    // The SDK refuses bad input before sending anything, on either backend.
    runtime().block_on(async {
        let coupons = coupons_on(&server, Backend::Script).await;
        for holders in [
            vec![("a", 1), ("a", 2)],
            vec![("a", 1), ("b", 1)],
            vec![("a", 0)],
            vec![("", 1)],
        ] {
            let refused = coupons.restore("t", 1, &holders).await;
            assert!(
                matches!(refused, Err(Error::InvalidInput(_))),
                "{refused:?}"
            );
        }
        assert!(matches!(
            coupons.restore("t", u64::MAX, &[("a", 1)]).await,
            Err(Error::InvalidInput(_))
        ));
    });
    assert_eq!(server.digest(), digest);
    assert!(server.key_digests().keys().all(|key| key != "t"));
}

/// Thousands of pairs go in chunks; a replica and the AOF end up with the same data.
fn replicated_persisted_and_chunked(flavor: Flavor) {
    let mut master = Server::builder(flavor).aof(true).start();
    let replica = Server::builder(flavor)
        .module(false)
        .arg("replicaof", &format!("127.0.0.1 {}", master.port()))
        .start();
    let holders: Vec<(String, u64)> = (1..=1_234u64)
        .map(|n| (format!("user-{n}"), 2 * n))
        .collect();
    let rt = runtime();
    rt.block_on(async {
        for backend in [Backend::Module, Backend::Script] {
            let coupons = coupons_on(&master, backend).await;
            let coupon = format!("big-{backend:?}");
            coupons.issue(&coupon, "user-1", 10).await.unwrap();
            let answers = coupons.restore(&coupon, 5_000, &holders).await.unwrap();
            assert_eq!(answers.len(), holders.len());
            assert_eq!(answers[0], Restore::UserHolds { seq: 1 });
            assert_eq!(
                redis::cmd("OBJECT")
                    .arg("ENCODING")
                    .arg(&coupon)
                    .query::<String>(&mut master.connect())
                    .unwrap(),
                "hashtable"
            );
            assert!(answers[1..].iter().all(|a| *a == Restore::Restored));
            let info = coupons.info(&coupon).await.unwrap();
            assert_eq!((info.issued, info.last_seq), (1_234, 5_000));
            assert_eq!(info.events, 1 + 1_233);
            // Seq -> holder over a hash past its compact encoding.
            assert_eq!(
                coupons
                    .restore(&coupon, 0, &[("late", 2_000), ("new", 4_999)])
                    .await
                    .unwrap(),
                [
                    Restore::SeqTaken {
                        user: b"user-1000".to_vec()
                    },
                    Restore::Restored
                ]
            );
            coupons
                .restore(format!("floor-{backend:?}"), 77, &[] as &[(&str, u64)])
                .await
                .unwrap();
        }
    });
    let _: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(10_000)
        .query(&mut master.connect())
        .unwrap();
    // The replica may still be in its first sync (it started with the writes): wait for its
    // data to land, then it must be the primary's, key by key.
    let digest = master.digest();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while replica.digest() != digest && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(replica.key_digests(), master.key_digests());
    assert_eq!(replica.digest(), digest);
    master.restart(false);
    assert_eq!(
        master.digest(),
        digest,
        "the AOF replayed without the module"
    );
    master.restart(true);
    assert_eq!(master.digest(), digest, "the AOF replayed with the module");
}

on_every_server!(
    every_answer_on_both_backends,
    the_reply_and_bad_input,
    replicated_persisted_and_chunked,
);
