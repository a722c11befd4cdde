//! The operator side of the store and the request log (migration 0007): operator keys,
//! an account's grants, and pages of an account's usage records.

use tollgate::store::{Cursor, NewOperatorKey, RequestFilter, StatusFilter, UsageRecord};

use crate::harness::*;

pub async fn operator_keys_create_list_revoke(db: TestDb) {
    let store = db.open().await;
    let new = |name: &str| NewOperatorKey {
        name: name.to_string(),
        key_hash: format!("op-hash-{name}"),
        hint: format!("tg-op-...{name}"),
        created_at: T0,
    };
    let first = store.create_operator_key(new("one")).await.expect("one");
    let second = store.create_operator_key(new("two")).await.expect("two");
    assert!(first.id < second.id);
    assert_eq!((first.name.as_str(), first.revoked_at), ("one", None));
    assert!(
        store.create_operator_key(new("one")).await.is_err(),
        "hashes are unique"
    );
    assert_eq!(
        store.list_operator_keys().await.expect("list"),
        vec![first.clone(), second.clone()]
    );
    assert!(store
        .revoke_operator_key(first.id, T0 + 5)
        .await
        .expect("revoke"));
    assert!(!store
        .revoke_operator_key(first.id, T0 + 6)
        .await
        .expect("again"));
    assert!(!store.revoke_operator_key(999_999, T0).await.expect("none"));
    assert_eq!(
        store.list_operator_keys().await.expect("list"),
        vec![second]
    );
    let revoked = store
        .operator_key_by_hash("op-hash-one")
        .await
        .expect("lookup")
        .expect("kept");
    assert_eq!(revoked.revoked_at, Some(T0 + 5));
    assert_eq!(
        store.operator_key_by_hash("nothing").await.expect("lookup"),
        None
    );
}

pub async fn grants_are_listed_per_account_in_order(db: TestDb) {
    let store = db.open().await;
    let acme = account(&store, "acme").await;
    let other = account(&store, "other").await;
    store
        .grant_credits(acme.id, nanos(5), Some("first"), T0)
        .await
        .expect("grant");
    store
        .grant_credits(other.id, nanos(7), None, T0)
        .await
        .expect("grant");
    store
        .grant_credits(acme.id, nanos(-2), Some("fix"), T0 + 1)
        .await
        .expect("grant");
    let grants = store.list_grants(acme.id).await.expect("grants");
    let seen: Vec<_> = grants
        .iter()
        .map(|g| (g.account_id, g.amount, g.note.as_deref(), g.created_at))
        .collect();
    assert_eq!(
        seen,
        vec![
            (acme.id, nanos(5), Some("first"), T0),
            (acme.id, nanos(-2), Some("fix"), T0 + 1)
        ]
    );
    assert_eq!(store.list_grants(other.id).await.expect("grants").len(), 1);
}

pub async fn request_log_pages_and_filters(db: TestDb) {
    let store = db.open().await;
    let acme = account(&store, "acme").await;
    let other = account(&store, "other").await;
    let a = inference_key(&store, acme.id, "a").await;
    let b = inference_key(&store, acme.id, "b").await;
    let theirs = inference_key(&store, other.id, "theirs").await;
    let mut records: Vec<UsageRecord> = (0..40)
        .map(|n| {
            let key = if n % 4 == 0 { b } else { a };
            let model = if n % 2 == 0 { "even" } else { "odd" };
            let mut r = record(
                &format!("r{n:02}"),
                acme.id,
                key,
                model,
                100 + n,
                T0 + n / 3,
            );
            r.status = if n % 5 == 0 { 429 } else { 200 };
            r
        })
        .collect();
    records.push(record("theirs", other.id, theirs, "even", 1, T0));
    store.record_usage(&records).await.expect("record");

    let read_all = |filter: RequestFilter, limit: u32| {
        let store = store.clone();
        async move {
            let mut ids = Vec::new();
            let mut cursor: Option<Cursor> = None;
            loop {
                let page = store
                    .request_log(acme.id, &filter, cursor, limit)
                    .await
                    .expect("page");
                ids.extend(page.iter().map(|r| r.record.request_id.clone()));
                match page.last() {
                    Some(last) if page.len() == limit as usize => cursor = Some(last.cursor()),
                    _ => return ids,
                }
            }
        }
    };
    let newest_first = |keep: &dyn Fn(&UsageRecord) -> bool| -> Vec<String> {
        let mut v: Vec<&UsageRecord> = records[..40].iter().filter(|r| keep(r)).collect();
        v.reverse();
        v.iter().map(|r| r.request_id.clone()).collect()
    };
    assert_eq!(
        read_all(RequestFilter::default(), 6).await,
        newest_first(&|_| true)
    );
    let by_key = RequestFilter {
        key: Some(b),
        ..RequestFilter::default()
    };
    assert_eq!(read_all(by_key, 3).await, newest_first(&|r| r.key_id == b));
    let by_model_and_status = RequestFilter {
        model: Some("even".into()),
        status: Some(StatusFilter::Exact(429)),
        ..RequestFilter::default()
    };
    assert_eq!(
        read_all(by_model_and_status, 2).await,
        newest_first(&|r| r.model == "even" && r.status == 429)
    );
    let window = RequestFilter {
        from: Some(T0 + 3),
        until: Some(T0 + 6),
        status: Some(StatusFilter::Success),
        ..RequestFilter::default()
    };
    assert_eq!(
        read_all(window, 4).await,
        newest_first(&|r| (T0 + 3..T0 + 6).contains(&r.created_at) && r.status < 400)
    );
    let errors = RequestFilter {
        status: Some(StatusFilter::Error),
        ..RequestFilter::default()
    };
    assert_eq!(read_all(errors, 50).await.len(), 8);
    // Another account's key names nothing here.
    let foreign = RequestFilter {
        key: Some(theirs),
        ..RequestFilter::default()
    };
    assert!(read_all(foreign, 10).await.is_empty());
    let row = &store
        .request_log(acme.id, &RequestFilter::default(), None, 1)
        .await
        .expect("page")[0];
    assert_eq!(row.record, records[39]);
    assert_eq!(row.key_name.as_deref(), Some("a"));
}
