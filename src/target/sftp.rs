//! The `sftp` drop: the drop protocol of [`super::drop`] over [`SftpFolder`], a remote
//! folder on an SFTP server (russh + russh-sftp). Append and batch behave exactly as the
//! local file drop does (replay naming, CSV column row, "already there"); this file is only
//! the adapter: a session, host key pinning, and each folder operation as SFTP requests.
//!
//! One SSH session is kept alive (SSH keep-alives) and reused across deliveries; an
//! operation that finds a kept session dead is tried once more on a fresh one, so a dropped
//! connection costs no retry delay, and any session failure drops it. The server's host
//! key must be pinned in `known_hosts`: an unknown or changed key is refused (a permanent
//! failure whose message names the key that was offered) before anything is sent.
//!
//! Operations: `stat` (size; SFTP has no inode, so a remote file's identity is its name),
//! `read`, `truncate` (SETSTAT size, made durable by the next write's fsync), `write_at`
//! (pipelined WRITEs at the offset, `fsync@openssh.com`), `create_new` (OPEN
//! CREATE|EXCLUDE), `write_new` (OPEN CREATE|TRUNCATE, WRITEs, fsync), `rename_new` (plain
//! SFTPv3 RENAME, which refuses an existing target; OpenSSH does it with link + unlink),
//! `remove`, and `sync_names` (the folder opened read-only and `fsync@openssh.com` on that
//! handle, so new names survive a power cut of the server). A server without the fsync
//! extension gets no syncs at all: its files and names are as durable as it makes them.
//!
//! Architecture invariant: nothing is written before the host key is verified.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use russh::Preferred;
use russh::client;
use russh::keys::Algorithm;
use russh::keys::known_hosts::known_host_keys_path;
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh_sftp::client::RawSftpSession;
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::protocol::{FileAttributes, OpenFlags, StatusCode};

use super::drop::{DropSpec, DropTarget, Folder, FolderError, LegacyForm, Stat};
use crate::config::connector::SftpDeliver;
use crate::config::parse_duration;

/// Default for `timeout:` (connect, authenticate, and each SFTP request).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes per SFTP WRITE request: below OpenSSH's 256 KiB packet limit and the 32 KiB
/// channel packet, so no request is split or refused.
const CHUNK: usize = 32 * 1024;
/// SFTP WRITE requests in flight at once during an upload.
const WINDOW: usize = 16;
/// How often an idle session sends an SSH keep-alive; three unanswered ones close it.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// An SFTP drop (`deliver.kind: sftp`).
pub type SftpTarget = DropTarget<SftpFolder>;

impl DropTarget<SftpFolder> {
    /// Validates `spec` (key readable, known_hosts pins this host, names well formed);
    /// `base_dir` resolves relative `key` / `known_hosts` paths. Does not connect.
    pub fn new(
        spec: &SftpDeliver,
        base_dir: &Path,
        connector: &str,
        _tz: chrono_tz::Tz,
    ) -> Result<SftpTarget, String> {
        let mut errs = Vec::new();
        let folder = SftpFolder::open(spec, base_dir)
            .map_err(|e| errs.extend(e))
            .ok();
        let drop = DropSpec::parse(&spec.file, spec.mode.as_deref())
            .map_err(|e| errs.extend(e.into_iter().map(|m| format!("sftp: {m}"))))
            .ok();
        match (folder, drop) {
            (Some(folder), Some(drop)) if errs.is_empty() => {
                Ok(DropTarget::over(folder, drop, connector, None))
            }
            _ => Err(errs.join("; ")),
        }
    }
}

/// A folder on an SFTP server.
pub struct SftpFolder {
    host: String,
    port: u16,
    user: String,
    key: Arc<PrivateKey>,
    known_hosts: PathBuf,
    dir: String,
    timeout: Duration,
    conn: Option<Conn>,
}

impl std::fmt::Debug for SftpFolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SftpFolder")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("dir", &self.dir)
            .field("connected", &self.conn.is_some())
            .finish_non_exhaustive()
    }
}

/// A live, authenticated session with its SFTP channel.
struct Conn {
    ssh: client::Handle<HostKeyCheck>,
    sftp: Arc<RawSftpSession>,
    fsync: bool,
}

