//! The `acked-ends` file: the end offset of every partition as of a recent group commit, so
//! opening can tell a dropped unacknowledged tail from lost acknowledged records.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use crate::error::StorageError;
use crate::log::Offset;

/// The file's name inside the log's directory.
pub(super) const ACKED_ENDS_FILE: &str = "acked-ends";
/// The first line of the file, naming its format.
const ACKED_ENDS_HEADER: &str = "keel acked-ends v1";

/// Reads `acked-ends`: `None` when it does not exist yet.
pub(super) fn read_acked_ends(path: &Path) -> Result<Option<Vec<Offset>>, StorageError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StorageError::io(format!("reading {}", path.display()), e)),
    };
    let corrupt = |detail: &str| StorageError::Corrupt {
        context: path.display().to_string(),
        detail: detail.to_owned(),
    };
    let mut lines = text.lines();
    if lines.next() != Some(ACKED_ENDS_HEADER) {
        return Err(corrupt("missing header line"));
    }
    let ends = lines
        .next()
        .ok_or_else(|| corrupt("missing offsets line"))?
        .split_ascii_whitespace()
        .map(|n| n.parse::<Offset>().map_err(|_| corrupt("malformed offset")))
        .collect::<Result<Vec<_>, _>>()?;
    if lines.next() != Some("end") {
        return Err(corrupt("missing end line"));
    }
    Ok(Some(ends))
}

/// Replaces `acked-ends` atomically: write a temporary file, fsync, rename, fsync the directory.
pub(super) fn write_acked_ends(path: &Path, ends: &[Offset]) -> Result<(), StorageError> {
    let tmp = path.with_extension("tmp");
    let io = |what: &str, e| StorageError::io(format!("{what} {}", tmp.display()), e);
    let mut text = String::from(ACKED_ENDS_HEADER);
    text.push('\n');
    for (i, end) in ends.iter().enumerate() {
        if i > 0 {
            text.push(' ');
        }
        text.push_str(&end.to_string());
    }
    text.push_str("\nend\n");
    let mut file = File::create(&tmp).map_err(|e| io("creating", e))?;
    file.write_all(text.as_bytes())
        .map_err(|e| io("writing", e))?;
    file.sync_all().map_err(|e| io("syncing", e))?;
    drop(file);
    std::fs::rename(&tmp, path)
        .map_err(|e| StorageError::io(format!("replacing {}", path.display()), e))?;
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| StorageError::io(format!("syncing {}", dir.display()), e))?;
    }
    Ok(())
}
