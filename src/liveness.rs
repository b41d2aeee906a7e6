//! Is the process that claims a run still alive? A PID alone can be reused
//! after a reboot or a long time, so we also compare the process start time
//! (field 22 of `/proc/PID/stat`, in clock ticks since boot).

/// This process's PID and start time.
pub fn current_process() -> (i64, Option<i64>) {
    let pid = std::process::id() as i64;
    (pid, start_ticks(pid))
}

fn start_ticks(pid: i64) -> Option<i64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces.
    let after = &stat[stat.rfind(')')? + 2..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// True when `pid` runs and (if known) started at `ticks`.
pub fn is_alive(pid: Option<i64>, ticks: Option<i64>) -> bool {
    let Some(pid) = pid else { return false };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let exists = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    if !exists {
        return false;
    }
    match (ticks, start_ticks(pid)) {
        (Some(want), Some(got)) => want == got,
        _ => true,
    }
}

/// This machine's host name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_wrong_start_time_is_not() {
        let (pid, ticks) = current_process();
        assert!(is_alive(Some(pid), ticks));
        assert!(!is_alive(Some(pid), ticks.map(|t| t + 1)));
        assert!(!is_alive(None, None));
    }

    #[test]
    fn an_exited_child_is_not_alive() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i64;
        child.wait().unwrap();
        assert!(!is_alive(Some(pid), None));
    }
}
