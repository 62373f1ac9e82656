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
