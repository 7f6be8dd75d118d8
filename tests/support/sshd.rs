//! A real OpenSSH server for tests: `/usr/sbin/sshd -D -e` on a free loopback port, with a
//! host key and user keys (ed25519 and RSA) made by `ssh-keygen` in a temp dir. The
//! listener and its session processes are SIGKILLed on `kill()` and on drop.

#![allow(dead_code)] // each test file uses a part of it

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) struct Sshd {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) port: u16,
    child: Option<Child>,
    /// A program (and its arguments) sshd runs under, e.g. strace; empty for none.
    wrapper: Vec<String>,
}

pub(crate) fn keygen(path: &Path, kind: &str) {
    let _ = fs::remove_file(path);
    let _ = fs::remove_file(path.with_extension("pub"));
    let mut cmd = Command::new("ssh-keygen");
    cmd.args(["-q", "-t", kind, "-N", "", "-C", "ess-test", "-f"])
        .arg(path);
    if kind == "rsa" {
        cmd.args(["-b", "2048"]);
    }
    let st = cmd
        .stdin(Stdio::null())
        .status()
        .expect("ssh-keygen runs (apt-get install openssh-server)");
    assert!(st.success(), "ssh-keygen -t {kind} failed");
}

fn pub_of(key: &Path) -> PathBuf {
    let mut p = key.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

/// The user tests log in as (the one running them: the server shares this machine).
pub(crate) fn user() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Sshd {
    /// Generates keys and config, starts sshd and waits until it greets.
    pub(crate) fn start() -> Sshd {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        keygen(&d.join("host_ed25519"), "ed25519");
        keygen(&d.join("host_rsa"), "rsa");
        keygen(&d.join("user_ed25519"), "ed25519");
        keygen(&d.join("user_rsa"), "rsa");
        let mut auth = fs::read_to_string(pub_of(&d.join("user_ed25519"))).unwrap();
        auth.push_str(&fs::read_to_string(pub_of(&d.join("user_rsa"))).unwrap());
        fs::write(d.join("authorized_keys"), auth).unwrap();
        fs::create_dir(d.join("drop")).unwrap();
        let mut s = Sshd {
            dir,
            port: 0,
            child: None,
            wrapper: Vec::new(),
        };
        // Another process may take the free port before sshd binds it: then try another.
        for attempt in 1..=5 {
            s.port = free_port();
            s.write_config();
            s.write_known_hosts();
            match s.try_spawn() {
                Ok(()) => return s,
                Err(e) if attempt == 5 => panic!("{e}"),
                Err(_) => {}
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    fn write_config(&self) {
        let d = self.dir.path();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nHostKey {hk_rsa}\nPidFile {pid}\nAuthorizedKeysFile {ak}\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n\
             StrictModes no\nUsePAM no\nSubsystem sftp internal-sftp\n",
            port = self.port,
            hk = d.join("host_ed25519").display(),
            hk_rsa = d.join("host_rsa").display(),
            pid = d.join("sshd.pid").display(),
            ak = d.join("authorized_keys").display(),
        );
        fs::write(d.join("sshd_config"), config).unwrap();
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The remote drop folder (absolute; the server shares this machine's file system).
    pub(crate) fn drop_dir(&self) -> PathBuf {
        self.path("drop")
    }

    /// `known_hosts` pinning the current host key.
    pub(crate) fn write_known_hosts(&self) {
        let key = fs::read_to_string(pub_of(&self.path("host_ed25519"))).unwrap();
        fs::write(
            self.path("known_hosts"),
            format!("[127.0.0.1]:{} {}", self.port, key),
        )
        .unwrap();
    }

    /// `known_hosts` pinning only the server's RSA host key.
    pub(crate) fn pin_rsa_host_key(&self) {
        let key = fs::read_to_string(pub_of(&self.path("host_rsa"))).unwrap();
        fs::write(
            self.path("known_hosts"),
            format!("[127.0.0.1]:{} {}", self.port, key),
        )
        .unwrap();
    }

    /// The SHA256 fingerprint of the current host key, as `ssh-keygen -l` prints it.
    pub(crate) fn host_fingerprint(&self) -> String {
        let out = Command::new("ssh-keygen")
            .arg("-lf")
            .arg(pub_of(&self.path("host_ed25519")))
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        text.split_whitespace().nth(1).unwrap().to_string()
    }

    /// Replaces the host key (known_hosts keeps pinning the old one).
    pub(crate) fn new_host_key(&self) {
        keygen(&self.path("host_ed25519"), "ed25519");
    }

    pub(crate) fn spawn(&mut self) {
        if let Err(e) = self.try_spawn() {
            panic!("{e}");
        }
    }

    /// Starts sshd under `wrapper` (e.g. strace stalling syncs); later
    /// `spawn`s run it plainly again.
    pub(crate) fn spawn_wrapped(&mut self, wrapper: Vec<String>) {
        self.wrapper = wrapper;
        let r = self.try_spawn();
        self.wrapper.clear();
        if let Err(e) = r {
            panic!("{e}");
        }
    }

    /// Starts sshd and waits until *it* says it listens (a greeting on the port could come
    /// from another server that took the port).
    fn try_spawn(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "sshd already running");
        // Privilege separation needs this folder (it is created by the package's service).
        let _ = fs::create_dir_all("/run/sshd");
        let listening = format!("Server listening on 127.0.0.1 port {}", self.port);
        let seen_before = self.log().matches(&listening).count();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("sshd.log"))
            .unwrap();
        let mut cmd = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg("/usr/sbin/sshd");
                c
            }
            None => Command::new("/usr/sbin/sshd"),
        };
        let child = cmd
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(self.path("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("/usr/sbin/sshd starts (apt-get install openssh-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return Err(format!("sshd exited with {st}: {}", self.log()));
            }
            if self.log().matches(&listening).count() > seen_before {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(format!("sshd did not start: {}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs sshd and every session process it started (those call setsid(), so they
    /// are found as descendants in /proc rather than by process group).
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pids = family(child.id());
            for pid in &pids {
                // SAFETY: plain syscall on processes this test started.
                unsafe {
                    libc::kill(*pid as i32, libc::SIGKILL);
                }
            }
            let _ = child.wait();
            // Session processes are reaped by init; wait until they are gone.
            let deadline = Instant::now() + Duration::from_secs(10);
            while pids
                .iter()
                .any(|p| Path::new(&format!("/proc/{p}")).exists() && !is_zombie(*p))
            {
                assert!(Instant::now() < deadline, "sshd sessions survived SIGKILL");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Sends `sig` (SIGSTOP, SIGCONT...) to sshd and its session processes.
    pub(crate) fn signal(&self, sig: i32) {
        let Some(child) = &self.child else { return };
        for pid in family(child.id()) {
            // SAFETY: plain syscall on processes this test started.
            unsafe {
                libc::kill(pid as i32, sig);
            }
        }
    }

    pub(crate) fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub(crate) fn log(&self) -> String {
        fs::read_to_string(self.path("sshd.log")).unwrap_or_default()
    }

    /// How many logins the server accepted so far.
    pub(crate) fn logins(&self) -> usize {
        self.log().matches("Accepted publickey").count()
    }
}

/// `pid` and all its descendants.
fn family(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    let mut idx = 0;
    while idx < pids.len() {
        let parent = pids[idx];
        pids.extend(children_of(parent));
        idx += 1;
    }
    pids
}

/// Pids whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if stat_field(child, 1).and_then(|pp| pp.parse::<u32>().ok()) == Some(pid) {
            out.push(child);
        }
    }
    out
}

fn is_zombie(pid: u32) -> bool {
    stat_field(pid, 0).as_deref() == Some("Z")
}

/// Field `n` after the command name of /proc/PID/stat (0: state, 1: ppid).
fn stat_field(pid: u32, n: usize) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(n).map(str::to_string)
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.kill();
    }
}
