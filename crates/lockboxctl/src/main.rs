//! `lockboxctl`: the admin and script interface to a lockbox.
//!
//! A thin client: every verb is one RPC to the local `lockboxd` over its Unix socket. Output is
//! for people by default and stable JSON with `--json`; failures print `error: …` on stderr and
//! exit non-zero, so scripts can rely on both.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use clap::{Parser, Subcommand, ValueEnum};
use lockbox_proto::v1 as pb;
use lockbox_proto::v1::lockbox_client::LockboxClient;
use serde::Serialize;
use tonic::transport::Channel;
use zeroize::Zeroizing;

mod backup;
mod input;
mod json;
mod out;
mod output;
mod remote;

use out::outln;

#[derive(Parser)]
#[command(
    name = "lockboxctl",
    version,
    about = "Drive a lockbox: keys, sealing, audit"
)]
struct Cli {
    /// The lockboxd Unix socket.
    #[arg(
        long,
        global = true,
        env = "LOCKBOX_SOCKET",
        default_value = "/run/lockbox/lockbox.sock"
    )]
    socket: PathBuf,
    /// Stable machine-readable output on stdout.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Volume keys: create, get, describe, list, snapshot, clone, rekey, destroy.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Whether the lockbox is sealed, its node id, counts.
    Status,
    /// Forget the KEK: only status and unseal work until the next unseal.
    Seal,
    /// Unseal (the keyfile method re-reads its key file; the passphrase method needs one;
    /// the peers method asks its peers again). A passphrase file opens the recovery slot of
    /// any method. `unseal enroll` re-wraps the root secret for the config's [unseal].
    Unseal {
        /// File holding the passphrase (first line): the passphrase method's, or the
        /// recovery passphrase of any other method. Prompts when the method needs one.
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
        #[command(subcommand)]
        command: Option<UnsealCommand>,
    },
    /// Key-encryption key management.
    #[command(subcommand)]
    Kek(KekCommand),
    /// The hash-chained audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Run a grant with the local lockbox as its source: the keys are sealed to the
    /// destination and delivered peer to peer; prints the destination's receipt.
    Transfer {
        /// The grant file (from `grant issue`).
        file: PathBuf,
    },
    /// Development PKI: a CA and SPIFFE certificates (operators may bring their own CA).
    #[command(subcommand)]
    Pki(remote::PkiCommand),
    /// Grants: ask a controller for one, cosign, inspect, verify against the local lockbox.
    #[command(subcommand)]
    Grant(remote::GrantCommand),
    /// Offline backups sealed to recovery keys: keygen, export, restore.
    #[command(subcommand)]
    Backup(backup::BackupCommand),
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Create a key with fresh random material; prints its id.
    Create {
        /// Material length in bytes (64 suits AES-XTS-512 LUKS).
        #[arg(long, default_value_t = 32)]
        length: u32,
        /// A label k=v (repeatable): volume, pool, tenant...
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Clone policy for this key (default: the lockbox's config).
        #[arg(long, value_enum)]
        clone_policy: Option<PolicyArg>,
        /// Use this UUID as the key id (makes the call idempotent).
        #[arg(long)]
        key_id: Option<String>,
    },
    /// Print the plaintext key (only over the local socket).
    Get {
        /// The key id.
        id: String,
        /// Output encoding; raw writes the exact bytes.
        #[arg(long, value_enum, default_value_t = Format::Hex)]
        format: Format,
        /// A specific version (default: the current one).
        #[arg(long, default_value_t = 0)]
        version: u32,
    },
    /// Show a key's metadata.
    Describe {
        /// The key id.
        id: String,
    },
    /// List keys, optionally only those carrying every given label.
    List {
        /// Filter k=v (repeatable, all must match).
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Also list destroyed keys' tombstones.
        #[arg(long)]
        include_destroyed: bool,
    },
    /// New key id with the same material (O(1)); prints the new id.
    Snapshot {
        /// The key id.
        id: String,
        /// Extra label k=v for the snapshot (repeatable).
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
    },
    /// Clone a key: same-key shares the material (O(1)); new-key makes new material, which
    /// the consumer must then re-encrypt the volume under.
    Clone {
        /// The key id.
        id: String,
        /// same-key or new-key.
        #[arg(long, value_enum)]
        mode: ModeArg,
        /// Extra label k=v for the clone (repeatable).
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
    },
    /// Begin a rekey (new version, both readable) or, with --commit, finish it.
    Rekey {
        /// The key id.
        id: String,
        /// Make the new version current and retire the old one.
        #[arg(long)]
        commit: bool,
    },
    /// Make a replica (a standing backup from a REPLICATE grant) an active key.
    Promote {
        /// The key id.
        id: String,
    },
    /// Destroy a key id; its material is shredded when no key id refers to it.
    Destroy {
        /// The key id.
        id: String,
        /// Also destroy every key id sharing its material.
        #[arg(long)]
        cascade: bool,
    },
}

