//! The events a load run sends: a REES46 CSV read whole into memory, or a synthetic stream
//! generated once per size into the work directory.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use propensity_actors::event::{CsvEvents, Event};

/// Reads every event of a REES46 CSV.
pub fn read_events(path: &Path) -> Result<Vec<Event>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("failed to open {}", path.display()))?;
    CsvEvents::new(std::io::BufReader::new(file))
        .map(|event| event.map_err(anyhow::Error::from))
        .collect()
}

/// The synthetic stream of `users` shoppers over `days`, generated on first use.
pub fn synthetic(work_dir: &Path, users: u64, days: u32) -> Result<PathBuf> {
    std::fs::create_dir_all(work_dir)?;
    let path = work_dir.join(format!("events-{users}x{days}.csv"));
    if !path.exists() {
        propensity::tools::generate::generate_files(users, days, 1, &path, None::<&Path>, true)?;
    }
    Ok(path)
}
