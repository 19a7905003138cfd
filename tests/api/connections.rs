//! The front door under connection floods: idle connections over the limit,
//! connections that never start HTTP/2, a descriptor limit below the flood,
//! and the HTTP port's header bounds.

use std::time::Duration;

use realchat_auth::proto::RegisterRequest;
use realchat_auth::proto::auth_api_client::AuthApiClient;
use realchat_testkit::app::TestApp;
use realchat_testkit::http::http_get;
use realchat_testkit::process::{Process, command};
use realchat_testkit::wait::eventually;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tonic::transport::Endpoint;

/// The HTTP/2 client preface and an empty SETTINGS frame: what a client
/// sends first (RFC 9113 §3.4).
const PREFACE_AND_SETTINGS: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// `count` TCP connections to `addr` that never send a byte.
async fn silent_connections(addr: std::net::SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut connections = Vec::with_capacity(count);
    for _ in 0..count {
        connections.push(TcpStream::connect(addr).await.unwrap());
    }
    connections
}

/// Registers `email` through a new connection of its own, waiting as long
/// as a patient client would.
async fn register_on_a_new_connection(url: String, email: &str) {
    let channel = Endpoint::from_shared(url)
        .unwrap()
        .timeout(Duration::from_secs(60))
        .connect_timeout(Duration::from_secs(60))
        .connect()
        .await
        .unwrap();
    AuthApiClient::new(channel)
        .register(RegisterRequest {
            email: email.into(),
            password: "a fine passphrase".into(),
        })
        .await
        .unwrap();
}

/// How many of `connections` the server has closed: it wrote what it had
/// (SETTINGS, maybe GOAWAY) and then ended the stream or reset it. Reads
/// only what has arrived; the closes it counts happened before the caller
/// was served, so they have arrived.
async fn closed_by_the_server<'a>(connections: impl Iterator<Item = &'a mut TcpStream>) -> usize {
    let mut closed = 0;
    for connection in connections {
        let mut buf = [0_u8; 1024];
        loop {
            match connection.try_read(&mut buf) {
                Ok(0) => {
                    closed += 1;
                    break;
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    closed += 1;
                    break;
                }
            }
        }
    }
    closed
}

#[tokio::test]
async fn idle_connections_over_the_limit_do_not_keep_a_new_client_out() {
    let app = TestApp::spawn_with(|c| c.listen.grpc_max_connections = 10).await;
    // Ten that finished the HTTP/2 handshake and idle, then fifty that never
    // speak: five times the limit, all open while the new client comes.
    let mut idle = Vec::new();
    for _ in 0..10 {
        let mut connection = TcpStream::connect(app.addr).await.unwrap();
        connection.write_all(PREFACE_AND_SETTINGS).await.unwrap();
        idle.push(connection);
    }
    let mut silent = silent_connections(app.addr, 50).await;
    register_on_a_new_connection(format!("http://{}", app.addr), "newcomer@example.com").await;
    // To make room the server closed idle connections (the ten that
    // finished the handshake among them): no connection is unbounded.
    let closed = closed_by_the_server(idle.iter_mut().chain(silent.iter_mut())).await;
    assert!(closed >= 10, "only {closed} idle connections were closed");
    app.stop().await;
}

#[tokio::test]
async fn a_connection_that_never_starts_http2_is_closed_after_the_handshake_timeout() {
    let app = TestApp::spawn_with(|c| {
        c.listen.grpc_handshake_timeout = Duration::from_secs(1);
    })
    .await;
    let mut silent = TcpStream::connect(app.addr).await.unwrap();
    // Half a preface is not a handshake either.
    let mut slow = TcpStream::connect(app.addr).await.unwrap();
    slow.write_all(&PREFACE_AND_SETTINGS[..10]).await.unwrap();
    // Nor is a preface and the header of a SETTINGS frame whose 6-byte
    // payload never comes.
    let mut unfinished = TcpStream::connect(app.addr).await.unwrap();
    unfinished
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x06\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    for connection in [&mut silent, &mut slow, &mut unfinished] {
        // The server sends its SETTINGS, then closes the connection: the
        // read ends (end of stream or a reset) rather than hanging.
        let mut received = Vec::new();
        let _ = tokio::time::timeout(
            Duration::from_secs(30),
            connection.read_to_end(&mut received),
        )
        .await
        .expect("the server closed the connection");
    }
    app.stop().await;
}

