//! Device control: which device nodes a container's processes may use.
//!
//! The policy is data: a list of [`Rule`]s, everything else denied. It is LXC's default
//! (`config/common.conf`) plus `/dev/net/tun`, as Incus allows: creating any node (`m`), and
//! reading and writing only the harmless ones (null, zero, full, random, urandom, tty, console,
//! ptmx, the pty slaves, fuse, tun). Mount-namespace tricks, a node made by the host in the
//! rootfs, or a node a privileged helper leaves in reach all end at the kernel's device check.
//!
//! The kernel applies it in two places, and berth fills both where they exist:
//! - cgroup v1: the `devices` controller — `devices.deny a`, then one `devices.allow` line per
//!   rule, in the container's group before any of its processes runs there;
//! - cgroup v2: a `BPF_PROG_TYPE_CGROUP_DEVICE` program compiled from the rules (a handful of
//!   instructions per rule) and attached to the container's group with `BPF_F_ALLOW_MULTI`.
//!   The kernel runs it on a hybrid host too (for processes whose v2 group has one), so there
//!   both checks apply.
//!
//! Both are set when the container's groups are made (at create, and after a reboot wiped
//! them), and both are idempotent: a v1 list that already says the policy is left alone, and a
//! program whose name (`berth_dev_<hash of its instructions>`) is already attached is not
//! attached again; one of an older policy is replaced.

use crate::cgroup::Hierarchy;
use crate::error::{Context, Error, Result};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// A device's kind, as the kernel's `BPF_DEVCG_DEV_*` numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A block device (`b`).
    Block = 1,
    /// A character device (`c`).
    Char = 2,
}

/// Creating the node (`m`), as `BPF_DEVCG_ACC_MKNOD`.
pub const MKNOD: u8 = 1;
/// Opening it for reading (`r`).
pub const READ: u8 = 2;
/// Opening it for writing (`w`).
pub const WRITE: u8 = 4;
/// All three.
pub const RWM: u8 = READ | WRITE | MKNOD;

/// One allowed class of devices: `major`/`minor` `None` match any number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// Block or character.
    pub kind: Kind,
    /// The major number, or any.
    pub major: Option<u32>,
    /// The minor number, or any.
    pub minor: Option<u32>,
    /// The accesses allowed ([`READ`] | [`WRITE`] | [`MKNOD`]).
    pub access: u8,
}

const fn rule(kind: Kind, major: Option<u32>, minor: Option<u32>, access: u8) -> Rule {
    Rule {
        kind,
        major,
        minor,
        access,
    }
}

const fn chr(major: u32, minor: u32) -> Rule {
    rule(Kind::Char, Some(major), Some(minor), RWM)
}

/// What every container may do with devices; everything else is denied.
pub const DEFAULT: &[Rule] = &[
    // creating any node (using it is another matter): what LXC allows
    rule(Kind::Char, None, None, MKNOD),
    rule(Kind::Block, None, None, MKNOD),
    chr(1, 3),                              // null
    chr(1, 5),                              // zero
    chr(1, 7),                              // full
    chr(1, 8),                              // random
    chr(1, 9),                              // urandom
    chr(5, 0),                              // tty
    chr(5, 1),                              // console
    chr(5, 2),                              // ptmx
    rule(Kind::Char, Some(136), None, RWM), // pts/*, and the console (a host pty)
    chr(10, 229),                           // fuse
    chr(10, 200),                           // net/tun
];

impl Rule {
    /// The rule as a v1 `devices.allow` line: `c 1:3 rwm`, `c *:* m`.
    pub fn v1_line(&self) -> String {
        let kind = match self.kind {
            Kind::Block => 'b',
            Kind::Char => 'c',
        };
        let num = |n: Option<u32>| n.map_or_else(|| "*".to_string(), |n| n.to_string());
        let mut access = String::new();
        for (bit, c) in [(READ, 'r'), (WRITE, 'w'), (MKNOD, 'm')] {
            if self.access & bit != 0 {
                access.push(c);
            }
        }
        format!("{kind} {}:{} {access}", num(self.major), num(self.minor))
    }

    /// Whether the rule allows `access` (any combination of bits) to the device.
    pub fn allows(&self, kind: Kind, major: u32, minor: u32, access: u8) -> bool {
        self.kind == kind
            && self.major.is_none_or(|m| m == major)
            && self.minor.is_none_or(|m| m == minor)
            && access & !self.access == 0
    }
}

