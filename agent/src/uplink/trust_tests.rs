use ed25519_dalek::SigningKey;
use fleet_proto::signing::sign_for_node;

use super::*;

const NOW: i64 = 1_800_000_000_000;

fn controller() -> SigningKey {
    SigningKey::from_bytes(&[5; 32])
}

fn sealed(key: &SigningKey, generation: u64, node: &str, kind: MessageKind, payload: Vec<u8>) -> Vec<u8> {
    sign_for_node(key, generation, node, kind, 1, payload).encode_to_vec()
}

fn trust() -> (Trust, Arc<Refusals>) {
    let refusals = Arc::new(Refusals::default());
    (Trust::new("pi-b", Controller::Key(1, controller().verifying_key()), refusals.clone()), refusals)
}

fn desired(node: &str, version: u64) -> Vec<u8> {
    DesiredState { node_id: node.into(), version, ..Default::default() }.encode_to_vec()
}

fn job(id: &str, deadline: i64) -> Vec<u8> {
    Job { job_id: id.into(), model: "severity".into(), deadline_unix_ms: deadline, ..Default::default() }
        .encode_to_vec()
}

#[test]
fn the_controllers_messages_pass_and_forgeries_are_refused_by_reason() {
    let (mut t, refusals) = trust();
    let c = controller();
    let ok = sealed(&c, 1, "pi-b", MessageKind::Desired, desired("pi-b", 3));
    assert!(matches!(t.open(MessageKind::Desired, &ok, NOW), Some(UplinkEvent::Desired(d)) if d.version == 3));
    // Another node's key (an enrolled neighbour), a message for another node,
    // a bare payload, the wrong kind for the topic, an unknown generation.
    let neighbour = SigningKey::from_bytes(&[6; 32]);
    let forged = [
        (sealed(&neighbour, 1, "pi-b", MessageKind::Desired, desired("pi-b", 9)), "bad_signature"),
        (sealed(&c, 1, "pi-a", MessageKind::Desired, desired("pi-b", 9)), "wrong_node"),
        // A bare desired state parses as an envelope of kind 9 (protobuf is lenient).
        (desired("pi-b", 9), "unknown_kind"),
        (sealed(&c, 1, "pi-b", MessageKind::Job, desired("pi-b", 9)), "unknown_kind"),
        (sealed(&c, 2, "pi-b", MessageKind::Desired, desired("pi-b", 9)), "unknown_key"),
    ];
    for (body, _) in &forged {
        assert!(t.open(MessageKind::Desired, body, NOW).is_none());
    }
    let mut want = std::collections::BTreeMap::new();
    for (_, r) in &forged {
        *want.entry(*r).or_insert(0u64) += 1;
    }
    assert_eq!(refusals.by_reason(), want.into_iter().collect::<Vec<_>>());
    assert!(t.open(MessageKind::Desired, &[0xff, 0xff], NOW).is_none(), "garbage");
    assert_eq!(refusals.by_reason()[1], ("malformed", 1));
    assert_eq!(refusals.total(), 6);
}

#[test]
fn replays_are_refused_by_each_kinds_rule() {
    let (mut t, refusals) = trust();
    let c = controller();
    let v = |n| sealed(&c, 1, "pi-b", MessageKind::Desired, desired("pi-b", n));
    assert!(t.open(MessageKind::Desired, &v(5), NOW).is_some());
    assert!(t.open(MessageKind::Desired, &v(5), NOW).is_some(), "a retained copy again");
    assert!(t.open(MessageKind::Desired, &v(4), NOW).is_none(), "an older version");
    let j = |id, deadline| sealed(&c, 1, "pi-b", MessageKind::Job, job(id, deadline));
    assert!(t.open(MessageKind::Job, &j("j1", NOW + 1000), NOW).is_some());
    assert!(t.open(MessageKind::Job, &j("j1", NOW + 1000), NOW).is_none(), "the same job twice");
    assert!(t.open(MessageKind::Job, &j("j2", NOW - 1), NOW).is_none(), "past its deadline");
    let k = |g| {
        sealed(
            &c,
            1,
            "pi-b",
            MessageKind::KeyRotation,
            KeyRotation { generation: g, ..Default::default() }.encode_to_vec(),
        )
    };
    assert!(t.open(MessageKind::KeyRotation, &k(2), NOW).is_some());
    assert!(t.open(MessageKind::KeyRotation, &k(1), NOW).is_none(), "an older rotation");
    assert_eq!(refusals.by_reason(), vec![("replay", 4)]);
    // An old ack changes nothing, so it passes.
    let ack = sealed(
        &c,
        1,
        "pi-b",
        MessageKind::Ack,
        Ack { boot_id: "b".into(), up_to_seq: 1, committed: vec![] }.encode_to_vec(),
    );
    assert!(t.open(MessageKind::Ack, &ack, NOW).is_some());
    assert!(t.open(MessageKind::Ack, &ack, NOW).is_some());
}

#[test]
fn a_lab_node_takes_its_own_messages_and_an_old_enrollment_takes_none() {
    let refusals = Arc::new(Refusals::default());
    let mut lab = Trust::new("pi-b", Controller::Lab, refusals.clone());
    let unsigned = SignedMessage {
        node_id: "pi-b".into(),
        kind: MessageKind::Desired as i32,
        payload: desired("pi-b", 1),
        ..Default::default()
    };
    assert!(lab.open(MessageKind::Desired, &unsigned.encode_to_vec(), NOW).is_some());
    let other = SignedMessage { node_id: "pi-a".into(), ..unsigned.clone() };
    assert!(lab.open(MessageKind::Desired, &other.encode_to_vec(), NOW).is_none());
    let mut old = Trust::new("pi-b", Controller::Missing, refusals.clone());
    let signed = sealed(&controller(), 1, "pi-b", MessageKind::Desired, desired("pi-b", 2));
    assert!(old.open(MessageKind::Desired, &signed, NOW).is_none());
    assert_eq!(refusals.by_reason(), vec![("unknown_key", 1), ("wrong_node", 1)]);
}
