//! An axum `Router` served by endless: one line, through
//! [`endless::TowerToHyperService`]. With endless's `axum` feature, axum's
//! `ConnectInfo<SocketAddr>` extractor works as with `axum::serve`.
//!
//! ```text
//! cargo run --release --example axum [ADDR]     # default 127.0.0.1:8080
//! curl http://127.0.0.1:8080/ ; curl http://127.0.0.1:8080/started ; curl http://127.0.0.1:8080/whoami
//! ```
use std::net::SocketAddr;

use axum::extract::ConnectInfo;
use axum::routing::get;
use axum::Router;

#[tokio::main]
async fn main() -> Result<(), endless::Error> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
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
    endless::listen_and_serve(&addr, endless::TowerToHyperService::new(app)).await
}
