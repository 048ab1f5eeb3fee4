//! The lock file: one process (and one [`EmbeddedLog`](super::EmbeddedLog)) has a directory
//! open at a time.

use std::fs::{File, OpenOptions};
use std::path::Path;

use crate::error::StorageError;

/// The lock file's name inside the log's directory.
pub(super) const LOCK_FILE: &str = "keel.lock";

/// Takes the directory's lock file, so a second opener fails instead of corrupting the store.
pub(super) fn lock_dir(dir: &Path) -> Result<File, StorageError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StorageError::io(format!("opening the lock file {}", path.display()), e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StorageError::io(
            format!(
                "{} is already open (its lock file {} is held by another process or another \
                 EmbeddedLog)",
                dir.display(),
                path.display()
            ),
            std::io::Error::from(std::io::ErrorKind::WouldBlock),
        )),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(StorageError::io(format!("locking {}", path.display()), e))
        }
    }
}
