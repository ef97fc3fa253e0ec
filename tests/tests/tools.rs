//! The quickstart and the benchmark run end to end (the benchmark at smoke size: CI checks
//! that it works; its figures come from full runs, see BENCHMARKS.md).

use std::process::Command;

fn run(binary: &str, args: &[&str]) -> String {
    let output = Command::new(binary)
        .args(args)
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{binary} {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn the_quickstart_sells_out_and_proves_it() {
    let out = run(
        env!("CARGO_BIN_EXE_flash-sale"),
        &["--users", "3000", "--stock", "200"],
    );
    assert!(
        out.contains("holders in Redis 200 = rows in the database 200 = stock 200"),
        "{out}"
    );
    // After the sell-out the SDK answers most clicks itself, and says how many.
    let local: u64 = out
        .lines()
        .find_map(|line| line.strip_prefix("answered by the SDK itself (sold out, repeats): "))
        .and_then(|rest| rest.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no count of local answers:\n{out}"));
    assert!(local > 0, "no click answered locally:\n{out}");
    assert!(
        out.contains("OK: no coupon over-issued, none lost, no user twice"),
        "{out}"
    );
}

#[test]
fn the_quickstart_sells_out_on_a_cluster() {
    let out = run(
        env!("CARGO_BIN_EXE_flash-sale"),
        &["--cluster", "--users", "3000", "--stock", "100"],
    );
    let proofs: Vec<&str> = out
        .lines()
        .filter(|line| line.starts_with("proof ("))
        .collect();
    assert_eq!(proofs.len(), 3, "one coupon per primary:\n{out}");
    for proof in proofs {
        assert!(
            proof.contains("holders in Redis 100 = rows in the database 100 = stock 100"),
            "{out}"
        );
    }
    assert!(
        out.contains("OK: no coupon over-issued, none lost, no user twice"),
        "{out}"
    );
}

#[test]
fn the_benchmark_runs_every_part() {
    let out = run(env!("CARGO_BIN_EXE_coupon-bench"), &["--smoke"]);
    for part in [
        "issuing (fresh users, stock unlimited)",
        "sold out (500 holders, a non-holder clicks)",
        "duplicate (500 holders, a holder clicks again)",
        "flash sale through the SDK",
        "memory per holder:",
        "persister into MariaDB",
        "one live coupon among dormant ones",
        "to one coupon among 200 coupons",
        "XREADGROUP",
        "module/seeds-style Lua",
        "module/SISMEMBER",
    ] {
        assert!(out.contains(part), "{part} missing:\n{out}");
    }
    let rows: Vec<&str> = out.lines().filter(|l| l.contains(" errors ")).collect();
    assert_eq!(
        rows.len(),
        28,
        "four rows issuing, five sold out and five duplicate, in two modes:\n{out}"
    );
    assert!(
        rows.iter().all(|l| l.trim_end().ends_with(" errors 0")),
        "{out}"
    );
}

#[test]
fn the_replica_ack_benchmark_runs() {
    let out = run(
        env!("CARGO_BIN_EXE_coupon-bench"),
        &["replica-ack", "--smoke"],
    );
    for part in [
        "without replica ack",
        "with replica ack (WAIT 1)",
        "ratio with/without",
        "replica digest matches the primary's: true",
    ] {
        assert!(out.contains(part), "{part} missing:\n{out}");
    }
}
