//! The `inventory` binary, run as a user would: two runs on one data directory continue from
//! the stored state, `query` answers from it, and bad input fails with a clear message.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn inventory(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_inventory"))
        .args(args)
        .output()
        .expect("the inventory binary runs")
}

/// Runs a short simulation with `--json` and returns its report.
fn simulate(data_dir: &Path, seed: &str) -> Value {
    let dir = data_dir.to_str().expect("utf-8 temp path");
    let output = inventory(&[
        "--data-dir",
        dir,
        "--json",
        "--duration",
        "2",
        "--stores",
        "3",
        "--skus",
        "10",
        "--seed",
        seed,
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "run failed: {stderr}");
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

fn number(report: &Value, key: &str) -> u64 {
    report[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing or not a count in {report}"))
}

#[test]
fn a_second_run_continues_from_the_stored_state() {
    let dir = tempfile::tempdir().expect("temp dir");
    let first = simulate(dir.path(), "1");
    for key in [
        "committed",
        "rejected",
        "events_in_log",
        "aggregates",
        "projection_lag",
        "commands_per_sec",
        "stores",
        "skus",
    ] {
        assert!(first.get(key).is_some(), "{key} missing from {first}");
    }
    let committed = number(&first, "committed");
    assert!(committed > 0, "nothing committed: {first}");
    assert_eq!(
        number(&first, "events_in_log"),
        number(&first, "events_committed")
    );
    assert_eq!(number(&first, "projection_lag"), 0);
    assert!(number(&first, "aggregates") <= 30);

    let second = simulate(dir.path(), "2");
    assert!(number(&second, "committed") > 0);
    assert_eq!(
        number(&second, "events_in_log"),
        number(&first, "events_in_log") + number(&second, "events_committed"),
        "the log grows by exactly what the second run committed"
    );
    assert_eq!(number(&second, "projection_lag"), 0);
    assert!(number(&second, "aggregates") >= number(&first, "aggregates"));

    // Units sold per store are persisted: the second run's totals include the first run's.
    let sold = |report: &Value| -> u64 {
        report["by_store"]
            .as_array()
            .expect("by_store is a list")
            .iter()
            .map(|row| row["units_sold"].as_u64().expect("units_sold"))
            .sum()
    };
    assert!(sold(&second) >= sold(&first));

    // `query` reads the stored item back through the runtime, with its history.
    let item = second["top_sellers"][0]["item"]
        .as_str()
        .expect("a top seller")
        .to_string();
    let (store, sku) = item.split_once(':').expect("store:sku");
    let dir_arg = dir.path().to_str().expect("utf-8 temp path");
    let output = inventory(&[
        "query",
        "--data-dir",
        dir_arg,
        "--store",
        store,
        "--sku",
        sku,
        "--json",
    ]);
    assert!(
        output.status.success(),
        "query failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let shown: Value = serde_json::from_slice(&output.stdout).expect("query prints JSON");
    assert_eq!(shown["item"], item.as_str());
    assert_eq!(
        shown["sold_total"].as_u64(),
        second["top_sellers"][0]["units_sold"].as_u64()
    );
    assert!(number(&shown, "events") > 0);
    assert!(!shown["history"].as_array().expect("history").is_empty());

    let output = inventory(&[
        "query",
        "--data-dir",
        dir_arg,
        "--store",
        store,
        "--sku",
        sku,
    ]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    assert!(text.contains(&item) && text.contains("History"), "{text}");
}

#[test]
fn a_data_dir_that_is_a_file_is_refused_by_name() {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    let path = file.path().to_str().expect("utf-8 temp path");
    let output = inventory(&["--data-dir", path, "--duration", "1"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(path),
        "the message names the path: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn an_invalid_item_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().to_str().expect("utf-8 temp path");
    let output = inventory(&["query", "--data-dir", path, "--store", "a:b", "--sku", "k"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("store"), "{stderr}");
}

#[cfg(not(feature = "kafka"))]
#[test]
fn kafka_is_refused_in_a_build_without_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().to_str().expect("utf-8 temp path");
    let output = inventory(&["--data-dir", path, "--kafka", "127.0.0.1:9092"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("Kafka backend not available in this build"),
        "{stderr}"
    );
}

#[test]
fn help_documents_the_options() {
    let output = inventory(&["--help"]);
    let help = String::from_utf8_lossy(&output.stdout);
    for option in [
        "--data-dir",
        "--json",
        "--duration",
        "--stores",
        "--skus",
        "--concurrency",
        "--seed",
        "--kafka",
        "query",
    ] {
        assert!(help.contains(option), "--help lacks {option}: {help}");
    }
}

/// The Kafka brokers named by `KEEL_KAFKA_BOOTSTRAP` (`scripts/broker start`), or `None` to
/// skip; with `KEEL_REQUIRE_KAFKA=1` a missing broker fails the test instead.
#[cfg(feature = "kafka")]
fn kafka_bootstrap() -> Option<String> {
    match std::env::var("KEEL_KAFKA_BOOTSTRAP") {
        Ok(bootstrap) if !bootstrap.trim().is_empty() => Some(bootstrap),
        _ if std::env::var("KEEL_REQUIRE_KAFKA").is_ok_and(|v| v == "1") => {
            panic!("KEEL_REQUIRE_KAFKA=1 but KEEL_KAFKA_BOOTSTRAP is not set")
        }
        _ => {
            eprintln!("skipping: KEEL_KAFKA_BOOTSTRAP is not set");
            None
        }
    }
}

#[cfg(feature = "kafka")]
#[test]
fn runs_on_kafka_in_the_consumer_group_and_counts_the_log_from_its_end_offsets() {
    let Some(bootstrap) = kafka_bootstrap() else {
        return;
    };
    let run = |dir: &Path| {
        let output = inventory(&[
            "--kafka",
            &bootstrap,
            "--data-dir",
            dir.to_str().expect("utf-8 temp path"),
            "--json",
            "--duration",
            "2",
            "--stores",
            "3",
            "--skus",
            "10",
        ]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "run on kafka failed: {stderr}");
        serde_json::from_slice::<Value>(&output.stdout).expect("one JSON object")
    };
    let first_dir = tempfile::tempdir().expect("temp dir");
    let first = run(first_dir.path());
    assert!(number(&first, "committed") > 0, "{first}");
    assert_eq!(number(&first, "failed"), 0, "{first}");
    assert_eq!(number(&first, "projection_lag"), 0);
    // Alone in the group, the process owns every partition.
    let partitions = &first["partitions"];
    let of = partitions["of"].as_u64().expect("partition count");
    assert_eq!(
        partitions["owned"].as_array().map(Vec::len),
        Some(of as usize),
        "{first}"
    );

    // A second process (its own data dir) continues on the same topics: the log's end
    // offsets grow by exactly what it committed.
    let second_dir = tempfile::tempdir().expect("temp dir");
    let second = run(second_dir.path());
    assert_eq!(
        number(&second, "events_in_log"),
        number(&first, "events_in_log") + number(&second, "events_committed"),
        "{second}"
    );
    assert_eq!(number(&second, "projection_lag"), 0);
}
