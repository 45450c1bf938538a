//! HTTP/3 next to HTTPS, one service for both (feature `http3`).
//!
//! ```text
//! cargo run --example http3 --features http3 [ADDR] [CERT KEY]
//!     # ADDR 127.0.0.1:8443 (TCP for HTTPS, UDP for HTTP/3);
//!     # CERT, KEY: PEM files, by default the test certificate for localhost
//! curl -k https://localhost:8443/                # HTTP/2, with Alt-Svc: h3=":8443"
//! curl -k --http3-only https://localhost:8443/   # if your curl speaks HTTP/3
//! kill -HUP <pid>                                # a reload: HTTP/3 connections carry on
//! ```
//!
//! The service is a plain hyper `service_fn` over `endless::RequestBody`:
//! served as it is over HTTP/3, wrapped in `endless::WithRequestBody` over
//! HTTPS (an axum `Router` needs neither). HTTPS responses carry the
//! `Alt-Svc` header that points browsers at HTTP/3.
use std::convert::Infallible;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper::{Request, Response};

async fn hello(req: Request<endless::RequestBody>) -> Result<Response<Full<Bytes>>, Infallible> {
    let version = req.version();
    let info = endless::ConnInfo::current();
    let peer = info.as_ref().and_then(|i| i.peer_addr());
    let size = match req.into_body().collect().await {
        Ok(body) => body.to_bytes().len(),
        Err(_) => 0,
    };
    Ok(Response::new(Full::new(Bytes::from(format!(
        "{version:?} from {peer:?}, {size} bytes received, pid {} generation {}\n",
        std::process::id(),
        endless::generation(),
    )))))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
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

    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8443".into());
    let testdata = concat!(env!("CARGO_MANIFEST_DIR"), "/src/testdata");
    let cert = args
        .next()
        .unwrap_or_else(|| format!("{testdata}/localhost_cert.pem"));
    let key = args
        .next()
        .unwrap_or_else(|| format!("{testdata}/localhost_key.pem"));

    println!(
        "http3: pid {} serving HTTPS and HTTP/3 on {addr}",
        std::process::id()
    );
    endless::Server::new()
        .register_tls(
            &addr,
            &cert,
            &key,
            endless::WithRequestBody::new(service_fn(hello)),
        )
        .register_http3(&addr, &cert, &key, service_fn(hello))
        .run()
        .await?;
    Ok(())
}
