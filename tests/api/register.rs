use realchat_auth::proto::RegisterRequest;
use tonic::Code;

use crate::{expect_code, violated_fields};
use realchat_testkit::app::TestApp;

fn request(email: &str, password: &str) -> RegisterRequest {
    RegisterRequest {
        email: email.into(),
        password: password.into(),
    }
}

async fn count(app: &TestApp, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn register_writes_user_and_outbox_row_then_login_works() {
    let app = TestApp::spawn().await;
    let user_id = app.register("alice@example.com", "correct horse").await;

    let (aggregatetype, aggregateid, event_type, payload, event_id): (
        String,
        String,
        String,
        serde_json::Value,
        uuid::Uuid,
    ) = sqlx::query_as("SELECT aggregatetype, aggregateid, type, payload, id FROM outbox")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(aggregatetype, "user");
    assert_eq!(aggregateid, user_id.to_string());
    assert_eq!(event_type, "UserRegistered");
    assert_eq!(payload["event_id"], event_id.to_string());
    assert_eq!(payload["user_id"], user_id.to_string());
    assert_eq!(payload["email"], "alice@example.com");
    let registered_at = payload["registered_at"].as_str().unwrap();
    chrono::DateTime::parse_from_rfc3339(registered_at).expect("registered_at is RFC 3339");

    let tokens = app.login("alice@example.com", "correct horse").await;
    assert!(!tokens.access_token.is_empty() && !tokens.refresh_token.is_empty());
    assert_eq!(tokens.token_type, "Bearer");
    assert_eq!(tokens.expires_in, 900);
    assert_eq!(tokens.refresh_expires_in, 30 * 24 * 3600);
    app.stop().await;
}

#[tokio::test]
async fn same_email_in_another_case_or_form_already_exists_and_logs_in() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    app.register("Bob@Example.com", "hunter2hunter2").await;
    for variant in [
        "bob@example.com",
        "  BOB@EXAMPLE.COM  ",
        "ｂｏｂ@example.com", // fullwidth: equal under NFKC
    ] {
        let status = expect_code(
            client.register(request(variant, "another password")).await,
            Code::AlreadyExists,
        );
        assert_eq!(status.message(), "email already registered");
    }
    assert_eq!(count(&app, "users").await, 1);
    assert_eq!(count(&app, "outbox").await, 1);
    app.login("BOB@example.COM", "hunter2hunter2").await;
    app.stop().await;
}

#[tokio::test]
async fn twenty_racing_registrations_of_one_email_give_one_user() {
    // Vary the spelling: the race is on the normalised form.
    race_to_one_user(["race@example.com", "RACE@example.com"]).await;
}

/// Twenty Registers at once, on connections of their own, alternating the
/// two `spellings`: exactly one succeeds, every other is ALREADY_EXISTS
/// (never INTERNAL), and one user with one event is left.
async fn race_to_one_user(spellings: [&'static str; 2]) {
    let app = TestApp::spawn().await;
    let mut calls = Vec::new();
    for i in 0..20 {
        let mut client = app.new_client().await;
        let email = spellings[i % 2];
        calls.push(tokio::spawn(async move {
            client.register(request(email, "racing password")).await
        }));
    }
    let mut ok = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => ok += 1,
            Err(status) => assert_eq!(status.code(), Code::AlreadyExists, "{status:?}"),
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(count(&app, "users").await, 1);
    assert_eq!(count(&app, "outbox").await, 1);
    app.stop().await;
}

#[tokio::test]
async fn password_limits_are_bytes_after_nfkc_and_never_truncated() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let refused = [
        format!("{}x", "A".repeat(72)), // 73 ASCII bytes
        "€".repeat(25),                 // 75 bytes
        "seven77".to_owned(),           // 7 characters
    ];
    for (i, password) in refused.iter().enumerate() {
        let status = expect_code(
            client
                .register(request(&format!("p{i}@example.com"), password))
                .await,
            Code::InvalidArgument,
        );
        assert_eq!(violated_fields(&status), ["password"]);
    }
    assert_eq!(count(&app, "users").await, 0);

    let accepted = ["A".repeat(72), "€".repeat(24), "eight888".to_owned()];
    for (i, password) in accepted.iter().enumerate() {
        let email = format!("ok{i}@example.com");
        app.register(&email, password).await;
        app.login(&email, password).await;
    }
    // A 73-byte attempt must not match the 72-byte password it starts with.
    let status = expect_code(
        client
            .login(realchat_auth::proto::LoginRequest {
                email: "ok0@example.com".into(),
                password: format!("{}x", "A".repeat(72)),
                ..Default::default()
            })
            .await,
        Code::Unauthenticated,
    );
    assert_eq!(status.message(), "invalid email or password");
    app.stop().await;
}

