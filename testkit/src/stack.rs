//! One API over both backends: Redis with the module, and optionally a database with the
//! persister draining Redis into it, as containers or as local processes.

use crate::{db_rows, DbRow, Flavor, MariaDb, Persister, Server};
use coupon_sdk::Coupons;
use redis::aio::MultiplexedConnection;
use std::time::{Duration, Instant};

/// The client a [`Stack`] hands out.
pub type Client = Coupons<MultiplexedConnection>;

/// What can go wrong while starting or checking a stack.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Docker refused or a container never became ready.
    #[cfg(feature = "containers")]
    #[error("docker: {0}")]
    Docker(#[from] testcontainers::TestcontainersError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("coupon client: {0}")]
    Coupon(#[from] coupon_sdk::Error),
    /// A local server did not start, or the configuration is wrong.
    #[error("{0}")]
    Setup(String),
    /// [`Stack::wait_persisted`] gave up.
    #[error("the database does not match Redis for {coupon:?} after {waited:?}: {differences:?}")]
    NotPersisted {
        coupon: String,
        waited: Duration,
        differences: Vec<String>,
    },
}

/// Where a [`Stack`] runs its servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Docker containers of the project's images (see [`crate::containers`]).
    Containers,
    /// Processes on this machine: `redis-server` from PATH with the module built from this
    /// workspace (or `$COUPON_MODULE`), MariaDB (`mariadbd`), the persister binary.
    Local,
}

impl Backend {
    /// `COUPON_TESTKIT_BACKEND` (`containers` or `local`), else [`Backend::Containers`]: one
    /// switch for a whole test run, e.g. on a machine without Docker.
    pub fn from_env() -> Result<Backend, Error> {
        match std::env::var("COUPON_TESTKIT_BACKEND").as_deref() {
            Err(_) | Ok("") | Ok("containers") => Ok(Backend::Containers),
            Ok("local") => Ok(Backend::Local),
            Ok(other) => Err(Error::Setup(format!(
                "COUPON_TESTKIT_BACKEND={other:?}: expected `containers` or `local`"
            ))),
        }
    }
}

/// Redis with the module and a client for it: the one call most tests need. In a container
/// unless `COUPON_TESTKIT_BACKEND=local`. Keep the [`Stack`]: dropping it stops the server.
pub async fn coupons() -> Result<(Stack, Client), Error> {
    let stack = Stack::start().await?;
    let coupons = stack.coupons().await?;
    Ok((stack, coupons))
}

/// How to start a [`Stack`].
#[derive(Debug, Default)]
pub struct StackBuilder {
    backend: Option<Backend>,
    persister: bool,
    #[cfg(feature = "containers")]
    images: crate::containers::Images,
}

impl StackBuilder {
    /// Instead of [`Backend::from_env`].
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = Some(backend);
        self
    }

    /// Also start a database and the persister draining Redis into it.
    pub fn persister(mut self, on: bool) -> Self {
        self.persister = on;
        self
    }

    /// Another image of Redis with the module (containers only).
    #[cfg(feature = "containers")]
    pub fn redis_image(mut self, image: crate::containers::CouponRedis) -> Self {
        self.images.redis = image;
        self
    }

    /// Another database image, e.g. [`Database::mariadb`](crate::containers::Database::mariadb)
    /// (containers only).
    #[cfg(feature = "containers")]
    pub fn database_image(mut self, image: crate::containers::Database) -> Self {
        self.images.database = image;
        self
    }

    /// Another persister image (containers only).
    #[cfg(feature = "containers")]
    pub fn persister_image(mut self, image: crate::containers::PersisterImage) -> Self {
        self.images.persister = image;
        self
    }

    pub async fn start(self) -> Result<Stack, Error> {
        let backend = match self.backend {
            Some(backend) => backend,
            None => Backend::from_env()?,
        };
        match backend {
            Backend::Local => start_local(self.persister).await,
            #[cfg(feature = "containers")]
            Backend::Containers => {
                let (running, redis_url, database_url) =
                    crate::containers::start(&self.images, self.persister).await?;
                Ok(Stack {
                    backend,
                    redis_url,
                    database_url,
                    _running: Running::Containers {
                        _running: Box::new(running),
                    },
                })
            }
            #[cfg(not(feature = "containers"))]
            Backend::Containers => Err(Error::Setup(
                "coupon-testkit was built without its `containers` feature".into(),
            )),
        }
    }
}

/// Running servers; all stopped and removed when dropped.
pub struct Stack {
    backend: Backend,
    redis_url: String,
    database_url: Option<String>,
    _running: Running,
}

/// What a [`Stack`] keeps alive.
enum Running {
    Local {
        _servers: Box<LocalServers>,
    },
    #[cfg(feature = "containers")]
    Containers {
        _running: Box<crate::containers::Running>,
    },
}

/// Fields drop in order: the persister stops before what it talks to.
struct LocalServers {
    _persister: Option<Persister>,
    _database: Option<MariaDb>,
    _server: Server,
}

impl Stack {
    /// Redis with the module, on the backend [`Backend::from_env`] names.
    pub async fn start() -> Result<Stack, Error> {
        Stack::builder().start().await
    }

