//! `inventory`: a simulated chain of stores on keel.
//!
//! With no arguments it runs the simulation on the embedded log in `./keel-data` for 20 s,
//! then prints a summary, a stock table, low-stock alerts and top sellers. Running it again on
//! the same directory continues from the stored state. `inventory query` shows one item's
//! stock and its audit history. See `inventory --help`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

mod demo;

/// A simulated chain of stores on keel: concurrent shipments and sales against StockItem
/// aggregates, with live views of stock, low-stock alerts and sales.
///
/// With no subcommand it runs the simulation, shows progress on stderr, and ends with a
/// summary (or one JSON object with --json) on stdout. Log output goes to stderr; set
/// RUST_LOG (default "warn") to see more.
#[derive(Debug, Parser)]
#[command(name = "inventory", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    simulate: SimulateArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the simulated chain of stores (the default).
    Simulate(SimulateArgs),
    /// Show one item's stock (from its aggregate) and its audit history (from the log).
    Query(QueryArgs),
}

/// Where the data lives.
#[derive(Debug, Clone, Args)]
struct StorageArgs {
    /// The directory of the embedded log and the persisted views; created if missing.
    #[arg(long, value_name = "DIR", default_value = "keel-data")]
    data_dir: PathBuf,
    /// Use the Kafka brokers at BOOTSTRAP ("host:port[,host:port…]") as the log instead of the
    /// embedded log (persisted views stay in --data-dir). Several processes with the same
    /// brokers share the stores' partitions through a consumer group. Needs the `kafka` cargo
    /// feature (on by default).
    #[arg(long, value_name = "BOOTSTRAP")]
    kafka: Option<String>,
}

#[derive(Debug, Clone, Args)]
struct SimulateArgs {
    #[command(flatten)]
    storage: StorageArgs,
    /// How long to simulate, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 20.0)]
    duration: f64,
    /// Number of stores.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    stores: u32,
    /// Number of SKUs each store stocks.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    skus: u32,
    /// Concurrent tills (tasks sending commands) per store.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    concurrency: u32,
    /// Seed of the simulation's random choices (default: taken from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Print the final report as one JSON object instead of tables.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Args)]
struct QueryArgs {
    #[command(flatten)]
    storage: StorageArgs,
    /// The store.
    #[arg(long)]
    store: String,
    /// The SKU.
    #[arg(long)]
    sku: String,
    /// How many of the most recent events of the history to show (0 = all).
    #[arg(long, value_name = "N", default_value_t = 20)]
    history: usize,
    /// Print the item as one JSON object.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Only warnings by default, so the progress line and the report stay readable.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Some(Command::Query(args)) => demo::query(args.into()).await,
            Some(Command::Simulate(args)) => demo::simulate(args.try_into()?).await,
            None => demo::simulate(cli.simulate.try_into()?).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

impl From<StorageArgs> for demo::Storage {
    fn from(args: StorageArgs) -> Self {
        demo::Storage {
            data_dir: args.data_dir,
            kafka: args.kafka,
        }
    }
}

impl TryFrom<SimulateArgs> for demo::SimulateOptions {
    type Error = anyhow::Error;

    fn try_from(args: SimulateArgs) -> anyhow::Result<Self> {
        let duration = std::time::Duration::try_from_secs_f64(args.duration).map_err(|_| {
            anyhow::anyhow!("--duration {}: not a number of seconds", args.duration)
        })?;
        Ok(demo::SimulateOptions {
            storage: args.storage.into(),
            duration,
            stores: args.stores,
            skus: args.skus,
            concurrency: args.concurrency,
            seed: args.seed,
            json: args.json,
        })
    }
}

impl From<QueryArgs> for demo::QueryOptions {
    fn from(args: QueryArgs) -> Self {
        demo::QueryOptions {
            storage: args.storage.into(),
            store: args.store,
            sku: args.sku,
            history: args.history,
            json: args.json,
        }
    }
}
