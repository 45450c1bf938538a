//! Metrics that survive reloads: endless records through the `metrics`
//! facade (feature `metrics`), here into the Prometheus exporter, whose
//! text this server serves at `/metrics`. The counters go on from one
//! generation to the next: a reload never resets them.
//!
//! ```text
//! cargo run --release -p endless-integrations --example metrics [ADDR]   # default 127.0.0.1:8080
//! curl -s http://127.0.0.1:8080/metrics | grep endless_
//! kill -HUP <pid>; curl -s http://127.0.0.1:8080/metrics | grep endless_reloads_total
//! ```
use std::convert::Infallible;

use hyper::service::service_fn;
use hyper::{body::Incoming, Request, Response};
use metrics_exporter_prometheus::PrometheusBuilder;

#[tokio::main]
async fn main() -> Result<(), endless::Error> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    // The recorder every generation installs afresh; endless sets its
    // counters from what the previous generation handed over.
    let prometheus = PrometheusBuilder::new()
        .install_recorder()
        .expect("a metrics recorder");
    let svc = service_fn(move |req: Request<Incoming>| {
        let prometheus = prometheus.clone();
        async move {
            let body = match req.uri().path() {
                "/metrics" => prometheus.render(),
                _ => format!("hello from pid {}\n", std::process::id()),
            };
            Ok::<_, Infallible>(Response::new(body))
        }
    });
    let pid = std::process::id();
    println!("metrics: pid {pid} serving http://{addr}/ and /metrics  (reload: kill -HUP {pid})");
    endless::Server::new().register(&addr, svc).run().await
}
