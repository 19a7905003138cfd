//! The example Profile consumer end to end: Register over gRPC, the relay,
//! the consumer, one profile row — and still one after a redelivery; and
//! the profile gone after the user's `UserDeleted`, for good, even when the
//! whole history is delivered again.

use std::time::Duration;

use realchat_auth::proto::DeleteAccountRequest;
use realchat_auth::proto::account_api_client::AccountApiClient;
use realchat_profile_consumer::ProfileConfig;
use sqlx::PgPool;
use tokio::sync::oneshot;
use uuid::Uuid;

use realchat_testkit::app::{TestApp, bearer};
use realchat_testkit::broker::{InProcessRelay, bootstrap_servers};
use realchat_testkit::db::create_database;
use realchat_testkit::wait::eventually;

/// Runs the consumer in `group` until the returned sender fires.
fn consume(
    database_url: &str,
    topic: &str,
    group: &str,
) -> (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let config = ProfileConfig {
        database_url: database_url.to_owned(),
        kafka_bootstrap_servers: bootstrap_servers(),
        topic: topic.to_owned(),
        group_id: group.to_owned(),
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(realchat_profile_consumer::run(config, async {
        let _ = stopped.await;
    }));
    (stop, task)
}

/// Deliveries of `event_id` recorded in the inbox, once there are `at_least`.
async fn wait_deliveries(pool: &PgPool, event_id: Uuid, at_least: i32) {
    eventually(
        Duration::from_secs(60),
        "the consumer to handle the event",
        || async {
            let deliveries: Option<i32> =
                sqlx::query_scalar("SELECT deliveries FROM inbox WHERE event_id = $1")
                    .bind(event_id)
                    .fetch_optional(pool)
                    .await
                    .ok()
                    .flatten();
            deliveries.filter(|d| *d >= at_least).map(|_| ())
        },
    )
    .await;
}

#[tokio::test]
async fn one_profile_per_user_even_after_redelivery() {
    let app = TestApp::spawn().await;
    let prefix = format!("rc-test-{}.", Uuid::new_v4().simple());
    let topic = format!("{prefix}user");
    let relay = InProcessRelay::start(&app.database_url, &prefix);
    let user_id = app.register("pat@example.com", "pat's password").await;
    let event_id: Uuid = sqlx::query_scalar("SELECT id FROM outbox")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    app.wait_all_published(Duration::from_secs(30)).await;

    let profile_db = create_database().await;
    let (stop, consumer) = consume(&profile_db, &topic, &format!("profile-{}", Uuid::new_v4()));
    // The consumer creates its tables at start; the pool may come first.
    let pool = PgPool::connect(&profile_db).await.unwrap();
    wait_deliveries(&pool, event_id, 1).await;
    stop.send(()).unwrap();
    consumer.await.unwrap().expect("consumer stops cleanly");

    // Forced redelivery: a new consumer group reads the topic from the start.
    let (stop, consumer) = consume(&profile_db, &topic, &format!("profile-{}", Uuid::new_v4()));
    wait_deliveries(&pool, event_id, 2).await;
    stop.send(()).unwrap();
    consumer.await.unwrap().expect("consumer stops cleanly");

    let profiles: Vec<(Uuid, String)> = sqlx::query_as("SELECT user_id, email FROM profiles")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(profiles, [(user_id, "pat@example.com".to_owned())]);

    relay.stop().await.unwrap();
    app.stop().await;
}

/// The outbox id of `user`'s event of `event_type` (the only one).
async fn event_id(pool: &PgPool, user: Uuid, event_type: &str) -> Uuid {
    sqlx::query_scalar("SELECT id FROM outbox WHERE aggregateid = $1 AND type = $2")
        .bind(user.to_string())
        .bind(event_type)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn profiles(pool: &PgPool) -> Vec<(Uuid, String)> {
    sqlx::query_as("SELECT user_id, email FROM profiles ORDER BY email")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_deleted_users_profile_is_erased_and_a_redelivery_does_not_bring_it_back() {
    let app = TestApp::spawn().await;
    let prefix = format!("rc-test-{}.", Uuid::new_v4().simple());
    let topic = format!("{prefix}user");
    let relay = InProcessRelay::start(&app.database_url, &prefix);
    let sam = app.register("sam@example.com", "sam's password").await;
    let kim = app.register("kim@example.com", "kim's password").await;
    let sam_registered = event_id(&app.pool, sam, "UserRegistered").await;
    let kim_registered = event_id(&app.pool, kim, "UserRegistered").await;

    let profile_db = create_database().await;
    let (stop, consumer) = consume(&profile_db, &topic, &format!("profile-{}", Uuid::new_v4()));
    let pool = PgPool::connect(&profile_db).await.unwrap();
    wait_deliveries(&pool, sam_registered, 1).await;
    wait_deliveries(&pool, kim_registered, 1).await;
    assert_eq!(profiles(&pool).await.len(), 2);

    // A SessionStarted, then the UserDeleted, on sam's key, so in that
    // order in one partition: once the deletion is handled, the consumer
    // has gone past the session event.
    let login = app.login("sam@example.com", "sam's password").await;
    let started = event_id(&app.pool, sam, "SessionStarted").await;
    AccountApiClient::new(app.channel().await)
        .delete_account(bearer(
            DeleteAccountRequest {
                password: "sam's password".into(),
            },
            &login.access_token,
        ))
        .await
        .unwrap();
    let deleted = event_id(&app.pool, sam, "UserDeleted").await;
    wait_deliveries(&pool, deleted, 1).await;
    assert_eq!(profiles(&pool).await, [(kim, "kim@example.com".to_owned())]);
    let inbox: Vec<Uuid> = sqlx::query_scalar("SELECT event_id FROM inbox")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(
        !inbox.contains(&started),
        "an event type the consumer does not act on is skipped, not recorded"
    );
    stop.send(()).unwrap();
    consumer.await.unwrap().expect("consumer stops cleanly");

    // Forced redelivery of the whole history: sam's UserRegistered arrives
    // again before the UserDeleted, and is recognised as a duplicate.
    let (stop, consumer) = consume(&profile_db, &topic, &format!("profile-{}", Uuid::new_v4()));
    wait_deliveries(&pool, deleted, 2).await;
    stop.send(()).unwrap();
    consumer.await.unwrap().expect("consumer stops cleanly");
    assert_eq!(profiles(&pool).await, [(kim, "kim@example.com".to_owned())]);
    let sam_deliveries: i32 =
        sqlx::query_scalar("SELECT deliveries FROM inbox WHERE event_id = $1")
            .bind(sam_registered)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(sam_deliveries, 2);

    relay.stop().await.unwrap();
    app.stop().await;
}
