//! CPU time of processes from `/proc`: on a machine the load generator shares with the
//! servers, throughput says what each got, CPU per request what each costs.

use crate::Server;

/// User + system time from a `/proc/…/stat` file, in clock ticks: the fields at `first` and
/// `first + 1`, counted from 0 as in proc(5) (13: the process's own, 15: its waited-for
/// children's).
pub fn cpu_ticks(path: &str, first: usize) -> Option<u64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name is in parentheses and may hold spaces: count fields after it.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let field = |i: usize| fields.get(i - 2)?.parse::<u64>().ok();
    Some(field(first)? + field(first + 1)?)
}

pub fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

pub fn redis_pid(server: &Server) -> Option<u32> {
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query(&mut server.connect())
        .ok()?;
    info.lines()
        .find_map(|line| line.strip_prefix("process_id:"))?
        .trim()
        .parse()
        .ok()
}
