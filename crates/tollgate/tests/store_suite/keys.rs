//! Keys: creation, listing, partial updates, deletion and lookup by hash.

use tollgate::store::{KeyId, KeyKind, KeyPatch, NewKey, StoreError};

use crate::harness::*;

pub async fn create_list_and_get(db: TestDb) {
    let store = db.open().await;
    let acme = account(&store, "acme").await;
    let other = account(&store, "other").await;

    let first = store
        .create_key(NewKey {
            expires_at: Some(T0 + DAY),
            credit_limit: Some(nanos(5_000_000_000)),
            rate_limit_rpm: Some(60),
            clamp_max_tokens: true,
            ..new_key(acme.id, KeyKind::Inference, "first")
        })
        .await
        .expect("first");
    assert_eq!(first.account_id, acme.id);
    assert_eq!(first.kind, KeyKind::Inference);
    assert_eq!(first.name, "first");
    assert_eq!(first.hint, "tg-...first");
    assert_eq!((first.created_at, first.updated_at), (T0, T0));
    assert_eq!(first.expires_at, Some(T0 + DAY));
    assert_eq!(first.credit_limit, Some(nanos(5_000_000_000)));
    assert_eq!(first.rate_limit_rpm, Some(60));
    assert!(first.clamp_max_tokens);
    assert!(first.is_enabled);
    assert_eq!(first.usage, nanos(0));
    assert_eq!((first.last_used_at, first.deleted_at), (None, None));

    let second = store
        .create_key(new_key(acme.id, KeyKind::Inference, "second"))
        .await
        .expect("second");
    assert_eq!(
        (
            second.expires_at,
            second.credit_limit,
            second.rate_limit_rpm
        ),
        (None, None, None)
    );
    assert!(!second.clamp_max_tokens, "off unless asked for");
    let prov = store
        .create_key(new_key(acme.id, KeyKind::Provisioning, "prov"))
        .await
        .expect("prov");
    let foreign = store
        .create_key(new_key(other.id, KeyKind::Inference, "foreign"))
        .await
        .expect("foreign");
    // Both kinds share one id sequence.
    let ids = [first.id, second.id, prov.id, foreign.id];
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");

    assert_eq!(
        store
            .list_keys(acme.id, KeyKind::Inference)
            .await
            .expect("list"),
        vec![first.clone(), second.clone()]
    );
    assert_eq!(
        store
            .list_keys(acme.id, KeyKind::Provisioning)
            .await
            .expect("list"),
        vec![prov.clone()]
    );
    assert_eq!(
        store
            .list_keys(other.id, KeyKind::Inference)
            .await
            .expect("list"),
        vec![foreign.clone()]
    );
    assert!(store
        .list_keys(other.id, KeyKind::Provisioning)
        .await
        .expect("list")
        .is_empty());

    assert_eq!(
        store
            .get_key(acme.id, KeyKind::Inference, first.id)
            .await
            .expect("get"),
        Some(first.clone())
    );
    assert_eq!(
        store
            .get_key(acme.id, KeyKind::Provisioning, prov.id)
            .await
            .expect("get"),
        Some(prov.clone())
    );
    // Another account's key, the wrong kind and an unknown id are all `None`.
    assert_eq!(
        store
            .get_key(other.id, KeyKind::Inference, first.id)
            .await
            .expect("get"),
        None
    );
    assert_eq!(
        store
            .get_key(acme.id, KeyKind::Inference, foreign.id)
            .await
            .expect("get"),
        None
    );
    assert_eq!(
        store
            .get_key(acme.id, KeyKind::Provisioning, first.id)
            .await
            .expect("get"),
        None
    );
    assert_eq!(
        store
            .get_key(acme.id, KeyKind::Inference, KeyId(foreign.id.0 + 1000))
            .await
            .expect("get"),
        None
    );
}

