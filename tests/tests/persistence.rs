//! AOF, AOF rewrite, RDB reload and save points: what the module wrote survives exactly,
//! and loads as plain data without the module.

use coupon_tests::{mixed_workload, on_every_server, Flavor, Server};
use std::time::{Duration, Instant};

fn info_field(server: &Server, section: &str, field: &str) -> String {
    let info: String = redis::cmd("INFO")
        .arg(section)
        .query(&mut server.connect())
        .unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("{field} not in INFO {section}"))
        .trim()
        .to_string()
}

fn wait_for_rewrite(server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if info_field(server, "persistence", "aof_rewrite_in_progress") == "0"
            && info_field(server, "persistence", "aof_rewrite_scheduled") == "0"
        {
            assert_eq!(
                info_field(server, "persistence", "aof_last_bgrewrite_status"),
                "ok"
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("BGREWRITEAOF did not finish:\n{}", server.log());
}

fn issue(server: &Server, coupon: &str, user: &str) -> (String, Option<i64>, i64) {
    redis::cmd("COUPON.ISSUE")
        .arg(coupon)
        .arg(user)
        .arg(1_000)
        .query(&mut server.connect())
        .unwrap()
}

fn the_aof_replays_exactly_with_and_without_the_module(flavor: Flavor) {
    let mut server = Server::builder(flavor).aof(true).start();
    mixed_workload(&mut server.connect(), 20);
    let digest = server.digest();

    // kill -9: everything was fsynced (appendfsync always) as replicated effects.
    server.restart(false);
    assert_eq!(
        server.digest(),
        digest,
        "AOF replayed without the module differs"
    );
    server.restart(true);
    assert_eq!(
        server.digest(),
        digest,
        "AOF replayed with the module differs"
    );

    // Issuing goes on where it stopped: seqs are never reused after a restart.
    let last_seq: String = redis::cmd("HGET")
        .arg("flash")
        .arg("")
        .query(&mut server.connect())
        .unwrap();
    let (status, seq, _) = issue(&server, "flash", "after-restart");
    assert_eq!(
        (status.as_str(), seq),
        ("ISSUED", Some(last_seq.parse::<i64>().unwrap() + 1))
    );
}

fn bgrewriteaof_then_restart_keeps_the_digest(flavor: Flavor) {
    let mut server = Server::builder(flavor).aof(true).start();
    mixed_workload(&mut server.connect(), 20);
    let _: String = redis::cmd("BGREWRITEAOF")
        .query(&mut server.connect())
        .unwrap();
    wait_for_rewrite(&server);
    // Writes after the rewrite land in the new incremental file.
    mixed_workload(&mut server.connect(), 5);
    let digest = server.digest();
    server.restart(false);
    assert_eq!(
        server.digest(),
        digest,
        "rewritten AOF without the module differs"
    );
    server.restart(true);
    assert_eq!(
        server.digest(),
        digest,
        "rewritten AOF with the module differs"
    );
}

fn debug_reload_round_trips(flavor: Flavor) {
    let server = Server::start(flavor);
    mixed_workload(&mut server.connect(), 10);
    let digest = server.digest();
    let _: () = redis::cmd("DEBUG")
        .arg("RELOAD")
        .query(&mut server.connect())
        .unwrap();
    assert_eq!(server.digest(), digest);
    let (status, _, _) = issue(&server, "flash", "after-reload");
    assert_eq!(status, "ISSUED");
}

fn writes_count_toward_save_points_and_rejections_do_not(flavor: Flavor) {
    let server = Server::start(flavor);
    let changes = || {
        info_field(&server, "persistence", "rdb_changes_since_last_save")
            .parse::<i64>()
            .unwrap()
    };
    let before = changes();
    issue(&server, "flash", "a");
    let after_issue = changes();
    assert!(after_issue > before, "an issue must count as a change");
    issue(&server, "flash", "a"); // duplicate
    let _: i64 = redis::cmd("COUPON.REVOKE")
        .arg("flash")
        .arg("nobody")
        .query(&mut server.connect())
        .unwrap();
    assert_eq!(changes(), after_issue, "rejections change nothing");

    // And a real save point fires on them.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("save")
        .arg("1 1")
        .query(&mut server.connect())
        .unwrap();
    issue(&server, "flash", "b");
    let deadline = Instant::now() + Duration::from_secs(10);
    while changes() != 0 {
        assert!(
            Instant::now() < deadline,
            "the save point never fired:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

on_every_server!(
    the_aof_replays_exactly_with_and_without_the_module,
    bgrewriteaof_then_restart_keeps_the_digest,
    debug_reload_round_trips,
    writes_count_toward_save_points_and_rejections_do_not,
);
