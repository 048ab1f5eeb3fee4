//! The simulated chain: every store runs `--concurrency` tills, each a task sending commands
//! to the store's stock items until the time is up (or Ctrl-C).
//!
//! A till mostly records sales (now and then a large one, which oversells and is rejected),
//! receives shipments (and restocks items the low-stock view lists), adjusts stock after a
//! "stocktake" and sets reorder points. Everything it learns about stock comes from command
//! outcomes and the views, as a real till's would.
//!
//! On Kafka several demo processes can share the chain: each serves the partitions its
//! consumer group assigns it, and its tills drive only the items of those partitions (the
//! other processes drive the rest). A command that races a partition moving away is answered
//! `NotOwner`; such commands are counted apart from failures.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use inventory::{LowStockAlert, ReadModels, StockCommand, StockItem, StockItemId};
use keel::{Aggregate, AggregateHandle, CommandError, Runtime};
use keel_projections::ViewHandle;
use tokio::time::Instant;

use super::backend::{self, events_in_log};
use super::counters::Counters;
use super::options::SimulateOptions;
use super::progress::Progress;
use super::report::{self, Report};

/// How long the views may take to catch up with the log at the end of a run.
const CATCH_UP: Duration = Duration::from_secs(60);

/// Runs the simulation and prints the report.
pub(crate) async fn simulate(options: SimulateOptions) -> anyhow::Result<()> {
    let seed = options.seed.unwrap_or_else(clock_seed);
    let opened = backend::open(&options.storage).await?;
    let log = opened.log.clone();
    let (runtime, membership) = opened.start_runtime().await?;
    let views = ReadModels::start(log.clone(), &opened.views_dir)
        .await
        .with_context(|| format!("starting the views in {}", opened.views_dir.display()))?;

    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let interrupt = {
        let stop = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                stop.store(true, Ordering::Relaxed);
            }
        })
    };

    let started = Instant::now();
    let deadline = started + options.duration;
    let progress = Progress::start(options.duration, counters.clone(), views.clone());
    let stock = runtime.aggregate::<StockItem>();
    // Distinguishes this run's shipment ids from every other run's.
    let run_tag = format!("{:x}", clock_seed() & 0xffff_ffff);
    let partition_count = log.partition_count();
    let mut tills = tokio::task::JoinSet::new();
    for store in 0..options.stores {
        let store_name = format!("store-{:02}", store + 1);
        let items: Arc<[StockItemId]> = (0..options.skus)
            .map(|sku| StockItemId::new(store_name.clone(), format!("sku-{:04}", sku + 1)))
            .collect::<Result<_, _>>()
            .context("building the simulated item ids")?;
        let partitions: Arc<[u32]> = items
            .iter()
            .map(|id| {
                keel::log::partition_for(
                    &keel::log::aggregate_key(StockItem::TYPE, &id.to_string()),
                    partition_count,
                )
            })
            .collect();
        for number in 0..options.concurrency {
            let till = Till {
                name: format!("{run_tag}-{store_name}-{number}"),
                items: items.clone(),
                partitions: partitions.clone(),
                ownership: membership.shared.then(|| runtime.clone()),
                rng: fastrand::Rng::with_seed(
                    seed ^ (u64::from(store) << 32 | u64::from(number)).wrapping_mul(0x9e37_79b9),
                ),
                stock: stock.clone(),
                low_stock: views.low_stock().clone(),
                counters: counters.clone(),
                shipments: 0,
                last_shipment: None,
            };
            let stop = stop.clone();
            tills.spawn(till.run(deadline, stop));
        }
    }
    while tills.join_next().await.is_some() {}
    interrupt.abort();
    let elapsed = started.elapsed();
    progress.finish().await;

    // Every acknowledged command's events are in the log now; the views catch up to them.
    views
        .caught_up(CATCH_UP)
        .await
        .context("waiting for the views to catch up")?;
    let report = Report::collect(report::Inputs {
        options: &options,
        seed,
        backend: log.describe(),
        elapsed,
        counters: &counters,
        views: &views,
        // Read from the log itself. Shutting down adds only snapshots and checkpoints, so the
        // count is final here.
        events_in_log: events_in_log(log.as_ref()).await?,
        projection_lag: views.lag().await.context("measuring the views' lag")?,
        owned_partitions: membership
            .shared
            .then(|| (runtime.owned_partitions(), partition_count)),
    })?;

    // Graceful shutdown before reporting: the persisted view commits its last batch, live
    // aggregates snapshot, and the log flushes and closes.
    views
        .shutdown(Duration::from_secs(30))
        .await
        .context("stopping the views")?;
    runtime
        .shutdown()
        .await
        .context("shutting the runtime down")?;
    drop(log);

    if options.json {
        report.print_json()
    } else {
        report.print_human()
    }
}

