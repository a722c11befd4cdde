//! Budget slices (docs/cluster.md, "Budget leases"): a replica with steady traffic on a
//! key serves it from a slice of the key's budget, with no Redis call per request. Each
//! test drives replicas' shared budgets directly (real Redis and PostgreSQL), commits the
//! records as the gateway does (ledger first, then the settle), and checks Redis against
//! the ledger: a hot key is charged exactly; a slice whose replica died stays held until
//! the check counts what it spent; a frozen replica's late settle adds only what the
//! check did not count; the check subtracts only what a live slice committed; a request
//! refused while a slice holds the budget waits for it; a slice open when Redis loses its
//! data is registered in the new epoch and counted once; and three replicas racing with
//! slices never overspend.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate::billing::meter::Reservation;
use tollgate::billing::Credits;
use tollgate::cluster::{budget_key, Cluster as Shared, SharedBudgets, SLICE_REQUESTS};
use tollgate::store::{KeyRecord, Store};

use crate::support::*;

/// Each request's worst case and cost.
const WORST: i64 = 1_000;
const COST: i64 = 600;

struct Setup {
    redis: PrivateRedis,
    db: Database,
    store: Arc<dyn Store>,
    key: KeyRecord,
}

/// An account with plenty of credit and one key of `limit`.
async fn setup(limit: i64) -> Setup {
    let redis = PrivateRedis::start().await;
    let db = Database::create().await;
    let store = tollgate::store::open(&db.url).await.expect("store");
    let now = tollgate::now();
    let account = store.create_account("acme", now).await.expect("account");
    store
        .grant_credits(account.id, Credits::from_nanos(1_000_000_000), None, now)
        .await
        .expect("grant");
    let key = store
        .create_key(new_key(
            account.id,
            "k",
            Some(Credits::from_nanos(limit)),
            now,
        ))
        .await
        .expect("key");
    Setup {
        redis,
        db,
        store,
        key,
    }
}

/// A replica's shared budgets (nothing runs its tick unless the test does).
async fn replica(s: &Setup, lease: Duration, check_every: Duration) -> SharedBudgets {
    let cluster = Shared::connect(&s.redis.url, &s.db.url)
        .await
        .expect("connect");
    SharedBudgets::new(
        cluster,
        s.store.clone(),
        lease,
        check_every,
        tollgate::clock::Clock::system(),
    )
}

/// Commits the request's record (naming its slice) and settles it at `cost`.
async fn finish(b: &SharedBudgets, s: &Setup, r: Reservation, cost: i64) {
    let mut rec = record(&r.id, s.key.account_id.0, s.key.id.0, cost);
    rec.detail.lease = r.lease_id();
    let written = s.store.record_usage(&[rec]).await.expect("record");
    assert_eq!(written, vec![true]);
    b.settle(r, Credits::from_nanos(cost)).await;
}

/// `n` requests one after another, each finished at `COST`; answers how many were served
/// from a slice.
async fn serve(b: &SharedBudgets, s: &Setup, prefix: &str, n: usize) -> usize {
    let mut sliced = 0;
    for i in 0..n {
        let r = b
            .reserve(
                &s.key,
                Credits::from_nanos(WORST),
                &format!("req_{prefix}{i}"),
            )
            .await
            .expect("reserve");
        sliced += usize::from(r.lease.is_some());
        finish(b, s, r, COST).await;
    }
    sliced
}

/// (usage, reserved, sliced) of the key's budget in Redis.
async fn in_redis(s: &Setup) -> [i64; 3] {
    let hash = budget_key(&s.redis.epoch().await, "k", s.key.id.0);
    let mut out = [0; 3];
    for (i, field) in ["usage", "reserved", "sliced"].into_iter().enumerate() {
        out[i] = s.redis.field(&hash, field).await.unwrap_or(0);
    }
    out
}

/// What the ledger charged the account (its only key's usage).
async fn in_ledger(s: &Setup) -> i64 {
    s.store
        .account(s.key.account_id)
        .await
        .expect("account")
        .expect("exists")
        .charged
        .nanos()
}

/// Reserves (and keeps) a request served from a newly opened slice of `b`.
async fn open_slice(b: &SharedBudgets, s: &Setup, prefix: &str) -> Reservation {
    for i in 0..64 {
        let r = b
            .reserve(
                &s.key,
                Credits::from_nanos(WORST),
                &format!("req_{prefix}{i}"),
            )
            .await
            .expect("reserve");
        if r.lease.is_some() {
            return r;
        }
        finish(b, s, r, COST).await;
    }
    panic!("no slice opened after 64 requests in a row");
}

