//! inventory: retail inventory on keel — stock per store and SKU, sales, low-stock alerts —
//! and the `inventory` demo binary that simulates a chain of stores.
//!
//! # Layout
//!
//! | file | concept |
//! |---|---|
//! | `id.rs` | [`StockItemId`]: a SKU in a store, the aggregate id `"{store}:{sku}"`, as the views read it from the log |
//! | `stock_item.rs` | [`StockItem`]: the aggregate — its rules, `handle` and `apply`, and its given/when/then tests |
//! | `command.rs` | [`StockCommand`]: receive a shipment, record a sale, adjust stock, set a reorder point |
//! | `event.rs` | [`StockEvent`]: what happened, as stored in the log, and its effect on stock |
//! | `error.rs` | [`StockError`]: why a command is rejected |
//! | `stock_levels.rs` | [`StockLevels`]: units on hand per store and SKU (in-memory view); like the two below, an `AggregateProjection` over [`StockItem`]'s events |
//! | `low_stock.rs` | [`LowStockAlerts`]: items at or below their reorder point (in-memory view) |
//! | `sales.rs` | [`SalesTotals`]: units sold per store and SKU, with store totals (persisted view) |
//! | `read_models.rs` | [`ReadModels`]: the three views started together, and their queries |
//!
//! The `inventory` binary (not part of the library):
//!
//! | file | part |
//! |---|---|
//! | `main.rs` | the command line (clap): `inventory [OPTIONS]` simulates, `inventory query` shows an item |
//! | `demo.rs`, `demo/` | options, output, opening the log, the simulated stores and their counters, the progress line, the report, `query` (table in `demo.rs`) |
//!
//! ```
//! use inventory::{StockCommand, StockItem, StockItemId};
//! use keel::Runtime;
//! use keel::log::MemoryLog;
//! # use std::sync::Arc;
//! # tokio_test::block_on(async {
//! let runtime = Runtime::builder().backend(Arc::new(MemoryLog::new(4))).start().await.unwrap();
//! let stock = runtime.aggregate::<StockItem>();
//! let id = StockItemId::new("berlin-01", "sku-0042").unwrap().to_string();
//! stock.send(&id, StockCommand::receive(10)).await.unwrap();
//! stock.send(&id, StockCommand::sell(3)).await.unwrap();
//! assert_eq!(stock.query(&id, |item| item.on_hand()).await.unwrap(), 7);
//! runtime.shutdown().await.unwrap();
//! # });
//! ```

mod command;
mod error;
mod event;
mod id;
mod low_stock;
mod read_models;
mod sales;
mod stock_item;
mod stock_levels;

pub use command::StockCommand;
pub use error::StockError;
pub use event::StockEvent;
pub use id::{InvalidId, StockItemId};
pub use low_stock::{LowStockAlert, LowStockAlerts};
pub use read_models::ReadModels;
pub use sales::{Sales, SalesKey, SalesTotals};
pub use stock_item::{RECENT_SHIPMENTS, StockItem};
pub use stock_levels::{StockLevel, StockLevels};
