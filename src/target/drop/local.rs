//! [`Folder`] on the local file system: `statx` (inode and birth time as identity),
//! `pwrite` + `fdatasync`, `renameat2(RENAME_NOREPLACE)` (or `link` + `unlink` where the
//! file system has no such flag), and `fsync` of the folder for durable names.
//!
//! Every call is short blocking I/O; on a multi-threaded runtime it runs in
//! `block_in_place`, so the async workers keep running other tasks meanwhile.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, CWD, RenameFlags, StatxFlags};

use super::{FileId, Folder, FolderError, LegacyForm, Stat};

/// A local folder a file drop writes into (created, and its name synced, on first use).
#[derive(Debug, Clone)]
pub struct LocalFolder {
    dir: PathBuf,
}

impl LocalFolder {
    pub fn new(dir: PathBuf) -> LocalFolder {
        LocalFolder { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn err(what: &str, path: &Path, e: std::io::Error) -> FolderError {
        FolderError::transient(format!("cannot {what} {}", path.display()), e)
    }

    /// Creates the folder if it is missing, and syncs every parent that got a new entry,
    /// so the folder itself survives a power cut.
    fn ensure_dir(&self) -> Result<(), FolderError> {
        if self.dir.is_dir() {
            return Ok(());
        }
        let mut existing = self.dir.as_path();
        while let Some(parent) = existing.parent() {
            existing = parent;
            if existing.is_dir() {
                break;
            }
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| Self::err("create folder", &self.dir, e))?;
        let mut created: Vec<&Path> = self
            .dir
            .ancestors()
            .skip(1)
            .take_while(|p| *p != existing)
            .collect();
        created.push(existing);
        for dir in created {
            sync_dir(dir).map_err(|e| Self::err("fsync folder", dir, e))?;
        }
        Ok(())
    }
}

/// Runs blocking file system work without stalling a multi-threaded runtime's workers.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// fsyncs a folder, so a new, renamed or removed entry in it survives power loss.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn stat_path(path: &Path) -> std::io::Result<Option<Stat>> {
    let mask = StatxFlags::INO | StatxFlags::SIZE | StatxFlags::BTIME;
    match rustix::fs::statx(CWD, path, AtFlags::empty(), mask) {
        Ok(s) => {
            let born = (s.stx_mask & StatxFlags::BTIME.bits() != 0)
                .then_some((s.stx_btime.tv_sec, s.stx_btime.tv_nsec));
            Ok(Some(Stat {
                len: s.stx_size,
                id: Some(FileId {
                    ino: s.stx_ino,
                    born,
                }),
            }))
        }
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn read_range(path: &Path, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
    let file = File::open(path)?;
    let mut out = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
    let mut done = 0;
    while done < out.len() {
        match file.read_at(&mut out[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    out.truncate(done);
    Ok(out)
}

fn rename_no_replace(from: &Path, to: &Path) -> std::io::Result<bool> {
    match rustix::fs::renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::EXIST) => Ok(false),
        // A file system without RENAME_NOREPLACE (some network ones): link refuses an
        // existing name just as well; then the temp name goes.
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => link_then_unlink(from, to),
        Err(e) => Err(e.into()),
    }
}

/// Rename without replacing on file systems without `RENAME_NOREPLACE`.
fn link_then_unlink(from: &Path, to: &Path) -> std::io::Result<bool> {
    match std::fs::hard_link(from, to) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(e),
    }
    std::fs::remove_file(from)?;
    Ok(true)
}

#[async_trait::async_trait]
impl Folder for LocalFolder {
    fn location(&self) -> String {
        self.dir.display().to_string()
    }

    fn name_in(&self, path: &str) -> Option<String> {
        let path = Path::new(path);
        if path.parent()? != self.dir {
            return None;
        }
        path.file_name()?.to_str().map(str::to_string)
    }

    fn legacy_form(&self) -> LegacyForm {
        LegacyForm::FileMark
    }

    async fn stat(&mut self, name: &str) -> Result<Option<Stat>, FolderError> {
        let path = self.path(name);
        blocking(|| stat_path(&path)).map_err(|e| Self::err("stat", &path, e))
    }

    async fn read(&mut self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>, FolderError> {
        let path = self.path(name);
        blocking(|| read_range(&path, offset, len)).map_err(|e| Self::err("read", &path, e))
    }

    async fn truncate(&mut self, name: &str, len: u64) -> Result<(), FolderError> {
        let path = self.path(name);
        blocking(|| OpenOptions::new().write(true).open(&path)?.set_len(len))
            .map_err(|e| Self::err("truncate", &path, e))
    }

    async fn write_at(&mut self, name: &str, offset: u64, bytes: &[u8]) -> Result<(), FolderError> {
        let path = self.path(name);
        blocking(|| {
            let file = OpenOptions::new().write(true).open(&path)?;
            file.write_all_at(bytes, offset)?;
            file.sync_data()
        })
        .map_err(|e| Self::err("write", &path, e))
    }

    async fn create_new(&mut self, name: &str) -> Result<bool, FolderError> {
        let path = self.path(name);
        blocking(|| {
            self.ensure_dir()?;
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(Self::err("create", &path, e)),
            }
        })
    }

    async fn write_new(&mut self, name: &str, bytes: &[u8]) -> Result<(), FolderError> {
        let path = self.path(name);
        blocking(|| {
            self.ensure_dir()?;
            let write = || -> std::io::Result<()> {
                let file = File::create(&path)?;
                file.write_all_at(bytes, 0)?;
                file.sync_data()
            };
            write().map_err(|e| Self::err("write", &path, e))
        })
    }

    async fn rename_new(&mut self, from: &str, to: &str) -> Result<bool, FolderError> {
        let (from, to) = (self.path(from), self.path(to));
        blocking(|| rename_no_replace(&from, &to)).map_err(|e| {
            FolderError::transient(
                format!("cannot rename {} to {}", from.display(), to.display()),
                e,
            )
        })
    }

    async fn remove(&mut self, name: &str) -> Result<(), FolderError> {
        let path = self.path(name);
        blocking(|| match std::fs::remove_file(&path) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        })
        .map_err(|e| Self::err("remove", &path, e))
    }

    async fn sync_names(&mut self) -> Result<(), FolderError> {
        blocking(|| sync_dir(&self.dir)).map_err(|e| Self::err("fsync folder", &self.dir, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn identity_is_inode_and_birth_time_and_rename_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = LocalFolder::new(dir.path().join("out/sub"));
        assert!(f.stat("a").await.unwrap().is_none());
        assert!(f.create_new("a").await.unwrap(), "creates folder and file");
        assert!(!f.create_new("a").await.unwrap());
        let a = f.stat("a").await.unwrap().unwrap();
        assert_eq!(a.len, 0);
        assert!(
            a.id.unwrap().born.is_some(),
            "this file system reports birth times"
        );
        f.write_at("a", 0, b"hello").await.unwrap();
        f.write_at("a", 3, b"LO!").await.unwrap();
        assert_eq!(f.read("a", 0, 100).await.unwrap(), b"helLO!");
        assert_eq!(f.read("a", 4, 1).await.unwrap(), b"O");
        f.truncate("a", 2).await.unwrap();
        assert_eq!(f.stat("a").await.unwrap().unwrap().len, 2);
        assert_eq!(f.stat("a").await.unwrap().unwrap().id, a.id);

        f.write_new("t", b"new").await.unwrap();
        assert!(!f.rename_new("t", "a").await.unwrap(), "a exists");
        assert_eq!(f.read("a", 0, 9).await.unwrap(), b"he");
        assert!(f.rename_new("t", "b").await.unwrap());
        assert!(f.stat("t").await.unwrap().is_none());
        assert_eq!(f.read("b", 0, 9).await.unwrap(), b"new");
        f.remove("b").await.unwrap();
        f.remove("b").await.unwrap();
        f.sync_names().await.unwrap();
        assert_eq!(
            f.name_in(&f.path("x").display().to_string()).as_deref(),
            Some("x")
        );
        assert_eq!(f.name_in("/elsewhere/x"), None);
    }

    #[test]
    fn the_link_fallback_refuses_an_existing_name_too() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        std::fs::write(p("a"), "A").unwrap();
        std::fs::write(p("b"), "B").unwrap();
        assert!(!link_then_unlink(&p("a"), &p("b")).unwrap());
        assert_eq!(std::fs::read(p("b")).unwrap(), b"B");
        assert!(link_then_unlink(&p("a"), &p("c")).unwrap());
        assert!(!p("a").exists());
        assert_eq!(std::fs::read(p("c")).unwrap(), b"A");
    }
}
