// Shared by the targets: the input written to a file of this process (the readers take paths).
use std::path::{Path, PathBuf};

pub fn scratch() -> PathBuf {
    let d = std::env::temp_dir().join(format!("whitebox-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}
