//! Device reports on disk: one append-only file per device in `DIR/reports` (a 4-byte big-endian length, then the
//! report), durable before the caller acknowledges it to the device.
//!
//! Bounded so that no device can fill the hub's disk: a report over [`ReportLimits::max_report_bytes`] is refused,
//! and a device's file is rotated when the next report would take it past [`ReportLimits::max_file_bytes`],
//! keeping [`ReportLimits::files_kept`] files (`KEY.reports`, `KEY.reports.1` ... oldest dropped). A failed append
//! is cut off again, so the file never keeps a torn record that would hide the reports after it.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The reports directory's name inside the hub's data directory.
pub const REPORTS_DIR: &str = "reports";

/// Bounds on the reports kept per device. Every field is a named knob with a conservative default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportLimits {
    /// Largest single report accepted, in bytes (the wire already bounds a `PostReport` at 64 KiB).
    pub max_report_bytes: u64,
    /// A device's current file is rotated before it grows past this, in bytes.
    pub max_file_bytes: u64,
    /// Files kept per device, the current one included; the oldest goes at rotation. At least 1.
    pub files_kept: u32,
}

impl Default for ReportLimits {
    fn default() -> Self {
        ReportLimits { max_report_bytes: 64 * 1024, max_file_bytes: 1024 * 1024, files_kept: 4 }
    }
}

/// Why a report was not stored.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The device sent a report larger than [`ReportLimits::max_report_bytes`] (the peer misbehaved).
    #[error("report of {len} bytes from device {device} refused: the limit is {max} bytes")]
    TooLarge {
        /// The device key (hex).
        device: String,
        /// The report's length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The disk refused (full, or failing); nothing of this report was kept and earlier ones are intact.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// What [`append`] did besides storing the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Appended to the device's current file.
    Appended,
    /// The current file was full: it was rotated first (the oldest file dropped if `files_kept` were held).
    Rotated,
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ReportError {
    let path = path.to_owned();
    move |source| ReportError::Io { op, path, source }
}

/// The device's files, newest first: `KEY.reports`, then `KEY.reports.1`, ... (only those that exist).
pub fn files(data_dir: &Path, device: &str) -> Vec<PathBuf> {
    let current = data_dir.join(REPORTS_DIR).join(format!("{device}.reports"));
    let mut out = vec![current.clone()];
    out.extend((1..).map(|i| rotated(&current, i)).take_while(|p| p.exists()));
    out.retain(|p| p.exists());
    out
}

/// The reports stored for `device`, oldest first (what [`files`] holds, decoded).
///
/// # Errors
/// A file cannot be read.
pub fn read_all(data_dir: &Path, device: &str) -> Result<Vec<Vec<u8>>, ReportError> {
    let mut out = Vec::new();
    for path in files(data_dir, device).iter().rev() {
        let bytes = fs::read(path).map_err(io("read", path))?;
        let mut rest = bytes.as_slice();
        while let Some((len, tail)) = rest.split_first_chunk::<4>() {
            let len = u32::from_be_bytes(*len) as usize;
            let Some((report, tail)) = tail.split_at_checked(len) else { break };
            out.push(report.to_vec());
            rest = tail;
        }
    }
    Ok(out)
}

fn rotated(current: &Path, i: u32) -> PathBuf {
    let mut name = current.as_os_str().to_owned();
    name.push(format!(".{i}"));
    PathBuf::from(name)
}

/// Appends `body` to `device`'s reports in `data_dir`, durably, within `limits`.
///
/// # Errors
/// [`ReportError::TooLarge`] for an oversized report; [`ReportError::Io`] naming the path when the disk refuses
/// (the report is then not stored, and the caller must not acknowledge it).
pub fn append(data_dir: &Path, device: &str, body: &[u8], limits: &ReportLimits) -> Result<Appended, ReportError> {
    let len = body.len() as u64;
    if len > limits.max_report_bytes || u32::try_from(body.len()).is_err() {
        return Err(ReportError::TooLarge { device: device.to_owned(), len, max: limits.max_report_bytes });
    }
    let dir = data_dir.join(REPORTS_DIR);
    fs::create_dir_all(&dir).map_err(io("create directory", &dir))?;
    let path = dir.join(format!("{device}.reports"));
    let held = match fs::metadata(&path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(io("stat", &path)(e)),
    };
    let record = 4 + len;
    let outcome = if held > 0 && held.saturating_add(record) > limits.max_file_bytes {
        rotate(&dir, &path, limits.files_kept.max(1))?;
        Appended::Rotated
    } else {
        Appended::Appended
    };
    let mut f = OpenOptions::new().create(true).append(true).open(&path).map_err(io("open", &path))?;
    let start = f.metadata().map_err(io("stat", &path))?.len();
    let written = (|| {
        f.write_all(&(len as u32).to_be_bytes())?;
        f.write_all(body)?;
        f.sync_data()
    })();
    if let Err(e) = written {
        // Cut the torn record off, so the reports already stored stay readable and the next append starts clean.
        let _ = f.set_len(start).and_then(|()| f.sync_data());
        return Err(io("append to", &path)(e));
    }
    if start == 0 {
        sync_dir(&dir)?;
    }
    Ok(outcome)
}

/// `KEY.reports.(kept-1)` goes, every other rotated file moves up one, the current file becomes `KEY.reports.1`.
fn rotate(dir: &Path, current: &Path, kept: u32) -> Result<(), ReportError> {
    let oldest = if kept == 1 { current.to_owned() } else { rotated(current, kept - 1) };
    match fs::remove_file(&oldest) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("remove", &oldest)(e)),
    }
    for i in (1..kept.saturating_sub(1)).rev() {
        let from = rotated(current, i);
        if from.exists() {
            let to = rotated(current, i + 1);
            fs::rename(&from, &to).map_err(io("rename", &from))?;
        }
    }
    if kept > 1 {
        fs::rename(current, rotated(current, 1)).map_err(io("rename", current))?;
    }
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), ReportError> {
    crate::blobs::sync_dir(dir).map_err(|e| ReportError::Io { op: e.op, path: e.path, source: e.source })
}
