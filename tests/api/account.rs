//! AccountApi over real gRPC: bearer authentication with a live session,
//! GetAccount, ListSessions (AIP-158 paging), RevokeSession, ChangePassword
//! and DeleteAccount, and the events each change writes, read from the
//! `outbox` table (no broker needed).

use std::time::Duration;

use chrono::{DateTime, Utc};
use realchat_auth::proto::account_api_client::AccountApiClient;
use realchat_auth::proto::{
    ChangePasswordRequest, ChangePasswordResponse, DeleteAccountRequest, GetAccountRequest,
    GetAccountResponse, ListSessionsRequest, ListSessionsResponse, LoginRequest, LoginResponse,
    LogoutScope, RefreshRequest, RevokeSessionRequest,
};
use serde_json::Value;
use sqlx::{Connection as _, PgConnection};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_types::StatusExt as _;
use uuid::Uuid;

use crate::tokens::{logout_scoped as logout, refresh};
use crate::{expect_code, violated_fields};
use realchat_testkit::app::{TestApp, bearer};
use realchat_testkit::jwt::parts;
use realchat_testkit::wait::eventually;

const UNAUTHENTICATED: &str = "invalid or missing access token";

/// Logs in with a device name and an explicit `user-agent` (tonic appends
/// its own product to it).
async fn login_as(
    app: &TestApp,
    email: &str,
    password: &str,
    device_name: &str,
    user_agent: &str,
) -> LoginResponse {
    let mut request = Request::new(LoginRequest {
        email: email.into(),
        password: password.into(),
        device_name: device_name.into(),
    });
    request
        .metadata_mut()
        .insert("user-agent", user_agent.parse().unwrap());
    app.client
        .clone()
        .login(request)
        .await
        .expect("login")
        .into_inner()
}

fn account(app: &TestApp) -> AccountApiClient<Channel> {
    app.account.clone()
}

/// The session id (`sid`) of a token.
fn sid(token: &str) -> String {
    parts(token).1["sid"].as_str().unwrap().to_owned()
}

async fn get_account(app: &TestApp, access: &str) -> Result<GetAccountResponse, Status> {
    account(app)
        .get_account(bearer(GetAccountRequest {}, access))
        .await
        .map(tonic::Response::into_inner)
}

async fn list(
    app: &TestApp,
    access: &str,
    page_size: i32,
    page_token: &str,
) -> Result<ListSessionsResponse, Status> {
    account(app)
        .list_sessions(bearer(
            ListSessionsRequest {
                page_size,
                page_token: page_token.into(),
            },
            access,
        ))
        .await
        .map(tonic::Response::into_inner)
}

async fn revoke(app: &TestApp, access: &str, session_id: &str) -> Result<(), Status> {
    account(app)
        .revoke_session(bearer(
            RevokeSessionRequest {
                session_id: session_id.into(),
            },
            access,
        ))
        .await
        .map(|_| ())
}

async fn change_password(
    app: &TestApp,
    access: &str,
    current: &str,
    new: &str,
) -> Result<(), Status> {
    account(app)
        .change_password(bearer(
            ChangePasswordRequest {
                current_password: current.into(),
                new_password: new.into(),
            },
            access,
        ))
        .await
        .map(|_| ())
}

async fn delete_account(app: &TestApp, access: &str, password: &str) -> Result<(), Status> {
    account(app)
        .delete_account(bearer(
            DeleteAccountRequest {
                password: password.into(),
            },
            access,
        ))
        .await
        .map(|_| ())
}

/// Asserts the one UNAUTHENTICATED answer to refused credentials.
#[track_caller]
fn refused<T: std::fmt::Debug>(result: Result<T, Status>) {
    let status = expect_code(result, Code::Unauthenticated);
    assert_eq!(status.message(), UNAUTHENTICATED);
    assert!(status.details().is_empty());
}

