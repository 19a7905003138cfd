//! The real `realchat-auth` binary: the migrate subcommand, start-up without
//! migrations, JSON logs free of secrets, and graceful shutdown (in-flight
//! requests finish; past the deadline they are dropped).

use std::time::Duration;

use realchat_auth::proto::account_api_client::AccountApiClient;
use realchat_auth::proto::auth_api_client::AuthApiClient;
use realchat_auth::proto::{
    GetAccountRequest, LoginRequest, LogoutRequest, RefreshRequest, RegisterRequest,
    RegisterResponse,
};

use realchat_testkit::db::create_database;
use realchat_testkit::http::{http_get, metric};
use realchat_testkit::process::{Process, Signal, command, relay_bin};

fn server(database_url: &str, env: &[(&str, &str)]) -> Process {
    let mut command = command(env!("CARGO_BIN_EXE_realchat-auth"));
    command
        .env("DATABASE_URL", database_url)
        .env("AUTH_GRPC_ADDR", "127.0.0.1:0")
        .env("AUTH_HTTP_ADDR", "127.0.0.1:0")
        .env("AUTH_LOG_FORMAT", "json")
        // Everything, every library: no log line of any level may hold a secret.
        .env("RUST_LOG", "debug")
        .envs(env.iter().copied());
    Process::spawn(command)
}

/// The gRPC address from the JSON `gRPC server listening` line.
async fn grpc_url(server: &Process) -> String {
    let line = server
        .wait_log("gRPC server listening", Duration::from_secs(60))
        .await;
    let json: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    format!("http://{}", json["fields"]["addr"].as_str().unwrap())
}

/// Starts a Register on `server`, sends SIGTERM once the server logged the
/// request as started, and returns the call, still in flight.
async fn register_then_sigterm(
    server: &Process,
    client: &AuthApiClient<tonic::transport::Channel>,
    email: &str,
    password: &str,
) -> tokio::task::JoinHandle<Result<tonic::Response<RegisterResponse>, tonic::Status>> {
    let before = server.logs().len();
    let request = RegisterRequest {
        email: email.into(),
        password: password.into(),
    };
    let mut client = client.clone();
    let in_flight = tokio::spawn(async move { client.register(request).await });
    server
        .wait_log_after(before, "request started", Duration::from_secs(10))
        .await;
    server.signal(Signal::SIGTERM);
    in_flight
}

