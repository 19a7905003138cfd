//! The relay's guarantees under faults, with the real `realchat-relay`
//! binary, the real broker and PostgreSQL: no loss, no skipped rows, per-key
//! order, duplicates only with the same ce_id, failover, retention, SIGTERM.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rdkafka::consumer::{Consumer as _, StreamConsumer};
use uuid::Uuid;

use realchat_testkit::app::TestApp;
use realchat_testkit::broker::{
    Broker, Event, bootstrap_servers, collect, consumer, consumer_on, partitions,
};
use realchat_testkit::http::{http_get, metric};
use realchat_testkit::outbox::insert_events;
use realchat_testkit::process::{Process, Signal};
use realchat_testkit::wait::eventually;

fn prefix() -> String {
    format!("rc-test-{}.", Uuid::new_v4().simple())
}

/// Messages the broker holds on `topic` (the sum of its partitions' high
/// watermarks).
fn messages_on(consumer: &StreamConsumer, topic: &str) -> i64 {
    let partitions = partitions(consumer, topic).expect("the topic exists");
    (0..partitions)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(5))
                .unwrap()
                .1
        })
        .sum()
}

/// Rows marked published, once no statement of another connection (the
/// relay's) is still running in the test's database.
async fn settled_marked(app: &TestApp, total: i64) -> i64 {
    eventually(
        Duration::from_secs(10),
        "the relay's statements to end",
        || async {
            let running: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND state = 'active' AND pid <> pg_backend_pid()",
            )
            .fetch_one(&app.pool)
            .await
            .unwrap();
            (running == 0).then_some(())
        },
    )
    .await;
    total - app.unpublished().await
}

fn distinct_ids(events: &[Event]) -> HashSet<Uuid> {
    events.iter().map(|e| e.ce_id).collect()
}

/// Every duplicate carries the payload of its first copy (same ce_id, same
/// event), and per key the first copies arrive in `n` order.
fn assert_duplicates_and_per_key_order(events: &[Event]) {
    let mut first: HashMap<Uuid, &Event> = HashMap::new();
    let mut last_n: HashMap<&str, i64> = HashMap::new();
    for e in events {
        if let Some(original) = first.get(&e.ce_id) {
            assert_eq!(
                original.payload, e.payload,
                "a duplicate with the same ce_id differs"
            );
            assert_eq!(original.key, e.key);
            continue;
        }
        first.insert(e.ce_id, e);
        let n = e.payload["n"].as_i64().unwrap();
        if let Some(prev) = last_n.insert(&e.key, n) {
            assert!(n > prev, "key {} went from n={prev} to n={n}", e.key);
        }
    }
}

