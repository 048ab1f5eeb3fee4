//! The inventory views against the log: each equals a fresh replay of the whole log, agrees with
//! the aggregates, serves a command's own write, and (persisted) survives a restart without
//! counting an event twice.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use inventory::{
    LowStockAlerts, ReadModels, Sales, SalesKey, SalesTotals, StockCommand, StockItem, StockItemId,
    StockLevel, StockLevels,
};
use keel::log::{LogBackend, MemoryLog, StoredRecord};
use keel::{AggregateHandle, EmbeddedLog, Runtime};
use keel_projections::replay;

const WAIT: Duration = Duration::from_secs(10);

/// Every record of the log, partition by partition.
async fn whole_log(backend: &Arc<dyn LogBackend>) -> Vec<StoredRecord> {
    let mut records = Vec::new();
    for partition in 0..backend.partition_count() {
        let end = backend.end_offset(partition).await.expect("end offset");
        let mut from = 0;
        while from < end {
            let batch = backend
                .read(partition, from, 1024, Duration::ZERO)
                .await
                .expect("read");
            from = batch.last().expect("records below the end").position.offset + 1;
            records.extend(batch);
        }
    }
    records
}

fn ids(stores: usize, skus: usize) -> Vec<StockItemId> {
    (0..stores)
        .flat_map(|s| (0..skus).map(move |k| (s, k)))
        .map(|(s, k)| StockItemId::new(format!("s{s}"), format!("k{k}")).expect("valid id"))
        .collect()
}

fn random_command(rng: &mut fastrand::Rng) -> StockCommand {
    match rng.u8(0..10) {
        0..=2 => StockCommand::receive(rng.u64(1..20)),
        3..=6 => StockCommand::sell(rng.u64(1..8)),
        7 => StockCommand::adjust(rng.i64(-5..=5), "stocktake"),
        _ => StockCommand::reorder_at(rng.u64(0..10)),
    }
}