#[tokio::test]
async fn a_hot_key_is_served_from_slices_and_charged_exactly() {
    let s = setup(100_000_000).await;
    let b = replica(&s, Duration::from_secs(3), Duration::from_secs(3600)).await;
    let sliced = serve(&b, &s, "", 300).await;
    assert!(
        sliced >= 250,
        "only {sliced} of 300 requests were served from a slice"
    );
    // The open slice closes after its life (a third of the lease at most) and is settled.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    b.tick().await;
    assert_eq!(b.slices(), (0, 0));
    assert_eq!(in_ledger(&s).await, 300 * COST);
    assert_eq!(in_redis(&s).await, [300 * COST, 0, 0]);
}

/// A replica dies holding a slice whose requests are in the ledger: Redis must not give
/// the slice back at its lease's end (what it spent would be neither held nor charged),
/// but hold it until the account's check counts that spend: the reservation that finds
/// the lease run out runs the check before it answers.
#[tokio::test]
async fn a_slice_whose_replica_died_stays_held_until_the_check_counts_it() {
    let s = setup(100_000_000).await;
    let lease = Duration::from_secs(1);
    let a = replica(&s, lease, Duration::from_secs(3600)).await;
    let first = open_slice(&a, &s, "a").await;
    finish(&a, &s, first, COST).await;
    assert_eq!(serve(&a, &s, "b", 10).await, 10);
    let slice = SLICE_REQUESTS * WORST;
    let [usage, reserved, sliced] = in_redis(&s).await;
    assert_eq!((reserved, sliced), (slice, slice));
    assert_eq!(
        in_ledger(&s).await - usage,
        11 * COST,
        "the slice's spend is in the ledger only"
    );
    drop(a); // kill -9: no settle, no renewal.

    tokio::time::sleep(lease + Duration::from_millis(300)).await;
    let b = replica(&s, lease, Duration::from_secs(3600)).await;
    let other = b
        .reserve(&s.key, Credits::from_nanos(WORST), "req_other")
        .await
        .expect("reserve");
    // The reservation found the slice's lease run out and ran the account's check: the
    // dead slice's spend is counted and it is held no longer.
    assert!(usage < in_ledger(&s).await);
    assert_eq!(in_redis(&s).await, [in_ledger(&s).await, WORST, 0]);
    assert_eq!(b.repairs(), 0, "counting a dead slice is no drift");
    finish(&b, &s, other, COST).await;
    assert_eq!(in_redis(&s).await, [in_ledger(&s).await, 0, 0]);
}

/// A replica frozen past its lease (as by SIGSTOP) while a request of its slice runs: the
/// check counts what the slice had committed; when the replica wakes, its request
/// commits, and the slice's settle adds only what the check did not count.
#[tokio::test]
async fn a_frozen_replicas_late_slice_settle_adds_only_what_the_check_did_not_count() {
    let s = setup(100_000_000).await;
    let lease = Duration::from_secs(1);
    let a = replica(&s, lease, Duration::from_secs(3600)).await;
    let running = open_slice(&a, &s, "a").await;
    assert_eq!(serve(&a, &s, "b", 5).await, 5);

    tokio::time::sleep(lease + Duration::from_millis(300)).await;
    let b = replica(&s, lease, Duration::from_secs(3600)).await;
    let other = b
        .reserve(&s.key, Credits::from_nanos(WORST), "req_other")
        .await
        .expect("reserve");
    // Its check ran at once: what the slice committed is counted.
    assert_eq!(in_redis(&s).await, [in_ledger(&s).await, WORST, 0]);
    assert_eq!(b.repairs(), 0, "counting a frozen slice is no drift");

    // The replica wakes: its request ends, and its closed slice is settled.
    finish(&a, &s, running, COST).await;
    a.tick().await;
    assert_eq!(a.slices(), (0, 0));
    finish(&b, &s, other, COST).await;
    assert_eq!(in_redis(&s).await, [in_ledger(&s).await, 0, 0]);
}

/// A check while a slice is live, part of its requests in the ledger: Redis's usage must
/// lack exactly that part (the slice's settle will count it), not all of the slice's
/// spend nor none of it.
#[tokio::test]
async fn the_check_leaves_a_live_slices_committed_part_to_its_settle() {
    let s = setup(100_000_000).await;
    // Checks due at every call.
    let a = replica(&s, Duration::from_secs(3), Duration::ZERO).await;
    let first = open_slice(&a, &s, "a").await;
    finish(&a, &s, first, COST).await;
    assert_eq!(serve(&a, &s, "b", 7).await, 7);
    let before = in_redis(&s).await;
    assert_eq!(in_ledger(&s).await - before[0], 8 * COST);
    a.check_due().await;
    assert_eq!(
        in_redis(&s).await,
        before,
        "the check changed a live slice's budget"
    );
    assert_eq!(a.repairs(), 0);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    a.tick().await;
    assert_eq!(in_redis(&s).await, [in_ledger(&s).await, 0, 0]);
}