#[tokio::test]
async fn broker_down_rows_wait_unmarked_and_all_arrive_when_it_returns() {
    let mut broker = Broker::start().await;
    let app = TestApp::spawn().await;
    let prefix = prefix();
    let topic = format!("{prefix}user");
    let relay = Process::relay(&app.database_url, &broker.bootstrap(), &prefix, &[]);
    let first = app.register("before@example.com", "a good password").await;
    app.wait_all_published(Duration::from_secs(30)).await;

    broker.stop().await;
    let mut users = HashSet::from([first.to_string()]);
    for i in 0..5 {
        let id = app
            .register(&format!("down{i}@example.com"), "a good password")
            .await;
        users.insert(id.to_string());
    }
    // The relay has tried and failed (its delivery timeout is 3 s) ...
    relay
        .wait_log("batch failed", Duration::from_secs(30))
        .await;
    // ... and marked nothing.
    assert_eq!(app.unpublished().await, 5);

    broker.resume().await;
    app.wait_all_published(Duration::from_secs(60)).await;
    let consumer = consumer_on(&broker.bootstrap(), &topic).await;
    let events = collect(&consumer, Duration::from_secs(30), |events| {
        events.iter().map(|e| e.key.clone()).collect::<HashSet<_>>() == users
    })
    .await;
    let ids: HashSet<Uuid> = sqlx::query_scalar("SELECT id FROM outbox")
        .fetch_all(&app.pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(distinct_ids(&events), ids);
    assert_eq!(relay.terminate().await, Some(0));
    app.stop().await;
}

#[tokio::test]
async fn a_row_committed_after_later_rows_is_still_published() {
    let app = TestApp::spawn().await;
    let prefix = prefix();
    let topic = format!("{prefix}user");
    let relay = Process::relay(&app.database_url, &bootstrap_servers(), &prefix, &[]);

    // A transaction takes the lower seq and stays open ...
    let mut late = app.pool.begin().await.unwrap();
    let late_id: Uuid = sqlx::query_scalar(
        "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload)
         VALUES (gen_random_uuid(), 'user', 'late', 'TestEvent', '{}') RETURNING id",
    )
    .fetch_one(&mut *late)
    .await
    .unwrap();
    // ... while later rows commit and are published past it.
    app.register("early@example.com", "a good password").await;
    app.wait_all_published(Duration::from_secs(30)).await;
    let (late_seq, max_seq): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT seq FROM outbox WHERE id = $1), (SELECT max(seq) FROM outbox)",
    )
    .bind(late_id)
    .fetch_one(&mut *late)
    .await
    .unwrap();
    assert!(
        late_seq < max_seq,
        "the open transaction holds the lower seq"
    );

    late.commit().await.unwrap();
    app.wait_all_published(Duration::from_secs(30)).await;
    let consumer = consumer(&topic).await;
    collect(&consumer, Duration::from_secs(30), |events| {
        events.iter().any(|e| e.ce_id == late_id)
    })
    .await;
    assert_eq!(relay.terminate().await, Some(0));
    app.stop().await;
}

#[tokio::test]
async fn sigkill_mid_batch_then_restart_loses_nothing_and_keeps_per_key_order() {
    let app = TestApp::spawn().await;
    let prefix = prefix();
    let topic = format!("{prefix}user");
    let total = 20_000;
    let ids = insert_events(&app.pool, 10, total).await;
    let env = [("RELAY_BATCH_SIZE", "1000")];
    let relay = Process::relay(&app.database_url, &bootstrap_servers(), &prefix, &env);
    let watcher = consumer_on(&bootstrap_servers(), &topic).await;
    // Freeze the relay (SIGSTOP) until it is caught with acknowledged rows
    // not yet marked: more messages on the topic than rows marked. Killed
    // there, those rows must be sent again, as duplicates.
    let on_topic = eventually(
        Duration::from_secs(60),
        "the relay frozen between acknowledgement and mark",
        || {
            relay.signal(Signal::SIGSTOP);
            let on_topic = messages_on(&watcher, &topic);
            let (app, relay) = (&app, &relay);
            async move {
                let marked = settled_marked(app, total).await;
                assert!(marked < total, "the relay finished before it was caught");
                if on_topic > marked {
                    Some(on_topic)
                } else {
                    relay.signal(Signal::SIGCONT);
                    None
                }
            }
        },
    )
    .await;
    relay.kill().await;
    let unmarked_acked = on_topic - settled_marked(&app, total).await;
    assert!(unmarked_acked > 0, "caught with acknowledged rows unmarked");

    let relay = Process::relay(&app.database_url, &bootstrap_servers(), &prefix, &env);
    app.wait_all_published(Duration::from_secs(120)).await;
    let consumer = consumer_on(&bootstrap_servers(), &topic).await;
    let wanted: HashSet<Uuid> = ids.into_iter().collect();
    let least = wanted.len() + usize::try_from(unmarked_acked).unwrap();
    let events = collect(&consumer, Duration::from_secs(120), |events| {
        distinct_ids(events).len() == wanted.len() && events.len() >= least
    })
    .await;
    assert_eq!(distinct_ids(&events), wanted);
    assert!(
        events.len() >= least,
        "{unmarked_acked} acknowledged rows were unmarked at the kill: each is sent again"
    );
    assert_duplicates_and_per_key_order(&events);
    assert_eq!(relay.terminate().await, Some(0));
    app.stop().await;
}

