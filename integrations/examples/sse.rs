//! A server-sent-events stream that ends cleanly at a reload: an event
//! every second naming the serving PID and, when this generation starts
//! draining, a last `reload` event with a `retry:` hint, then the end of
//! the stream. A browser's `EventSource` (or any SSE client) reconnects
//! after the hint's 1 s, to the new generation, sending the last event's
//! `id` back in `Last-Event-ID` so that the count goes on.
//! [`endless::Handle::draining`] spreads the last events over 2 s
//! (`Server::drain_notice_spread`), so the clients do not all reconnect at
//! once.
//!
//! ```text
//! cargo run --release -p endless-integrations --example sse [ADDR]   # default 127.0.0.1:8080
//! sse: pid 4242 serving http://127.0.0.1:8080/  (reload: kill -HUP 4242, stop: kill -TERM 4242)
//!
//! curl -N http://127.0.0.1:8080/             # in another terminal
//! id: 1
//! data: pid=4242 tick 1
//!
//! id: 2
//! data: pid=4242 tick 2
//!                                            # kill -HUP 4242; within 2 s:
//! event: reload
//! retry: 1000
//! data: pid=4242 is restarting; reconnect
//!                                            # curl returns: the stream ended
//! curl -N http://127.0.0.1:8080/             # reconnect
//! id: 1
//! data: pid=4243 tick 1                      # the new generation
//! ```
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::stream;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Request, Response};
use tokio::time::{interval, Duration, Interval, MissedTickBehavior};
use tracing::{debug, info};

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// One client's stream.
struct Events {
    /// The last event's number (sent as its `id`).
    n: u64,
    ticks: Interval,
    /// One future for the whole stream: each call to `draining()` draws its
    /// own moment within the notice spread, so a fresh call per event would
    /// keep postponing it.
    draining: Pin<Box<dyn Future<Output = ()> + Send>>,
    done: bool,
}

/// Serves the event stream on every path.
async fn events(
    req: Request<Incoming>,
    handle: endless::Handle,
) -> Result<Response<Body>, Infallible> {
    // A reconnecting client says where it was; the count goes on from there.
    let n = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0);
    let mut ticks = interval(Duration::from_secs(1));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let state = Events {
        n,
        ticks,
        draining: Box::pin(async move { handle.draining().await }),
        done: false,
    };
    let body = StreamBody::new(stream::unfold(state, next_event));
    let mut res = Response::new(body.boxed_unsync());
    let h = res.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(res)
}

/// The next event: a tick, or the last one (`reload`) once this generation
/// drains; after that the stream ends, and with it the response.
async fn next_event(mut s: Events) -> Option<(Result<Frame<Bytes>, Infallible>, Events)> {
    if s.done {
        return None;
    }
    let pid = std::process::id();
    let event = tokio::select! {
        _ = &mut s.draining => {
            s.done = true;
            debug!(pid, n = s.n, "event stream ended for the restart");
            format!("event: reload\nretry: 1000\ndata: pid={pid} is restarting; reconnect\n\n")
        }
        _ = s.ticks.tick() => {
            s.n += 1;
            format!("id: {}\ndata: pid={pid} tick {}\n\n", s.n, s.n)
        }
    };
    Some((Ok(Frame::data(Bytes::from(event))), s))
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
    let server = server.register(&addr, service_fn(move |req| events(req, h.clone())));
    // Print the address once bound (with port 0 the kernel picks it).
    let h = handle.clone();
    tokio::spawn(async move {
        if let Ok(addrs) = h.listening().await {
            println!(
                "sse: pid {pid} serving http://{}/  (reload: kill -HUP {pid}, stop: kill -TERM {pid})",
                addrs[0]
            );
        }
    });
    server.run().await?;
    info!(pid, "sse: done");
    Ok(())
}
