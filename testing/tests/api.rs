//! The public API in-process: settings that `run` rejects before it installs
//! any signal handler, and handles whose server is not running.

use std::convert::Infallible;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};

async fn ok(_: Request<Incoming>) -> Result<Response<String>, Infallible> {
    Ok(Response::new(String::new()))
}

fn server() -> endless::Server {
    endless::Server::new().register("127.0.0.1:0", service_fn(ok))
}

#[tokio::test]
async fn settings_are_checked_by_run() {
    use endless::Signal;
    let cases = [
        (endless::Server::new(), "invalid listeners: no address registered"),
        (server().stop_timeout(Duration::ZERO), "invalid stop_timeout: must be greater than zero"),
        (server().ready_timeout(Duration::ZERO), "invalid ready_timeout: must be greater than zero"),
        (
            server().header_read_timeout(Duration::ZERO),
            "invalid header_read_timeout: must be greater than zero",
        ),
        (
            server().http2_idle_timeout(Duration::ZERO),
            "invalid http2_idle_timeout: must be greater than zero",
        ),
        (
            server().http2_keep_alive_interval(Some(Duration::ZERO)),
            "invalid http2_keep_alive_interval: must be greater than zero (None turns it off)",
        ),
        (
            server().tcp_keepalive(Some(Duration::ZERO)),
            "invalid tcp_keepalive: must be greater than zero (None turns it off)",
        ),
        (server().max_connections(0), "invalid max_connections: must be at least 1"),
        (server().reload_signals([Signal::SIGKILL]), "signal SIGKILL: cannot be caught"),
        (server().stop_signals([Signal::SIGINT, Signal::SIGSTOP]), "signal SIGSTOP: cannot be caught"),
        (server().stop_signals([Signal::SIGCHLD]), "signal SIGCHLD: is needed to watch the next generation"),
        (
            server().reload_signals([Signal::SIGTERM]),
            "signal SIGTERM: is how a new generation reports that it is ready; it cannot be a reload signal",
        ),
        (
            server().reload_signals([Signal::SIGUSR2]).stop_signals([Signal::SIGUSR2]),
            "signal SIGUSR2: is both a reload and a stop signal",
        ),
        (
            server().register(":http", service_fn(ok)),
            "invalid address \":http\": \"http\" is not a port number from 0 to 65535",
        ),
    ];
    for (server, want) in cases {
        let err = server.run().await.unwrap_err();
        assert_eq!(err.to_string(), want);
        // Every error is a std error that can be boxed and shown.
        let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(err);
        assert_eq!(boxed.to_string(), want);
    }
}

/// A reload asked for before `run` has nothing to reload: it fails at once
/// rather than waiting (forever, if the server never runs) and reloading
/// right after start-up.
#[tokio::test]
async fn a_reload_before_run_is_not_running() {
    let server = server();
    let handle = server.handle();
    let reload = tokio::time::timeout(Duration::from_secs(2), handle.reload()).await;
    assert!(
        matches!(reload, Ok(Err(endless::Error::NotRunning))),
        "{reload:?}"
    );
    // The server then runs normally and stops on request.
    let serving = tokio::spawn(server.run());
    handle.listening().await.unwrap();
    handle.stop();
    serving.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_handle_whose_server_is_gone_says_so() {
    let server = server();
    let handle = server.handle();
    drop(server);
    assert!(matches!(
        handle.reload().await,
        Err(endless::Error::NotRunning)
    ));
    assert!(matches!(
        handle.listening().await,
        Err(endless::Error::NotRunning)
    ));
    handle.stop(); // no panic, nothing to do
    assert_eq!(
        endless::Error::NotRunning.to_string(),
        "the server is not running"
    );
}

#[tokio::test]
async fn a_handle_of_a_server_that_failed_to_start_says_so() {
    let server = server().stop_timeout(Duration::ZERO);
    let handle = server.handle();
    assert!(server.run().await.is_err());
    assert!(matches!(
        handle.listening().await,
        Err(endless::Error::NotRunning)
    ));
}

#[test]
fn handles_are_send_sync_and_clone() {
    fn check<T: Send + Sync + Clone + std::fmt::Debug>() {}
    check::<endless::Handle>();
    fn error<T: std::error::Error + Send + Sync + 'static>() {}
    error::<endless::Error>();
}

#[test]
fn started_at_and_started_by_reload() {
    let t = endless::started_at();
    assert!(t <= std::time::SystemTime::now());
    assert_eq!(endless::started_at(), t, "fixed at first use");
    assert!(!endless::started_by_reload());
}

#[test]
fn the_usual_service_shapes_are_accepted() {
    use bytes::Bytes;
    use http_body_util::{Empty, Full};
    // Only has to compile: bodies of several kinds, errors of several kinds.
    let _ = endless::Server::new()
        .register(
            "127.0.0.1:0",
            service_fn(|_| async {
                Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from("x"))))
            }),
        )
        .register(
            "127.0.0.1:0",
            service_fn(|_| async { Ok::<_, std::io::Error>(Response::new(Empty::<Bytes>::new())) }),
        )
        .register(
            "127.0.0.1:0",
            service_fn(|_| async {
                Ok::<_, Infallible>(Response::new(Full::new(&b"static bytes"[..])))
            }),
        );
}

/// `with_graceful_shutdown(fut)`: when the future resolves, the server
/// stops as a stop signal would: the request in flight finishes, then
/// `run` returns.
#[tokio::test]
async fn a_graceful_shutdown_future_stops_the_server_and_lets_requests_finish() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let slow = service_fn(|_req: Request<Incoming>| async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        Ok::<_, Infallible>(Response::new("slow\n".to_string()))
    });
    let server = endless::Server::new()
        .register("127.0.0.1:0", slow)
        .with_graceful_shutdown(async move {
            let _ = rx.await;
        });
    let handle = server.handle();
    let running = tokio::spawn(server.run());
    let addr = handle.listening().await.unwrap()[0].to_string();
    let request = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        reply
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    tx.send(()).unwrap();
    let reply = request.await.unwrap();
    assert!(
        reply.starts_with("HTTP/1.1 200") && reply.ends_with("slow\n"),
        "{reply}"
    );
    assert!(
        reply.to_ascii_lowercase().contains("connection: close"),
        "{reply}"
    );
    let ran = tokio::time::timeout(Duration::from_secs(10), running).await;
    assert!(matches!(ran, Ok(Ok(Ok(())))), "{ran:?}");
}
