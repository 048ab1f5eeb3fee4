//! Tests of the embedded log: offsets, segments, reopening, locking, group commits, torn and
//! damaged stores.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use super::keys::event_key;
use super::lock::LOCK_FILE;
use super::segment::{SEGMENT_TAG, SEGMENT_TARGET_BYTES};
use super::*;
use crate::log::Position;

fn record(key: &str, i: usize) -> LogRecord {
    LogRecord {
        key: key.to_owned(),
        value: format!("{key}-value-{i}").into_bytes(),
    }
}

async fn read_all(log: &EmbeddedLog, partition: u32) -> Vec<StoredRecord> {
    log.read(partition, 0, usize::MAX, Duration::ZERO)
        .await
        .expect("read")
}

#[tokio::test]
async fn appends_get_consecutive_offsets_and_read_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = EmbeddedLog::open(dir.path(), 4).expect("open");
    assert_eq!(log.partition_count(), 4);
    assert_eq!(
        log.append(1, vec![record("a", 0)]).await.expect("append"),
        0
    );
    assert_eq!(
        log.append(1, vec![record("a", 1), record("b", 2)])
            .await
            .expect("append"),
        1
    );
    assert_eq!(log.append(1, Vec::new()).await.expect("empty append"), 3);
    assert_eq!(log.end_offset(1).await.expect("end"), 3);
    assert_eq!(log.end_offset(0).await.expect("end"), 0);

    let records = read_all(&log, 1).await;
    let offsets: Vec<_> = records.iter().map(|r| r.position.offset).collect();
    assert_eq!(offsets, [0, 1, 2]);
    assert_eq!(records[2].key, "b");
    assert_eq!(records[2].value, b"b-value-2");
    let page = log.read(1, 1, 1, Duration::ZERO).await.expect("read");
    assert_eq!(page.len(), 1);
    assert_eq!(
        page[0].position,
        Position {
            partition: 1,
            offset: 1
        }
    );
    assert!(
        log.read(1, 3, 10, Duration::ZERO)
            .await
            .expect("read")
            .is_empty()
    );
    assert!(
        log.read(1, 99, 10, Duration::ZERO)
            .await
            .expect("read")
            .is_empty()
    );
}

#[tokio::test]
async fn a_group_commit_stores_a_segment_per_partition_and_reads_slice_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = EmbeddedLog::open(dir.path(), 2).expect("open");
    let small: Vec<_> = (0..100).map(|i| record("a", i)).collect();
    log.append(0, small.clone()).await.expect("append");
    assert_eq!(log.store.events.len().expect("len"), 1, "one segment");
    // Past the target size a commit starts a new segment; a record larger than the target
    // fills one on its own.
    let big = |i: usize| LogRecord {
        key: format!("big{i}"),
        value: vec![i as u8; SEGMENT_TARGET_BYTES / 2 + 1],
    };
    let huge = LogRecord {
        key: "huge".into(),
        value: vec![7; SEGMENT_TARGET_BYTES * 2],
    };
    let second: Vec<_> = vec![big(0), big(1), big(2), huge.clone(), record("z", 0)];
    assert_eq!(log.append(0, second.clone()).await.expect("append"), 100);
    assert_eq!(log.store.events.len().expect("len"), 4);
    let all: Vec<_> = small.iter().chain(&second).cloned().collect();
    for from in [0, 1, 57, 99, 100, 101, 102, 103, 104] {
        for max in [1, 2, 3, 200] {
            let stored = log.read(0, from, max, Duration::ZERO).await.expect("read");
            let want: Vec<_> = all.iter().skip(from as usize).take(max).collect();
            assert_eq!(stored.len(), want.len(), "from {from} max {max}");
            for (i, (got, want)) in stored.iter().zip(want).enumerate() {
                assert_eq!(got.position.offset, from + i as Offset);
                assert_eq!((&got.key, &got.value), (&want.key, &want.value));
            }
        }
    }
    drop(log);
    let log = EmbeddedLog::open(dir.path(), 2).expect("reopen");
    assert_eq!(log.end_offset(0).await.expect("end"), 105);
    assert_eq!(log.end_offset(1).await.expect("end"), 0);
    assert_eq!(read_all(&log, 0).await.len(), 105);
}

