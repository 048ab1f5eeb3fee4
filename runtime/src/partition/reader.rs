//! [`PartitionReader`]: the one reader of a partition's log for activations. What they
//! want (the events the tail does not hold, or every event of a key in a range) is read in
//! one sequential pass per batch of requests; what is asked while a pass runs is served by
//! the next one. A task of its own, so a cancelled activation never stops the reads of the
//! others.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::error::StorageError;
use crate::log::{LogBackend, Offset, StoredRecord};

/// The most records one read of the tail reader asks for.
const REFILL_READ_BATCH: usize = 4096;

/// A stretch of offsets without a wanted event longer than this is skipped by re-positioning
/// the tail reader instead of reading through it.
const REFILL_MAX_GAP: Offset = 4096;

/// The reader of one partition.
pub(crate) struct PartitionReader {
    partition: u32,
    /// Activations waiting, and whether the reader's task is running.
    refill: Mutex<Refill>,
}

/// Events wanted from the log by activations, served by one sequential read at a time.
#[derive(Default)]
struct Refill {
    running: bool,
    waiting: Vec<(Want, RefillReply)>,
}

/// What one activation wants read.
enum Want {
    /// The records at these offsets (ascending): events the tail does not hold.
    Offsets(Vec<Offset>),
    /// Every record of `key` in `range`: a replay whose offsets are not known one by one
    /// (an unusable snapshot, a key whose index holds only a span).
    Key { key: String, range: Range<Offset> },
}

type RefillReply = oneshot::Sender<Result<Vec<StoredRecord>, StorageError>>;

/// Marks the tail reader stopped however its task ends (a panic included): the activations
/// still waiting then get an error instead of waiting for good.
struct RefillRunning {
    reader: Arc<PartitionReader>,
    /// Set when the reader stopped because nothing was left to read.
    finished: bool,
}

