//! Bad input gets a clear error and changes nothing: the dataset digest is the same after.

use coupon_tests::{on_every_server, Flavor, Server};
use redis::Connection;

/// Sends `args`, expects an error containing `expected`, and checks nothing changed.
fn rejected(conn: &mut Connection, server: &Server, args: &[&[u8]], expected: &str) {
    let before = server.digest();
    let mut command = redis::cmd(std::str::from_utf8(args[0]).unwrap());
    for arg in &args[1..] {
        command.arg(*arg);
    }
    let error = command
        .query::<redis::Value>(conn)
        .expect_err(&format!("{args:?} must be rejected"));
    let text = error.to_string();
    assert!(
        text.contains(expected),
        "{args:?}: {text:?} should say {expected:?}"
    );
    assert_eq!(server.digest(), before, "{args:?} changed the dataset");
}

fn every_bad_input_is_rejected_with_nothing_changed(flavor: Flavor) {
    let server = Server::start(flavor);
    let mut conn = server.connect();
    let _: redis::Value = redis::cmd("COUPON.ISSUE")
        .arg("sale")
        .arg("holder")
        .arg(5)
        .query(&mut conn)
        .unwrap();
    let cases: &[(&[&[u8]], &str)] = &[
        (
            &[b"COUPON.ISSUE", b"sale", b"u"],
            "wrong number of arguments",
        ),
        (&[b"COUPON.ISSUE", b"sale"], "wrong number of arguments"),
        (&[b"COUPON.REVOKE", b"sale"], "wrong number of arguments"),
        (
            &[b"COUPON.REVOKE", b"sale", b"u", b"x"],
            "wrong number of arguments",
        ),
        (&[b"COUPON.CHECK", b"sale"], "wrong number of arguments"),
        (&[b"COUPON.INFO"], "wrong number of arguments"),
        (&[b"COUPON.INFO", b"a", b"b"], "wrong number of arguments"),
        (
            &[b"COUPON.ISSUE", b"sale", b"u", b"ten"],
            "limit must be an integer",
        ),
        (
            &[b"COUPON.ISSUE", b"sale", b"u", b"-1"],
            "limit must be an integer",
        ),
        (
            &[b"COUPON.ISSUE", b"sale", b"u", b"1.5"],
            "limit must be an integer",
        ),
        (
            &[b"COUPON.ISSUE", b"sale", b"u", b"9223372036854775808"],
            "limit must be an integer",
        ),
        (
            &[b"COUPON.ISSUE", b"sale", b"u", b""],
            "limit must be an integer",
        ),
        // Exactly what Redis' own integer arguments refuse (`SET k v EX 007`).
        (
            &[b"COUPON.ISSUE", b"sale", b"u", b"007"],
            "limit must be an integer",
        ),
        (
            &[b"COUPON.ISSUE", b"sale", b"u", b"-0"],
            "limit must be an integer",
        ),
        (
            &[b"COUPON.ISSUE", b"sale", b"u", b"+5"],
            "limit must be an integer",
        ),
        (
            &[b"COUPON.ISSUE", b"sale", b"u", b" 5"],
            "limit must be an integer",
        ),
        (
            &[b"COUPON.ISSUE", b"sale", b"u", b"5", b"WINDOW", b"01", b"9"],
            "non-negative integers",
        ),
        (
            &[b"COUPON.ISSUE", b"sale", b"u", b"5", b"WINDOW", b"-0", b"9"],
            "non-negative integers",
        ),
        (
            &[b"COUPON.ISSUE", b"sale", b"u", b"5", b"WINDOW", b"1", b"+9"],
            "non-negative integers",
        ),
        (
            &[b"COUPON.ISSUE", b"sale", b"", b"5"],
            "user must not be empty",
        ),
        (&[b"COUPON.REVOKE", b"sale", b""], "user must not be empty"),
        (&[b"COUPON.CHECK", b"sale", b""], "user must not be empty"),
        (
            &[b"COUPON.ISSUE", b"", b"u", b"5"],
            "coupon key must not be empty",
        ),
        (&[b"COUPON.ISSUE", b"a}b", b"u", b"5"], "hash tag"),
        (&[b"COUPON.ISSUE", b"a{b", b"u", b"5"], "hash tag"),
        (&[b"COUPON.ISSUE", b"a{}b", b"u", b"5"], "hash tag"),
        (&[b"COUPON.CHECK", b"a}b", b"u"], "hash tag"),
        (&[b"COUPON.REVOKE", b"a{b", b"u"], "hash tag"),
        (&[b"COUPON.INFO", b"}"], "hash tag"),
        (
            &[b"COUPON.ISSUE", b"sale", b"u", b"5", b"TTL", b"9"],
            "unknown option 'TTL'",
        ),
        (
            &[b"COUPON.ISSUE", b"sale", b"u", b"5", b"WINDOW"],
            "WINDOW takes",
        ),
        (
            &[b"COUPON.ISSUE", b"sale", b"u", b"5", b"WINDOW", b"1"],
            "WINDOW takes",
        ),
        (
            &[b"COUPON.ISSUE", b"sale", b"u", b"5", b"WINDOW", b"x", b"2"],
            "non-negative integers",
        ),
        (
            &[b"COUPON.ISSUE", b"sale", b"u", b"5", b"WINDOW", b"-5", b"2"],
            "non-negative integers",
        ),
        (
            &[b"COUPON.ISSUE", b"sale", b"u", b"5", b"WINDOW", b"9", b"2"],
            "start must be before its end",
        ),
        (
            &[b"COUPON.ISSUE", b"sale", b"u", b"5", b"WINDOW", b"2", b"2"],
            "start must be before its end",
        ),
        (
            &[
                b"COUPON.ISSUE",
                b"sale",
                b"u",
                b"5",
                b"WINDOW",
                b"1",
                b"2",
                b"WINDOW",
                b"1",
                b"2",
            ],
            "more than once",
        ),
        (
            &[b"COUPON.ISSUE", b"sale", b"u", b"5", b"bad\r\noption"],
            "unknown option 'bad  option'",
        ),
    ];
    for (args, expected) in cases {
        rejected(&mut conn, &server, args, expected);
    }
}

