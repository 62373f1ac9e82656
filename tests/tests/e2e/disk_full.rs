//! A full disk (issue 19, finding 4), on a real 8 MiB tmpfs mounted as the data dir: `init`
//! fits; creates are acknowledged until the store cannot write, and then none is; the daemon
//! stops with EX_TEMPFAIL (75) instead of running half-alive; once space returns, the restart
//! (systemd's, here the test's) serves every acknowledged key and takes new ones. Needs root
//! for `mount` (the tests run as root here and in CI).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use lockbox_proto::v1 as pb;
use lockbox_proto::v1::lockbox_client::LockboxClient;
use lockbox_tests::{Node, NodeOptions};

/// A tmpfs mounted for the test's life (lazily unmounted when dropped, even on a panic).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs on {} failed", dir.display());
        Tmpfs(dir.to_path_buf())
    }

    fn resize(&self, size: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(st.success(), "remount failed");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Creates keys from 16 concurrent callers until one fails; returns the acknowledged ids and
/// every caller's error (the store's refusal, and calls cut off as the daemon stops).
fn create_until_refused(node: &Node, limit: usize) -> (Vec<String>, Vec<String>) {
    let uri = format!("unix:{}", node.socket().display());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let channel = tonic::transport::Endpoint::try_from(uri)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let mut client = LockboxClient::new(channel.clone());
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let mut ids = Vec::new();
                let mut err = None;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) && ids.len() < limit / 16 {
                    match client
                        .create_key(pb::CreateKeyRequest {
                            length: 32,
                            ..Default::default()
                        })
                        .await
                    {
                        Ok(r) => ids.push(r.into_inner().key_id),
                        Err(e) => {
                            stop.store(true, std::sync::atomic::Ordering::SeqCst);
                            err = Some(format!("{:?}: {}", e.code(), e.message()));
                        }
                    }
                }
                (ids, err)
            }));
        }
        let mut all = Vec::new();
        let mut errors = Vec::new();
        for t in tasks {
            let (ids, err) = t.await.unwrap();
            all.extend(ids);
            errors.extend(err);
        }
        (all, errors)
    })
}

#[test]
fn a_full_disk_refuses_writes_loses_nothing_acknowledged_and_recovers_when_space_returns() {
    let mut node = Node::new_uninit(NodeOptions::default());
    let fs = Tmpfs::mount(&node.data_dir(), "8m");
    // init fits on an 8 MiB volume (the journal is preallocated sparse).
    node.init();
    node.spawn_ready();
    let (acked, errors) = create_until_refused(&node, 64_000);
    assert!(
        acked.len() > 100,
        "only {} keys before the disk was full",
        acked.len()
    );
    assert!(
        !errors.is_empty(),
        "the disk never filled ({} keys)",
        acked.len()
    );
    // The refusal names the cause; calls in flight as the daemon stops are cut off.
    assert!(
        errors
            .iter()
            .any(|e| e.contains("Unavailable") && e.contains("store failed")),
        "{errors:?}"
    );
    let status = node.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(75), "{}", node.log_contents());
    // Still full, a start may fail again (systemd keeps restarting it); once space returns,
    // it serves everything acknowledged.
    fs.resize("64m");
    node.spawn_ready();
    assert!(node.status()["key_count"].as_u64().unwrap() >= acked.len() as u64);
    for id in acked.iter().step_by(97).chain(acked.last()) {
        node.key_bytes(id);
    }
    node.create_key(&[]);
    node.stop();
    drop(node);
}
