use jsonwebtoken::{Algorithm, EncodingKey, Header};
use realchat_auth::proto::{LogoutRequest, LogoutScope, RefreshRequest, RefreshResponse};
use tonic::Code;

use crate::expect_code;
use std::time::Duration;

use realchat_testkit::app::{TestApp, test_config};
use realchat_testkit::db::create_database;
use realchat_testkit::jwt::{b64_json, parts};
use realchat_testkit::keys::write_key_file;
use realchat_testkit::wait::eventually;

/// Refresh with `token`.
pub(crate) async fn refresh(app: &TestApp, token: &str) -> Result<RefreshResponse, tonic::Status> {
    app.client
        .clone()
        .refresh(RefreshRequest {
            refresh_token: token.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn logout(app: &TestApp, token: &str) -> Result<(), tonic::Status> {
    logout_scoped(app, token, LogoutScope::Unspecified).await
}

/// Logout of `token` with `scope`.
pub(crate) async fn logout_scoped(
    app: &TestApp,
    token: &str,
    scope: LogoutScope,
) -> Result<(), tonic::Status> {
    app.client
        .clone()
        .logout(LogoutRequest {
            refresh_token: token.into(),
            scope: scope as i32,
        })
        .await
        .map(|_| ())
}

async fn session(app: &TestApp) -> (uuid::Uuid, String) {
    let user_id = app.register("erin@example.com", "erin's password").await;
    let login = app.login("erin@example.com", "erin's password").await;
    (user_id, login.refresh_token)
}

#[tokio::test]
async fn tokens_carry_the_rfc_9068_header_and_claims() {
    let app = TestApp::spawn().await;
    let user_id = app.register("frank@example.com", "frank's password").await;
    let login = app.login("frank@example.com", "frank's password").await;
    let (header, claims) = parts(&login.access_token);
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(header["typ"], "at+jwt");
    assert!(header["kid"].as_str().is_some_and(|k| !k.is_empty()));
    assert_eq!(claims["sub"], user_id.to_string());
    assert_eq!(claims["iss"], "realchat-auth");
    assert_eq!(claims["aud"], "realchat");
    for claim in ["sid", "jti", "iat", "exp"] {
        assert!(!claims[claim].is_null(), "missing {claim}");
    }
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        900
    );
    let (refresh_header, refresh_claims) = parts(&login.refresh_token);
    assert_eq!(refresh_header["typ"], "rt+jwt");
    assert_eq!(refresh_claims["sid"], claims["sid"]);
    app.stop().await;
}

#[tokio::test]
async fn refresh_rotates_and_within_grace_returns_the_current_token() {
    let app = TestApp::spawn().await;
    let (_, r0) = session(&app).await;
    let first = refresh(&app, &r0).await.unwrap();
    assert_ne!(first.refresh_token, r0);
    assert_ne!(parts(&first.refresh_token).1["jti"], parts(&r0).1["jti"]);
    // The retired token again, within the 10 s grace window: the session's
    // current token, not a fork.
    let again = refresh(&app, &r0).await.unwrap();
    assert_eq!(again.refresh_token, first.refresh_token);
    // And the current token keeps rotating.
    let second = refresh(&app, &first.refresh_token).await.unwrap();
    assert_ne!(second.refresh_token, first.refresh_token);
    refresh(&app, &second.refresh_token).await.unwrap();
    app.stop().await;
}

#[tokio::test]
async fn reuse_after_the_grace_window_revokes_the_whole_session() {
    let app = TestApp::spawn_with(|c| c.sessions.refresh_reuse_grace = Duration::ZERO).await;
    let (_, r0) = session(&app).await;
    let r1 = refresh(&app, &r0).await.unwrap().refresh_token;
    expect_code(refresh(&app, &r0).await, Code::Unauthenticated);
    // The newest token died with its session.
    expect_code(refresh(&app, &r1).await, Code::Unauthenticated);
    let reason: Option<String> = sqlx::query_scalar("SELECT revoke_reason FROM sessions")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(reason.as_deref(), Some("reuse_detected"));
    // Another login is a new session and works.
    let fresh = app.login("erin@example.com", "erin's password").await;
    refresh(&app, &fresh.refresh_token).await.unwrap();
    app.stop().await;
}

#[tokio::test]
async fn ten_concurrent_refreshes_of_one_token_leave_one_working_session() {
    let app = TestApp::spawn().await;
    let (_, r0) = session(&app).await;
    let mut calls = Vec::new();
    for _ in 0..10 {
        let mut client = app.new_client().await;
        let token = r0.clone();
        calls.push(tokio::spawn(async move {
            client
                .refresh(RefreshRequest {
                    refresh_token: token,
                })
                .await
                .map(|r| r.into_inner().refresh_token)
        }));
    }
    let mut issued = std::collections::HashSet::new();
    for call in calls {
        issued.insert(
            call.await
                .unwrap()
                .expect("every concurrent refresh succeeds"),
        );
    }
    assert_eq!(issued.len(), 1, "the session forked: {issued:?}");
    let current = issued.into_iter().next().unwrap();
    let next = refresh(&app, &current).await.unwrap();
    refresh(&app, &next.refresh_token).await.unwrap();
    let (sessions, revoked): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(revoked_at) FROM sessions")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!((sessions, revoked), (1, 0));
    app.stop().await;
}

#[tokio::test]
async fn logout_revokes_every_token_of_the_session_and_is_idempotent() {
    let app = TestApp::spawn().await;
    let (_, r0) = session(&app).await;
    let other = app.login("erin@example.com", "erin's password").await;
    let r1 = refresh(&app, &r0).await.unwrap().refresh_token;
    logout(&app, &r1).await.unwrap();
    expect_code(refresh(&app, &r1).await, Code::Unauthenticated);
    expect_code(refresh(&app, &r0).await, Code::Unauthenticated);
    logout(&app, &r1).await.unwrap();
    logout(&app, &r0).await.unwrap();
    // Another session of the same user is untouched.
    refresh(&app, &other.refresh_token).await.unwrap();
    app.stop().await;
}

#[tokio::test]
async fn forged_and_misused_tokens_are_unauthenticated() {
    let app = TestApp::spawn().await;
    let (user_id, refresh_token) = session(&app).await;
    let login = app.login("erin@example.com", "erin's password").await;
    let (header, claims) = parts(&refresh_token);

    let alg_none = {
        let mut h = header.clone();
        h["alg"] = "none".into();
        format!("{}.{}.", b64_json(&h), b64_json(&claims))
    };
    let other_key = {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let mut h = Header::new(Algorithm::EdDSA);
        h.typ = Some("rt+jwt".into());
        h.kid = header["kid"].as_str().map(str::to_owned); // our kid, their key
        jsonwebtoken::encode(&h, &claims, &EncodingKey::from_ed_der(pkcs8.as_ref())).unwrap()
    };
    let hs256 = {
        let mut h = Header::new(Algorithm::HS256);
        h.typ = Some("rt+jwt".into());
        h.kid = header["kid"].as_str().map(str::to_owned);
        jsonwebtoken::encode(&h, &claims, &EncodingKey::from_secret(b"guess")).unwrap()
    };
    let changed_payload = {
        let mut c = claims.clone();
        c["sub"] = uuid::Uuid::new_v4().to_string().into();
        let sig = refresh_token.rsplit('.').next().unwrap();
        format!("{}.{}.{sig}", b64_json(&header), b64_json(&c))
    };
    let truncated = refresh_token[..refresh_token.len() - 5].to_owned();
    let cases = [
        ("alg none", alg_none),
        ("re-signed with another key", other_key),
        ("HS256", hs256),
        ("changed payload", changed_payload),
        ("access token as refresh token", login.access_token.clone()),
        ("truncated", truncated),
        ("garbage", "not.a.jwt".to_owned()),
    ];
    for (name, token) in &cases {
        let status = expect_code(refresh(&app, token).await, Code::Unauthenticated);
        assert_eq!(status.message(), "invalid refresh token", "{name}");
        expect_code(logout(&app, token).await, Code::Unauthenticated);
    }
    expect_code(refresh(&app, "").await, Code::InvalidArgument);
    // None of that touched the real session.
    refresh(&app, &refresh_token).await.unwrap();
    assert_eq!(claims["sub"], user_id.to_string());
    app.stop().await;
}

#[tokio::test]
async fn a_configured_key_signs_tokens_that_survive_a_restart() {
    let (key_file, _) = write_key_file();
    let database_url = create_database().await;
    let config = {
        let mut c = test_config(&database_url);
        c.tokens.signing_key_file = Some(key_file.clone());
        c
    };
    let app = TestApp::start(config.clone(), database_url.clone()).await;
    app.register("kim@example.com", "kim's password").await;
    let login = app.login("kim@example.com", "kim's password").await;
    app.stop().await;

    let app = TestApp::start(config, database_url).await;
    refresh(&app, &login.refresh_token).await.unwrap();
    app.stop().await;
    std::fs::remove_file(key_file).unwrap();
}

#[tokio::test]
async fn tokens_signed_with_our_key_but_wrong_claims_are_unauthenticated() {
    let (key_file, der) = write_key_file();
    let app = TestApp::spawn_with(|c| c.tokens.signing_key_file = Some(key_file.clone())).await;
    let (_, refresh_token) = session(&app).await;
    let (header, claims) = parts(&refresh_token);
    let key = EncodingKey::from_ed_der(&der);
    let sign_typ = |typ: Option<&str>, edit: &dyn Fn(&mut serde_json::Value)| {
        let mut c = claims.clone();
        edit(&mut c);
        let mut h = Header::new(Algorithm::EdDSA);
        h.typ = typ.map(str::to_owned);
        h.kid = header["kid"].as_str().map(str::to_owned);
        jsonwebtoken::encode(&h, &c, &key).unwrap()
    };
    let sign = |edit: &dyn Fn(&mut serde_json::Value)| sign_typ(Some("rt+jwt"), edit);
    // Our key and the real claims, but the header does not say refresh token.
    for typ in [Some("JWT"), Some("at+jwt"), None] {
        let status = expect_code(
            refresh(&app, &sign_typ(typ, &|_| {})).await,
            Code::Unauthenticated,
        );
        assert_eq!(status.message(), "invalid refresh token", "typ {typ:?}");
    }
    let now = chrono::Utc::now().timestamp();
    type Edit<'a> = &'a dyn Fn(&mut serde_json::Value);
    let cases: [(&str, Edit); 7] = [
        ("wrong aud", &|c| c["aud"] = "someone-else".into()),
        ("aud as a list", &|c| {
            c["aud"] = serde_json::json!(["realchat", "x"])
        }),
        ("wrong iss", &|c| c["iss"] = "https://evil.example".into()),
        ("expired", &|c| {
            c["iat"] = (now - 7200).into();
            c["exp"] = (now - 3600).into();
        }),
        ("no exp", &|c| {
            c.as_object_mut().unwrap().remove("exp");
        }),
        ("no aud", &|c| {
            c.as_object_mut().unwrap().remove("aud");
        }),
        ("another session", &|c| {
            c["sid"] = uuid::Uuid::new_v4().to_string().into()
        }),
    ];
    for (name, edit) in cases {
        let status = expect_code(refresh(&app, &sign(edit)).await, Code::Unauthenticated);
        assert_eq!(status.message(), "invalid refresh token", "{name}");
    }
    // The control: our key and the real claims make a token the server takes,
    // so the refusals above are the claims' doing.
    refresh(&app, &sign(&|_| {})).await.unwrap();
    app.stop().await;
    std::fs::remove_file(key_file).unwrap();
}

#[tokio::test]
async fn a_crit_header_is_refused_even_under_our_own_signature() {
    let (key_file, der) = write_key_file();
    let app = TestApp::spawn_with(|c| c.tokens.signing_key_file = Some(key_file.clone())).await;
    let (_, refresh_token) = session(&app).await;
    let (header, claims) = parts(&refresh_token);
    let key = EncodingKey::from_ed_der(&der);
    // jsonwebtoken's `Header` has no `crit`, so both headers are written as
    // JSON and signed alike with the server's key.
    let sign = |header: &serde_json::Value| {
        let input = format!("{}.{}", b64_json(header), b64_json(&claims));
        let signature =
            jsonwebtoken::crypto::sign(input.as_bytes(), &key, Algorithm::EdDSA).unwrap();
        format!("{input}.{signature}")
    };
    // RFC 7515 §4.1.11: `crit` names extensions the recipient must
    // understand; we understand none, so the token is refused.
    let mut extended = header.clone();
    extended["urn:example:must-understand"] = true.into();
    // The member's presence is what counts, so `"crit": null` is refused
    // too.
    for crit in [
        serde_json::json!(["urn:example:must-understand"]),
        serde_json::Value::Null,
    ] {
        let mut critical = extended.clone();
        critical["crit"] = crit.clone();
        let status = expect_code(refresh(&app, &sign(&critical)).await, Code::Unauthenticated);
        assert_eq!(status.message(), "invalid refresh token", "crit {crit}");
    }
    // The control: the same header and extension without `crit`, signed the
    // same way, is taken, so the refusal above is the `crit` header's.
    refresh(&app, &sign(&extended)).await.unwrap();
    app.stop().await;
    std::fs::remove_file(key_file).unwrap();
}

#[tokio::test]
async fn logout_scopes_end_other_sessions_or_all_of_them() {
    let app = TestApp::spawn().await;
    let (_, a) = session(&app).await;
    let b = app
        .login("erin@example.com", "erin's password")
        .await
        .refresh_token;
    let c = app
        .login("erin@example.com", "erin's password")
        .await
        .refresh_token;
    // Another user's session is never touched.
    app.register("other@example.com", "other's password").await;
    let other = app
        .login("other@example.com", "other's password")
        .await
        .refresh_token;

    logout_scoped(&app, &a, LogoutScope::Others).await.unwrap();
    let a = refresh(&app, &a)
        .await
        .expect("this session lives")
        .refresh_token;
    expect_code(refresh(&app, &b).await, Code::Unauthenticated);
    expect_code(refresh(&app, &c).await, Code::Unauthenticated);

    let d = app
        .login("erin@example.com", "erin's password")
        .await
        .refresh_token;
    logout_scoped(&app, &a, LogoutScope::All).await.unwrap();
    expect_code(refresh(&app, &a).await, Code::Unauthenticated);
    expect_code(refresh(&app, &d).await, Code::Unauthenticated);
    refresh(&app, &other).await.unwrap();

    // Beyond its own session, a revoked session's token has no say.
    let e = app
        .login("erin@example.com", "erin's password")
        .await
        .refresh_token;
    expect_code(
        logout_scoped(&app, &a, LogoutScope::All).await,
        Code::Unauthenticated,
    );
    refresh(&app, &e).await.unwrap();
    // An unknown scope is named in the error.
    let status = expect_code(
        app.client
            .clone()
            .logout(LogoutRequest {
                refresh_token: e.clone(),
                scope: 42,
            })
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(crate::violated_fields(&status), ["scope"]);
    app.stop().await;
}

#[tokio::test]
async fn sessions_long_expired_or_revoked_are_purged() {
    let app =
        TestApp::spawn_with(|c| c.sessions.session_purge_interval = Duration::from_secs(1)).await;
    let (_, live) = session(&app).await;
    let login = || app.login("erin@example.com", "erin's password");
    let (old_expired, old_revoked, just_revoked) = (login().await, login().await, login().await);
    logout(&app, &just_revoked.refresh_token).await.unwrap();
    let sid =
        |token: &str| -> uuid::Uuid { parts(token).1["sid"].as_str().unwrap().parse().unwrap() };
    for (column, token) in [
        ("expires_at", &old_expired.refresh_token),
        ("revoked_at", &old_revoked.refresh_token),
    ] {
        sqlx::query(&format!(
            "UPDATE sessions SET {column} = now() - interval '31 days' WHERE id = $1"
        ))
        .bind(sid(token))
        .execute(&app.pool)
        .await
        .unwrap();
    }
    let pool = app.pool.clone();
    let remaining = eventually(Duration::from_secs(15), "the purge", || {
        let pool = pool.clone();
        async move {
            let ids: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM sessions ORDER BY id")
                .fetch_all(&pool)
                .await
                .unwrap();
            (ids.len() == 2).then_some(ids)
        }
    })
    .await;
    let mut kept = vec![sid(&live), sid(&just_revoked.refresh_token)];
    kept.sort();
    assert_eq!(remaining, kept);
    refresh(&app, &live).await.unwrap();
    app.stop().await;
}

#[tokio::test]
async fn two_racing_logout_others_leave_exactly_one_session() {
    for _ in 0..5 {
        let app = TestApp::spawn().await;
        let (_, p0) = session(&app).await;
        let p1 = app
            .login("erin@example.com", "erin's password")
            .await
            .refresh_token;
        let (a, b) = tokio::join!(
            logout_scoped(&app, &p0, LogoutScope::Others),
            logout_scoped(&app, &p1, LogoutScope::Others),
        );
        // One ends the other; the loser's session is gone before it acts.
        assert!(a.is_ok() != b.is_ok(), "exactly one wins: {a:?} {b:?}");
        let live: i64 =
            sqlx::query_scalar("SELECT count(*) FROM sessions WHERE revoked_at IS NULL")
                .fetch_one(&app.pool)
                .await
                .unwrap();
        assert_eq!(live, 1);
        app.stop().await;
    }
}
