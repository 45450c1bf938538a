//! A UDP echo server next to an HTTP one, both carried across reloads.
//!
//! ```text
//! cargo run --example udp_echo [HTTP_ADDR] [UDP_ADDR]   # 127.0.0.1:8080 127.0.0.1:5353
//! echo hi | nc -u -w1 127.0.0.1 5353    # "PID: hi"
//! kill -HUP <pid>                        # same ports, no datagram lost
//! ```
//! The UDP socket is handed to every new generation with the HTTP
//! listener; the draining one stops reading it the moment its drain starts.
use std::convert::Infallible;

use hyper::service::service_fn;

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
    let http = args.next().unwrap_or_else(|| "127.0.0.1:8080".into());
    let udp_addr = args.next().unwrap_or_else(|| "127.0.0.1:5353".into());
    let pid = std::process::id();

    // Before `run`: adopted from the previous generation, or bound now.
    let udp = endless::sockets::udp("echo", &udp_addr)?;
    udp.set_nonblocking(true)?;
    let udp = tokio::net::UdpSocket::from_std(udp)?;
    println!("udp_echo: pid {pid} echoing on udp {}", udp.local_addr()?);
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        loop {
            tokio::select! {
                // The next generation reads the socket already: stop.
                _ = endless::sockets::draining() => break,
                r = udp.recv_from(&mut buf) => if let Ok((n, peer)) = r {
                    let mut reply = format!("{pid}: ").into_bytes();
                    reply.extend_from_slice(&buf[..n]);
                    let _ = udp.send_to(&reply, peer).await;
                },
            }
        }
    });

    endless::Server::new()
        .register(
            &http,
            service_fn(move |_req| async move {
                Ok::<_, Infallible>(hyper::Response::new(format!("HTTP from pid {pid}\n")))
            }),
        )
        .run()
        .await?;
    Ok(())
}
