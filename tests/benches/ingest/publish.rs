//! The bench's publishers: one MQTT connection per node (QoS 1, logged in with
//! the node's broker credentials), or an idempotent Kafka producer keyed by
//! node, as the agent's two uplinks publish. Payloads are sealed already.

use std::time::Duration;

use fleet_proto::topics::{Channel, node_topic};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rumqttc::{AsyncClient, MqttOptions, QoS};

use crate::nodes::Login;

/// A node's sealed batches: (node id, wire bytes) in send order.
pub type Sealed = Vec<(String, Vec<u8>)>;

/// Every node publishes its batches over its own MQTT connection.
pub async fn mqtt(mqtt_url: String, all: Vec<(Login, Sealed)>) -> anyhow::Result<()> {
    let (host, port) = fleet_proto::parse_mqtt_url(&mqtt_url).map_err(anyhow::Error::msg)?;
    let mut sends = Vec::new();
    for (node, batches) in all {
        let mut o = MqttOptions::new(format!("fleet-agent-{}", node.node_id), host.clone(), port);
        o.set_max_packet_size(16 << 20, 16 << 20);
        o.set_inflight(200);
        o.set_credentials(node.username, node.password);
        let (client, mut el) = AsyncClient::new(o, 1000);
        tokio::spawn(async move { while el.poll().await.is_ok() {} });
        sends.push(tokio::spawn(async move {
            for (node_id, wire) in batches {
                client.publish(node_topic(&node_id, Channel::Telemetry), QoS::AtLeastOnce, false, wire).await?;
            }
            anyhow::Ok(())
        }));
    }
    for s in sends {
        s.await??;
    }
    Ok(())
}

/// The telemetry and status topics on a real broker (8 and 1 partitions).
pub async fn create_topics(brokers: &str) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", brokers).create()?;
    let topics = [
        NewTopic::new(fleet_proto::topics::KAFKA_TELEMETRY, 8, TopicReplication::Fixed(1)),
        NewTopic::new(fleet_proto::topics::KAFKA_STATUS, 1, TopicReplication::Fixed(1)),
    ];
    for r in admin.create_topics(&topics, &AdminOptions::new()).await? {
        match r {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => anyhow::bail!("cannot create topic {t}: {e}"),
        }
    }
    Ok(())
}

/// An idempotent producer, key = node id, as the agent's Kafka uplink; the
/// nodes' batches interleaved.
pub async fn kafka(brokers: String, all: Vec<Sealed>) -> anyhow::Result<()> {
    use futures::StreamExt;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()?;
    let mut pending = futures::stream::FuturesUnordered::new();
    let mut rounds: Vec<std::vec::IntoIter<(String, Vec<u8>)>> = all.into_iter().map(Vec::into_iter).collect();
    loop {
        let mut sent = false;
        for it in &mut rounds {
            if let Some((node_id, wire)) = it.next() {
                sent = true;
                let producer = producer.clone();
                pending.push(async move {
                    let rec = FutureRecord::to(fleet_proto::topics::KAFKA_TELEMETRY).key(&node_id).payload(&wire);
                    producer.send(rec, Duration::from_secs(30)).await.map(|_| ()).map_err(|(e, _)| e)
                });
            }
        }
        while pending.len() > 1000 {
            if let Some(r) = pending.next().await {
                r?;
            }
        }
        if !sent {
            break;
        }
    }
    while let Some(r) = pending.next().await {
        r?;
    }
    Ok(())
}