/// `dir/name`, or `name` for the login folder.
fn remote_path(dir: &str, name: &str) -> String {
    match dir {
        "." => name.to_string(),
        "/" => format!("/{name}"),
        _ => format!("{dir}/{name}"),
    }
}

/// The name of `path` if it is directly in `dir`.
fn name_in_dir(dir: &str, path: &str) -> Option<String> {
    let name = match dir {
        "." => path,
        "/" => path.strip_prefix('/')?,
        _ => path.strip_prefix(dir)?.strip_prefix('/')?,
    };
    (!name.is_empty() && !name.contains('/')).then(|| name.to_string())
}

/// Runs `$op` (an expression using `$c: &Conn`, returning `Result<_, SftpError>`) on a live
/// session: a kept session found dead is replaced once; a failing session is dropped.
macro_rules! on_session {
    ($self:ident, $what:expr, |$c:ident| $op:expr) => {{
        let (mut conn, reused) = match $self.conn.take() {
            Some(c) if !c.ssh.is_closed() => (c, true),
            _ => ($self.connect().await?, false),
        };
        let mut result = {
            let $c = &conn;
            $op.await
        };
        if reused && result.as_ref().is_err_and(|e| !answered(e)) {
            tracing::debug!(folder = %$self.location(), "sftp session lost; reconnecting");
            conn = $self.connect().await?;
            let $c = &conn;
            result = $op.await;
        }
        // A session that failed (rather than the server refusing a request) is dropped.
        if result.as_ref().is_ok() || result.as_ref().is_err_and(answered) {
            $self.conn = Some(conn);
        }
        result.map_err(|e| sftp_error(&$self.where_(), &$what, e))
    }};
}

impl SftpFolder {
    /// The folder `spec` names (`dir` on `host`), validated (key readable, known_hosts
    /// pins the host; every problem, not just the first). Does not connect.
    pub fn open(spec: &SftpDeliver, base_dir: &Path) -> Result<SftpFolder, Vec<String>> {
        let mut errs = Vec::new();
        if spec.host.trim().is_empty() {
            errs.push("sftp: host is empty".to_string());
        }
        if spec.user.trim().is_empty() {
            errs.push("sftp: user is empty".to_string());
        }
        let port = spec.port.unwrap_or(22);
        if port == 0 {
            errs.push("sftp: port must be 1-65535".to_string());
        }
        let key_path = base_dir.join(&spec.key);
        let key = match russh::keys::load_secret_key(&key_path, None) {
            Ok(k) => Some(Arc::new(k)),
            Err(e) => {
                errs.push(format!("sftp: cannot load private key {}: {e} (an unencrypted OpenSSH or PEM key is needed)", key_path.display()));
                None
            }
        };
        let known_hosts = base_dir.join(&spec.known_hosts);
        if !known_hosts.is_file() {
            errs.push(format!(
                "sftp: known_hosts file {} does not exist",
                known_hosts.display()
            ));
        } else {
            match known_host_keys_path(&spec.host, port, &known_hosts) {
                Ok(keys) if keys.is_empty() => errs.push(format!(
                    "sftp: {} has no key for {}; pin the server with `ssh-keyscan -p {port} {} >> {}` and check the fingerprint",
                    known_hosts.display(),
                    host_port(&spec.host, port),
                    spec.host,
                    known_hosts.display()
                )),
                Ok(_) => {}
                Err(e) => errs.push(format!("sftp: cannot read known_hosts {}: {e}", known_hosts.display())),
            }
        }
        if spec.dir.is_empty() {
            errs.push("sftp: dir is empty (use \".\" for the login folder)".to_string());
        }
        let timeout = match spec.timeout.as_deref().map(parse_duration) {
            None => DEFAULT_TIMEOUT,
            Some(Ok(d)) if d >= Duration::from_secs(1) => d,
            Some(Ok(_)) => {
                errs.push("sftp: timeout must be at least 1s".to_string());
                DEFAULT_TIMEOUT
            }
            Some(Err(e)) => {
                errs.push(format!("sftp: timeout: {e}"));
                DEFAULT_TIMEOUT
            }
        };
        match key {
            Some(key) if errs.is_empty() => Ok(SftpFolder {
                host: spec.host.clone(),
                port,
                user: spec.user.clone(),
                key,
                known_hosts,
                dir: match spec.dir.trim_end_matches('/') {
                    "" => "/".to_string(),
                    d => d.to_string(),
                },
                timeout,
                conn: None,
            }),
            _ => Err(errs),
        }
    }

