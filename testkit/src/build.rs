//! Finds the binaries under test, building each once per test binary.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The module to load: `$COUPON_MODULE` if set, else `target/release/libcoupon.so`.
pub fn module_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| release_artifact("COUPON_MODULE", "coupon-module", "libcoupon.so"))
        .clone()
}

/// The persister: `$COUPON_PERSISTER_BIN` if set, else `target/release/coupon-persister`.
pub fn persister_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        release_artifact(
            "COUPON_PERSISTER_BIN",
            "coupon-persister",
            "coupon-persister",
        )
    })
    .clone()
}

/// The example HTTP service: `$COUPON_HTTP_BIN` if set, else `target/release/coupon-http`.
pub fn http_service_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| release_artifact("COUPON_HTTP_BIN", "coupon-http-example", "coupon-http"))
        .clone()
}

/// `$override_var` if set; else builds `package` with `cargo build --release` and returns
/// `target/release/<file>`. Building needs the project's workspace around this crate: a copy
/// from crates.io has no module or persister beside it, so there the variable is required.
fn release_artifact(override_var: &str, package: &str, file: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(override_var) {
        return PathBuf::from(path);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    assert!(
        root.join("module").join("Cargo.toml").exists(),
        "coupon-testkit is not inside the coupon workspace, so it cannot build {package}: \
         set {override_var} to a built {file} (from a checkout of the project: \
         cargo build --release -p {package})"
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "-p", package])
        .current_dir(&root)
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build {package}: {e}"));
    assert!(status.success(), "building {package} failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let path = target.join("release").join(file);
    assert!(
        path.exists(),
        "{} is missing after the build",
        path.display()
    );
    path
}
