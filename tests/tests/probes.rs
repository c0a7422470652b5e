//! `[grpc] health_listen`: the health service alone without TLS, for
//! Kubernetes' gRPC probes (deploy/k8s), beside the TLS API: it answers
//! SERVING for the server and for FleetService, and serves nothing else.

use fleet_proto::v1::ListNodesRequest;
use fleet_tests::*;
use tokio_util::sync::CancellationToken;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plaintext_health_port_serves_health_and_nothing_else() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let stop = CancellationToken::new();
    let mut cfg = controller_config(dir.path(), "", "");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
    cfg.grpc.health_listen = addr.to_string();
    let c = fleet_controller::Controller::start(cfg, stop.clone()).await?;
    assert!(c.api.url.starts_with("https://"), "the API itself stays on TLS: {}", c.api.url);

    let plain = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect().await?;
    let mut health = HealthClient::new(plain.clone());
    for service in ["", "fleet.v1.FleetService"] {
        let r = health.check(HealthCheckRequest { service: service.into() }).await?.into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "{service:?}");
    }
    let mut api = fleet_proto::v1::fleet_service_client::FleetServiceClient::new(plain);
    let e = api.list_nodes(ListNodesRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unimplemented, "{e:?}");

    let mut bad = controller_config(dir.path(), "", "");
    bad.grpc.health_listen = "port 50052".into();
    let e = fleet_controller::Controller::start(bad, stop.clone()).await.err().expect("a bad address is refused");
    assert!(e.to_string().contains("grpc.health_listen"), "{e}");

    stop.cancel();
    c.wait().await;
    Ok(())
}
