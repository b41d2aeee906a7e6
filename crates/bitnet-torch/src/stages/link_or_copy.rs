//! Hard-link a file a stage passes through unchanged from its upstream,
//! copying only where a link cannot be made (another filesystem).
//!
//! `attach_thoughts` hands the converted model on byte for byte; a copy cost
//! one more fp32 latent model on disk per run (12.8 MB of the demo's 14 MB
//! `thoughts/` folder). A hard link is safe here because our checkpoint
//! writers replace files by rename (`save_safetensors` writes a temp file
//! and renames it), so rewriting the upstream gives it a new inode and never
//! changes the downstream's linked file. Files written in place (such as
//! `config.json` by `std::fs::write`) must not be linked: copy those.
use std::io;
use std::path::Path;

/// Makes `dst` the same file as `src` (replacing an existing `dst`); falls
/// back to a copy when the link fails. Returns whether it linked.
pub fn link_or_copy(src: &Path, dst: &Path) -> io::Result<bool> {
    match std::fs::remove_file(dst) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    if std::fs::hard_link(src, dst).is_ok() {
        return Ok(true);
    }
    std::fs::copy(src, dst)?;
    Ok(false)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn links_on_one_filesystem_and_replaces_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&src, b"weights").unwrap();
        std::fs::write(&dst, b"stale").unwrap();
        assert!(link_or_copy(&src, &dst).unwrap());
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        assert_eq!(ino(&src), ino(&dst));
        assert_eq!(std::fs::read(&dst).unwrap(), b"weights");
        // The upstream rewritten by rename leaves the linked file as it was.
        let tmp = dir.path().join("a.tmp");
        std::fs::write(&tmp, b"retrained").unwrap();
        std::fs::rename(&tmp, &src).unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), b"weights");
    }

    #[test]
    fn a_missing_source_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = link_or_copy(&dir.path().join("none"), &dir.path().join("b")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
