//! Metrics through the [`metrics`](https://docs.rs/metrics) facade (feature
//! `metrics`), so that any exporter the program installs (Prometheus,
//! OpenTelemetry, StatsD) reports what the server does.
//!
//! Counters are the server's, not one process's: they are set to the
//! counters each generation carries over from the last (see `lifecycle`),
//! so an exporter in the new generation goes on from where the old one
//! was, and a counter never goes back at a reload. The drain of a
//! generation that handed over ends after its successor serves: the
//! predecessor tells the successor how long it took (the link's
//! `drained`), and the successor records it.
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `endless_reload_requests_total` | counter | | reloads asked for (signal, handle, control socket, file change) |
//! | `endless_reloads_total` | counter | `outcome`: `succeeded`, `failed`, `rolled_back` | how reloads ended: took over and lived through the probation; never took over; took over and died within the probation |
//! | `endless_drains_total` | counter | | drains after a hand-over that have ended |
//! | `endless_drain_duration_seconds` | histogram | | how long each of those took (recorded by the successor) |
//! | `endless_connections_cut_total` | counter | | connections cut at a drain's deadline or by a second stop |
//! | `endless_connections` | gauge | | connections open in this process (TCP, Unix, QUIC), counted as they open and close |
//! | `endless_generation` | gauge | | this generation's number |
//! | `endless_in_probation` | gauge | | 1 while a predecessor holds the sockets for this generation |

use std::time::Duration;

use metrics::{counter, gauge, histogram};

use crate::counters::Counters;

/// Sets every counter to `c`, and the generation gauges.
pub(crate) fn publish(c: &Counters, generation: u64) {
    counter!("endless_reload_requests_total").absolute(c.requested);
    counter!("endless_reloads_total", "outcome" => "succeeded").absolute(c.succeeded);
    let never_took_over = c.failed.saturating_sub(c.rolled_back);
    counter!("endless_reloads_total", "outcome" => "failed").absolute(never_took_over);
    counter!("endless_reloads_total", "outcome" => "rolled_back").absolute(c.rolled_back);
    counter!("endless_drains_total").absolute(c.drains);
    counter!("endless_connections_cut_total").absolute(c.cut);
    gauge!("endless_generation").set(generation as f64);
    gauge!("endless_in_probation").set(if c.in_probation { 1.0 } else { 0.0 });
}

/// A predecessor's drain took `took`.
pub(crate) fn drained(took: Duration) {
    histogram!("endless_drain_duration_seconds").record(took.as_secs_f64());
}

/// The connections gauge, looked up once (the recorder is installed
/// before the server runs).
fn open_connections() -> &'static metrics::Gauge {
    static GAUGE: std::sync::OnceLock<metrics::Gauge> = std::sync::OnceLock::new();
    GAUGE.get_or_init(|| gauge!("endless_connections"))
}

/// A connection opened (TCP, Unix or QUIC). Counted as it happens rather
/// than by a timer, so an idle server wakes up for nothing.
pub(crate) fn connection_opened() {
    open_connections().increment(1.0);
}

/// A connection closed.
pub(crate) fn connection_closed() {
    open_connections().decrement(1.0);
}
