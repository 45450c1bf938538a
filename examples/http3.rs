//! HTTP/3 next to HTTPS, one service for both (feature `http3`).
//!
//! ```text
//! cargo run --example http3 --features http3 [ADDR] [CERT KEY]
//!     # ADDR 127.0.0.1:8443 (TCP for HTTPS, UDP for HTTP/3);
//!     # CERT, KEY: PEM files, by default the test certificate for localhost
//! curl -k https://localhost:8443/            # HTTP/2, with Alt-Svc: h3=":8443"
//! curl -k --http3-only https://localhost:8443/   # if your curl speaks HTTP/3
//! ```
//!
//! The service is a plain hyper `service_fn` over `endless::RequestBody`:
//! served as it is over HTTP/3, wrapped in `endless::WithRequestBody`
//! over HTTPS. The UDP socket is carried across reloads with
//! `endless::sockets::udp`. Until the reload lifecycle passes the
//! generations' socket pair across the exec (the `http3` module says how
//! it will be wired), this example cuts its HTTP/3 connections when it
//! hands over (their clients reconnect to the new generation); HTTPS
//! reloads without a failed request, as always.
use std::convert::Infallible;
use std::time::Duration;

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

    // HTTP/3 on UDP: the socket is adopted from the previous generation or
    // bound now; the tag names this generation in every connection ID.
    #[cfg(unix)]
    let udp = endless::sockets::udp("h3", &addr)?;
    #[cfg(not(unix))]
    let udp = std::net::UdpSocket::bind(&addr)?;
    let port = udp.local_addr()?.port();
    let h3 = endless::http3::Http3Listener::builder()
        .tag(endless::generation() as u8)
        .name(addr.clone())
        .serve(
            udp,
            endless::http3::tls_config_from_pem(&cert, &key)?,
            service_fn(hello),
        )?;
    println!(
        "http3: pid {} serving HTTPS and HTTP/3 on {addr}",
        std::process::id()
    );

    // HTTPS on TCP, the same service, advertising HTTP/3.
    let alt_svc = endless::http3::alt_svc(port, Duration::from_secs(86_400));
    let https = endless::WithRequestBody::new(service_fn(move |req| {
        let alt_svc = alt_svc.clone();
        async move {
            let mut resp = hello(req).await?;
            resp.headers_mut().insert(hyper::header::ALT_SVC, alt_svc);
            Ok::<_, Infallible>(resp)
        }
    }));

    #[cfg(unix)]
    {
        let h3 = h3.clone();
        tokio::spawn(async move {
            endless::sockets::draining().await;
            // No socket pair to the next generation yet (see the top):
            // stop reading the shared socket at once.
            h3.cut_off();
        });
    }
    endless::Server::new()
        .register_tls(&addr, &cert, &key, https)
        .run()
        .await?;
    h3.begin_drain();
    let _ = tokio::time::timeout(Duration::from_secs(10), h3.drained()).await;
    h3.cut_off();
    Ok(())
}
