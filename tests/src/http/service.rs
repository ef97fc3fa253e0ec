//! The example HTTP service under test: the real `coupon-http` binary as a child process (so
//! tests can SIGTERM or SIGKILL it), on a free loopback port, its log in a temp dir.

use super::client::{request, HttpResponse};
use crate::http_service_path;
use coupon_testkit::free_port;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// A running `coupon-http`; SIGKILLed on drop.
pub struct HttpService {
    child: Option<Child>,
    dir: TempDir,
    port: u16,
}

impl HttpService {
    /// Starts one with `args` (e.g. `--redis-url …`, `--campaign sale=10`) on a free port and
    /// waits until `/healthz` answers 200.
    pub fn start(args: &[&str]) -> HttpService {
        let mut last_log = String::new();
        for _ in 0..5 {
            match HttpService::start_on(free_port(), args) {
                Ok(service) => return service,
                // Another process took the port between our pick and the bind: pick again.
                Err(log) if log.contains("Address already in use") => last_log = log,
                Err(log) => panic!("coupon-http did not start; its log:\n{log}"),
            }
        }
        panic!("coupon-http found no free port; its log:\n{last_log}");
    }

    /// Starts one on `port`; `Err` with its log if it exits or does not become healthy.
    pub fn start_on(port: u16, args: &[&str]) -> Result<HttpService, String> {
        let dir = tempfile::Builder::new()
            .prefix("coupon-http-")
            .tempdir()
            .expect("cannot create a temp dir for coupon-http");
        let log = std::fs::File::create(dir.path().join("service.log"))
            .expect("cannot create the service log");
        let child = Command::new(http_service_path())
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .current_dir(dir.path())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot start coupon-http");
        let mut service = HttpService {
            child: Some(child),
            dir,
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if !service.is_running() {
                return Err(service.log());
            }
            if let Ok(response) = service.try_request("GET", "/healthz", None) {
                if response.status == 200 {
                    return Ok(service);
                }
            }
            if Instant::now() > deadline {
                let log = service.log();
                service.kill();
                return Err(format!("not healthy after 20 s\n{log}"));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// One request on a fresh connection; `body` is sent as JSON.
    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> std::io::Result<HttpResponse> {
        request(
            self.port,
            method,
            path,
            body.map(|b| ("application/json", b)),
        )
    }

    /// Like [`try_request`](Self::try_request); panics with the log if the request fails.
    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> HttpResponse {
        self.try_request(method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", self.log()))
    }

    /// `POST /coupons/{coupon}/issue` for `user`.
    pub fn issue(&self, coupon: &str, user: &str) -> HttpResponse {
        let body = serde_json::json!({ "user": user }).to_string();
        self.request("POST", &format!("/coupons/{coupon}/issue"), Some(&body))
    }

    /// The value of a metric line (`name{labels}` exactly as exposed), or the sum over every
    /// label set when `name` has none; 0 if absent.
    pub fn metric(&self, name: &str) -> f64 {
        let body = self.request("GET", "/metrics", None).body;
        body.lines()
            .filter(|line| {
                line.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends SIGTERM and returns at once.
    pub fn signal_term(&self) {
        let pid = self.pid().expect("coupon-http is not running");
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("cannot run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits up to `limit` for the process to exit: its status, or `None` (it is then killed).
    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// SIGTERM, then [`wait`](Self::wait).
    pub fn terminate(&mut self, limit: Duration) -> Option<ExitStatus> {
        self.signal_term();
        self.wait(limit)
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("service.log")).unwrap_or_default()
    }
}

impl Drop for HttpService {
    fn drop(&mut self) {
        self.kill();
    }
}