#[derive(Subcommand)]
enum UnsealCommand {
    /// Re-read [unseal] from the config lockboxd was started with and re-wrap the root
    /// secret for it (new slots; no record is re-sealed; the recovery slot is kept unless the
    /// config drops it). The peers must be reachable. Audited.
    Enroll {
        /// File holding the recovery passphrase (first line), to add or replace the recovery
        /// slot when the config asks for one.
        #[arg(long)]
        recovery_passphrase_file: Option<PathBuf>,
        /// File holding the new passphrase (first line), when the config's method is
        /// passphrase.
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum KekCommand {
    /// Re-seal every record under a fresh KEK and drop the old one.
    Rotate,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// The newest records.
    Tail {
        /// How many.
        #[arg(short = 'n', default_value_t = 20)]
        n: u32,
    },
    /// Check the whole chain; exits non-zero naming the first bad record.
    Verify,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Hex,
    Base64,
    Raw,
}

#[derive(Clone, Copy, ValueEnum)]
enum PolicyArg {
    Deny,
    SameKey,
    NewKey,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    SameKey,
    NewKey,
}

use input::parse_label;

/// The `--label` flags as a map (the same name twice is refused, not silently collapsed).
fn labels(v: Vec<(String, String)>) -> Result<HashMap<String, String>> {
    input::labels(v)
}

fn policy_name(p: i32) -> &'static str {
    match pb::ClonePolicy::try_from(p) {
        Ok(pb::ClonePolicy::Deny) => "deny",
        Ok(pb::ClonePolicy::SameKey) => "same-key",
        Ok(pb::ClonePolicy::NewKey) => "new-key",
        _ => "unspecified",
    }
}

fn print_info(k: &pb::KeyInfo) {
    let origin = k.origin.clone().unwrap_or_default();
    outln!("key_id:        {}", k.key_id);
    outln!("state:         {}", k.state);
    outln!("length:        {} bytes", k.length);
    let mut labels: Vec<_> = k.labels.iter().collect();
    labels.sort();
    let labels: Vec<String> = labels.iter().map(|(a, b)| format!("{a}={b}")).collect();
    outln!("labels:        {}", labels.join(" "));
    outln!("created:       {}", out::time(k.created_unix_ms));
    if !origin.from_node.is_empty() {
        outln!(
            "origin:        {} from {} (grant {})",
            origin.kind,
            origin.from_node,
            origin.grant_id
        );
    } else if origin.from_key_id.is_empty() {
        outln!("origin:        {}", origin.kind);
    } else {
        outln!("origin:        {} of {}", origin.kind, origin.from_key_id);
    }
    if !k.moved_to_node.is_empty() {
        outln!(
            "moved to:      {} (grant {})",
            k.moved_to_node,
            k.moved_by_grant
        );
    }
    outln!("clone policy:  {}", policy_name(k.clone_policy));
    outln!("version:       {}", k.current_version);
    for v in &k.versions {
        if v.created_unix_ms == 0 {
            outln!("  v{}: {}", v.version, v.state);
        } else {
            outln!(
                "  v{}: {} (created {})",
                v.version,
                v.state,
                out::time(v.created_unix_ms)
            );
        }
    }
    if !k.shares_material_with.is_empty() {
        outln!("shares material with: {}", k.shares_material_with.join(" "));
    }
}

fn print_status(s: &pb::StatusResponse) {
    outln!("node:     {}", s.node_id);
    outln!("sealed:   {}", if s.sealed { "yes" } else { "no" });
    outln!("unseal:   {}", s.unseal_method);
    if let Some(u) = &s.unseal {
        if u.recovery {
            outln!("recovery: passphrase slot");
        }
        if !u.answered.is_empty() {
            outln!("answered: {}", u.answered.join(" "));
        }
        for (p, e) in u.missing.iter().zip(&u.missing_errors) {
            outln!("missing:  {p} ({e})");
        }
        if !u.unsealed_by.is_empty() {
            outln!("unsealed by: {}", u.unsealed_by);
        }
    }
    if !s.revoked_nodes.is_empty() {
        outln!("revoked:  {}", s.revoked_nodes.join(" "));
    }
    outln!("kek:      {}", s.kek_id);
    outln!("keys:     {}", s.key_count);
    outln!("audit:    {} records", s.audit_records);
    outln!("version:  {}", s.version);
    outln!("uptime:   {} s", s.uptime_seconds);
    if !s.assist_public_key.is_empty() {
        outln!("assist:   {}", s.assist_public_key);
    }
    outln!(
        "memory:   {}",
        if s.memory_locked {
            "locked (no swap)"
        } else {
            "NOT locked (may be swapped; see [hardening] in operations.md)"
        }
    );
    outln!(
        "core:     {}",
        if s.core_dumps_disabled {
            "dumps disabled"
        } else {
            "dumps NOT disabled"
        }
    );
    if s.attestation_expires_unix_ms > 0 {
        outln!(
            "attested: {} (expires {})",
            s.attestation_state,
            out::time(s.attestation_expires_unix_ms)
        );
    } else {
        outln!("attested: {}", s.attestation_state);
    }
    if !s.attestation_error.is_empty() {
        outln!("attestation error: {}", s.attestation_error);
    }
}

/// Prints `shape` (one of the [`json`] shapes) as one JSON line with `--json`, else runs
/// `human`.
fn emit(json_mode: bool, shape: &impl Serialize, human: impl FnOnce()) -> Result<()> {
    if json_mode {
        let line = serde_json::to_string(shape).context("encoding the JSON output")?;
        outln!("{line}");
    } else {
        human();
    }
    Ok(())
}

/// Turns a gRPC failure into one line that says what failed, without the transport noise.
fn rpc_error(socket: &std::path::Path, s: tonic::Status) -> anyhow::Error {
    let lost = ["transport", "h2 protocol", "connection", "broken pipe"];
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal
            if lost.iter().any(|w| s.message().contains(w)) =>
        {
            anyhow!(
                "lost the connection to lockboxd at {} (did it stop?): {}",
                socket.display(),
                s.message()
            )
        }
        _ => anyhow!("{}", s.message()),
    }
}

