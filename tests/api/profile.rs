//! The example Profile consumer end to end: Register over gRPC, the relay,
//! the consumer, one profile row — and still one after a redelivery.

use std::time::Duration;

use realchat_profile_consumer::ProfileConfig;
use sqlx::PgPool;
use tokio::sync::oneshot;
use uuid::Uuid;

use realchat_testkit::app::TestApp;
use realchat_testkit::broker::{bootstrap_servers, relay_config};
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
    let (stop_relay, relay_stopped) = oneshot::channel::<()>();
    let relay = tokio::spawn(realchat_relay::run(
        relay_config(&app.database_url, &prefix),
        async {
            let _ = relay_stopped.await;
        },
    ));
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

    stop_relay.send(()).unwrap();
    relay.await.unwrap().unwrap();
    app.stop().await;
}
