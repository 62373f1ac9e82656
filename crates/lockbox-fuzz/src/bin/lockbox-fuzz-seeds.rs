//! Writes every target's seeds into `DIR/<target>/seed-N` (the corpus `deploy/fuzz.sh` starts
//! from).

use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1) else {
        eprintln!("usage: lockbox-fuzz-seeds DIR");
        return ExitCode::from(2);
    };
    let dir = std::path::PathBuf::from(dir);
    for (name, _) in lockbox_fuzz::TARGETS {
        let target = dir.join(name);
        if let Err(e) = std::fs::create_dir_all(&target) {
            eprintln!("error: {}: {e}", target.display());
            return ExitCode::FAILURE;
        }
        for (i, seed) in lockbox_fuzz::seeds::seeds(name).iter().enumerate() {
            if let Err(e) = std::fs::write(target.join(format!("seed-{i}")), seed) {
                eprintln!("error: {}: {e}", target.display());
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
