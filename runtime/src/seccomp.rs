//! The seccomp filter every container process runs under: a short deny-list, as LXC's and
//! LXD's default profile, assembled here as classic BPF (`struct sock_filter`).
//!
//! Denied, with `ENOSYS` (LXD's choice, `errno 38`; LXC's own default says `EPERM`): a caller
//! falls back as on a kernel without the call, and the answer is told apart from the `EPERM`
//! the kernel itself gives a container for a capability it lacks in the host's namespace:
//! - `kexec_load`, `kexec_file_load`: replacing the host's kernel;
//! - `open_by_handle_at`: opening any inode of a mounted filesystem by handle, past the
//!   container's root (the "shocker" escape);
//! - `init_module`, `finit_module`, `delete_module`: loading and unloading kernel modules.
//!
//! `umount2` with `MNT_FORCE` gets `EACCES` (LXC's `reject_force_umount`): a forced unmount
//! aborts every user of a filesystem the host may share.
//!
//! Architectures: the x32 ABI (x86_64 numbers with bit 30 set, whose calls have numbers of
//! their own) gets `ENOSYS` for every call, as on kernels built without it. i386 (`int 0x80`
//! from any process, or 32-bit programs) has its own numbers: the same rules are repeated with
//! them (i386 has no `kexec_file_load`, and its old one-argument `umount` takes no flags).
//! Any other architecture a syscall claims gets `ENOSYS` for everything: a deny-list keyed by
//! number means nothing for numbers of a table it was not written for.
//!
//! The filter is installed without `no_new_privs` (a system container's `sudo`, `ping` and
//! `newuidmap` need setuid and file capabilities): the kernel allows that to a task holding
//! `CAP_SYS_ADMIN` in its own user namespace, which a container's init and an exec'd
//! process have until they exec (or drop to another uid). A filter is inherited by every
//! child and cannot be removed, only added to.

use std::io;

/// `AUDIT_ARCH_X86_64` (linux/audit.h: `EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE`).
pub const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
/// `AUDIT_ARCH_I386` (`EM_386 | __AUDIT_ARCH_LE`).
pub const AUDIT_ARCH_I386: u32 = 0x4000_0003;
/// `AUDIT_ARCH_AARCH64` (`EM_AARCH64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE`).
pub const AUDIT_ARCH_AARCH64: u32 = 0xC000_00B7;
/// Bit 30 of an x86_64 syscall number marks the x32 ABI (`__X32_SYSCALL_BIT`).
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Offsets in `struct seccomp_data`: `nr` (u32), `arch` (u32), `instruction_pointer` (u64),
/// `args[6]` (u64 each; the low half first on the little-endian hosts berth runs on).
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARG1_LO: u32 = 16 + 8;