#[tokio::test]
async fn single_record_values_from_before_segments_are_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = EmbeddedLog::open(dir.path(), 1).expect("open");
    let legacy = |record: &LogRecord| {
        let mut out = (record.key.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(record.key.as_bytes());
        out.extend_from_slice(&record.value);
        out
    };
    for offset in 0..3 {
        log.store
            .events
            .insert(
                event_key(0, offset),
                legacy(&record("old", offset as usize)),
            )
            .expect("insert");
    }
    drop(log);
    let log = EmbeddedLog::open(dir.path(), 1).expect("reopen");
    assert_eq!(log.end_offset(0).await.expect("end"), 3);
    assert_eq!(
        log.append(0, vec![record("new", 3), record("new", 4)])
            .await
            .expect("append"),
        3
    );
    let stored = read_all(&log, 0).await;
    let keys: Vec<_> = stored.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys, ["old", "old", "old", "new", "new"]);
    assert_eq!(stored[1].value, b"old-value-1");
    assert_eq!(stored[4].value, b"new-value-4");
}

#[tokio::test]
async fn a_malformed_segment_is_an_error_naming_the_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = EmbeddedLog::open(dir.path(), 1).expect("open");
    log.append(0, vec![record("a", 0), record("a", 1)])
        .await
        .expect("append");
    log.append(0, vec![record("a", 2)]).await.expect("append");
    // Cut the second segment short.
    log.store
        .events
        .insert(event_key(0, 2), vec![SEGMENT_TAG, 0, 0, 0, 1, 0, 0])
        .expect("insert");
    let error = log
        .read(0, 1, 10, Duration::ZERO)
        .await
        .expect_err("malformed")
        .to_string();
    assert!(error.contains("partition 0, offset 2"), "{error}");
    assert_eq!(
        log.read(0, 0, 2, Duration::ZERO).await.expect("read").len(),
        2
    );
}

#[tokio::test]
async fn a_partition_out_of_range_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = EmbeddedLog::open(dir.path(), 2).expect("open");
    assert!(log.append(2, vec![record("a", 0)]).await.is_err());
    assert!(log.read(7, 0, 1, Duration::ZERO).await.is_err());
    assert!(log.end_offset(2).await.is_err());
}

#[tokio::test]
async fn reopening_keeps_everything_and_offsets_continue() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = EmbeddedLog::open(dir.path(), 3).expect("open");
        log.append(0, vec![record("a", 0), record("a", 1)])
            .await
            .expect("append");
        log.append(2, vec![record("c", 0)]).await.expect("append");
        log.save_snapshot(0, "a".into(), b"state-a".to_vec())
            .await
            .expect("snapshot");
        log.save_snapshot(0, "a".into(), b"state-a2".to_vec())
            .await
            .expect("snapshot");
        log.commit_checkpoint("app".into(), 0, 2)
            .await
            .expect("checkpoint");
    }
    let log = EmbeddedLog::open(dir.path(), 3).expect("reopen");
    assert_eq!(log.end_offset(0).await.expect("end"), 2);
    assert_eq!(log.end_offset(1).await.expect("end"), 0);
    assert_eq!(log.end_offset(2).await.expect("end"), 1);
    assert_eq!(
        log.append(0, vec![record("a", 2)]).await.expect("append"),
        2
    );
    let values: Vec<_> = read_all(&log, 0)
        .await
        .into_iter()
        .map(|r| r.value)
        .collect();
    assert_eq!(
        values,
        [
            b"a-value-0".to_vec(),
            b"a-value-1".to_vec(),
            b"a-value-2".to_vec()
        ]
    );
    assert_eq!(
        log.load_snapshot(0, "a".into()).await.expect("load"),
        Some(b"state-a2".to_vec())
    );
    assert_eq!(log.load_snapshot(0, "b".into()).await.expect("load"), None);
    assert_eq!(
        log.load_checkpoint("app".into(), 0).await.expect("load"),
        Some(2)
    );
    assert_eq!(
        log.load_checkpoint("app".into(), 1).await.expect("load"),
        None
    );
    assert_eq!(
        log.load_checkpoint("other".into(), 0).await.expect("load"),
        None
    );

    // Without an explicit count the stored one is used.
    drop(log);
    let log = EmbeddedLog::builder(dir.path()).open().expect("reopen");
    assert_eq!(log.partition_count(), 3);
    assert_eq!(log.end_offset(0).await.expect("end"), 3);
}

