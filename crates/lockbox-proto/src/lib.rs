//! Generated gRPC code for `proto/lockbox/v1`. Nothing here is written by hand except this
//! file: the modules below are produced by `tests/regenerate.rs`, which also fails when the
//! committed code differs from what the `.proto` files produce (so reviewers see every change).

#![allow(missing_docs, clippy::all)]

/// Package `lockbox.v1`.
pub mod v1 {
    include!("gen/lockbox.v1.rs");
}
