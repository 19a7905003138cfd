//! Outbox rows written directly, without the server.

use sqlx::PgPool;
use uuid::Uuid;

/// Inserts `count` outbox rows directly, spread round-robin over `keys`
/// aggregate ids (`key-0` …), each payload carrying its per-key sequence
/// number `n`. Returns their event ids in `seq` order.
pub async fn insert_events(pool: &PgPool, keys: i64, count: i64) -> Vec<Uuid> {
    sqlx::query_scalar(
        "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload)
         SELECT gen_random_uuid(), 'user', 'key-' || (g % $1), 'TestEvent',
                jsonb_build_object('key', 'key-' || (g % $1), 'n', g / $1)
         FROM generate_series(0, $2 - 1) AS g
         ORDER BY g
         RETURNING id",
    )
    .bind(keys)
    .bind(count)
    .fetch_all(pool)
    .await
    .unwrap()
}
