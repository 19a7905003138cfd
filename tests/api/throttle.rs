//! Login throttling per account and per client, shared by replicas through
//! PostgreSQL, with google.rpc.RetryInfo in the refusal.

use std::time::Duration;

use realchat_auth::proto::LoginRequest;
use realchat_auth::proto::auth_api_client::AuthApiClient;
use sqlx::{Connection as _, PgConnection};
use tonic::transport::Channel;
use tonic::{Code, Request};
use tonic_types::StatusExt as _;

use crate::expect_code;
use realchat_testkit::app::{TestApp, test_config};
use realchat_testkit::db::create_database;
use realchat_testkit::wait::eventually;

async fn login(
    client: &mut AuthApiClient<Channel>,
    email: &str,
    password: &str,
    from: Option<&str>,
) -> Result<(), tonic::Status> {
    login_forwarded(client, email, password, from.as_slice()).await
}

/// A login whose `x-forwarded-for` header is sent as `lines`, each its own
/// HTTP/2 header field, in order (as a proxy that adds a line sends them).
async fn login_forwarded(
    client: &mut AuthApiClient<Channel>,
    email: &str,
    password: &str,
    lines: &[&str],
) -> Result<(), tonic::Status> {
    let mut request = Request::new(LoginRequest {
        email: email.into(),
        password: password.into(),
        ..Default::default()
    });
    for line in lines {
        request
            .metadata_mut()
            .append("x-forwarded-for", line.parse().unwrap());
    }
    client.login(request).await.map(|_| ())
}

/// Asserts a throttling refusal and returns its retry delay.
#[track_caller]
fn throttled(result: Result<(), tonic::Status>) -> Duration {
    let status = expect_code(result, Code::ResourceExhausted);
    assert_eq!(status.message(), "too many failed logins, retry later");
    status
        .get_error_details()
        .retry_info()
        .and_then(|info| info.retry_delay)
        .expect("google.rpc.RetryInfo with a delay")
}

#[tokio::test]
async fn an_account_is_blocked_after_failures_and_a_success_resets_it() {
    let database_url = create_database().await;
    let mut config = test_config(&database_url);
    config.throttle.login_max_failures_per_account = 3;
    let app = TestApp::start(config.clone(), database_url.clone()).await;
    let mut client = app.client.clone();
    app.register("ivy@example.com", "ivy's password").await;

    for _ in 0..2 {
        expect_code(
            login(&mut client, "ivy@example.com", "wrong guess", None).await,
            Code::Unauthenticated,
        );
    }
    // A success resets the account's count ...
    login(&mut client, "IVY@example.com", "ivy's password", None)
        .await
        .unwrap();
    for _ in 0..2 {
        expect_code(
            login(&mut client, "ivy@example.com", "wrong guess", None).await,
            Code::Unauthenticated,
        );
    }
    login(&mut client, "ivy@example.com", "ivy's password", None)
        .await
        .unwrap();
    // ... and three failures in a row block it, the right password too.
    for _ in 0..3 {
        expect_code(
            login(&mut client, "ivy@example.com", "wrong guess", None).await,
            Code::Unauthenticated,
        );
    }
    let delay = throttled(login(&mut client, "ivy@example.com", "ivy's password", None).await);
    assert!(
        delay > Duration::ZERO && delay <= Duration::from_secs(900),
        "{delay:?}"
    );
    // Unknown accounts are counted alike, so the block reveals nothing.
    for _ in 0..3 {
        expect_code(
            login(&mut client, "nobody@example.com", "any guess", None).await,
            Code::Unauthenticated,
        );
    }
    throttled(login(&mut client, "nobody@example.com", "any guess", None).await);

    // Another replica on the same database agrees.
    let replica = TestApp::start(config, database_url).await;
    let mut other = replica.client.clone();
    throttled(login(&mut other, "ivy@example.com", "ivy's password", None).await);
    replica.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn a_client_is_blocked_across_accounts_by_its_forwarded_address() {
    let app = TestApp::spawn_with(|c| {
        c.throttle.login_max_failures_per_client = 3;
        c.throttle.client_ip_header = Some("x-forwarded-for".into());
    })
    .await;
    let mut client = app.client.clone();
    app.register("jo@example.com", "jo's password").await;
    // The proxy appends the address it saw; what comes before is the
    // client's to forge, so varying it does not help.
    for i in 0..3 {
        let forwarded = format!("198.51.100.{i}, 203.0.113.7");
        let email = format!("victim{i}@example.com");
        let result = login(&mut client, &email, "guess", Some(&forwarded)).await;
        expect_code(result, Code::Unauthenticated);
    }
    let base = client.clone();
    let jo = |from: Option<&'static str>| {
        let mut client = base.clone();
        async move { login(&mut client, "jo@example.com", "jo's password", from).await }
    };
    throttled(jo(Some("203.0.113.7")).await);
    // The same address in another spelling is the same client.
    throttled(jo(Some("[::ffff:203.0.113.7]:443")).await);
    // Another client is not blocked.
    jo(Some("203.0.113.8")).await.unwrap();
    // A value that is no address counts against the TCP peer, and a huge
    // one is no way around the count (it once failed the insert).
    for i in 0..3 {
        let junk = format!("{}{i}", "x".repeat(3000));
        let email = format!("other{i}@example.com");
        let result = login(&mut client, &email, "guess", Some(&junk)).await;
        expect_code(result, Code::Unauthenticated);
    }
    throttled(jo(None).await);
    app.stop().await;
}

