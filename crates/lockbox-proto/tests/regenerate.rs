//! Regenerates the committed code from `../../proto` with a pure-Rust compiler (protox, no
//! system protoc) and fails on any difference. Run with `LOCKBOX_REGENERATE=1` to rewrite it.
//!
//! Two variants are committed (see the crate doc): `src/gen/` with the tonic clients and
//! servers (feature `services`) and `src/gen/messages/` with the messages only. Both are
//! generated and checked here, whichever features this test is built with.

use std::path::{Path, PathBuf};

const FILES: [&str; 3] = [
    "lockbox/v1/lockbox.proto",
    "lockbox/v1/controller.proto",
    "lockbox/v1/peer.proto",
];

/// Generates one variant into a temporary directory and compares (or, with
/// `LOCKBOX_REGENERATE`, rewrites) every file against `committed_dir`. Returns the stale paths.
fn check_variant(services: bool, committed_dir: &Path) -> Vec<String> {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let fds = protox::compile(FILES, [crate_dir.join("../../proto")]).expect("proto files compile");
    let out = tempfile::tempdir().expect("temp dir");
    tonic_prost_build::configure()
        .build_client(services)
        .build_server(services)
        .out_dir(out.path())
        .compile_fds(fds)
        .expect("code generation");

    let mut stale = Vec::new();
    for entry in std::fs::read_dir(out.path()).expect("read out dir") {
        let entry = entry.expect("dir entry");
        let fresh = std::fs::read_to_string(entry.path()).expect("read generated");
        if !services {
            // The point of this variant: lockbox-crypto builds it without tonic.
            assert!(
                !fresh.contains("tonic"),
                "{:?}: the messages-only code mentions tonic",
                entry.file_name()
            );
        }
        let committed_path = committed_dir.join(entry.file_name());
        let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
        if fresh != committed {
            if std::env::var_os("LOCKBOX_REGENERATE").is_some() {
                std::fs::create_dir_all(committed_dir).expect("create gen dir");
                std::fs::write(&committed_path, fresh).expect("write generated");
            } else {
                stale.push(committed_path.display().to_string());
            }
        }
    }
    stale
}

/// The method lists that metrics take label values from name exactly the methods of each
/// service in the `.proto` files, in their order.
#[test]
fn method_lists_match_proto() {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let fds = protox::compile(FILES, [crate_dir.join("../../proto")]).expect("proto files compile");
    let paths = |service: &str| -> Vec<String> {
        fds.file
            .iter()
            .flat_map(|f| f.service.iter().map(move |s| (f, s)))
            .filter(|(_, s)| s.name() == service)
            .flat_map(|(f, s)| {
                s.method
                    .iter()
                    .map(move |m| format!("/{}.{}/{}", f.package(), s.name(), m.name()))
            })
            .collect()
    };
    assert_eq!(paths("Lockbox"), lockbox_proto::LOCKBOX_METHODS);
    assert_eq!(paths("Peer"), lockbox_proto::PEER_METHODS);
    assert_eq!(paths("Controller"), lockbox_proto::CONTROLLER_METHODS);
}

#[test]
fn generated_code_matches_proto() {
    let gen_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/gen");
    let mut stale = check_variant(true, &gen_dir);
    stale.extend(check_variant(false, &gen_dir.join("messages")));
    assert!(
        stale.is_empty(),
        "generated code is stale: {stale:?}; run `LOCKBOX_REGENERATE=1 cargo test -p lockbox-proto`"
    );
}
