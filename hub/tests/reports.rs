//! Device reports on the hub's disk: bounded per report and per device, rotated, never torn.

use outpost_hub::reports::{self, Appended, ReportError, ReportLimits};

const DEVICE: &str = "ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12";

fn on_disk(dir: &std::path::Path) -> u64 {
    reports::files(dir, DEVICE).iter().map(|p| std::fs::metadata(p).unwrap().len()).sum()
}

#[test]
fn a_device_flooding_reports_cannot_grow_its_file_without_bound() {
    let tmp = tempfile::tempdir().unwrap();
    let limits = ReportLimits { max_report_bytes: 1000, max_file_bytes: 4096, files_kept: 3 };
    let body = [7u8; 1000];
    let mut rotations = 0;
    for _ in 0..1000 {
        if reports::append(tmp.path(), DEVICE, &body, &limits).unwrap() == Appended::Rotated {
            rotations += 1;
        }
    }
    // A million bytes sent; at most files_kept files of max_file_bytes each kept.
    assert!(on_disk(tmp.path()) <= 3 * 4096, "{} bytes on disk", on_disk(tmp.path()));
    assert_eq!(reports::files(tmp.path(), DEVICE).len(), 3);
    assert!(rotations > 0);
    // What is kept is the newest reports, whole.
    let kept = reports::read_all(tmp.path(), DEVICE).unwrap();
    assert!(!kept.is_empty() && kept.iter().all(|r| r == &body));
}

#[test]
fn the_oldest_reports_rotate_out_first() {
    let tmp = tempfile::tempdir().unwrap();
    let limits = ReportLimits { max_report_bytes: 100, max_file_bytes: 2 * (4 + 8), files_kept: 2 };
    for i in 0..10u64 {
        reports::append(tmp.path(), DEVICE, &i.to_be_bytes(), &limits).unwrap();
    }
    let kept: Vec<u64> = reports::read_all(tmp.path(), DEVICE)
        .unwrap()
        .iter()
        .map(|r| u64::from_be_bytes(r.as_slice().try_into().unwrap()))
        .collect();
    assert_eq!(kept, vec![6, 7, 8, 9]);
}

#[test]
fn an_oversized_report_is_refused_and_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let limits = ReportLimits { max_report_bytes: 100, ..ReportLimits::default() };
    reports::append(tmp.path(), DEVICE, b"ok", &limits).unwrap();
    let e = reports::append(tmp.path(), DEVICE, &[0u8; 101], &limits).unwrap_err();
    assert!(matches!(&e, ReportError::TooLarge { len: 101, max: 100, device } if device == DEVICE), "{e}");
    assert_eq!(reports::read_all(tmp.path(), DEVICE).unwrap(), vec![b"ok".to_vec()]);
}
