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

fn held(generation: u64, key: &SigningKey) -> Controller {
    Controller::Keys(Box::new(Held { current: (generation, key.verifying_key()), next: None }))
}

fn trust() -> (Trust, Arc<TrustReport>) {
    let refusals = Arc::new(TrustReport::default());
    (Trust::new("pi-b", held(1, &controller()), refusals.clone(), None), refusals)
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
    let refusals = Arc::new(TrustReport::default());
    let mut lab = Trust::new("pi-b", Controller::Lab, refusals.clone(), None);
    let unsigned = SignedMessage {
        node_id: "pi-b".into(),
        kind: MessageKind::Desired as i32,
        payload: desired("pi-b", 1),
        ..Default::default()
    };
    assert!(lab.open(MessageKind::Desired, &unsigned.encode_to_vec(), NOW).is_some());
    let other = SignedMessage { node_id: "pi-a".into(), ..unsigned.clone() };
    assert!(lab.open(MessageKind::Desired, &other.encode_to_vec(), NOW).is_none());
    let mut old = Trust::new("pi-b", Controller::Missing, refusals.clone(), None);
    let signed = sealed(&controller(), 1, "pi-b", MessageKind::Desired, desired("pi-b", 2));
    assert!(old.open(MessageKind::Desired, &signed, NOW).is_none());
    assert_eq!(refusals.by_reason(), vec![("unknown_key", 1), ("wrong_node", 1)]);
}

fn keys(signing: (u64, &SigningKey), newest: (u64, &SigningKey)) -> Vec<u8> {
    fleet_proto::v1::ControllerKeys {
        signing_generation: signing.0,
        signing_key: signing.1.verifying_key().to_bytes().to_vec(),
        newest_generation: newest.0,
        newest_key: newest.1.verifying_key().to_bytes().to_vec(),
    }
    .encode_to_vec()
}

#[test]
fn a_rotation_of_the_controllers_key_overlaps_and_then_drops_the_old_key() {
    let (mut t, report) = trust();
    let (old, new) = (controller(), SigningKey::from_bytes(&[8; 32]));
    assert_eq!(report.controller_key_generation(), 1);
    // The new key, handed over signed with the old: both are believed.
    let handover = sealed(&old, 1, "pi-b", MessageKind::ControllerKeys, keys((1, &old), (2, &new)));
    assert!(t.open(MessageKind::ControllerKeys, &handover, NOW).is_none());
    assert_eq!((report.controller_key_generation(), report.total()), (2, 0));
    // The retained handover heard again (a reconnect) changes nothing and is no refusal.
    assert!(t.open(MessageKind::ControllerKeys, &handover, NOW).is_none());
    assert_eq!(report.total(), 0);
    let by_old = sealed(&old, 1, "pi-b", MessageKind::Desired, desired("pi-b", 1));
    assert!(t.open(MessageKind::Desired, &by_old, NOW).is_some(), "the old key signs until the rotation finishes");
    let by_new = sealed(&new, 2, "pi-b", MessageKind::Desired, desired("pi-b", 2));
    assert!(t.open(MessageKind::Desired, &by_new, NOW).is_some());
    // Once the new key has signed, the old one is refused.
    let late_old = sealed(&old, 1, "pi-b", MessageKind::Desired, desired("pi-b", 3));
    assert!(t.open(MessageKind::Desired, &late_old, NOW).is_none());
    assert_eq!(report.by_reason(), vec![("unknown_key", 1)]);
    // A key handed over by a neighbour's key is refused.
    let neighbour = SigningKey::from_bytes(&[6; 32]);
    let forged = sealed(&neighbour, 2, "pi-b", MessageKind::ControllerKeys, keys((3, &neighbour), (3, &neighbour)));
    assert!(t.open(MessageKind::ControllerKeys, &forged, NOW).is_none());
    assert_eq!(report.by_reason(), vec![("bad_signature", 1), ("unknown_key", 1)]);
    assert_eq!(report.controller_key_generation(), 2);
}

#[test]
fn a_node_away_through_rotations_takes_the_keys_signed_with_the_one_it_holds() {
    let (mut t, report) = trust();
    let (g1, g2, g3) = (controller(), SigningKey::from_bytes(&[8; 32]), SigningKey::from_bytes(&[10; 32]));
    // Generation 2 finished while the node was away, 3 is open: the
    // controller signs the keys with generation 1, which the node reported.
    let keys_msg = sealed(&g1, 1, "pi-b", MessageKind::ControllerKeys, keys((2, &g2), (3, &g3)));
    assert!(t.open(MessageKind::ControllerKeys, &keys_msg, NOW).is_none());
    assert_eq!(report.controller_key_generation(), 3);
    let by_2 = sealed(&g2, 2, "pi-b", MessageKind::Desired, desired("pi-b", 5));
    assert!(t.open(MessageKind::Desired, &by_2, NOW).is_some());
    let by_1 = sealed(&g1, 1, "pi-b", MessageKind::Desired, desired("pi-b", 6));
    assert!(t.open(MessageKind::Desired, &by_1, NOW).is_none(), "generation 1 is no longer held");
    // An older handover replayed is refused.
    let older = sealed(&g2, 2, "pi-b", MessageKind::ControllerKeys, keys((1, &g1), (2, &g2)));
    assert!(t.open(MessageKind::ControllerKeys, &older, NOW).is_none());
    assert_eq!(report.by_reason(), vec![("replay", 1), ("unknown_key", 1)]);
}

#[test]
fn the_keys_taken_are_kept_with_the_enrollment_and_read_back_at_start() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let b64 = |k: &SigningKey| base64::engine::general_purpose::STANDARD.encode(k.verifying_key().to_bytes());
    let e = crate::enroll::Enrollment {
        node_id: "pi-b".into(),
        controller_signing_key: b64(&controller()),
        controller_key_generation: 1,
        ..Default::default()
    };
    crate::enroll::save(&dir.path().join(crate::enroll::ENROLLMENT_FILE), &e).unwrap();
    let report = Arc::new(TrustReport::default());
    let mut t = Trust::new("pi-b", Controller::of(&e), report.clone(), Some(dir.path().to_owned()));
    let new = SigningKey::from_bytes(&[8; 32]);
    let handover = sealed(&controller(), 1, "pi-b", MessageKind::ControllerKeys, keys((1, &controller()), (2, &new)));
    assert!(t.open(MessageKind::ControllerKeys, &handover, NOW).is_none());
    let back = crate::enroll::load(dir.path()).unwrap().unwrap();
    assert_eq!((back.controller_key_generation, back.controller_next_key_generation), (1, 2));
    assert_eq!(back.controller_next_signing_key, b64(&new));
    let Controller::Keys(h) = Controller::of(&back) else { panic!("keys lost") };
    assert_eq!(h.newest(), 2);
}