/// Redis loses its data while a slice is open, part of its requests in the ledger: the
/// replica registers the slice in the new epoch (held, and counted as sliced), the
/// rebuilt budget leaves the committed part to the slice's settle, and the settle counts
/// the whole spend once; the slice admits no more after the move.
#[tokio::test]
async fn a_slice_open_when_redis_loses_its_data_is_registered_and_counted_once() {
    let s = setup(100_000_000).await;
    let a = Arc::new(replica(&s, Duration::from_secs(3), Duration::from_secs(3600)).await);
    let member = open_slice(&a, &s, "a").await;
    assert_eq!(serve(&a, &s, "b", 6).await, 6);
    let epoch = s.redis.epoch().await;
    let mut conn = s.redis.conn().await;
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut conn)
        .await
        .expect("flushall");
    // The tick's heartbeat finds the data gone and moves to a new epoch, registering the
    // slice there and closing it (and renews its lease there, every second); the next
    // reservation waits out the grace window, and the budget is rebuilt from the ledger.
    a.tick().await;
    let ticking = Arc::new(AtomicBool::new(true));
    let ticker = {
        let (a, ticking) = (a.clone(), ticking.clone());
        tokio::spawn(async move {
            while ticking.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(200)).await;
                a.tick().await;
            }
        })
    };
    let after = a
        .reserve(&s.key, Credits::from_nanos(WORST), "req_after")
        .await
        .expect("reserve");
    ticking.store(false, Ordering::Relaxed);
    ticker.await.expect("ticker");
    assert_ne!(s.redis.epoch().await, epoch);
    // The old slice admits no more (a new one may open in the new epoch, with its checks).
    let (old, new) = (member.lease.clone().expect("old"), after.lease.clone());
    assert!(new.as_ref().is_none_or(|n| !Arc::ptr_eq(n, &old)));
    let slice = SLICE_REQUESTS * WORST;
    let slices = slice * (1 + i64::from(new.is_some()));
    let alone = if new.is_some() { 0 } else { WORST };
    let [usage, reserved, sliced] = in_redis(&s).await;
    assert_eq!((reserved, sliced), (slices + alone, slices));
    assert_eq!(
        in_ledger(&s).await - usage,
        6 * COST,
        "the slice's committed part"
    );
    drop((old, new));
    finish(&a, &s, member, COST).await;
    finish(&a, &s, after, COST).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    a.tick().await;
    assert_eq!(a.slices(), (0, 0));
    assert_eq!(in_redis(&s).await, [in_ledger(&s).await, 0, 0]);
    assert_eq!(a.repairs(), 0);
}