/// The syscalls one architecture's table numbers, for the rules.
#[derive(Debug, Clone, Copy)]
pub struct Table {
    /// `AUDIT_ARCH_*` of the table.
    pub arch: u32,
    /// Numbers denied with `ENOSYS`.
    pub denied: &'static [u32],
    /// `umount2`'s number (denied with `EACCES` when its flags have `MNT_FORCE`).
    pub umount2: u32,
    /// Numbers with this bit set are another ABI's (x32 on x86_64): all denied.
    pub foreign_bit: Option<u32>,
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!(
    "berth's seccomp filter knows x86_64 and aarch64: add this target's AUDIT_ARCH and compat tables"
);
#[cfg(target_arch = "x86_64")]
const NATIVE_ARCH: u32 = AUDIT_ARCH_X86_64;
#[cfg(target_arch = "aarch64")]
const NATIVE_ARCH: u32 = AUDIT_ARCH_AARCH64;

/// The host's own table, numbered by libc.
const NATIVE_DENIED: &[u32] = &[
    libc::SYS_kexec_load as u32,
    libc::SYS_kexec_file_load as u32,
    libc::SYS_open_by_handle_at as u32,
    libc::SYS_init_module as u32,
    libc::SYS_finit_module as u32,
    libc::SYS_delete_module as u32,
];

/// The tables the filter knows: the host's own, then i386 on x86_64 (asm/unistd_32.h:
/// kexec_load 283, open_by_handle_at 342, init_module 128, finit_module 350,
/// delete_module 129, umount2 52).
pub fn tables() -> Vec<Table> {
    let native = Table {
        arch: NATIVE_ARCH,
        denied: NATIVE_DENIED,
        umount2: libc::SYS_umount2 as u32,
        foreign_bit: cfg!(target_arch = "x86_64").then_some(X32_SYSCALL_BIT),
    };
    let mut t = vec![native];
    if cfg!(target_arch = "x86_64") {
        t.push(Table {
            arch: AUDIT_ARCH_I386,
            denied: &[283, 342, 128, 350, 129],
            umount2: 52,
            foreign_bit: None,
        });
    }
    t
}

fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

fn ret_errno(errno: i32) -> libc::sock_filter {
    stmt(
        libc::BPF_RET | libc::BPF_K,
        libc::SECCOMP_RET_ERRNO | (errno as u32 & libc::SECCOMP_RET_DATA),
    )
}

fn ret_allow() -> libc::sock_filter {
    stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW)
}

/// The rules of one table, entered with the syscall's arch in the accumulator; every path
/// through them returns.
fn arch_block(t: &Table) -> Vec<libc::sock_filter> {
    let mut b = vec![stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, OFF_NR)];
    if let Some(bit) = t.foreign_bit {
        b.push(jump(
            libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K,
            bit,
            0,
            1,
        ));
        b.push(ret_errno(libc::ENOSYS));
    }
    for nr in t.denied {
        b.push(jump(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, *nr, 0, 1));
        b.push(ret_errno(libc::ENOSYS));
    }
    // umount2(target, flags): flags is an int, the argument's low half
    b.push(jump(
        libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
        t.umount2,
        0,
        3,
    ));
    b.push(stmt(
        libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
        OFF_ARG1_LO,
    ));
    b.push(jump(
        libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K,
        libc::MNT_FORCE as u32,
        0,
        1,
    ));
    b.push(ret_errno(libc::EACCES));
    b.push(ret_allow());
    b
}

/// The whole program: per known architecture, its rules; any other architecture `ENOSYS`.
pub fn program() -> Vec<libc::sock_filter> {
    let mut p = vec![stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, OFF_ARCH)];
    for t in tables() {
        let block = arch_block(&t);
        // blocks are a few dozen instructions: a jump offset is a u8
        let skip = u8::try_from(block.len()).unwrap_or(u8::MAX);
        p.push(jump(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            t.arch,
            0,
            skip,
        ));
        p.extend(block);
    }
    p.push(ret_errno(libc::ENOSYS));
    p
}

/// Installs [`program`] on the calling thread (and so on everything it execs and forks).
///
/// Needs `CAP_SYS_ADMIN` in the caller's user namespace (no_new_privs is not set).
pub fn install() -> io::Result<()> {
    install_program(&program())
}

