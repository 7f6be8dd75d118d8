//! The folder a source reads: local ([`LocalDir`]) or on an SFTP server ([`SftpDir`], the
//! SFTP target's russh code and host-key pinning). Blocking calls: a scan runs on a
//! blocking thread, and the SFTP folder drives its async session with the runtime's handle.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::local::SourceError;
use crate::target::drop::{Folder, FolderError};
use crate::target::sftp::SftpFolder;

/// A regular file of the folder as listed or stat'ed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// Inode number and birth time (local files); SFTP has neither.
    pub ino: Option<u64>,
    pub born: Option<(i64, u32)>,
    pub size: u64,
    /// Modification time in ns (SFTP: whole seconds).
    pub mtime_ns: i64,
}

/// What a look at the folder found.
#[derive(Debug, Default)]
pub struct Listing {
    /// The regular files (name, stat).
    pub files: Vec<(String, Stat)>,
    /// Entries that may look like files but are never taken, with why (name as shown).
    pub skipped: Vec<(String, &'static str)>,
}

/// Why a symbolic link is skipped: followed, a link to a file of the folder would take that
/// file twice (under two names, so two file keys) and `then:` would move or delete the
/// link, not the file; a link out of the folder would read a file the legacy side never put
/// there.
pub const SYMLINK: &str =
    "a symbolic link: not followed, never taken (put the file itself in the folder)";

/// Why a name that is not UTF-8 is skipped: events, keys and logs name the file in UTF-8.
pub const NOT_UTF8: &str = "the name is not UTF-8: never taken (rename the file)";

/// The operations a source needs from its folder.
pub trait SourceDir: Send {
    /// Where the folder is, for messages.
    fn location(&self) -> String;
    /// The regular files of the folder, and what was passed over.
    fn list(&mut self) -> Result<Listing, SourceError>;
    fn stat(&mut self, name: &str) -> Result<Option<Stat>, SourceError>;
    /// The whole file, with its stat before and after reading; `None` if it is gone.
    fn read(&mut self, name: &str) -> Result<Option<(Stat, Vec<u8>, Stat)>, SourceError>;
    fn remove(&mut self, name: &str) -> Result<(), SourceError>;
    /// Moves `name` into the folder `to` (as `name`, or `alt` if `name` is taken there).
    fn move_out(&mut self, name: &str, to: &Path, alt: &str) -> Result<(), SourceError>;
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SourceError {
    let what = what.into();
    move |source| SourceError::Io { what, source }
}

fn folder(e: FolderError) -> SourceError {
    SourceError::Io {
        what: e.what,
        source: e.source,
    }
}

/// A local folder.
pub struct LocalDir {
    pub dir: PathBuf,
}

fn stat_of(m: &std::fs::Metadata) -> Stat {
    let born = m
        .created()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| (d.as_secs() as i64, d.subsec_nanos()));
    Stat {
        ino: Some(m.ino()),
        born,
        size: m.len(),
        mtime_ns: m.mtime().saturating_mul(1_000_000_000) + m.mtime_nsec(),
    }
}

fn sync_dir(dir: &Path) -> Result<(), SourceError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io(format!("cannot fsync folder {}", dir.display())))
}

impl SourceDir for LocalDir {
    fn location(&self) -> String {
        self.dir.display().to_string()
    }

    fn list(&mut self) -> Result<Listing, SourceError> {
        let what = format!("cannot list {}", self.dir.display());
        let mut out = Listing::default();
        for entry in std::fs::read_dir(&self.dir).map_err(io(what.clone()))? {
            let entry = entry.map_err(io(what.clone()))?;
            let name = match entry.file_name().into_string() {
                Ok(name) => name,
                Err(raw) => {
                    out.skipped
                        .push((raw.to_string_lossy().into_owned(), NOT_UTF8));
                    continue;
                }
            };
            // The entry itself (a link is not followed); gone meanwhile: not listed.
            match std::fs::symlink_metadata(entry.path()) {
                Ok(m) if m.file_type().is_symlink() => out.skipped.push((name, SYMLINK)),
                Ok(m) if m.is_file() => out.files.push((name, stat_of(&m))),
                _ => {}
            }
        }
        Ok(out)
    }