#[tokio::test]
async fn an_idle_http2_connection_gets_a_goaway_and_a_busy_one_does_not() {
    let app = TestApp::spawn_with(|c| {
        c.listen.grpc_idle_timeout = Duration::from_secs(1);
        c.listen.grpc_max_concurrent_streams = 7;
    })
    .await;
    let stream = TcpStream::connect(app.addr).await.unwrap();
    let (mut client, connection) = h2::client::handshake(stream).await.unwrap();
    let connection = tokio::spawn(connection);
    // One request, so the server's SETTINGS have been read by its answer.
    let request = http::Request::post(format!("http://{}/grpc.health.v1.Health/Check", app.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut body) = client.send_request(request, false).unwrap();
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    // SETTINGS_MAX_CONCURRENT_STREAMS as configured.
    assert_eq!(client.current_max_send_streams(), 7);
    // Then idle: the server ends the connection (GOAWAY, then close), which
    // ends the client's connection task.
    let ended = tokio::time::timeout(Duration::from_secs(30), connection)
        .await
        .expect("the idle connection was closed");
    assert!(ended.is_ok(), "{ended:?}");
    app.stop().await;
}

/// An HTTP/2 connection to `addr` and a request to `path` whose headers
/// are sent and whose body never ends; returns the answer's future.
async fn stalled_request(
    addr: std::net::SocketAddr,
    path: &str,
) -> (
    h2::client::ResponseFuture,
    h2::SendStream<bytes::Bytes>,
    h2::client::SendRequest<bytes::Bytes>,
) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(stream).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, body) = client.send_request(request, false).unwrap();
    (response, body, client)
}

/// The gRPC status of a trailers-only answer.
fn grpc_status(response: &http::Response<h2::RecvStream>) -> Option<&str> {
    response.headers().get("grpc-status")?.to_str().ok()
}

#[tokio::test]
async fn a_request_whose_body_never_ends_is_answered_within_the_request_timeout() {
    let app = TestApp::spawn_with(|c| c.listen.request_timeout = Duration::from_secs(1)).await;
    let (response, _body, _client) =
        stalled_request(app.addr, "/realchat.auth.v1.AuthApi/Login").await;
    let response = tokio::time::timeout(Duration::from_secs(30), response)
        .await
        .expect("an answer, not a request held open forever")
        .unwrap();
    // UNAVAILABLE (14), as a handler past the timeout.
    assert_eq!(grpc_status(&response), Some("14"));
    app.stop().await;
}

#[tokio::test]
async fn requests_over_the_in_flight_limit_are_refused_with_retry_info() {
    let app = TestApp::spawn_with(|c| c.listen.grpc_max_requests_in_flight = 1).await;
    // One request that holds the only place ...
    let (_response, _body, _client) =
        stalled_request(app.addr, "/realchat.auth.v1.AuthApi/Login").await;
    // ... (once the server has it) ...
    let client = app.client.clone();
    let refused = eventually(Duration::from_secs(30), "the limit to refuse", || {
        let mut client = client.clone();
        async move {
            let answer = client
                .register(RegisterRequest {
                    email: "late@example.com".into(),
                    password: "a fine passphrase".into(),
                })
                .await;
            answer
                .err()
                .filter(|s| s.code() == tonic::Code::ResourceExhausted)
        }
    })
    .await;
    // ... so the next is RESOURCE_EXHAUSTED with a delay to wait.
    use tonic_types::StatusExt as _;
    let retry = refused
        .get_error_details()
        .retry_info()
        .and_then(|r| r.retry_delay);
    assert_eq!(retry, Some(Duration::from_secs(1)));
    app.stop().await;
}