/// One till of one store.
struct Till {
    name: String,
    items: Arc<[StockItemId]>,
    /// The partition of each item.
    partitions: Arc<[u32]>,
    /// When partitions are shared with other processes: the runtime, asked which partitions
    /// this process owns right now.
    ownership: Option<Runtime>,
    rng: fastrand::Rng,
    stock: AggregateHandle<StockItem>,
    low_stock: ViewHandle<StockItemId, LowStockAlert>,
    counters: Arc<Counters>,
    shipments: u64,
    last_shipment: Option<(usize, String)>,
}

const REASONS: [&str; 4] = ["stocktake", "damaged", "customer return", "shrinkage"];

impl Till {
    async fn run(mut self, deadline: Instant, stop: Arc<AtomicBool>) {
        while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
            let Some(index) = self.pick_item() else {
                // This process owns no partition at the moment (a rebalance): wait for one.
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let (index, command) = self.next_command(index);
            let id = self.items[index].to_string();
            self.counters.commands.fetch_add(1, Ordering::Relaxed);
            match self.stock.send(&id, command).await {
                Ok(committed) => {
                    self.counters.committed.fetch_add(1, Ordering::Relaxed);
                    self.counters
                        .events
                        .fetch_add(committed.events.len() as u64, Ordering::Relaxed);
                }
                Err(CommandError::Rejected(e)) => self.counters.reject(&e),
                Err(CommandError::ShuttingDown) => break,
                Err(CommandError::NotOwner { .. }) => {
                    self.counters.not_owner.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    self.counters.fail(&e);
                    // Overloaded or a transient failure: back off before the next command.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    /// A random item this process serves; `None` when it serves none right now.
    fn pick_item(&mut self) -> Option<usize> {
        let Some(runtime) = &self.ownership else {
            return Some(self.rng.usize(..self.items.len()));
        };
        let owned = runtime.owned_partitions();
        if owned.is_empty() {
            return None;
        }
        // Random draws first (cheap while this process owns a good share); a scan when they
        // keep missing, so a process owning one partition of many still finds its items.
        for _ in 0..16 {
            let index = self.rng.usize(..self.items.len());
            if owned.binary_search(&self.partitions[index]).is_ok() {
                return Some(index);
            }
        }
        let mine: Vec<usize> = (0..self.items.len())
            .filter(|&i| owned.binary_search(&self.partitions[i]).is_ok())
            .collect();
        (!mine.is_empty()).then(|| mine[self.rng.usize(..mine.len())])
    }

    /// What to do with item `index` (or with another item the till remembers).
    fn next_command(&mut self, index: usize) -> (usize, StockCommand) {
        // A till that sees an item on the low-stock list often orders a restock.
        if let Ok(Some(alert)) = self.low_stock.get(&self.items[index])
            && self.rng.bool()
        {
            let quantity = (alert.reorder_point * 3).max(20);
            return (index, self.shipment(index, quantity));
        }
        let rng = &mut self.rng;
        let command = match rng.u32(0..100) {
            0..80 => {
                // Mostly small baskets; a few bulk orders that often oversell.
                let quantity = if rng.u32(0..100) < 3 {
                    rng.u64(8..=30)
                } else {
                    rng.u64(1..=4)
                };
                StockCommand::sell(quantity)
            }
            80..88 => {
                if rng.u32(0..25) == 0
                    && let Some((index, shipment_id)) = self.last_shipment.clone()
                {
                    // The same delivery booked twice: rejected as a duplicate.
                    return (
                        index,
                        StockCommand::ReceiveShipment {
                            quantity: 10,
                            shipment_id: Some(shipment_id),
                        },
                    );
                }
                let quantity = rng.u64(10..=40);
                return (index, self.shipment(index, quantity));
            }
            88..94 => {
                let delta = if rng.bool() {
                    rng.i64(-5..=-1)
                } else {
                    rng.i64(1..=3)
                };
                StockCommand::adjust(delta, REASONS[rng.usize(..REASONS.len())])
            }
            _ => StockCommand::reorder_at(rng.u64(3..=15)),
        };
        (index, command)
    }

    fn shipment(&mut self, index: usize, quantity: u64) -> StockCommand {
        self.shipments += 1;
        let shipment_id = format!("{}-{}", self.name, self.shipments);
        self.last_shipment = Some((index, shipment_id.clone()));
        StockCommand::ReceiveShipment {
            quantity,
            shipment_id: Some(shipment_id),
        }
    }
}

/// A seed from the clock, for runs without `--seed`.
fn clock_seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