fn a_key_of_the_wrong_type_is_wrongtype(flavor: Flavor) {
    let server = Server::start(flavor);
    let mut conn = server.connect();
    let as_bytes = |args: &[&'static str]| args.iter().map(|a| a.as_bytes()).collect::<Vec<_>>();
    // The coupon key holding something else stops every command.
    redis::cmd("SET")
        .arg("a")
        .arg("x")
        .query::<()>(&mut conn)
        .unwrap();
    for args in [
        &["COUPON.ISSUE", "a", "u", "5"][..],
        &["COUPON.REVOKE", "a", "u"],
        &["COUPON.CHECK", "a", "u"],
        &["COUPON.INFO", "a"],
    ] {
        rejected(&mut conn, &server, &as_bytes(args), "WRONGTYPE");
    }
    // Its event stream holding something else stops writes and INFO.
    let _: redis::Value = redis::cmd("COUPON.ISSUE")
        .arg("c")
        .arg("holder")
        .arg(5)
        .query(&mut conn)
        .unwrap();
    redis::cmd("DEL")
        .arg("c:events{c}")
        .query::<()>(&mut conn)
        .unwrap();
    redis::cmd("SET")
        .arg("c:events{c}")
        .arg("x")
        .query::<()>(&mut conn)
        .unwrap();
    for args in [
        &["COUPON.ISSUE", "c", "u", "5"][..],
        &["COUPON.REVOKE", "c", "holder"],
        &["COUPON.INFO", "c"],
    ] {
        rejected(&mut conn, &server, &as_bytes(args), "WRONGTYPE");
    }
    // A corrupt holder is refused on every path that reads it.
    redis::cmd("HSET")
        .arg("d")
        .arg("u")
        .arg("not-a-seq")
        .arg("")
        .arg("1")
        .query::<()>(&mut conn)
        .unwrap();
    for args in [
        &["COUPON.ISSUE", "d", "u", "5"][..],
        &["COUPON.CHECK", "d", "u"],
        &["COUPON.REVOKE", "d", "u"],
    ] {
        rejected(&mut conn, &server, &as_bytes(args), "corrupt");
    }
    // A coupon hash without its last seq would restart the seqs: refused.
    redis::cmd("HSET")
        .arg("e")
        .arg("u")
        .arg("1")
        .query::<()>(&mut conn)
        .unwrap();
    rejected(
        &mut conn,
        &server,
        &as_bytes(&["COUPON.ISSUE", "e", "v", "5"]),
        "last-seq",
    );
}

fn the_server_survives_a_storm_of_garbage(flavor: Flavor) {
    let server = Server::start(flavor);
    let mut conn = server.connect();
    // Deterministic pseudo-random arguments: lengths, bytes, numbers at the edges.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let pool: [&[u8]; 12] = [
        b"",
        b"0",
        b"-1",
        b"WINDOW",
        b"window",
        b"9223372036854775807",
        b"-9223372036854775808",
        b"{",
        b"}",
        b"{x}",
        b"\x00\xff",
        b"18446744073709551616",
    ];
    for _ in 0..3_000 {
        let command = [
            "COUPON.ISSUE",
            "COUPON.REVOKE",
            "COUPON.CHECK",
            "COUPON.INFO",
        ][(next() % 4) as usize];
        let mut cmd = redis::cmd(command);
        for _ in 0..(next() % 9) {
            cmd.arg(pool[(next() % pool.len() as u64) as usize]);
        }
        let _ = cmd.query::<redis::Value>(&mut conn);
    }
    let pong: String = redis::cmd("PING").query(&mut conn).unwrap();
    assert_eq!(pong, "PONG");
}

on_every_server!(
    every_bad_input_is_rejected_with_nothing_changed,
    a_key_of_the_wrong_type_is_wrongtype,
    the_server_survives_a_storm_of_garbage,
);
