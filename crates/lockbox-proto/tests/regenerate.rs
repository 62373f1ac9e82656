//! Regenerates the committed code from `../../proto` with a pure-Rust compiler (protox, no
//! system protoc) and fails on any difference. Run with `LOCKBOX_REGENERATE=1` to rewrite it.

use std::path::PathBuf;

#[test]
fn generated_code_matches_proto() {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let proto_root = crate_dir.join("../../proto");
    let files = [
        "lockbox/v1/lockbox.proto",
        "lockbox/v1/controller.proto",
        "lockbox/v1/peer.proto",
    ];
    let fds = protox::compile(files, [&proto_root]).expect("proto files compile");
    let out = tempfile::tempdir().expect("temp dir");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .out_dir(out.path())
        .compile_fds(fds)
        .expect("code generation");

    let gen_dir = crate_dir.join("src/gen");
    let mut stale = Vec::new();
    for entry in std::fs::read_dir(out.path()).expect("read out dir") {
        let entry = entry.expect("dir entry");
        let fresh = std::fs::read_to_string(entry.path()).expect("read generated");
        let committed_path = gen_dir.join(entry.file_name());
        let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
        if fresh != committed {
            if std::env::var_os("LOCKBOX_REGENERATE").is_some() {
                std::fs::write(&committed_path, fresh).expect("write generated");
            } else {
                stale.push(committed_path.display().to_string());
            }
        }
    }
    assert!(
        stale.is_empty(),
        "generated code is stale: {stale:?}; run `LOCKBOX_REGENERATE=1 cargo test -p lockbox-proto`"
    );
}
