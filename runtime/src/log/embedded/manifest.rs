//! A check of fjall's keyspace manifests, run before fjall opens the store.

use std::path::Path;

use crate::error::StorageError;

/// Checks every keyspace manifest (`keyspaces/N/vID`) against the checksum its `current` file
/// records, before fjall reads them.
///
/// fjall 3 does not verify this checksum when it opens, and a damaged manifest can make it
/// allocate by a garbage length and abort the process. Crashes cannot cause that (manifests are
/// written to a new file, fsync'd, then switched to by an atomic rename of `current`), but a
/// damaged disk can, and refusing with the file named beats an abort. The layout checked here is
/// fjall 3.1's (`current` = version id u64 LE, xxh3-128 u128 LE, checksum type 0); a store
/// written by another layout fails this check loudly rather than being misread.
pub(super) fn verify_manifests(store: &Path) -> Result<(), StorageError> {
    let keyspaces = store.join("keyspaces");
    let entries = match std::fs::read_dir(&keyspaces) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(StorageError::io(
                format!("listing {}", keyspaces.display()),
                e,
            ));
        }
    };
    for entry in entries {
        let keyspace = entry
            .map_err(|e| StorageError::io(format!("listing {}", keyspaces.display()), e))?
            .path();
        let current_path = keyspace.join("current");
        let current = match std::fs::read(&current_path) {
            Ok(bytes) => bytes,
            // A keyspace whose first manifest was never switched to; fjall handles it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(StorageError::io(
                    format!("reading {}", current_path.display()),
                    e,
                ));
            }
        };
        let corrupt = |path: &Path, detail: String| StorageError::Corrupt {
            context: path.display().to_string(),
            detail,
        };
        let (Ok(current), true) = (
            <[u8; 25]>::try_from(current.as_slice()),
            current.last() == Some(&0),
        ) else {
            return Err(corrupt(
                &current_path,
                format!(
                    "expected 25 bytes ending in checksum type 0, found {} bytes",
                    current.len()
                ),
            ));
        };
        let (id, rest) = current.split_at(8);
        let (checksum, _) = rest.split_at(16);
        let id = u64::from_le_bytes(id.try_into().unwrap_or_default());
        let checksum = u128::from_le_bytes(checksum.try_into().unwrap_or_default());
        let manifest_path = keyspace.join(format!("v{id}"));
        let manifest = std::fs::read(&manifest_path)
            .map_err(|e| StorageError::io(format!("reading {}", manifest_path.display()), e))?;
        let actual = xxhash_rust::xxh3::xxh3_128(&manifest);
        if actual != checksum {
            return Err(corrupt(
                &manifest_path,
                format!(
                    "checksum {actual:032x} does not match {checksum:032x} recorded in {}",
                    current_path.display()
                ),
            ));
        }
    }
    Ok(())
}
