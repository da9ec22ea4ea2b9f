//! Device access under cgroup v2: a `BPF_PROG_TYPE_CGROUP_DEVICE` program
//! decides every open and mknod of a device node. To let a container open
//! its GPU, the hook loads a program that allows those nodes and then runs
//! the runtime's own program unchanged (its instructions, read back from the
//! kernel), and puts it in the runtime's place.
//!
//! Ref: include/uapi/linux/bpf.h (`bpf_cgroup_dev_ctx`, `bpf_attr`,
//! `bpf_prog_info`); runc libcontainer/cgroups/devices/ebpf (how runtimes
//! attach theirs: `BPF_F_ALLOW_MULTI`).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use thiserror::Error;

/// One eBPF instruction, as the kernel lays it out.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Insn {
    pub code: u8,
    /// dst in the low nibble, src in the high one.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

// Opcodes. Ref: include/uapi/linux/bpf_common.h, bpf.h.
const LDX_MEM_W: u8 = 0x01 | 0x60; // BPF_LDX | BPF_MEM | BPF_W
const ALU64_AND_K: u8 = 0x07 | 0x50;
const ALU64_RSH_K: u8 = 0x07 | 0x70;
const ALU64_MOV_K: u8 = 0x07 | 0xb0;
const ALU64_MOV_X: u8 = 0x07 | 0xb0 | 0x08;
const JMP_JNE_K: u8 = 0x05 | 0x50;
const JMP_EXIT: u8 = 0x05 | 0x90;

/// `bpf_cgroup_dev_ctx.access_type`: type in the low 16 bits, access in
/// the high. Ref: BPF_DEVCG_DEV_CHAR, BPF_DEVCG_ACC_READ/WRITE/MKNOD.
pub const DEV_CHAR: i32 = 2;
pub const ACC_MKNOD: i32 = 1;
pub const ACC_READ: i32 = 2;
pub const ACC_WRITE: i32 = 4;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

/// A character device the program lets through for read and write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allow {
    pub major: u32,
    pub minor: u32,
}

/// The program: r2 = type, r3 = access, r4 = major, r5 = minor (r1, the
/// context, is left as it came); one block per allowed node that returns 1
/// on a match; then `rest` (the runtime's program, which reads the context
/// again itself) or, with none, a denial.
pub fn program(allow: &[Allow], rest: Option<&[Insn]>) -> Vec<Insn> {
    let mut p = vec![
        insn(LDX_MEM_W, 2, 1, 0, 0),
        insn(ALU64_AND_K, 2, 0, 0, 0xffff),
        insn(LDX_MEM_W, 3, 1, 0, 0),
        insn(ALU64_RSH_K, 3, 0, 0, 16),
        insn(LDX_MEM_W, 4, 1, 4, 0),
        insn(LDX_MEM_W, 5, 1, 8, 0),
    ];
    for a in allow {
        // Each jump skips to the end of its 8-instruction block.
        p.extend([
            insn(JMP_JNE_K, 2, 0, 7, DEV_CHAR),
            insn(ALU64_MOV_X, 6, 3, 0, 0),
            insn(ALU64_AND_K, 6, 0, 0, !(ACC_READ | ACC_WRITE) & 0xffff),
            insn(JMP_JNE_K, 6, 0, 4, 0),
            insn(JMP_JNE_K, 4, 0, 3, a.major as i32),
            insn(JMP_JNE_K, 5, 0, 2, a.minor as i32),
            insn(ALU64_MOV_K, 0, 0, 0, 1),
            insn(JMP_EXIT, 0, 0, 0, 0),
        ]);
    }
    match rest {
        Some(r) => p.extend_from_slice(r),
        None => p.extend([insn(ALU64_MOV_K, 0, 0, 0, 0), insn(JMP_EXIT, 0, 0, 0, 0)]),
    }
    p
}

