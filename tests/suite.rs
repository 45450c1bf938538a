//! The rest of the test suite, run by plain `cargo test` at the root.
//!
//! The root package is the library and its examples only, so that the quick
//! start (`cargo run --release --example hello`) builds neither TLS nor
//! axum nor the tests' own dependencies: features unify across the packages
//! one cargo command selects, and an example builds every dev-dependency of
//! its package. The process-level tests (`testing/`), the gRPC example, the
//! integrations and the benchmark's test are crates of their own, which
//! this test runs with the same cargo, target directory and profile, their
//! output going straight to ours:
//!
//! 1. `cargo test --workspace --exclude hyper-endless`: every other crate;
//! 2. `cargo test -p hyper-endless --features tls,axum,metrics --lib`: the
//!    library's unit tests with the features the plain run leaves out;
//! 3. the same with `--doc`: the documentation's examples of those features.
//!
//! One crate's tests alone: `cargo test -p endless-tests [NAME]` (or
//! `-p endless-integrations`, ...; see docs/testing.md).
#![cfg(unix)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Set in the runs this test starts; nothing in them reads it but this
/// test, which a nested run selecting the root package would run again.
const NESTED: &str = "ENDLESS_SUITE_NESTED";

/// The target directory and profile arguments of the running test binary:
/// `<target>[/<triple>]/<profile>/deps/suite-<hash>`.
fn target_and_profile() -> (PathBuf, Vec<String>) {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a profile directory name");
    let mut target = profile_dir
        .parent()
        .expect("target directory")
        .to_path_buf();
    let mut args = Vec::new();
    if !target.join("CACHEDIR.TAG").exists() {
        // target/<triple>/<profile>: cross-compiled.
        let triple = target.file_name().expect("target triple").to_owned();
        args.push(format!("--target={}", triple.to_string_lossy()));
        target = target.parent().expect("target directory").to_path_buf();
    }
    match profile {
        "debug" => {}
        "release" => args.push("--release".into()),
        other => args.push(format!("--profile={other}")),
    }
    (target, args)
}

/// Runs `cargo test ARGS`; `Err` says what failed.
fn cargo_test(what: &str, args: &[&str]) -> Result<(), String> {
    let (target, profile) = target_and_profile();
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["test", "--no-fail-fast"])
        .args(args)
        .arg("--target-dir")
        .arg(&target)
        .args(&profile)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env(NESTED, "1")
        .stdin(Stdio::null());
    // Straight to the terminal, as the nested cargo's own output goes: the
    // harness captures only `print!` and `eprint!`.
    let _ = writeln!(std::io::stderr(), "\n== {what}: {cmd:?}");
    match cmd.status() {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(format!(
            "{what} failed ({status}): see its output above; rerun with `cargo test {}`",
            args.join(" ")
        )),
        Err(e) => Err(format!("cannot run {}: {e}", env!("CARGO"))),
    }
}

#[test]
fn the_rest_of_the_workspace_passes() {
    if std::env::var_os(NESTED).is_some() {
        return;
    }
    let features = "--features=tls,axum,metrics";
    // Each runs whatever the others did: one failure hides no other.
    let failed: Vec<String> = [
        cargo_test(
            "the process-level tests, gRPC, integrations and the benchmark",
            &["--workspace", "--exclude", "hyper-endless"],
        ),
        cargo_test(
            "the library's unit tests with TLS, axum and metrics",
            &["-p", "hyper-endless", features, "--lib"],
        ),
        cargo_test(
            "the documentation's examples with TLS, axum and metrics",
            &["-p", "hyper-endless", features, "--doc"],
        ),
    ]
    .into_iter()
    .filter_map(Result::err)
    .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
