//! inventory: retail inventory on keel — stock per store and SKU, sales, low-stock alerts —
//! and the `inventory` demo binary that simulates a chain of stores.
//!
//! # Layout
//!
//! | file | concept |
//! |---|---|
//! | `id.rs` | [`StockItemId`]: a SKU in a store, the aggregate id `"{store}:{sku}"` |
//! | `stock_item.rs` | [`StockItem`]: the aggregate — its rules, `handle` and `apply`, and its given/when/then tests |
//! | `command.rs` | [`StockCommand`]: receive a shipment, record a sale, adjust stock, set a reorder point |
//! | `event.rs` | [`StockEvent`]: what happened, as stored in the log |
//! | `error.rs` | [`StockError`]: why a command is rejected |
//! | `main.rs` | the demo binary: a simulated chain of stores, progress, summary, `query` |
//!
//! ```
//! use inventory::{StockCommand, StockItem, StockItemId};
//! use keel::{MemoryLog, Runtime};
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
mod stock_item;

pub use command::StockCommand;
pub use error::StockError;
pub use event::StockEvent;
pub use id::{InvalidId, StockItemId};
pub use stock_item::{RECENT_SHIPMENTS, StockItem};