/// Sends `count` random commands (some rejected) to `items`; returns how many committed.
async fn run_commands(
    stock: &AggregateHandle<StockItem>,
    items: &[StockItemId],
    seed: u64,
    count: usize,
) -> usize {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut committed = 0;
    for _ in 0..count {
        let id = &items[rng.usize(..items.len())];
        if stock
            .send(&id.to_string(), random_command(&mut rng))
            .await
            .is_ok()
        {
            committed += 1;
        }
    }
    committed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_view_equals_a_fresh_replay_and_agrees_with_the_aggregates() {
    for seed in [1, 7, 42] {
        let backend: Arc<dyn LogBackend> = Arc::new(MemoryLog::new(4));
        let runtime = Runtime::builder()
            .backend(backend.clone())
            .start()
            .await
            .expect("runtime starts");
        let views = ReadModels::start_in_memory(backend.clone())
            .await
            .expect("views start");
        let stock = runtime.aggregate::<StockItem>();
        let items = ids(3, 4);
        let committed = run_commands(&stock, &items, seed, 400).await;
        assert!(committed > 100, "seed {seed}: only {committed} committed");

        views.caught_up(WAIT).await.expect("views catch up");
        assert_eq!(views.lag().await.expect("lag"), 0);
        let log = whole_log(&backend).await;

        let as_map = |entries: Vec<(StockItemId, StockLevel)>| -> HashMap<_, _> {
            entries.into_iter().collect()
        };
        let levels = as_map(views.stock().all().expect("stock view"));
        assert_eq!(
            levels,
            replay(&StockLevels::default(), &log).expect("replay"),
            "seed {seed}: stock levels"
        );
        let alerts: HashMap<_, _> = views
            .low_stock()
            .all()
            .expect("alerts")
            .into_iter()
            .collect();
        assert_eq!(
            alerts,
            replay(&LowStockAlerts::default(), &log).expect("replay"),
            "seed {seed}: low-stock alerts"
        );
        let sales: HashMap<_, _> = views.sales().all().expect("sales").into_iter().collect();
        assert_eq!(
            sales,
            replay(&SalesTotals::default(), &log).expect("replay"),
            "seed {seed}: sales"
        );

        // The views agree with the aggregates themselves.
        for id in &items {
            let (on_hand, reorder_point, low, sold) = stock
                .query(&id.to_string(), |item| {
                    (
                        item.on_hand(),
                        item.reorder_point(),
                        item.is_low(),
                        item.sold_total(),
                    )
                })
                .await
                .expect("query");
            let level = levels.get(id).copied().unwrap_or_default();
            assert_eq!(
                (level.on_hand, level.reorder_point),
                (on_hand, reorder_point)
            );
            assert_eq!(alerts.contains_key(id), low, "seed {seed}: alert of {id}");
            if let Some(alert) = alerts.get(id) {
                assert_eq!(alert.on_hand, on_hand);
            }
            let item_sales = sales.get(&SalesKey::Item(id.clone())).copied();
            assert_eq!(item_sales.map_or(0, |s| s.units), sold);
        }
        // Store totals are the sums of their items.
        let mut by_store: BTreeMap<String, u64> = BTreeMap::new();
        for (key, s) in &sales {
            if let SalesKey::Item(id) = key {
                *by_store.entry(id.store().to_string()).or_default() += s.units;
            }
        }
        let store_totals: BTreeMap<String, u64> = views
            .sales_by_store()
            .expect("store sales")
            .into_iter()
            .map(|(store, s)| (store, s.units))
            .collect();
        assert_eq!(store_totals, by_store);

        views.shutdown(WAIT).await.expect("views stop");
        runtime.shutdown().await.expect("runtime stops");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_that_waits_for_a_commands_position_sees_it() {
    let backend: Arc<dyn LogBackend> = Arc::new(MemoryLog::new(4));
    let runtime = Runtime::builder()
        .backend(backend.clone())
        .start()
        .await
        .expect("runtime starts");
    let views = ReadModels::start_in_memory(backend)
        .await
        .expect("views start");
    let stock = runtime.aggregate::<StockItem>();
    let id = StockItemId::new("s1", "k1").expect("valid id");
    let key = id.to_string();

    stock
        .send(&key, StockCommand::receive(10))
        .await
        .expect("shipment");
    stock
        .send(&key, StockCommand::reorder_at(4))
        .await
        .expect("reorder point");
    let sale = stock.send(&key, StockCommand::sell(7)).await.expect("sale");
    let position = sale.position.expect("a sale appends events");
    views
        .wait_for(position, WAIT)
        .await
        .expect("views reach the sale");

    assert_eq!(
        views.stock().get(&id).expect("stock view"),
        Some(StockLevel {
            on_hand: 3,
            reorder_point: Some(4)
        })
    );
    let alerts = views.alerts().expect("alerts");
    assert_eq!(alerts.len(), 1);
    assert_eq!((alerts[0].1.on_hand, alerts[0].1.reorder_point), (3, 4));
    assert_eq!(
        views.top_sellers(5).expect("top sellers"),
        vec![(id.clone(), Sales { units: 7, sales: 1 })]
    );

    // A restock clears the alert.
    let restock = stock
        .send(&key, StockCommand::receive(5))
        .await
        .expect("shipment");
    views
        .wait_for(restock.position.expect("appended"), WAIT)
        .await
        .expect("views reach the restock");
    assert!(views.alerts().expect("alerts").is_empty());

    views.shutdown(WAIT).await.expect("views stop");
    runtime.shutdown().await.expect("runtime stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persisted_sales_resume_after_a_restart_without_counting_twice() {
    let dir = tempfile::tempdir().expect("temp dir");
    let views_dir = dir.path().join("views");
    let backend: Arc<dyn LogBackend> =
        Arc::new(EmbeddedLog::open(dir.path().join("log"), 4).expect("log opens"));
    let runtime = Runtime::builder()
        .backend(backend.clone())
        .start()
        .await
        .expect("runtime starts");
    let stock = runtime.aggregate::<StockItem>();
    let items = ids(2, 3);

    // Each round restarts the views on their files: the persisted sales view resumes from its
    // checkpoint, takes in only what is new, and still equals a replay of the whole log.
    for (round, seed) in [(1, 11), (2, 12), (3, 0)] {
        let views = ReadModels::start(backend.clone(), &views_dir)
            .await
            .expect("views start");
        if seed != 0 {
            run_commands(&stock, &items, seed, 150).await;
        }
        views.caught_up(WAIT).await.expect("views catch up");
        let sales: HashMap<SalesKey, Sales> =
            views.sales().all().expect("sales").into_iter().collect();
        let expected = replay(&SalesTotals::default(), &whole_log(&backend).await).expect("replay");
        assert!(!expected.is_empty());
        assert_eq!(sales, expected, "round {round}");
        views.shutdown(WAIT).await.expect("views stop");
    }
    runtime.shutdown().await.expect("runtime stops");
}
