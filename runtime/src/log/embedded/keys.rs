//! The keys of the store's keyspaces: events by partition and offset, snapshots by partition
//! and aggregate key, checkpoints by group and partition.

use crate::log::Offset;

/// Event keys sort by partition, then offset: 4 + 8 big-endian bytes.
pub(super) fn event_key(partition: u32, offset: Offset) -> [u8; 12] {
    let mut key = [0; 12];
    key[..4].copy_from_slice(&partition.to_be_bytes());
    key[4..].copy_from_slice(&offset.to_be_bytes());
    key
}

pub(super) fn parse_event_key(key: &[u8]) -> Option<(u32, Offset)> {
    let key: &[u8; 12] = key.try_into().ok()?;
    let (partition, offset) = key.split_at(4);
    Some((
        u32::from_be_bytes(partition.try_into().ok()?),
        Offset::from_be_bytes(offset.try_into().ok()?),
    ))
}

pub(super) fn snapshot_key(partition: u32, key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + key.len());
    out.extend_from_slice(&partition.to_be_bytes());
    out.extend_from_slice(key.as_bytes());
    out
}

pub(super) fn checkpoint_key(group: &str, partition: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + group.len());
    out.extend_from_slice(&(group.len() as u32).to_be_bytes());
    out.extend_from_slice(group.as_bytes());
    out.extend_from_slice(&partition.to_be_bytes());
    out
}
