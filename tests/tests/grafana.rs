//! The Grafana dashboards (deploy/grafana) and the scrape config
//! (deploy/prometheus) against a running fleet: a controller on TimescaleDB
//! serving `/metrics` over HTTPS, three agents with their endpoints on, jobs,
//! a refused node message, a refused API call and a message a node refused.
//! Debian's Prometheus runs the repository's prometheus.yml and alert rules
//! (the example addresses replaced); every target must be up and every rule
//! load. Then every panel's query must return data: PromQL against that
//! Prometheus, SQL against the store as the read-only role of
//! deploy/grafana/reader.sql; and every SQL query must also plan on the plain
//! PostgreSQL schema. Grafana itself cannot be installed here: its variables
//! and macros are expanded as Grafana does (tests/src/grafana.rs).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use fleet_proto::v1::{JobConstraints, SubmitJobRequest};
use fleet_tests::grafana::{self, Query, Range, Source};
use fleet_tests::prometheus::{self, Prometheus};
use fleet_tests::*;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use sqlx::Row;
use tokio_util::sync::CancellationToken;

const TEST: &str = "every_grafana_panel_query_returns_data_from_a_running_fleet";
const T: Duration = Duration::from_secs(90);
const NODES: [&str; 3] = ["g0", "g1", "g2"];

/// What the fleet does besides streaming: jobs, and one refusal of each kind
/// the dashboards chart (a fleet that refuses nothing has no such series).
async fn drive(c: &fleet_controller::Controller) -> anyhow::Result<()> {
    let mut admin = grpc(c).await?;
    wait_for(T, "the three agents online", || {
        let mut admin = admin.clone();
        async move {
            let nodes = list_nodes(&mut admin).await.ok()?;
            NODES.iter().all(|n| state_of(&nodes, n) == Some(fleet_proto::v1::NodeState::Online)).then_some(())
        }
    })
    .await?;
    // Two jobs on each node (the node dashboard charts the first node's), two anywhere.
    let places = NODES.iter().flat_map(|n| [*n, *n]).chain(["", ""]);
    for (i, node) in places.enumerate() {
        let text = format!("disk {i} failing on the edge node");
        let constraints = Some(JobConstraints { node_id: node.into(), ..Default::default() });
        let job =
            SubmitJobRequest { model: "severity".into(), text, timeout_ms: 15_000, constraints, ..Default::default() };
        admin.submit_job(job).await?;
    }
    // An API call with a token that is none.
    let mut stranger =
        fleet_net::client::fleet_client(&c.api.url, c.api.ca_pem.as_deref().map(str::as_bytes), Some("no-such-token"))
            .await
            .map_err(anyhow::Error::msg)?;
    assert!(list_nodes(&mut stranger).await.is_err(), "a made-up token was taken");
    // Bytes that are no batch, on a node's telemetry topic (the controller
    // refuses them), and on a node's desired-state topic (the node does).
    let (host, port) = fleet_proto::parse_mqtt_url(&c.mqtt_url).map_err(anyhow::Error::msg)?;
    let (client, mut eventloop) = AsyncClient::new(MqttOptions::new("grafana-test", host, port), 16);
    let pump = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    for n in NODES {
        use fleet_proto::topics::{Channel, node_topic};
        client
            .publish(node_topic(n, Channel::Telemetry), QoS::AtLeastOnce, false, b"\xff\xffnot a batch".to_vec())
            .await?;
        client
            .publish(node_topic(n, Channel::Desired), QoS::AtLeastOnce, false, b"\xff\xffnot a state".to_vec())
            .await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    pump.abort();
    Ok(())
}

/// Waits until every target of the scrape config is up and every alert rule loaded.
async fn scraping(p: &Prometheus, expected_targets: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let t = p.targets().await?;
        if t.len() == expected_targets && t.iter().all(|(_, _, h)| h == "up") {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "scrape targets not all up: {t:?}\nPrometheus log:\n{}",
            p.log_text()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let rules = p.api("/api/v1/rules").await?;
    let loaded: Vec<&serde_json::Value> = rules["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .collect();
    assert!(loaded.len() >= 9, "alert rules not loaded: {rules}");
    for r in &loaded {
        assert_ne!(r["health"], "err", "rule {} does not evaluate: {}", r["name"], r["lastError"]);
    }
    Ok(())
}

/// The queries of `queries` that return nothing (or fail), with why.
async fn empty_panels(
    p: &Prometheus,
    store: &sqlx::PgPool,
    role: &str,
    queries: &[Query],
    vars: &[(&str, &str)],
    r: Range,
) -> anyhow::Result<Vec<String>> {
    let mut empty = Vec::new();
    for q in queries {
        let text = grafana::expand(&q.text, vars, r).with_context(|| q.place.clone())?;
        let rows = match q.source {
            Source::Prometheus => p.query(&text).await.map(|v| v.len()),
            Source::Sql => sql_rows(store, role, &text).await.map(|v| v.len()),
        };
        match rows {
            Ok(0) => empty.push(format!("{}: no data from {text}", q.place)),
            Ok(_) => {}
            Err(e) => empty.push(format!("{}: {e:#}", q.place)),
        }
    }
    Ok(empty)
}

/// `sql` run as `role`, its rows' first column as text.
async fn sql_rows(store: &sqlx::PgPool, role: &str, sql: &str) -> anyhow::Result<Vec<String>> {
    let mut tx = store.begin().await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("SET LOCAL ROLE {role}"))).execute(&mut *tx).await?;
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned())).fetch_all(&mut *tx).await?;
    tx.rollback().await?;
    Ok(rows.iter().map(|r| r.try_get::<String, _>(0).unwrap_or_default()).collect())
}

