//! SIGHUP reloads registered configs. Its own test binary, because it signals the process.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use lockbox_tls::{ReloadableServerConfig, Role, TlsFiles, pki, reload_on_sighup};

#[tokio::test]
async fn sighup_reloads() {
    lockbox_tls::install_default_provider();
    let dir = tempfile::tempdir().unwrap();
    let ca = pki::init("d", dir.path()).unwrap();
    let a = pki::issue(dir.path(), Role::Lockbox, "a", &[], &[]).unwrap();
    let b = pki::issue(dir.path(), Role::Lockbox, "b", &[], &[]).unwrap();
    let live = TlsFiles {
        cert: dir.path().join("live.crt"),
        key: dir.path().join("live.key"),
        ca,
    };
    std::fs::copy(&a.cert, &live.cert).unwrap();
    std::fs::copy(&a.key, &live.key).unwrap();
    let config = ReloadableServerConfig::load(live.clone()).unwrap();
    assert_eq!(config.spiffe_id().name, "a");
    let before = config.current();
    let task = reload_on_sighup(vec![config.clone()]);

    std::fs::copy(&b.cert, &live.cert).unwrap();
    std::fs::copy(&b.key, &live.key).unwrap();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    for _ in 0..100 {
        if config.spiffe_id().name == "b" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(config.spiffe_id().name, "b");
    assert!(!Arc::ptr_eq(&before, &config.current()));
    task.abort();
}