#[tokio::test]
async fn a_forged_forwarded_line_before_the_proxys_is_not_read() {
    let app = TestApp::spawn_with(|c| {
        c.throttle.login_max_failures_per_client = 3;
        c.throttle.client_ip_header = Some("x-forwarded-for".into());
    })
    .await;
    let mut client = app.client.clone();
    app.register("kim@example.com", "kim's password").await;
    // The client sends a line of its own, different each time; the proxy
    // (HAProxy adds a line rather than appending) sends the address it saw
    // in a second field. Only the proxy's entry may count.
    for i in 0..3 {
        let forged = format!("198.51.100.{i}");
        let email = format!("target{i}@example.com");
        let lines = [forged.as_str(), "203.0.113.9"];
        let result = login_forwarded(&mut client, &email, "guess", &lines).await;
        expect_code(result, Code::Unauthenticated);
    }
    let lines = ["192.0.2.200", "203.0.113.9"];
    throttled(login_forwarded(&mut client, "kim@example.com", "kim's password", &lines).await);
    // Nor does a forged line name someone else's address into a block:
    // 192.0.2.200 itself was never counted.
    login_forwarded(
        &mut client,
        "kim@example.com",
        "kim's password",
        &["192.0.2.200"],
    )
    .await
    .unwrap();
    app.stop().await;
}

#[tokio::test]
async fn with_two_trusted_hops_the_client_is_the_entry_the_outer_proxy_added() {
    let app = TestApp::spawn_with(|c| {
        c.throttle.login_max_failures_per_client = 2;
        c.throttle.client_ip_header = Some("x-forwarded-for".into());
        c.throttle.trusted_proxy_hops = 2;
    })
    .await;
    let mut client = app.client.clone();
    app.register("lee@example.com", "lee's password").await;
    // forged, client (added by the CDN), CDN edge (added by the load
    // balancer): the client is 2 entries from the end.
    for i in 0..2 {
        let lines = [
            format!("10.0.0.{i}, 203.0.113.20"),
            format!("198.51.100.{i}"),
        ];
        let lines = [lines[0].as_str(), lines[1].as_str()];
        let email = format!("someone{i}@example.com");
        let result = login_forwarded(&mut client, &email, "guess", &lines).await;
        expect_code(result, Code::Unauthenticated);
    }
    let lines = ["203.0.113.20", "198.51.100.77"];
    throttled(login_forwarded(&mut client, "lee@example.com", "lee's password", &lines).await);
    let lines = ["203.0.113.21", "198.51.100.0"];
    login_forwarded(&mut client, "lee@example.com", "lee's password", &lines)
        .await
        .unwrap();
    app.stop().await;
}

