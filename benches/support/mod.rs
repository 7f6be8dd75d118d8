//! Shared by the whole-appliance benches: the real `ess serve` (release build) in a temp
//! folder made by `ess init`, on loopback port 0, with fresh certificates.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The `ess` binary the benches run: this build, or `$ESS_BIN` (another build, to compare
/// two releases on the same machine in the same minutes).
pub fn bin() -> String {
    std::env::var("ESS_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_ess").into())
}

/// `ess init` into `dir` with loopback port 0 listeners.
pub fn init(dir: &Path) {
    init_with(&bin(), dir);
}

/// [`init`] with the binary `ess`.
pub fn init_with(ess: &str, dir: &Path) {
    let st = Command::new(ess)
        .args(["init", "--dir"])
        .arg(dir)
        .args(["--ingest", "127.0.0.1:0", "--status", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .status()
        .expect("ess init");
    assert!(st.success());
}

/// Starts `ess serve` on the appliance in `dir` with `RUST_LOG=log_filter` (stderr to `log`,
/// if given, else inherited) and waits for its listening line; the child and the ingest URL.
pub fn serve(dir: &Path, log_filter: &str, log: Option<&Path>) -> (Child, String) {
    serve_with(&bin(), dir, log_filter, log)
}

/// [`serve`] with the binary `ess`.
pub fn serve_with(ess: &str, dir: &Path, log_filter: &str, log: Option<&Path>) -> (Child, String) {
    let stderr = match log {
        Some(p) => Stdio::from(std::fs::File::create(p).expect("log")),
        None => Stdio::inherit(),
    };
    let mut child = Command::new(ess)
        .args(["serve", "--config"])
        .arg(dir.join("ess.yml"))
        .env("RUST_LOG", log_filter)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("ess serve");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("listening line");
    // "ess listening: ingest=https://ADDR status=http://ADDR"
    let ingest = line
        .trim()
        .trim_start_matches("ess listening: ingest=https://")
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    (child, format!("https://{ingest}"))
}

pub struct Daemon {
    _tmp: tempfile::TempDir,
    /// The appliance folder (`ess.yml`, `tls/`, `maps/`, `data/`).
    pub dir: PathBuf,
    pub child: Child,
    /// `https://ADDR` of the ingest.
    pub url: String,
}

impl Daemon {
    /// `ess init`, without the permit map unless `with_connector`, `ess.yml` passed through
    /// `edit_config`, then `ess serve` until it prints its listening line (see [`bin`]).
    pub fn start(
        with_connector: bool,
        log: &str,
        edit_config: impl FnOnce(String) -> String,
    ) -> Daemon {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("app");
        init(&dir);
        if !with_connector {
            std::fs::remove_file(dir.join("maps/permit_map.yml")).expect("remove map");
        }
        let cfg = dir.join("ess.yml");
        let text = std::fs::read_to_string(&cfg).expect("config");
        std::fs::write(&cfg, edit_config(text)).expect("config");
        let (child, url) = serve(&dir, log, None);
        Daemon {
            _tmp: tmp,
            dir,
            child,
            url,
        }
    }

    /// A client with the dev client certificate.
    pub fn client(&self) -> ess::client::Client {
        let tls = self.dir.join("tls");
        ess::client::Client::new(
            &self.url,
            &tls.join("ca.crt"),
            Some((&tls.join("client.crt"), &tls.join("client.key"))),
        )
        .expect("client")
    }

    /// SIGTERM, and wait for the exit.
    pub fn stop(mut self) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// A loopback port nobody listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The disk's flush latency in `dir`: median of 100 × (overwrite 4 KiB in place,
/// fdatasync), as a commit rewrites pages of a file that already has them. Any server that
/// answers after fsync, one group commit at a time, does at most
/// `connections × batch / latency` events/s.
pub fn fdatasync_median(dir: &Path) -> std::time::Duration {
    let probe = FsyncProbe::open(dir, "fsync-probe");
    let mut lat: Vec<std::time::Duration> = (0..100u8).map(|i| probe.once(i)).collect();
    lat.sort();
    lat[lat.len() / 2]
}

/// A 4 KiB file `name` in `dir` that is overwritten in place and fdatasynced, to time the
/// disk's flush the way a commit pays it; removed when dropped.
pub struct FsyncProbe {
    file: std::fs::File,
    path: std::path::PathBuf,
}

impl FsyncProbe {
    pub fn open(dir: &Path, name: &str) -> FsyncProbe {
        use std::os::unix::fs::FileExt;
        let path = dir.join(name);
        let file = std::fs::File::create(&path).expect("probe file");
        file.write_all_at(&[1u8; 4096], 0).expect("write");
        file.sync_all().expect("fsync");
        FsyncProbe { file, path }
    }

    /// One overwrite + fdatasync, timed.
    pub fn once(&self, fill: u8) -> std::time::Duration {
        use std::os::unix::fs::FileExt;
        let t = std::time::Instant::now();
        self.file.write_all_at(&[fill; 4096], 0).expect("write");
        self.file.sync_data().expect("fdatasync");
        t.elapsed()
    }

    /// Times one flush every `every` on its own thread until `stop`: the disk's own latency
    /// while a server under load uses it, and the CPU one flush costs the thread that asks
    /// for it (in a VM a sync is not free: the guest kernel's block and virtio work runs on
    /// the caller). Returns the times, sorted, and the mean CPU per flush.
    pub fn during(
        dir: &Path,
        every: std::time::Duration,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> std::thread::JoinHandle<(Vec<std::time::Duration>, std::time::Duration)> {
        let probe = FsyncProbe::open(dir, "fsync-probe-during");
        std::thread::spawn(move || {
            let mut lat = Vec::new();
            let mut cpu = std::time::Duration::ZERO;
            let mut fill = 0u8;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                fill = fill.wrapping_add(1);
                let before = thread_cpu();
                lat.push(probe.once(fill));
                cpu += thread_cpu().saturating_sub(before);
                std::thread::sleep(every);
            }
            lat.sort();
            let per = cpu / (lat.len().max(1) as u32);
            (lat, per)
        })
    }
}

/// The CPU time this thread has used.
fn thread_cpu() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

impl Drop for FsyncProbe {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Fluent Bit (`bin`) with the peers README's configuration — mTLS `http` input with the
/// appliance's server certificate in `tls`, filesystem buffer with `storage.sync full`,
/// `file` output — working in `work`; returns it once it listens, with its URL.
pub fn start_fluent_bit(bin: &Path, tls: &Path, work: &Path) -> (Child, String) {
    let port = free_port();
    let (store, out) = (work.join("store"), work.join("out"));
    std::fs::create_dir_all(&store).expect("fluent-bit store");
    let conf = work.join("fluent-bit.conf");
    std::fs::write(
        &conf,
        format!(
            "[SERVICE]\n    flush 1\n    log_level error\n    storage.path {store}\n    storage.sync full\n\
             [INPUT]\n    name http\n    listen 127.0.0.1\n    port {port}\n    tls on\n    tls.verify on\n    tls.verify_client_cert on\n    tls.ca_file {ca}\n    tls.crt_file {crt}\n    tls.key_file {key}\n    storage.type filesystem\n    successful_response_code 201\n\
             [OUTPUT]\n    name file\n    match *\n    path {out}\n    file events.log\n    mkdir true\n",
            store = store.display(),
            out = out.display(),
            ca = tls.join("ca.crt").display(),
            crt = tls.join("server.crt").display(),
            key = tls.join("server.key").display(),
        ),
    )
    .expect("fluent-bit.conf");
    let child = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("fluent-bit");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "fluent-bit did not listen"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    (child, format!("https://127.0.0.1:{port}"))
}

/// The bench's arguments; `None` when cargo only probes it (`cargo bench -- --list`).
pub fn args() -> Option<Vec<String>> {
    let args: Vec<String> = std::env::args().collect();
    (!args.iter().any(|a| a == "--list")).then_some(args)
}

/// The value after `--name`, else `default`.
pub fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// CPU time (user + system) process `pid` has used so far, in seconds (`self` for this one).
pub fn cpu_seconds(pid: impl std::fmt::Display) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / clock_ticks()
}

/// CPU time the whole machine has spent busy so far (every core: user, nice, system, irq,
/// softirq, steal), and idle (idle + iowait), in seconds.
pub fn machine_cpu_seconds() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return (0.0, 0.0);
    };
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0.0);
    let busy = at(0) + at(1) + at(2) + at(5) + at(6) + at(7);
    let idle = at(3) + at(4);
    (busy / clock_ticks(), idle / clock_ticks())
}