#[tokio::test]
async fn a_different_partition_count_is_refused_naming_the_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(EmbeddedLog::open(dir.path(), 4).expect("open"));
    let error = EmbeddedLog::open(dir.path(), 8)
        .err()
        .expect("must refuse")
        .to_string();
    assert!(error.contains(&dir.path().display().to_string()), "{error}");
    assert!(error.contains("4 partitions"), "{error}");
    assert!(EmbeddedLog::open(dir.path(), 4).is_ok());
}

#[tokio::test]
async fn a_directory_open_elsewhere_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = EmbeddedLog::open(dir.path(), 1).expect("open");
    let error = EmbeddedLog::open(dir.path(), 1)
        .err()
        .expect("must refuse")
        .to_string();
    assert!(error.contains("already open"), "{error}");
    assert!(error.contains(&dir.path().display().to_string()), "{error}");
    drop(log);
    EmbeddedLog::open(dir.path(), 1).expect("open after drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_are_group_committed_and_all_or_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Arc::new(
        EmbeddedLog::builder(dir.path())
            .partitions(2)
            .max_batch_records(50)
            .open()
            .expect("open"),
    );
    let mut tasks = Vec::new();
    for task in 0..32 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for round in 0..10 {
                let key = format!("t{task}");
                let batch: Vec<_> = (0..(1 + round % 3))
                    .map(|i| record(&key, round * 10 + i))
                    .collect();
                let first = log
                    .append(task as u32 % 2, batch.clone())
                    .await
                    .expect("append");
                acked.push((task as u32 % 2, first, batch));
            }
            acked
        }));
    }
    let mut expected = BTreeMap::new();
    for task in tasks {
        for (partition, first, batch) in task.await.expect("task") {
            for (i, record) in batch.into_iter().enumerate() {
                let previous = expected.insert((partition, first + i as Offset), record);
                assert!(previous.is_none(), "offset handed out twice");
            }
        }
    }
    for partition in 0..2 {
        let records = read_all(&log, partition).await;
        assert_eq!(
            records.len(),
            expected.keys().filter(|(p, _)| *p == partition).count()
        );
        for stored in records {
            let want = &expected[&(partition, stored.position.offset)];
            assert_eq!((&stored.key, &stored.value), (&want.key, &want.value));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_wakes_on_append() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Arc::new(EmbeddedLog::open(dir.path(), 1).expect("open"));
    let reader = {
        let log = log.clone();
        tokio::spawn(async move { log.read(0, 0, 10, Duration::from_secs(30)).await })
    };
    tokio::task::yield_now().await;
    log.append(0, vec![record("a", 0)]).await.expect("append");
    let records = reader.await.expect("task").expect("read");
    assert_eq!(records.len(), 1);
    // A poll with nothing to read gives up after `wait`.
    let empty = log
        .read(0, 1, 10, Duration::from_millis(20))
        .await
        .expect("read");
    assert!(empty.is_empty());
}

#[tokio::test]
async fn writes_after_close_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = EmbeddedLog::open(dir.path(), 1).expect("open");
    log.append(0, vec![record("a", 0)]).await.expect("append");
    log.close().await.expect("close");
    log.close().await.expect("second close");
    let error = log
        .append(0, vec![record("a", 1)])
        .await
        .expect_err("refused");
    assert!(matches!(error, StorageError::Closed(_)), "{error}");
    assert_eq!(read_all(&log, 0).await.len(), 1);
    assert!(log.describe().starts_with("embedded:"));
    assert_eq!(log.data_dir(), dir.path());
}

