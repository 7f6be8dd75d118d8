//! The `sftp` target: records dropped on a remote SFTP server (russh + russh-sftp), exactly
//! once across reconnects and crashes.
//!
//! One SSH session is kept alive (SSH keep-alives) and reused across deliveries; a session
//! found dead on use is replaced once within the same delivery, and any other failure drops
//! it so that the next delivery starts from a fresh one. The server's host key must be
//! pinned in `known_hosts`: an unknown or changed key is refused (a permanent failure whose
//! message names the key that was offered) before anything is sent.
//!
//! Exactly once, by mode:
//! - `batch`: one file per delivery, named from the template with the delivery's first
//!   `seq` and its first event's time (so a re-delivery after a crash, which the connector
//!   makes with the same events since [`Target::pins_batches`] is true, produces the *same*
//!   name), with the map's header/trailer records around the records. The bytes go to a
//!   hidden temp name, are fsynced (`fsync@openssh.com`) and renamed over the final name
//!   with `posix-rename@openssh.com`: a reader sees no file or the whole file, and a
//!   re-delivery replaces the file with the same bytes.
//! - `append`: the checkpoint holds the remote file and the length the last *committed*
//!   delivery left it at. Before writing, the remote length is reconciled with it: a longer
//!   file holds an uncommitted tail of an interrupted delivery, which is cut off
//!   (SETSTAT size) and written again at the committed offset. A file the checkpoint does
//!   not know (first delivery, or a new `{{date}}` file) is compared with the records about
//!   to be written: if it starts with them, it is this delivery's own interrupted attempt
//!   and is rewritten from 0; otherwise its content is someone else's and is kept. A new
//!   file is created under a temp name and renamed into place, so it appears whole.
//!   When the delivery goes to another file than the checkpoint's (a new `{{date}}`), an
//!   uncommitted tail left in the checkpoint's file is cut first.
//!
//! Architecture invariant: the returned checkpoint describes only bytes that are on the
//! server and fsynced; nothing is written before the host key is verified.

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
use serde::{Deserialize, Serialize};

use super::{Checkpoint, Delivery, DeliveryError, Target, check_file_template, file_name};
use crate::config::connector::SftpDeliver;
use crate::config::parse_duration;
use crate::feed::schema::{decode, encode};
use crate::map::Mapping;

/// Default for `timeout:` (connect, authenticate, and each SFTP request).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes per SFTP WRITE request: below OpenSSH's 256 KiB packet limit and the 32 KiB
/// channel packet, so no request is split or refused.
const CHUNK: usize = 32 * 1024;
/// SFTP WRITE requests in flight at once during an upload.
const WINDOW: usize = 16;
/// How often an idle session sends an SSH keep-alive; three unanswered ones close it.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// `mode:` of the drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Append,
    Batch,
}

/// What the last committed delivery left on the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SftpCheckpoint {
    /// Remote path of the file written last.
    file: String,
    /// Its length after that delivery (append mode: the committed offset).
    len: u64,
}

/// An SFTP drop (`deliver.kind: sftp`).
pub struct SftpTarget {
    connector: String,
    host: String,
    port: u16,
    user: String,
    key: Arc<PrivateKey>,
    known_hosts: PathBuf,
    dir: String,
    file: String,
    mode: Mode,
    timeout: Duration,
    /// Gives batch files their header and trailer control records.
    mapping: Option<Arc<Mapping>>,
    conn: Option<Conn>,
}

impl std::fmt::Debug for SftpTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SftpTarget")
            .field("connector", &self.connector)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("dir", &self.dir)
            .field("file", &self.file)
            .field("mode", &self.mode)
            .field("connected", &self.conn.is_some())
            .finish_non_exhaustive()
    }
}

/// A live, authenticated session with its SFTP channel.
struct Conn {
    ssh: client::Handle<HostKeyCheck>,
    sftp: Arc<RawSftpSession>,
    posix_rename: bool,
    fsync: bool,
}

