//! The registry log: every kind of tampering is detected, names the first bad entry, and
//! keeps a server from starting; crashes are reported, never silently absorbed; concurrent
//! writers do not corrupt it.

mod registry_support;

use registry_support::*;

#[test]
fn untouched_registry_verifies() {
    let path = five_entries("ok");
    let v = file::load(&path, Some(&server_key().public())).unwrap();
    assert_eq!(v.entries.len(), 5);
    assert_eq!(v.head_count, 5);
    let revoked = v.fleet.device(&device(2).public().fingerprint()).unwrap();
    assert_eq!(revoked.revoked_entry, Some(5));
    RegistryAuthorizer::open(&path, server_key(), Groups::all()).unwrap();
}

#[test]
fn edited_entry_is_named() {
    let path = five_entries("edit");
    let mut l = lines(&path);
    l[2] = l[2].replace("group=greenhouse", "group=ward");
    write_lines(&path, &l);
    assert_refused(&path, VerifyError::BadSignature { entry: 3 });
}

#[test]
fn deleted_entry_is_named() {
    let path = five_entries("delete");
    let mut l = lines(&path);
    l.remove(2);
    write_lines(&path, &l);
    assert_refused(&path, VerifyError::Deleted { entry: 3, found: 4 });
}

#[test]
fn reordered_entries_are_named() {
    let path = five_entries("reorder");
    let mut l = lines(&path);
    l.swap(2, 3);
    write_lines(&path, &l);
    assert_refused(&path, VerifyError::Reordered { entry: 3, found: 4 });
}

#[test]
fn injected_entries_are_named() {
    // A copy of a genuine entry slipped in.
    let path = five_entries("inject-copy");
    let mut l = lines(&path);
    l.insert(3, l[1].clone());
    write_lines(&path, &l);
    assert_refused(&path, VerifyError::Injected { entry: 4, found: 2 });

    // A new entry that chains correctly but is signed by another key (an attacker enrolling
    // its own device).
    let path = five_entries("inject-forged");
    let mut l = lines(&path);
    let forged = Entry {
        seq: 6,
        time: T0 + 20,
        prev: secchan::registry::entry::line_hash(l[4].as_bytes()),
        op: Op::Enroll {
            device: device(9).public().fingerprint(),
            name: "intruder".into(),
            group: "ward".into(),
            token: None,
        },
    };
    l.push(forged.sign(&device(9)));
    write_lines(&path, &l);
    assert_refused(&path, VerifyError::BadSignature { entry: 6 });

    // A genuine entry of another registry of the same server, put in this one's place.
    let other = tempdir("inject-other").join("fleet.reg");
    file::init(&other, &server_key(), T0 + 100).unwrap();
    for n in 4..9 {
        enroll(&other, n, "other", "ward");
    }
    let mut l = lines(&path);
    l.truncate(5);
    l.push(lines(&other)[5].clone());
    write_lines(&path, &l);
    std::fs::copy(head_path(&other), head_path(&path)).unwrap();
    assert_refused(&path, VerifyError::ChainBroken { entry: 6 });
}

#[test]
fn truncated_tail_is_named() {
    let path = five_entries("truncate");
    let mut l = lines(&path);
    l.truncate(3);
    write_lines(&path, &l);
    assert_refused(
        &path,
        VerifyError::Truncated {
            entry: 4,
            recorded: 5,
        },
    );
    // Cut inside a line: still truncation, since the head records the cut entry.
    let path = five_entries("truncate-mid");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 30]).unwrap();
    assert_refused(
        &path,
        VerifyError::Truncated {
            entry: 5,
            recorded: 5,
        },
    );
    // Without the head, truncation cannot be ruled out; a head rewritten to match the cut
    // log needs the server key.
    let path = five_entries("no-head");
    std::fs::remove_file(head_path(&path)).unwrap();
    assert_head_refused(&path, "missing");
    let path = five_entries("forged-head");
    let mut l = lines(&path);
    l.truncate(3);
    write_lines(&path, &l);
    let forged = secchan::registry::verify::Head {
        count: 3,
        hash: secchan::registry::entry::line_hash(l[2].as_bytes()),
    };
    std::fs::write(head_path(&path), forged.sign(&device(9))).unwrap();
    assert_head_refused(&path, "not signed by the server key");
}

#[test]
fn an_old_head_over_a_cut_log_is_refused() {
    // The head of entry 2 was kept; entries 3 to 5 exist. Put back over a log cut to four
    // entries (the revocation removed), it leaves two entries unrecorded, which no writer
    // does: tampering, not an interrupted append.
    let path = tempdir("stale-head").join("fleet.reg");
    file::init(&path, &server_key(), T0).unwrap();
    enroll(&path, 1, "sensor-1", "greenhouse");
    let (_, old_head) = copy(&path);
    enroll(&path, 2, "sensor-2", "greenhouse");
    enroll(&path, 3, "patch-7", "ward");
    revoke(&path, 2);
    let all = lines(&path);
    write_lines(&path, &all[..4]);
    std::fs::write(head_path(&path), &old_head).unwrap();
    assert_refused(
        &path,
        VerifyError::StaleHead {
            entry: 3,
            recorded: 2,
            present: 4,
        },
    );
    // A torn tail behind such a head is the same tampering; `repair` does not remove it.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    std::io::Write::write_all(&mut f, &all[4].as_bytes()[..30]).unwrap();
    drop(f);
    let err = file::repair(&path, &server_key()).unwrap_err();
    assert!(
        matches!(err, RegistryError::Verify(VerifyError::StaleHead { .. })),
        "{err:?}"
    );
}

