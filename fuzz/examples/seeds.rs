//! Writes the seed corpora, `testdata/fuzz-corpus/<target>/seed-*`, from the fixtures in src/lib.rs.
//!
//! The seeds are committed; run this (`scripts/fuzz seeds`) only after changing the fixtures or
//! a format, so that the files and what the targets rebuild at start-up stay the same bytes.
//! Stale `seed-*` files are removed first; corpus growth from fuzzing is left alone.

use std::fs;
use std::path::Path;

fn main() -> std::io::Result<()> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/fuzz-corpus");
    let seeds = zester_fuzz::seeds();
    for seed in &seeds {
        let dir = corpus.join(seed.target);
        if dir.is_dir() {
            for entry in fs::read_dir(&dir)? {
                let path = entry?.path();
                let stale = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("seed-"));
                if stale {
                    fs::remove_file(path)?;
                }
            }
        }
    }
    for seed in &seeds {
        let dir = corpus.join(seed.target);
        fs::create_dir_all(&dir)?;
        fs::write(dir.join(seed.name), &seed.bytes)?;
        println!("{}/{} ({} bytes)", seed.target, seed.name, seed.bytes.len());
    }
    Ok(())
}
