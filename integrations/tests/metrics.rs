//! Metrics that survive reloads: the example's `/metrics`, scraped across
//! 5 reloads, never shows a counter going back, and counts them all.

// The workspace's test support (testing/src); it finds the examples in
// the workspace's target directory.
use endless_tests as support;

use std::collections::BTreeMap;
use std::time::Duration;

use nix::sys::signal::Signal;
use support::{get, signal_pid, Spec};

/// The `endless_*` samples of a scrape: name with labels → value.
fn scrape(addr: &str) -> BTreeMap<String, f64> {
    let (status, body) = get(addr, "/metrics").unwrap();
    assert_eq!(status, 200, "{body}");
    body.lines()
        .filter(|l| l.starts_with("endless_"))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

#[test]
fn counters_keep_growing_across_reloads() {
    let p = Spec::new(support::example("metrics"))
        .arg("127.0.0.1:0")
        .spawn();
    let addr = p.listening_addr(0);
    let mut last: BTreeMap<String, f64> = BTreeMap::new();
    let mut pid = p.first_pid();
    for reload in 1..=5 {
        signal_pid(pid, Signal::SIGHUP);
        // Until the new generation answers (the old one may still take a
        // connection or two).
        let now = support::eventually(
            &format!("generation {reload} serves"),
            Duration::from_secs(20),
            || {
                let s = scrape(&addr);
                (s.get("endless_generation") == Some(&(reload as f64))).then_some(s)
            },
        );
        for (name, value) in &now {
            if name.contains("_total") {
                let before = last.get(name).copied().unwrap_or(0.0);
                assert!(
                    *value >= before,
                    "{name} went back from {before} to {value}: {now:#?}"
                );
            }
        }
        assert_eq!(
            now["endless_reload_requests_total"], reload as f64,
            "{now:#?}"
        );
        last = now;
        let (_, hello) = get(&addr, "/").unwrap();
        pid = hello.trim().rsplit(' ').next().unwrap().parse().unwrap();
    }
    // Each reload's predecessor let go when the next one took over (the
    // chain), so all but the last have succeeded; the last once its
    // probation (10 s) is over.
    let s = support::eventually(
        "the last reload succeeded and a drain was counted",
        Duration::from_secs(20),
        || {
            let s = scrape(&addr);
            // The drained predecessor says so on its way out, just after it
            // lets go: the two can be a scrape apart.
            (s.get("endless_reloads_total{outcome=\"succeeded\"}") == Some(&5.0)
                && s.get("endless_drains_total").is_some_and(|d| *d >= 1.0))
            .then_some(s)
        },
    );
    assert_eq!(s["endless_reload_requests_total"], 5.0, "{s:#?}");
    assert_eq!(
        s.get("endless_reloads_total{outcome=\"failed\"}")
            .copied()
            .unwrap_or(0.0),
        0.0
    );
    // Drains are recorded by the generation the drained one handed over to
    // (a quick chain can pass one on before it hears): at least one.
    assert!(s["endless_drains_total"] >= 1.0, "{s:#?}");
    drop(p);
}
