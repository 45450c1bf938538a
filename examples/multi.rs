//! Three listeners, each with its own service, reloaded together.
//!
//! ```text
//! cargo run --release --example multi [ADDR]   # ADDR, ADDR's port + 1 and + 2
//! ```
//! With the default `127.0.0.1:8080` it serves `/` on 8080 (public), 8081
//! (admin) and 8082 (metrics). With port 0 all three get kernel-chosen ports,
//! which are printed and kept across reloads.
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Log levels from `RUST_LOG`: `target=level` directives such as `debug` or
    // `endless=debug,info`; `info` by default. `Targets` rather than
    // `EnvFilter`: no regex engine to build, so the first build is quicker.
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::prelude::*;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(LevelFilter::INFO));
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(filter)
        .init();
    let first: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".into())
        .parse()?;
    let nth = |n: u16| {
        let port = if first.port() == 0 {
            0
        } else {
            first.port() + n
        };
        SocketAddr::new(first.ip(), port).to_string()
    };
    // With port 0 the three names are equal; endless then matches them to
    // the inherited sockets in registration order.
    let (public, admin, metrics) = (nth(0), nth(1), nth(2));

    let hits = Arc::new(AtomicU64::new(0));
    let public_svc = {
        let hits = hits.clone();
        service_fn(move |_: Request<Incoming>| {
            let n = hits.fetch_add(1, Ordering::Relaxed) + 1;
            async move {
                Ok::<_, Infallible>(Response::new(format!(
                    "public: request {n} of pid {}\n",
                    std::process::id()
                )))
            }
        })
    };
    let admin_svc = service_fn(|_: Request<Incoming>| async {
        Ok::<_, Infallible>(Response::new(format!(
            "admin: pid {}\n",
            std::process::id()
        )))
    });
    let metrics_svc = service_fn(move |_: Request<Incoming>| {
        let n = hits.load(Ordering::Relaxed);
        async move { Ok::<_, Infallible>(Response::new(format!("requests_total {n}\n"))) }
    });

    let server = endless::Server::new()
        .register(&public, public_svc)
        .register(&admin, admin_svc)
        .register(&metrics, metrics_svc);
    let handle = server.handle();
    tokio::spawn(async move {
        if let Ok(addrs) = handle.listening().await {
            let list: Vec<String> = addrs.iter().map(|a| format!("http://{a}/")).collect();
            println!(
                "multi: pid {} serving {}",
                std::process::id(),
                list.join(" ")
            );
        }
    });
    server.run().await?;
    Ok(())
}
