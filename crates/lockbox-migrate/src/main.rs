//! `lockbox-migrate --data-dir DIR`: moves a stopped lockbox's data dir from the sled store of
//! earlier releases to the current store (see the library doc). Exit 0 when migrated or
//! already current, 1 with `error: …` otherwise (the old store is then unchanged).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Moves a lockbox data dir from the sled store of earlier releases to the current store.
#[derive(Parser)]
#[command(name = "lockbox-migrate", version)]
struct Args {
    /// The lockbox's data dir (`data_dir` in lockboxd's config). Stop lockboxd first.
    #[arg(long)]
    data_dir: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match lockbox_migrate::migrate(&args.data_dir) {
        Ok(r) if r.already_current => {
            println!(
                "{} already holds the current store: nothing to do",
                args.data_dir.display()
            );
            ExitCode::SUCCESS
        }
        Ok(r) => {
            let total: usize = r.records.iter().map(|(_, n)| n).sum();
            let kinds: Vec<String> = r
                .records
                .iter()
                .map(|(ns, n)| format!("{ns:?} {n}"))
                .collect();
            println!(
                "migrated {total} records ({}), each read back and compared",
                kinds.join(", ")
            );
            if let Some(kept) = r.kept {
                println!(
                    "the old store is kept in {}: delete it once lockboxd runs well",
                    kept.display()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
