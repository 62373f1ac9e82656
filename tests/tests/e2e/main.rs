//! The end-to-end tests: real `lockboxd`, `lockbox-controller` and `lockboxctl` processes,
//! real TLS, real store files, real consumers (qemu-img, cryptsetup). One test binary, one
//! module per subject: linking sixteen binaries of this size took longer than running some of
//! them. Run one subject with `./deploy/test.sh --test e2e keys::`, one test by its name.

mod audit;
mod backup;
mod config;
mod consumers;
mod controller;
mod crash;
mod crash_slots;
mod disk_full;
mod durability;
mod hardening;
mod keys;
mod metrics;
mod migrate;
mod prometheus_rules;
mod review_controller;
mod revoke;
mod rollback;
mod seal;
mod shred;
mod storm;
mod transfer;
mod transfer_adversarial;
mod transfer_crash;
mod unseal_peers;
mod unseal_tpm;
