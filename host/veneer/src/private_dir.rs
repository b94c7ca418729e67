//! A private scratch directory: a random name under the temp directory, created with mode 0700
//! (failing if the path exists, so nothing another user planted is used), removed on drop. The
//! local tools keep compile caches in them, and the runtime loads precompiled native code from
//! its cache, so that directory must be one nobody else can write to.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// A directory only this user can use, removed when dropped.
#[derive(Debug)]
pub struct PrivateDir(PathBuf);

impl PrivateDir {
    /// Creates `veneer-{purpose}-{pid}-{random}` under the temp directory.
    pub fn create(purpose: &str) -> anyhow::Result<PrivateDir> {
        use std::os::unix::fs::DirBuilderExt as _;
        let path = std::env::temp_dir().join(format!(
            "veneer-{purpose}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        Ok(PrivateDir(path))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
