use std::time::Duration;

use rdkafka::Message as _;
use rdkafka::message::Headers as _;
use realchat_testkit::app::{TestApp, test_config};
use realchat_testkit::broker::{bootstrap_servers, consumer, relay_config, relay_config_on};
use realchat_testkit::db::create_database;
use tokio::sync::oneshot;
use uuid::Uuid;

#[tokio::test]
async fn registered_user_reaches_kafka_with_key_and_cloudevents_headers() {
    // The relay starts first, on a database without the outbox table yet,
    // and waits for the server's migrations to create it.
    let database_url = create_database().await;
    let prefix = format!("rc-test-{}.", Uuid::new_v4().simple());
    let topic = format!("{prefix}user");
    let (stop_relay, relay_stopped) = oneshot::channel::<()>();
    let relay = tokio::spawn(realchat_relay::run(
        relay_config(&database_url, &prefix),
        async {
            let _ = relay_stopped.await;
        },
    ));

    let app = TestApp::start(test_config(&database_url), database_url).await;
    let user_id = app.register("grace@example.com", "grace's password").await;
    let event_id: Uuid = sqlx::query_scalar("SELECT id FROM outbox")
        .fetch_one(&app.pool)
        .await
        .unwrap();

    let consumer = consumer(&topic).await;
    let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .expect("an event within 30 s")
        .expect("a message");
    assert_eq!(message.key(), Some(user_id.to_string().as_bytes()));
    let headers = message.headers().expect("CloudEvents headers");
    let header = |name: &str| {
        headers
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8(v.to_vec()).unwrap())
    };
    assert_eq!(header("ce_id"), Some(event_id.to_string()));
    assert_eq!(header("ce_type").as_deref(), Some("UserRegistered"));
    assert_eq!(header("ce_specversion").as_deref(), Some("1.0"));
    assert_eq!(header("ce_source").as_deref(), Some("/realchat/auth"));
    assert_eq!(header("content-type").as_deref(), Some("application/json"));
    assert!(header("ce_time").is_some_and(|t| chrono::DateTime::parse_from_rfc3339(&t).is_ok()));
    let payload: serde_json::Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
    assert_eq!(payload["event_id"], event_id.to_string());
    assert_eq!(payload["user_id"], user_id.to_string());
    assert_eq!(payload["email"], "grace@example.com");

    app.wait_all_published(Duration::from_secs(10)).await;

    stop_relay.send(()).unwrap();
    relay.await.unwrap().expect("relay exits cleanly");
    app.stop().await;
}

#[tokio::test]
async fn an_idle_relay_wakes_on_notify_and_publishes_every_registration() {
    let app = TestApp::spawn().await;
    let prefix = format!("rc-test-{}.", Uuid::new_v4().simple());
    let topic = format!("{prefix}user");
    // A poll interval far beyond the test's deadlines: only NOTIFY can wake
    // the relay in time.
    let config = relay_config_on(
        &bootstrap_servers(),
        &app.database_url,
        &prefix,
        Duration::from_secs(600),
    );
    let (stop_relay, relay_stopped) = oneshot::channel::<()>();
    let relay = tokio::spawn(realchat_relay::run(config, async {
        let _ = relay_stopped.await;
    }));
    let consumer = consumer(&topic).await;

    let mut expected = std::collections::HashMap::new();
    for i in 0..5 {
        let email = format!("user{i}@example.com");
        expected.insert(
            app.register(&email, "a good password").await.to_string(),
            email,
        );
    }
    let mut seen = std::collections::HashMap::new();
    while seen.len() < expected.len() {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("events arrive without waiting for a poll")
            .expect("a message");
        let key = String::from_utf8(message.key().unwrap().to_vec()).unwrap();
        let payload: serde_json::Value =
            serde_json::from_slice(message.payload().unwrap()).unwrap();
        assert_eq!(payload["user_id"], key.as_str(), "key is the aggregate id");
        seen.insert(key, payload["email"].as_str().unwrap().to_owned());
    }
    assert_eq!(seen, expected);

    stop_relay.send(()).unwrap();
    relay.await.unwrap().expect("relay exits cleanly");
    assert_eq!(app.unpublished().await, 0);
    app.stop().await;
}