/// Whether `rules` allow `access` to the device (what the compiled program answers).
pub fn allowed(rules: &[Rule], kind: Kind, major: u32, minor: u32, access: u8) -> bool {
    rules.iter().any(|r| r.allows(kind, major, minor, access))
}

/// The v1 `devices.allow` lines of `rules`, in order.
pub fn v1_lines(rules: &[Rule]) -> Vec<String> {
    rules.iter().map(Rule::v1_line).collect()
}

/// Applies the default policy to the container's group `dir` in hierarchy `h`: the devices
/// controller's lists on v1, the device program on v2, nothing in other v1 hierarchies.
/// Idempotent.
pub fn confine(h: &Hierarchy, dir: &Path) -> Result<()> {
    if h.is_v2() {
        attach_program(dir, DEFAULT)
    } else if h.has_controller("devices") {
        apply_v1(dir, DEFAULT)
    } else {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// cgroup v1
// ---------------------------------------------------------------------------------------------

/// Makes the v1 devices group `dir` allow exactly `rules`. Left alone when `devices.list`
/// already says so (the kernel lists exceptions as they were added, merging only identical
/// device classes). Otherwise `devices.deny a` first — which the kernel refuses (EINVAL) on a
/// group with child groups, so empty children left by a container that ran before (its own
/// systemd's groups) are removed first; children with processes are an error.
pub fn apply_v1(dir: &Path, rules: &[Rule]) -> Result<()> {
    let want = v1_lines(rules);
    let list = dir.join("devices.list");
    let have = std::fs::read_to_string(&list).step(|| format!("read {}", list.display()))?;
    if same_lines(&have, &want) {
        return Ok(());
    }
    let deny = dir.join("devices.deny");
    match crate::sys::write_file(&deny, b"a") {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            remove_children(dir).step(|| {
                format!(
                    "remove the child groups of {} to restrict its devices",
                    dir.display()
                )
            })?;
            write_when_childless(&deny, b"a").step(|| format!("write a to {}", deny.display()))?;
        }
        Err(e) => return Err(Error::os(format!("write a to {}", deny.display()), e)),
    }
    let allow = dir.join("devices.allow");
    for l in &want {
        crate::sys::write_file(&allow, l.as_bytes())
            .step(|| format!("write {l} to {}", allow.display()))?;
    }
    Ok(())
}

/// Whether `list` (a `devices.list`) holds exactly the lines `want`, in any order.
fn same_lines(list: &str, want: &[String]) -> bool {
    let mut have: Vec<&str> = list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let mut want: Vec<&str> = want.iter().map(String::as_str).collect();
    have.sort_unstable();
    want.sort_unstable();
    have == want
}

/// Writes `value` to `file`, waiting out EINVAL for up to a second: a removed child group stays
/// online, and so forbids `deny a`, until the kernel has finished taking it down (after an RCU
/// grace period).
fn write_when_childless(file: &Path, value: &[u8]) -> io::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        match crate::sys::write_file(file, value) {
            Err(e)
                if e.raw_os_error() == Some(libc::EINVAL)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            r => return r,
        }
    }
}

/// Removes the child groups of `dir`, deepest first (rmdir fails with EBUSY on one that still
/// has processes).
fn remove_children(dir: &Path) -> io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            remove_children(&e.path())?;
            match std::fs::remove_dir(e.path()) {
                Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
                _ => {}
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// cgroup v2: the BPF program
// ---------------------------------------------------------------------------------------------

/// One eBPF instruction (`struct bpf_insn`; registers packed dst low nibble, src high).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    /// Opcode.
    pub code: u8,
    /// `dst | src << 4`.
    pub regs: u8,
    /// Jump offset (from the next instruction) or memory offset.
    pub off: i16,
    /// Immediate.
    pub imm: i32,
}

// opcodes (class | op | source), from include/uapi/linux/bpf_common.h and bpf.h
const LDX_MEM_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const ALU32_MOV_X: u8 = 0xbc; // BPF_ALU | BPF_MOV | BPF_X
const ALU32_AND_K: u8 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const ALU32_RSH_K: u8 = 0x74; // BPF_ALU | BPF_RSH | BPF_K
const ALU64_MOV_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const JMP32_JNE_K: u8 = 0x56; // BPF_JMP32 | BPF_JNE | BPF_K
const JMP32_JNE_X: u8 = 0x5e; // BPF_JMP32 | BPF_JNE | BPF_X
const JMP_EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (dst & 0xf) | (src << 4),
        off,
        imm,
    }
}

