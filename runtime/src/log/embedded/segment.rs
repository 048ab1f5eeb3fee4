//! Segments: the consecutive records of one partition written by one group commit, stored as
//! one value keyed by the partition and the offset of its first record.

use crate::log::{LogRecord, Offset};

/// The tag that starts a segment value (legacy single-record values start with a zero byte).
pub(super) const SEGMENT_TAG: u8 = 2;
/// A group commit starts a new segment of a partition once the open one holds this many bytes,
/// so reading one record never loads a large value.
pub(super) const SEGMENT_TARGET_BYTES: usize = 64 * 1024;

/// Builds one segment: consecutive records of one partition, written as one store value keyed
/// by the partition and the offset of its first record.
///
/// Layout: the tag byte [`SEGMENT_TAG`], the record count (u32, big-endian), then per record
/// the key's length (u32, big-endian), the key, the value's length (u32, big-endian) and the
/// value.
pub(super) struct SegmentWriter {
    start: Offset,
    count: u32,
    bytes: Vec<u8>,
}

impl SegmentWriter {
    pub(super) fn new(start: Offset) -> Self {
        let mut bytes = Vec::with_capacity(4096);
        bytes.push(SEGMENT_TAG);
        bytes.extend_from_slice(&0u32.to_be_bytes());
        SegmentWriter {
            start,
            count: 0,
            bytes,
        }
    }

    pub(super) fn push(&mut self, record: &LogRecord) {
        self.bytes
            .reserve(8 + record.key.len() + record.value.len());
        self.bytes
            .extend_from_slice(&(record.key.len() as u32).to_be_bytes());
        self.bytes.extend_from_slice(record.key.as_bytes());
        self.bytes
            .extend_from_slice(&(record.value.len() as u32).to_be_bytes());
        self.bytes.extend_from_slice(&record.value);
        self.count += 1;
    }

    pub(super) fn is_full(&self) -> bool {
        self.bytes.len() >= SEGMENT_TARGET_BYTES || self.count == u32::MAX
    }

    /// The segment's first offset and its value.
    pub(super) fn finish(mut self) -> (Offset, Vec<u8>) {
        self.bytes[1..5].copy_from_slice(&self.count.to_be_bytes());
        (self.start, self.bytes)
    }
}

/// The (key, value) records of a stored segment, or `None` if it is malformed. Values written
/// before segments existed hold one record: the key's length (u32, big-endian, so a zero first
/// byte), the key, then the value.
pub(super) fn decode_segment(bytes: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    fn take(rest: &mut &[u8]) -> Option<usize> {
        let (len, tail) = rest.split_first_chunk::<4>()?;
        *rest = tail;
        Some(u32::from_be_bytes(*len) as usize)
    }
    fn split<'a>(rest: &mut &'a [u8], len: usize) -> Option<&'a [u8]> {
        let (head, tail) = rest.split_at_checked(len)?;
        *rest = tail;
        Some(head)
    }
    let mut rest = bytes;
    match rest.split_first() {
        Some((&SEGMENT_TAG, tail)) => {
            rest = tail;
            let count = take(&mut rest)?;
            if count == 0 {
                return None;
            }
            let mut records = Vec::with_capacity(count.min(rest.len() / 8));
            for _ in 0..count {
                let key_len = take(&mut rest)?;
                let key = split(&mut rest, key_len)?;
                let value_len = take(&mut rest)?;
                records.push((key, split(&mut rest, value_len)?));
            }
            rest.is_empty().then_some(records)
        }
        Some((0, _)) => {
            let key_len = take(&mut rest)?;
            let key = split(&mut rest, key_len)?;
            Some(vec![(key, rest)])
        }
        _ => None,
    }
}