    fn where_(&self) -> String {
        host_port(&self.host, self.port)
    }

    fn path(&self, name: &str) -> String {
        remote_path(&self.dir, name)
    }

    /// A create that failed with "no such file": its folder is missing on the server.
    fn folder_missing(&self, e: FolderError, path: &str) -> FolderError {
        let missing = e
            .source
            .get_ref()
            .and_then(|s| s.downcast_ref::<SftpError>())
            .is_some_and(|s| is_status(s, StatusCode::NoSuchFile));
        if !missing {
            return e;
        }
        FolderError {
            what: format!(
                "sftp {}: cannot create {path}: the folder {} does not exist on the server",
                self.where_(),
                self.dir
            ),
            permanent: true,
            source: e.source,
        }
    }

    /// The client's algorithm preferences, asking for the kinds of host key `known_hosts`
    /// pins for this server first: a server with several host keys then shows the pinned
    /// one, not whichever the client would like best.
    fn preferred_host_keys(&self) -> Preferred {
        let mut preferred = Preferred::default();
        let pinned =
            known_host_keys_path(&self.host, self.port, &self.known_hosts).unwrap_or_default();
        let mut algs: Vec<Algorithm> = Vec::new();
        for (_, key) in pinned {
            let kinds = match key.algorithm() {
                // A pinned RSA key is offered with SHA-2 signatures only.
                Algorithm::Rsa { .. } => vec![
                    Algorithm::Rsa {
                        hash: Some(HashAlg::Sha512),
                    },
                    Algorithm::Rsa {
                        hash: Some(HashAlg::Sha256),
                    },
                ],
                other => vec![other],
            };
            for a in kinds {
                if !algs.contains(&a) {
                    algs.push(a);
                }
            }
        }
        let rest: Vec<Algorithm> = preferred
            .key
            .iter()
            .filter(|a| !algs.contains(a))
            .cloned()
            .collect();
        algs.extend(rest);
        preferred.key = algs.into();
        preferred
    }

    /// Connects, verifies the host key, authenticates and opens the SFTP channel, then
    /// hangs up, sending nothing: `ess check --probe`.
    pub async fn probe(&self) -> Result<(), FolderError> {
        self.connect().await.map(drop)
    }

    /// Opens a new authenticated session and SFTP channel.
    async fn connect(&self) -> Result<Conn, FolderError> {
        let config = Arc::new(client::Config {
            keepalive_interval: Some(KEEPALIVE),
            keepalive_max: 3,
            preferred: self.preferred_host_keys(),
            ..Default::default()
        });
        let check = HostKeyCheck {
            host: self.host.clone(),
            port: self.port,
            known_hosts: self.known_hosts.clone(),
        };
        let where_ = host_port(&self.host, self.port);
        let connecting = client::connect(config, (self.host.as_str(), self.port), check);
        let mut ssh = match tokio::time::timeout(self.timeout, connecting).await {
            Err(_) => {
                return Err(session_error(
                    &where_,
                    false,
                    format!("connect timed out after {:?}", self.timeout),
                ));
            }
            Ok(Err(SshError::HostKey(msg))) => return Err(session_error(&where_, true, msg)),
            Ok(Err(SshError::Ssh(e))) => {
                return Err(session_error(
                    &where_,
                    false,
                    format!("cannot connect: {e}"),
                ));
            }
            Ok(Ok(h)) => h,
        };
        let session = async {
            let hash = if self.key.algorithm().is_rsa() {
                // OpenSSH >= 8.8 refuses SHA-1 RSA signatures: ask which hash it takes.
                ssh.best_supported_rsa_hash().await?.flatten()
            } else {
                None
            };
            let auth = ssh
                .authenticate_publickey(
                    &self.user,
                    PrivateKeyWithHashAlg::new(self.key.clone(), hash),
                )
                .await?;
            if !auth.success() {
                return Ok(None);
            }
            let channel = ssh.channel_open_session().await?;
            channel.request_subsystem(true, "sftp").await?;
            Ok::<_, russh::Error>(Some(channel))
        };
        let channel = match tokio::time::timeout(self.timeout, session).await {
            Err(_) => {
                return Err(session_error(
                    &where_,
                    false,
                    format!("login timed out after {:?}", self.timeout),
                ));
            }
            Ok(Err(e)) => return Err(session_error(&where_, false, e.to_string())),
            Ok(Ok(None)) => {
                return Err(session_error(
                    &where_,
                    true,
                    format!(
                        "the server refused public key {} for user {:?} (is it in authorized_keys?)",
                        self.key.public_key().fingerprint(HashAlg::Sha256),
                        self.user
                    ),
                ));
            }
            Ok(Ok(Some(ch))) => ch,
        };
        let sftp = Arc::new(RawSftpSession::new(channel.into_stream()));
        sftp.set_timeout(self.timeout.as_secs().max(1));
        let version = sftp
            .init()
            .await
            .map_err(|e| sftp_error(&where_, "start SFTP", e))?;
        let has = |name: &str| version.extensions.contains_key(name);
        Ok(Conn {
            ssh,
            sftp,
            fsync: has("fsync@openssh.com"),
        })
    }
}

