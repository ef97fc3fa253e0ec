//! A MariaDB server of its own (standing in for MySQL 8): installed into a temp dir, on a
//! free loopback port, without grant tables; killable and restartable in place; killed on
//! drop. Never the system's server.

use crate::server::free_port;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The database the tests use.
pub const DATABASE: &str = "coupon";

fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"])
        .map(|dir| Path::new(dir).join(name))
        .find(|path| path.is_file());
    found
}

fn binary(name: &str) -> PathBuf {
    find(name).unwrap_or_else(|| {
        panic!("{name} not found: install MariaDB (apt-get install mariadb-server)")
    })
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

pub struct MariaDb {
    dir: TempDir,
    port: u16,
    child: Option<Child>,
}

impl MariaDb {
    /// Installs a fresh data directory, starts the server and creates the `coupon` database.
    ///
    /// ```no_run
    /// let database = coupon_testkit::MariaDb::start(); // killed and removed on drop
    /// assert!(database.url().starts_with("mysql://root@127.0.0.1:"));
    /// ```
    pub fn start() -> MariaDb {
        let dir = tempfile::Builder::new()
            .prefix("coupon-mariadb-")
            .tempdir()
            .expect("cannot create a temp dir for MariaDB");
        install_data_dir(&dir.path().join("data"));
        let mut server = MariaDb {
            dir,
            port: 0,
            child: None,
        };
        server.launch();
        server.execute(&format!("CREATE DATABASE {DATABASE}"));
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `mysql://root@127.0.0.1:<port>/coupon`
    pub fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}/{DATABASE}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// SIGKILL: a crash, recovered from the redo log at the next start.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: the server freezes (connections stay open, nothing answers) until
    /// [`MariaDb::thaw`].
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`MariaDb::freeze`].
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("mariadbd is not running");
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("cannot run kill");
        assert!(status.success(), "kill {signal} failed");
    }

    /// Kills the server and starts it again on the same port and data.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// Runs SQL through the `mariadb` command-line client.
    pub fn execute(&self, sql: &str) {
        let out = Command::new(binary("mariadb"))
            .args(["--no-defaults", "-h", "127.0.0.1", "-u", "root"])
            .arg(format!("-P{}", self.port))
            .args(["-e", sql])
            .output()
            .expect("cannot run the mariadb client");
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs SQL through the `mariadb` client in the background (to hold locks meanwhile).
    pub fn spawn_sql(&self, sql: &str) -> Child {
        Command::new(binary("mariadb"))
            .args(["--no-defaults", "-h", "127.0.0.1", "-u", "root"])
            .arg(format!("-P{}", self.port))
            .args(["-e", sql])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot run the mariadb client")
    }

    fn launch(&mut self) {
        let mut last_log = String::new();
        for _ in 0..5 {
            let port = if self.port == 0 {
                free_port()
            } else {
                self.port
            };
            let dir = self.dir.path();
            let mut command = Command::new(binary("mariadbd"));
            command
                .arg("--no-defaults")
                .arg(format!("--datadir={}", dir.join("data").display()))
                .arg(format!("--socket={}", dir.join("mysqld.sock").display()))
                .arg(format!("--pid-file={}", dir.join("mysqld.pid").display()))
                .arg(format!("--log-error={}", dir.join("error.log").display()))
                .arg(format!("--port={port}"))
                .args(["--bind-address=127.0.0.1", "--skip-grant-tables"])
                .args(["--skip-log-bin", "--innodb-buffer-pool-size=64M"])
                .args(["--innodb-log-file-size=32M", "--max-connections=200"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if running_as_root() {
                command.arg("--user=root");
            }
            let mut child = command.spawn().expect("cannot start mariadbd");
            if wait_until_ready(port, &mut child, &dir.join("data")) {
                self.port = port;
                self.child = Some(child);
                return;
            }
            let _ = child.kill();
            let _ = child.wait();
            last_log = self.log();
            if self.port != 0 {
                // The port is ours to keep: a restart must come back on it.
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        panic!("mariadbd did not start; its log:\n{last_log}");
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until the server answers a query on `port`, or exits, or 30 s pass. It must be
/// *our* server (its data directory), not one of another test that took the port.
fn wait_until_ready(port: u16, child: &mut Child, datadir: &Path) -> bool {
    let datadir = datadir
        .canonicalize()
        .unwrap_or_else(|_| datadir.to_path_buf());
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        let answer = Command::new(binary("mariadb"))
            .args(["--no-defaults", "-h", "127.0.0.1", "-u", "root", "-N", "-B"])
            .arg(format!("-P{port}"))
            .args(["--connect-timeout=1", "-e", "SELECT @@datadir"])
            .stderr(Stdio::null())
            .output();
        if let Ok(out) = answer {
            if out.status.success() {
                let theirs = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
                let theirs = theirs.canonicalize().unwrap_or(theirs);
                return theirs == datadir;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// `mariadb-install-db` into `data`. Tried three times: on a loaded machine it has been seen to
/// fail once and then succeed; the last failure's output is in the panic.
fn install_data_dir(data: &std::path::Path) {
    let mut output = None;
    for _ in 0..3 {
        let _ = std::fs::remove_dir_all(data);
        let mut install = Command::new(binary("mariadb-install-db"));
        install
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"]);
        if running_as_root() {
            install.arg("--user=root");
        }
        let out = install.output().expect("cannot run mariadb-install-db");
        if out.status.success() {
            return;
        }
        output = Some(out);
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let out = output.expect("a failed attempt");
    panic!(
        "mariadb-install-db failed three times ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
