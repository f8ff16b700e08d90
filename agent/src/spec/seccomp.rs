//! The default seccomp profile of a non-privileged container: an allowlist in the manner of
//! Docker's and containerd's defaults. Every system call not named here fails with EPERM.
//! What is left out is what lets a container reach past its namespaces and cgroups: mounts
//! and new namespaces, kernel modules, kexec and reboot, the kernel keyring, BPF and perf,
//! ptrace, setting the clock, io_uring (a large surface that bypasses the filter). A
//! capability the task definition grants opens the system calls that need it, so `add:
//! ["SYS_ADMIN"]` still lets a container mount. Names one architecture lacks are skipped by
//! runc, so one list serves both.

use oci_spec::runtime::{
    Arch, Capabilities, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder,
    LinuxSeccompOperator, LinuxSyscall,
};

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

/// The namespace flags of clone(2): a container without CAP_SYS_ADMIN may clone only with
/// none of them set.
const CLONE_NEW_FLAGS: u64 = 0x0002_0000 // CLONE_NEWNS
    | 0x0200_0000 // CLONE_NEWCGROUP
    | 0x0400_0000 // CLONE_NEWUTS
    | 0x0800_0000 // CLONE_NEWIPC
    | 0x1000_0000 // CLONE_NEWUSER
    | 0x2000_0000 // CLONE_NEWPID
    | 0x4000_0000; // CLONE_NEWNET

/// Allowed to every non-privileged container, grouped by what they are for (names
/// separated by white space).
const ALLOWED: &[&str] = &[
    // Files, directories and their metadata.
    "access faccessat faccessat2 chdir fchdir getcwd chmod fchmod fchmodat fchmodat2 chown
     chown32 fchown fchown32 fchownat lchown lchown32 open openat openat2 creat close
     close_range dup dup2 dup3 fcntl fcntl64 flock read readv pread64 preadv preadv2 write
     writev pwrite64 pwritev pwritev2 lseek _llseek stat stat64 lstat lstat64 fstat fstat64
     fstatat64 newfstatat statx statfs statfs64 fstatfs fstatfs64 truncate truncate64
     ftruncate ftruncate64 fallocate fadvise64 fadvise64_64 fsync fdatasync sync syncfs
     sync_file_range readahead getdents getdents64 mkdir mkdirat mknod mknodat rmdir rename
     renameat renameat2 link linkat symlink symlinkat unlink unlinkat readlink readlinkat
     umask utime utimes utimensat utimensat_time64 futimesat copy_file_range sendfile
     sendfile64 splice tee vmsplice cachestat ioctl pipe pipe2",
    // Extended attributes.
    "getxattr lgetxattr fgetxattr getxattrat listxattr llistxattr flistxattr listxattrat
     setxattr lsetxattr fsetxattr setxattrat removexattr lremovexattr fremovexattr
     removexattrat",
    // Waiting for events, asynchronous I/O.
    "poll ppoll ppoll_time64 select _newselect pselect6 pselect6_time64 epoll_create
     epoll_create1 epoll_ctl epoll_wait epoll_pwait epoll_pwait2 eventfd eventfd2 signalfd
     signalfd4 timerfd_create timerfd_settime timerfd_settime64 timerfd_gettime
     timerfd_gettime64 inotify_init inotify_init1 inotify_add_watch inotify_rm_watch
     fanotify_mark io_setup io_destroy io_submit io_cancel io_getevents io_pgetevents
     io_pgetevents_time64",
    // Memory.
    "brk mmap mmap2 munmap mremap mprotect pkey_alloc pkey_free pkey_mprotect madvise
     mincore msync mlock mlock2 mlockall munlock munlockall memfd_create membarrier
     remap_file_pages map_shadow_stack",
    // Processes and threads (clone and clone3 are below: their flags decide).
    "fork vfork execve execveat exit exit_group wait4 waitid waitpid getpid getppid gettid
     getpgid setpgid getpgrp getsid setsid set_tid_address set_robust_list get_robust_list
     futex futex_time64 futex_waitv futex_wake futex_wait futex_requeue rseq prctl capget
     capset getpriority setpriority sched_yield sched_getaffinity sched_setaffinity
     sched_getparam sched_setparam sched_getscheduler sched_setscheduler sched_getattr
     sched_setattr sched_get_priority_max sched_get_priority_min sched_rr_get_interval
     sched_rr_get_interval_time64 getrlimit ugetrlimit setrlimit prlimit64 getrusage times
     ioprio_get ioprio_set getcpu pidfd_open pidfd_send_signal seccomp
     landlock_create_ruleset landlock_add_rule landlock_restrict_self",
    // User and group ids.
    "getuid getuid32 geteuid geteuid32 getgid getgid32 getegid getegid32 getresuid
     getresuid32 getresgid getresgid32 getgroups getgroups32 setuid setuid32 setgid
     setgid32 setreuid setreuid32 setregid setregid32 setresuid setresuid32 setresgid
     setresgid32 setfsuid setfsuid32 setfsgid setfsgid32 setgroups setgroups32",
    // Signals.
    "kill tkill tgkill rt_sigaction rt_sigprocmask rt_sigreturn rt_sigsuspend rt_sigpending
     rt_sigtimedwait rt_sigtimedwait_time64 rt_sigqueueinfo rt_tgsigqueueinfo sigaction
     sigprocmask sigreturn sigsuspend sigpending sigaltstack signal pause alarm
     restart_syscall",
    // Clocks and timers. adjtimex reads the clock's state; setting it needs CAP_SYS_TIME,
    // which the kernel checks.
    "clock_gettime clock_gettime64 clock_getres clock_getres_time64 clock_nanosleep
     clock_nanosleep_time64 nanosleep gettimeofday time getitimer setitimer timer_create
     timer_delete timer_gettime timer_gettime64 timer_settime timer_settime64
     timer_getoverrun adjtimex clock_adjtime clock_adjtime64",
    // Sockets (the network namespace bounds what they reach).
    "socket socketpair socketcall bind connect listen accept accept4 getsockname
     getpeername getsockopt setsockopt send sendto sendmsg sendmmsg recv recvfrom recvmsg
     recvmmsg recvmmsg_time64 shutdown",
    // System V and POSIX IPC (the IPC namespace is the container's own).
    "ipc msgget msgsnd msgrcv msgctl semget semop semtimedop semtimedop_time64 semctl
     shmget shmat shmdt shmctl mq_open mq_unlink mq_timedsend mq_timedsend_time64
     mq_timedreceive mq_timedreceive_time64 mq_notify mq_getsetattr",
    // About the system.
    "uname sysinfo getrandom",
    // Architecture specific: x86 (thread areas, FS/GS base) and 32/64-bit ARM.
    "arch_prctl modify_ldt set_thread_area get_thread_area arm_fadvise64_64
     arm_sync_file_range sync_file_range2 breakpoint cacheflush set_tls",
];

