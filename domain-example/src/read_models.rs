//! [`ReadModels`]: the inventory's three views, started together over one log, with the
//! queries the demo and the stores ask of them.
//!
//! | view | storage | key → value |
//! |---|---|---|
//! | [`StockLevels`] | in memory | item → units on hand, reorder point |
//! | [`LowStockAlerts`] | in memory | item at or below its reorder point → alert |
//! | [`SalesTotals`] | persisted (embedded store), or in memory | item or store → units sold |
//!
//! Views are eventually consistent with the log: a query sees every event the projection has
//! applied so far. To read a command's own effect, [`wait_for`](ReadModels::wait_for) the
//! position the command returned.

use std::cmp::Reverse;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use keel::log::LogBackend;
use keel::log::Position;
use keel_projections::{ProjectionError, ProjectionRunner, ViewHandle};

use crate::id::StockItemId;
use crate::low_stock::{LowStockAlert, LowStockAlerts};
use crate::sales::{Sales, SalesKey, SalesTotals};
use crate::stock_levels::{StockLevel, StockLevels};

/// The running inventory views. Cheap to clone; the projections run while any clone is alive.
/// Prefer [`shutdown`](ReadModels::shutdown) to dropping the last clone: it waits for the
/// persisted view to commit its last batch (its file is released once every clone is gone).
#[derive(Debug, Clone)]
pub struct ReadModels {
    stock: ViewHandle<StockItemId, StockLevel>,
    low_stock: ViewHandle<StockItemId, LowStockAlert>,
    sales: ViewHandle<SalesKey, Sales>,
}

impl ReadModels {
    /// Starts the views over `backend`, the sales view persisted under `views_dir` (in its own
    /// subdirectory), where it resumes from its checkpoint. The in-memory views rebuild from
    /// the start of the log; wait on [`caught_up`](Self::caught_up) before relying on them.
    pub async fn start(
        backend: Arc<dyn LogBackend>,
        views_dir: &Path,
    ) -> Result<Self, ProjectionError> {
        Self::start_with(backend, Some(views_dir)).await
    }

    /// Starts every view in memory (for tests and throwaway runs): nothing is written to disk.
    pub async fn start_in_memory(backend: Arc<dyn LogBackend>) -> Result<Self, ProjectionError> {
        Self::start_with(backend, None).await
    }

    async fn start_with(
        backend: Arc<dyn LogBackend>,
        views_dir: Option<&Path>,
    ) -> Result<Self, ProjectionError> {
        let runner = ProjectionRunner::new(backend);
        let stock = runner.start_in_memory(StockLevels::default()).await?;
        let low_stock = runner.start_in_memory(LowStockAlerts::default()).await?;
        let sales = match views_dir {
            Some(dir) => runner.start_persisted(SalesTotals::default(), dir).await?,
            None => runner.start_in_memory(SalesTotals::default()).await?,
        };
        Ok(ReadModels {
            stock,
            low_stock,
            sales,
        })
    }

    /// The stock levels view.
    pub fn stock(&self) -> &ViewHandle<StockItemId, StockLevel> {
        &self.stock
    }

    /// The low-stock alerts view.
    pub fn low_stock(&self) -> &ViewHandle<StockItemId, LowStockAlert> {
        &self.low_stock
    }

    /// The sales view.
    pub fn sales(&self) -> &ViewHandle<SalesKey, Sales> {
        &self.sales
    }

    /// Resolves once every view has applied the event at `position` (read your writes).
    pub async fn wait_for(
        &self,
        position: Position,
        timeout: Duration,
    ) -> Result<(), ProjectionError> {
        self.stock.wait_for(position, timeout).await?;
        self.low_stock.wait_for(position, timeout).await?;
        self.sales.wait_for(position, timeout).await
    }

    /// Resolves once every view has applied every event that was in the log when called.
    pub async fn caught_up(&self, timeout: Duration) -> Result<(), ProjectionError> {
        self.stock.caught_up(timeout).await?;
        self.low_stock.caught_up(timeout).await?;
        self.sales.caught_up(timeout).await
    }

    /// Events in the log not yet applied by the slowest view, measured now.
    pub async fn lag(&self) -> Result<u64, ProjectionError> {
        let stock = self.stock.lag().await?;
        let low_stock = self.low_stock.lag().await?;
        let sales = self.sales.lag().await?;
        Ok(stock.max(low_stock).max(sales))
    }

    /// Every low-stock alert, the emptiest shelves first.
    pub fn alerts(&self) -> Result<Vec<(StockItemId, LowStockAlert)>, ProjectionError> {
        let mut alerts = self.low_stock.all()?;
        alerts.sort_by(|(a_id, a), (b_id, b)| {
            (a.on_hand, Reverse(a.reorder_point), a_id).cmp(&(
                b.on_hand,
                Reverse(b.reorder_point),
                b_id,
            ))
        });
        Ok(alerts)
    }

    /// The `n` items with the most units sold, best first.
    pub fn top_sellers(&self, n: usize) -> Result<Vec<(StockItemId, Sales)>, ProjectionError> {
        let top = self.sales.top_n(n, |key, sales| match key {
            SalesKey::Item(_) => Some(sales.units),
            SalesKey::Store(_) => None,
        })?;
        Ok(top
            .into_iter()
            .filter_map(|(key, sales)| match key {
                SalesKey::Item(id) => Some((id, sales)),
                SalesKey::Store(_) => None,
            })
            .collect())
    }

    /// Sales per store, by store name.
    pub fn sales_by_store(&self) -> Result<Vec<(String, Sales)>, ProjectionError> {
        let mut stores: Vec<(String, Sales)> = self
            .sales
            .scan(|key, _| matches!(key, SalesKey::Store(_)))?
            .into_iter()
            .filter_map(|(key, sales)| match key {
                SalesKey::Store(store) => Some((store, sales)),
                SalesKey::Item(_) => None,
            })
            .collect();
        stores.sort_by(|(a, _), (b, _)| a.cmp(b));
        Ok(stores)
    }

    /// Stops every projection and waits (up to `timeout` each) for it to finish; the persisted
    /// view's last batch is committed or rolled back, and its files are released.
    pub async fn shutdown(self, timeout: Duration) -> Result<(), ProjectionError> {
        let ReadModels {
            stock,
            low_stock,
            sales,
        } = self;
        stock.shutdown(timeout).await?;
        low_stock.shutdown(timeout).await?;
        sales.shutdown(timeout).await
    }
}
