use realchat_auth::proto::LoginRequest;
use tonic::Code;

use crate::expect_code;
use realchat_testkit::app::{TestApp, test_config};
use realchat_testkit::db::create_database;

fn request(email: &str, password: &str) -> LoginRequest {
    LoginRequest {
        email: email.into(),
        password: password.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn unknown_email_and_wrong_password_are_indistinguishable() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    app.register("carol@example.com", "carol's password").await;

    let unknown = expect_code(
        client
            .login(request("nobody@example.com", "carol's password"))
            .await,
        Code::Unauthenticated,
    );
    let wrong = expect_code(
        client
            .login(request("carol@example.com", "not her password"))
            .await,
        Code::Unauthenticated,
    );
    let unparseable = expect_code(
        client
            .login(request("not an email", "whatever it is"))
            .await,
        Code::Unauthenticated,
    );
    assert_eq!(unknown.message(), wrong.message());
    assert_eq!(unparseable.message(), wrong.message());
    assert_eq!(wrong.message(), "invalid email or password");
    assert!(unknown.details().is_empty() && wrong.details().is_empty());
    app.stop().await;
}

#[tokio::test]
async fn login_refuses_control_characters_and_never_starts_a_session_on_failure() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    app.register("dave@example.com", "dave's password").await;
    expect_code(
        client
            .login(request("dave@example.com", "dave's\0password"))
            .await,
        Code::InvalidArgument,
    );
    expect_code(
        client
            .login(request("dave\0@example.com", "dave's password"))
            .await,
        Code::InvalidArgument,
    );
    expect_code(
        client
            .login(request("dave@example.com", "wrong password"))
            .await,
        Code::Unauthenticated,
    );
    let sessions: i64 = sqlx::query_scalar("SELECT count(*) FROM sessions")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(sessions, 0);
    app.stop().await;
}

#[tokio::test]
async fn a_bug_is_internal_with_no_details() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    app.register("erin@example.com", "erin's password").await;
    // Break the stored hash: bcrypt refuses it, which is our bug, not the
    // caller's. The client learns nothing of it, least of all the hash.
    sqlx::query("UPDATE users SET password_hash = '$2b$04$not-a-real-hash'")
        .execute(&app.pool)
        .await
        .unwrap();
    let status = expect_code(
        client
            .login(request("erin@example.com", "erin's password"))
            .await,
        Code::Internal,
    );
    assert_eq!(status.message(), "internal error");
    assert!(status.details().is_empty());
    app.stop().await;
}

#[tokio::test]
async fn login_rehashes_a_password_stored_at_a_lower_cost() {
    let database_url = create_database().await;
    let config = test_config(&database_url);
    let app = TestApp::start(config.clone(), database_url.clone()).await;
    app.register("gus@example.com", "gus's password").await;
    app.stop().await;

    // The operator raises the cost (tests run at 4).
    let mut config = config;
    config.passwords.bcrypt_cost = 5;
    let app = TestApp::start(config, database_url).await;
    let stored = || async {
        sqlx::query_scalar::<_, String>("SELECT password_hash FROM users")
            .fetch_one(&app.pool)
            .await
            .unwrap()
    };
    assert!(stored().await.starts_with("$2b$04$"));
    app.login("gus@example.com", "gus's password").await;
    assert!(stored().await.starts_with("$2b$05$"), "upgraded on login");
    app.login("gus@example.com", "gus's password").await;
    app.stop().await;
}