#[test]
fn an_anchor_kept_by_the_server_detects_a_rollback_across_restarts() {
    let path = tempdir("anchor").join("fleet.reg");
    let anchor = tempdir("anchor-state").join("fleet.anchor");
    file::init(&path, &server_key(), T0).unwrap();
    enroll(&path, 1, "sensor-1", "greenhouse");
    let before_revoke = copy(&path);
    revoke(&path, 1);
    let open = || {
        RegistryAuthorizer::open(&path, server_key(), Groups::all())
            .and_then(|r| r.anchored(&anchor))
    };
    // The first start records the anchor; a later start on the same registry is accepted.
    drop(open().unwrap());
    let server = open().unwrap();
    // A state the running server accepts is recorded too.
    enroll(&path, 2, "sensor-2", "greenhouse");
    assert!(server.reload().unwrap());
    drop(server);
    let recorded = file::load_head_file(&anchor, &server_key().public())
        .unwrap()
        .unwrap();
    assert_eq!(recorded.count, 4);

    // Both files put back as they were before the revocation: consistent on their own...
    restore(&path, &before_revoke);
    file::load(&path, Some(&server_key().public())).unwrap();
    // ...but the server will not start on them.
    let err = open().unwrap_err();
    assert!(
        matches!(&err, RegistryError::BehindAnchor { had: 4, now: 2, .. }),
        "{err:?}"
    );

    // The log cut part-way through its last entry with the head before it looks like an
    // interrupted append, and `repair` removes it; the anchor still refuses the result.
    let path = tempdir("anchor-torn").join("fleet.reg");
    let anchor = tempdir("anchor-torn-state").join("fleet.anchor");
    file::init(&path, &server_key(), T0).unwrap();
    enroll(&path, 1, "sensor-1", "greenhouse");
    let (short_log, head_of_two) = copy(&path);
    revoke(&path, 1);
    drop(
        RegistryAuthorizer::open(&path, server_key(), Groups::all())
            .and_then(|r| r.anchored(&anchor))
            .unwrap(),
    );
    let log = std::fs::read(&path).unwrap();
    std::fs::write(&path, &log[..short_log.len() + 20]).unwrap();
    std::fs::write(head_path(&path), head_of_two).unwrap();
    assert_refused(
        &path,
        VerifyError::Torn {
            entry: 3,
            bytes: 20,
        },
    );
    assert_eq!(file::repair(&path, &server_key()).unwrap(), Some((3, 20)));
    let err = RegistryAuthorizer::open(&path, server_key(), Groups::all())
        .and_then(|r| r.anchored(&anchor))
        .unwrap_err();
    assert!(
        matches!(&err, RegistryError::BehindAnchor { had: 3, now: 2, .. }),
        "{err:?}"
    );
}

#[test]
fn torn_write_is_reported_then_repaired_without_losing_an_entry() {
    let path = five_entries("torn");
    // A crash during the append of entry 6: part of its line reached the disk, the head still
    // records five entries.
    let v = file::load(&path, None).unwrap();
    let entry = Entry {
        seq: 6,
        time: T0 + 30,
        prev: v.last_hash(),
        op: Op::Revoke {
            device: device(1).public().fingerprint(),
        },
    };
    let line = entry.sign(&server_key());
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    std::io::Write::write_all(&mut f, &line.as_bytes()[..40]).unwrap();
    drop(f);
    assert_refused(
        &path,
        VerifyError::Torn {
            entry: 6,
            bytes: 40,
        },
    );
    // Appending is refused too: nothing is written after a torn line.
    let err = file::append(&path, &server_key(), T0 + 31, |_| {
        Ok(Op::Revoke {
            device: device(1).public().fingerprint(),
        })
    })
    .unwrap_err();
    assert!(matches!(
        err,
        RegistryError::Verify(VerifyError::Torn { entry: 6, .. })
    ));
    assert_eq!(file::repair(&path, &server_key()).unwrap(), Some((6, 40)));
    let v = file::load(&path, Some(&server_key().public())).unwrap();
    assert_eq!(v.entries.len(), 5);
    assert_eq!(file::repair(&path, &server_key()).unwrap(), None);
}

#[test]
fn repair_refuses_to_hide_tampering() {
    let path = five_entries("repair-tamper");
    let mut l = lines(&path);
    l.remove(4);
    write_lines(&path, &l);
    let err = file::repair(&path, &server_key()).unwrap_err();
    assert!(matches!(
        err,
        RegistryError::Verify(VerifyError::Truncated { entry: 5, .. })
    ));
}

