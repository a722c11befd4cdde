//! The processes under test: starting them (they die with this process), their CPU time
//! (`/proc/PID/stat` utime + stime), their resident memory (`VmRSS`, peak `VmHWM`, which
//! `clear_refs` resets between scenarios), and stopping them.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A child process, killed when dropped.
pub struct Proc {
    pub name: String,
    child: Child,
}

/// Clock ticks per second of `/proc/PID/stat`.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

impl Proc {
    /// Starts `command` with stderr (and stdout unless `capture_stdout`) into `log`.
    pub fn spawn(
        name: &str,
        mut command: Command,
        log: &Path,
        capture_stdout: bool,
    ) -> anyhow::Result<Proc> {
        let log_file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        command.stderr(log_file.try_clone()?);
        command.stdin(Stdio::null());
        if capture_stdout {
            command.stdout(Stdio::piped());
        } else {
            command.stdout(log_file);
        }
        // SAFETY: prctl is async-signal-safe; the child dies with the bench, never orphaned.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Proc {
            name: name.to_string(),
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The first line the process prints on stdout (its address, for the fake upstream).
    pub fn first_line(&mut self) -> anyhow::Result<String> {
        let stdout: ChildStdout = self
            .child
            .stdout
            .take()
            .with_context(|| format!("{} has no captured stdout", self.name))?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        if line.trim().is_empty() {
            bail!("{} printed nothing; see its log", self.name);
        }
        Ok(line.trim().to_string())
    }

    /// A `/proc/PID/status` memory field in bytes (`VmRSS`, `VmHWM`).
    pub fn memory(&self, field: &str) -> anyhow::Result<u64> {
        memory(self.pid(), field)
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn stop(mut self, grace: Duration) {
        self.terminate(grace);
    }

    /// SIGTERM (nginx's master then stops its workers), then SIGKILL after `grace`.
    fn terminate(&mut self, grace: Duration) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        // SAFETY: signalling our own child by pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.terminate(Duration::from_secs(3));
    }
}

/// CPU seconds of a process (all its threads).
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces; fields are counted after its closing parenthesis.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("unreadable /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    let utime: f64 = fields.get(11).context("no utime")?.parse()?;
    let stime: f64 = fields.get(12).context("no stime")?.parse()?;
    Ok((utime + stime) / ticks_per_second())
}

/// A memory field of `/proc/PID/status`, in bytes.
pub fn memory(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    for line in status.lines() {
        if let Some(rest) = line.strip_prefix(field).and_then(|r| r.strip_prefix(':')) {
            let kb: u64 = rest
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .with_context(|| format!("{field} in /proc/{pid}/status"))?;
            return Ok(kb * 1024);
        }
    }
    bail!("no {field} in /proc/{pid}/status")
}

/// Resets a process's `VmHWM` (Linux 4.0+: write 5 to clear_refs).
pub fn reset_peak(pid: u32) -> anyhow::Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .with_context(|| format!("resetting the peak RSS of {pid}"))
}

/// Child processes of a pid (nginx workers), from /proc.
pub fn children(pid: u32) -> Vec<u32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    std::fs::read_to_string(path)
        .map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// A group of processes measured together (nginx: master and workers).
pub fn group_cpu_seconds(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|p| cpu_seconds(*p).ok()).sum()
}

/// Summed peak RSS of a group, in bytes.
pub fn group_peak(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|p| memory(*p, "VmHWM").ok()).sum()
}

/// A free TCP port on 127.0.0.1 (bound and released).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
