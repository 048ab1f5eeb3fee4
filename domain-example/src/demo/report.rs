//! The final report: a readable summary with tables, or one JSON object (`--json`).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use comfy_table::{CellAlignment, ContentArrangement, Table, presets};
use inventory::ReadModels;
use serde::Serialize;

use super::counters::Counters;
use super::options::SimulateOptions;
use super::output::{count, print_stdout};

/// How many rows the alert and top-seller lists show.
const TOP: usize = 10;

/// What the report is made from.
pub(crate) struct Inputs<'a> {
    pub(crate) options: &'a SimulateOptions,
    pub(crate) seed: u64,
    pub(crate) backend: String,
    pub(crate) elapsed: Duration,
    pub(crate) counters: &'a Counters,
    pub(crate) views: &'a ReadModels,
    pub(crate) events_in_log: u64,
    pub(crate) projection_lag: u64,
    /// On Kafka: the partitions this process owned at the end, and the partition count.
    pub(crate) owned_partitions: Option<(Vec<u32>, u32)>,
}

/// The report; its JSON form is the `--json` output.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    backend: String,
    data_dir: String,
    seed: u64,
    stores: u32,
    skus: u32,
    concurrency: u32,
    duration_secs: f64,
    /// Commands sent by this run.
    commands: u64,
    /// Commands committed by this run.
    committed: u64,
    /// Commands the aggregates rejected (nothing appended).
    rejected: u64,
    /// Commands that failed for another reason (overload, timeout, storage).
    failed: u64,
    /// Commands answered `NotOwner`: their item's partition had just moved to another
    /// process (Kafka only; such a command is not a failure).
    not_owner: u64,
    /// On Kafka: the partitions the consumer group assigned this process (at the end of the
    /// run); `null` on the embedded log, where one process serves every partition.
    partitions: Option<Partitions>,
    /// Events appended by this run.
    events_committed: u64,
    commands_per_sec: f64,
    /// Events in the log, all runs: the sum of the partitions' end offsets.
    events_in_log: u64,
    /// Stock items with at least one event in the log.
    aggregates: u64,
    /// Events not yet applied by the slowest view (0 once caught up).
    projection_lag: u64,
    rejections: BTreeMap<String, u64>,
    first_failure: Option<String>,
    low_stock_items: u64,
    by_store: Vec<StoreRow>,
    low_stock: Vec<AlertRow>,
    top_sellers: Vec<SellerRow>,
}

#[derive(Debug, Serialize)]
struct Partitions {
    /// Owned by this process, ascending.
    owned: Vec<u32>,
    /// The partition count of the log.
    of: u32,
}

#[derive(Debug, Default, Serialize)]
struct StoreRow {
    store: String,
    skus: u64,
    on_hand: u64,
    low_stock: u64,
    units_sold: u64,
    sales: u64,
}

#[derive(Debug, Serialize)]
struct AlertRow {
    item: String,
    on_hand: u64,
    reorder_point: u64,
}

#[derive(Debug, Serialize)]
struct SellerRow {
    item: String,
    units_sold: u64,
    sales: u64,
}

impl Report {
    /// Reads the views (caught up by now) and the counters.
    pub(crate) fn collect(inputs: Inputs<'_>) -> anyhow::Result<Report> {
        let Inputs {
            options,
            seed,
            backend,
            elapsed,
            counters,
            views,
            events_in_log,
            projection_lag,
            owned_partitions,
        } = inputs;
        let mut by_store: BTreeMap<String, StoreRow> = BTreeMap::new();
        let levels = views.stock().all().context("reading the stock view")?;
        let aggregates = levels.len() as u64;
        for (id, level) in levels {
            let row = by_store.entry(id.store().to_string()).or_default();
            row.skus += 1;
            row.on_hand += level.on_hand;
            row.low_stock += u64::from(level.is_low());
        }
        for (store, sales) in views.sales_by_store().context("reading the sales view")? {
            let row = by_store.entry(store).or_default();
            row.units_sold = sales.units;
            row.sales = sales.sales;
        }
        let by_store = by_store
            .into_iter()
            .map(|(store, row)| StoreRow { store, ..row })
            .collect();
        let alerts = views.alerts().context("reading the low-stock view")?;
        let low_stock_items = alerts.len() as u64;
        let low_stock = alerts
            .into_iter()
            .take(TOP)
            .map(|(id, alert)| AlertRow {
                item: id.to_string(),
                on_hand: alert.on_hand,
                reorder_point: alert.reorder_point,
            })
            .collect();
        let top_sellers = views
            .top_sellers(TOP)
            .context("reading the sales view")?
            .into_iter()
            .map(|(id, sales)| SellerRow {
                item: id.to_string(),
                units_sold: sales.units,
                sales: sales.sales,
            })
            .collect();
        let commands = counters.commands.load(Ordering::Relaxed);
        let seconds = elapsed.as_secs_f64();
        Ok(Report {
            backend,
            data_dir: options.storage.data_dir.display().to_string(),
            seed,
            stores: options.stores,
            skus: options.skus,
            concurrency: options.concurrency,
            duration_secs: round2(seconds),
            commands,
            committed: counters.committed.load(Ordering::Relaxed),
            rejected: counters.rejected.load(Ordering::Relaxed),
            failed: counters.failed.load(Ordering::Relaxed),
            not_owner: counters.not_owner.load(Ordering::Relaxed),
            partitions: owned_partitions.map(|(owned, of)| Partitions { owned, of }),
            events_committed: counters.events.load(Ordering::Relaxed),
            commands_per_sec: round2(if seconds > 0.0 {
                commands as f64 / seconds
            } else {
                0.0
            }),
            events_in_log,
            aggregates,
            projection_lag,
            rejections: counters.rejections(),
            first_failure: counters.first_failure(),
            low_stock_items,
            by_store,
            low_stock,
            top_sellers,
        })
    }