async fn connect(socket: &std::path::Path) -> Result<LockboxClient<Channel>> {
    let endpoint = tonic::transport::Endpoint::try_from(format!("unix:{}", socket.display()))
        .with_context(|| format!("bad socket path {}", socket.display()))?;
    let channel = endpoint.connect().await.map_err(|e| {
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg = format!("{msg}: {s}");
            src = s.source();
        }
        anyhow!(
            "cannot connect to lockboxd at {}: {msg} (is it running? see --socket / LOCKBOX_SOCKET)",
            socket.display()
        )
    })?;
    // Backups travel in one message each way: a whole backup file (at most MAX_BACKUP_LEN)
    // and its identity, as lockboxd accepts.
    let max = lockbox_crypto::MAX_BACKUP_LEN + (1 << 20);
    Ok(LockboxClient::new(channel)
        .max_decoding_message_size(max)
        .max_encoding_message_size(max))
}

/// A passphrase from its file (bounded, one line: `input::passphrase_line`) or the terminal.
fn read_secret_line(file: Option<&PathBuf>) -> Result<Zeroizing<Vec<u8>>> {
    match file {
        Some(f) => {
            let what = format!("passphrase file {}", f.display());
            let text = input::read_secret_file(f, input::MAX_PASSPHRASE_FILE, &what)?;
            input::passphrase_line(&text, &what)
        }
        None => {
            let typed = Zeroizing::new(rpassword::prompt_password("passphrase: ")?);
            input::passphrase_line(typed.as_bytes(), "the passphrase")
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let socket = cli.socket.clone();
    let command = match cli.command {
        Command::Pki(p) => return remote::run_pki(p, cli.json),
        Command::Grant(remote::GrantCommand::Verify { file }) => {
            return verify_grant(&socket, &file, cli.json).await;
        }
        Command::Grant(g) => return remote::run_grant(g, cli.json).await,
        Command::Backup(backup::BackupCommand::Keygen { output }) => {
            return backup::keygen(&output, cli.json);
        }
        Command::Backup(backup::BackupCommand::Restore { file, identity }) => {
            return backup::restore(&socket, &file, &identity, cli.json).await;
        }
        other => other,
    };
    let mut c = connect(&socket).await?;
    let err = |s| rpc_error(&socket, s);
    let j = cli.json;
    match command {
        Command::Key(k) => match k {
            KeyCommand::Create {
                length,
                labels: l,
                clone_policy,
                key_id,
            } => {
                let policy = match clone_policy {
                    None => pb::ClonePolicy::Unspecified,
                    Some(PolicyArg::Deny) => pb::ClonePolicy::Deny,
                    Some(PolicyArg::SameKey) => pb::ClonePolicy::SameKey,
                    Some(PolicyArg::NewKey) => pb::ClonePolicy::NewKey,
                };
                let r = c
                    .create_key(pb::CreateKeyRequest {
                        length,
                        labels: labels(l)?,
                        clone_policy: policy as i32,
                        key_id: key_id.unwrap_or_default(),
                    })
                    .await
                    .map_err(err)?
                    .into_inner();
                let shape = json::KeyCreated {
                    created: r.created,
                    key_id: &r.key_id,
                };
                emit(j, &shape, || outln!("{}", r.key_id))?;
            }
            KeyCommand::Get {
                id,
                format,
                version,
            } => {
                let r = c
                    .get_key(pb::GetKeyRequest {
                        key_id: id,
                        version,
                    })
                    .await
                    .map_err(err)?
                    .into_inner();
                let material = Zeroizing::new(r.material);
                let (name, encoded) = match format {
                    Format::Hex => ("hex", Zeroizing::new(hex::encode(&*material))),
                    Format::Base64 => (
                        "base64",
                        Zeroizing::new(
                            base64::engine::general_purpose::STANDARD.encode(&*material),
                        ),
                    ),
                    Format::Raw => {
                        if j {
                            bail!(
                                "--format raw writes bytes, not JSON: use hex or base64 with --json"
                            );
                        }
                        out::bytes(&material);
                        return Ok(());
                    }
                };
                if j {
                    let shape = json::KeyMaterial {
                        format: name,
                        key: &encoded,
                        key_id: &r.key_id,
                        version: r.version,
                    };
                    // Room for the whole line up front, so the buffer never grows and leaves
                    // an unwiped copy of the key behind (an escaped byte of the id takes 6).
                    let room = 96 + encoded.len() + 6 * r.key_id.len();
                    let mut line = Zeroizing::new(Vec::with_capacity(room));
                    serde_json::to_writer(&mut *line, &shape)
                        .context("encoding the JSON output")?;
                    line.push(b'\n');
                    out::bytes(&line);
                } else {
                    outln!("{}", *encoded);
                }
            }
            KeyCommand::Describe { id } => {
                let r = c
                    .describe_key(pb::DescribeKeyRequest { key_id: id })
                    .await
                    .map_err(err)?
                    .into_inner();
                emit(j, &json::Key::new(&r), || print_info(&r))?;
            }
            KeyCommand::List {
                labels: l,
                include_destroyed,
            } => {
                let filter = labels(l)?;
                let mut keys = Vec::new();
                let mut token = String::new();
                loop {
                    let r = c
                        .list_keys(pb::ListKeysRequest {
                            labels: filter.clone(),
                            page_size: 1000,
                            page_token: token,
                            include_destroyed,
                        })
                        .await
                        .map_err(err)?
                        .into_inner();
                    keys.extend(r.keys);
                    if r.next_page_token.is_empty() {
                        break;
                    }
                    token = r.next_page_token;
                }
                let shape = json::KeyList {
                    keys: keys.iter().map(json::Key::new).collect(),
                };
                emit(j, &shape, || {
                    for k in &keys {
                        let mut l: Vec<String> =
                            k.labels.iter().map(|(a, b)| format!("{a}={b}")).collect();
                        l.sort();
                        outln!("{}  {:<9} {}", k.key_id, k.state, l.join(" "));
                    }
                })?;
            }
            KeyCommand::Snapshot { id, labels: l } => {
                let r = c
                    .snapshot_key(pb::SnapshotKeyRequest {
                        key_id: id,
                        labels: labels(l)?,
                    })
                    .await
                    .map_err(err)?
                    .into_inner();
                emit(j, &json::NewKeyId { key_id: &r.key_id }, || {
                    outln!("{}", r.key_id)
                })?;
            }
            KeyCommand::Clone {
                id,
                mode,
                labels: l,
            } => {
                let mode = match mode {
                    ModeArg::SameKey => pb::CloneMode::SameKey,
                    ModeArg::NewKey => pb::CloneMode::NewKey,
                };
                let r = c
                    .clone_key(pb::CloneKeyRequest {
                        key_id: id,
                        mode: mode as i32,
                        labels: labels(l)?,
                    })
                    .await
                    .map_err(err)?
                    .into_inner();
                emit(j, &json::NewKeyId { key_id: &r.key_id }, || {
                    outln!("{}", r.key_id)
                })?;
            }
            KeyCommand::Rekey { id, commit } => {
                let r = c
                    .rekey_key(pb::RekeyKeyRequest { key_id: id, commit })
                    .await
                    .map_err(err)?
                    .into_inner();
                emit(j, &json::Key::new(&r), || print_info(&r))?;
            }
            KeyCommand::Promote { id } => {
                let r = c
                    .promote_key(pb::PromoteKeyRequest { key_id: id })
                    .await
                    .map_err(err)?
                    .into_inner();
                emit(j, &json::Key::new(&r), || print_info(&r))?;
            }
            KeyCommand::Destroy { id, cascade } => {
                let r = c
                    .destroy_key(pb::DestroyKeyRequest {
                        key_id: id,
                        cascade,
                    })
                    .await
                    .map_err(err)?
                    .into_inner();
                let shape = json::Destroyed {
                    destroyed_key_ids: &r.destroyed_key_ids,
                    kek_rotated: r.kek_rotated,
                    material_shredded: r.material_shredded,
                };
                emit(j, &shape, || {
                    outln!("destroyed: {}", r.destroyed_key_ids.join(" "));
                    outln!(
                        "material:  {}",
                        if r.material_shredded {
                            "shredded"
                        } else {
                            "kept (still shared by another key id)"
                        }
                    );
                    if r.kek_rotated {
                        outln!(
                            "kek:       rotated (the destroyed material is now unrecoverable from disk)"
                        );
                    }
                })?;
            }
        },
        Command::Status => {
            let s = c
                .status(pb::StatusRequest {})
                .await
                .map_err(err)?
                .into_inner();
            emit(j, &json::Status::new(&s), || print_status(&s))?;
        }
        Command::Seal => {
            let s = c.seal(pb::SealRequest {}).await.map_err(err)?.into_inner();
            emit(j, &json::Status::new(&s), || outln!("sealed"))?;
        }
        Command::Unseal {
            command:
                Some(UnsealCommand::Enroll {
                    recovery_passphrase_file,
                    passphrase_file,
                }),
            ..
        } => {
            let recovery = match &recovery_passphrase_file {
                Some(f) => read_secret_line(Some(f))?,
                None => Zeroizing::new(Vec::new()),
            };
            let passphrase = match &passphrase_file {
                Some(f) => read_secret_line(Some(f))?,
                None => Zeroizing::new(Vec::new()),
            };
            let s = c
                .enroll_unseal(pb::EnrollUnsealRequest {
                    recovery_passphrase: recovery.to_vec(),
                    passphrase: passphrase.to_vec(),
                })
                .await
                .map_err(err)?
                .into_inner();
            emit(j, &json::Status::new(&s), || {
                outln!("enrolled: unseal method {}", s.unseal_method)
            })?;
        }
        Command::Unseal {
            passphrase_file,
            command: None,
        } => {
            let status = c
                .status(pb::StatusRequest {})
                .await
                .map_err(err)?
                .into_inner();
            let passphrase = if passphrase_file.is_some()
                || (status.unseal_method == "passphrase" && status.sealed)
            {
                read_secret_line(passphrase_file.as_ref())?
            } else {
                Zeroizing::new(Vec::new())
            };
            let s = c
                .unseal(pb::UnsealRequest {
                    passphrase: passphrase.to_vec(),
                })
                .await
                .map_err(err)?
                .into_inner();
            emit(j, &json::Status::new(&s), || outln!("unsealed"))?;
        }
        Command::Kek(KekCommand::Rotate) => {
            let r = c
                .rotate_kek(pb::RotateKekRequest {})
                .await
                .map_err(err)?
                .into_inner();
            let shape = json::KekRotated {
                new_kek_id: r.new_kek_id,
                old_kek_id: r.old_kek_id,
                records_resealed: r.records_resealed,
            };
            emit(j, &shape, || {
                outln!(
                    "kek {} -> {}: {} records re-sealed",
                    r.old_kek_id,
                    r.new_kek_id,
                    r.records_resealed
                )
            })?;
        }
        Command::Audit(AuditCommand::Tail { n }) => {
            let r = c
                .audit_tail(pb::AuditTailRequest { count: n })
                .await
                .map_err(err)?
                .into_inner();
            emit(j, &json::AuditTail::new(&r), || {
                for a in &r.records {
                    outln!(
                        "{:>6} {:<24} {:<16} {:<8} {} {} [{}]",
                        a.seq,
                        out::time(a.time_unix_ms),
                        a.action,
                        a.outcome,
                        a.key_id,
                        a.detail,
                        a.actor
                    );
                }
            })?;
        }
        Command::Pki(_)
        | Command::Grant(_)
        | Command::Backup(backup::BackupCommand::Keygen { .. })
        | Command::Backup(backup::BackupCommand::Restore { .. }) => {
            unreachable!("handled above")
        }
        Command::Backup(backup::BackupCommand::Export {
            recipients,
            labels: l,
            output,
        }) => {
            backup::export(&mut c, err, recipients, l, &output, j).await?;
        }
        Command::Transfer { file } => {
            let grant = remote::read_grant(&file)?;
            transfer(&mut c, &socket, grant, j).await?;
        }
        Command::Audit(AuditCommand::Verify) => {
            let r = c
                .audit_verify(pb::AuditVerifyRequest {})
                .await
                .map_err(err)?
                .into_inner();
            let shape = json::AuditVerified {
                bad_seq: r.bad_seq,
                checkpoints: r.checkpoints,
                error: &r.error,
                ok: r.ok,
                records: r.records,
            };
            emit(j, &shape, || {
                if r.ok {
                    outln!(
                        "audit log ok: {} records, {} signed checkpoints",
                        r.records,
                        r.checkpoints
                    );
                }
            })?;
            if !r.ok {
                bail!("audit verification failed: {}", r.error);
            }
        }
    }
    Ok(())
}

async fn transfer(
    c: &mut LockboxClient<Channel>,
    socket: &std::path::Path,
    grant: pb::SignedGrant,
    j: bool,
) -> Result<()> {
    use std::io::IsTerminal;
    let mut stream = c
        .transfer(pb::TransferRequest { grant: Some(grant) })
        .await
        .map_err(|s| rpc_error(socket, s))?
        .into_inner();
    let bar = !j && std::io::stderr().is_terminal();
    let mut receipt = None;
    while let Some(p) = stream.message().await.map_err(|s| {
        if bar {
            eprintln!();
        }
        rpc_error(socket, s)
    })? {
        if let Some(r) = p.receipt {
            receipt = Some(r);
            break;
        }
        if bar && p.total > 0 {
            let width = 40usize;
            let done = (p.sent as usize * width) / p.total as usize;
            eprint!(
                "\r[{}{}] {}/{} keys",
                "#".repeat(done),
                " ".repeat(width - done.min(width)),
                p.sent,
                p.total
            );
        }
    }
    if bar {
        eprintln!();
    }
    let r = receipt.ok_or_else(|| anyhow!("the lockbox ended the transfer without a receipt"))?;
    let op = match pb::GrantOp::try_from(r.op) {
        Ok(pb::GrantOp::Copy) => "copy",
        Ok(pb::GrantOp::Move) => "move",
        Ok(pb::GrantOp::Replicate) => "replicate",
        _ => "unknown",
    };
    let shape = json::Receipt {
        dest_node: &r.dest_node,
        fresh: r.fresh,
        grant_id: &r.grant_id,
        key_ids: &r.key_ids,
        op,
        source_node: &r.source_node,
        stored_unix_ms: r.stored_unix_ms,
    };
    emit(j, &shape, || {
        let when = match r.stored_unix_ms {
            0 => String::new(),
            ms => format!(" on {}", out::time(ms)),
        };
        outln!(
            "grant {} ({op}): {} keys stored at {}{when}{}",
            r.grant_id,
            r.key_ids.len(),
            r.dest_node,
            if r.fresh {
                ""
            } else {
                " (already completed earlier; same receipt)"
            }
        );
        for k in &r.key_ids {
            outln!("  {k}");
        }
    })
}

async fn verify_grant(socket: &std::path::Path, file: &std::path::Path, j: bool) -> Result<()> {
    let grant = remote::read_grant(file)?;
    let mut c = connect(socket).await?;
    let r = c
        .verify_grant(pb::VerifyGrantRequest { grant: Some(grant) })
        .await
        .map_err(|s| rpc_error(socket, s))?
        .into_inner();
    let shape = json::GrantVerified::new(&r);
    emit(j, &shape, || {
        if r.ok {
            outln!(
                "grant {} ok: {} -> {}, {} keys, signed by {}",
                r.grant_id,
                r.source_node,
                r.dest_node,
                r.key_ids.len(),
                r.valid_signers.join(", ")
            );
        }
    })?;
    if !r.ok {
        bail!("{}", r.error);
    }
    Ok(())
}

fn main() -> ExitCode {
    lockbox_tls::install_default_provider();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if out::is_closed_pipe(&e) => ExitCode::from(out::CLOSED_PIPE_STATUS as u8),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
