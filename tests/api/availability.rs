use std::time::Duration;

use realchat_auth::proto::{LoginRequest, RegisterRequest};
use tonic::Code;
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::expect_code;
use realchat_testkit::app::{TestApp, test_config};
use realchat_testkit::db::{DbProxy, create_database};
use realchat_testkit::http::http_get;
use realchat_testkit::wait::eventually;

fn register(email: &str) -> RegisterRequest {
    RegisterRequest {
        email: email.into(),
        password: "a good password".into(),
    }
}

/// Waits until the server reports `want` for `AuthApi` over grpc.health.v1.
async fn wait_health(app: &TestApp, want: ServingStatus) {
    let mut health = HealthClient::new(app.channel().await);
    eventually(Duration::from_secs(15), &format!("health {want:?}"), || {
        let mut health = health.clone();
        async move {
            let status = health
                .check(HealthCheckRequest {
                    service: "realchat.auth.v1.AuthApi".into(),
                })
                .await
                .ok()?
                .into_inner()
                .status;
            (status == want as i32).then_some(())
        }
    })
    .await;
    // The whole server ("") and AccountApi say the same.
    for service in ["", "realchat.auth.v1.AccountApi"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, want as i32, "{service:?}");
    }
}

#[tokio::test]
async fn database_down_is_unavailable_and_recovers() {
    let database_url = create_database().await;
    let mut proxy = DbProxy::start().await;
    let mut config = test_config(&proxy.route(&database_url));
    config.database.acquire_timeout = Duration::from_secs(1);
    let app = TestApp::start(config, database_url).await;
    let mut client = app.client.clone();
    client.register(register("up@example.com")).await.unwrap();
    wait_health(&app, ServingStatus::Serving).await;

    proxy.take_down().await;
    wait_health(&app, ServingStatus::NotServing).await;
    let status = expect_code(
        client.register(register("down@example.com")).await,
        Code::Unavailable,
    );
    assert!(!status.message().contains("sqlx") && !status.message().contains("5432"));
    expect_code(
        client
            .login(LoginRequest {
                email: "up@example.com".into(),
                password: "a good password".into(),
                ..Default::default()
            })
            .await,
        Code::Unavailable,
    );

    proxy.bring_back().await;
    wait_health(&app, ServingStatus::Serving).await;
    eventually(Duration::from_secs(15), "the database to come back", || {
        let mut client = client.clone();
        async move { client.register(register("back@example.com")).await.ok() }
    })
    .await;
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(users, 2, "nothing written while down, nothing lost after");
    app.stop().await;
}

#[tokio::test]
async fn reflection_lists_the_services() {
    use futures::StreamExt as _;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let app = TestApp::spawn().await;
    let mut reflection = ServerReflectionClient::new(app.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response: {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for service in [
        "realchat.auth.v1.AuthApi",
        "realchat.auth.v1.AccountApi",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == service),
            "{service} missing from {names:?}"
        );
    }

    // Older clients speak v1alpha.
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient as Alpha;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest as AlphaRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse as AlphaResponse;
    let request = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(AlphaRequest::ListServices(String::new())),
    };
    let mut responses = Alpha::new(app.channel().await)
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.next().await.unwrap().unwrap();
    let Some(AlphaResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected v1alpha reflection response: {response:?}");
    };
    assert!(
        list.service
            .iter()
            .any(|s| s.name == "realchat.auth.v1.AuthApi")
    );
    app.stop().await;
}

#[tokio::test]
async fn readyz_needs_the_migrations_applied() {
    let app = TestApp::spawn_with(|c| c.database.migrate_on_start = false).await;
    let addr = app.http_addr.to_string();
    assert_eq!(http_get(&addr, "/healthz").await.0, 200);
    assert_eq!(
        http_get(&addr, "/readyz").await,
        (503, "database=true migrations=false\n".to_owned())
    );
    wait_health(&app, ServingStatus::NotServing).await;
    realchat_auth::store::MIGRATOR.run(&app.pool).await.unwrap();
    wait_health(&app, ServingStatus::Serving).await;
    assert_eq!(
        http_get(&addr, "/readyz").await,
        (200, "database=true migrations=true\n".to_owned())
    );
    app.stop().await;
}