/// The 40-field payroll copybook of `tests/fixtures/copybooks/PAYROLL.cpy`, its map as
/// `ess map from-copybook` writes it, and a payload that fills every field.
pub mod payroll {
    use ess::map::copybook::Copybook;
    use ess::map::field::Kind;
    use serde_json::{Map, Value};

    pub fn copybook_text() -> String {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(root.join("tests/fixtures/copybooks/PAYROLL.cpy"))
            .expect("PAYROLL.cpy")
    }

    /// The skeleton `ess map from-copybook` makes of the copybook.
    pub fn skeleton() -> String {
        ess::map::cli::from_copybook(&copybook_text(), "PAYROLL.cpy").expect("skeleton")
    }

    /// A payload with a value for every field of the skeleton (dates where it formats dates).
    pub fn payload() -> Map<String, Value> {
        let cb = Copybook::parse(&copybook_text()).expect("copybook");
        let mut payload = Map::new();
        for f in cb.fields.iter().filter(|f| !f.filler) {
            let key = f.name.to_ascii_lowercase().replace('-', "_");
            let dated = f.name.contains("DATE") || f.name.contains("TIME");
            let v: Value = match &f.kind {
                // The skeleton formats fields named like dates (`| format:%Y%m%d`).
                Kind::Zoned { .. } if dated => Value::String("2025-04-12T10:03:00Z".into()),
                Kind::Text { width, .. } => Value::String(
                    "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[..width.unwrap_or(1).min(26) / 2 + 1].into(),
                ),
                Kind::National { .. } | Kind::Float(_) => Value::from(1),
                Kind::Zoned { pic, .. } | Kind::Packed { pic } | Kind::Binary { pic, .. } => {
                    let int = "1234567"
                        .get(..pic.int_digits().min(7) as usize)
                        .unwrap_or("1");
                    let frac = "5678"
                        .get(..pic.frac_digits().min(4) as usize)
                        .unwrap_or("");
                    let text = if frac.is_empty() {
                        int.to_string()
                    } else {
                        format!("{int}.{frac}")
                    };
                    serde_json::from_str(&text).expect("a number")
                }
            };
            match key.split_once('(') {
                None => {
                    payload.insert(key, v);
                }
                Some((base, _)) => {
                    let arr = payload
                        .entry(base.to_string())
                        .or_insert_with(|| Value::Array(Vec::new()));
                    if let Value::Array(a) = arr {
                        a.push(v);
                    }
                }
            }
        }
        payload
    }

    /// The record length.
    pub fn record_len() -> usize {
        Copybook::parse(&copybook_text()).expect("copybook").len
    }
}
