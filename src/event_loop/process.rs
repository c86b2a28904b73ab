//! The process figures `/metrics` shows (Prometheus's `process_*` names):
//! CPU and memory read from `/proc/self/stat` when asked (a constant cost);
//! open descriptors are not listed then (`/proc/self/fd` costs time in
//! proportion to the connections): the server's own are counted once at
//! start, and the engine adds its connections.

use crate::engine::stats::ProcessStats;
use crate::sys;

/// Reads this process's memory and CPU time; `started` is when the server
/// started (seconds since the Unix epoch) and `own_fds` its own descriptors,
/// both taken at start.
pub fn sample(started: f64, own_fds: u64) -> ProcessStats {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // man 5 proc: after the command name (in parentheses, which may hold
    // spaces) come state (3), ..., utime (14), stime (15), ..., rss (24).
    let mut fields = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace();
    let mut next = |skip: usize| {
        fields
            .nth(skip)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let cpu_ticks = next(11) + next(0);
    let resident_pages = next(8);
    ProcessStats {
        cpu_seconds: cpu_ticks as f64 / sys::sysconf(libc::_SC_CLK_TCK).max(1) as f64,
        resident_bytes: resident_pages * sys::sysconf(libc::_SC_PAGESIZE),
        start_time_seconds: started,
        open_fds: own_fds,
    }
}

/// Descriptors open in this process now (a listing of `/proc/self/fd`, less
/// the one the listing itself holds open): for start only.
pub fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count().saturating_sub(1) as u64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_figures_are_this_process() {
        let before = super::sample(0.0, 5).cpu_seconds;
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(60) {
            std::hint::black_box(spin.elapsed());
        }
        let p = super::sample(7.0, 5);
        assert!(
            p.resident_bytes > 1 << 20 && p.resident_bytes < 1 << 34,
            "{p:?}"
        );
        assert!(p.cpu_seconds > before, "{p:?}");
        assert!(p.open_fds == 5 && p.start_time_seconds == 7.0, "{p:?}");
    }

    #[test]
    fn open_descriptors_are_counted_without_the_listing_itself() {
        // Other tests open files in parallel: look for a difference of two.
        let files: Vec<std::fs::File> = (0..50)
            .map(|_| std::fs::File::open("/proc/self/stat").expect("open"))
            .collect();
        let with = super::open_fds();
        drop(files);
        let without = super::open_fds();
        assert!((45..=55).contains(&(with - without)), "{with} {without}");
        assert!(without >= 3);
    }
}
