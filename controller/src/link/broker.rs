//! The embedded MQTT broker (rumqttd) of the one-machine default.
//!
//! With enrollment required it lets in only the controller and enrolled,
//! unrevoked nodes with their broker passwords (`external_auth`). It cannot
//! restrict topics: any enrolled node could publish on another's topic, so
//! the controller's signature check is the wall there. Real fleets use
//! Mosquitto (whose dynamic-security ACLs the controller drives) or EMQX
//! (docs/security.md).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

use crate::ControllerError;

/// Starts rumqttd on `listen` on its own thread and waits until it accepts
/// connections. `max_payload` is the largest message it lets through.
///
/// # Errors
/// When the address is taken or the broker does not come up.
pub async fn start_embedded(
    listen: SocketAddr,
    max_payload: usize,
    auth: Option<rumqttd::AuthHandler>,
) -> Result<SocketAddr, ControllerError> {
    // rumqttd only logs a failed bind from its own thread; find out first
    // (with SO_REUSEADDR, as rumqttd binds, so a restart after a crash works).
    let in_use = |e: std::io::Error| ControllerError::PortInUse {
        what: "embedded MQTT broker",
        addr: listen,
        flag: "--mqtt-listen (or --mqtt-url for an external broker)",
        reason: e.to_string(),
    };
    let probe = if listen.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() }
        .map_err(in_use)?;
    probe.set_reuseaddr(true).map_err(in_use)?;
    probe.bind(listen).map_err(in_use)?;
    let probe = probe.listen(1).map_err(in_use)?;
    let listen = probe.local_addr().map_err(|e| ControllerError::Io(e.to_string()))?;
    drop(probe);

    let router = RouterConfig {
        max_connections: 20_000,
        max_outgoing_packet_count: 1000,
        max_segment_size: 16 * 1024 * 1024,
        max_segment_count: 4,
        custom_segment: None,
        initialized_filters: None,
        shared_subscriptions_strategy: Default::default(),
    };
    let server = ServerSettings {
        name: "fleet-v4".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections: ConnectionSettings {
            connection_timeout_ms: 10_000,
            max_payload_size: max_payload,
            max_inflight_count: 500,
            auth: None,
            external_auth: auth,
            dynamic_filters: true,
        },
    };
    let config = Config { id: 0, router, v4: Some(HashMap::from([("1".to_owned(), server)])), ..Default::default() };
    std::thread::Builder::new()
        .name("rumqttd".into())
        .spawn(move || {
            let mut broker = Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "Embedded MQTT broker stopped.");
            }
        })
        .map_err(|e| ControllerError::Io(format!("cannot start the broker thread: {e}")))?;

    for _ in 0..100 {
        // A bare TCP connect: rumqttd drops it at the CONNECT timeout.
        if tokio::net::TcpStream::connect(listen).await.is_ok() {
            tracing::info!(%listen, "Embedded MQTT broker listening.");
            return Ok(listen);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(ControllerError::Io(format!("embedded MQTT broker did not start listening on {listen}")))
}

/// The embedded broker's login check: the controller's own user, or an
/// enrolled node's id and broker password.
#[must_use]
pub fn auth_handler(
    controller_user: String,
    controller_password: crate::auth::Secret,
    verifier: std::sync::Arc<super::verify::Verifier>,
) -> rumqttd::AuthHandler {
    std::sync::Arc::new(move |_client_id: String, user: String, pass: String| {
        let ok = if user == controller_user {
            crate::auth::same_secret(&pass, controller_password.expose())
        } else {
            verifier.broker_login(&user, &pass)
        };
        if !ok {
            tracing::debug!(user, "Embedded broker refused a login.");
        }
        Box::pin(async move { ok })
    })
}
