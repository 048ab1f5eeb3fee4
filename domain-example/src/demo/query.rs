//! `inventory query`: one item's stock, asked of its aggregate through the runtime, and its
//! audit history, read from the log.

use anyhow::Context;
use inventory::{StockEvent, StockItem, StockItemId};
use keel::Runtime;
use keel_projections::history::History;
use serde::Serialize;

use super::backend;
use super::options::QueryOptions;
use super::output::{count, print_stdout};

#[derive(Debug, Serialize)]
struct ItemReport {
    item: String,
    store: String,
    sku: String,
    on_hand: u64,
    reorder_point: Option<u64>,
    low_stock: bool,
    received_total: u64,
    sold_total: u64,
    /// Events of the item in the log.
    events: usize,
    /// The most recent events, oldest first.
    history: Vec<HistoryRow>,
}

#[derive(Debug, Serialize)]
struct HistoryRow {
    seq: u64,
    timestamp_ms: i64,
    command_id: Option<String>,
    event: StockEvent,
}

/// Prints the item named by `options`.
pub(crate) async fn query(options: QueryOptions) -> anyhow::Result<()> {
    let id = StockItemId::new(&options.store, &options.sku).with_context(|| {
        format!(
            "--store {:?} --sku {:?} do not name a stock item",
            options.store, options.sku
        )
    })?;
    let opened = backend::open(&options.storage).await?;
    let log = opened.log;
    let runtime = Runtime::builder()
        .backend(log.clone())
        .start()
        .await
        .with_context(|| format!("starting the runtime on {}", log.describe()))?;
    let key = id.to_string();
    let stock = runtime.aggregate::<StockItem>();
    let state = stock
        .query(&key, StockItem::clone)
        .await
        .with_context(|| format!("loading {key}"))?;
    let history = History::new(log.clone())
        .events::<StockItem>(&key)
        .await
        .with_context(|| format!("reading the history of {key}"))?;
    runtime
        .shutdown()
        .await
        .context("shutting the runtime down")?;

    let events = history.len();
    let shown = if options.history == 0 {
        events
    } else {
        options.history.min(events)
    };
    let report = ItemReport {
        item: key,
        store: id.store().to_string(),
        sku: id.sku().to_string(),
        on_hand: state.on_hand(),
        reorder_point: state.reorder_point(),
        low_stock: state.is_low(),
        received_total: state.received_total(),
        sold_total: state.sold_total(),
        events,
        history: history
            .into_iter()
            .skip(events - shown)
            .map(|entry| HistoryRow {
                seq: entry.envelope.seq,
                timestamp_ms: entry.envelope.timestamp_ms,
                command_id: entry.envelope.command_id,
                event: entry.event,
            })
            .collect(),
    };
    if options.json {
        let json = serde_json::to_string_pretty(&report).context("encoding the item")?;
        print_stdout(&(json + "\n"))
    } else {
        print_stdout(&render(&report))
    }
}

/// The item and its history, as text.
fn render(item: &ItemReport) -> String {
    let mut out = String::new();
    outln!(
        out,
        "{}  (store {}, SKU {})",
        item.item,
        item.store,
        item.sku
    );
    if item.events == 0 {
        outln!(out, "  no events: this item has never been stocked or sold");
        return out;
    }
    outln!(out, "  on hand        {:>10}", count(item.on_hand));
    match item.reorder_point {
        Some(level) => outln!(
            out,
            "  reorder point  {:>10}{}",
            count(level),
            if item.low_stock {
                "  LOW STOCK: reorder"
            } else {
                ""
            }
        ),
        None => outln!(out, "  reorder point        none"),
    }
    outln!(
        out,
        "  received       {:>10}  (all time)",
        count(item.received_total)
    );
    outln!(
        out,
        "  sold           {:>10}  (all time)",
        count(item.sold_total)
    );
    outln!(
        out,
        "\nHistory: {} of {} events{}",
        item.history.len(),
        item.events,
        if item.history.len() < item.events {
            " (most recent; --history 0 shows all)"
        } else {
            ""
        }
    );
    for row in &item.history {
        outln!(
            out,
            "  #{:<6} {}  {}",
            row.seq,
            utc(row.timestamp_ms),
            describe(&row.event)
        );
    }
    out
}

/// One event, as a line of the audit trail.
fn describe(event: &StockEvent) -> String {
    match event {
        StockEvent::ShipmentReceived {
            quantity,
            shipment_id,
        } => match shipment_id {
            Some(id) => format!("received {quantity} (shipment {id})"),
            None => format!("received {quantity}"),
        },
        StockEvent::SaleRecorded { quantity } => format!("sold {quantity}"),
        StockEvent::StockAdjusted { delta, reason } => format!("adjusted {delta:+} ({reason})"),
        StockEvent::ReorderPointSet { level } => format!("reorder point set to {level}"),
        StockEvent::LowStockReached {
            on_hand,
            reorder_point,
        } => format!("LOW STOCK: {on_hand} on hand, reorder point {reorder_point}"),
    }
}

/// Milliseconds since the Unix epoch as `YYYY-MM-DD HH:MM:SS.mmm` (UTC).
fn utc(timestamp_ms: i64) -> String {
    let (days, ms_of_day) = (
        timestamp_ms.div_euclid(86_400_000),
        timestamp_ms.rem_euclid(86_400_000),
    );
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s, ms) = (
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1000 % 60,
        ms_of_day % 1000,
    );
    format!("{year:04}-{month:02}-{day:02} {h:02}:{m:02}:{s:02}.{ms:03}")
}

#[cfg(test)]
mod tests {
    use super::utc;

    #[test]
    fn formats_utc_timestamps() {
        assert_eq!(utc(0), "1970-01-01 00:00:00.000");
        assert_eq!(utc(951_782_400_123), "2000-02-29 00:00:00.123");
        assert_eq!(utc(1_767_225_599_999), "2025-12-31 23:59:59.999");
    }
}
