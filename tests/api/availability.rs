use std::time::Duration;

use realchat_auth::proto::{LoginRequest, RegisterRequest};
use tonic::Code;

use crate::expect_code;
use crate::helpers::{DbProxy, TestApp, create_database, eventually, test_config};

fn register(email: &str) -> RegisterRequest {
    RegisterRequest {
        email: email.into(),
        password: "a good password".into(),
    }
}

#[tokio::test]
async fn database_down_is_unavailable_and_recovers() {
    let database_url = create_database().await;
    let mut proxy = DbProxy::start().await;
    let mut config = test_config(&proxy.route(&database_url));
    config.db_acquire_timeout_secs = 1;
    let app = TestApp::start(config, database_url).await;
    let mut client = app.client.clone();
    client.register(register("up@example.com")).await.unwrap();

    proxy.take_down().await;
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
            })
            .await,
        Code::Unavailable,
    );

    proxy.bring_back().await;
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