#[derive(Debug, Error)]
pub enum BpfError {
    #[error("bpf {op} failed: {source}; loading device programs needs root (CAP_SYS_ADMIN or CAP_BPF) and a kernel with cgroup device programs")]
    Syscall {
        op: &'static str,
        #[source]
        source: Errno,
    },
    #[error("the kernel refused the device program: {0}")]
    Verifier(String),
    #[error("{0} device programs are attached to the container's cgroup; gpushare extends exactly one (the runtime's)")]
    TooMany(usize),
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
pub const BPF_F_ALLOW_MULTI: u32 = 2;
const BPF_F_REPLACE: u32 = 4;

/// Calls bpf(2) with `attr` (one of the `bpf_attr` union's members).
fn bpf<T>(cmd: libc::c_long, attr: &mut T, op: &'static str) -> Result<i64, BpfError> {
    // SAFETY: attr is a live, properly laid out bpf_attr member of the size
    // passed; the kernel reads (and for queries writes) only that much.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    Errno::result(r).map_err(|source| BpfError::Syscall { op, source })
}

#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// Loads a device program; the verifier's log comes back in the error.
pub fn load(insns: &[Insn]) -> Result<OwnedFd, BpfError> {
    let mut log = vec![0u8; 1 << 16];
    let mut name = [0u8; 16];
    name[..8].copy_from_slice(b"gpushare");
    let mut attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: c"Apache-2.0".as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        prog_name: name,
        ..Default::default()
    };
    match bpf(BPF_PROG_LOAD, &mut attr, "load") {
        // SAFETY: BPF_PROG_LOAD returned a fresh descriptor we now own.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
        Err(BpfError::Syscall {
            source: Errno::EACCES | Errno::EINVAL,
            ..
        }) if log[0] != 0 => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            Err(BpfError::Verifier(
                text.lines().last().unwrap_or("").to_owned(),
            ))
        }
        Err(e) => Err(e),
    }
}

#[repr(C)]
#[derive(Default)]
struct Query {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
}

/// The device programs attached to a cgroup, and the flags they were
/// attached with.
pub fn attached(cgroup: BorrowedFd) -> Result<(Vec<u32>, u32), BpfError> {
    let mut ids = [0u32; 64];
    let mut attr = Query {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..Default::default()
    };
    bpf(BPF_PROG_QUERY, &mut attr, "query")?;
    Ok((ids[..attr.prog_cnt as usize].to_vec(), attr.attach_flags))
}