// registers: r1 the context, then scratch; r2 type, r3 access, r4 major, r5 minor
const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R5: u8 = 5;

/// Compiles `rules` to a `BPF_PROG_TYPE_CGROUP_DEVICE` program: 1 (allow) when a rule matches
/// the access the kernel asks about, else 0. The context (`struct bpf_cgroup_dev_ctx`) is
/// `access_type` (device kind in the low 16 bits, access bits in the high 16), `major`,
/// `minor`, each a u32. One access check may ask for several bits at once (an `O_RDWR` open):
/// a rule matches only if it allows all of them.
pub fn program(rules: &[Rule]) -> Vec<Insn> {
    let mut p = vec![
        insn(LDX_MEM_W, R2, R1, 0, 0),       // r2 = ctx->access_type
        insn(ALU32_MOV_X, R3, R2, 0, 0),     // w3 = w2
        insn(ALU32_AND_K, R2, 0, 0, 0xffff), // w2 &= 0xffff: the kind
        insn(ALU32_RSH_K, R3, 0, 0, 16),     // w3 >>= 16: the access
        insn(LDX_MEM_W, R4, R1, 4, 0),       // r4 = ctx->major
        insn(LDX_MEM_W, R5, R1, 8, 0),       // r5 = ctx->minor
    ];
    for r in rules {
        // the tests that skip to the next rule, each with the length of what follows it
        let mut block: Vec<Vec<Insn>> = vec![vec![insn(JMP32_JNE_K, R2, 0, 0, r.kind as i32)]];
        if r.access & RWM != RWM {
            block.push(vec![
                insn(ALU32_MOV_X, R1, R3, 0, 0),                        // w1 = access
                insn(ALU32_AND_K, R1, 0, 0, i32::from(r.access & RWM)), // w1 &= allowed
                insn(JMP32_JNE_X, R1, R3, 0, 0), // not all of it allowed: next rule
            ]);
        }
        if let Some(m) = r.major {
            block.push(vec![insn(JMP32_JNE_K, R4, 0, 0, m as i32)]);
        }
        if let Some(m) = r.minor {
            block.push(vec![insn(JMP32_JNE_K, R5, 0, 0, m as i32)]);
        }
        block.push(vec![
            insn(ALU64_MOV_K, R0, 0, 0, 1),
            insn(JMP_EXIT, 0, 0, 0, 0),
        ]);
        let flat: Vec<Insn> = block.into_iter().flatten().collect();
        let len = flat.len();
        // every jump of the block goes to its end
        p.extend(flat.into_iter().enumerate().map(|(i, mut x)| {
            if x.code == JMP32_JNE_K || x.code == JMP32_JNE_X {
                x.off = (len - i - 1) as i16;
            }
            x
        }));
    }
    p.push(insn(ALU64_MOV_K, R0, 0, 0, 0));
    p.push(insn(JMP_EXIT, 0, 0, 0, 0));
    p
}

/// The prefix of the names of berth's device programs.
const NAME_PREFIX: &str = "berth_dev_";

/// The program's name: the prefix and a hash of its instructions (15 characters: the kernel
/// keeps 16 with the NUL), so that an attached program says which policy it is.
pub fn program_name(insns: &[Insn]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for i in insns {
        h.update([i.code, i.regs]);
        h.update(i.off.to_le_bytes());
        h.update(i.imm.to_le_bytes());
    }
    let d = h.finalize();
    let hex: String = d.iter().take(3).map(|b| format!("{b:02x}")).collect();
    format!("{NAME_PREFIX}{}", &hex[..5])
}

// bpf(2) commands, program and attach types, flags (include/uapi/linux/bpf.h)
const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_ATTACH: libc::c_int = 8;
const BPF_PROG_DETACH: libc::c_int = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_int = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_int = 15;
const BPF_PROG_QUERY: libc::c_int = 16;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;
const BPF_OBJ_NAME_LEN: usize = 16;

/// `union bpf_attr` for BPF_PROG_LOAD, up to `expected_attach_type`.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; BPF_OBJ_NAME_LEN],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// For BPF_PROG_ATTACH and BPF_PROG_DETACH, up to `replace_bpf_fd`.
#[repr(C)]
#[derive(Default)]
struct AttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
    _pad: u32,
}