    fn stat(&mut self, name: &str) -> Result<Option<Stat>, SourceError> {
        // Not followed: a file replaced by a link is no longer the file that was listed.
        match std::fs::symlink_metadata(self.dir.join(name)) {
            Ok(m) if m.is_file() => Ok(Some(stat_of(&m))),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(format!("cannot stat {}", self.dir.join(name).display()))(e)),
        }
    }

    fn read(&mut self, name: &str) -> Result<Option<(Stat, Vec<u8>, Stat)>, SourceError> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.dir.join(name);
        // O_NOFOLLOW: a file swapped for a link after the listing is not read through it.
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path);
        let mut f = match opened {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            // A link now: no longer the file that was listed (as if it went away).
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(None),
            Err(e) => return Err(io(format!("cannot open {}", path.display()))(e)),
        };
        let what = format!("cannot read {}", path.display());
        let before = stat_of(&f.metadata().map_err(io(what.clone()))?);
        let mut bytes = Vec::with_capacity(before.size as usize);
        f.read_to_end(&mut bytes).map_err(io(what.clone()))?;
        let after = stat_of(&f.metadata().map_err(io(what))?);
        Ok(Some((before, bytes, after)))
    }

    fn remove(&mut self, name: &str) -> Result<(), SourceError> {
        let p = self.dir.join(name);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(format!("cannot delete {}", p.display()))(e)),
        }
        sync_dir(&self.dir)
    }

    fn move_out(&mut self, name: &str, to: &Path, alt: &str) -> Result<(), SourceError> {
        std::fs::create_dir_all(to).map_err(io(format!("cannot create {}", to.display())))?;
        let from = self.dir.join(name);
        let mut dest = to.join(name);
        if dest.exists() {
            dest = to.join(alt);
        }
        match std::fs::rename(&from, &dest) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(io(format!(
                    "cannot move {} to {}",
                    from.display(),
                    dest.display()
                ))(e));
            }
        }
        sync_dir(to)?;
        sync_dir(&self.dir)
    }
}

/// A folder on an SFTP server, read with the SFTP target's session code (host key pinned
/// by `known_hosts`, key authentication, one session reused, reconnected when it drops).
pub struct SftpDir {
    pub folder: SftpFolder,
    pub runtime: tokio::runtime::Handle,
    /// Bytes asked for per READ.
    pub read_size: u64,
}

fn remote_stat(size: u64, mtime: Option<u32>) -> Stat {
    Stat {
        ino: None,
        born: None,
        size,
        mtime_ns: i64::from(mtime.unwrap_or(0)) * 1_000_000_000,
    }
}

impl SourceDir for SftpDir {
    fn location(&self) -> String {
        Folder::location(&self.folder)
    }

    fn list(&mut self) -> Result<Listing, SourceError> {
        let files = self
            .runtime
            .block_on(self.folder.list_files())
            .map_err(folder)?;
        let mut out = Listing::default();
        for f in files {
            // The SFTP client decodes a name that is not UTF-8 lossily: such a name cannot
            // be asked for again.
            if f.name.contains(char::REPLACEMENT_CHARACTER) {
                out.skipped.push((f.name, NOT_UTF8));
            } else if f.link {
                out.skipped.push((f.name, SYMLINK));
            } else {
                out.files.push((f.name, remote_stat(f.size, f.mtime)));
            }
        }
        Ok(out)
    }

    fn stat(&mut self, name: &str) -> Result<Option<Stat>, SourceError> {
        Ok(self
            .runtime
            .block_on(self.folder.stat_file(name))
            .map_err(folder)?
            .map(|f| remote_stat(f.size, f.mtime)))
    }

    fn read(&mut self, name: &str) -> Result<Option<(Stat, Vec<u8>, Stat)>, SourceError> {
        let Some(before) = self.stat(name)? else {
            return Ok(None);
        };
        let mut bytes = Vec::with_capacity(before.size as usize);
        loop {
            let piece = self
                .runtime
                .block_on(self.folder.read(name, bytes.len() as u64, self.read_size))
                .map_err(folder)?;
            if piece.is_empty() {
                break;
            }
            bytes.extend_from_slice(&piece);
        }
        let Some(after) = self.stat(name)? else {
            return Ok(None);
        };
        Ok(Some((before, bytes, after)))
    }

    fn remove(&mut self, name: &str) -> Result<(), SourceError> {
        self.runtime
            .block_on(self.folder.remove(name))
            .map_err(folder)
    }

    fn move_out(&mut self, name: &str, to: &Path, alt: &str) -> Result<(), SourceError> {
        let to = to.to_string_lossy().trim_end_matches('/').to_string();
        let dest = format!("{to}/{name}");
        let moved = self
            .runtime
            .block_on(self.folder.move_out(name, &dest))
            .map_err(folder)?;
        if !moved {
            let dest = format!("{to}/{alt}");
            let moved = self
                .runtime
                .block_on(self.folder.move_out(name, &dest))
                .map_err(folder)?;
            if !moved {
                return Err(SourceError::Io {
                    what: format!("cannot move {name} to {to}: {name} and {alt} exist there"),
                    source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
                });
            }
        }
        Ok(())
    }
}
