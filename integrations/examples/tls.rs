//! HTTPS with certificate rotation by reload.
//!
//! ```text
//! cargo run --release -p endless-integrations --example tls [ADDR [CERT.pem KEY.pem]]   # default 127.0.0.1:8080
//! ```
//! Without CERT and KEY it uses a self-signed certificate for `localhost` and
//! `127.0.0.1` in `$TMPDIR/endless-tls-example/`, generating it if missing:
//!
//! ```text
//! curl --cacert /tmp/endless-tls-example/cert.pem https://localhost:8080/
//! rm /tmp/endless-tls-example/*.pem; kill -USR1 <pid>   # a new certificate, no dropped request
//! ```
use std::convert::Infallible;
use std::path::PathBuf;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};

async fn hello(req: Request<Incoming>) -> Result<Response<String>, Infallible> {
    Ok(Response::new(format!(
        "Hello over {:?} from pid {}\n",
        req.version(),
        std::process::id()
    )))
}

/// A self-signed certificate for localhost, made once and kept for the
/// generations that follow (delete the files to get a new one at the next
/// reload).
fn example_certificate() -> std::io::Result<(PathBuf, PathBuf)> {
    let dir = std::env::temp_dir().join("endless-tls-example");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if !cert.exists() || !key.exists() {
        std::fs::create_dir_all(&dir)?;
        let made = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .map_err(std::io::Error::other)?;
        // Key first, certificate last: a generation that sees the certificate
        // sees its key too.
        std::fs::write(&key, made.signing_key.serialize_pem())?;
        std::fs::write(&cert, made.cert.pem())?;
    }
    Ok((cert, key))
}

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
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8080".into());
    let (cert, key) = match (args.next(), args.next()) {
        (Some(cert), Some(key)) => (cert.into(), key.into()),
        _ => example_certificate()?,
    };
    let pid = std::process::id();
    println!(
        "tls: pid {pid} serving https://{addr}/ with {} (reload: kill -USR1 {pid})",
        cert.display()
    );
    endless::listen_and_serve_tls(&addr, &cert, &key, service_fn(hello)).await?;
    Ok(())
}