#[tokio::test]
async fn nul_and_control_characters_are_invalid_argument_per_field() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let cases = [
        ("nul\0@example.com", "good password", vec!["email"]),
        ("ctl@example.com\u{1b}", "good password", vec!["email"]),
        ("ok@example.com", "good\0password", vec!["password"]),
        ("ok@example.com", "good\u{7f}password", vec!["password"]),
        ("ok@example.com", "line\nbreak password", vec!["password"]),
        (
            "bad\0@example.com",
            "bad\0password",
            vec!["email", "password"],
        ),
        // Invisible format characters (Cf) would make look-alike accounts.
        (
            "zero\u{200b}width@example.com",
            "good password",
            vec!["email"],
        ),
        ("\u{feff}bom@example.com", "good password", vec!["email"]),
        (
            "rlo\u{202e}moc.elpmaxe@example.com",
            "good password",
            vec!["email"],
        ),
    ];
    for (email, password, fields) in cases {
        let status = expect_code(
            client.register(request(email, password)).await,
            Code::InvalidArgument,
        );
        assert_eq!(violated_fields(&status), fields, "{email:?} / {password:?}");
    }
    assert_eq!(count(&app, "users").await, 0);
    assert_eq!(count(&app, "outbox").await, 0);
    app.stop().await;
}

#[tokio::test]
async fn malformed_emails_are_invalid_argument() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    // RFC 5321 caps the local part at 64 bytes and labels at 63, so the long
    // addresses are long in the domain.
    let address = |last_label: usize| {
        let (b, c, d) = ("b".repeat(63), "c".repeat(63), "d".repeat(last_label));
        format!("{}@{b}.{c}.{d}.com", "a".repeat(64))
    };
    let too_long = address(58);
    assert_eq!(too_long.len(), 255);
    for email in [
        "",
        "   ",
        "not-an-email",
        "a@@example.com",
        "@example.com",
        "Eve <bob@example.com>",
        "\"bob\"@example.com",
        "bob@[127.0.0.1]",
        "bob@localhost",
        &too_long,
    ] {
        let status = expect_code(
            client.register(request(email, "good password")).await,
            Code::InvalidArgument,
        );
        assert_eq!(violated_fields(&status), ["email"], "{email:?}");
    }
    // 254 bytes is the limit and is accepted.
    assert_eq!(address(57).len(), 254);
    app.register(&address(57), "good password").await;
    app.stop().await;
}

#[tokio::test]
async fn common_passwords_and_the_email_itself_are_refused_with_the_reason() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    for (password, reason) in [
        ("password1", "most commonly used"),
        ("Qwerty123", "most commonly used"),
        ("jane.doe@example.com", "email address"),
        ("JANE.DOE", "email address"),
    ] {
        let status = expect_code(
            client
                .register(request("jane.doe@example.com", password))
                .await,
            Code::InvalidArgument,
        );
        let details = tonic_types::StatusExt::get_error_details(&status);
        let violation = &details.bad_request().unwrap().field_violations[0];
        assert_eq!(violation.field, "password");
        assert!(
            violation.description.contains(reason),
            "{password}: {violation:?}"
        );
    }
    assert_eq!(count(&app, "users").await, 0);
    app.register("jane.doe@example.com", "jane's own passphrase")
        .await;
    app.stop().await;
}

