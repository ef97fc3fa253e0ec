//! Finds the module's `.so`, building it once per test binary.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The module to load: `$COUPON_MODULE` if set, else `target/release/libcoupon.so`, built
/// with `cargo build --release -p coupon-module` the first time a test asks.
pub fn module_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        if let Some(path) = std::env::var_os("COUPON_MODULE") {
            return PathBuf::from(path);
        }
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--release", "-p", "coupon-module"])
            .current_dir(&root)
            .status()
            .expect("cannot run cargo to build the coupon module");
        assert!(status.success(), "building the coupon module failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        let path = target.join("release").join("libcoupon.so");
        assert!(
            path.exists(),
            "{} is missing after the build",
            path.display()
        );
        path
    })
    .clone()
}
