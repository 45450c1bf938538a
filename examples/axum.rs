//! An axum `Router` served by endless: one line, through
//! [`endless::TowerToHyperService`].
//!
//! ```text
//! cargo run --release --example axum [ADDR]     # default 127.0.0.1:8080
//! curl http://127.0.0.1:8080/ ; curl http://127.0.0.1:8080/started
//! ```
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
    let app = Router::new()
        .route(
            "/",
            get(|| async { format!("axum says hello from pid {}\n", std::process::id()) }),
        )
        .route(
            "/started",
            get(|| async { format!("{:?}\n", endless::started_at()) }),
        );
    println!("axum: pid {} serving http://{addr}/", std::process::id());
    endless::listen_and_serve(&addr, endless::TowerToHyperService::new(app)).await
}
