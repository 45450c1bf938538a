//! The smallest endless server.
//!
//! ```text
//! cargo run --release --example hello [ADDR]     # default 127.0.0.1:8080
//! curl http://127.0.0.1:8080/                    # hello from pid N
//! kill -USR1 N                                   # reload: a new pid answers
//! kill -TERM <new pid>                           # graceful stop
//! ```
use std::convert::Infallible;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};

async fn hello(_: Request<Incoming>) -> Result<Response<String>, Infallible> {
    Ok(Response::new(format!(
        "Hello from pid {} (started by reload: {})\n",
        std::process::id(),
        endless::started_by_reload()
    )))
}

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
    let pid = std::process::id();
    println!("hello: pid {pid} serving http://{addr}/  (reload: kill -USR1 {pid}, stop: kill -TERM {pid})");
    endless::listen_and_serve(&addr, service_fn(hello)).await
}