#[test]
fn complete_entry_not_yet_in_the_head_is_kept() {
    // A crash after the entry's fsync but before the head was replaced.
    let path = five_entries("head-lag");
    let head = std::fs::read(head_path(&path)).unwrap();
    enroll(&path, 4, "late", "ward");
    std::fs::write(head_path(&path), head).unwrap();
    let v = file::load(&path, Some(&server_key().public())).unwrap();
    assert_eq!((v.entries.len(), v.head_count), (6, 5));
    assert!(v.fleet.device(&device(4).public().fingerprint()).is_some());
    // The next append records everything in the head again.
    enroll(&path, 5, "next", "ward");
    assert_eq!(file::load(&path, None).unwrap().head_count, 7);
}

#[test]
fn head_of_another_history_is_a_mismatch() {
    // Entry 5 was replaced by a genuine, correctly chained entry 5 of another history (the
    // same server's registry, rebuilt): the head still records the original.
    let path = five_entries("head-swap");
    let mut l = lines(&path);
    l.truncate(4);
    let other5 = Entry {
        seq: 5,
        time: T0 + 50,
        prev: secchan::registry::entry::line_hash(l[3].as_bytes()),
        op: Op::Revoke {
            device: device(1).public().fingerprint(),
        },
    };
    l.push(other5.sign(&server_key()));
    write_lines(&path, &l);
    assert_refused(&path, VerifyError::HeadMismatch { entry: 5 });
}

#[test]
fn registry_of_another_server_is_refused() {
    let path = five_entries("wrong-server");
    let err = RegistryAuthorizer::open(
        &path,
        Arc::new(IdentityKey::from_seed(&[0x99; 32])),
        Groups::all(),
    )
    .unwrap_err();
    assert!(matches!(
        err,
        RegistryError::Verify(VerifyError::WrongServer { .. })
    ));
}

#[test]
fn a_registry_signed_by_an_offline_authority_is_served_and_vouches_for_its_devices() {
    use secchan::handshake::Authorizer;
    use secchan::msgs::AlertCode;
    use secchan::service::peer::{PeerTrust, Vouched};
    // `server_key()` signs this registry as the authority; the server has a key of its own.
    let path = five_entries("authority");
    let authority = server_key().public().fingerprint();
    let online = Arc::new(device(20));
    assert!(matches!(
        RegistryAuthorizer::open(&path, online.clone(), Groups::all()).unwrap_err(),
        RegistryError::Verify(VerifyError::WrongServer { .. })
    ));
    let other = device(21).public().fingerprint();
    assert!(matches!(
        RegistryAuthorizer::open_with_authority(&path, online.clone(), &other, Groups::all())
            .unwrap_err(),
        RegistryError::Verify(VerifyError::WrongServer { .. })
    ));
    let server =
        RegistryAuthorizer::open_with_authority(&path, online, &authority, Groups::all()).unwrap();
    assert_eq!(
        server.authorize(Some(&device(1).public())),
        Ok("sensor-1".into())
    );
    // Entry 1 and the enrollment; nothing for a revoked or unknown device.
    let d1 = device(1).public();
    assert_eq!(server.vouching_lines(&d1).len(), 2);
    assert!(server.vouching_lines(&device(2).public()).is_empty());
    assert!(server.vouching_lines(&device(9).public()).is_empty());
    // Renamed twice and regrouped: entry 1, the enrollment, the last rename, the regroup.
    for op in [
        Op::Rename {
            device: d1.fingerprint(),
            name: "old".into(),
        },
        Op::Rename {
            device: d1.fingerprint(),
            name: "door".into(),
        },
        Op::Regroup {
            device: d1.fingerprint(),
            group: "ward".into(),
        },
    ] {
        file::append(&path, &server_key(), T0 + 20, |_| Ok(op.clone())).unwrap();
    }
    assert!(server.reload().unwrap());
    let vouching = server.vouching_lines(&d1);
    assert_eq!(vouching.len(), 4);
    let trust = PeerTrust {
        authority: Some(authority),
        ..PeerTrust::default()
    };
    let info = secchan::delivery::PeerInfo {
        peer: "door",
        you: "a",
        fingerprint: secchan::crypto::kdf::sha256(&d1.0),
        entries: vouching.iter().map(String::as_str).collect(),
    };
    assert_eq!(
        trust.check("door", &d1, Some(&info)),
        Ok(Vouched::Registry {
            group: "ward".into()
        })
    );
    // The server cannot sign an enrollment into the authority's log: tokens are refused.
    let token = device(30);
    issue_token(&path, &token, "ward", u64::MAX / 2);
    assert!(server.reload().unwrap());
    let before = server.len();
    assert_eq!(
        server.enroll(&device(31).public(), &token.public()),
        Err(AlertCode::EnrollmentRefused)
    );
    assert!(!server.reload().unwrap());
    assert_eq!(server.len(), before);
    assert_eq!(lines(&path).len(), before);
}
