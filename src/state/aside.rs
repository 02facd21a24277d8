//! Moving a bad state file out of the way without losing it.
//!
//! A store that cannot be used is renamed next to itself (`state.redb.corrupt-20261203T173400Z`)
//! so the agent can start empty while an admin can still inspect or restore the old file.
//! The rename is followed by an fsync of the directory so the move survives a crash too.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Renames `path` to `<path>.<tag>-<UTC timestamp>` (with `-N` appended if that exists) and
/// returns the new name.
pub fn move_aside(path: &Path, tag: &str, now: SystemTime) -> std::io::Result<PathBuf> {
    let stamp = utc_stamp(now);
    let base = format!("{}.{tag}-{stamp}", path.display());
    let mut target = PathBuf::from(&base);
    // Two failures within one second must not overwrite the first moved file.
    let mut n = 1;
    while target.symlink_metadata().is_ok() {
        target = PathBuf::from(format!("{base}-{n}"));
        n += 1;
        if n > 1000 {
            return Err(std::io::Error::other("too many moved-aside state files"));
        }
    }
    fs::rename(path, &target)?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(target)
}

/// Makes a rename or a file creation in `dir` durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    fs::File::open(dir)?.sync_all()
}

/// `YYYYMMDDTHHMMSSZ` in UTC, without a date crate.
pub fn utc_stamp(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = crate::detect::timestamp::civil_from_days(days as i64);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn stamps_known_dates() {
        assert_eq!(utc_stamp(UNIX_EPOCH), "19700101T000000Z");
        // 2024-02-29 12:34:56 UTC, a leap day.
        let t = UNIX_EPOCH + Duration::from_secs(1_709_210_096);
        assert_eq!(utc_stamp(t), "20240229T123456Z");
        // 2026-12-31 23:59:59 UTC.
        let t = UNIX_EPOCH + Duration::from_secs(1_798_761_599);
        assert_eq!(utc_stamp(t), "20261231T235959Z");
    }
}
