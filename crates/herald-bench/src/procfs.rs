//! What the kernel knows about a process: CPU time and resident memory from `/proc/<pid>`,
//! and our own open-file limit.

use std::io;

/// One reading of a process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    /// VmRSS in KiB.
    pub rss_kb: u64,
}

impl Sample {
    pub fn cpu_us(&self) -> f64 {
        self.cpu_ticks as f64 * 1e6 / clock_ticks() as f64
    }
}

pub fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
        .filter(|&v| v > 0)
        .unwrap_or(100)
}

/// Reads `/proc/<pid>/stat` and `/proc/<pid>/status` (`pid` 0 means this process).
pub fn sample(pid: u32) -> io::Result<Sample> {
    let dir = if pid == 0 {
        "/proc/self".to_string()
    } else {
        format!("/proc/{pid}")
    };
    let stat = std::fs::read_to_string(format!("{dir}/stat"))?;
    // The command name may contain spaces and parentheses; fields resume after the last ')'.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| io::Error::other("malformed stat"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    let num = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let cpu_ticks = num(11) + num(12);
    let status = std::fs::read_to_string(format!("{dir}/status"))?;
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok(Sample { cpu_ticks, rss_kb })
}

/// Sums the samples of several processes (several gateway nodes).
pub fn sample_all(pids: &[u32]) -> Sample {
    pids.iter()
        .filter_map(|&p| sample(p).ok())
        .fold(Sample::default(), |a, s| Sample {
            cpu_ticks: a.cpu_ticks + s.cpu_ticks,
            rss_kb: a.rss_kb + s.rss_kb,
        })
}

/// How many file descriptors `pid` has open (entries of `/proc/<pid>/fd`; readable for our
/// own user's processes).
pub fn open_fds(pid: u32) -> io::Result<u64> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64)
}

/// Raises the soft RLIMIT_NOFILE to the hard limit and returns the new soft limit. An
/// unprivileged process cannot go past the hard limit, which caps one load process's sockets.
pub fn raise_nofile() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                hard
            } else {
                soft
            }
        }
        Err(_) => 1024,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_process() {
        let s = sample(0).unwrap();
        assert!(s.rss_kb > 100, "{s:?}");
        let ours = sample(std::process::id()).unwrap();
        assert!(ours.rss_kb > 100);
        // 64 more while 64 files are open (other tests running beside this one may open or
        // close a few of their own).
        let before = open_fds(std::process::id()).unwrap();
        let files: Vec<_> = (0..64)
            .map(|_| std::fs::File::open("/proc/self/stat").unwrap())
            .collect();
        let during = open_fds(std::process::id()).unwrap();
        assert!(during >= before + 48, "{before} -> {during}");
        drop(files);
    }
}
