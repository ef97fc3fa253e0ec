//! `testcontainers` images: Redis with the coupon module, MySQL/MariaDB, and the persister
//! wired to both on a network of their own.
//!
//! Defaults are the project's images (`docker compose -f docker/compose.yaml build` makes
//! them) and `mysql:8`. Each image can be swapped in code ([`CouponRedis::new`],
//! [`ImageExt::with_name`] / [`ImageExt::with_tag`] on any of them) or for a whole run with an
//! environment variable holding `name:tag`:
//!
//! | image | default | variable |
//! |---|---|---|
//! | [`CouponRedis`] | `coupon-redis:latest` | `COUPON_TESTKIT_REDIS_IMAGE` |
//! | [`Database`] | `mysql:8` | `COUPON_TESTKIT_DATABASE_IMAGE` |
//! | [`PersisterImage`] | `coupon-persister:latest` | `COUPON_TESTKIT_PERSISTER_IMAGE` |
//!
//! ```no_run
//! # async fn example() -> Result<(), coupon_testkit::Error> {
//! use coupon_testkit::containers::{CouponRedis, Database};
//! use coupon_testkit::Stack;
//!
//! let stack = Stack::builder()
//!     .redis_image(CouponRedis::new("registry.example.com/coupon-redis", "1.4"))
//!     .database_image(Database::mariadb())
//!     .persister(true)
//!     .start()
//!     .await?;
//! let coupons = stack.coupons().await?;
//! coupons.issue("sale", "alice", 100).await?;
//! stack.wait_persisted("sale", std::time::Duration::from_secs(30)).await?;
//! # Ok(())
//! # }
//! ```