impl SftpTarget {
    /// Validates `spec` (key readable, known_hosts pins this host, names well formed);
    /// `base_dir` resolves relative `key` / `known_hosts` paths. Does not connect.
    pub fn new(
        spec: &SftpDeliver,
        base_dir: &Path,
        connector: &str,
        _tz: chrono_tz::Tz,
    ) -> Result<SftpTarget, String> {
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
        if let Err(e) = check_file_template(&spec.file) {
            errs.push(format!("sftp: {e}"));
        }
        let mode = match spec.mode.as_deref() {
            None | Some("append") => Mode::Append,
            Some("batch") => Mode::Batch,
            Some(other) => {
                errs.push(format!("sftp: mode {other:?} is not append or batch"));
                Mode::Append
            }
        };
        if mode == Mode::Batch && !spec.file.contains("{{seq}}") {
            errs.push(format!(
                "sftp: mode batch writes one file per batch, so file {:?} must contain {{{{seq}}}} (else a batch would replace the previous one)",
                spec.file
            ));
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
            Some(key) if errs.is_empty() => Ok(SftpTarget {
                connector: connector.to_string(),
                host: spec.host.clone(),
                port,
                user: spec.user.clone(),
                key,
                known_hosts,
                dir: spec.dir.trim_end_matches('/').to_string(),
                file: spec.file.clone(),
                mode,
                timeout,
                mapping: None,
                conn: None,
            }),
            _ => Err(errs.join("; ")),
        }
    }

    /// Lets batch files carry the map's `header:` / `trailer:` control records.
    pub fn with_mapping(mut self, mapping: Arc<Mapping>) -> SftpTarget {
        self.mapping = Some(mapping);
        self
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
    pub async fn probe(&self) -> Result<(), DeliveryError> {
        self.connect().await.map(drop)
    }

    /// Opens a new authenticated session and SFTP channel.
    async fn connect(&self) -> Result<Conn, DeliveryError> {
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
                return Err(DeliveryError::transient(format!(
                    "sftp {where_}: connect timed out after {:?}",
                    self.timeout
                )));
            }
            Ok(Err(SshError::HostKey(msg))) => return Err(DeliveryError::Permanent(msg)),
            Ok(Err(SshError::Ssh(e))) => {
                return Err(DeliveryError::transient(format!(
                    "sftp {where_}: cannot connect: {e}"
                )));
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
                return Err(DeliveryError::transient(format!(
                    "sftp {where_}: login timed out after {:?}",
                    self.timeout
                )));
            }
            Ok(Err(e)) => return Err(DeliveryError::transient(format!("sftp {where_}: {e}"))),
            Ok(Ok(None)) => {
                return Err(DeliveryError::Permanent(format!(
                    "sftp {where_}: the server refused public key {} for user {:?} (is it in authorized_keys?)",
                    self.key.public_key().fingerprint(HashAlg::Sha256),
                    self.user
                )));
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
            posix_rename: has("posix-rename@openssh.com"),
            fsync: has("fsync@openssh.com"),
        })
    }

    /// Runs one delivery on `conn`.
    async fn put(
        &self,
        conn: &Conn,
        path: &str,
        bytes: &[u8],
        ck: Option<&SftpCheckpoint>,
    ) -> Result<SftpCheckpoint, DeliveryError> {
        let remote = Remote {
            conn,
            where_: host_port(&self.host, self.port),
        };
        match self.mode {
            Mode::Batch => {
                let tmp = temp_name(path);
                remote.upload(&tmp, 0, bytes, true).await?;
                remote.replace(&tmp, path).await?;
                Ok(SftpCheckpoint {
                    file: path.to_string(),
                    len: bytes.len() as u64,
                })
            }
            Mode::Append => {
                // An interrupted delivery may have left a tail in the file the checkpoint
                // names while this one goes to a new (dated) file: cut it first.
                if let Some(c) = ck.filter(|c| c.file != path)
                    && remote.len(&c.file).await?.is_some_and(|l| l > c.len)
                {
                    remote.truncate(&c.file, c.len).await?;
                }
                let remote_len = remote.len(path).await?;
                let Some(remote_len) = remote_len else {
                    // A new file (or one a consumer took away): it appears whole, or not at all.
                    let tmp = temp_name(path);
                    remote.upload(&tmp, 0, bytes, true).await?;
                    remote.rename_new(&tmp, path).await?;
                    return Ok(SftpCheckpoint {
                        file: path.to_string(),
                        len: bytes.len() as u64,
                    });
                };
                let base = match ck.filter(|c| c.file == path) {
                    // Equal: nothing uncommitted. Longer: an interrupted delivery's tail, rewritten below.
                    Some(c) if remote_len >= c.len => c.len,
                    // Emptied by its consumer.
                    Some(_) if remote_len == 0 => 0,
                    Some(c) => {
                        return Err(DeliveryError::Permanent(format!(
                            "sftp {}: {path} is {remote_len} bytes but {} were delivered to it: someone else truncated it; move it away to start a new file",
                            remote.where_, c.len
                        )));
                    }
                    // A file the ledger does not know: our own interrupted first write to it,
                    // or someone else's content to keep.
                    None if remote_len == 0 => 0,
                    None => {
                        let n = remote_len.min(bytes.len() as u64);
                        let head = remote.read_head(path, n).await?;
                        if head == bytes[..n as usize] {
                            0
                        } else {
                            remote_len
                        }
                    }
                };
                // Cut the uncommitted tail first, so the file never shows stale bytes
                // after the new ones; then write at the committed offset (never a blind
                // append: a repeated delivery overwrites the same bytes).
                if remote_len > base {
                    remote.truncate(path, base).await?;
                }
                remote.upload(path, base, bytes, false).await?;
                let len = base + bytes.len() as u64;
                Ok(SftpCheckpoint {
                    file: path.to_string(),
                    len,
                })
            }
        }
    }
}

