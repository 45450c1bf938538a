//! The Windows build's check program, run under wine by `.ci/wine`: an
//! endless server on `127.0.0.1:0` that asks its own handle for a reload
//! (which must be refused: Windows has none) and serves a slow route, so
//! that a request can be in flight when Ctrl-C comes.
//!
//! It prints one line per event on stdout, which the driver reads:
//! `READY addr=A`, then `RELOAD unsupported: MESSAGE` (or
//! `RELOAD unexpected: …`), `SLEEP ms=N` when a slow request starts, and
//! `EXIT ok` or `ERROR MESSAGE` when `run` returns.
//!
//! Endpoints: `/` (`hello`), `/sleep/MS` (`slept MS` after MS
//! milliseconds).
//!
//! Portable: on Unix the same program reloads (`RELOAD unexpected: Ok`).
use std::convert::Infallible;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};

async fn route(req: Request<Incoming>) -> Result<Response<String>, Infallible> {
    let path = req.uri().path();
    if path == "/" {
        return Ok(Response::new("hello\n".into()));
    }
    if let Some(ms) = path.strip_prefix("/sleep/").and_then(|m| m.parse().ok()) {
        println!("SLEEP ms={ms}");
        tokio::time::sleep(Duration::from_millis(ms)).await;
        return Ok(Response::new(format!("slept {ms}\n")));
    }
    let mut not_found = Response::new(String::from("not found\n"));
    *not_found.status_mut() = StatusCode::NOT_FOUND;
    Ok(not_found)
}

#[tokio::main]
async fn main() {
    // The library's own log on stderr, for the driver to show on failure.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let server = endless::Server::new().register("127.0.0.1:0", service_fn(route));
    let handle = server.handle();
    tokio::spawn(async move {
        let addrs = match handle.listening().await {
            Ok(addrs) => addrs,
            Err(e) => return println!("ERROR listening: {e}"),
        };
        println!("READY addr={}", addrs[0]);
        match handle.reload().await {
            Err(e @ endless::Error::Unsupported { .. }) => println!("RELOAD unsupported: {e}"),
            other => println!("RELOAD unexpected: {other:?}"),
        }
    });
    match server.run().await {
        Ok(()) => println!("EXIT ok"),
        Err(e) => {
            println!("ERROR {e}");
            std::process::exit(1);
        }
    }
}