use crate::Error;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use testcontainers::bollard::Docker;
use testcontainers::core::{ContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
pub use testcontainers::ImageExt;
use testcontainers::{ContainerAsync, Image};

/// The database's root password and schema in [`Database`] containers.
pub const DATABASE_PASSWORD: &str = "coupon";
pub const DATABASE_NAME: &str = "coupon";

const REDIS_PORT: [ContainerPort; 1] = [ContainerPort::Tcp(6379)];
const DATABASE_PORT: [ContainerPort; 1] = [ContainerPort::Tcp(3306)];
const METRICS_PORT: [ContainerPort; 1] = [ContainerPort::Tcp(9187)];

/// `$var` as `name:tag` (the tag is what follows the last `:` after the last `/`), else the
/// default.
fn from_env(var: &str, name: &str, tag: &str) -> (String, String) {
    match std::env::var(var) {
        Ok(image) if !image.is_empty() => {
            let slash = image.rfind('/').map_or(0, |i| i + 1);
            match image[slash..].rfind(':') {
                Some(colon) => (
                    image[..slash + colon].to_string(),
                    image[slash + colon + 1..].to_string(),
                ),
                None => (image, "latest".into()),
            }
        }
        _ => (name.into(), tag.into()),
    }
}

/// Redis with the coupon module loaded (`docker/redis.Dockerfile`), on port 6379, ready once
/// it accepts connections (the module loads before that, or the server exits).
#[derive(Debug, Clone)]
pub struct CouponRedis {
    name: String,
    tag: String,
}

impl CouponRedis {
    pub fn new(name: impl Into<String>, tag: impl Into<String>) -> Self {
        CouponRedis {
            name: name.into(),
            tag: tag.into(),
        }
    }
}

impl Default for CouponRedis {
    /// `$COUPON_TESTKIT_REDIS_IMAGE`, else `coupon-redis:latest`.
    fn default() -> Self {
        let (name, tag) = from_env("COUPON_TESTKIT_REDIS_IMAGE", "coupon-redis", "latest");
        CouponRedis { name, tag }
    }
}

impl Image for CouponRedis {
    fn name(&self) -> &str {
        &self.name
    }

    fn tag(&self) -> &str {
        &self.tag
    }

    fn ready_conditions(&self) -> Vec<WaitFor> {
        vec![WaitFor::message_on_stdout("Ready to accept connections")]
    }

    fn expose_ports(&self) -> &[ContainerPort] {
        &REDIS_PORT
    }
}

/// A MySQL 8 (or MariaDB) server with the schema [`DATABASE_NAME`] and root's password
/// [`DATABASE_PASSWORD`], through the official images' `MYSQL_*` variables, which the
/// MariaDB image honours too. Ready when the real server (not the one initialising the data
/// directory, which logs "port: 0") says it listens on 3306.
#[derive(Debug, Clone)]
pub struct Database {
    name: String,
    tag: String,
}

impl Database {
    pub fn new(name: impl Into<String>, tag: impl Into<String>) -> Self {
        Database {
            name: name.into(),
            tag: tag.into(),
        }
    }

    /// The official `mysql:8`.
    pub fn mysql() -> Self {
        Database::new("mysql", "8")
    }

    /// The official `mariadb:11`.
    pub fn mariadb() -> Self {
        Database::new("mariadb", "11")
    }
}

impl Default for Database {
    /// `$COUPON_TESTKIT_DATABASE_IMAGE`, else `mysql:8`.
    fn default() -> Self {
        let (name, tag) = from_env("COUPON_TESTKIT_DATABASE_IMAGE", "mysql", "8");
        Database { name, tag }
    }
}

impl Image for Database {
    fn name(&self) -> &str {
        &self.name
    }

    fn tag(&self) -> &str {
        &self.tag
    }

    fn ready_conditions(&self) -> Vec<WaitFor> {
        // The space: MySQL also logs its X plugin's "port: 33060".
        vec![WaitFor::message_on_either_std("port: 3306 ")]
    }

    fn env_vars(
        &self,
    ) -> impl IntoIterator<
        Item = (
            impl Into<std::borrow::Cow<'_, str>>,
            impl Into<std::borrow::Cow<'_, str>>,
        ),
    > {
        [
            ("MYSQL_ROOT_PASSWORD", DATABASE_PASSWORD),
            ("MYSQL_DATABASE", DATABASE_NAME),
        ]
    }

    fn expose_ports(&self) -> &[ContainerPort] {
        &DATABASE_PORT
    }
}

/// `coupon-persister` (`docker/persister.Dockerfile`), metrics on 9187; ready once connected
/// to both Redis and the database. Its URLs come from `COUPON_PERSISTER_REDIS_URL` and
/// `COUPON_PERSISTER_DATABASE_URL` ([`ImageExt::with_env_var`]), which [`crate::Stack`] sets.
#[derive(Debug, Clone)]
pub struct PersisterImage {
    name: String,
    tag: String,
}

impl PersisterImage {
    pub fn new(name: impl Into<String>, tag: impl Into<String>) -> Self {
        PersisterImage {
            name: name.into(),
            tag: tag.into(),
        }
    }
}

impl Default for PersisterImage {
    /// `$COUPON_TESTKIT_PERSISTER_IMAGE`, else `coupon-persister:latest`.
    fn default() -> Self {
        let (name, tag) = from_env(
            "COUPON_TESTKIT_PERSISTER_IMAGE",
            "coupon-persister",
            "latest",
        );
        PersisterImage { name, tag }
    }
}

impl Image for PersisterImage {
    fn name(&self) -> &str {
        &self.name
    }

    fn tag(&self) -> &str {
        &self.tag
    }

    fn ready_conditions(&self) -> Vec<WaitFor> {
        vec![WaitFor::message_on_stderr("persister started")]
    }

    fn expose_ports(&self) -> &[ContainerPort] {
        &METRICS_PORT
    }
}

/// The images a [`crate::Stack`] starts.
#[derive(Debug, Clone, Default)]
pub struct Images {
    pub redis: CouponRedis,
    pub database: Database,
    pub persister: PersisterImage,
}

/// Containers of one stack; removed (with their network) when dropped, the persister first.
pub struct Running {
    _persister: Option<ContainerAsync<PersisterImage>>,
    _database: Option<ContainerAsync<Database>>,
    _redis: ContainerAsync<CouponRedis>,
}

/// Starts Redis and, with `persister`, the database and the persister on a new network where
/// they reach each other by container name. Returns the URLs as seen from the tests.
pub(crate) async fn start(
    images: &Images,
    persister: bool,
) -> Result<(Running, String, Option<String>), Error> {
    let network = unique_name();
    let redis_name = format!("{network}-redis");
    let redis = images
        .redis
        .clone()
        .with_network(&network)
        .with_container_name(&redis_name)
        .start()
        .await?;
    let host = redis.get_host().await?;
    let redis_url = format!("redis://{host}:{}/", redis.get_host_port_ipv4(6379).await?);
    if !persister {
        let running = Running {
            _persister: None,
            _database: None,
            _redis: redis,
        };
        return Ok((running, redis_url, None));
    }
    let database_name = format!("{network}-db");
    let database = images
        .database
        .clone()
        .with_network(&network)
        .with_container_name(&database_name)
        // A first MySQL start initialises its data directory: slower than the default minute
        // on a busy machine.
        .with_startup_timeout(Duration::from_secs(180))
        .start()
        .await?;
    let database_url = format!(
        "mysql://root:{DATABASE_PASSWORD}@{host}:{}/{DATABASE_NAME}",
        database.get_host_port_ipv4(3306).await?
    );
    let persister = images
        .persister
        .clone()
        .with_network(&network)
        .with_container_name(format!("{network}-persister"))
        .with_env_var(
            "COUPON_PERSISTER_REDIS_URL",
            format!("redis://{redis_name}:6379/"),
        )
        .with_env_var(
            "COUPON_PERSISTER_DATABASE_URL",
            format!("mysql://root:{DATABASE_PASSWORD}@{database_name}:3306/{DATABASE_NAME}"),
        )
        .start()
        .await?;
    let running = Running {
        _persister: Some(persister),
        _database: Some(database),
        _redis: redis,
    };
    Ok((running, redis_url, Some(database_url)))
}

/// Unique across the processes and stacks of this machine, for networks and container names.
fn unique_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "coupon-testkit-{}-{}-{nanos:x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Whether a Docker daemon answers at `DOCKER_HOST` or the default socket.
pub async fn docker_available() -> bool {
    match Docker::connect_with_defaults() {
        Ok(docker) => docker.ping().await.is_ok(),
        Err(_) => false,
    }
}

/// For tests that need Docker: `true` (skip) when no daemon answers, after saying so — except
/// under CI (`CI` set), where a missing daemon fails the test instead of hiding it.
pub async fn skip_without_docker(test: &str) -> bool {
    if docker_available().await {
        return false;
    }
    let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false");
    assert!(
        !ci,
        "{test}: no Docker daemon answers (DOCKER_HOST or /var/run/docker.sock), and CI needs it"
    );
    // Written to the handle, not through eprintln!, which the test harness captures: a skip
    // must show.
    let _ = writeln!(
        std::io::stderr(),
        "{test}: skipped, no Docker daemon answers (DOCKER_HOST or /var/run/docker.sock)"
    );
    true
}