/// What a damaged store may do on open: open with every acknowledged record, or refuse with
/// an error naming the store. Never a panic, never a shorter or different log.
fn assert_intact_or_refused(
    dir: &Path,
    expected: &BTreeMap<u32, Vec<LogRecord>>,
    case: &str,
) -> bool {
    let opened = std::panic::catch_unwind(AssertUnwindSafe(|| EmbeddedLog::open(dir, 2)));
    let log = match opened {
        Err(_) => panic!("{case}: opening panicked"),
        Ok(Err(error)) => {
            let message = error.to_string();
            assert!(
                message.contains(&dir.display().to_string()),
                "{case}: the error does not name the store: {message}"
            );
            return false;
        }
        Ok(Ok(log)) => log,
    };
    block_on(async {
        for (&partition, records) in expected {
            let stored = log
                .read(partition, 0, usize::MAX, Duration::ZERO)
                .await
                .unwrap_or_else(|e| panic!("{case}: opened but cannot read: {e}"));
            let stored: Vec<_> = stored
                .into_iter()
                .map(|r| LogRecord {
                    key: r.key,
                    value: r.value,
                })
                .collect();
            assert_eq!(&stored, records, "{case}: partition {partition} differs");
        }
    });
    true
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(future)
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// The files of a closed store, held in memory so damaged copies are cheap to make.
/// Journals are preallocated with zeros; only their content is held, plus their length.
struct StoreImage {
    files: Vec<(PathBuf, Vec<u8>, u64)>,
}

enum Damage {
    Truncate(u64),
    Flip(usize),
    Delete,
    Append(Vec<u8>),
}

impl StoreImage {
    fn capture(dir: &Path) -> StoreImage {
        let mut paths = Vec::new();
        files_under(dir, &mut paths);
        let files = paths
            .into_iter()
            .map(|path| {
                let mut bytes = std::fs::read(&path).expect("read");
                let len = bytes.len() as u64;
                let content = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
                bytes.truncate(content);
                let relative = path.strip_prefix(dir).expect("relative").to_path_buf();
                (relative, bytes, len)
            })
            .collect();
        StoreImage { files }
    }

    /// Writes the store to `dir` with `damage` done to the file `target`.
    fn write_damaged(&self, dir: &Path, target: &Path, damage: &Damage) {
        for (relative, content, len) in &self.files {
            let mut content = content.clone();
            let mut len = *len;
            if relative == target {
                match damage {
                    Damage::Truncate(cut) => {
                        content.truncate(*cut as usize);
                        len = *cut;
                    }
                    Damage::Flip(at) => {
                        if let Some(byte) = content.get_mut(*at) {
                            *byte ^= 0x5a;
                        }
                    }
                    Damage::Delete => continue,
                    Damage::Append(tail) => {
                        content.extend_from_slice(tail);
                        len = len.max(content.len() as u64);
                    }
                }
            }
            let path = dir.join(relative);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(&path, &content).expect("write");
            OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_len(len))
                .expect("set_len");
        }
    }
}

/// A closed store with records in flushed tables and in the journal.
async fn prepared_store(dir: &Path) -> BTreeMap<u32, Vec<LogRecord>> {
    let log = EmbeddedLog::open(dir, 2).expect("open");
    let mut expected: BTreeMap<u32, Vec<LogRecord>> = BTreeMap::new();
    for round in 0..40 {
        let partition = round % 2;
        let batch: Vec<_> = (0..3).map(|i| record(&format!("k{round}"), i)).collect();
        log.append(partition, batch.clone()).await.expect("append");
        expected.entry(partition).or_default().extend(batch);
        if round == 20 {
            log.store
                .events
                .rotate_memtable_and_wait()
                .expect("flush to a table");
        }
    }
    expected
}

