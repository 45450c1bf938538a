//! The benchmark, run in its tiny configuration so that it cannot rot: it
//! must run to the end, lose no request, and write its JSON and SVG.

// The workspace's test support (testing/src); it finds the examples in
// the workspace's target directory.
use endless_tests as support;

use std::process::Command;

#[test]
fn the_benchmark_runs_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let svg = dir.path().join("reload.svg");
    let out = Command::new(support::example("bench"))
        .env("BENCH_PROBATION_MS", "300")
        .args([
            "--quick",
            "--json",
            json.to_str().unwrap(),
            "--svg",
            svg.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("| keep-alive |"), "{stdout}");

    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let reloads = report["reloads"].as_array().unwrap();
    assert_eq!(reloads.len(), 3, "one row per mode");
    for row in reloads {
        assert_eq!(row["reloads"], 3, "{row}");
        assert_eq!(row["failed"], 0, "{row}");
        assert!(row["requests_ok"].as_u64().unwrap() > 0, "{row}");
        assert!(row["ready_ms"]["p50"].as_f64().unwrap() > 0.0, "{row}");
    }
    for row in report["steady_state"].as_array().unwrap() {
        assert!(row["ratio"].as_f64().unwrap() > 0.0, "{row}");
        assert_eq!(row["failed"], 0, "{row}");
    }
    assert_eq!(
        report["memory"]["fds_first"],
        report["memory"]["fds_after_reloads"]
    );
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("keep-alive"),
        "not an SVG chart"
    );
}