#[tokio::test]
async fn the_standby_takes_over_when_the_active_relay_is_killed() {
    let app = TestApp::spawn().await;
    let prefix = prefix();
    let topic = format!("{prefix}user");
    // Each test has its own database, hence its own advisory-lock namespace.
    let active = Process::relay(&app.database_url, &bootstrap_servers(), &prefix, &[]);
    active
        .wait_log("holding the relay lock", Duration::from_secs(30))
        .await;
    let standby = Process::relay(&app.database_url, &bootstrap_servers(), &prefix, &[]);
    standby
        .wait_log("standing by", Duration::from_secs(30))
        .await;

    let mut ids = insert_events(&app.pool, 5, 200).await;
    app.wait_all_published(Duration::from_secs(30)).await;
    active.kill().await;
    ids.extend(insert_events(&app.pool, 5, 200).await);
    standby
        .wait_log("holding the relay lock", Duration::from_secs(30))
        .await;
    app.wait_all_published(Duration::from_secs(30)).await;

    let consumer = consumer(&topic).await;
    let wanted: HashSet<Uuid> = ids.into_iter().collect();
    let events = collect(&consumer, Duration::from_secs(60), |events| {
        distinct_ids(events).len() == wanted.len()
    })
    .await;
    assert_eq!(distinct_ids(&events), wanted);
    assert_eq!(standby.terminate().await, Some(0));
    app.stop().await;
}