#[test]
fn a_torn_journal_tail_is_dropped_and_acknowledged_records_survive() {
    let base = tempfile::tempdir().expect("tempdir");
    let original = base.path().join("original");
    let expected = block_on(prepared_store(&original));
    let image = StoreImage::capture(&original);
    let journals: Vec<_> = image
        .files
        .iter()
        .filter(|(path, ..)| path.extension().is_some_and(|e| e == "jnl"))
        .collect();
    assert!(!journals.is_empty(), "no journal in the store");
    for (n, (journal, content, _)) in journals.into_iter().enumerate() {
        // What a crash mid-write leaves after the last acknowledged batch: zeros, garbage,
        // or part of a batch.
        let tails = [
            ("zeros", vec![0; 100]),
            ("garbage", (0..=255u8).cycle().take(300).collect()),
            (
                "partial batch",
                content[content.len() / 2..content.len() - 5].to_vec(),
            ),
        ];
        for (m, (name, tail)) in tails.into_iter().enumerate() {
            let copy = base.path().join(format!("torn-{n}-{m}"));
            image.write_damaged(&copy, journal, &Damage::Append(tail));
            let case = format!("{} + {name}", journal.display());
            assert!(
                assert_intact_or_refused(&copy, &expected, &case),
                "{case}: a torn tail after acknowledged data must not prevent opening"
            );
        }
    }
}

#[test]
fn a_damaged_store_opens_intact_or_refuses_naming_it() {
    let base = tempfile::tempdir().expect("tempdir");
    let original = base.path().join("original");
    let expected = block_on(prepared_store(&original));
    let image = StoreImage::capture(&original);
    let mut outcomes = Vec::new();
    for (n, (file, content, _)) in image.files.iter().enumerate() {
        if file.ends_with(LOCK_FILE) || file.ends_with("lock") {
            continue;
        }
        let len = content.len();
        let mut damages = vec![Damage::Delete];
        for cut in [0, len / 2, len.saturating_sub(1)] {
            damages.push(Damage::Truncate(cut as u64));
        }
        for at in [0, len / 2, len.saturating_sub(2)] {
            damages.push(Damage::Flip(at));
        }
        for (m, damage) in damages.iter().enumerate() {
            let copy = base.path().join(format!("damaged-{n}-{m}"));
            image.write_damaged(&copy, file, damage);
            let case = match damage {
                Damage::Truncate(cut) => {
                    format!("{} truncated to {cut} of {len}", file.display())
                }
                Damage::Flip(at) => format!("{} byte {at} of {len} flipped", file.display()),
                Damage::Delete => format!("{} deleted", file.display()),
                Damage::Append(_) => unreachable!(),
            };
            let opened = assert_intact_or_refused(&copy, &expected, &case);
            outcomes.push((case, opened));
            std::fs::remove_dir_all(&copy).expect("cleanup");
        }
    }
    // Losing acknowledged records from the journal must be noticed, not read as a shorter
    // log.
    assert!(
        outcomes
            .iter()
            .any(|(case, opened)| case.contains(".jnl truncated") && !opened),
        "{outcomes:#?}"
    );
}

/// The `.jnl` files of a store directory.
fn journals(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("store"))
        .expect("store dir")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "jnl"))
        })
        .count()
}

#[tokio::test]
async fn a_clean_close_leaves_only_the_active_journal_for_the_next_open() {
    // fjall deletes a journal once every keyspace has flushed what it holds; the partition
    // count, written once at creation, must not hold every journal back. Past one journal's
    // size (64 MB) a second one starts; after the close only the active one is left.
    let dir = tempfile::tempdir().expect("tempdir");
    let log = EmbeddedLog::open(dir.path(), 2).expect("open");
    // Incompressible values (the journal compresses).
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut noise = move || {
        (0..512 * 1024)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect::<Vec<u8>>()
    };
    for i in 0..160u32 {
        let records = (0..2)
            .map(|_| LogRecord {
                key: format!("k{i}"),
                value: noise(),
            })
            .collect();
        log.append(i % 2, records).await.expect("append");
    }
    log.close().await.expect("close");
    drop(log);
    assert_eq!(journals(dir.path()), 1);
    let log = EmbeddedLog::open(dir.path(), 2).expect("reopen");
    assert_eq!(log.end_offset(0).await.expect("end"), 160);
    assert_eq!(log.end_offset(1).await.expect("end"), 160);
}