/// System calls opened by a capability, as the kernel would check it anyway once past the
/// filter. CAP_SYS_ADMIN also opens clone and clone3 with any flags (see [`profile`]).
const BY_CAPABILITY: &[(Capability, &str)] = &[
    (
        Capability::SysAdmin,
        "bpf fanotify_init fsconfig fsmount fsopen fspick lookup_dcookie mount mount_setattr
         move_mount name_to_handle_at open_tree perf_event_open quotactl quotactl_fd
         setdomainname sethostname setns umount umount2 unshare",
    ),
    (Capability::SysBoot, "reboot"),
    (Capability::SysChroot, "chroot"),
    (
        Capability::SysModule,
        "delete_module init_module finit_module",
    ),
    (Capability::SysPacct, "acct"),
    (
        Capability::SysPtrace,
        "kcmp pidfd_getfd process_madvise process_vm_readv process_vm_writev ptrace",
    ),
    (Capability::SysRawio, "iopl ioperm"),
    (
        Capability::SysTime,
        "settimeofday stime clock_settime clock_settime64",
    ),
    (Capability::SysTtyConfig, "vhangup"),
    (
        Capability::SysNice,
        "get_mempolicy mbind set_mempolicy set_mempolicy_home_node",
    ),
    (Capability::Syslog, "syslog"),
    (Capability::Bpf, "bpf"),
    (Capability::Perfmon, "perf_event_open"),
    (Capability::DacReadSearch, "open_by_handle_at"),
];

/// The architectures a profile covers on an `arch` (as `std::env::consts::ARCH` names it):
/// the native one and the 32-bit ones its kernel also runs.
fn architectures(arch: &str) -> Vec<Arch> {
    match arch {
        "x86_64" => vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32],
        "aarch64" => vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm],
        "arm" => vec![Arch::ScmpArchArm],
        _ => vec![Arch::ScmpArchNative],
    }
}

/// A rule for the white-space separated `names`.
fn rule(names: &str, action: LinuxSeccompAction) -> LinuxSyscall {
    let mut r = LinuxSyscall::default();
    r.set_names(names.split_whitespace().map(str::to_string).collect());
    r.set_action(action);
    r
}

fn with_arg0(names: &str, op: LinuxSeccompOperator, value: u64, two: Option<u64>) -> LinuxSyscall {
    let mut arg = LinuxSeccompArgBuilder::default()
        .index(0usize)
        .value(value)
        .op(op);
    if let Some(two) = two {
        arg = arg.value_two(two);
    }
    let mut r = rule(names, LinuxSeccompAction::ScmpActAllow);
    r.set_args(Some(vec![arg.build().expect(
        "every field of a seccomp argument is set or has a default",
    )]));
    r
}

