//! Content hashes (blake3) of files, folders and stage outputs, for
//! fingerprints and the artifacts table.
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::store::Artifact;

/// blake3 of a file's bytes, streamed.
pub fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((hasher.finalize().to_hex().to_string(), bytes))
}

/// Every regular file under `dir` (relative names, sorted), skipping
/// dot-files, which hold runner bookkeeping.
pub fn list_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let ty = entry.file_type()?;
            let path = entry.path();
            if ty.is_dir() {
                stack.push(path);
            } else if ty.is_file() {
                out.push(path.strip_prefix(dir).unwrap_or(&path).to_path_buf());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Hash of a file, or of a folder as the sorted list of its files' names
/// and hashes.
pub fn hash_path(path: &Path) -> std::io::Result<String> {
    if path.is_dir() {
        let mut hasher = blake3::Hasher::new();
        for rel in list_files(path)? {
            let (h, _) = hash_file(&path.join(&rel))?;
            hasher.update(rel.to_string_lossy().as_bytes());
            hasher.update(b"\0");
            hasher.update(h.as_bytes());
            hasher.update(b"\n");
        }
        Ok(hasher.finalize().to_hex().to_string())
    } else {
        hash_file(path).map(|(h, _)| h)
    }
}

/// Artifacts of a finished stage: every file in its output folder.
pub fn collect_artifacts(dir: &Path) -> std::io::Result<Vec<Artifact>> {
    let mut out = Vec::new();
    for rel in list_files(dir)? {
        let abs = dir.join(&rel);
        let (hash, bytes) = hash_file(&abs)?;
        out.push(Artifact {
            name: rel.to_string_lossy().into_owned(),
            path: abs.to_string_lossy().into_owned(),
            hash,
            bytes: bytes as i64,
        });
    }
    Ok(out)
}

/// Whether an artifact takes part in downstream fingerprints. Logs do not:
/// a timestamp in a log must not invalidate everything downstream.
pub fn is_content_artifact(name: &str) -> bool {
    !name.ends_with(".log")
}

/// One hash standing for all content artifacts of a stage.
pub fn combined_hash(artifacts: &[Artifact]) -> String {
    let mut items: Vec<(&str, &str)> = artifacts
        .iter()
        .filter(|a| is_content_artifact(&a.name))
        .map(|a| (a.name.as_str(), a.hash.as_str()))
        .collect();
    items.sort();
    let mut hasher = blake3::Hasher::new();
    for (name, hash) in items {
        hasher.update(name.as_bytes());
        hasher.update(b"\0");
        hasher.update(hash.as_bytes());
        hasher.update(b"\n");
    }
    hasher.finalize().to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_hash_changes_with_content_and_ignores_logs_downstream() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), "1").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/b.bin"), "2").unwrap();
        std::fs::write(dir.path().join("stdout.log"), "t=1").unwrap();
        std::fs::write(dir.path().join(".invocation.json"), "{}").unwrap();
        let h1 = hash_path(dir.path()).unwrap();
        let arts = collect_artifacts(dir.path()).unwrap();
        let names: Vec<&str> = arts.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, vec!["a.txt", "stdout.log", "sub/b.bin"]);
        let c1 = combined_hash(&arts);
        std::fs::write(dir.path().join("stdout.log"), "t=2").unwrap();
        assert_eq!(c1, combined_hash(&collect_artifacts(dir.path()).unwrap()));
        std::fs::write(dir.path().join("a.txt"), "changed").unwrap();
        assert_ne!(h1, hash_path(dir.path()).unwrap());
        assert_ne!(c1, combined_hash(&collect_artifacts(dir.path()).unwrap()));
    }
}