#[tokio::test]
async fn migrate_then_serve_with_json_logs_free_of_secrets_and_stop_gracefully() {
    let database_url = create_database().await;
    let migrate = Process::spawn({
        let mut c = command(env!("CARGO_BIN_EXE_realchat-auth"));
        c.arg("migrate").env("DATABASE_URL", &database_url);
        c
    });
    assert_eq!(
        migrate.wait().await,
        Some(0),
        "realchat-auth migrate exits 0"
    );

    // Migrations already applied: start without them.
    // bcrypt cost 13 (about half a second a hash): slow enough that a request
    // is surely in flight when SIGTERM comes.
    let server = server(
        &database_url,
        &[
            ("AUTH_MIGRATE_ON_START", "false"),
            ("AUTH_BCRYPT_COST", "13"),
        ],
    );
    let mut client = AuthApiClient::connect(grpc_url(&server).await)
        .await
        .unwrap();
    let (email, password) = ("logs@example.com", "a very secret password");
    client
        .register(RegisterRequest {
            email: email.into(),
            password: password.into(),
        })
        .await
        .unwrap();
    let login = client
        .login(LoginRequest {
            email: email.into(),
            password: password.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let refreshed = client
        .refresh(RefreshRequest {
            refresh_token: login.refresh_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    // A bearer access token is logged neither when it works nor, after the
    // Logout below, when it is refused.
    let mut account = AccountApiClient::connect(grpc_url(&server).await)
        .await
        .unwrap();
    let get_account =
        || realchat_testkit::app::bearer(GetAccountRequest {}, &refreshed.access_token);
    account.get_account(get_account()).await.unwrap();
    client
        .logout(LogoutRequest {
            refresh_token: refreshed.refresh_token.clone(),
            scope: 0,
        })
        .await
        .unwrap();
    assert_eq!(
        account.get_account(get_account()).await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
    // Refused tokens are logged with their reason, never themselves.
    client
        .refresh(RefreshRequest {
            refresh_token: refreshed.refresh_token.clone(),
        })
        .await
        .unwrap_err();
    // Refused before any handler runs, and still counted: a body that is
    // not protobuf, and a message over the size limit.
    let channel = tonic::transport::Channel::from_shared(grpc_url(&server).await)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let malformed = crate::wire::send_raw_on(channel, "Register", vec![0x0a, 0x02, 0xff, 0xfe]);
    assert_eq!(
        malformed.await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
    let oversized = client
        .register(RegisterRequest {
            email: "e".repeat(70_000),
            password: password.into(),
        })
        .await;
    assert_eq!(oversized.unwrap_err().code(), tonic::Code::OutOfRange);
    // The HTTP port: alive, ready, and counting what just happened.
    let http = {
        let line = server
            .wait_log("HTTP listening", Duration::from_secs(10))
            .await;
        let json: serde_json::Value = serde_json::from_str(&line).unwrap();
        json["fields"]["addr"].as_str().unwrap().to_owned()
    };
    assert_eq!(http_get(&http, "/healthz").await.0, 200);
    assert_eq!(
        http_get(&http, "/readyz").await,
        (200, "database=true migrations=true\n".to_owned())
    );
    let (status, exposition) = http_get(&http, "/metrics").await;
    assert_eq!(status, 200);
    for (series, value) in [
        (r#"auth_requests_total{method="Register",code="Ok"}"#, 1.0),
        (r#"auth_requests_total{method="Login",code="Ok"}"#, 1.0),
        (r#"auth_requests_total{method="Refresh",code="Ok"}"#, 1.0),
        (
            r#"auth_requests_total{method="Refresh",code="Unauthenticated"}"#,
            1.0,
        ),
        (r#"auth_requests_total{method="Logout",code="Ok"}"#, 1.0),
        (r#"auth_requests_total{method="GetAccount",code="Ok"}"#, 1.0),
        (
            r#"auth_requests_total{method="GetAccount",code="Unauthenticated"}"#,
            1.0,
        ),
        (
            r#"auth_requests_total{method="Register",code="InvalidArgument"}"#,
            1.0,
        ),
        (
            r#"auth_requests_total{method="Register",code="OutOfRange"}"#,
            1.0,
        ),
        ("auth_bcrypt_queue_depth", 0.0),
        ("auth_db_pool_max_connections", 10.0),
    ] {
        assert_eq!(metric(&exposition, series), Some(value), "{series}");
    }
    for histogram in [
        r#"auth_request_duration_seconds_bucket{method="Login",le="+Inf"}"#,
        r#"auth_bcrypt_wait_seconds_bucket{le="+Inf"}"#,
    ] {
        assert!(
            metric(&exposition, histogram).is_some_and(|n| n >= 1.0),
            "{histogram}"
        );
    }
    let pool = sqlx::PgPool::connect(&database_url).await.unwrap();
    let hash: String = sqlx::query_scalar("SELECT password_hash FROM users")
        .fetch_one(&pool)
        .await
        .unwrap();

    // A slow request in flight when SIGTERM arrives still completes.
    let in_flight =
        register_then_sigterm(&server, &client, "late@example.com", &"x".repeat(60)).await;
    in_flight
        .await
        .unwrap()
        .expect("the in-flight request completes");
    // Every line, the shutdown's included.
    let (code, logs) = server.wait_with_logs().await;
    assert_eq!(code, Some(0), "exit 0 after SIGTERM");

    let finished = logs
        .iter()
        .filter(|l| l.contains("request finished"))
        .count();
    assert!(finished >= 6, "a request line per call: {finished}");
    for line in &logs {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for (what, secret) in [
            ("password", password),
            ("access token", login.access_token.as_str()),
            ("rotated access token", refreshed.access_token.as_str()),
            ("refresh token", login.refresh_token.as_str()),
            ("rotated refresh token", refreshed.refresh_token.as_str()),
            ("password hash", hash.as_str()),
        ] {
            assert!(!line.contains(secret), "{what} in a log line: {line}");
        }
        // Nor a token's signature alone (a JWT's third part).
        for token in [
            &login.access_token,
            &login.refresh_token,
            &refreshed.access_token,
            &refreshed.refresh_token,
        ] {
            let signature = token.split('.').nth(2).unwrap();
            assert!(
                !line.contains(signature),
                "a token signature in a log line: {line}"
            );
        }
    }
}

/// The HTTP address from the JSON `HTTP listening` line.
async fn http_addr(server: &Process) -> String {
    let line = server
        .wait_log("HTTP listening", Duration::from_secs(10))
        .await;
    let json: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    json["fields"]["addr"].as_str().unwrap().to_owned()
}

/// The `auth_requests_total` series of an exposition: (labels, value).
fn request_series(exposition: &str) -> Vec<(&str, f64)> {
    exposition
        .lines()
        .filter_map(|line| line.strip_prefix("auth_requests_total{"))
        .map(|rest| {
            let (labels, value) = rest.split_once("} ").unwrap();
            (labels, value.parse().unwrap())
        })
        .collect()
}

#[tokio::test]
async fn made_up_method_names_share_one_series_and_broken_framing_counts_as_invalid_argument() {
    let database_url = create_database().await;
    let server = server(&database_url, &[]);
    let channel = tonic::transport::Channel::from_shared(grpc_url(&server).await)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let http = http_addr(&server).await;
    let made_up = |range: std::ops::Range<usize>| {
        let channel = channel.clone();
        async move {
            for i in range {
                let method = format!("MadeUp{i}");
                let answer = crate::wire::send_raw_on(channel.clone(), &method, vec![]).await;
                assert_eq!(answer.unwrap_err().code(), tonic::Code::Unimplemented);
            }
        }
    };
    made_up(0..10).await;
    // A scrape first, so every gauge exists before the one compared.
    http_get(&http, "/metrics").await;
    let (_, before) = http_get(&http, "/metrics").await;
    made_up(10..400).await;
    let (_, after) = http_get(&http, "/metrics").await;
    let series = request_series(&after);
    assert_eq!(
        series.first(),
        Some(&(r#"method="unknown",code="Unimplemented""#, 400.0)),
        "one series for every made-up name"
    );
    assert_eq!(series.len(), 1, "{} series", series.len());
    // 390 more names, a few bytes more (digits of values), not a series each.
    assert!(
        after.len() < before.len() + 100,
        "the exposition grew from {} to {} bytes",
        before.len(),
        after.len()
    );

    // Broken framing: INVALID_ARGUMENT, counted so, never INTERNAL.
    let broken = crate::wire::broken_framing();
    for (name, body) in &broken {
        let answer = crate::wire::send_framed_on(channel.clone(), "Register", body.clone()).await;
        assert_eq!(
            answer.unwrap_err().code(),
            tonic::Code::InvalidArgument,
            "{name}"
        );
    }
    // Requests the client breaks off (a reset with a reason of its
    // choosing, mid-body) are answered by no one and counted by no one: the
    // reset's reason would otherwise become the counted code (INTERNAL for
    // PROTOCOL_ERROR).
    let addr = grpc_url(&server)
        .await
        .trim_start_matches("http://")
        .to_owned();
    let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (client, connection) = h2::client::handshake(stream).await.unwrap();
    tokio::spawn(connection);
    for reason in [
        h2::Reason::PROTOCOL_ERROR,
        h2::Reason::INTERNAL_ERROR,
        h2::Reason::CANCEL,
        h2::Reason::ENHANCE_YOUR_CALM,
    ] {
        let mut client = client.clone().ready().await.unwrap();
        let request = http::Request::post(format!("http://{addr}/realchat.auth.v1.AuthApi/Login"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let (_, mut body) = client.send_request(request, false).unwrap();
        body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 9, 0x0a]), false)
            .unwrap();
        body.send_reset(reason);
    }
    // Requests after them on the same connection are answered once the
    // resets have been read.
    for _ in 0..3 {
        let answer = crate::wire::send_framed_on(channel.clone(), "Register", vec![]).await;
        assert_eq!(answer.unwrap_err().code(), tonic::Code::InvalidArgument);
    }
    let (_, exposition) = http_get(&http, "/metrics").await;
    assert_eq!(
        metric(
            &exposition,
            r#"auth_requests_total{method="Register",code="InvalidArgument"}"#
        ),
        Some(broken.len() as f64 + 3.0)
    );
    assert!(!exposition.contains(r#"code="Internal""#), "{exposition}");
    assert!(
        !exposition.contains(r#"code="Unavailable""#),
        "{exposition}"
    );
    assert!(
        !exposition.contains(r#"code="ResourceExhausted""#),
        "{exposition}"
    );
    assert_eq!(server.terminate().await, Some(0));
}

#[tokio::test]
async fn the_shutdown_deadline_drops_requests_that_outlast_it() {
    // A bcrypt hash at cost 16 (16 times cost 12) takes seconds on any
    // current machine, so the Register in flight cannot finish within the
    // 1 s deadline: the server exits 0 without it.
    let database_url = create_database().await;
    let server = server(
        &database_url,
        &[
            ("AUTH_BCRYPT_COST", "16"),
            ("AUTH_BCRYPT_THREADS", "1"),
            ("AUTH_SHUTDOWN_TIMEOUT_SECS", "1"),
        ],
    );
    let client = AuthApiClient::connect(grpc_url(&server).await)
        .await
        .unwrap();
    let in_flight =
        register_then_sigterm(&server, &client, "slow@example.com", "a good password").await;
    let (code, logs) = server.wait_with_logs().await;
    assert_eq!(code, Some(0), "exit 0 after the deadline");
    assert!(
        logs.iter().any(|l| l.contains("shutdown deadline passed")),
        "the deadline is logged"
    );
    assert!(
        in_flight.await.unwrap().is_err(),
        "the request outlasting the deadline is dropped, not answered"
    );
    let pool = sqlx::PgPool::connect(&database_url).await.unwrap();
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(users, 0, "nothing half-done was stored");
}

#[tokio::test]
async fn a_bad_setting_stops_each_binary_at_start_naming_its_variable() {
    for (bin, variable, value) in [
        (
            std::path::PathBuf::from(env!("CARGO_BIN_EXE_realchat-auth")),
            "AUTH_BCRYPT_COST",
            "abc",
        ),
        (
            std::path::PathBuf::from(env!("CARGO_BIN_EXE_realchat-auth")),
            "AUTH_BCRYPT_QUEUE",
            "99999999999",
        ),
        (relay_bin(), "RELAY_BATCH_SIZE", "0"),
    ] {
        let mut command = command(&bin);
        command.env(variable, value);
        let (code, logs) = Process::spawn(command).wait_with_logs().await;
        assert_eq!(code, Some(2), "{variable}={value}");
        assert!(
            logs.iter()
                .any(|l| l.contains(variable) && l.contains(value)),
            "{variable}={value}: {logs:?}"
        );
    }
}