#[tokio::test]
async fn a_block_ends_with_its_window() {
    let app = TestApp::spawn_with(|c| {
        c.throttle.login_max_failures_per_account = 2;
        c.throttle.login_failure_window = Duration::from_secs(1);
    })
    .await;
    let mut client = app.client.clone();
    app.register("kai@example.com", "kai's password").await;
    for _ in 0..2 {
        expect_code(
            login(&mut client, "kai@example.com", "wrong guess", None).await,
            Code::Unauthenticated,
        );
    }
    throttled(login(&mut client, "kai@example.com", "kai's password", None).await);
    eventually(Duration::from_secs(10), "the window to end", || {
        let mut client = client.clone();
        async move {
            login(&mut client, "kai@example.com", "kai's password", None)
                .await
                .ok()
        }
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn parallel_guesses_cannot_race_past_the_limit() {
    let app = TestApp::spawn_with(|c| c.throttle.login_max_failures_per_account = 5).await;
    app.register("lee@example.com", "lee's password").await;
    let mut calls = Vec::new();
    for i in 0..20 {
        let mut client = app.new_client().await;
        calls.push(tokio::spawn(async move {
            login(&mut client, "lee@example.com", &format!("guess {i}"), None).await
        }));
    }
    let (mut checked, mut refused) = (0, 0);
    for call in calls {
        match call.await.unwrap() {
            Err(s) if s.code() == Code::Unauthenticated => checked += 1,
            Err(s) if s.code() == Code::ResourceExhausted => refused += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    // Each attempt is counted before its password is checked: exactly the
    // limit's worth of guesses reach bcrypt, however many race.
    assert_eq!((checked, refused), (5, 15));
    let mut client = app.client.clone();
    throttled(login(&mut client, "lee@example.com", "lee's password", None).await);
    app.stop().await;
}

#[tokio::test]
async fn a_full_bcrypt_queue_refuses_at_once_with_retry_info() {
    // One bcrypt thread and no queue: while one login hashes, the others
    // are refused at once rather than waiting.
    let database_url = create_database().await;
    let mut config = test_config(&database_url);
    config.passwords.bcrypt_cost = 10;
    config.passwords.bcrypt_threads = 1;
    config.passwords.bcrypt_queue = 0;
    // Every attempt is counted while in flight: leave room for all eight.
    config.throttle.login_max_failures_per_account = 10;
    let app = TestApp::start(config, database_url.clone()).await;
    app.register("uma@example.com", "uma's password").await;
    let calls = (0..8).map(|_| {
        let mut client = app.client.clone();
        async move { login(&mut client, "uma@example.com", "uma's password", None).await }
    });
    let results = futures::future::join_all(calls).await;
    let mut busy = 0;
    for result in results {
        match result {
            Ok(()) => {}
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert_eq!(status.message(), "server busy, retry later");
                let delay = status
                    .get_error_details()
                    .retry_info()
                    .and_then(|i| i.retry_delay);
                assert_eq!(delay, Some(Duration::from_secs(1)));
                busy += 1;
            }
        }
    }
    assert!(
        busy >= 1,
        "eight logins at once on one thread with no queue: some must be refused"
    );
    // A refusal for load is not a failed login: nothing stays counted.
    let mut db = PgConnection::connect(&database_url).await.unwrap();
    let counted: i64 =
        sqlx::query_scalar("SELECT coalesce(sum(failures), 0)::int8 FROM login_throttle")
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(counted, 0);
    // Refused, not broken: the next login goes through.
    login(
        &mut app.client.clone(),
        "uma@example.com",
        "uma's password",
        None,
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn concurrent_logins_of_one_account_and_client_never_fail_internally() {
    // Each login counts an attempt (account and client rows) and a success
    // takes it back; rows locked in different orders deadlocked (INTERNAL).
    let app = TestApp::spawn_with(|c| {
        c.throttle.login_max_failures_per_account = 1000;
        c.throttle.login_max_failures_per_client = 1000;
    })
    .await;
    app.register("vic@example.com", "vic's password").await;
    for _ in 0..5 {
        let calls = (0..24).map(|i| {
            let mut client = app.client.clone();
            // A third of them fail, so counts go up and down at once.
            let password = if i % 3 == 0 {
                "wrong guess"
            } else {
                "vic's password"
            };
            async move { login(&mut client, "vic@example.com", password, None).await }
        });
        for (i, result) in futures::future::join_all(calls)
            .await
            .into_iter()
            .enumerate()
        {
            match result {
                Ok(()) => assert_ne!(i % 3, 0, "a wrong password logged in"),
                Err(status) => {
                    assert_eq!(status.code(), Code::Unauthenticated, "call {i}: {status:?}");
                    assert_eq!(i % 3, 0, "call {i} with the right password refused");
                }
            }
        }
    }
}

/// The sum of every throttle count in `database_url`.
async fn counted(database_url: &str) -> i64 {
    let mut db = PgConnection::connect(database_url).await.unwrap();
    sqlx::query_scalar("SELECT coalesce(sum(failures), 0)::int8 FROM login_throttle")
        .fetch_one(&mut db)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_burst_of_correct_logins_leaves_nothing_counted() {
    // One bcrypt thread: eight logins wait together, more than the account
    // limit of five, so some are refused while the others are in flight.
    let database_url = create_database().await;
    let mut config = test_config(&database_url);
    config.passwords.bcrypt_cost = 10;
    config.passwords.bcrypt_threads = 1;
    let app = TestApp::start(config, database_url.clone()).await;
    app.register("wes@example.com", "wes's password").await;
    let calls = (0..8).map(|_| {
        let mut client = app.client.clone();
        async move { login(&mut client, "wes@example.com", "wes's password", None).await }
    });
    let mut refused = 0;
    for result in futures::future::join_all(calls).await {
        if let Err(status) = result {
            throttled(Err(status));
            refused += 1;
        }
    }
    assert!(refused >= 1, "eight at once over a limit of five");
    // No password was wrong: neither the account nor the client keeps a
    // count, so the refused ones do not pile up against the client.
    assert_eq!(counted(&database_url).await, 0);
    login(
        &mut app.client.clone(),
        "wes@example.com",
        "wes's password",
        None,
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_blocked_client_trying_new_addresses_leaves_no_rows() {
    let app = TestApp::spawn_with(|c| c.throttle.login_max_failures_per_client = 3).await;
    let mut client = app.client.clone();
    for i in 0..3 {
        let email = format!("guess{i}@example.com");
        expect_code(
            login(&mut client, &email, "guess", None).await,
            Code::Unauthenticated,
        );
    }
    let rows = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM login_throttle")
            .fetch_one(&app.pool)
            .await
            .unwrap()
    };
    assert_eq!(rows().await, 4, "three accounts and the client");
    // Blocked, the client sprays addresses it never tried: every one is
    // refused, and none leaves state behind (each once left a row).
    for i in 0..300 {
        let email = format!("new{i}@example.com");
        throttled(login(&mut client, &email, "guess", None).await);
    }
    assert_eq!(rows().await, 4, "refused attempts created rows");
    assert_eq!(counted(&app.database_url).await, 6, "three failures, twice");
    app.stop().await;
}

#[tokio::test]
async fn a_login_that_times_out_is_not_counted_as_a_failure() {
    let database_url = create_database().await;
    let first = TestApp::start(test_config(&database_url), database_url.clone()).await;
    first.register("xia@example.com", "xia's password").await;
    // A replica with a higher cost upgrades the hash at login, which at cost
    // 15 outlasts its 1 s request timeout: the client gets UNAVAILABLE and
    // no password verdict.
    let mut config = test_config(&database_url);
    config.passwords.bcrypt_cost = 15;
    config.listen.request_timeout = Duration::from_secs(1);
    let slow = TestApp::start(config, database_url.clone()).await;
    let result = login(
        &mut slow.client.clone(),
        "xia@example.com",
        "xia's password",
        None,
    )
    .await;
    let status = expect_code(result, Code::Unavailable);
    assert_eq!(status.message(), "request timed out, retry later");
    // The attempt was counted before bcrypt; unanswered, it is taken back.
    eventually(
        Duration::from_secs(10),
        "the attempt to be taken back",
        || {
            let url = database_url.clone();
            async move { (counted(&url).await == 0).then_some(()) }
        },
    )
    .await;
}