    /// Prints the report as one JSON object on stdout.
    pub(crate) fn print_json(&self) -> anyhow::Result<()> {
        let json = serde_json::to_string_pretty(self).context("encoding the report")?;
        print_stdout(&(json + "\n"))
    }

    /// Prints the summary and tables on stdout.
    pub(crate) fn print_human(&self) -> anyhow::Result<()> {
        print_stdout(&self.render())
    }

    /// The summary and tables, as text.
    fn render(&self) -> String {
        let mut out = String::new();
        outln!(
            out,
            "inventory: {} stores × {} SKUs, {} tills, {:.1} s on {} (seed {})",
            self.stores,
            self.skus,
            self.stores * self.concurrency,
            self.duration_secs,
            self.backend,
            self.seed,
        );
        outln!(out);
        let rejections = if self.rejections.is_empty() {
            String::new()
        } else {
            let reasons: Vec<String> = self
                .rejections
                .iter()
                .map(|(reason, n)| format!("{reason} {}", count(*n)))
                .collect();
            format!("  ({})", reasons.join(", "))
        };
        let mut lines = vec![
            (
                "commands",
                count(self.commands),
                format!("  ({} per second)", count(self.commands_per_sec as u64)),
            ),
            (
                "committed",
                count(self.committed),
                format!("  ({} events appended)", count(self.events_committed)),
            ),
            ("rejected", count(self.rejected), rejections),
            (
                "failed",
                count(self.failed),
                self.first_failure
                    .as_ref()
                    .map(|f| format!("  (first: {f})"))
                    .unwrap_or_default(),
            ),
            (
                "events in log",
                count(self.events_in_log),
                "  (all runs)".into(),
            ),
            ("stock items", count(self.aggregates), String::new()),
            (
                "projection lag",
                count(self.projection_lag),
                if self.projection_lag == 0 {
                    "  (views caught up)".into()
                } else {
                    String::new()
                },
            ),
        ];
        if let Some(partitions) = &self.partitions {
            let owned: Vec<String> = partitions.owned.iter().map(u32::to_string).collect();
            lines.insert(
                0,
                (
                    "partitions",
                    format!("{}/{}", partitions.owned.len(), partitions.of),
                    format!("  (assigned by the consumer group: {})", owned.join(" ")),
                ),
            );
            lines.insert(
                5,
                (
                    "not owner",
                    count(self.not_owner),
                    "  (their partition had just moved to another process)".into(),
                ),
            );
        }
        for (label, value, note) in lines {
            outln!(out, "  {label:<15}{value:>12}{note}");
        }

        outln!(out, "\nStock by store (units sold: all runs)");
        let mut table = new_table(&[
            "store",
            "SKUs",
            "on hand",
            "low stock",
            "units sold",
            "sales",
        ]);
        for row in &self.by_store {
            table.add_row(vec![
                row.store.clone(),
                count(row.skus),
                count(row.on_hand),
                count(row.low_stock),
                count(row.units_sold),
                count(row.sales),
            ]);
        }
        outln!(out, "{table}");

        if self.low_stock.is_empty() {
            outln!(out, "\nLow-stock alerts: none");
        } else {
            outln!(
                out,
                "\nLow-stock alerts: {} items at or below their reorder point (emptiest {})",
                count(self.low_stock_items),
                self.low_stock.len()
            );
            let mut table = new_table(&["item", "on hand", "reorder point"]);
            for row in &self.low_stock {
                table.add_row(vec![
                    row.item.clone(),
                    count(row.on_hand),
                    count(row.reorder_point),
                ]);
            }
            outln!(out, "{table}");
        }

        if !self.top_sellers.is_empty() {
            outln!(out, "\nTop sellers (all runs)");
            let mut table = new_table(&["item", "units sold", "sales"]);
            for row in &self.top_sellers {
                table.add_row(vec![
                    row.item.clone(),
                    count(row.units_sold),
                    count(row.sales),
                ]);
            }
            outln!(out, "{table}");
        }
        outln!(
            out,
            "\nData in {}. Run again to continue from here; `inventory query --store S --sku K` shows one item.",
            self.data_dir
        );
        out
    }
}

/// A table with `header`, numbers right-aligned.
fn new_table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.to_vec());
    for index in 1..header.len() {
        if let Some(column) = table.column_mut(index) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    table
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
