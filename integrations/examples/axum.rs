//! An axum `Router` served by endless as it is, in one line, as with
//! `axum::serve`. With endless's `axum` feature, axum's
//! `ConnectInfo<SocketAddr>` extractor works too. (Without it, a handler
//! that takes `ConnectInfo` answers 500 `Missing request extension:
//! Extension of type `axum::extract::connect_info::ConnectInfo<…>` was not
//! found`: turn the feature on.)
//!
//! ```text
//! cargo run --release -p endless-integrations --example axum [ADDR]   # default 127.0.0.1:8080
//! curl http://127.0.0.1:8080/ ; curl http://127.0.0.1:8080/started ; curl http://127.0.0.1:8080/whoami
//! ```
use std::net::SocketAddr;

use axum::extract::ConnectInfo;
use axum::routing::get;
use axum::Router;

#[tokio::main]
async fn main() -> Result<(), endless::Error> {
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
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let app =
        Router::new()
            .route(
                "/",
                get(|| async { format!("axum says hello from pid {}\n", std::process::id()) }),
            )
            .route(
                "/started",
                get(|| async { format!("{:?}\n", endless::started_at()) }),
            )
            .route(
                "/whoami",
                get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move {
                    format!("you are {peer}\n")
                }),
            );
    println!("axum: pid {} serving http://{addr}/", std::process::id());
    endless::listen_and_serve(&addr, app).await
}
