//! A gRPC server with zero-downtime reloads: tonic's standard health service
//! (`grpc.health.v1.Health`, no protoc needed) served by `endless`.
//!
//! ```text
//! cargo run --release -p endless-grpc-example -- [ADDR...]   # default 127.0.0.1:50051
//! grpc_health_probe -addr=127.0.0.1:50051                    # status: SERVING
//! kill -HUP N                                                # reload: a new pid serves
//! kill -TERM <new pid>                                       # graceful stop
//! ```
//!
//! tonic's `Routes` is a tower service, so endless serves it like any other,
//! (a tower service, which endless serves as it is; here wrapped in
//! [`endless::TowerToHyperService`] to add a header). A draining generation sends
//! its HTTP/2 clients a GOAWAY; gRPC clients reconnect, and the kernel's
//! accept queue, handed over with the socket, gives them the new generation.
//!
//! Every response carries the serving process's PID as the `endless-pid`
//! metadata, so that a client (and the test) can see the generations change.
//! On stdout it prints `READY pid=P reloaded=B addrs=A,B` once it serves and
//! `EXIT pid=P ok` when it has stopped (or `ERROR pid=P message`).
use std::convert::Infallible;
use std::process::ExitCode;

use hyper::header::HeaderValue;
use hyper::service::{service_fn, Service};
use tonic::service::Routes;

#[tokio::main]
async fn main() -> ExitCode {
    // Log levels from `RUST_LOG`: `target=level` directives such as `debug` or
    // `endless=debug,info`; `info` by default. `Targets` rather than
    // `EnvFilter`, whose regex engine would also be built for the root's
    // quick start (`cargo run --example hello` selects every default member
    // of the workspace, and their dependencies' features unify).
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
    let pid = std::process::id();
    // Touch endless before anything slow: a new generation must install its
    // signal handlers early (endless does it when first used).
    let mut server = endless::Server::new();
    let reloaded = endless::started_by_reload();
    let mut addrs: Vec<String> = std::env::args().skip(1).collect();
    if addrs.is_empty() {
        addrs.push("127.0.0.1:50051".into());
    }

    // The health service answers SERVING for the server as a whole ("").
    let (_reporter, health) = tonic_health::server::health_reporter();
    // Wrapped for hyper here because the service below calls it (with
    // `&self`) to add a header; served alone, the router needs no wrapper.
    let grpc = endless::TowerToHyperService::new(Routes::new(health).prepare());
    let pid_value = HeaderValue::from(pid);
    let svc = service_fn(move |req| {
        let call = grpc.call(req);
        let pid_value = pid_value.clone();
        async move {
            let Ok(mut res) = call.await;
            res.headers_mut().insert("endless-pid", pid_value);
            Ok::<_, Infallible>(res)
        }
    });
    for addr in &addrs {
        server = server.register(addr, svc.clone());
    }

    let handle = server.handle();
    tokio::spawn(async move {
        if let Ok(addrs) = handle.listening().await {
            let list: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
            println!(
                "READY pid={pid} reloaded={reloaded} addrs={}",
                list.join(",")
            );
        }
    });
    match server.run().await {
        Ok(()) => {
            println!("EXIT pid={pid} ok");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("ERROR pid={pid} {e}");
            ExitCode::from(2)
        }
    }
}
