//! A tiny init for `linuxParameters.initProcessEnabled`: the agent binary, bind-mounted at
//! `/.skerry/init` in the container, runs as PID 1 over the task's command
//! (`/.skerry/init -- ARGS...`). It forwards termination and user signals to the command,
//! reaps every zombie (orphans are re-parented to PID 1), and exits with the command's exit
//! code, or 128 + the signal number when a signal killed it.

use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use nix::errno::Errno;
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// Where the agent mounts itself in containers that asked for an init.
pub const INIT_PATH: &str = "/.skerry/init";

/// Signals passed on to the command instead of acting on init.
pub const FORWARDED: [Signal; 6] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// The command to supervise if `args` (the whole argv) is an init invocation: `argv[0]`
/// ending in `/.skerry/init` (the `--` after it is optional), or named `init` and followed
/// by `--`.
pub fn invocation(args: &[String]) -> Option<Vec<String>> {
    let (argv0, rest) = args.split_first()?;
    let after_dashes = match rest.split_first() {
        Some((first, command)) if first == "--" => Some(command),
        _ => None,
    };
    if argv0.ends_with(INIT_PATH) {
        return Some(after_dashes.unwrap_or(rest).to_vec());
    }
    let named_init = Path::new(argv0).file_name().is_some_and(|n| n == "init");
    match after_dashes {
        Some(command) if named_init => Some(command.to_vec()),
        _ => None,
    }
}

/// Set in the environment of init's own re-execution that becomes the command.
const EXEC_ENV: &str = "SKERRY_INIT_EXEC";

/// Runs `command` under init and exits with its status.
pub fn run(command: Vec<String>) -> ! {
    if std::env::var_os(EXEC_ENV).is_some() {
        exec_unblocked(&command)
    }
    std::process::exit(supervise(&command))
}

/// The child half: std's `Command` passes init's blocked signal mask on to the child, and
/// clearing it in between needs `pre_exec` (unsafe), so init re-executes itself with this
/// environment variable, and this unblocks every signal and execs the command in place.
fn exec_unblocked(command: &[String]) -> ! {
    let _ = SigSet::all().thread_unblock();
    let Some((program, args)) = command.split_first() else {
        std::process::exit(2)
    };
    let err = Command::new(program).args(args).env_remove(EXEC_ENV).exec();
    eprintln!("skerry init: cannot run {program:?}: {err}");
    std::process::exit(if err.kind() == io::ErrorKind::NotFound {
        127
    } else {
        126
    })
}

fn supervise(command: &[String]) -> i32 {
    let Some((program, args)) = command.split_first() else {
        eprintln!("skerry init: no command given; usage: {INIT_PATH} -- COMMAND [ARGS...]");
        return 2;
    };
    // Blocked before the child exists so no signal is lost to the default action.
    let mut signals = SigSet::empty();
    for signal in FORWARDED {
        signals.add(signal);
    }
    signals.add(Signal::SIGCHLD);
    if let Err(e) = signals.thread_block() {
        eprintln!("skerry init: cannot block signals: {e}");
        return 1;
    }
    // Outside a PID namespace orphans would skip us; as PID 1 this is a no-op.
    let _ = nix::sys::prctl::set_child_subreaper(true);

    // /proc/self/exe is this binary even when its path is not visible (or was replaced).
    let spawned = Command::new("/proc/self/exe")
        .arg0(INIT_PATH)
        .arg("--")
        .arg(program)
        .args(args)
        .env(EXEC_ENV, "1")
        .spawn();
    let child = match spawned {
        Ok(child) => child,
        Err(e) => {
            eprintln!(
                "skerry init: cannot re-execute itself via /proc/self/exe to run {program:?}: {e}"
            );
            return 126;
        }
    };
    let Ok(pid) = i32::try_from(child.id()) else {
        eprintln!("skerry init: child pid {} out of range", child.id());
        return 1;
    };
    let child = Pid::from_raw(pid);
    loop {
        match signals.wait() {
            Ok(Signal::SIGCHLD) => {
                if let Some(code) = reap(child) {
                    return code;
                }
            }
            Ok(signal) => {
                // ESRCH: the child is gone and its SIGCHLD is already pending.
                let _ = kill(child, signal);
            }
            Err(_) => {}
        }
    }
}

/// Reaps every exited child; the command's exit code once it has exited.
fn reap(command: Pid) -> Option<i32> {
    let mut code = None;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, status)) if pid == command => code = Some(status),
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == command => {
                code = Some(128 + signal as i32);
            }
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return code,
            Err(Errno::EINTR) | Ok(_) => {}
            Err(_) => return code,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn invocation_recognises_the_mounted_init() {
        assert_eq!(
            invocation(&argv(&[
                "/.skerry/init",
                "--",
                "nginx",
                "-g",
                "daemon off;"
            ])),
            Some(argv(&["nginx", "-g", "daemon off;"]))
        );
        assert_eq!(
            invocation(&argv(&["/.skerry/init", "sh"])),
            Some(argv(&["sh"]))
        );
        assert_eq!(
            invocation(&argv(&["/usr/local/bin/init", "--", "sh", "--"])),
            Some(argv(&["sh", "--"]))
        );
        assert_eq!(invocation(&argv(&["init", "--"])), Some(vec![]));
    }

    #[test]
    fn invocation_leaves_other_argv_alone() {
        assert_eq!(
            invocation(&argv(&["/usr/bin/skerry-agent", "--", "x"])),
            None
        );
        assert_eq!(invocation(&argv(&["/sbin/init", "sh"])), None);
        assert_eq!(invocation(&argv(&["/x/.skerry/initial", "--", "sh"])), None);
        assert_eq!(invocation(&[]), None);
    }

    #[test]
    fn empty_command_is_a_usage_error() {
        assert_eq!(supervise(&[]), 2);
    }
}