    /// A stack to configure: the backend, the persister and a database, other images.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), coupon_testkit::Error> {
    /// use std::time::Duration;
    ///
    /// let stack = coupon_testkit::Stack::builder().persister(true).start().await?;
    /// let coupons = stack.coupons().await?;
    /// coupons.issue("sale", "alice", 100).await?;
    /// // The database holds what Redis holds: rows, revokes and the last seq.
    /// let rows = stack.wait_persisted("sale", Duration::from_secs(30)).await?;
    /// assert_eq!(rows, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder() -> StackBuilder {
        StackBuilder::default()
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// `redis://host:port/`, reachable from the tests.
    pub fn redis_url(&self) -> &str {
        &self.redis_url
    }

    /// `mysql://…` of the database the persister writes to, reachable from the tests; `None`
    /// without [`StackBuilder::persister`].
    pub fn database_url(&self) -> Option<&str> {
        self.database_url.as_deref()
    }

    /// A client on a new multiplexed connection (the module backend, since the server has it).
    pub async fn coupons(&self) -> Result<Client, Error> {
        let client = redis::Client::open(self.redis_url.as_str())?;
        Ok(Coupons::connect(client.get_multiplexed_async_connection().await?).await?)
    }

    /// Waits until the database holds exactly what Redis holds for `coupon` (see
    /// [`persisted_differences`]); the rows, or [`Error::NotPersisted`] after `limit`.
    pub async fn wait_persisted(&self, coupon: &str, limit: Duration) -> Result<usize, Error> {
        let Some(database_url) = self.database_url.as_deref() else {
            return Err(Error::Setup("this stack has no persister".into()));
        };
        let coupons = self.coupons().await?;
        let started = Instant::now();
        loop {
            let (rows, differences) = persisted_differences(&coupons, database_url, coupon).await?;
            if differences.is_empty() {
                return Ok(rows);
            }
            if started.elapsed() >= limit {
                return Err(Error::NotPersisted {
                    coupon: coupon.into(),
                    waited: started.elapsed(),
                    differences: differences.into_iter().take(10).collect(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// How the database's rows of `coupon` (its name without a hash tag) differ from what Redis
/// says through the SDK: the unrevoked rows must be exactly the holders (`check`), the revoked
/// ones no longer held with that seq, and the counts and highest seq those of `info`. Empty
/// when they agree. Redis is read only through the SDK, so this holds whatever the key layout.
/// Returns the number of rows too.
pub async fn persisted_differences(
    coupons: &Client,
    database_url: &str,
    coupon: &str,
) -> Result<(usize, Vec<String>), Error> {
    let url = database_url.to_string();
    let rows = match tokio::task::spawn_blocking(move || db_rows(&url)).await {
        Ok(Ok(rows)) => rows,
        Ok(Err(error)) => return Ok((0, vec![format!("cannot read the database: {error}")])),
        Err(panic) => return Err(Error::Setup(format!("reading the database: {panic}"))),
    };
    let rows: Vec<DbRow> = rows
        .into_iter()
        .filter(|row| row.coupon == coupon.as_bytes())
        .collect();
    let info = coupons.info(coupon).await?;
    let mut differences = Vec::new();
    let revoked = rows
        .iter()
        .filter(|row| row.revoke_entry_id.is_some())
        .count() as u64;
    let live = rows.len() as u64 - revoked;
    if live != info.issued {
        differences.push(format!("{live} unrevoked rows, {} holders", info.issued));
    }
    if revoked != info.revoked {
        differences.push(format!("{revoked} revoked rows, {} revokes", info.revoked));
    }
    let last_seq = rows.iter().map(|row| row.seq).max().unwrap_or(0);
    if u64::try_from(last_seq).ok() != Some(info.last_seq) {
        differences.push(format!(
            "highest seq {last_seq}, last_seq {}",
            info.last_seq
        ));
    }
    for row in &rows {
        let held = coupons.check(coupon, &row.user).await?;
        let seq = u64::try_from(row.seq).ok();
        let revoked = row.revoke_entry_id.is_some();
        if revoked == (held == seq) {
            differences.push(format!(
                "{:?} seq {} ({}), Redis has {held:?}",
                String::from_utf8_lossy(&row.user),
                row.seq,
                if revoked { "revoked" } else { "held" }
            ));
        }
    }
    Ok((rows.len(), differences))
}

/// The local backend: starting processes blocks, so it runs off the async workers; the
/// harness panics on failure, which becomes [`Error::Setup`].
async fn start_local(with_persister: bool) -> Result<Stack, Error> {
    let started = tokio::task::spawn_blocking(move || {
        let server = Server::start(Flavor::Redis);
        let (database, persister) = if with_persister {
            let database = MariaDb::start();
            let persister = Persister::start(&server.url(), &database.url(), &[]);
            (Some(database), Some(persister))
        } else {
            (None, None)
        };
        (server, database, persister)
    })
    .await;
    let (server, database, persister) = started.map_err(|error| {
        let message = match error.try_into_panic() {
            Ok(panic) => panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a local server did not start".into()),
            Err(error) => error.to_string(),
        };
        Error::Setup(message)
    })?;
    Ok(Stack {
        backend: Backend::Local,
        redis_url: server.url(),
        database_url: database.as_ref().map(MariaDb::url),
        _running: Running::Local {
            _servers: Box::new(LocalServers {
                _persister: persister,
                _database: database,
                _server: server,
            }),
        },
    })
}