impl Drop for RefillRunning {
    fn drop(&mut self) {
        if !self.finished {
            let mut refill = lock(&self.reader.refill);
            refill.running = false;
            refill.waiting.clear();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Only plain container operations happen under this lock.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl PartitionReader {
    pub(crate) fn new(partition: u32) -> Self {
        PartitionReader {
            partition,
            refill: Mutex::new(Refill::default()),
        }
    }

    /// Reads the events at `offsets` (ascending) that the tail does not hold from the log.
    /// One reader per partition serves every activation waiting: it reads the union of
    /// what they want in one sequential pass (skipping long stretches with nothing wanted),
    /// and what is asked while it reads is served by its next pass. Returns the records
    /// found, ascending; an offset the log does not return is left out.
    pub(crate) async fn read_missing(
        self: &Arc<Self>,
        backend: &Arc<dyn LogBackend>,
        offsets: Vec<Offset>,
    ) -> Result<Vec<StoredRecord>, StorageError> {
        self.read_wanted_records(backend, Want::Offsets(offsets))
            .await
    }

    /// Every record of `key` in `range`, read by the partition's one reader: activations that
    /// scan the partition at the same time (after a `STATE_VERSION` change, say) share one
    /// sequential pass instead of one each. Ascending.
    pub(crate) async fn scan_key(
        self: &Arc<Self>,
        backend: &Arc<dyn LogBackend>,
        key: &str,
        range: Range<Offset>,
    ) -> Result<Vec<StoredRecord>, StorageError> {
        if range.is_empty() {
            return Ok(Vec::new());
        }
        let want = Want::Key {
            key: key.to_owned(),
            range,
        };
        self.read_wanted_records(backend, want).await
    }

    async fn read_wanted_records(
        self: &Arc<Self>,
        backend: &Arc<dyn LogBackend>,
        want: Want,
    ) -> Result<Vec<StoredRecord>, StorageError> {
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut refill = lock(&self.refill);
            refill.waiting.push((want, reply));
            !std::mem::replace(&mut refill.running, true)
        };
        if start {
            // A task of its own: a cancelled activation must not stop the reads of others.
            let running = RefillRunning {
                reader: self.clone(),
                finished: false,
            };
            tokio::spawn(refill_loop(running, backend.clone()));
        }
        answer
            .await
            .map_err(|_| StorageError::Closed("the partition's tail reader stopped".into()))?
    }
}

/// The reader's task: serves the waiting activations, pass after pass, until none is left.
async fn refill_loop(mut running: RefillRunning, backend: Arc<dyn LogBackend>) {
    let reader = running.reader.clone();
    loop {
        let batch = {
            let mut refill = lock(&reader.refill);
            if refill.waiting.is_empty() {
                refill.running = false;
                running.finished = true;
                return;
            }
            std::mem::take(&mut refill.waiting)
        };
        let (by_offset, by_key): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .partition(|(want, _)| matches!(want, Want::Offsets(_)));
        if !by_offset.is_empty() {
            serve_offsets(&*backend, reader.partition, by_offset).await;
        }
        if !by_key.is_empty() {
            serve_keys(&*backend, reader.partition, by_key).await;
        }
    }
}

/// Answers activations that want records by offset, from one pass over their union.
async fn serve_offsets(backend: &dyn LogBackend, partition: u32, batch: Vec<(Want, RefillReply)>) {
    let mut wanted: Vec<Offset> = batch
        .iter()
        .flat_map(|(want, _)| match want {
            Want::Offsets(offsets) => offsets.as_slice(),
            Want::Key { .. } => &[],
        })
        .copied()
        .collect();
    wanted.sort_unstable();
    wanted.dedup();
    match read_wanted(backend, partition, &wanted).await {
        Ok(mut found) => {
            for (want, reply) in batch {
                // Two activations of one key never run at once, so no offset is wanted
                // twice: each record moves to its one activation.
                let Want::Offsets(offsets) = want else {
                    continue;
                };
                let records = offsets.iter().filter_map(|o| found.remove(o)).collect();
                let _ = reply.send(Ok(records));
            }
        }
        Err(e) => {
            for (_, reply) in batch {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

/// Answers activations that want every record of their key in a range, from one contiguous
/// pass over the union of the ranges.
async fn serve_keys(backend: &dyn LogBackend, partition: u32, batch: Vec<(Want, RefillReply)>) {
    let mut wants: HashMap<String, (Range<Offset>, Vec<StoredRecord>, RefillReply)> =
        HashMap::with_capacity(batch.len());
    let (mut from, mut to) = (Offset::MAX, 0);
    for (want, reply) in batch {
        if let Want::Key { key, range } = want {
            from = from.min(range.start);
            to = to.max(range.end);
            // Two activations of one key never run at once: one entry per key.
            wants.insert(key, (range, Vec::new(), reply));
        }
    }
    let mut failure = None;
    while from < to {
        let max = (to - from).min(REFILL_READ_BATCH as Offset) as usize;
        let records = match backend
            .read(partition, from, max, std::time::Duration::ZERO)
            .await
        {
            Ok(records) => records,
            Err(e) => {
                failure = Some(e);
                break;
            }
        };
        let Some(last) = records.last() else { break };
        from = last.position.offset + 1;
        for record in records {
            if let Some((range, found, _)) = wants.get_mut(&record.key)
                && range.contains(&record.position.offset)
            {
                found.push(record);
            }
        }
    }
    for (_, (_, found, reply)) in wants {
        let _ = reply.send(match &failure {
            Some(e) => Err(e.clone()),
            None => Ok(found),
        });
    }
}

/// One sequential pass over the partition from the first to the last of `wanted`
/// (ascending, non-empty): the records at those offsets.
async fn read_wanted(
    backend: &dyn LogBackend,
    partition: u32,
    wanted: &[Offset],
) -> Result<HashMap<Offset, StoredRecord>, StorageError> {
    let mut found = HashMap::with_capacity(wanted.len());
    let Some(&last_wanted) = wanted.last() else {
        return Ok(found);
    };
    let mut next = 0;
    let mut from = wanted[0];
    while next < wanted.len() {
        if wanted[next] > from + REFILL_MAX_GAP {
            from = wanted[next];
        }
        // Offsets are at least one per record, so this many records reach the last wanted.
        let max = (last_wanted - from + 1).min(REFILL_READ_BATCH as Offset) as usize;
        let records = backend
            .read(partition, from, max, std::time::Duration::ZERO)
            .await?;
        let Some(last) = records.last() else { break };
        from = last.position.offset + 1;
        for record in records {
            let offset = record.position.offset;
            while next < wanted.len() && wanted[next] < offset {
                next += 1; // not in the log: the activation reports it
            }
            if next < wanted.len() && wanted[next] == offset {
                found.insert(offset, record);
                next += 1;
            }
        }
        while next < wanted.len() && wanted[next] < from {
            next += 1;
        }
    }
    Ok(found)
}