/// Replica A's slice holds part of a key's budget when replica B asks for more than is
/// left outside it: B waits for the slice to close and give back what it did not spend,
/// instead of being refused while the budget is only parked.
#[tokio::test]
async fn a_request_refused_while_a_slice_holds_the_budget_waits_for_it() {
    let s = setup(400_000).await;
    let a = Arc::new(replica(&s, Duration::from_secs(3), Duration::from_secs(3600)).await);
    let b = replica(&s, Duration::from_secs(3), Duration::from_secs(3600)).await;
    let member = open_slice(&a, &s, "a").await;
    finish(&a, &s, member, COST).await;
    let [usage, reserved, _] = in_redis(&s).await;
    let left = 400_000 - usage - reserved;
    let big = b
        .reserve(&s.key, Credits::from_nanos(left - WORST), "req_big")
        .await
        .expect("reserve");
    let ticking = Arc::new(AtomicBool::new(true));
    let ticker = {
        let (a, ticking) = (a.clone(), ticking.clone());
        tokio::spawn(async move {
            while ticking.load(Ordering::Relaxed) {
                a.tick().await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let started = Instant::now();
    let waited = b
        .reserve(&s.key, Credits::from_nanos(5 * WORST), "req_waits")
        .await;
    ticking.store(false, Ordering::Relaxed);
    ticker.await.expect("ticker");
    let waited = waited.expect("refused while a slice held the budget");
    assert!(started.elapsed() >= Duration::from_millis(100));
    finish(&b, &s, waited, COST).await;
    finish(&b, &s, big, COST).await;
    assert_eq!(in_redis(&s).await, [in_ledger(&s).await, 0, 0]);
}

/// Three replicas, each with its tick running, race 24 clients for one key until it runs
/// out, most requests served from slices: the ledger never passes the limit, Redis ends
/// equal to it, and the key ran out only when less than a request's worst case was left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_serving_from_slices_never_overspend() {
    let limit = 3_000_000;
    let s = Arc::new(setup(limit).await);
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(Arc::new(
            replica(&s, Duration::from_secs(3), Duration::from_secs(3600)).await,
        ));
    }
    let ticking = Arc::new(AtomicBool::new(true));
    let mut tickers = Vec::new();
    for r in &replicas {
        let (r, ticking) = (r.clone(), ticking.clone());
        tickers.push(tokio::spawn(async move {
            while ticking.load(Ordering::Relaxed) {
                r.tick().await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }));
    }
    let from_slices = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for c in 0..24 {
        let (r, s, from_slices) = (replicas[c % 3].clone(), s.clone(), from_slices.clone());
        clients.push(tokio::spawn(async move {
            let mut served = 0;
            for i in 0.. {
                let id = format!("req_{c}_{i}");
                match r.reserve(&s.key, Credits::from_nanos(WORST), &id).await {
                    Ok(res) => {
                        if res.lease.is_some() {
                            from_slices.fetch_add(1, Ordering::Relaxed);
                        }
                        let cost = 500 + (i as i64 * 37 + c as i64 * 11) % 501;
                        finish(&r, &s, res, cost).await;
                        served += 1;
                    }
                    Err(_) => return served,
                }
            }
            served
        }));
    }
    let mut served = 0;
    for c in clients {
        served += c.await.expect("client");
    }
    // Every slice closes within its life and is settled by its replica's tick.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ticking.store(false, Ordering::Relaxed);
    for t in tickers {
        t.await.expect("ticker");
    }
    for r in &replicas {
        r.tick().await;
        assert_eq!(r.slices(), (0, 0));
    }
    let charged = in_ledger(&s).await;
    assert!(charged <= limit, "overspent: {charged} of {limit}");
    assert_eq!(in_redis(&s).await, [charged, 0, 0]);
    let sliced = from_slices.load(Ordering::Relaxed);
    assert!(
        sliced * 2 > served,
        "only {sliced} of {served} requests were served from slices"
    );
    // Refused only when less than one worst case was left, apart from what requests in
    // flight at the end held beyond their cost (24 of them at most, 500 each).
    assert!(
        charged > limit - WORST - 24 * 500,
        "refused with {} left",
        limit - charged
    );
}

/// The whole path on three real replicas: a key with steady traffic on each is served
/// from slices (the gateway's records name them in the ledger), and once the slices are
/// closed and settled Redis equals the ledger, with nothing held.
#[tokio::test]
async fn real_replicas_serve_a_hot_key_from_slices_and_the_ledger_names_them() {
    let cluster = start_cluster(30_000, 0).await;
    let (key_id, key) = cluster
        .create_key(0, serde_json::json!({"name": "hot"}))
        .await;
    let mut tasks = Vec::new();
    for client_no in 0..24 {
        let client = cluster.client.clone();
        let url = format!(
            "{}/v1/chat/completions",
            cluster.replicas[client_no % 3].base
        );
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            for _ in 0..15 {
                let r = client
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&chat("hot [[fake:words=5]]"))
                    .send()
                    .await
                    .expect("request");
                ok += usize::from(r.status() == 200);
                let _ = r.bytes().await;
            }
            ok
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await.expect("client");
    }
    assert_eq!(ok, 360);
    // Slices admit for a second; each replica's tick settles its closed ones.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pool = cluster.db.pool().await;
    let (named, slices): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(lease_id), COUNT(DISTINCT lease_id) FROM usage_records WHERE key_id = $1",
    )
    .bind(key_id)
    .fetch_one(&pool)
    .await
    .expect("leases");
    assert!(named >= 180, "only {named} of 360 records name a slice");
    assert!(slices >= 3, "{slices} slices for three replicas");
    let (sum, usage) = cluster.ledger_key(key_id).await;
    assert_eq!(sum, usage);
    let shared = cluster.shared_key(key_id).await;
    assert_eq!((shared.spent, shared.reserved), (sum, 0));
    let (total, charged, _) = cluster.ledger().await;
    assert_eq!(total, charged);
    assert_eq!(cluster.shared_account(1).await.spent, charged);
    assert_eq!(cluster.shared_account(1).await.reserved, 0);

    // An operator sees where reservations were taken (the counters follow every 5 s).
    let counted = |text: &str, source: &str| -> u64 {
        let prefix = format!("tollgate_shared_reservations_total{{source=\"{source}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .map_or(0, |v| v.trim().parse().expect("a count"))
    };
    let deadline = Instant::now() + Duration::from_secs(12);
    let (from_slices, in_redis) = loop {
        let mut both = (0, 0);
        for replica in &cluster.replicas {
            let text = cluster
                .client
                .get(format!("{}/metrics", replica.base))
                .send()
                .await
                .expect("metrics")
                .text()
                .await
                .expect("text");
            both.0 += counted(&text, "slice");
            both.1 += counted(&text, "redis");
        }
        if both.0 + both.1 == 360 || Instant::now() > deadline {
            break both;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(from_slices + in_redis, 360);
    assert_eq!(from_slices as i64, named);
}