/// The profile for a container holding `caps` (its bounding set) on `arch`.
pub(super) fn profile(arch: &str, caps: &Capabilities) -> LinuxSeccomp {
    let allow = LinuxSeccompAction::ScmpActAllow;
    let mut syscalls: Vec<LinuxSyscall> = ALLOWED.iter().map(|names| rule(names, allow)).collect();
    // personality(2): only the Linux personality and the query; other personalities change
    // how the kernel lays out memory (ASLR off, READ_IMPLIES_EXEC).
    for persona in [0x0, 0x0008, 0x0002_0000, 0x0002_0008, 0xffff_ffff] {
        syscalls.push(with_arg0(
            "personality",
            LinuxSeccompOperator::ScmpCmpEq,
            persona,
            None,
        ));
    }
    for (cap, names) in BY_CAPABILITY {
        if caps.contains(cap) {
            syscalls.push(rule(names, allow));
        }
    }
    if caps.contains(&Capability::SysAdmin) {
        syscalls.push(rule("clone clone3", allow));
    } else {
        // clone without any namespace flag: (flags & CLONE_NEW_FLAGS) == 0.
        syscalls.push(with_arg0(
            "clone",
            LinuxSeccompOperator::ScmpCmpMaskedEq,
            CLONE_NEW_FLAGS,
            Some(0),
        ));
        // clone3's flags sit in a struct the filter cannot read: ENOSYS makes the C
        // libraries fall back to clone, whose flags it can.
        let mut clone3 = rule("clone3", LinuxSeccompAction::ScmpActErrno);
        clone3.set_errno_ret(Some(ENOSYS));
        syscalls.push(clone3);
    }
    let mut s = LinuxSeccomp::default();
    s.set_default_action(LinuxSeccompAction::ScmpActErrno);
    s.set_default_errno_ret(Some(EPERM));
    s.set_architectures(Some(architectures(arch)));
    s.set_syscalls(Some(syscalls));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn allowed(p: &LinuxSeccomp, name: &str) -> Vec<LinuxSyscall> {
        p.syscalls()
            .iter()
            .flatten()
            .filter(|r| r.names().iter().any(|n| n == name))
            .cloned()
            .collect()
    }

    fn caps(list: &[Capability]) -> Capabilities {
        list.iter().copied().collect()
    }

    #[test]
    fn no_name_is_listed_twice_in_the_base_list() {
        let mut seen = HashSet::new();
        for name in ALLOWED.iter().flat_map(|g| g.split_whitespace()) {
            assert!(seen.insert(name), "{name} listed twice");
        }
        for n in BY_CAPABILITY.iter().flat_map(|(_, g)| g.split_whitespace()) {
            assert!(!seen.contains(n), "{n} is both allowed and gated");
        }
    }

    #[test]
    fn clone_flags_are_the_namespace_flags() {
        let flags = [
            nix::sched::CloneFlags::CLONE_NEWNS,
            nix::sched::CloneFlags::CLONE_NEWCGROUP,
            nix::sched::CloneFlags::CLONE_NEWUTS,
            nix::sched::CloneFlags::CLONE_NEWIPC,
            nix::sched::CloneFlags::CLONE_NEWUSER,
            nix::sched::CloneFlags::CLONE_NEWPID,
            nix::sched::CloneFlags::CLONE_NEWNET,
        ]
        .iter()
        .fold(0u64, |acc, f| acc | f.bits() as u64);
        assert_eq!(CLONE_NEW_FLAGS, flags);
    }

    #[test]
    fn the_architectures_follow_the_host() {
        let p = profile("aarch64", &caps(&[]));
        assert_eq!(
            p.architectures().as_deref(),
            Some(&[Arch::ScmpArchAarch64, Arch::ScmpArchArm][..])
        );
        let p = profile("x86_64", &caps(&[]));
        assert_eq!(
            p.architectures().as_deref(),
            Some(&[Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32][..])
        );
    }

    #[test]
    fn without_capabilities_namespaces_and_mounts_stay_shut() {
        let p = profile("x86_64", &caps(&[]));
        for name in [
            "unshare", "setns", "mount", "reboot", "ptrace", "bpf", "chroot",
        ] {
            assert!(allowed(&p, name).is_empty(), "{name} must not be allowed");
        }
        let clone = allowed(&p, "clone");
        assert_eq!(clone.len(), 1);
        let arg = clone[0].args().as_ref().expect("clone is conditional")[0];
        assert_eq!(arg.op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
        assert_eq!((arg.value(), arg.value_two()), (CLONE_NEW_FLAGS, Some(0)));
        let clone3 = allowed(&p, "clone3");
        assert_eq!(clone3[0].action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(clone3[0].errno_ret(), Some(ENOSYS));
    }

    #[test]
    fn a_granted_capability_opens_its_system_calls() {
        let p = profile(
            "aarch64",
            &caps(&[Capability::SysAdmin, Capability::SysTime]),
        );
        for name in ["unshare", "mount", "setns", "clock_settime"] {
            assert_eq!(allowed(&p, name).len(), 1, "{name}");
        }
        let clone = allowed(&p, "clone");
        assert_eq!(clone.len(), 1);
        assert!(clone[0].args().is_none(), "any flags with CAP_SYS_ADMIN");
        assert_eq!(
            allowed(&p, "clone3")[0].action(),
            LinuxSeccompAction::ScmpActAllow
        );
        assert!(allowed(&p, "reboot").is_empty());
    }
}
