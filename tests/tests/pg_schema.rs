//! Which schema a PostgreSQL database gets is the operator's choice
//! (`storage.postgres_schema`, docs/schema.md): `auto` gives a new database
//! TimescaleDB where the extension can be made and keeps an existing
//! database's schema; `postgres` stays plain beside a preloaded TimescaleDB;
//! `timescaledb` is TimescaleDB or a clear error.

use fleet_controller::store::{PostgresSchema, StorageConfig, Store};
use fleet_tests::TestDb;
use fleet_tests::need::{Need, missing};

fn schema(postgres_schema: PostgresSchema) -> StorageConfig {
    StorageConfig { postgres_schema, ..Default::default() }
}

/// Whether the test PostgreSQL can make the extension (`scripts/test` preloads it).
async fn timescale_here(db: &TestDb) -> anyhow::Result<bool> {
    let pool = sqlx::PgPool::connect(&db.url).await?;
    let available: bool =
        sqlx::query_scalar("SELECT count(*) > 0 FROM pg_available_extensions WHERE name = 'timescaledb'")
            .fetch_one(&pool)
            .await?;
    let preloaded: String = sqlx::query_scalar("SHOW shared_preload_libraries").fetch_one(&pool).await?;
    pool.close().await;
    Ok(available && preloaded.contains("timescaledb"))
}

#[tokio::test]
async fn the_postgres_schema_is_the_operators_choice_and_an_existing_database_keeps_its_own() -> anyhow::Result<()> {
    let plain = TestDb::create().await?;
    if !timescale_here(&plain).await? {
        plain.cleanup().await?;
        return missing(
            Need::TimescaleDb,
            "the_postgres_schema_is_the_operators_choice",
            "TimescaleDB is not installed and preloaded in the test PostgreSQL (scripts/build-timescaledb)",
        );
    }
    // "postgres" stays plain although the extension could be made; "auto" then keeps it plain.
    let s = Store::open_postgres(&plain.url, &schema(PostgresSchema::Postgres)).await?;
    assert_eq!(s.backend(), "postgres");
    drop(s);
    assert_eq!(Store::open_postgres(&plain.url, &schema(PostgresSchema::Auto)).await?.backend(), "postgres");
    let Err(e) = Store::open_postgres(&plain.url, &schema(PostgresSchema::Timescaledb)).await else {
        anyhow::bail!("a plain database opened as TimescaleDB");
    };
    assert!(e.to_string().contains("made with the plain PostgreSQL schema"), "{e}");
    plain.cleanup().await?;

    // "auto" on a new database takes TimescaleDB; "postgres" then refuses it.
    let ts = TestDb::create().await?;
    assert_eq!(Store::open_postgres(&ts.url, &schema(PostgresSchema::Auto)).await?.backend(), "timescaledb");
    assert_eq!(Store::open_postgres(&ts.url, &schema(PostgresSchema::Timescaledb)).await?.backend(), "timescaledb");
    let Err(e) = Store::open_postgres(&ts.url, &schema(PostgresSchema::Postgres)).await else {
        anyhow::bail!("a TimescaleDB database opened as plain PostgreSQL");
    };
    assert!(e.to_string().contains("made with the TimescaleDB schema"), "{e}");
    ts.cleanup().await?;
    Ok(())
}