#[tokio::test]
async fn retention_deletes_old_published_rows_and_never_unpublished_ones() {
    let app = TestApp::spawn().await;
    let old = insert_events(&app.pool, 1, 30).await;
    let (expired, kept) = old.split_at(10);
    let (recent, pending) = kept.split_at(10);
    let age = |ids: &[Uuid], published: Option<&str>| {
        let pool = app.pool.clone();
        let ids = ids.to_vec();
        let published = published.map(str::to_owned);
        async move {
            sqlx::query(
                "UPDATE outbox SET created_at = now() - interval '30 days',
                     published_at = now() - $2::interval
                 WHERE id = ANY($1)",
            )
            .bind(&ids)
            .bind(published)
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    age(expired, Some("8 days")).await;
    age(recent, Some("6 days")).await;
    age(pending, None).await;

    let relay = Process::relay(&app.database_url, &bootstrap_servers(), &prefix(), &[]);
    let pool = app.pool.clone();
    eventually(
        Duration::from_secs(30),
        "the expired rows to be deleted",
        || {
            let pool = pool.clone();
            let expired = expired.to_vec();
            async move {
                let left: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE id = ANY($1)")
                        .bind(&expired)
                        .fetch_one(&pool)
                        .await
                        .unwrap();
                (left == 0).then_some(())
            }
        },
    )
    .await;
    let remaining: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE id = ANY($1)")
        .bind([recent, pending].concat())
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(remaining, 20, "recent and once-unpublished rows stay");
    assert_eq!(relay.terminate().await, Some(0));
    app.stop().await;
}

#[tokio::test]
async fn sigterm_flushes_and_marks_what_is_in_flight() {
    let app = TestApp::spawn().await;
    let prefix = prefix();
    let topic = format!("{prefix}user");
    insert_events(&app.pool, 10, 5000).await;
    let relay = Process::relay(
        &app.database_url,
        &bootstrap_servers(),
        &prefix,
        &[("RELAY_BATCH_SIZE", "1000")],
    );
    let first = consumer(&topic).await;
    collect(&first, Duration::from_secs(60), |events| !events.is_empty()).await;
    assert_eq!(relay.terminate().await, Some(0), "exit 0 on SIGTERM");

    // Exactly what was acknowledged is marked: the topic holds the marked
    // rows, no more (nothing acknowledged but unmarked), no less.
    let marked: HashSet<Uuid> =
        sqlx::query_scalar("SELECT id FROM outbox WHERE published_at IS NOT NULL")
            .fetch_all(&app.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    assert!(!marked.is_empty());
    let consumer = consumer(&topic).await;
    let events = collect(&consumer, Duration::from_secs(60), |events| {
        distinct_ids(events).len() >= marked.len()
    })
    .await;
    assert_eq!(distinct_ids(&events), marked);
    app.stop().await;
}

#[tokio::test]
async fn ten_thousand_rows_reach_the_topic_exactly_once() {
    let app = TestApp::spawn().await;
    let prefix = prefix();
    let topic = format!("{prefix}user");
    let ids = insert_events(&app.pool, 100, 10_000).await;
    let relay = Process::relay(&app.database_url, &bootstrap_servers(), &prefix, &[]);
    app.wait_all_published(Duration::from_secs(180)).await;
    let consumer = consumer(&topic).await;
    let events = collect(&consumer, Duration::from_secs(120), |events| {
        events.len() >= ids.len()
    })
    .await;
    assert_eq!(events.len(), 10_000);
    assert_eq!(distinct_ids(&events), ids.into_iter().collect());
    assert_duplicates_and_per_key_order(&events);
    assert_eq!(relay.terminate().await, Some(0));
    app.stop().await;
}

#[tokio::test]
async fn metrics_and_health_show_roles_progress_and_a_lost_broker() {
    let mut broker = Broker::start().await;
    let app = TestApp::spawn().await;
    let prefix = prefix();
    let active = Process::relay(&app.database_url, &broker.bootstrap(), &prefix, &[]);
    active
        .wait_log("holding the relay lock", Duration::from_secs(30))
        .await;
    let standby = Process::relay(&app.database_url, &broker.bootstrap(), &prefix, &[]);
    standby
        .wait_log("standing by", Duration::from_secs(30))
        .await;
    let (active_addr, standby_addr) = (active.metrics_addr().await, standby.metrics_addr().await);

    insert_events(&app.pool, 4, 20).await;
    app.wait_all_published(Duration::from_secs(30)).await;
    let exposition = eventually(Duration::from_secs(10), "the gauges to catch up", || {
        let addr = active_addr.clone();
        async move {
            let (status, body) = http_get(&addr, "/metrics").await;
            assert_eq!(status, 200);
            (metric(&body, "relay_outbox_unpublished_rows") == Some(0.0)).then_some(body)
        }
    })
    .await;
    assert_eq!(metric(&exposition, "relay_published_total"), Some(20.0));
    assert_eq!(metric(&exposition, "relay_active"), Some(1.0));
    assert_eq!(
        metric(&exposition, "relay_outbox_oldest_unpublished_age_seconds"),
        Some(0.0)
    );
    assert!(exposition.contains("relay_batch_size_bucket"));
    assert!(exposition.contains("relay_batch_duration_seconds_bucket"));
    let (_, standby_metrics) = http_get(&standby_addr, "/metrics").await;
    assert_eq!(metric(&standby_metrics, "relay_active"), Some(0.0));

    assert_eq!(http_get(&active_addr, "/healthz").await.0, 200);
    let (status, body) = http_get(&active_addr, "/readyz").await;
    assert_eq!(
        (status, body.trim()),
        (200, "role=Active database=true broker=true")
    );
    let (status, body) = http_get(&standby_addr, "/readyz").await;
    assert_eq!(status, 200, "a healthy standby is ready: {body}");

    broker.stop().await;
    let (status, body) = http_get(&active_addr, "/readyz").await;
    assert_eq!(
        (status, body.trim()),
        (503, "role=Active database=true broker=false")
    );
    assert_eq!(
        http_get(&active_addr, "/healthz").await.0,
        200,
        "alive all the same"
    );
    broker.resume().await;
    assert_eq!(standby.terminate().await, Some(0));
    assert_eq!(active.terminate().await, Some(0));
    app.stop().await;
}