#[tokio::test]
async fn an_idna_domain_in_either_spelling_is_one_account() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    app.register("bob@bücher.example", "bob's passphrase").await;
    for variant in ["bob@xn--bcher-kva.example", "BOB@BÜCHER.example"] {
        let status = expect_code(
            client.register(request(variant, "another password")).await,
            Code::AlreadyExists,
        );
        assert_eq!(status.message(), "email already registered");
    }
    let stored: String = sqlx::query_scalar("SELECT email FROM users")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, "bob@bücher.example");
    app.login("bob@xn--bcher-kva.example", "bob's passphrase")
        .await;
    app.stop().await;
}

#[tokio::test]
async fn a_whole_script_look_alike_is_already_registered_but_ascii_neighbours_are_not() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    app.register("apple@example.com", "apple's passphrase")
        .await;
    // All Cyrillic: а р р ӏ е.
    let status = expect_code(
        client
            .register(request("аррӏе@example.com", "another password"))
            .await,
        Code::AlreadyExists,
    );
    assert_eq!(status.message(), "email already registered");
    // The other way round: the look-alike first.
    app.register("аррӏе1@example.com", "a cyrillic passphrase")
        .await;
    expect_code(
        client
            .register(request("apple1@example.com", "another password"))
            .await,
        Code::AlreadyExists,
    );
    // ASCII addresses that differ are different mailboxes.
    app.register("john1@example.com", "john's passphrase").await;
    app.register("johnl@example.com", "johnl's passphrase")
        .await;
    assert_eq!(count(&app, "users").await, 4);
    app.stop().await;
}

#[tokio::test]
async fn a_dot_above_hidden_by_a_soft_dot_is_already_registered() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    app.register("kim@example.org", "kim's passphrase").await;
    app.register("a@kim-lookalike.org", "a's passphrase").await;
    // `KİM` lower-cases to i + U+0307, which renders as `kim`; so does
    // `j` + U+0307 as `j`, in the local part or in a domain label.
    app.register("john@example.org", "john's passphrase").await;
    for look_alike in [
        "KİM@example.org",
        "ki\u{307}m@example.org",
        "a@KİM-lookalike.org",
        "j\u{307}ohn@example.org",
    ] {
        let status = expect_code(
            client
                .register(request(look_alike, "another password"))
                .await,
            Code::AlreadyExists,
        );
        assert_eq!(status.message(), "email already registered", "{look_alike}");
    }
    assert_eq!(count(&app, "users").await, 3);
    app.stop().await;
}

#[tokio::test]
async fn racing_look_alikes_give_one_user_and_never_internal() {
    // Two emails, one key: the race is on the look-alike index.
    race_to_one_user(["apple@example.com", "аррӏе@example.com"]).await;
}

#[tokio::test]
async fn invisible_numeric_and_mixed_script_emails_are_refused_on_the_email_field() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let invisible = "email must not contain invisible or separator characters";
    let invalid = "email is not a valid address";
    let mixed = "email must not mix scripts, such as Latin and Cyrillic, within one part";
    let mut cases: Vec<(String, &str)> = [
        '\u{3164}', '\u{ffa0}', '\u{115f}', '\u{fe0f}', '\u{34f}', '\u{17b4}', '\u{2800}',
        '\u{2028}', '\u{2029}',
    ]
    .into_iter()
    .map(|c| (format!("in{c}visible@example.com"), invisible))
    .collect();
    cases.extend([
        ("ned@127.0.0.1".to_owned(), invalid),
        ("pаypal@example.com".to_owned(), mixed),
    ]);
    for (email, description) in cases {
        let status = expect_code(
            client.register(request(&email, "good password")).await,
            Code::InvalidArgument,
        );
        assert_eq!(violated_fields(&status), ["email"], "{email:?}");
        let details = tonic_types::StatusExt::get_error_details(&status);
        let violation = &details.bad_request().unwrap().field_violations[0];
        assert_eq!(violation.description, description, "{email:?}");
    }
    assert_eq!(count(&app, "users").await, 0);
    app.stop().await;
}
