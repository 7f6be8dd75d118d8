//! [`MemFolder`]: a folder in memory, for tests. Every operation lands at once (what
//! survives a power cut is [`super::fault::FaultyFolder`]'s business); inode numbers are
//! reused lowest-free-first, as ext4 does, and every new file gets a new birth time, so
//! identity checks are exercised for real. Clones share the folder, so a test keeps one to
//! look at the files and to play the legacy side (move, empty, write) while a connector
//! delivers through another.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{FileId, Folder, FolderError, Stat};

#[derive(Debug, Default)]
struct Files {
    names: BTreeMap<String, u64>,
    inodes: BTreeMap<u64, Inode>,
    births: i64,
}

#[derive(Debug)]
struct Inode {
    data: Vec<u8>,
    born: i64,
}

/// An in-memory folder; clones share it.
#[derive(Debug, Clone, Default)]
pub struct MemFolder {
    files: Arc<Mutex<Files>>,
}

fn missing(name: &str) -> FolderError {
    FolderError::transient(
        format!("memory folder: {name}"),
        std::io::Error::from(std::io::ErrorKind::NotFound),
    )
}

impl Files {
    fn new_inode(&mut self, data: Vec<u8>) -> u64 {
        let ino = (1..)
            .find(|i| !self.inodes.contains_key(i))
            .unwrap_or(u64::MAX);
        self.births += 1;
        self.inodes.insert(
            ino,
            Inode {
                data,
                born: self.births,
            },
        );
        ino
    }

    fn inode(&mut self, name: &str) -> Result<&mut Inode, FolderError> {
        let ino = *self.names.get(name).ok_or_else(|| missing(name))?;
        self.inodes.get_mut(&ino).ok_or_else(|| missing(name))
    }

    /// Drops inodes no name points at any more.
    fn collect(&mut self) {
        let live: std::collections::BTreeSet<u64> = self.names.values().copied().collect();
        self.inodes.retain(|ino, _| live.contains(ino));
    }
}

impl MemFolder {
    pub fn new() -> MemFolder {
        MemFolder::default()
    }

    fn lock(&self) -> MutexGuard<'_, Files> {
        // Every operation below leaves the maps consistent before it could panic.
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The content of `name`, if it exists.
    pub fn get(&self, name: &str) -> Option<Vec<u8>> {
        let f = self.lock();
        f.names
            .get(name)
            .and_then(|i| f.inodes.get(i))
            .map(|i| i.data.clone())
    }

    /// The names in the folder, sorted.
    pub fn names(&self) -> Vec<String> {
        self.lock().names.keys().cloned().collect()
    }

    /// Replaces the content of `name` in place (same file), creating it if missing: a
    /// legacy job rewriting or emptying the file.
    pub fn put(&self, name: &str, data: &[u8]) {
        let mut f = self.lock();
        match f.names.get(name).copied() {
            Some(ino) => {
                if let Some(i) = f.inodes.get_mut(&ino) {
                    i.data = data.to_vec();
                }
            }
            None => {
                let ino = f.new_inode(data.to_vec());
                f.names.insert(name.to_string(), ino);
            }
        }
    }

    /// Moves `from` to `to` (replacing `to`): a legacy job picking the file up.
    pub fn rename(&self, from: &str, to: &str) {
        let mut f = self.lock();
        if let Some(ino) = f.names.remove(from) {
            f.names.insert(to.to_string(), ino);
        }
        f.collect();
    }

    /// Deletes `name`.
    pub fn delete(&self, name: &str) {
        let mut f = self.lock();
        f.names.remove(name);
        f.collect();
    }
}

#[async_trait::async_trait]
impl Folder for MemFolder {
    fn location(&self) -> String {
        "memory folder".into()
    }

    fn name_in(&self, path: &str) -> Option<String> {
        Some(path.to_string())
    }

    async fn stat(&mut self, name: &str) -> Result<Option<Stat>, FolderError> {
        let f = self.lock();
        Ok(f.names.get(name).and_then(|&ino| {
            f.inodes.get(&ino).map(|i| Stat {
                len: i.data.len() as u64,
                id: Some(FileId {
                    ino,
                    born: Some((i.born, 0)),
                }),
            })
        }))
    }

    async fn read(&mut self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>, FolderError> {
        let mut f = self.lock();
        let data = &f.inode(name)?.data;
        let start = (offset as usize).min(data.len());
        let end = start.saturating_add(len as usize).min(data.len());
        Ok(data[start..end].to_vec())
    }

    async fn truncate(&mut self, name: &str, len: u64) -> Result<(), FolderError> {
        self.lock().inode(name)?.data.resize(len as usize, 0);
        Ok(())
    }

    async fn write_at(&mut self, name: &str, offset: u64, bytes: &[u8]) -> Result<(), FolderError> {
        let mut f = self.lock();
        let data = &mut f.inode(name)?.data;
        let end = offset as usize + bytes.len();
        if data.len() < end {
            data.resize(end, 0);
        }
        data[offset as usize..end].copy_from_slice(bytes);
        Ok(())
    }

    async fn create_new(&mut self, name: &str) -> Result<bool, FolderError> {
        let mut f = self.lock();
        if f.names.contains_key(name) {
            return Ok(false);
        }
        let ino = f.new_inode(Vec::new());
        f.names.insert(name.to_string(), ino);
        Ok(true)
    }

    async fn write_new(&mut self, name: &str, bytes: &[u8]) -> Result<(), FolderError> {
        self.put(name, bytes);
        Ok(())
    }

    async fn rename_new(&mut self, from: &str, to: &str) -> Result<bool, FolderError> {
        let mut f = self.lock();
        if f.names.contains_key(to) {
            return Ok(false);
        }
        let ino = f.names.remove(from).ok_or_else(|| missing(from))?;
        f.names.insert(to.to_string(), ino);
        Ok(true)
    }

    async fn remove(&mut self, name: &str) -> Result<(), FolderError> {
        self.delete(name);
        Ok(())
    }

    async fn sync_names(&mut self) -> Result<(), FolderError> {
        Ok(())
    }
}