#[repr(C)]
#[derive(Default)]
struct GetFdById {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct InfoByFd {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The head of `bpf_prog_info`: as far as the translated instructions.
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
}

/// An attached program by id, and its instructions as the kernel holds
/// them (what `bpftool prog dump xlated` shows).
pub fn fetch(id: u32) -> Result<(OwnedFd, Vec<Insn>), BpfError> {
    let mut attr = GetFdById {
        prog_id: id,
        ..Default::default()
    };
    // SAFETY: BPF_PROG_GET_FD_BY_ID returned a fresh descriptor we now own.
    let fd = unsafe {
        OwnedFd::from_raw_fd(bpf(BPF_PROG_GET_FD_BY_ID, &mut attr, "get program")? as i32)
    };
    let mut info = ProgInfo::default();
    let mut attr = InfoByFd {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of::<ProgInfo>() as u32,
        info: &mut info as *mut ProgInfo as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr, "read program")?;
    let n = info.xlated_prog_len as usize / std::mem::size_of::<Insn>();
    let mut insns = vec![Insn::default(); n];
    let mut info = ProgInfo {
        xlated_prog_len: info.xlated_prog_len,
        xlated_prog_insns: insns.as_mut_ptr() as u64,
        ..Default::default()
    };
    let mut attr = InfoByFd {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of::<ProgInfo>() as u32,
        info: &mut info as *mut ProgInfo as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr, "read program")?;
    Ok((fd, insns))
}

#[repr(C)]
#[derive(Default)]
struct Attach {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// Attaches `prog` to the cgroup with `flags`, replacing `old` in place
/// when given (one atomic step: no moment without a program).
pub fn attach(
    cgroup: BorrowedFd,
    prog: BorrowedFd,
    flags: u32,
    old: Option<BorrowedFd>,
) -> Result<(), BpfError> {
    let mut attr = Attach {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: flags | if old.is_some() { BPF_F_REPLACE } else { 0 },
        replace_bpf_fd: old.map_or(0, |o| o.as_raw_fd() as u32),
    };
    bpf(BPF_PROG_ATTACH, &mut attr, "attach").map(drop)
}

/// Lets the cgroup's processes read and write `allow` on top of whatever
/// the program attached there allows.
pub fn extend(cgroup: BorrowedFd, allow: &[Allow]) -> Result<(), BpfError> {
    // Ref: before Linux 5.11 BPF memory counts against RLIMIT_MEMLOCK.
    // Best effort: newer kernels account it to the memory cgroup instead.
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid rlimit struct; failure only leaves the limit as it was.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
    let (ids, flags) = attached(cgroup)?;
    match ids.as_slice() {
        [] => {
            let ours = load(&program(allow, None))?;
            attach(cgroup, ours.as_fd(), BPF_F_ALLOW_MULTI, None)
        }
        [id] => {
            let (old, insns) = fetch(*id)?;
            let ours = load(&program(allow, Some(&insns)))?;
            if flags & BPF_F_ALLOW_MULTI != 0 {
                attach(cgroup, ours.as_fd(), BPF_F_ALLOW_MULTI, Some(old.as_fd()))
            } else {
                // Attached alone (override or exclusive): a new program
                // with the same flags takes its place.
                attach(cgroup, ours.as_fd(), flags, None)
            }
        }
        many => Err(BpfError::TooMany(many.len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a device program on (type, access, major, minor): the subset
    /// of eBPF the programs here and runc's use, interpreted.
    fn run(p: &[Insn], typ: i32, access: i32, major: u32, minor: u32) -> u64 {
        let ctx = [((access as u32) << 16) | typ as u32, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = p[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            pc += 1;
            match i.code {
                LDX_MEM_W => {
                    assert_eq!(src, 1, "loads only from the context");
                    r[dst] = u64::from(ctx[i.off as usize / 4]);
                }
                ALU64_AND_K => r[dst] &= i.imm as i64 as u64,
                ALU64_RSH_K => r[dst] >>= i.imm,
                ALU64_MOV_K => r[dst] = i.imm as i64 as u64,
                ALU64_MOV_X => r[dst] = r[src],
                JMP_JNE_K => {
                    if r[dst] != i.imm as i64 as u64 {
                        pc = (pc as i64 + i64::from(i.off)) as usize;
                    }
                }
                JMP_EXIT => return r[0],
                c => panic!("opcode {c:#x} not interpreted"),
            }
        }
    }

    const RW: i32 = ACC_READ | ACC_WRITE;

    #[test]
    fn the_program_allows_exactly_the_listed_nodes_for_read_and_write() {
        let p = program(
            &[
                Allow {
                    major: 195,
                    minor: 1,
                },
                Allow {
                    major: 511,
                    minor: 0,
                },
            ],
            None,
        );
        assert_eq!(run(&p, DEV_CHAR, RW, 195, 1), 1);
        assert_eq!(run(&p, DEV_CHAR, ACC_READ, 195, 1), 1);
        assert_eq!(run(&p, DEV_CHAR, ACC_WRITE, 511, 0), 1);
        assert_eq!(run(&p, DEV_CHAR, RW, 195, 0), 0, "another GPU");
        assert_eq!(run(&p, DEV_CHAR, RW, 195, 255), 0, "not listed");
        assert_eq!(run(&p, DEV_CHAR, ACC_MKNOD, 195, 1), 0, "no mknod");
        assert_eq!(run(&p, DEV_CHAR, RW | ACC_MKNOD, 195, 1), 0);
        assert_eq!(
            run(&p, 1, RW, 195, 1),
            0,
            "a block device of the same numbers"
        );
        assert_eq!(
            run(&program(&[], None), DEV_CHAR, RW, 195, 1),
            0,
            "no list: deny all"
        );
    }

    #[test]
    fn the_runtimes_program_still_decides_everything_else() {
        // A runtime's program that allows /dev/null (1:3) and any mknod.
        let mut theirs = program(&[Allow { major: 1, minor: 3 }], None);
        theirs.truncate(theirs.len() - 2);
        theirs.extend([
            insn(JMP_JNE_K, 3, 0, 2, ACC_MKNOD),
            insn(ALU64_MOV_K, 0, 0, 0, 1),
            insn(JMP_EXIT, 0, 0, 0, 0),
            insn(ALU64_MOV_K, 0, 0, 0, 0),
            insn(JMP_EXIT, 0, 0, 0, 0),
        ]);
        let p = program(
            &[Allow {
                major: 195,
                minor: 1,
            }],
            Some(&theirs),
        );
        assert_eq!(run(&p, DEV_CHAR, RW, 195, 1), 1, "ours");
        assert_eq!(run(&p, DEV_CHAR, RW, 1, 3), 1, "theirs");
        assert_eq!(run(&p, DEV_CHAR, ACC_MKNOD, 195, 0), 1, "theirs");
        assert_eq!(run(&p, DEV_CHAR, RW, 195, 0), 0, "neither");
        // Ours never touches r1, so theirs reads the context as it came.
        assert!(p[..p.len() - theirs.len()]
            .iter()
            .all(|i| i.regs & 0xf != 1));
    }

    #[test]
    fn instructions_are_laid_out_as_the_kernel_reads_them() {
        assert_eq!(std::mem::size_of::<Insn>(), 8);
        let p = program(&[], None);
        // r2 = *(u32 *)(r1 + 0): code 0x61, dst 2, src 1.
        assert_eq!(
            p[0],
            Insn {
                code: 0x61,
                regs: 0x12,
                off: 0,
                imm: 0
            }
        );
        assert_eq!(p.last().unwrap().code, 0x95);
        assert_eq!(std::mem::size_of::<Query>(), 32);
        assert_eq!(std::mem::size_of::<Attach>(), 20);
    }
}