/// A claim reads its batch and no more, however large the backlog, even
/// where the planner has no statistics for the table: on the relay's connections, with
/// a custom plan and with the generic plan a reused prepared statement may
/// switch to, no scan returns more than a batch, none reads rows it then
/// drops (the batch in flight), and nothing is sorted. (Reading every
/// unpublished row per batch made draining a backlog quadratic.) The claim
/// still takes a late commit below the batch in flight first.
#[tokio::test]
async fn a_claim_reads_one_batch_whatever_the_backlog() {
    let database_url = create_database().await;
    let pool = realchat_relay::connect(&database_url).await.unwrap();
    realchat_auth::store::MIGRATOR.run(&pool).await.unwrap();
    let mut conn = pool.acquire().await.unwrap();
    // 5,000 published rows, then a backlog of 15,000, in a table without
    // statistics (autovacuum off, so it cannot analyze it midway): the
    // planner then guesses 20 unpublished rows.
    sqlx::raw_sql(
        "ALTER TABLE outbox SET (autovacuum_enabled = false);
         INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload)
         SELECT gen_random_uuid(), 'user', i::text, 'UserRegistered', '{}'
         FROM generate_series(1, 5000) AS i;
         UPDATE outbox SET published_at = now();
         INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload)
         SELECT gen_random_uuid(), 'user', i::text, 'UserRegistered', '{}'
         FROM generate_series(5001, 20000) AS i;
         -- A late commit: a row below the batch in flight, still unpublished.
         UPDATE outbox SET published_at = NULL WHERE seq = 3000;",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    sqlx::raw_sql(&format!(
        "PREPARE claim (bigint, bigint, bigint) AS {}",
        realchat_relay::CLAIM
    ))
    .execute(&mut *conn)
    .await
    .unwrap();

    let batch = 500_i64;
    // Nothing in flight; then the first batch (5001..=5500) in flight.
    for (lo, hi, first_above) in [(0, -1, 5001), (5001, 5500, 5501)] {
        let claimed: Vec<i64> = sqlx::query_scalar(&format!(
            "SELECT seq FROM ({}) AS claim",
            realchat_relay::CLAIM
        ))
        .bind(batch)
        .bind(lo)
        .bind(hi)
        .fetch_all(&mut *conn)
        .await
        .unwrap();
        let expected: Vec<i64> = std::iter::once(3000)
            .chain(first_above..first_above + batch - 1)
            .collect();
        assert_eq!(claimed, expected, "claimed ({lo}..{hi})");

        for mode in ["force_custom_plan", "force_generic_plan"] {
            sqlx::raw_sql(&format!("SET plan_cache_mode = {mode}"))
                .execute(&mut *conn)
                .await
                .unwrap();
            let plan: serde_json::Value = sqlx::query_scalar(&format!(
                "EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE claim ({batch}, {lo}, {hi})"
            ))
            .fetch_one(&mut *conn)
            .await
            .unwrap();
            let mut nodes = Vec::new();
            plan_nodes(&plan[0]["Plan"], &mut nodes);
            let case = format!("{mode}, {lo}..{hi}: {plan}");
            assert_eq!(
                plan[0]["Plan"]["Actual Rows"], batch,
                "a full batch; {case}"
            );
            for node in &nodes {
                let kind = node["Node Type"].as_str().unwrap();
                assert_ne!(kind, "Sort", "the claim sorts; {case}");
                let skipped = node["Rows Removed by Filter"].as_i64().unwrap_or(0);
                assert_eq!(skipped, 0, "{kind} read rows it did not claim; {case}");
                let rows = node["Actual Rows"].as_i64().unwrap();
                assert!(rows <= batch, "{kind} returned {rows} rows; {case}");
            }
            assert!(
                nodes.iter().any(|n| n["Node Type"] == "Index Scan"),
                "the claim reads the unpublished-rows index; {case}"
            );
        }
    }
}

/// Every node of an `EXPLAIN (FORMAT JSON)` plan, depth first.
fn plan_nodes<'a>(node: &'a serde_json::Value, out: &mut Vec<&'a serde_json::Value>) {
    out.push(node);
    for child in node["Plans"].as_array().into_iter().flatten() {
        plan_nodes(child, out);
    }
}