#[async_trait::async_trait]
impl Target for SftpTarget {
    async fn deliver(
        &mut self,
        delivery: &Delivery<'_>,
        checkpoint: &[u8],
    ) -> Result<Checkpoint, DeliveryError> {
        let ck: Option<SftpCheckpoint> = if checkpoint.is_empty() {
            None
        } else {
            Some(
                decode(checkpoint)
                    .map_err(|e| DeliveryError::Permanent(format!("sftp checkpoint: {e}")))?,
            )
        };
        if delivery.items.is_empty() {
            return Ok(checkpoint.to_vec());
        }
        let mut bytes = Vec::new();
        let name_time = match self.mode {
            Mode::Append => delivery.now,
            Mode::Batch => {
                if let Some(m) = &self.mapping {
                    let header = m.batch_header(delivery.items, delivery.now);
                    bytes.extend(
                        header
                            .map_err(|e| DeliveryError::Permanent(format!("batch header: {e}")))?,
                    );
                }
                // A batch file's name must not depend on when a retry happens: the time of
                // its first event names it (the connector re-delivers the same range).
                let first = delivery.items.first().map(|(e, _)| e.received_at);
                first.map_or(delivery.now, |t| t.with_timezone(&delivery.now.timezone()))
            }
        };
        bytes.extend(
            delivery
                .items
                .iter()
                .flat_map(|(_, r)| r.bytes.iter().copied()),
        );
        if let (Mode::Batch, Some(m)) = (self.mode, &self.mapping) {
            let trailer = m.batch_trailer(delivery.items, delivery.now);
            bytes.extend(
                trailer.map_err(|e| DeliveryError::Permanent(format!("batch trailer: {e}")))?,
            );
        }
        let name = file_name(
            &self.file,
            delivery.connector,
            delivery.first_seq(),
            &name_time,
        );
        let path = if self.dir == "." {
            name
        } else {
            format!("{}/{name}", self.dir)
        };

        // A kept session may have died while idle; that shows on first use. Try once more
        // on a fresh session before giving up, so a dropped connection costs no retry delay.
        let mut may_retry = self.conn.is_some();
        loop {
            let conn = match self.conn.take() {
                Some(c) if !c.ssh.is_closed() => c,
                _ => self.connect().await?,
            };
            match self.put(&conn, &path, &bytes, ck.as_ref()).await {
                Ok(new) => {
                    self.conn = Some(conn);
                    return Ok(encode(&new));
                }
                Err(e @ DeliveryError::Permanent(_)) => {
                    self.conn = Some(conn);
                    return Err(e);
                }
                Err(e) if may_retry => {
                    may_retry = false;
                    tracing::debug!(connector = %self.connector, error = %e, "sftp session lost; reconnecting");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Batch files are named after their first event: a crashed batch must come again
    /// with the same events.
    fn pins_batches(&self) -> bool {
        self.mode == Mode::Batch
    }
}

/// The SFTP operations a delivery is made of.
struct Remote<'a> {
    conn: &'a Conn,
    where_: String,
}

impl Remote<'_> {
    /// The size of `path`, `None` if it does not exist.
    async fn len(&self, path: &str) -> Result<Option<u64>, DeliveryError> {
        match self.conn.sftp.stat(path).await {
            Ok(attrs) => Ok(Some(attrs.attrs.size.unwrap_or(0))),
            Err(SftpError::Status(s)) if s.status_code == StatusCode::NoSuchFile => Ok(None),
            Err(e) => Err(sftp_error(&self.where_, &format!("stat {path}"), e)),
        }
    }

    /// The first `n` bytes of `path`.
    async fn read_head(&self, path: &str, n: u64) -> Result<Vec<u8>, DeliveryError> {
        let what = format!("read {path}");
        let sftp = &self.conn.sftp;
        let handle = sftp
            .open(path, OpenFlags::READ, FileAttributes::empty())
            .await
            .map_err(|e| sftp_error(&self.where_, &what, e))?
            .handle;
        let mut out = Vec::with_capacity(n as usize);
        while (out.len() as u64) < n {
            let want = (n - out.len() as u64).min(CHUNK as u64) as u32;
            match sftp.read(handle.as_str(), out.len() as u64, want).await {
                Ok(data) if !data.data.is_empty() => out.extend_from_slice(&data.data),
                Ok(_) => break,
                Err(SftpError::Status(s)) if s.status_code == StatusCode::Eof => break,
                Err(e) => return Err(sftp_error(&self.where_, &what, e)),
            }
        }
        sftp.close(handle)
            .await
            .map_err(|e| sftp_error(&self.where_, &what, e))?;
        Ok(out)
    }

    /// Writes `bytes` at `offset` of `path` (created and truncated first if `fresh`),
    /// fsyncs and closes it. Never appends blindly: the offset is the reconciled one.
    async fn upload(
        &self,
        path: &str,
        offset: u64,
        bytes: &[u8],
        fresh: bool,
    ) -> Result<(), DeliveryError> {
        let what = format!("write {path}");
        let err = |e| sftp_error(&self.where_, &what, e);
        let sftp = &self.conn.sftp;
        let flags = if fresh {
            OpenFlags::CREATE | OpenFlags::TRUNCATE | OpenFlags::WRITE
        } else {
            OpenFlags::WRITE
        };
        let handle = match sftp.open(path, flags, FileAttributes::empty()).await {
            Ok(h) => h.handle,
            Err(SftpError::Status(st)) if st.status_code == StatusCode::NoSuchFile => {
                let dir = path.rsplit_once('/').map_or(".", |(d, _)| d);
                return Err(DeliveryError::Permanent(format!(
                    "sftp {}: cannot create {path}: the folder {dir} does not exist on the server",
                    self.where_
                )));
            }
            Err(e) => return Err(err(e)),
        };
        // Up to WINDOW writes in flight, so a link's latency is paid once per window, not
        // once per chunk. Each write names its offset, so their order does not matter.
        let mut inflight = tokio::task::JoinSet::new();
        let mut at = offset;
        for chunk in bytes.chunks(CHUNK) {
            if inflight.len() >= WINDOW {
                joined(inflight.join_next().await).map_err(err)?;
            }
            let (sftp, handle, data) = (sftp.clone(), handle.clone(), chunk.to_vec());
            inflight.spawn(async move { sftp.write(handle, at, data).await.map(|_| ()) });
            at += chunk.len() as u64;
        }
        while let Some(done) = inflight.join_next().await {
            joined(Some(done)).map_err(err)?;
        }
        if self.conn.fsync {
            sftp.fsync(handle.as_str()).await.map_err(err)?;
        }
        sftp.close(handle).await.map_err(err)?;
        Ok(())
    }

    /// Cuts `path` to `len` bytes.
    async fn truncate(&self, path: &str, len: u64) -> Result<(), DeliveryError> {
        let attrs = FileAttributes {
            size: Some(len),
            ..FileAttributes::empty()
        };
        self.conn
            .sftp
            .setstat(path, attrs)
            .await
            .map_err(|e| sftp_error(&self.where_, &format!("truncate {path}"), e))?;
        Ok(())
    }

    /// Renames `tmp` over `path`, replacing it if it exists.
    async fn replace(&self, tmp: &str, path: &str) -> Result<(), DeliveryError> {
        let what = format!("rename {tmp} to {path}");
        if self.conn.posix_rename {
            let data = russh_sftp::ser::to_bytes(&PosixRename {
                oldpath: tmp.to_string(),
                newpath: path.to_string(),
            })
            .map_err(|e| DeliveryError::Permanent(format!("sftp: encode rename: {e}")))?;
            let reply = self
                .conn
                .sftp
                .extended("posix-rename@openssh.com", data.to_vec())
                .await
                .map_err(|e| sftp_error(&self.where_, &what, e))?;
            return match reply {
                russh_sftp::protocol::Packet::Status(s) if s.status_code == StatusCode::Ok => {
                    Ok(())
                }
                russh_sftp::protocol::Packet::Status(s) => {
                    Err(sftp_error(&self.where_, &what, SftpError::Status(s)))
                }
                _ => Err(DeliveryError::transient(format!(
                    "sftp {}: {what}: unexpected reply",
                    self.where_
                ))),
            };
        }
        // SFTPv3 RENAME refuses an existing target: remove it first. A crash in between
        // leaves the temp file; the re-delivery rewrites it and renames again.
        match self.conn.sftp.remove(path).await {
            Ok(_) => {}
            Err(SftpError::Status(s)) if s.status_code == StatusCode::NoSuchFile => {}
            Err(e) => return Err(sftp_error(&self.where_, &what, e)),
        }
        self.rename_new(tmp, path).await
    }

    /// Renames `tmp` to `path`, which must not exist.
    async fn rename_new(&self, tmp: &str, path: &str) -> Result<(), DeliveryError> {
        self.conn
            .sftp
            .rename(tmp, path)
            .await
            .map_err(|e| sftp_error(&self.where_, &format!("rename {tmp} to {path}"), e))?;
        Ok(())
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

/// The request body of `posix-rename@openssh.com`: two SSH strings.
#[derive(Serialize)]
struct PosixRename {
    oldpath: String,
    newpath: String,
}

/// The hidden, deterministic temp name next to `path` (a leftover is simply overwritten).
fn temp_name(path: &str) -> String {
    match path.rsplit_once('/') {
        Some((dir, name)) => format!("{dir}/.{name}.part"),
        None => format!(".{path}.part"),
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
fn sftp_error(where_: &str, what: &str, e: SftpError) -> DeliveryError {
    let message = format!("sftp {where_}: {what}: {e}");
    match &e {
        SftpError::Status(s)
            if matches!(
                s.status_code,
                StatusCode::NoSuchFile | StatusCode::PermissionDenied | StatusCode::OpUnsupported
            ) =>
        {
            DeliveryError::Permanent(message)
        }
        _ => DeliveryError::transient(message),
    }
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
    fn temp_names_are_hidden_and_deterministic() {
        assert_eq!(temp_name("/drop/p_7.txt"), "/drop/.p_7.txt.part");
        assert_eq!(temp_name("p.txt"), ".p.txt.part");
        assert_eq!(host_port("h", 22), "h");
        assert_eq!(host_port("127.0.0.1", 2222), "[127.0.0.1]:2222");
    }

    #[test]
    fn checkpoint_round_trips() {
        let ck = SftpCheckpoint {
            file: "/d/f".into(),
            len: 42,
        };
        assert_eq!(decode::<SftpCheckpoint>(&encode(&ck)).unwrap(), ck);
    }
}