/// The read-only role of deploy/grafana/reader.sql, under a name of this run.
async fn reader_role(store: &sqlx::PgPool) -> anyhow::Result<String> {
    let role = format!("fleet_grafana_{}", uuid::Uuid::new_v4().simple());
    let script = std::fs::read_to_string(grafana::dir().join("reader.sql"))?;
    let script = script.replace("fleet_grafana", &role);
    sqlx::raw_sql(sqlx::AssertSqlSafe(script)).execute(store).await.context("deploy/grafana/reader.sql")?;
    Ok(role)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_grafana_panel_query_returns_data_from_a_running_fleet() -> anyhow::Result<()> {
    let dashboards = grafana::dashboards()?;
    let queries = grafana::queries(&dashboards)?;
    let Some(bin) = prometheus::find(TEST)? else { return Ok(()) };
    let db = TestDb::create().await?;
    let Some(store) = timescale_store(&db, TEST).await? else { return db.cleanup().await };
    drop(store);
    let plain = TestDb::create().await?;
    drop(fleet_controller::store::Store::open_postgres(&plain.url, &pg_storage(false)).await?);

    let dir = tempfile::tempdir()?;
    let stop = CancellationToken::new();
    let mut cfg = controller_config(dir.path(), "", &db.url);
    cfg.storage.postgres_schema = fleet_controller::store::PostgresSchema::Timescaledb;
    cfg.http.tls = fleet_controller::http::HttpTls::Auto;
    let c = fleet_controller::Controller::start(cfg, stop.clone()).await?;
    let started_ms = fleet_proto::now_unix_ms();
    let mut agents = Vec::new();
    let mut endpoints: Vec<SocketAddr> = Vec::new();
    for n in NODES {
        let mut a = agent_config(n, &c.mqtt_url, dir.path());
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        a.metrics.listen = addr.to_string();
        endpoints.push(addr);
        agents.push(AgentHandle::spawn(a));
    }
    let prom_dir = tempfile::tempdir()?;
    let ca = dir.path().join("tls/ca.pem");
    let p = Prometheus::start(&bin, prom_dir.path(), c.http_addr, &ca, &endpoints).await?;
    scraping(&p, 1 + endpoints.len()).await?;
    drive(&c).await?;

    let store = sqlx::PgPool::connect(&db.url).await?;
    let role = reader_role(&store).await?;
    let range = |to_ms| Range { from_ms: started_ms - 600_000, to_ms, interval_s: 10, rate_interval_s: 20 };
    // The node dashboard's variable: its first answer is the node shown.
    let var = queries.iter().find(|q| q.variable.is_some()).context("no template variable")?;
    let node = wait_for(T, "the node variable to list the agents", || async {
        let text = grafana::expand(&var.text, &[], range(fleet_proto::now_unix_ms() + 60_000)).ok()?;
        let nodes = sql_rows(&store, &role, &text).await.ok()?;
        (nodes == NODES).then(|| nodes[0].clone())
    })
    .await?;
    let vars = [("node", node.as_str())];
    let deadline = Instant::now() + T;
    loop {
        let r = range(fleet_proto::now_unix_ms() + 60_000);
        let empty = empty_panels(&p, &store, &role, &queries, &vars, r).await?;
        if empty.is_empty() {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "panels without data after {T:?}:\n{}", empty.join("\n"));
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // The same SQL plans on the plain PostgreSQL schema.
    let plain_pool = sqlx::PgPool::connect(&plain.url).await?;
    for q in queries.iter().filter(|q| q.source == Source::Sql) {
        let text = grafana::expand(&q.text, &vars, range(fleet_proto::now_unix_ms()))?;
        sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN {text}")))
            .fetch_all(&plain_pool)
            .await
            .with_context(|| format!("{} on plain PostgreSQL", q.place))?;
    }
    plain_pool.close().await;
    store.close().await;

    for a in agents {
        a.stop().await?;
    }
    stop.cancel();
    c.wait().await;
    db.cleanup().await?;
    plain.cleanup().await?;
    let admin = sqlx::PgPool::connect(&db_admin_url()).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP ROLE IF EXISTS {role}"))).execute(&admin).await?;
    Ok(())
}

fn db_admin_url() -> String {
    std::env::var("FLEET_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_TEST_DATABASE_URL.to_owned())
}
