//! A full disk: writes fail with an error, nothing acknowledged is lost, and the
//! engine resumes when space returns. Uses a small tmpfs (needs root); prints SKIPPED
//! where it cannot mount one.

mod common;

use std::process::Command;

use common::*;
use talo_engine::Error;

struct Mount(std::path::PathBuf);
impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn disk_full_fails_writes_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(dir.path())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        println!(
            "SKIPPED disk_full_fails_writes_and_recovers: cannot mount a tmpfs here (needs root)"
        );
        return;
    }
    let _mount = Mount(dir.path().to_path_buf());
    let data = dir.path().join("data");
    let e = open(&data);
    // fill the disk, leaving a little room
    let filler = dir.path().join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 3584 << 10]);
    let mut acked = 0i64;
    let mut failed = false;
    for k in 0..2000 {
        match e.write_blocking(rows(&e, acked, 50)) {
            Ok(out) => {
                assert_eq!(out.rows_written, 50);
                acked += 50;
            }
            Err(Error::WalUnavailable(msg)) => {
                assert!(msg.contains("No space") || msg.contains("space"), "{msg}");
                failed = true;
                break;
            }
            Err(other) => panic!("write {k}: unexpected error {other}"),
        }
    }
    assert!(failed, "the disk never filled up");
    assert!(acked > 0, "no write succeeded before the disk filled up");
    // still failing while full, but no panic and nothing lost
    assert!(e.write_blocking(rows(&e, acked, 50)).is_err());
    assert_exactly_once(&e, acked);
    // space returns: writes succeed again
    std::fs::remove_file(&filler).unwrap();
    let out = e.write_blocking(rows(&e, acked, 50)).unwrap();
    assert_eq!(out.rows_written, 50);
    acked += 50;
    e.flush_blocking().unwrap();
    e.halt();
    let e = open(&data);
    assert_exactly_once(&e, acked);
    e.halt();
}