pub async fn duplicate_hash_conflicts(db: TestDb) {
    let store = db.open().await;
    let acme = account(&store, "acme").await;
    let key = new_key(acme.id, KeyKind::Inference, "k");
    store.create_key(key.clone()).await.expect("first");
    match store
        .create_key(NewKey {
            name: "again".into(),
            ..key
        })
        .await
    {
        Err(StoreError::Conflict(_)) => {}
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(
        store
            .list_keys(acme.id, KeyKind::Inference)
            .await
            .expect("list")
            .len(),
        1
    );
}

pub async fn update_absent_vs_null(db: TestDb) {
    let store = db.open().await;
    let acme = account(&store, "acme").await;
    let original = store
        .create_key(NewKey {
            expires_at: Some(T0 + DAY),
            credit_limit: Some(nanos(5)),
            rate_limit_rpm: Some(60),
            ..new_key(acme.id, KeyKind::Inference, "k")
        })
        .await
        .expect("create");
    let id = original.id;

    // An empty patch changes nothing but the update time.
    let same = store
        .update_key(acme.id, id, &KeyPatch::default(), T0 + 10)
        .await
        .expect("update")
        .expect("found");
    assert_eq!(
        same,
        tollgate::store::KeyRecord {
            updated_at: T0 + 10,
            ..original.clone()
        }
    );

    // Name and is_enabled alone.
    let renamed = store
        .update_key(
            acme.id,
            id,
            &KeyPatch {
                name: Some("renamed".into()),
                is_enabled: Some(false),
                ..KeyPatch::default()
            },
            T0 + 20,
        )
        .await
        .expect("update")
        .expect("found");
    assert_eq!(renamed.name, "renamed");
    assert!(!renamed.is_enabled);
    assert_eq!(renamed.updated_at, T0 + 20);
    assert_eq!(
        (
            renamed.credit_limit,
            renamed.expires_at,
            renamed.rate_limit_rpm
        ),
        (Some(nanos(5)), Some(T0 + DAY), Some(60)),
        "absent fields stay"
    );

    // Each nullable field cleared on its own: `Some(None)` is null, not absent.
    let no_limit = store
        .update_key(
            acme.id,
            id,
            &KeyPatch {
                credit_limit: Some(None),
                ..KeyPatch::default()
            },
            T0 + 30,
        )
        .await
        .expect("update")
        .expect("found");
    assert_eq!(
        (
            no_limit.credit_limit,
            no_limit.expires_at,
            no_limit.rate_limit_rpm
        ),
        (None, Some(T0 + DAY), Some(60))
    );
    assert_eq!(no_limit.name, "renamed");
    assert!(!no_limit.is_enabled);
    assert!(!no_limit.clamp_max_tokens);

    // clamp_max_tokens on, then off; other fields stay.
    for on in [true, false] {
        let clamped = store
            .update_key(
                acme.id,
                id,
                &KeyPatch {
                    clamp_max_tokens: Some(on),
                    ..KeyPatch::default()
                },
                T0 + 35,
            )
            .await
            .expect("update")
            .expect("found");
        assert_eq!(clamped.clamp_max_tokens, on);
        assert_eq!(
            (clamped.name.as_str(), clamped.rate_limit_rpm),
            ("renamed", Some(60))
        );
    }

    let no_expiry = store
        .update_key(
            acme.id,
            id,
            &KeyPatch {
                expires_at: Some(None),
                ..KeyPatch::default()
            },
            T0 + 40,
        )
        .await
        .expect("update")
        .expect("found");
    assert_eq!(
        (
            no_expiry.credit_limit,
            no_expiry.expires_at,
            no_expiry.rate_limit_rpm
        ),
        (None, None, Some(60))
    );

    let no_rpm = store
        .update_key(
            acme.id,
            id,
            &KeyPatch {
                rate_limit_rpm: Some(None),
                ..KeyPatch::default()
            },
            T0 + 50,
        )
        .await
        .expect("update")
        .expect("found");
    assert_eq!(
        (
            no_rpm.credit_limit,
            no_rpm.expires_at,
            no_rpm.rate_limit_rpm
        ),
        (None, None, None)
    );

    // And set again, all at once.
    let restored = store
        .update_key(
            acme.id,
            id,
            &KeyPatch {
                name: None,
                is_enabled: Some(true),
                credit_limit: Some(Some(nanos(9))),
                expires_at: Some(Some(T0 + 2 * DAY)),
                clamp_max_tokens: Some(true),
                rate_limit_rpm: Some(Some(600)),
            },
            T0 + 60,
        )
        .await
        .expect("update")
        .expect("found");
    assert_eq!(
        restored,
        tollgate::store::KeyRecord {
            name: "renamed".into(),
            is_enabled: true,
            credit_limit: Some(nanos(9)),
            expires_at: Some(T0 + 2 * DAY),
            rate_limit_rpm: Some(600),
            clamp_max_tokens: true,
            updated_at: T0 + 60,
            ..original
        }
    );
    // What update returned is what is stored.
    assert_eq!(
        store
            .get_key(acme.id, KeyKind::Inference, id)
            .await
            .expect("get"),
        Some(restored)
    );
}

pub async fn update_is_account_and_kind_scoped(db: TestDb) {
    let store = db.open().await;
    let acme = account(&store, "acme").await;
    let other = account(&store, "other").await;
    let key = inference_key(&store, acme.id, "k").await;
    let prov = store
        .create_key(new_key(acme.id, KeyKind::Provisioning, "prov"))
        .await
        .expect("prov");
    let patch = KeyPatch {
        name: Some("hijacked".into()),
        ..KeyPatch::default()
    };

    assert_eq!(
        store
            .update_key(other.id, key, &patch, T0 + 1)
            .await
            .expect("update"),
        None,
        "another account's key"
    );
    assert_eq!(
        store
            .update_key(acme.id, prov.id, &patch, T0 + 1)
            .await
            .expect("update"),
        None,
        "provisioning keys are not updated through this path"
    );
    assert_eq!(
        store
            .update_key(acme.id, KeyId(prov.id.0 + 1000), &patch, T0 + 1)
            .await
            .expect("update"),
        None,
        "unknown key"
    );
    let stored = store
        .get_key(acme.id, KeyKind::Inference, key)
        .await
        .expect("get")
        .expect("found");
    assert_eq!((stored.name.as_str(), stored.updated_at), ("k", T0));

    assert!(store
        .delete_key(Some(acme.id), KeyKind::Inference, key, T0 + 2)
        .await
        .expect("delete"));
    assert_eq!(
        store
            .update_key(acme.id, key, &patch, T0 + 3)
            .await
            .expect("update"),
        None,
        "deleted key"
    );
}

pub async fn delete_is_account_and_kind_scoped(db: TestDb) {
    let store = db.open().await;
    let acme = account(&store, "acme").await;
    let other = account(&store, "other").await;
    let keep = inference_key(&store, acme.id, "keep").await;
    let doomed = inference_key(&store, acme.id, "doomed").await;
    let prov = store
        .create_key(new_key(acme.id, KeyKind::Provisioning, "prov"))
        .await
        .expect("prov")
        .id;

    assert!(
        !store
            .delete_key(Some(other.id), KeyKind::Inference, doomed, T0 + 1)
            .await
            .expect("delete"),
        "another account cannot delete it"
    );
    assert!(
        !store
            .delete_key(Some(acme.id), KeyKind::Provisioning, doomed, T0 + 1)
            .await
            .expect("delete"),
        "the kind must match"
    );
    assert!(
        !store
            .delete_key(None, KeyKind::Inference, KeyId(prov.0 + 1000), T0 + 1)
            .await
            .expect("delete"),
        "unknown key"
    );
    assert!(store
        .get_key(acme.id, KeyKind::Inference, doomed)
        .await
        .expect("get")
        .is_some());

    assert!(store
        .delete_key(Some(acme.id), KeyKind::Inference, doomed, T0 + 5)
        .await
        .expect("delete"));
    assert!(
        !store
            .delete_key(Some(acme.id), KeyKind::Inference, doomed, T0 + 6)
            .await
            .expect("delete"),
        "deleting twice reports nothing deleted"
    );
    assert_eq!(
        store
            .get_key(acme.id, KeyKind::Inference, doomed)
            .await
            .expect("get"),
        None
    );
    let live: Vec<KeyId> = store
        .list_keys(acme.id, KeyKind::Inference)
        .await
        .expect("list")
        .into_iter()
        .map(|k| k.id)
        .collect();
    assert_eq!(live, vec![keep]);

    // Without an account (the operator), any account's key of the kind.
    assert!(store
        .delete_key(None, KeyKind::Provisioning, prov, T0 + 7)
        .await
        .expect("delete"));
    assert!(store
        .list_keys(acme.id, KeyKind::Provisioning)
        .await
        .expect("list")
        .is_empty());
}

pub async fn key_by_hash_includes_deleted_keys(db: TestDb) {
    let store = db.open().await;
    let acme = account(&store, "acme").await;
    let created = store
        .create_key(new_key(acme.id, KeyKind::Inference, "k"))
        .await
        .expect("create");
    let hash = new_key(acme.id, KeyKind::Inference, "k").key_hash;

    assert_eq!(
        store.key_by_hash(&hash).await.expect("by hash"),
        Some(created.clone())
    );
    assert_eq!(
        store.key_by_hash("no-such-hash").await.expect("by hash"),
        None
    );

    assert!(store
        .delete_key(Some(acme.id), KeyKind::Inference, created.id, T0 + 9)
        .await
        .expect("delete"));
    let deleted = store
        .key_by_hash(&hash)
        .await
        .expect("by hash")
        .expect("deleted keys are still found by hash");
    assert_eq!(deleted.deleted_at, Some(T0 + 9));
    assert_eq!(deleted.updated_at, T0 + 9);
    assert!(!deleted.is_enabled);
    assert_eq!(deleted.id, created.id);
}