/// The user's outbox rows, in `seq` order: (type, payload).
async fn events(app: &TestApp, user_id: &str) -> Vec<(String, Value)> {
    sqlx::query_as("SELECT type, payload FROM outbox WHERE aggregateid = $1 ORDER BY seq")
        .bind(user_id)
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

/// The user's events of `event_type`, in order.
async fn events_of(app: &TestApp, user_id: &str, event_type: &str) -> Vec<Value> {
    (events(app, user_id).await.into_iter())
        .filter(|(t, _)| t == event_type)
        .map(|(_, payload)| payload)
        .collect()
}

/// A `google.protobuf.Timestamp` as a time.
fn time(ts: &prost_types::Timestamp) -> DateTime<Utc> {
    DateTime::from_timestamp(ts.seconds, u32::try_from(ts.nanos).unwrap()).unwrap()
}

/// Asserts an RFC 3339 UTC time within a minute of now.
#[track_caller]
fn recent(value: &Value) {
    let at = DateTime::parse_from_rfc3339(value.as_str().unwrap()).unwrap();
    assert!(value.as_str().unwrap().ends_with('Z'), "{value}");
    assert!((Utc::now() - at.with_timezone(&Utc)).num_seconds().abs() < 60);
}

/// Asserts a `SessionRevoked` payload's fields and returns its reason.
#[track_caller]
fn revoked(payload: &Value, user_id: &str) -> (String, String) {
    let fields: Vec<&String> = payload.as_object().unwrap().keys().collect();
    assert_eq!(
        fields,
        ["event_id", "reason", "revoked_at", "session_id", "user_id"],
        "{payload}"
    );
    assert_eq!(payload["user_id"], user_id);
    Uuid::parse_str(payload["event_id"].as_str().unwrap()).unwrap();
    recent(&payload["revoked_at"]);
    (
        payload["session_id"].as_str().unwrap().to_owned(),
        payload["reason"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn get_account_shows_the_signed_in_user_and_needs_a_bearer_access_token() {
    let app = TestApp::spawn().await;
    let user_id = app.register("Alice@Example.com", "alice's password").await;
    let login = app.login("alice@example.com", "alice's password").await;

    let got = get_account(&app, &login.access_token).await.unwrap();
    assert_eq!(got.user_id, user_id.to_string());
    assert_eq!(got.email, "alice@example.com");
    let stored: DateTime<Utc> = sqlx::query_scalar("SELECT created_at FROM users")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(time(got.created_at.as_ref().unwrap()), stored);

    // No credentials, another scheme, a refresh token: one answer.
    refused(account(&app).get_account(GetAccountRequest {}).await);
    let mut basic = Request::new(GetAccountRequest {});
    basic
        .metadata_mut()
        .insert("authorization", "Basic YWxpY2U6cHc=".parse().unwrap());
    refused(account(&app).get_account(basic).await);
    refused(get_account(&app, &login.refresh_token).await);
    // The scheme is case-insensitive (RFC 9110 §11.1).
    let mut lower = Request::new(GetAccountRequest {});
    lower.metadata_mut().insert(
        "authorization",
        format!("bearer {}", login.access_token).parse().unwrap(),
    );
    account(&app).get_account(lower).await.unwrap();
    app.stop().await;
}

#[tokio::test]
async fn login_records_its_client_and_writes_session_started() {
    let app = TestApp::spawn().await;
    let user_id = app.register("bob@example.com", "bob's password").await;
    let login = login_as(
        &app,
        "bob@example.com",
        "bob's password",
        "  Bob's phone  ",
        "test-phone/1.0",
    )
    .await;
    let sid = sid(&login.access_token);
    let (device, agent, ip): (Option<String>, Option<String>, Option<String>) = sqlx::query_as(
        "SELECT device_name, user_agent, ip_address FROM sessions WHERE id = $1::uuid",
    )
    .bind(&sid)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(device.as_deref(), Some("Bob's phone"));
    assert!(
        agent.as_deref().unwrap().starts_with("test-phone/1.0"),
        "{agent:?}"
    );
    assert_eq!(ip.as_deref(), Some("127.0.0.1"));

    let started = events_of(&app, &user_id.to_string(), "SessionStarted").await;
    assert_eq!(started.len(), 1);
    let payload = &started[0];
    eprintln!("SessionStarted payload: {payload}");
    let fields: Vec<&String> = payload.as_object().unwrap().keys().collect();
    assert_eq!(
        fields,
        [
            "device_name",
            "event_id",
            "session_id",
            "started_at",
            "user_id"
        ]
    );
    assert_eq!(payload["user_id"], user_id.to_string());
    assert_eq!(payload["session_id"], sid);
    assert_eq!(payload["device_name"], "Bob's phone");
    recent(&payload["started_at"]);
    // The outbox row is the event: its id, its aggregate.
    let (id, aggregatetype): (Uuid, String) =
        sqlx::query_as("SELECT id, aggregatetype FROM outbox WHERE type = 'SessionStarted'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(payload["event_id"], id.to_string());
    assert_eq!(aggregatetype, "user");

    // No device name: null in the event, empty in ListSessions.
    let plain = app.login("bob@example.com", "bob's password").await;
    let started = events_of(&app, &user_id.to_string(), "SessionStarted").await;
    assert_eq!(started.len(), 2);
    assert_eq!(started[1]["device_name"], Value::Null);
    assert_eq!(started[1]["session_id"], self::sid(&plain.access_token));

    // A bad device name is refused before anything is counted or started.
    for bad in ["a".repeat(65), "phone\n".into(), "\u{202e}enohp".into()] {
        let status = expect_code(
            app.client
                .clone()
                .login(LoginRequest {
                    email: "bob@example.com".into(),
                    password: "bob's password".into(),
                    device_name: bad,
                })
                .await,
            Code::InvalidArgument,
        );
        assert_eq!(violated_fields(&status), ["device_name"]);
    }
    let sessions: i64 = sqlx::query_scalar("SELECT count(*) FROM sessions")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(sessions, 2);
    app.stop().await;
}

#[tokio::test]
async fn list_sessions_pages_newest_first_and_shows_each_client() {
    let app = TestApp::spawn().await;
    let user_id = app.register("carol@example.com", "carol's password").await;
    app.register("dan@example.com", "dan's password").await;
    let mut logins = Vec::new();
    for i in 0..6 {
        logins.push(
            login_as(
                &app,
                "carol@example.com",
                "carol's password",
                &format!("device {i}"),
                &format!("agent/{i}"),
            )
            .await,
        );
    }
    // Not listed: a revoked session, an expired one, another user's.
    let gone = login_as(&app, "carol@example.com", "carol's password", "gone", "x").await;
    logout(&app, &gone.refresh_token, LogoutScope::Session)
        .await
        .unwrap();
    let expired = login_as(&app, "carol@example.com", "carol's password", "old", "x").await;
    sqlx::query("UPDATE sessions SET expires_at = now() - interval '1 second' WHERE id = $1::uuid")
        .bind(sid(&expired.access_token))
        .execute(&app.pool)
        .await
        .unwrap();
    app.login("dan@example.com", "dan's password").await;
    // Session 1 is refreshed (from another agent); the caller is session 3.
    let mut request = Request::new(RefreshRequest {
        refresh_token: logins[1].refresh_token.clone(),
    });
    request
        .metadata_mut()
        .insert("user-agent", "agent/refreshed".parse().unwrap());
    app.client.clone().refresh(request).await.unwrap();
    let caller = &logins[3].access_token;

    let mut pages = Vec::new();
    let mut tokens = Vec::new();
    let mut token = String::new();
    loop {
        let page = list(&app, caller, 2, &token).await.unwrap();
        token = page.next_page_token.clone();
        pages.push(page.sessions);
        if token.is_empty() {
            break;
        }
        tokens.push(token.clone());
        assert!(pages.len() < 10, "paging does not end");
    }
    assert_eq!(pages.len(), 3, "6 sessions, 2 a page");
    assert!(pages.iter().all(|page| page.len() == 2));
    let listed: Vec<_> = pages.into_iter().flatten().collect();
    // Newest first: the logins in reverse.
    let expected: Vec<String> = logins.iter().rev().map(|l| sid(&l.access_token)).collect();
    let ids: Vec<String> = listed.iter().map(|s| s.session_id.clone()).collect();
    assert_eq!(ids, expected);
    for (session, i) in listed.iter().zip((0..6).rev()) {
        assert_eq!(session.device_name, format!("device {i}"));
        assert_eq!(session.ip_address, "127.0.0.1");
        assert_eq!(session.current, i == 3, "session {i}");
        let agent = if i == 1 {
            "agent/refreshed".to_owned()
        } else {
            format!("agent/{i}")
        };
        assert!(
            session.user_agent.starts_with(&agent),
            "{}",
            session.user_agent
        );
        assert_eq!(session.last_refreshed_at.is_some(), i == 1, "session {i}");
        let created = time(session.created_at.as_ref().unwrap());
        let expires = time(session.expires_at.as_ref().unwrap());
        assert!((Utc::now() - created).num_seconds().abs() < 60);
        assert_eq!((expires - Utc::now()).num_days(), 29);
    }
    // The page size is capped and defaulted; the caller's token lists only
    // its own user's sessions.
    let all = list(&app, caller, 0, "").await.unwrap();
    assert_eq!(all.sessions.len(), 6);
    assert!(all.next_page_token.is_empty());

    // Bad paging fields are named.
    let status = expect_code(list(&app, caller, -1, "").await, Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["page_size"]);
    let issued = &tokens[0];
    for bad in [
        "garbage!",
        "AAAA",
        "\0",
        &format!("{issued}x"),
        &format!("{issued}="),
        &issued[1..],
        &format!(" {issued}"),
    ] {
        let status = expect_code(list(&app, caller, 2, bad).await, Code::InvalidArgument);
        assert_eq!(violated_fields(&status), ["page_token"], "{bad:?}");
    }
    let status = expect_code(list(&app, caller, -5, "nope").await, Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["page_size", "page_token"]);
    assert_eq!(
        user_id.to_string(),
        get_account(&app, caller).await.unwrap().user_id
    );
    app.stop().await;
}

#[tokio::test]
async fn page_size_zero_is_fifty_and_above_a_hundred_is_a_hundred() {
    let app = TestApp::spawn().await;
    let user_id = app.register("erin@example.com", "erin's password").await;
    let login = app.login("erin@example.com", "erin's password").await;
    // 129 more sessions, straight into the table (130 logins would only
    // take longer), at distinct times.
    sqlx::query(
        "INSERT INTO sessions (id, user_id, current_jti, current_issued_at, expires_at, created_at)
         SELECT gen_random_uuid(), $1, gen_random_uuid(), now(), now() + interval '1 day',
                now() - make_interval(secs => g + 10)
         FROM generate_series(1, 129) AS g",
    )
    .bind(user_id)
    .execute(&app.pool)
    .await
    .unwrap();
    let access = &login.access_token;
    let page = list(&app, access, 0, "").await.unwrap();
    assert_eq!(page.sessions.len(), 50);
    assert!(page.sessions[0].current, "the login is the newest");
    let page = list(&app, access, 1000, "").await.unwrap();
    assert_eq!(page.sessions.len(), 100);
    let rest = list(&app, access, i32::MAX, &page.next_page_token)
        .await
        .unwrap();
    assert_eq!(rest.sessions.len(), 30);
    assert!(rest.next_page_token.is_empty());
    let mut seen: Vec<_> = (page.sessions.iter().chain(&rest.sessions))
        .map(|s| s.session_id.clone())
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 130, "every session once");
    app.stop().await;
}

#[tokio::test]
async fn revoke_session_ends_one_of_the_users_sessions_at_once() {
    let app = TestApp::spawn().await;
    let user_id = app.register("fay@example.com", "fay's password").await;
    app.register("gil@example.com", "gil's password").await;
    let me = app.login("fay@example.com", "fay's password").await;
    let other = app.login("fay@example.com", "fay's password").await;
    let gils = app.login("gil@example.com", "gil's password").await;
    let access = &me.access_token;

    // Another device's session: ended at once, its tokens refused.
    revoke(&app, access, &sid(&other.access_token))
        .await
        .unwrap();
    refused(get_account(&app, &other.access_token).await);
    expect_code(
        refresh(&app, &other.refresh_token).await,
        Code::Unauthenticated,
    );
    // Again: OK, and no second event.
    revoke(&app, access, &sid(&other.access_token))
        .await
        .unwrap();
    let revocations = events_of(&app, &user_id.to_string(), "SessionRevoked").await;
    assert_eq!(revocations.len(), 1);
    eprintln!("SessionRevoked payload: {}", revocations[0]);
    assert_eq!(
        revoked(&revocations[0], &user_id.to_string()),
        (sid(&other.access_token), "revoked_by_user".into())
    );

    // Another user's session and one that never was: the same NOT_FOUND.
    let foreign = expect_code(
        revoke(&app, access, &sid(&gils.access_token)).await,
        Code::NotFound,
    );
    let missing = expect_code(
        revoke(&app, access, &Uuid::now_v7().to_string()).await,
        Code::NotFound,
    );
    assert_eq!(foreign.message(), missing.message());
    get_account(&app, &gils.access_token).await.unwrap();
    // Not a UUID.
    for bad in ["", "not-a-uuid", "\0", &format!("{} ", Uuid::now_v7())] {
        let status = expect_code(revoke(&app, access, bad).await, Code::InvalidArgument);
        assert_eq!(violated_fields(&status), ["session_id"], "{bad:?}");
    }

    // Its own session: allowed, and its access token stops working here.
    revoke(&app, access, &sid(access)).await.unwrap();
    refused(get_account(&app, access).await);
    refused(revoke(&app, access, &sid(access)).await);
    expect_code(
        refresh(&app, &me.refresh_token).await,
        Code::Unauthenticated,
    );
    let revocations = events_of(&app, &user_id.to_string(), "SessionRevoked").await;
    assert_eq!(revocations.len(), 2);
    assert_eq!(
        revoked(&revocations[1], &user_id.to_string()),
        (sid(access), "revoked_by_user".into())
    );
    app.stop().await;
}

#[tokio::test]
async fn logout_and_reuse_write_one_session_revoked_per_session_they_end() {
    let app = TestApp::spawn_with(|c| c.sessions.refresh_reuse_grace = Duration::ZERO).await;
    let user_id = app.register("hal@example.com", "hal's password").await;
    let user = user_id.to_string();
    let mut sessions = Vec::new();
    for _ in 0..5 {
        sessions.push(app.login("hal@example.com", "hal's password").await);
    }
    let s = |i: usize| sid(&sessions[i].access_token);
    let rt = |i: usize| sessions[i].refresh_token.clone();

    logout(&app, &rt(0), LogoutScope::Session).await.unwrap();
    logout(&app, &rt(0), LogoutScope::Session).await.unwrap();
    logout(&app, &rt(1), LogoutScope::Others).await.unwrap();
    logout(&app, &rt(1), LogoutScope::All).await.unwrap();
    let seen: Vec<(String, String)> = (events_of(&app, &user, "SessionRevoked").await.iter())
        .map(|p| revoked(p, &user))
        .collect();
    let mut others: Vec<(String, String)> = seen[1..4].to_vec();
    others.sort();
    let mut expected_others: Vec<(String, String)> =
        (2..5).map(|i| (s(i), "logout_others".to_owned())).collect();
    expected_others.sort();
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert_eq!(seen[0], (s(0), "logout".into()));
    assert_eq!(others, expected_others);
    assert_eq!(seen[4], (s(1), "logout_all".into()));

    // Reuse of a retired refresh token ends the session, once.
    let reused = app.login("hal@example.com", "hal's password").await;
    refresh(&app, &reused.refresh_token).await.unwrap();
    expect_code(
        refresh(&app, &reused.refresh_token).await,
        Code::Unauthenticated,
    );
    expect_code(
        refresh(&app, &reused.refresh_token).await,
        Code::Unauthenticated,
    );
    let all = events_of(&app, &user, "SessionRevoked").await;
    assert_eq!(all.len(), 6);
    assert_eq!(
        revoked(&all[5], &user),
        (sid(&reused.access_token), "reuse_detected".into())
    );
    // And a Logout of a session reuse already ended writes nothing.
    logout(&app, &reused.refresh_token, LogoutScope::Session)
        .await
        .unwrap();
    assert_eq!(events_of(&app, &user, "SessionRevoked").await.len(), 6);
    app.stop().await;
}

#[tokio::test]
async fn change_password_checks_the_current_one_under_the_login_throttle() {
    let app = TestApp::spawn_with(|c| c.throttle.login_max_failures_per_account = 3).await;
    app.register("ida@example.com", "ida's password").await;
    let login = app.login("ida@example.com", "ida's password").await;
    let access = &login.access_token;

    // Bad input is refused before anything is counted or hashed.
    for (current, new, field) in [
        ("ida's password", "password", "new_password"),
        ("ida's password", "short", "new_password"),
        ("ida's password", "IDA@example.com", "new_password"),
        ("ida's password", "ida's password", "new_password"),
        ("ida's password", "good\0password", "new_password"),
        ("ida's\0password", "a new password", "current_password"),
    ] {
        let status = expect_code(
            change_password(&app, access, current, new).await,
            Code::InvalidArgument,
        );
        assert_eq!(violated_fields(&status), [field], "{new:?}");
    }
    let status = expect_code(
        change_password(&app, access, "\0", "password").await,
        Code::InvalidArgument,
    );
    assert_eq!(
        violated_fields(&status),
        ["current_password", "new_password"]
    );

    // A wrong current password is a failed login: two at Login and one
    // here reach the limit of 3, after which both are throttled.
    for _ in 0..2 {
        expect_code(
            app.try_login("ida@example.com", "wrong guess").await,
            Code::Unauthenticated,
        );
    }
    let wrong = expect_code(
        change_password(&app, access, "wrong guess", "a new password").await,
        Code::Unauthenticated,
    );
    assert_eq!(wrong.message(), "invalid email or password");
    let throttled = expect_code(
        change_password(&app, access, "ida's password", "a new password").await,
        Code::ResourceExhausted,
    );
    assert!(
        throttled
            .get_error_details()
            .retry_info()
            .and_then(|r| r.retry_delay)
            .is_some()
    );
    expect_code(
        app.try_login("ida@example.com", "ida's password").await,
        Code::ResourceExhausted,
    );
    // Nothing changed: the old password is still the one.
    sqlx::query("DELETE FROM login_throttle")
        .execute(&app.pool)
        .await
        .unwrap();
    app.try_login("ida@example.com", "ida's password")
        .await
        .unwrap();
    app.stop().await;
}

#[tokio::test]
async fn change_password_revokes_the_other_sessions_and_keeps_the_callers() {
    let app = TestApp::spawn().await;
    let user_id = app.register("jon@example.com", "jon's password").await;
    let user = user_id.to_string();
    let me = app.login("jon@example.com", "jon's password").await;
    let others = [
        app.login("jon@example.com", "jon's password").await,
        app.login("jon@example.com", "jon's password").await,
    ];
    let already = app.login("jon@example.com", "jon's password").await;
    logout(&app, &already.refresh_token, LogoutScope::Session)
        .await
        .unwrap();
    let before = events(&app, &user).await.len();

    change_password(
        &app,
        &me.access_token,
        "jon's password",
        "jon's new password",
    )
    .await
    .unwrap();

    // The events: one SessionRevoked per other live session, then
    // PasswordChanged; none for the caller's or the one already revoked.
    let written: Vec<(String, Value)> = events(&app, &user).await.split_off(before);
    assert_eq!(written.len(), 3, "{written:?}");
    let mut ended: Vec<String> = written[..2]
        .iter()
        .map(|(t, p)| {
            assert_eq!(t, "SessionRevoked");
            let (session, reason) = revoked(p, &user);
            assert_eq!(reason, "password_changed");
            session
        })
        .collect();
    ended.sort();
    let mut expected: Vec<String> = others.iter().map(|l| sid(&l.access_token)).collect();
    expected.sort();
    assert_eq!(ended, expected);
    let (event_type, changed) = &written[2];
    eprintln!("PasswordChanged payload: {changed}");
    assert_eq!(event_type, "PasswordChanged");
    let fields: Vec<&String> = changed.as_object().unwrap().keys().collect();
    assert_eq!(fields, ["changed_at", "event_id", "user_id"]);
    assert_eq!(changed["user_id"], user);
    recent(&changed["changed_at"]);

    // The others' tokens are refused; the caller's session goes on.
    for other in &others {
        expect_code(
            refresh(&app, &other.refresh_token).await,
            Code::Unauthenticated,
        );
        refused(get_account(&app, &other.access_token).await);
    }
    get_account(&app, &me.access_token).await.unwrap();
    let rotated = refresh(&app, &me.refresh_token).await.unwrap();
    get_account(&app, &rotated.access_token).await.unwrap();
    // The new password logs in; the old one does not.
    expect_code(
        app.try_login("jon@example.com", "jon's password").await,
        Code::Unauthenticated,
    );
    app.try_login("jon@example.com", "jon's new password")
        .await
        .unwrap();
    app.stop().await;
}

/// The number of rows of `table` whose text holds `needle`, over every
/// column (so a new column cannot hide the email from the check).
async fn rows_mentioning(app: &TestApp, table: &str, needle: &str, filter: &str) -> i64 {
    sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {table} t WHERE t::text LIKE '%' || $1 || '%' {filter}"
    ))
    .bind(needle)
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn delete_account_erases_the_email_but_keeps_the_events_still_waiting() {
    let app = TestApp::spawn().await;
    let email = "kim@example.com";
    let user_id = app.register(email, "kim's password").await;
    let user = user_id.to_string();
    let bystander = app.register("lee@example.com", "lee's password").await;
    let me = app.login(email, "kim's password").await;
    let other = app.login(email, "kim's password").await;
    // A failed login leaves a throttle row named after the email.
    expect_code(
        app.try_login(email, "wrong guess").await,
        Code::Unauthenticated,
    );
    // The relay published the first events (UserRegistered, with the email,
    // and the first SessionStarted); the second SessionStarted waits.
    sqlx::query(
        "UPDATE outbox SET published_at = now()
         WHERE seq IN (SELECT seq FROM outbox ORDER BY seq LIMIT 3)",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let waiting_before: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM outbox WHERE aggregateid = $1 AND published_at IS NULL ORDER BY seq",
    )
    .bind(&user)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(waiting_before.len(), 1, "the second SessionStarted");

    // A wrong password deletes nothing.
    let wrong = expect_code(
        delete_account(&app, &me.access_token, "wrong guess").await,
        Code::Unauthenticated,
    );
    assert_eq!(wrong.message(), "invalid email or password");
    let status = expect_code(
        delete_account(&app, &me.access_token, "kim's\0password").await,
        Code::InvalidArgument,
    );
    assert_eq!(violated_fields(&status), ["password"]);
    get_account(&app, &me.access_token).await.unwrap();

    delete_account(&app, &me.access_token, "kim's password")
        .await
        .unwrap();

    // The email is nowhere: users, sessions, throttle rows, published
    // outbox rows.
    assert_eq!(rows_mentioning(&app, "users", email, "").await, 0);
    assert_eq!(rows_mentioning(&app, "users", &user, "").await, 0);
    assert_eq!(rows_mentioning(&app, "sessions", &user, "").await, 0);
    assert_eq!(rows_mentioning(&app, "login_throttle", email, "").await, 0);
    assert_eq!(
        rows_mentioning(&app, "outbox", email, "AND published_at IS NOT NULL").await,
        0
    );
    assert_eq!(
        rows_mentioning(&app, "outbox", &user, "AND published_at IS NOT NULL").await,
        0
    );
    // What waits for the relay is still there, in order, UserDeleted last,
    // and no SessionRevoked for the sessions the deletion ended.
    let waiting: Vec<(Uuid, String, Value)> =
        sqlx::query_as("SELECT id, type, payload FROM outbox WHERE aggregateid = $1 ORDER BY seq")
            .bind(&user)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    let types: Vec<&str> = waiting.iter().map(|(_, t, _)| t.as_str()).collect();
    assert_eq!(types, ["SessionStarted", "UserDeleted"]);
    assert_eq!(waiting[0].0, waiting_before[0]);
    let deleted = &waiting[1].2;
    eprintln!("UserDeleted payload: {deleted}");
    let fields: Vec<&String> = deleted.as_object().unwrap().keys().collect();
    assert_eq!(fields, ["deleted_at", "event_id", "user_id"]);
    assert_eq!(deleted["user_id"], user);
    assert_eq!(deleted["event_id"], waiting[1].0.to_string());
    recent(&deleted["deleted_at"]);
    assert!(!deleted.to_string().contains("kim"));
    // Signed out everywhere, at once. (This failed login counts against
    // the address again, as for any unknown one: a throttle row of someone
    // trying it, which the purge removes when its window ends.)
    refused(get_account(&app, &me.access_token).await);
    refused(get_account(&app, &other.access_token).await);
    expect_code(
        refresh(&app, &other.refresh_token).await,
        Code::Unauthenticated,
    );
    expect_code(
        app.try_login(email, "kim's password").await,
        Code::Unauthenticated,
    );
    // The bystander's rows are untouched, published or not.
    let theirs: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE aggregateid = $1")
        .bind(bystander.to_string())
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(theirs, 1);

    // The email may register again: a new user id, a working login.
    let again = app.register(email, "kim's other password").await;
    assert_ne!(again, user_id);
    let login = app.login(email, "kim's other password").await;
    assert_eq!(
        get_account(&app, &login.access_token)
            .await
            .unwrap()
            .user_id,
        again.to_string()
    );
    app.stop().await;
}

#[tokio::test]
async fn a_deletion_keeps_the_users_registration_while_it_waits_for_the_relay() {
    let app = TestApp::spawn().await;
    let email = "max@example.com";
    let user_id = app.register(email, "max's password").await;
    let login = app.login(email, "max's password").await;
    delete_account(&app, &login.access_token, "max's password")
        .await
        .unwrap();
    // Nothing was published yet: the whole history is still to deliver, in
    // order; the email only in its UserRegistered.
    let types: Vec<String> =
        sqlx::query_scalar("SELECT type FROM outbox WHERE aggregateid = $1 ORDER BY seq")
            .bind(user_id.to_string())
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(types, ["UserRegistered", "SessionStarted", "UserDeleted"]);
    assert_eq!(rows_mentioning(&app, "outbox", email, "").await, 1);
    assert_eq!(
        rows_mentioning(&app, "outbox", email, "AND type = 'UserRegistered'").await,
        1
    );
    assert_eq!(rows_mentioning(&app, "users", email, "").await, 0);
    app.stop().await;
}

/// A Login on a task of its own, so the test can hold the lock it runs into.
fn spawn_login(
    app: &TestApp,
    email: &'static str,
    password: &'static str,
) -> tokio::task::JoinHandle<Result<tonic::Response<LoginResponse>, Status>> {
    let mut client = app.client.clone();
    tokio::spawn(async move {
        client
            .login(LoginRequest {
                email: email.into(),
                password: password.into(),
                ..Default::default()
            })
            .await
    })
}

/// A ChangePassword with `access` on a task of its own, as [`spawn_login`].
fn spawn_change_password(
    app: &TestApp,
    access: &str,
    current: &'static str,
    new: &'static str,
) -> tokio::task::JoinHandle<Result<tonic::Response<ChangePasswordResponse>, Status>> {
    let mut client = app.account.clone();
    let request = bearer(
        ChangePasswordRequest {
            current_password: current.into(),
            new_password: new.into(),
        },
        access,
    );
    tokio::spawn(async move { client.change_password(request).await })
}

/// Waits until `count` statements of this database wait on a lock.
async fn wait_for_blocked(app: &TestApp, count: i64) {
    eventually(
        Duration::from_secs(15),
        &format!("{count} statements waiting on a lock"),
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&app.pool)
            .await
            .unwrap();
            (waiting >= count).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn calls_racing_a_deletion_are_unauthenticated_never_internal() {
    let app = TestApp::spawn().await;
    let email = "ned@example.com";
    let user_id = app.register(email, "ned's password").await;
    let session = app.login(email, "ned's password").await;

    // A deletion holds the user's rows, uncommitted, while a Login (past
    // its password check, at the session insert), a Refresh (at the
    // session's lock) and a ChangePassword (past its checks, at the
    // password update) run into them.
    let mut deleting = PgConnection::connect(&app.database_url).await.unwrap();
    let mut tx = deleting.begin().await.unwrap();
    sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(user_id)
        .execute(&mut *tx)
        .await
        .unwrap();
    let login = spawn_login(&app, email, "ned's password");
    let refresh = tokio::spawn({
        let mut client = app.client.clone();
        let token = session.refresh_token.clone();
        async move {
            client
                .refresh(RefreshRequest {
                    refresh_token: token,
                })
                .await
        }
    });
    let change = spawn_change_password(
        &app,
        &session.access_token,
        "ned's password",
        "ned's new password",
    );
    wait_for_blocked(&app, 3).await;
    tx.commit().await.unwrap();

    let login = expect_code(login.await.unwrap(), Code::Unauthenticated);
    assert_eq!(login.message(), "invalid email or password");
    expect_code(refresh.await.unwrap(), Code::Unauthenticated);
    refused(change.await.unwrap());
    // None of them left a row or an event behind.
    let sessions: i64 = sqlx::query_scalar("SELECT count(*) FROM sessions")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(sessions, 0);
    let types: Vec<String> =
        sqlx::query_scalar("SELECT type FROM outbox WHERE aggregateid = $1 ORDER BY seq")
            .bind(user_id.to_string())
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(types, ["UserRegistered", "SessionStarted"]);
    app.stop().await;
}

#[tokio::test]
async fn a_password_changed_during_a_login_or_a_change_wins_over_the_old_one() {
    let app = TestApp::spawn().await;
    let email = "olga@example.com";
    let user_id = app.register(email, "olga's password").await;
    let session = app.login(email, "olga's password").await;
    app.register("pete@example.com", "pete's password").await;
    let other_hash: String =
        sqlx::query_scalar("SELECT password_hash FROM users WHERE email = 'pete@example.com'")
            .fetch_one(&app.pool)
            .await
            .unwrap();

    // A password change, uncommitted, holds the user's row while a Login
    // and a ChangePassword that both checked the old password reach the
    // point where what they allow would commit.
    let mut changing = PgConnection::connect(&app.database_url).await.unwrap();
    let mut tx = changing.begin().await.unwrap();
    sqlx::query("UPDATE users SET password_hash = $2 WHERE id = $1")
        .bind(user_id)
        .bind(&other_hash)
        .execute(&mut *tx)
        .await
        .unwrap();
    let login = spawn_login(&app, email, "olga's password");
    let change = spawn_change_password(
        &app,
        &session.access_token,
        "olga's password",
        "olga's second password",
    );
    wait_for_blocked(&app, 2).await;
    tx.commit().await.unwrap();

    // The old password no longer starts a session (one that started would
    // outlive the change), nor changes the new one.
    expect_code(login.await.unwrap(), Code::Unauthenticated);
    expect_code(change.await.unwrap(), Code::Unauthenticated);
    let sessions: i64 = sqlx::query_scalar("SELECT count(*) FROM sessions WHERE user_id = $1")
        .bind(user_id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(sessions, 1, "only the session from before the change");
    let hash: String = sqlx::query_scalar("SELECT password_hash FROM users WHERE id = $1")
        .bind(user_id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(hash, other_hash, "the committed change stands");
    app.stop().await;
}