/// A regular file in a remote folder, as a pickup source lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    pub name: String,
    pub size: u64,
    /// Modification time, seconds since the epoch (SFTPv3 has no finer one).
    pub mtime: Option<u32>,
    /// A symbolic link as listed (READDIR gives the link's own attributes), not a file.
    pub link: bool,
}

fn remote_file(name: String, attrs: &FileAttributes) -> Option<RemoteFile> {
    use russh_sftp::protocol::FileType;
    let link = match attrs.file_type() {
        FileType::File => false,
        FileType::Symlink => true,
        _ => return None,
    };
    Some(RemoteFile {
        name,
        size: attrs.size.unwrap_or(0),
        mtime: attrs.mtime,
        link,
    })
}

/// Every regular file directly in `dir` (OPENDIR, READDIR until EOF, CLOSE).
async fn list_of(c: &Conn, dir: &str) -> Result<Vec<RemoteFile>, SftpError> {
    let handle = c.sftp.opendir(dir).await?.handle;
    let mut out = Vec::new();
    let listed = loop {
        match c.sftp.readdir(handle.as_str()).await {
            Ok(names) => out.extend(
                names
                    .files
                    .into_iter()
                    .filter(|f| f.filename != "." && f.filename != "..")
                    .filter_map(|f| remote_file(f.filename, &f.attrs)),
            ),
            Err(e) if is_status(&e, StatusCode::Eof) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    c.sftp.close(handle).await?;
    listed.map(|()| out)
}

async fn stat_file_of(c: &Conn, path: &str, name: &str) -> Result<Option<RemoteFile>, SftpError> {
    match c.sftp.stat(path).await {
        Ok(attrs) => Ok(remote_file(name.to_string(), &attrs.attrs)),
        Err(e) if is_status(&e, StatusCode::NoSuchFile) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The operations a pickup source needs beyond the drop's [`Folder`]: listing with
/// modification times, and moving a file out of the folder.
impl SftpFolder {
    /// The remote folder, as configured.
    pub fn dir(&self) -> &str {
        &self.dir
    }

    /// Every regular file and symbolic link in the folder, with size and modification time.
    pub async fn list_files(&mut self) -> Result<Vec<RemoteFile>, FolderError> {
        let dir = self.dir.clone();
        on_session!(self, format!("list {dir}"), |c| list_of(c, &dir))
    }

    /// One file of the folder (`None` if it is not there, or not a regular file).
    pub async fn stat_file(&mut self, name: &str) -> Result<Option<RemoteFile>, FolderError> {
        let path = self.path(name);
        on_session!(self, format!("stat {path}"), |c| stat_file_of(
            c, &path, name
        ))
    }

    /// Renames `name` to the remote path `to` (another folder on the server), never
    /// replacing a file there: `false` if `to` exists.
    pub async fn move_out(&mut self, name: &str, to: &str) -> Result<bool, FolderError> {
        let from = self.path(name);
        on_session!(self, format!("rename {from} to {to}"), |c| rename_new_of(
            c, &from, to
        ))
    }
}

fn is_status(e: &SftpError, code: StatusCode) -> bool {
    matches!(e, SftpError::Status(s) if s.status_code == code)
}

/// The size of `path`, `None` if it does not exist.
async fn stat_of(c: &Conn, path: &str) -> Result<Option<Stat>, SftpError> {
    match c.sftp.stat(path).await {
        Ok(attrs) => Ok(Some(Stat {
            len: attrs.attrs.size.unwrap_or(0),
            id: None,
        })),
        Err(e) if is_status(&e, StatusCode::NoSuchFile) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Up to `len` bytes of `path` from `offset`.
async fn read_of(c: &Conn, path: &str, offset: u64, len: u64) -> Result<Vec<u8>, SftpError> {
    let sftp = &c.sftp;
    let handle = sftp
        .open(path, OpenFlags::READ, FileAttributes::empty())
        .await?
        .handle;
    let mut out = Vec::with_capacity(usize::try_from(len).unwrap_or(0).min(1 << 24));
    while (out.len() as u64) < len {
        let want = (len - out.len() as u64).min(CHUNK as u64) as u32;
        match sftp
            .read(handle.as_str(), offset + out.len() as u64, want)
            .await
        {
            Ok(data) if !data.data.is_empty() => out.extend_from_slice(&data.data),
            Ok(_) => break,
            Err(e) if is_status(&e, StatusCode::Eof) => break,
            Err(e) => return Err(e),
        }
    }
    sftp.close(handle).await?;
    Ok(out)
}

/// Writes `bytes` at `offset` through `handle` (up to [`WINDOW`] requests in flight, so a
/// link's latency is paid once per window), fsyncs and closes it.
async fn write_through(
    c: &Conn,
    handle: String,
    offset: u64,
    bytes: &[u8],
) -> Result<(), SftpError> {
    let sftp = &c.sftp;
    let mut inflight = tokio::task::JoinSet::new();
    let mut at = offset;
    // Each write names its offset, so their order does not matter.
    for chunk in bytes.chunks(CHUNK) {
        if inflight.len() >= WINDOW {
            joined(inflight.join_next().await)?;
        }
        let (sftp, handle, data) = (sftp.clone(), handle.clone(), chunk.to_vec());
        inflight.spawn(async move { sftp.write(handle, at, data).await.map(|_| ()) });
        at += chunk.len() as u64;
    }
    while let Some(done) = inflight.join_next().await {
        joined(Some(done))?;
    }
    if c.fsync {
        sftp.fsync(handle.as_str()).await?;
    }
    sftp.close(handle).await?;
    Ok(())
}

async fn write_at_of(c: &Conn, path: &str, offset: u64, bytes: &[u8]) -> Result<(), SftpError> {
    let handle = c
        .sftp
        .open(path, OpenFlags::WRITE, FileAttributes::empty())
        .await?
        .handle;
    write_through(c, handle, offset, bytes).await
}

async fn write_new_of(c: &Conn, path: &str, bytes: &[u8]) -> Result<(), SftpError> {
    let flags = OpenFlags::CREATE | OpenFlags::TRUNCATE | OpenFlags::WRITE;
    let handle = c
        .sftp
        .open(path, flags, FileAttributes::empty())
        .await?
        .handle;
    write_through(c, handle, 0, bytes).await
}

/// Creates `path` empty; `false` if it exists (SFTPv3 reports that as a plain failure).
async fn create_new_of(c: &Conn, path: &str) -> Result<bool, SftpError> {
    let flags = OpenFlags::CREATE | OpenFlags::EXCLUDE | OpenFlags::WRITE;
    match c.sftp.open(path, flags, FileAttributes::empty()).await {
        Ok(h) => {
            c.sftp.close(h.handle).await?;
            Ok(true)
        }
        Err(e) if is_status(&e, StatusCode::Failure) && stat_of(c, path).await?.is_some() => {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Renames unless `to` exists: SFTPv3 RENAME refuses an existing target.
async fn rename_new_of(c: &Conn, from: &str, to: &str) -> Result<bool, SftpError> {
    match c.sftp.rename(from, to).await {
        Ok(_) => Ok(true),
        Err(e) if is_status(&e, StatusCode::Failure) && stat_of(c, to).await?.is_some() => {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

async fn remove_of(c: &Conn, path: &str) -> Result<(), SftpError> {
    match c.sftp.remove(path).await {
        Ok(_) => Ok(()),
        Err(e) if is_status(&e, StatusCode::NoSuchFile) => Ok(()),
        Err(e) => Err(e),
    }
}

async fn truncate_of(c: &Conn, path: &str, len: u64) -> Result<(), SftpError> {
    let attrs = FileAttributes {
        size: Some(len),
        ..FileAttributes::empty()
    };
    c.sftp.setstat(path, attrs).await.map(|_| ())
}

/// fsyncs the folder itself (opened read-only; OpenSSH's fsync extension works on any
/// handle it opened), so new and renamed names survive a power cut of the server.
async fn sync_dir_of(c: &Conn, dir: &str) -> Result<(), SftpError> {
    if !c.fsync {
        return Ok(());
    }
    let handle = c
        .sftp
        .open(dir, OpenFlags::READ, FileAttributes::empty())
        .await?
        .handle;
    let synced = c.sftp.fsync(handle.as_str()).await;
    c.sftp.close(handle).await?;
    synced.map(|_| ())
}

#[async_trait::async_trait]
impl Folder for SftpFolder {
    fn location(&self) -> String {
        format!("sftp {} {}", self.where_(), self.dir)
    }

    fn name_in(&self, path: &str) -> Option<String> {
        name_in_dir(&self.dir, path)
    }

    fn legacy_form(&self) -> LegacyForm {
        LegacyForm::SftpFile
    }

    async fn stat(&mut self, name: &str) -> Result<Option<Stat>, FolderError> {
        let path = self.path(name);
        on_session!(self, format!("stat {path}"), |c| stat_of(c, &path))
    }

    async fn read(&mut self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>, FolderError> {
        let path = self.path(name);
        on_session!(self, format!("read {path}"), |c| read_of(
            c, &path, offset, len
        ))
    }

    async fn truncate(&mut self, name: &str, len: u64) -> Result<(), FolderError> {
        let path = self.path(name);
        on_session!(self, format!("truncate {path}"), |c| truncate_of(
            c, &path, len
        ))
    }

    async fn write_at(&mut self, name: &str, offset: u64, bytes: &[u8]) -> Result<(), FolderError> {
        let path = self.path(name);
        on_session!(self, format!("write {path}"), |c| write_at_of(
            c, &path, offset, bytes
        ))
    }

    async fn create_new(&mut self, name: &str) -> Result<bool, FolderError> {
        let path = self.path(name);
        let r: Result<bool, FolderError> =
            on_session!(self, format!("create {path}"), |c| create_new_of(c, &path));
        r.map_err(|e| self.folder_missing(e, &path))
    }

    async fn write_new(&mut self, name: &str, bytes: &[u8]) -> Result<(), FolderError> {
        let path = self.path(name);
        let r: Result<(), FolderError> =
            on_session!(self, format!("write {path}"), |c| write_new_of(
                c, &path, bytes
            ));
        r.map_err(|e| self.folder_missing(e, &path))
    }

    async fn rename_new(&mut self, from: &str, to: &str) -> Result<bool, FolderError> {
        let (from, to) = (self.path(from), self.path(to));
        on_session!(self, format!("rename {from} to {to}"), |c| rename_new_of(
            c, &from, &to
        ))
    }

    async fn remove(&mut self, name: &str) -> Result<(), FolderError> {
        let path = self.path(name);
        on_session!(self, format!("remove {path}"), |c| remove_of(c, &path))
    }

    async fn sync_names(&mut self) -> Result<(), FolderError> {
        let dir = self.dir.clone();
        on_session!(self, format!("fsync folder {dir}"), |c| sync_dir_of(
            c, &dir
        ))
    }
}

/// The outcome of one pipelined write (a panicked or cancelled task counts as failed).
fn joined(
    done: Option<Result<Result<(), SftpError>, tokio::task::JoinError>>,
) -> Result<(), SftpError> {
    match done {
        Some(Ok(r)) => r,
        Some(Err(e)) => Err(SftpError::UnexpectedBehavior(format!("write task: {e}"))),
        None => Ok(()),
    }
}

/// `host` or `[host]:port`, as known_hosts writes it.
fn host_port(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

/// Classifies an SFTP failure: what the server refused for good (missing folder,
/// permissions, unsupported) is permanent; timeouts, lost sessions and generic failures
/// (a full disk, say) are worth retrying.
fn sftp_error(where_: &str, what: &str, e: SftpError) -> FolderError {
    let permanent = matches!(
        &e,
        SftpError::Status(s) if matches!(
            s.status_code,
            StatusCode::NoSuchFile | StatusCode::PermissionDenied | StatusCode::OpUnsupported
        )
    );
    // SFTP v3 has no code for a full disk or a quota: the server answers a failed write
    // with the generic "failure" and nothing more, so the operator is told what it most
    // often means.
    let hint = match &e {
        SftpError::Status(s)
            if s.status_code == StatusCode::Failure && what.starts_with("write") =>
        {
            " (the server gives no reason; most often its disk is full or a quota is reached)"
        }
        _ => "",
    };
    FolderError {
        what: format!("sftp {where_}: {what}{hint}"),
        permanent,
        source: std::io::Error::other(e),
    }
}

/// A failure to get a session (connect, host key, login).
fn session_error(where_: &str, permanent: bool, why: String) -> FolderError {
    FolderError {
        what: format!("sftp {where_}"),
        permanent,
        source: std::io::Error::other(why),
    }
}

/// Whether the server answered (the session is fine) rather than the session failing.
fn answered(e: &SftpError) -> bool {
    matches!(e, SftpError::Status(_))
}

/// Why a connection attempt failed.
#[derive(Debug)]
enum SshError {
    Ssh(russh::Error),
    /// The host key is unknown or changed: never retried silently.
    HostKey(String),
}

impl From<russh::Error> for SshError {
    fn from(e: russh::Error) -> Self {
        SshError::Ssh(e)
    }
}

/// Checks the server's host key against the pinned `known_hosts` (re-read on every
/// connect, so an operator's fix needs no restart).
struct HostKeyCheck {
    host: String,
    port: u16,
    known_hosts: PathBuf,
}

impl HostKeyCheck {
    fn refuse(&self, key: &PublicKey, why: String) -> SshError {
        SshError::HostKey(format!(
            "sftp {}: host key refused: the server offered {} {}; {why}; nothing was sent",
            host_port(&self.host, self.port),
            key.algorithm().as_str(),
            key.fingerprint(HashAlg::Sha256),
        ))
    }
}

impl client::Handler for HostKeyCheck {
    type Error = SshError;

    async fn check_server_key(
        &mut self,
        offered: &PublicKeyOrCertificate,
    ) -> Result<bool, SshError> {
        let key = match offered {
            PublicKeyOrCertificate::PublicKey { key, .. } => key,
            PublicKeyOrCertificate::Certificate(cert) => {
                return Err(SshError::HostKey(format!(
                    "sftp {}: host key refused: the server offered a host certificate ({}), and only keys pinned in known_hosts are accepted",
                    host_port(&self.host, self.port),
                    cert.algorithm().as_str()
                )));
            }
        };
        let kh = self.known_hosts.display().to_string();
        match russh::keys::check_known_hosts_path(&self.host, self.port, key, &self.known_hosts) {
            Ok(true) => Ok(true),
            Ok(false) => Err(self.refuse(key, format!("{kh} has no {} key for this host", key.algorithm().as_str()))),
            Err(russh::keys::Error::KeyChanged { line }) => Err(self.refuse(
                key,
                format!("{kh} line {line} pins a DIFFERENT key for this host (changed host key or man-in-the-middle)"),
            )),
            Err(e) => Err(self.refuse(key, format!("cannot read {kh}: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ports_and_remote_names() {
        assert_eq!(host_port("h", 22), "h");
        assert_eq!(host_port("127.0.0.1", 2222), "[127.0.0.1]:2222");
        assert_eq!(remote_path("/drop", "p.txt"), "/drop/p.txt");
        assert_eq!(remote_path(".", "p.txt"), "p.txt");
        assert_eq!(
            name_in_dir("/drop", "/drop/p.txt").as_deref(),
            Some("p.txt")
        );
        assert_eq!(name_in_dir("/drop", "/other/p.txt"), None);
        assert_eq!(name_in_dir("/drop", "/drop/sub/p.txt"), None);
        assert_eq!(name_in_dir(".", "p.txt").as_deref(), Some("p.txt"));
        assert_eq!(remote_path("/", "p.txt"), "/p.txt");
        assert_eq!(name_in_dir("/", "/p.txt").as_deref(), Some("p.txt"));
    }
}
