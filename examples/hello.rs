//! The smallest endless server.
//!
//! ```text
//! cargo run --release --example hello [ADDR...]  # default 127.0.0.1:8080
//! curl http://127.0.0.1:8080/                    # hello from pid N
//! kill -USR1 N                                   # reload: a new pid answers
//! kill -TERM <new pid>                           # graceful stop
//! ```
//!
//! On Windows it serves the same, without reloads; Ctrl-C stops it
//! gracefully.
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
    // Every address given (such as those of a systemd socket unit, TCP and
    // `unix:/path`), or the default.
    let mut addrs: Vec<String> = std::env::args().skip(1).collect();
    if addrs.is_empty() {
        addrs.push("127.0.0.1:8080".into());
    }
    let pid = std::process::id();
    let urls: Vec<String> = addrs
        .iter()
        .map(|a| match a.starts_with("unix:") {
            true => a.clone(),
            false => format!("http://{a}/"),
        })
        .collect();
    let how = match cfg!(unix) {
        true => format!("reload: kill -USR1 {pid}, stop: kill -TERM {pid}"),
        false => "no reloads on Windows; stop: Ctrl-C".into(),
    };
    println!("hello: pid {pid} serving {}  ({how})", urls.join(" "));
    let mut server = endless::Server::new();
    for addr in &addrs {
        server = server.register(addr, service_fn(hello));
    }
    // Under systemd with `RuntimeDirectory=` (see examples/systemd/), a
    // control socket there: `endlessctl reload` waits for the outcome.
    #[cfg(unix)]
    if let Ok(dir) = std::env::var("RUNTIME_DIRECTORY") {
        let dir = dir.split(':').next().unwrap_or(&dir).to_owned();
        server = server.control_socket(
            std::path::Path::new(&dir).join("control.sock"),
            endless::UnixPermissions::new(),
        );
    }
    server.run().await
}
