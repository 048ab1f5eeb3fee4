//! EmbeddedLog on a file system that fills up: a real one, a small tmpfs. Mounting needs
//! root; without it the test says so and passes without running.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::{Account, AccountCommand as Cmd};
use keel::log::EventLog;
use keel::{CommandError, EmbeddedLog, Runtime, SendOptions};

/// A tmpfs of `size` mounted on `dir`, unmounted when dropped.
struct Tmpfs<'a>(&'a Path);

impl<'a> Tmpfs<'a> {
    fn mount(dir: &'a Path, size: &str) -> Option<Self> {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then_some(Tmpfs(dir))
    }
}

impl Drop for Tmpfs<'_> {
    fn drop(&mut self) {
        // Lazily: a failed test may still hold files open on it.
        let _ = Command::new("umount").arg("-l").arg(self.0).status();
    }
}

/// Fills the file system of `dir` up with one file; returns its path.
fn fill(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 64 << 10];
    while file.write_all(&chunk).is_ok() {}
    let small = [0u8; 512];
    while file.write_all(&small).is_ok() {}
    let _ = file.sync_all();
    path
}

#[tokio::test]
async fn a_full_disk_fails_appends_clearly_keeps_reads_and_loses_nothing() {
    let mount = tempfile::tempdir().unwrap();
    let Some(_tmpfs) = Tmpfs::mount(mount.path(), "16m") else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let dir = mount.path().join("store");
    let log = Arc::new(EmbeddedLog::open(&dir, 1).unwrap());
    let runtime = Runtime::builder()
        .backend(log.clone())
        .start()
        .await
        .unwrap();
    let accounts = runtime.aggregate::<Account>();
    for i in 0..50 {
        accounts
            .send(&format!("a{}", i % 5), Cmd::Deposit(1))
            .await
            .unwrap();
    }
    let filler = fill(mount.path());
    let mut failed = Vec::new();
    for i in 0..20 {
        let id = format!("c{i}");
        let options = SendOptions::with_id(id.as_str());
        match accounts
            .send_with(&format!("a{}", i % 5), Cmd::Deposit(1), options)
            .await
        {
            Ok(_) => {}
            Err(err) => {
                failed.push(i);
                assert!(matches!(err, CommandError::Storage { .. }), "{err}");
                let text = format!("{err}");
                assert!(
                    text.to_lowercase().contains("no space left on device"),
                    "{text}"
                );
                assert!(text.contains(&dir.display().to_string()), "{text}");
            }
        }
    }
    assert!(!failed.is_empty(), "the full disk took every append");
    // Reads keep working.
    let records = log.read(0, 0, 1000, Duration::ZERO).await.unwrap();
    assert!(records.len() >= 50);
    // Shutdown does not hang (it may report the failure).
    let shutdown = tokio::time::timeout(Duration::from_secs(60), runtime.shutdown()).await;
    assert!(shutdown.is_ok(), "shutdown hung on a full disk");
    drop(accounts);
    drop(runtime);
    drop(log);
    // Space freed: a reopen continues with every acknowledged command.
    std::fs::remove_file(filler).unwrap();
    let log = Arc::new(EmbeddedLog::open(&dir, 1).unwrap());
    let runtime = Runtime::builder()
        .backend(log.clone())
        .start()
        .await
        .unwrap();
    let accounts = runtime.aggregate::<Account>();
    // A failed append may have landed after all (a failed fsync): its retry with the same
    // command id finds it. Every command ends up applied exactly once.
    for i in failed {
        let options = SendOptions::with_id(format!("c{i}"));
        accounts
            .send_with(&format!("a{}", i % 5), Cmd::Deposit(1), options)
            .await
            .unwrap();
    }
    let mut total = 0;
    for i in 0..5 {
        total += accounts
            .query(&format!("a{i}"), |s| s.balance)
            .await
            .unwrap();
    }
    assert_eq!(total, 70);
    accounts.send("a0", Cmd::Deposit(1)).await.unwrap();
    runtime.shutdown().await.unwrap();
}