/// For BPF_PROG_QUERY, up to `prog_cnt`.
#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
}

/// For BPF_PROG_GET_FD_BY_ID.
#[repr(C)]
#[derive(Default)]
struct GetIdAttr {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

/// For BPF_OBJ_GET_INFO_BY_FD.
#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// `struct bpf_prog_info` up to `name`.
#[repr(C)]
#[derive(Default)]
struct ProgInfo {
    prog_type: u32,
    id: u32,
    tag: [u8; 8],
    jited_prog_len: u32,
    xlated_prog_len: u32,
    jited_prog_insns: u64,
    xlated_prog_insns: u64,
    load_time: u64,
    created_by_uid: u32,
    nr_map_ids: u32,
    map_ids: u64,
    name: [u8; BPF_OBJ_NAME_LEN],
}

/// bpf(2) with `attr`, whose type is one of the `*Attr` structs above.
fn bpf<T>(cmd: libc::c_int, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, initialized #[repr(C)] prefix of `union bpf_attr` for `cmd`,
    // of the size passed; the kernel zero-fills the rest and writes at most that many bytes.
    // Pointers inside it point to buffers that outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A new fd returned by bpf(2).
fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    let fd = i32::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: bpf(2) just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Loads `insns` as a cgroup device program named `name`. On failure the verifier's log is
/// asked for and put in the error.
pub fn load(insns: &[Insn], name: &str) -> Result<OwnedFd> {
    let license = c"Apache-2.0";
    let mut prog_name = [0u8; BPF_OBJ_NAME_LEN];
    for (d, s) in prog_name
        .iter_mut()
        .zip(name.bytes().take(BPF_OBJ_NAME_LEN - 1))
    {
        *d = s;
    }
    let attr = |log: &mut Vec<u8>| ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: u32::from(!log.is_empty()),
        log_size: log.len() as u32,
        log_buf: if log.is_empty() {
            0
        } else {
            log.as_mut_ptr() as u64
        },
        prog_name,
        ..Default::default()
    };
    let mut none = Vec::new();
    match bpf(BPF_PROG_LOAD, &mut attr(&mut none)) {
        Ok(fd) => owned(fd).step(|| "load the device program"),
        Err(e) => {
            let mut log = vec![0u8; 64 * 1024];
            let _ = bpf(BPF_PROG_LOAD, &mut attr(&mut log)).map(owned);
            let end = log.iter().position(|&b| b == 0).unwrap_or(0);
            let verifier = String::from_utf8_lossy(&log[..end]);
            let verifier: Vec<&str> = verifier.lines().rev().take(4).collect();
            Err(Error::os(
                format!(
                    "load the device program (verifier: {})",
                    verifier.into_iter().rev().collect::<Vec<_>>().join("; ")
                ),
                e,
            ))
        }
    }
}

/// Opens a cgroup2 directory for bpf(2).
fn open_cgroup(dir: &Path) -> Result<OwnedFd> {
    let c = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| Error::Invalid(format!("a NUL in {}", dir.display())))?;
    // SAFETY: open(2) of a NUL-terminated path; the fd is owned below.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(Error::os(
            format!("open cgroup {}", dir.display()),
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: a fresh fd from open(2).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The ids of the device programs attached to the group itself (not inherited ones).
fn query(cg: &OwnedFd) -> io::Result<Vec<u32>> {
    let mut ids = vec![0u32; 64];
    let mut a = QueryAttr {
        target_fd: cg.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..Default::default()
    };
    match bpf(BPF_PROG_QUERY, &mut a) {
        Ok(_) => {}
        // more than we asked for: the first ones are filled in
        Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => a.prog_cnt = ids.len() as u32,
        Err(e) => return Err(e),
    }
    ids.truncate((a.prog_cnt as usize).min(64));
    Ok(ids)
}

/// An attached program's fd and name, or `None` when it went away meanwhile.
fn prog_by_id(id: u32) -> io::Result<Option<(OwnedFd, String)>> {
    let fd = match bpf(
        BPF_PROG_GET_FD_BY_ID,
        &mut GetIdAttr {
            prog_id: id,
            ..Default::default()
        },
    ) {
        Ok(fd) => owned(fd)?,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut info = ProgInfo::default();
    let mut a = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of::<ProgInfo>() as u32,
        info: &mut info as *mut ProgInfo as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a)?;
    let end = info
        .name
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(info.name.len());
    Ok(Some((
        fd,
        String::from_utf8_lossy(&info.name[..end]).into_owned(),
    )))
}

/// The names of the device programs attached to the cgroup2 group `dir` itself.
pub fn attached_programs(dir: &Path) -> Result<Vec<String>> {
    let cg = open_cgroup(dir)?;
    let ids = query(&cg).step(|| format!("query the device programs of {}", dir.display()))?;
    let mut names = Vec::new();
    for id in ids {
        if let Some((_, name)) = prog_by_id(id).step(|| format!("look at device program {id}"))? {
            names.push(name);
        }
    }
    Ok(names)
}

/// Attaches the program of `rules` to the cgroup2 group `dir` unless it is attached already;
/// berth's programs of other policies attached there are detached once the new one is.
pub fn attach_program(dir: &Path, rules: &[Rule]) -> Result<()> {
    let insns = program(rules);
    let name = program_name(&insns);
    let cg = open_cgroup(dir)?;
    let ids = query(&cg).step(|| format!("query the device programs of {}", dir.display()))?;
    let mut stale = Vec::new();
    for id in ids {
        match prog_by_id(id).step(|| format!("look at device program {id} of {}", dir.display()))? {
            Some((_, n)) if n == name => return Ok(()),
            Some((fd, n)) if n.starts_with(NAME_PREFIX) => stale.push(fd),
            _ => {}
        }
    }
    let prog = load(&insns, &name)?;
    let mut a = AttachAttr {
        target_fd: cg.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        ..Default::default()
    };
    bpf(BPF_PROG_ATTACH, &mut a)
        .step(|| format!("attach the device program to {}", dir.display()))?;
    for old in stale {
        let mut a = AttachAttr {
            target_fd: cg.as_raw_fd() as u32,
            attach_bpf_fd: old.as_raw_fd() as u32,
            attach_type: BPF_CGROUP_DEVICE,
            ..Default::default()
        };
        match bpf(BPF_PROG_DETACH, &mut a) {
            Err(e) if e.raw_os_error() != Some(libc::ENOENT) => {
                return Err(Error::os(
                    format!("detach an older device program from {}", dir.display()),
                    e,
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_policy_renders_as_lxc_writes_it() {
        assert_eq!(
            v1_lines(DEFAULT),
            [
                "c *:* m",
                "b *:* m",
                "c 1:3 rwm",
                "c 1:5 rwm",
                "c 1:7 rwm",
                "c 1:8 rwm",
                "c 1:9 rwm",
                "c 5:0 rwm",
                "c 5:1 rwm",
                "c 5:2 rwm",
                "c 136:* rwm",
                "c 10:229 rwm",
                "c 10:200 rwm",
            ]
        );
        let partial = [
            rule(Kind::Block, Some(7), None, READ | WRITE),
            rule(Kind::Char, None, Some(4), READ),
        ];
        assert_eq!(v1_lines(&partial), ["b 7:* rw", "c *:4 r"]);
    }

    #[test]
    fn a_list_in_another_order_is_the_same_policy() {
        let want = v1_lines(DEFAULT);
        let mut lines = want.clone();
        lines.reverse();
        assert!(same_lines(&(lines.join("\n") + "\n"), &want));
        assert!(!same_lines("a *:* rwm\n", &want));
        assert!(!same_lines(&want[1..].join("\n"), &want));
    }

    /// Runs `p` as the kernel would, for the instructions `program` emits (anything else fails
    /// the test): the context is (access_type, major, minor).
    fn run(p: &[Insn], ctx: [u32; 3]) -> u64 {
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        for _ in 0..10_000 {
            let i = p[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            pc += 1;
            match i.code {
                LDX_MEM_W => {
                    assert_eq!(src, 1, "loads come from the context");
                    r[dst] = u64::from(ctx[(i.off / 4) as usize]);
                }
                ALU32_MOV_X => r[dst] = r[src] & 0xffff_ffff,
                ALU32_AND_K => r[dst] = (r[dst] as u32 & i.imm as u32) as u64,
                ALU32_RSH_K => r[dst] = ((r[dst] as u32) >> i.imm) as u64,
                ALU64_MOV_K => r[dst] = i.imm as i64 as u64,
                JMP32_JNE_K if r[dst] as u32 != i.imm as u32 => {
                    pc = (pc as isize + i.off as isize) as usize
                }
                JMP32_JNE_X if r[dst] as u32 != r[src] as u32 => {
                    pc = (pc as isize + i.off as isize) as usize
                }
                JMP32_JNE_K | JMP32_JNE_X => {}
                JMP_EXIT => return r[0],
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
        panic!("the program did not end");
    }

    #[test]
    fn the_program_answers_as_the_rules_do() {
        let odd = [
            rule(Kind::Block, Some(7), None, READ | WRITE),
            rule(Kind::Char, None, Some(4), READ),
            rule(Kind::Char, Some(u32::MAX), Some(0x8000_0000), RWM),
        ];
        let majors = [0, 1, 4, 5, 7, 10, 136, 254, 0x8000_0000, u32::MAX];
        let minors = [
            0,
            1,
            3,
            4,
            5,
            7,
            8,
            9,
            11,
            200,
            229,
            12345,
            0x8000_0000,
            u32::MAX,
        ];
        for rules in [DEFAULT, &odd[..], &[]] {
            let p = program(rules);
            for kind in [Kind::Block, Kind::Char] {
                for &major in &majors {
                    for &minor in &minors {
                        for access in 1..=RWM {
                            let ctx = [(u32::from(access) << 16) | kind as u32, major, minor];
                            let want = u64::from(allowed(rules, kind, major, minor, access));
                            assert_eq!(
                                run(&p, ctx),
                                want,
                                "{kind:?} {major}:{minor} access {access} under {rules:?}"
                            );
                        }
                    }
                }
            }
        }
        // what a container sees
        assert!(allowed(DEFAULT, Kind::Char, 1, 3, READ | WRITE));
        assert!(allowed(DEFAULT, Kind::Char, 136, 42, READ | WRITE));
        assert!(allowed(DEFAULT, Kind::Char, 1, 11, MKNOD));
        assert!(!allowed(DEFAULT, Kind::Char, 1, 11, WRITE));
        assert!(!allowed(DEFAULT, Kind::Block, 8, 0, READ));
        assert!(!allowed(DEFAULT, Kind::Char, 1, 1, READ | MKNOD));
    }

    #[test]
    fn the_program_name_fits_and_follows_the_policy() {
        let a = program_name(&program(DEFAULT));
        assert_eq!(a.len(), BPF_OBJ_NAME_LEN - 1);
        assert!(
            a.starts_with(NAME_PREFIX) && a.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "{a}"
        );
        assert_ne!(a, program_name(&program(&DEFAULT[1..])));
        assert_eq!(a, program_name(&program(DEFAULT)));
    }

    fn root() -> bool {
        // SAFETY: geteuid has no failure mode.
        unsafe { libc::geteuid() == 0 }
    }

    /// A scratch group in `h`, removed on drop.
    struct Scratch(std::path::PathBuf);

    impl Scratch {
        fn new(h: &Hierarchy, what: &str) -> Scratch {
            let d = h
                .mountpoint
                .join(format!("berth-devtest-{what}-{}", std::process::id()));
            let _ = remove_children(&d);
            let _ = std::fs::remove_dir(&d);
            std::fs::create_dir(&d).unwrap();
            Scratch(d)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = remove_children(&self.0);
            for _ in 0..100 {
                if std::fs::remove_dir(&self.0).is_ok() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }

    fn hierarchy(pick: impl Fn(&Hierarchy) -> bool) -> Option<Hierarchy> {
        crate::cgroup::Layout::detect()
            .ok()?
            .hierarchies
            .into_iter()
            .find(pick)
    }

    /// Forks a child that joins `group` and reports, one bit each (set = as expected): 1,
    /// /dev/null opens read-write; 2, a char node 1:11 can be made (at `node` + "c"); 4, the
    /// char node 1:11 the host made at `node` does not open for writing, with EPERM; 8, a block
    /// node 7:0 can be made (at `node` + "b").
    fn probe_in(group: &Path, node: &Path) -> i32 {
        let path = |suffix: &str| std::path::PathBuf::from(format!("{}{suffix}", node.display()));
        let cstr = |p: &Path| CString::new(p.as_os_str().as_bytes()).unwrap();
        let clean = || {
            for s in ["", "c", "b"] {
                let _ = std::fs::remove_file(path(s));
            }
        };
        clean();
        let (host, chr, blk) = (cstr(&path("")), cstr(&path("c")), cstr(&path("b")));
        let procs = cstr(&group.join("cgroup.procs"));
        let null = c"/dev/null";
        assert_eq!(
            // SAFETY: mknod(2) on a NUL-terminated path.
            unsafe { libc::mknod(host.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 11)) },
            0
        );
        // SAFETY: the child makes only async-signal-safe calls (open, write, close, mknod,
        // _exit) on data prepared before the fork.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: as above.
            unsafe {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    libc::_exit(100);
                }
                libc::close(fd);
                let mut bits = 0;
                let fd = libc::open(null.as_ptr(), libc::O_RDWR);
                if fd >= 0 {
                    bits |= 1;
                    libc::close(fd);
                }
                if libc::mknod(chr.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 11)) == 0 {
                    bits |= 2;
                }
                let fd = libc::open(host.as_ptr(), libc::O_WRONLY);
                if fd < 0 && *libc::__errno_location() == libc::EPERM {
                    bits |= 4;
                } else if fd >= 0 {
                    libc::close(fd);
                }
                if libc::mknod(blk.as_ptr(), libc::S_IFBLK | 0o600, libc::makedev(7, 0)) == 0 {
                    bits |= 8;
                }
                libc::_exit(bits);
            }
        }
        let status = crate::sys::waitpid_blocking(pid).unwrap();
        clean();
        assert!(libc::WIFEXITED(status), "status {status:#x}");
        libc::WEXITSTATUS(status)
    }

    fn probe_node(what: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("berth-devtest-{what}-{}", std::process::id()))
    }

    #[test]
    fn an_attached_program_confines_a_group_once() {
        // (BPF_PROG_TEST_RUN does not run cgroup device programs: the kernel's own check is used)
        let Some(h) = hierarchy(Hierarchy::is_v2).filter(|_| root()) else {
            eprintln!("skipped: needs root and a cgroup2 mount");
            return;
        };
        let g = Scratch::new(&h, "bpf");
        let node = probe_node("bpf");
        // before: the node opens (the probe's bit 4 is clear)
        assert_eq!(probe_in(&g.0, &node), 1 | 2 | 8);
        attach_program(&g.0, DEFAULT).unwrap();
        attach_program(&g.0, DEFAULT).unwrap();
        let name = program_name(&program(DEFAULT));
        assert_eq!(
            attached_programs(&g.0).unwrap(),
            std::slice::from_ref(&name),
            "attached once"
        );
        assert_eq!(probe_in(&g.0, &node), 1 | 2 | 4 | 8);
        // a group below inherits it
        let child = g.0.join("below");
        std::fs::create_dir(&child).unwrap();
        assert_eq!(probe_in(&child, &node), 1 | 2 | 4 | 8);
        // another policy replaces it: nothing but null, not even mknod
        attach_program(&g.0, &[chr(1, 3)]).unwrap();
        let names = attached_programs(&g.0).unwrap();
        assert_eq!(names.len(), 1, "{names:?}");
        assert_ne!(names[0], name);
        assert_eq!(probe_in(&g.0, &node), 1 | 4);
    }

    #[test]
    fn the_v1_lists_say_the_policy_also_over_leftover_groups() {
        let Some(h) = hierarchy(|h| h.has_controller("devices")).filter(|_| root()) else {
            eprintln!("skipped: needs root and a v1 devices hierarchy");
            return;
        };
        let g = Scratch::new(&h, "v1");
        let list = || std::fs::read_to_string(g.0.join("devices.list")).unwrap();
        assert_eq!(list().trim(), "a *:* rwm");
        apply_v1(&g.0, DEFAULT).unwrap();
        assert_eq!(list().lines().collect::<Vec<_>>(), v1_lines(DEFAULT));
        // applied again, with a child group (which forbids `deny a`): left alone
        std::fs::create_dir(g.0.join("kept")).unwrap();
        apply_v1(&g.0, DEFAULT).unwrap();
        assert!(g.0.join("kept").is_dir());
        assert_eq!(probe_in(&g.0, &probe_node("v1")), 1 | 2 | 4 | 8);
        // a group made by an older berth (allow all) with an empty child left in it
        std::fs::remove_dir(g.0.join("kept")).unwrap();
        write_when_childless(&g.0.join("devices.allow"), b"a").unwrap();
        std::fs::create_dir_all(g.0.join("init.scope/deeper")).unwrap();
        apply_v1(&g.0, DEFAULT).unwrap();
        assert_eq!(list().lines().collect::<Vec<_>>(), v1_lines(DEFAULT));
    }
}
