//! The standard Prometheus `process_*` series (CPU time, memory, file descriptors, threads,
//! start time) of the running `ess`, read from `/proc/self` with the `procfs` crate at
//! each scrape. On a system without `/proc` they stay at 0.

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

type U64Gauge = Gauge<u64, AtomicU64>;
type F64Gauge = Gauge<f64, AtomicU64>;

#[derive(Default)]
pub(super) struct ProcessMetrics {
    cpu: Counter<f64, AtomicU64>,
    /// The CPU seconds already added to `cpu` (a counter only goes up by increments).
    cpu_seen: Mutex<f64>,
    resident: U64Gauge,
    virtual_memory: U64Gauge,
    open_fds: U64Gauge,
    max_fds: U64Gauge,
    threads: U64Gauge,
    start_time: F64Gauge,
}

impl ProcessMetrics {
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "process_cpu",
            "Total user and system CPU time spent",
            Unit::Seconds,
            self.cpu.clone(),
        );
        registry.register_with_unit(
            "process_resident_memory",
            "Resident memory size",
            Unit::Bytes,
            self.resident.clone(),
        );
        registry.register_with_unit(
            "process_virtual_memory",
            "Virtual memory size",
            Unit::Bytes,
            self.virtual_memory.clone(),
        );
        registry.register(
            "process_open_fds",
            "Open file descriptors",
            self.open_fds.clone(),
        );
        registry.register(
            "process_max_fds",
            "Maximum number of open file descriptors",
            self.max_fds.clone(),
        );
        registry.register("process_threads", "OS threads", self.threads.clone());
        registry.register_with_unit(
            "process_start_time",
            "Start time of the process since the Unix epoch",
            Unit::Seconds,
            self.start_time.clone(),
        );
    }

    /// Reads `/proc/self` into the series; a file that cannot be read leaves its series
    /// as it was.
    pub(super) fn refresh(&self) {
        use procfs::WithCurrentSystemInfo;
        let Ok(me) = procfs::process::Process::myself() else {
            return;
        };
        if let Ok(stat) = me.stat() {
            let ticks = procfs::ticks_per_second().max(1) as f64;
            let cpu = (stat.utime + stat.stime) as f64 / ticks;
            let mut seen = self.cpu_seen.lock().unwrap_or_else(|p| p.into_inner());
            if cpu > *seen {
                self.cpu.inc_by(cpu - *seen);
                *seen = cpu;
            }
            self.resident.set(stat.rss_bytes().get());
            self.virtual_memory.set(stat.vsize);
            self.threads
                .set(u64::try_from(stat.num_threads).unwrap_or(0));
            if let Ok(boot) = procfs::boot_time_secs() {
                self.start_time
                    .set(boot as f64 + stat.starttime as f64 / ticks);
            }
        }
        if let Ok(n) = me.fd_count() {
            self.open_fds.set(n as u64);
        }
        if let Ok(limits) = me.limits() {
            if let procfs::process::LimitValue::Value(v) = limits.max_open_files.soft_limit {
                self.max_fds.set(v);
            }
        }
    }
}
