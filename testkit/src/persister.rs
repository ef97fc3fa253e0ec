//! The persister under test: the real `coupon-persister` binary as a child process (so tests
//! can SIGKILL or SIGTERM it), a ledger of what the tests issued and revoked, and the check
//! that the database holds exactly that — and what Redis holds.

use crate::server::free_port;
use crate::{persister_path, MariaDb, Server};
use coupon_layout::{revoked_of, CouponKey, LAST_SEQ_FIELD};
use coupon_sdk::CouponKeys;
use redis::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// Flags every test run gets unless it overrides them: fast discovery, short linger, short
/// backoff, no trimming, metrics on a free port.
const DEFAULTS: [(&str, &str); 8] = [
    ("group", "persister"),
    ("consumer", "c1"),
    ("linger-ms", "20"),
    ("discover-interval-ms", "100"),
    ("claim-idle-ms", "2000"),
    ("backoff-max-ms", "300"),
    ("trim-interval-ms", "0"),
    ("shutdown-timeout-ms", "5000"),
];

/// A running `coupon-persister`; SIGKILLed on drop.
pub struct Persister {
    child: Option<Child>,
    dir: TempDir,
    metrics_port: u16,
    runs: usize,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Persister {
    /// Starts one against `redis_url` and `database_url`; `flags` (name without `--`,
    /// value) override the defaults.
    ///
    /// ```no_run
    /// use coupon_testkit::{Flavor, MariaDb, Persister, Server};
    ///
    /// let server = Server::start(Flavor::Redis);
    /// let database = MariaDb::start();
    /// let persister = Persister::start(&server.url(), &database.url(), &[("linger-ms", "5")]);
    /// # drop(persister);
    /// ```
    pub fn start(redis_url: &str, database_url: &str, flags: &[(&str, &str)]) -> Persister {
        Persister::start_with_env(redis_url, Some(database_url), flags, &[])
    }

    /// Like [`Persister::start`], but without `--database-url` when `database_url` is `None`
    /// (the persister then decides from its environment), and with `env` set.
    pub fn start_with_env(
        redis_url: &str,
        database_url: Option<&str>,
        flags: &[(&str, &str)],
        env: &[(&str, &str)],
    ) -> Persister {
        let metrics_port = free_port();
        let metrics_addr = format!("127.0.0.1:{metrics_port}");
        let mut settings: BTreeMap<String, String> = DEFAULTS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        settings.insert("redis-url".into(), redis_url.into());
        if let Some(database_url) = database_url {
            settings.insert("database-url".into(), database_url.into());
        }
        settings.insert("metrics-addr".into(), metrics_addr);
        for (name, value) in flags {
            settings.insert(name.to_string(), value.to_string());
        }
        let args = settings
            .into_iter()
            .flat_map(|(k, v)| [format!("--{k}"), v])
            .collect();
        let dir = tempfile::Builder::new()
            .prefix("coupon-persister-")
            .tempdir()
            .expect("cannot create a temp dir for the persister");
        let mut persister = Persister {
            child: None,
            dir,
            metrics_port,
            runs: 0,
            args,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        persister.launch();
        persister
    }

    fn launch(&mut self) {
        self.runs += 1;
        let log_path = self.dir.path().join(format!("run-{}.log", self.runs));
        let log = std::fs::File::create(&log_path).expect("cannot create the persister log");
        let child = Command::new(persister_path())
            .args(&self.args)
            .current_dir(self.dir.path())
            .env("RUST_LOG", "info,coupon_persister=debug")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot start coupon-persister");
        self.child = Some(child);
    }

    /// Starts it again with the same flags (the same consumer name) after a kill or exit.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|child| child.id())
    }

    /// `kill -9`: no batch is finished, nothing is flushed.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits up to `limit` for the exit: its status and how long it took, or
    /// `None` if it did not exit (it is then killed).
    pub fn terminate(&mut self, limit: Duration) -> Option<(ExitStatus, Duration)> {
        let mut child = self.child.take()?;
        let sent = Instant::now();
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("cannot run kill");
        assert!(status.success(), "kill -TERM failed");
        while sent.elapsed() < limit {
            if let Ok(Some(status)) = child.try_wait() {
                return Some((status, sent.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// Waits up to `limit` for the process to exit by itself: its status, or `None`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The directory it runs in (where a default SQLite file would go).
    pub fn work_dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The logs of every run so far.
    pub fn log(&self) -> String {
        (1..=self.runs)
            .map(|run| {
                let path = self.dir.path().join(format!("run-{run}.log"));
                format!(
                    "--- run {run} ---\n{}",
                    std::fs::read_to_string(path).unwrap_or_default()
                )
            })
            .collect()
    }

    /// GET on the metrics server: `(status line, body)`.
    pub fn http_get(&self, path: &str) -> Option<(String, String)> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.metrics_port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        Some((head.lines().next()?.to_string(), body.to_string()))
    }

    /// The value of an unlabelled metric (or the sum over its label sets), once the
    /// metrics server answers.
    pub fn metric(&self, name: &str) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some((_, body)) = self.http_get("/metrics") {
                return body
                    .lines()
                    .filter(|line| {
                        line.strip_prefix(name)
                            .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
                    })
                    .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum();
            }
            assert!(
                Instant::now() < deadline,
                "no /metrics answer\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Persister {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The event stream of `coupon`, as the module names it.
pub fn events_key(coupon: &[u8]) -> Vec<u8> {
    coupon_keys(coupon).events
}

fn coupon_keys(coupon: &[u8]) -> CouponKeys {
    CouponKeys::of(coupon).expect("a coupon key the module accepts")
}

/// What the tests issued and revoked, from the module's replies: (coupon, seq) → (user,
/// revoked).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Ledger {
    pub rows: BTreeMap<(Vec<u8>, i64), (Vec<u8>, bool)>,
}

impl Ledger {
    /// Issues to every user of `users` in one pipeline; records the ones `ISSUED`.
    pub fn issue(
        &mut self,
        conn: &mut redis::Connection,
        coupon: &[u8],
        users: &[Vec<u8>],
        limit: i64,
    ) {
        let mut pipe = redis::pipe();
        for user in users {
            pipe.cmd("COUPON.ISSUE").arg(coupon).arg(user).arg(limit);
        }
        let replies: Vec<(String, Option<i64>, i64)> =
            pipe.query(conn).expect("COUPON.ISSUE pipeline");
        for (user, (status, seq, _)) in users.iter().zip(replies) {
            if status == "ISSUED" {
                let seq = seq.expect("an ISSUED reply has a seq");
                self.rows
                    .insert((coupon.to_vec(), seq), (user.clone(), false));
            }
        }
    }

    /// Revokes in one pipeline; records the ones revoked now.
    pub fn revoke(&mut self, conn: &mut redis::Connection, coupon: &[u8], users: &[Vec<u8>]) {
        let mut pipe = redis::pipe();
        for user in users {
            pipe.cmd("COUPON.REVOKE").arg(coupon).arg(user);
        }
        let replies: Vec<i64> = pipe.query(conn).expect("COUPON.REVOKE pipeline");
        for (user, revoked) in users.iter().zip(replies) {
            if revoked == 1 {
                let row = self
                    .rows
                    .iter_mut()
                    .find(|((c, _), (u, r))| c == coupon && u == user && !*r)
                    .expect("a revoked user was an issued holder");
                row.1 .1 = true;
            }
        }
    }

    pub fn merge(&mut self, other: Ledger) {
        self.rows.extend(other.rows);
    }

    pub fn coupons(&self) -> BTreeSet<Vec<u8>> {
        self.rows.keys().map(|(coupon, _)| coupon.clone()).collect()
    }

    pub fn revoked(&self) -> usize {
        self.rows.values().filter(|(_, revoked)| *revoked).count()
    }
}

/// A load generator on its own thread: pipelined issues to `coupons` round-robin, and a
/// revoke of every seventh holder, until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Ledger>>,
}

impl Load {
    pub fn start(server: &Server, coupons: Vec<String>, tag: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let client = server.client();
        let tag = tag.to_string();
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut conn = client.get_connection().expect("load connection");
            let mut ledger = Ledger::default();
            let mut round = 0usize;
            while !flag.load(Ordering::Relaxed) {
                for coupon in &coupons {
                    let users: Vec<Vec<u8>> = (0..20)
                        .map(|i| format!("{tag}-{round}-{i}").into_bytes())
                        .collect();
                    ledger.issue(&mut conn, coupon.as_bytes(), &users, i64::MAX);
                    let revoked: Vec<Vec<u8>> = users.iter().step_by(7).cloned().collect();
                    ledger.revoke(&mut conn, coupon.as_bytes(), &revoked);
                }
                round += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            ledger
        });
        Load {
            stop,
            handle: Some(handle),
        }
    }

    pub fn stop(mut self) -> Ledger {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .expect("stopped once")
            .join()
            .expect("the load thread panicked")
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One row of `coupon_issuance`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbRow {
    pub coupon: Vec<u8>,
    pub seq: i64,
    pub user: Vec<u8>,
    pub issue_entry_id: Option<String>,
    pub revoke_entry_id: Option<String>,
    pub issued_at_ms: Option<i64>,
    pub revoked_at_ms: Option<i64>,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Runs a query against the database (MySQL or SQLite URL) and returns its rows.
pub fn query_rows(database_url: &str, sql: &str) -> Result<Vec<sqlx::any::AnyRow>, sqlx::Error> {
    sqlx::any::install_default_drivers();
    runtime().block_on(async {
        use sqlx::Connection;
        let mut conn = sqlx::AnyConnection::connect(database_url).await?;
        let rows = sqlx::query(sql).fetch_all(&mut conn).await;
        let _ = conn.close().await;
        rows
    })
}

/// Every row of `coupon_issuance`, or the error (the table may not exist yet).
pub fn db_rows(database_url: &str) -> Result<Vec<DbRow>, sqlx::Error> {
    use sqlx::Row;
    query_rows(
        database_url,
        // HEX(): sqlx's Any driver hands MySQL's VARBINARY over as text.
        "SELECT HEX(coupon), seq, HEX(user), issue_entry_id, revoke_entry_id, issued_at_ms, \
         revoked_at_ms FROM coupon_issuance ORDER BY coupon, seq",
    )?
    .into_iter()
    .map(|row| {
        Ok(DbRow {
            coupon: unhex(&row.try_get::<String, _>(0)?),
            seq: row.try_get(1)?,
            user: unhex(&row.try_get::<String, _>(2)?),
            issue_entry_id: row.try_get(3)?,
            revoke_entry_id: row.try_get(4)?,
            issued_at_ms: row.try_get(5)?,
            revoked_at_ms: row.try_get(6)?,
        })
    })
    .collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("HEX() output"))
        .collect()
}

/// Differences between the database and the ledger; empty when they agree.
pub fn differences(rows: &[DbRow], ledger: &Ledger) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for row in rows {
        let key = (row.coupon.clone(), row.seq);
        if !seen.insert(key.clone()) {
            problems.push(format!("duplicate row {row:?}"));
            continue;
        }
        match ledger.rows.get(&key) {
            None => problems.push(format!("extra row {row:?}")),
            Some((user, revoked)) => {
                if &row.user != user {
                    problems.push(format!("wrong user in {row:?}, expected {user:?}"));
                }
                if row.issue_entry_id.is_none() || row.issued_at_ms.is_none() {
                    problems.push(format!("issue not recorded in {row:?}"));
                }
                if row.revoke_entry_id.is_some() != *revoked
                    || row.revoked_at_ms.is_some() != *revoked
                {
                    problems.push(format!("revoke state wrong in {row:?}, expected {revoked}"));
                }
            }
        }
    }
    for (key, value) in &ledger.rows {
        if !seen.contains(key) {
            problems.push(format!("missing row {key:?} → {value:?}"));
        }
    }
    problems
}

/// Waits until the database equals the ledger (same (coupon, user, seq) set, revokes
/// applied, no extra rows, no duplicates), then checks that Redis agrees with the ledger too
/// (holders and counters of every coupon). Panics with the differences and the log after
/// `limit`.
pub fn assert_persisted(
    server: Option<&Server>,
    database_url: &str,
    ledger: &Ledger,
    limit: Duration,
    log: impl Fn() -> String,
) {
    let deadline = Instant::now() + limit;
    loop {
        let problems = match db_rows(database_url) {
            Ok(rows) => differences(&rows, ledger),
            Err(e) => vec![format!("cannot read the database: {e}")],
        };
        if problems.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            let shown: Vec<_> = problems.iter().take(20).collect();
            panic!(
                "the database does not match after {limit:?}: {} problems, first {shown:#?}\n{}",
                problems.len(),
                log()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if let Some(server) = server {
        assert_redis_matches(server, ledger);
    }
}

/// Redis holds what the ledger says: each coupon's holders are exactly its unrevoked rows,
/// its last seq is its highest seq, and the seqs not held are its revoked ones.
pub fn assert_redis_matches(server: &Server, ledger: &Ledger) {
    let mut conn = server.connect();
    for coupon in ledger.coupons() {
        let name = String::from_utf8_lossy(&coupon).into_owned();
        let mut holders: BTreeMap<Vec<u8>, i64> = redis::cmd("HGETALL")
            .arg(&coupon_keys(&coupon).coupon)
            .query(&mut conn)
            .expect("HGETALL of the coupon");
        let last_seq = holders.remove(LAST_SEQ_FIELD);
        let expected: BTreeMap<Vec<u8>, i64> = ledger
            .rows
            .iter()
            .filter(|((c, _), (_, revoked))| *c == coupon && !revoked)
            .map(|((_, seq), (user, _))| (user.clone(), *seq))
            .collect();
        assert_eq!(holders, expected, "holders of {name:?}");
        let rows = ledger.rows.keys().filter(|(c, _)| *c == coupon);
        let highest = rows.map(|(_, seq)| *seq).max();
        assert_eq!(last_seq, highest, "last seq of {name:?}");
        let revoked = ledger
            .rows
            .iter()
            .filter(|((c, _), (_, revoked))| *c == coupon && *revoked)
            .count() as u64;
        let derived = revoked_of(last_seq.unwrap_or(0) as u64, holders.len() as u64);
        assert_eq!(derived, revoked, "revoked of {name:?}");
    }
}

/// Every coupon event stream on `server`.
pub fn event_streams(server: &Server) -> Vec<Vec<u8>> {
    let mut conn = server.connect();
    let streams: Vec<Vec<u8>> = redis::cmd("KEYS")
        .arg("*:events*")
        .query(&mut conn)
        .expect("KEYS");
    streams
        .into_iter()
        .filter(|stream| CouponKey::of_events_key(stream).is_some())
        .collect()
}

/// Entries pending in `group`, over every coupon event stream.
pub fn pending(server: &Server, group: &str) -> u64 {
    let mut conn = server.connect();
    event_streams(server)
        .iter()
        .map(|stream| {
            let summary: Value = redis::cmd("XPENDING")
                .arg(stream)
                .arg(group)
                .query(&mut conn)
                .unwrap_or(Value::Nil);
            match summary {
                Value::Array(items) => match items.first() {
                    Some(Value::Int(n)) => *n as u64,
                    _ => 0,
                },
                _ => 0,
            }
        })
        .sum()
}

/// The database a test persists into.
pub enum TestDb {
    MariaDb(MariaDb),
    /// A SQLite file in a temp dir, created by the persister.
    Sqlite(TempDir),
}

impl TestDb {
    pub fn mariadb() -> TestDb {
        TestDb::MariaDb(MariaDb::start())
    }

    pub fn sqlite() -> TestDb {
        TestDb::Sqlite(
            tempfile::Builder::new()
                .prefix("coupon-sqlite-")
                .tempdir()
                .expect("cannot create a temp dir for SQLite"),
        )
    }

    pub fn url(&self) -> String {
        match self {
            TestDb::MariaDb(db) => db.url(),
            TestDb::Sqlite(dir) => format!(
                "sqlite://{}?mode=rwc",
                dir.path().join("coupons.db").display()
            ),
        }
    }
}