/// Installs `prog`: only `seccomp(2)`, no allocation, so a child forked from a
/// multi-threaded process may call it with a program built before the fork.
pub fn install_program(prog: &[libc::sock_filter]) -> io::Result<()> {
    let fprog = libc::sock_fprog {
        len: u16::try_from(prog.len()).map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?,
        // the kernel only reads through it
        filter: prog.as_ptr().cast_mut(),
    };
    // SAFETY: fprog points at `prog`, which outlives the call; the kernel copies the program.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &fprog as *const libc::sock_fprog,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a filter returned: allowed, or this errno.
    #[derive(Debug, PartialEq, Eq)]
    enum Verdict {
        Allow,
        Errno(i32),
        Other(u32),
    }

    /// A classic-BPF interpreter for the instructions seccomp programs use (absolute word
    /// loads, conditional jumps against constants, constant returns).
    fn run(prog: &[libc::sock_filter], nr: u32, arch: u32, args: [u64; 6]) -> Verdict {
        let mut data = Vec::with_capacity(64);
        data.extend_from_slice(&nr.to_le_bytes());
        data.extend_from_slice(&arch.to_le_bytes());
        data.extend_from_slice(&0u64.to_le_bytes());
        for a in args {
            data.extend_from_slice(&a.to_le_bytes());
        }
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = prog
                .get(pc)
                .unwrap_or_else(|| panic!("fell off the program at {pc}"));
            let code = u32::from(i.code);
            match code {
                c if c == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS => {
                    let k = i.k as usize;
                    assert!(k.is_multiple_of(4) && k + 4 <= data.len(), "load at {k}");
                    acc = u32::from_le_bytes([data[k], data[k + 1], data[k + 2], data[k + 3]]);
                    pc += 1;
                }
                c if c == libc::BPF_RET | libc::BPF_K => {
                    return match i.k & 0xffff_0000 {
                        libc::SECCOMP_RET_ALLOW => Verdict::Allow,
                        libc::SECCOMP_RET_ERRNO => {
                            Verdict::Errno((i.k & libc::SECCOMP_RET_DATA) as i32)
                        }
                        _ => Verdict::Other(i.k),
                    };
                }
                c if c & 0x07 == libc::BPF_JMP => {
                    let taken = match c & 0xf0 {
                        x if x == libc::BPF_JEQ => acc == i.k,
                        x if x == libc::BPF_JSET => acc & i.k != 0,
                        x if x == libc::BPF_JGE => acc >= i.k,
                        x => panic!("jump op {x:#x}"),
                    };
                    pc += 1 + usize::from(if taken { i.jt } else { i.jf });
                }
                c => panic!("instruction {c:#x} at {pc}"),
            }
        }
    }

    fn check(nr: u32, arch: u32, args: [u64; 6]) -> Verdict {
        run(&program(), nr, arch, args)
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn x86_64_rules() {
        let none = [0u64; 6];
        let x64 = AUDIT_ARCH_X86_64;
        // allowed: everyday calls, and the numbers next to the denied ones
        for nr in [0, 1, 39, 59, 245, 247, 303, 305, 319, 321] {
            assert_eq!(check(nr, x64, none), Verdict::Allow, "nr {nr}");
        }
        // denied with ENOSYS: kexec_load, kexec_file_load, open_by_handle_at, init_module,
        // finit_module, delete_module
        for nr in [246, 320, 304, 175, 313, 176] {
            assert_eq!(
                check(nr, x64, none),
                Verdict::Errno(libc::ENOSYS),
                "nr {nr}"
            );
        }
        // umount2: a forced one is refused, others pass whatever else the flags say
        assert_eq!(check(166, x64, [0, 0, 0, 0, 0, 0]), Verdict::Allow);
        assert_eq!(
            check(166, x64, [0, libc::MNT_DETACH as u64, 0, 0, 0, 0]),
            Verdict::Allow
        );
        assert_eq!(
            check(166, x64, [0, libc::MNT_FORCE as u64, 0, 0, 0, 0]),
            Verdict::Errno(libc::EACCES)
        );
        assert_eq!(
            check(
                166,
                x64,
                [0, (libc::MNT_FORCE | libc::MNT_DETACH) as u64, 0, 0, 0, 0]
            ),
            Verdict::Errno(libc::EACCES)
        );
        // only the int counts: garbage in the high half neither forces nor hides a force
        assert_eq!(check(166, x64, [0, 1 << 32, 0, 0, 0, 0]), Verdict::Allow);
        assert_eq!(
            check(166, x64, [0, (1 << 32) | 1, 0, 0, 0, 0]),
            Verdict::Errno(libc::EACCES)
        );
        // the force flag on another call's second argument means nothing
        assert_eq!(check(1, x64, [0, 1, 0, 0, 0, 0]), Verdict::Allow);
        // x32: every call
        for nr in [X32_SYSCALL_BIT, X32_SYSCALL_BIT | 39, X32_SYSCALL_BIT | 528] {
            assert_eq!(
                check(nr, x64, none),
                Verdict::Errno(libc::ENOSYS),
                "x32 nr {nr:#x}"
            );
        }
        // i386 has its own numbers: 283 is kexec_load there, 246 is not
        for nr in [283, 342, 128, 350, 129] {
            assert_eq!(
                check(nr, AUDIT_ARCH_I386, none),
                Verdict::Errno(libc::ENOSYS),
                "i386 nr {nr}"
            );
        }
        for nr in [1, 4, 11, 246, 304, 175, 176, 313, 320] {
            assert_eq!(
                check(nr, AUDIT_ARCH_I386, none),
                Verdict::Allow,
                "i386 nr {nr}"
            );
        }
        assert_eq!(
            check(52, AUDIT_ARCH_I386, [0, 1, 0, 0, 0, 0]),
            Verdict::Errno(libc::EACCES)
        );
        assert_eq!(
            check(52, AUDIT_ARCH_I386, [0, 2, 0, 0, 0, 0]),
            Verdict::Allow
        );
        assert_eq!(
            check(166, AUDIT_ARCH_I386, [0, 1, 0, 0, 0, 0]),
            Verdict::Allow,
            "166 is not umount2 on i386"
        );
        // an architecture the filter has no table for
        assert_eq!(
            check(39, AUDIT_ARCH_AARCH64, none),
            Verdict::Errno(libc::ENOSYS)
        );
        assert_eq!(check(39, 0, none), Verdict::Errno(libc::ENOSYS));
    }

    /// The hand-written i386 numbers agree with the kernel's headers, where installed.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn i386_numbers_match_the_headers() {
        let Ok(h) = std::fs::read_to_string("/usr/include/x86_64-linux-gnu/asm/unistd_32.h") else {
            return;
        };
        let nr = |name: &str| -> Option<u32> {
            h.lines().find_map(|l| {
                l.strip_prefix(&format!("#define __NR_{name} "))
                    .and_then(|v| v.trim().parse().ok())
            })
        };
        let i386 = tables()
            .into_iter()
            .find(|t| t.arch == AUDIT_ARCH_I386)
            .expect("an i386 table");
        let names = [
            "kexec_load",
            "open_by_handle_at",
            "init_module",
            "finit_module",
            "delete_module",
        ];
        let want: Vec<u32> = names
            .iter()
            .map(|n| nr(n).unwrap_or_else(|| panic!("{n} in unistd_32.h")))
            .collect();
        assert_eq!(i386.denied, want.as_slice());
        assert_eq!(Some(i386.umount2), nr("umount2"));
        assert_eq!(
            nr("kexec_file_load"),
            None,
            "i386 gained kexec_file_load: deny it there too"
        );
    }

    #[test]
    fn every_path_ends_in_a_return() {
        let p = program();
        assert!(p.len() < 64, "{} instructions", p.len());
        // the interpreter would panic on falling off the end; try every nr around the rules
        for t in tables() {
            for nr in 0..600 {
                let _ = run(&p, nr, t.arch, [0, 1, 0, 0, 0, 0]);
            }
        }
    }

    /// The kernel accepts the program (in a child, which the filter then binds).
    #[test]
    fn the_kernel_accepts_it() {
        // SAFETY: plain syscall.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let prog = program();
        // SAFETY: fork in a test; the child only makes syscalls (no allocation) and _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = match install_program(&prog) {
                // SAFETY: plain syscall; kexec_load(0,0,NULL,0) is denied by the filter
                Ok(()) => match unsafe { libc::syscall(libc::SYS_kexec_load, 0, 0, 0, 0) } {
                    -1 if io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) => 0,
                    _ => 2,
                },
                Err(_) => 1,
            };
            // SAFETY: leave the forked child without running the test harness's atexit.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for our child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "status {status:#x}"
        );
    }
}
