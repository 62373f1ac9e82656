//! Generated protobuf code for `proto/lockbox/v1`. Nothing here is written by hand except this
//! file: the modules below are produced by `tests/regenerate.rs`, which also fails when the
//! committed code differs from what the `.proto` files produce (so reviewers see every change).
//!
//! # Features
//!
//! - `services` (off by default): [`v1`] also holds the tonic clients and servers
//!   (`v1::peer_client`, `v1::lockbox_server`, …), generated into `src/gen/lockbox.v1.rs`.
//!   Without it, [`v1`] holds the same messages and enums only, generated into
//!   `src/gen/messages/lockbox.v1.rs` with no reference to `tonic`. The sans-I/O crypto crate
//!   encodes and checks grants, attestations, batches and receipts, and has no business
//!   compiling an RPC stack (tonic, hyper, tower, h2): it uses this crate without the feature.
//!   Crates that serve or call an RPC enable it.

#![allow(missing_docs, clippy::all)]

/// Package `lockbox.v1`: messages and enums, plus clients and servers with `services`.
#[cfg(feature = "services")]
pub mod v1 {
    include!("gen/lockbox.v1.rs");
}

/// Package `lockbox.v1`: messages and enums, plus clients and servers with `services`.
#[cfg(not(feature = "services"))]
pub mod v1 {
    include!("gen/messages/lockbox.v1.rs");
}

/// Every method of the `Lockbox` service (the Unix socket API), as gRPC paths. Metrics label
/// requests by method; a request path is caller-controlled text, so only a path in one of
/// these lists becomes a label value (tests/regenerate.rs keeps them equal to the `.proto`).
pub const LOCKBOX_METHODS: &[&str] = &[
    "/lockbox.v1.Lockbox/CreateKey",
    "/lockbox.v1.Lockbox/GetKey",
    "/lockbox.v1.Lockbox/DescribeKey",
    "/lockbox.v1.Lockbox/ListKeys",
    "/lockbox.v1.Lockbox/SnapshotKey",
    "/lockbox.v1.Lockbox/CloneKey",
    "/lockbox.v1.Lockbox/RekeyKey",
    "/lockbox.v1.Lockbox/DestroyKey",
    "/lockbox.v1.Lockbox/Status",
    "/lockbox.v1.Lockbox/Seal",
    "/lockbox.v1.Lockbox/Unseal",
    "/lockbox.v1.Lockbox/EnrollUnseal",
    "/lockbox.v1.Lockbox/RotateKek",
    "/lockbox.v1.Lockbox/AuditTail",
    "/lockbox.v1.Lockbox/AuditVerify",
    "/lockbox.v1.Lockbox/VerifyGrant",
    "/lockbox.v1.Lockbox/Transfer",
    "/lockbox.v1.Lockbox/PromoteKey",
    "/lockbox.v1.Lockbox/ExportBackup",
    "/lockbox.v1.Lockbox/RestoreBackup",
];

/// Every method of the `Peer` service (lockbox to lockbox, mTLS), as gRPC paths (see
/// [`LOCKBOX_METHODS`]).
pub const PEER_METHODS: &[&str] = &[
    "/lockbox.v1.Peer/Identity",
    "/lockbox.v1.Peer/Deliver",
    "/lockbox.v1.Peer/AssistKey",
    "/lockbox.v1.Peer/Assist",
];

/// Every method of the `Controller` service, as gRPC paths (see [`LOCKBOX_METHODS`]).
pub const CONTROLLER_METHODS: &[&str] = &[
    "/lockbox.v1.Controller/Attest",
    "/lockbox.v1.Controller/IssueGrant",
    "/lockbox.v1.Controller/CosignGrant",
    "/lockbox.v1.Controller/Vouch",
    "/lockbox.v1.Controller/Revocations",
];
