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
//! 3. the same with `--doc`: the documentation's examples that exist only
//!    with those features (the plain run compiled and ran the others).
//!
//! Arguments after `--` and test name filters apply to the root package's
//! own tests only: one crate's tests, or some of them, run with
//! `cargo test -p endless-tests [NAME]` (or `-p endless-integrations`, ...;
//! see docs/testing.md). `--features http3` is passed on.
#![cfg(unix)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Set in the runs this test starts: the library's examples and
/// `endlessctl` are built already (by this run), so the test support need
/// not build them itself (as it does when a crate's tests run alone).
const PREBUILT: &str = "ENDLESS_TESTS_PREBUILT";

/// The target directory and the target and profile arguments of the running
/// test binary, `<target>[/<triple>]/<profile>/deps/suite-<hash>`, with
/// `<target>` as cargo gave it to this test.
fn target_and_profile() -> (PathBuf, Vec<String>) {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR is <target>/tmp")
        .to_path_buf();
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("<profile>/deps/<test>");
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a profile directory name");
    let mut args = Vec::new();
    if let Some(above) = profile_dir.parent().filter(|p| *p != target) {
        // <target>/<triple>/<profile>: built with --target.
        let triple = above.file_name().expect("target triple");
        args.push(format!("--target={}", triple.to_string_lossy()));
    }
    match profile {
        "debug" => {}
        "release" => args.push("--release".into()),
        other => args.push(format!("--profile={other}")),
    }
    (target, args)
}

/// `cargo test ARGS`, in this run's target directory and profile.
fn cargo(args: &[&str]) -> Command {
    let (target, profile) = target_and_profile();
    let mut cmd = Command::new(env!("CARGO"));
    cmd.arg("test")
        .arg("--target-dir")
        .arg(&target)
        .args(&profile)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env(PREBUILT, "1")
        .stdin(Stdio::null());
    cmd
}

/// The names of the library's doc tests with `features` (`--list`, which
/// builds the library but compiles no doc test).
fn doc_tests(features: &str) -> Result<Vec<String>, String> {
    let out = cargo(&[
        "-p",
        "hyper-endless",
        features,
        "--doc",
        "-q",
        "--",
        "--list",
    ])
    .stderr(Stdio::inherit())
    .output()
    .map_err(|e| format!("cannot run {}: {e}", env!("CARGO")))?;
    if !out.status.success() {
        return Err(format!("listing the doc tests {features} failed"));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(str::to_owned)
        .collect())
}

/// The doc tests the plain run did not have: those of items that exist
/// only with `features` (the others were compiled and run without them).
fn feature_doc_tests(features: &str) -> Result<Vec<String>, String> {
    let plain = doc_tests("--features=")?;
    Ok(doc_tests(features)?
        .into_iter()
        .filter(|t| !plain.contains(t))
        .map(|t| filter(&t))
        .collect())
}

/// A filter for the doc test named `file - item (line N)`: its item, or
/// its file for a module's own docs. rustdoc splits its test arguments at
/// whitespace, so the name itself cannot be one; a filter that also picks
/// another test only runs one more.
fn filter(name: &str) -> String {
    let mut parts = name.splitn(2, " - ");
    let file = parts.next().unwrap_or_default();
    let item = parts
        .next()
        .and_then(|r| r.split(" (line").next())
        .unwrap_or_default();
    if item.is_empty() { file } else { item }.to_owned()
}

/// Runs `cargo test ARGS`; `Err` says what failed.
fn cargo_test(what: &str, args: &[&str]) -> Result<(), String> {
    let mut cmd = cargo(&["--no-fail-fast"]);
    cmd.args(args);
    // Straight to the terminal, as the nested cargo's own output goes: the
    // harness captures only `print!` and `eprint!`.
    let _ = writeln!(std::io::stderr(), "\n== {what}: {cmd:?}");
    match cmd.status() {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(format!(
            "{what} failed ({status}): see its output above; rerun with {cmd:?}"
        )),
        Err(e) => Err(format!("cannot run {}: {e}", env!("CARGO"))),
    }
}

#[test]
fn the_rest_of_the_workspace_passes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if !root.join("testing/Cargo.toml").exists() {
        // Not in the repository (a packaged copy): nothing else to run.
        let _ = writeln!(std::io::stderr(), "no testing/ crate here: skipped");
        return;
    }
    // The features this run was given (`cargo test --features http3`) go
    // to the nested runs too; TLS, axum and metrics always do.
    let http3 = cfg!(feature = "http3");
    let tests_features = if http3 {
        "--features=endless-tests/http3"
    } else {
        ""
    };
    let features = if http3 {
        "--features=tls,axum,metrics,http3"
    } else {
        "--features=tls,axum,metrics"
    };
    let workspace: Vec<&str> = ["--workspace", "--exclude", "hyper-endless", tests_features]
        .into_iter()
        .filter(|a| !a.is_empty())
        .collect();
    // Each runs whatever the others did: one failure hides no other.
    let failed: Vec<String> = [
        cargo_test(
            "the process-level tests, gRPC, integrations and the benchmark",
            &workspace,
        ),
        cargo_test(
            "the library's unit tests with its features",
            &["-p", "hyper-endless", features, "--lib"],
        ),
        feature_doc_tests(features).and_then(|names| {
            if names.is_empty() {
                return Ok(());
            }
            let mut args = vec!["-p", "hyper-endless", features, "--doc", "--"];
            args.extend(names.iter().map(String::as_str));
            cargo_test("the documentation's examples of its features", &args)
        }),
    ]
    .into_iter()
    .filter_map(Result::err)
    .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
