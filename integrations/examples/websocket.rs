//! A WebSocket echo server whose connections end cleanly at a reload: when
//! this generation starts draining, each connection sends a close frame
//! (1012, "service restart"), finishes the closing handshake and returns, so
//! its client reconnects to the new generation long before the stop timeout
//! would cut it. [`endless::Handle::draining`] spreads these notices over
//! 2 s (`Server::drain_notice_spread`), so the clients do not all reconnect
//! in the same millisecond.
//!
//! ```text
//! cargo run --release -p endless-integrations --example websocket [ADDR]   # default 127.0.0.1:8080
//! websocket: pid 4242 serving ws://127.0.0.1:8080/  (reload: kill -HUP 4242, stop: kill -TERM 4242)
//!
//! websocat ws://127.0.0.1:8080/                    # in another terminal
//! hello
//! pid=4242: hello
//!                                                  # kill -HUP 4242; within 2 s:
//! websocat: Connection closed: 1012 (service restart)
//! websocat ws://127.0.0.1:8080/                    # reconnect
//! hello
//! pid=4243: hello                                  # the new generation answers
//! ```
use std::convert::Infallible;

use futures_util::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION,
    UPGRADE,
};
use hyper::service::service_fn;
use hyper::upgrade::Upgraded;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::time::{timeout, Duration};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, info};

/// How long a drained connection waits for its client's close frame before
/// it drops the socket anyway (well within the stop timeout).
const CLOSE_WAIT: Duration = Duration::from_secs(2);

type Ws = WebSocketStream<TokioIo<Upgraded>>;

/// Answers a WebSocket handshake with 101 and echoes on the upgraded
/// connection in a task of its own; anything else gets 426.
async fn upgrade(
    mut req: Request<Incoming>,
    handle: endless::Handle,
) -> Result<Response<String>, Infallible> {
    let pid = std::process::id();
    let headers = req.headers();
    let has = |name, token: &str| {
        headers.get_all(name).iter().any(|v: &HeaderValue| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    let key = headers.get(SEC_WEBSOCKET_KEY).map(|k| k.as_bytes());
    let (Some(key), true, true, true) = (
        key,
        has(UPGRADE, "websocket"),
        has(CONNECTION, "upgrade"),
        has(SEC_WEBSOCKET_VERSION, "13"),
    ) else {
        let mut res = Response::new(format!(
            "pid={pid}: a WebSocket echo server; connect with a WebSocket client\n"
        ));
        *res.status_mut() = StatusCode::UPGRADE_REQUIRED;
        res.headers_mut()
            .insert(UPGRADE, HeaderValue::from_static("websocket"));
        return Ok(res);
    };
    let accept = derive_accept_key(key);
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        // The server still tracks the upgraded socket: if this task ever
        // outlived the stop timeout, the drain would cut it there.
        match on_upgrade.await {
            Ok(io) => {
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Server, None).await;
                echo(ws, handle).await;
            }
            Err(e) => debug!(error = %e, "upgrade failed"),
        }
    });
    let mut res = Response::new(String::new());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    // Kept as is while draining: `Connection: close` would break the upgrade.
    h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(
        SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
    );
    Ok(res)
}

/// Echoes every text message as `pid=P: <text>` (binary ones as they came)
/// until the client closes, or this generation drains.
async fn echo(mut ws: Ws, handle: endless::Handle) {
    let pid = std::process::id();
    // One future for the whole connection, not one per turn of the loop: each
    // call to `draining()` draws its own moment within the notice spread, so
    // a fresh call per message would keep postponing (and skewing) it.
    let draining = handle.draining();
    tokio::pin!(draining);
    loop {
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) => {
                    if ws.send(Message::text(format!("pid={pid}: {text}"))).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Binary(data))) => {
                    if ws.send(Message::Binary(data)).await.is_err() {
                        return;
                    }
                }
                // Pings are answered, and a client's close frame replied to,
                // by the next poll of the stream; it then ends.
                Some(Ok(_)) => {}
                None => return,
                Some(Err(e)) => {
                    debug!(error = %e, "websocket ended");
                    return;
                }
            },
            _ = &mut draining => break,
        }
    }
    let frame = CloseFrame {
        code: CloseCode::Restart,
        reason: "service restart".into(),
    };
    if let Err(e) = ws.close(Some(frame)).await {
        debug!(error = %e, "close frame not sent");
        return;
    }
    // Finish the closing handshake: read (and drop) what the client sent
    // before it saw our close, until its own close frame ends the stream.
    let finished = timeout(CLOSE_WAIT, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    debug!(
        pid,
        clean = finished.is_ok(),
        "websocket closed for the restart"
    );
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
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let pid = std::process::id();
    let server = endless::Server::new();
    let handle = server.handle();
    let h = handle.clone();
    let server = server.register(&addr, service_fn(move |req| upgrade(req, h.clone())));
    // Print the address once bound (with port 0 the kernel picks it).
    let h = handle.clone();
    tokio::spawn(async move {
        if let Ok(addrs) = h.listening().await {
            println!(
                "websocket: pid {pid} serving ws://{}/  (reload: kill -HUP {pid}, stop: kill -TERM {pid})",
                addrs[0]
            );
        }
    });
    server.run().await?;
    info!(pid, "websocket: done");
    Ok(())
}