#[tokio::test]
async fn a_watch_stream_does_not_keep_its_connection_from_making_room() {
    let app = TestApp::spawn_with(|c| c.listen.grpc_max_connections = 2).await;
    // The app's own client holds one place; a health Watch on a second
    // connection holds the other, streaming for as long as it is open.
    let channel = Endpoint::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let mut watch = health
        .watch(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    watch.message().await.unwrap();
    // A response stream is not a request in flight: the Watch's
    // connection is closed to make room, and the newcomer is served.
    register_on_a_new_connection(format!("http://{}", app.addr), "watcher@example.com").await;
    app.stop().await;
}

#[tokio::test]
async fn the_http_port_closes_silent_connections_to_make_room_for_a_probe() {
    let app = TestApp::spawn_with(|c| {
        c.listen.http_max_connections = 4;
        // Longer than the test: only the limit's eviction can free a place.
        c.listen.http_header_timeout = Duration::from_secs(300);
    })
    .await;
    let _flood = silent_connections(app.http_addr, 40).await;
    let answered =
        tokio::time::timeout(Duration::from_secs(60), http_get(app.http_addr, "/healthz"))
            .await
            .expect("the probe was answered while the flood held");
    assert_eq!(answered.0, 200);
    app.stop().await;
}

#[tokio::test]
async fn the_http_port_closes_slow_headers_and_refuses_large_ones() {
    let app = TestApp::spawn_with(|c| {
        c.listen.http_header_timeout = Duration::from_secs(1);
    })
    .await;
    // Headers that never finish: closed after the header timeout.
    let mut slow = TcpStream::connect(app.http_addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: auth\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    // The check is that the read ends (the server closed the connection);
    // whether it wrote a 408 first is hyper's choice.
    let _ = tokio::time::timeout(Duration::from_secs(30), slow.read_to_end(&mut answer))
        .await
        .expect("the server closed the connection");
    // A head over the 16 KiB default: 431, and nothing held.
    let mut large = TcpStream::connect(app.http_addr).await.unwrap();
    let padding = "x".repeat(20 * 1024);
    let request = format!("GET /healthz HTTP/1.1\r\nHost: auth\r\nX-Padding: {padding}\r\n\r\n");
    // The server may answer and close before it has read all of it.
    let _ = large.write_all(request.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), large.read_to_end(&mut answer))
        .await
        .expect("the server answered");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    // The port still serves.
    assert_eq!(http_get(app.http_addr, "/healthz").await.0, 200);
    app.stop().await;
}

/// The address in a JSON `… listening` log line of `server`.
async fn listening(server: &Process, message: &str) -> std::net::SocketAddr {
    let line = server.wait_log(message, Duration::from_secs(60)).await;
    let json: serde_json::Value = serde_json::from_str(&line).unwrap();
    json["fields"]["addr"].as_str().unwrap().parse().unwrap()
}

/// The server binary under an open-file limit of 256, flooded with 400
/// connections that never speak: it lowers its connection limit to what the
/// descriptors allow (and says so), keeps accepting, and a new client is
/// served while the flood holds.
#[tokio::test]
async fn a_flood_above_the_descriptor_limit_does_not_take_the_server_down() {
    let database_url = realchat_testkit::db::create_database().await;
    let mut prlimit = command("prlimit");
    prlimit
        .arg("--nofile=256:256")
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_realchat-auth"))
        .env("DATABASE_URL", &database_url)
        .env("AUTH_GRPC_ADDR", "127.0.0.1:0")
        .env("AUTH_HTTP_ADDR", "127.0.0.1:0")
        .env("AUTH_HTTP_MAX_CONNECTIONS", "16")
        .env("AUTH_DB_MAX_CONNECTIONS", "4")
        .env("AUTH_BCRYPT_COST", "4")
        .env("AUTH_LOG_FORMAT", "json");
    let server = Process::spawn(prlimit);
    let lowered = server.wait_log("lowered", Duration::from_secs(60)).await;
    assert!(lowered.contains("AUTH_GRPC_MAX_CONNECTIONS"), "{lowered}");
    let addr = listening(&server, "gRPC server listening").await;
    let http_addr = listening(&server, "HTTP listening").await;
    let flood = silent_connections(addr, 400).await;
    register_on_a_new_connection(format!("http://{addr}"), "survivor@example.com").await;
    // And its HTTP port still answers.
    let healthy = eventually(Duration::from_secs(30), "the HTTP port answers", || async {
        realchat_testkit::http::http_status(http_addr, "/healthz").await
    })
    .await;
    assert_eq!(healthy, 200);
    drop(flood);
    server.kill().await;
}
