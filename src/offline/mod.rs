//! Offline training: read history in event-time order, replay it through the same feature code
//! the service runs, label every scoring point, and fit, calibrate and report the model; and the
//! customer-value models fitted on purchase histories.

pub mod history;
pub mod model;
pub mod train;
pub mod value;

use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` through a sibling `<path>.tmp` renamed over it, so that a reader (the
/// service's hot reload) never sees half a file, creating `path`'s directory when it is missing.
/// A failure says what failed, on which path.
pub(crate) fn write_replacing(
    path: &Path,
    bytes: &[u8],
) -> Result<(), (&'static str, PathBuf, std::io::Error)> {
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|source| ("create directory", dir.to_path_buf(), source))?;
    }
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    std::fs::write(&temporary, bytes).map_err(|source| ("write", temporary.clone(), source))?;
    std::fs::rename(&temporary, path).map_err(|source| ("replace", path.to_path_buf(), source))
}
