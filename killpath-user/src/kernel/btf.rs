//! Kernel struct offsets from the running kernel's BTF
//! (/sys/kernel/btf/vmlinux). The fs.write and signal hooks follow kernel
//! pointers; Rust eBPF has no CO-RE relocations, so the agent resolves the
//! offsets here and hands them over in the KP_OFFSETS map. A missing field
//! makes the capability "not enforceable", with the reason.
use btf_rs::{Btf, Struct, Type};
use killpath_common::KernelOffsets;

pub(crate) const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// The running kernel's BTF, parsed once per process. The agent asks at
/// several places during its start (offsets, io_uring, tracepoints, the
/// 32-bit syscall entries); each parse of vmlinux's few MB took a large
/// share of an agent start (seconds in a debug build, more under the VM's
/// emulation). Read whole first: btf_rs's `from_file` seeks (an llseek
/// syscall) once per type through its BufReader.
pub fn vmlinux() -> Result<&'static Btf, String> {
    static BTF: std::sync::OnceLock<Result<Btf, String>> = std::sync::OnceLock::new();
    BTF.get_or_init(|| {
        let bytes = std::fs::read(VMLINUX).map_err(|e| format!("cannot read {VMLINUX}: {e}"))?;
        Btf::from_bytes(&bytes).map_err(|e| format!("cannot parse {VMLINUX}: {e}"))
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// Byte offset of `field` in `struct sname`, looking into anonymous
/// struct/union members.
pub(crate) fn offset(btf: &Btf, sname: &str, field: &str) -> Result<u32, String> {
    let types = btf.resolve_types_by_name(sname).map_err(|e| format!("struct {sname}: {e}"))?;
    types
        .iter()
        .filter_map(|t| match t {
            Type::Struct(s) => find(btf, s, field, 0),
            _ => None,
        })
        .next()
        .ok_or_else(|| format!("struct {sname} has no field {field} in this kernel's BTF"))
}

fn find(btf: &Btf, s: &Struct, field: &str, base: u32) -> Option<u32> {
    for m in &s.members {
        let name = btf.resolve_name(m).unwrap_or_default();
        if name == field {
            return Some((base + m.bit_offset()) / 8);
        }
        if name.is_empty() {
            if let Ok(Type::Struct(inner) | Type::Union(inner)) = btf.resolve_chained_type(m) {
                if let Some(o) = find(btf, &inner, field, base + m.bit_offset()) {
                    return Some(o);
                }
            }
        }
    }
    None
}

/// Offsets, and why fs.write / signal / self-protection cannot be enforced
/// (None: they can).
pub struct Resolved {
    pub offsets: KernelOffsets,
    pub fs_error: Option<String>,
    pub signal_error: Option<String>,
    /// Why membership tracking (marks, escape detection) cannot run here.
    pub members_error: Option<String>,
    pub protect_error: Option<String>,
}

/// Offsets the trail's exec event follows to the new program's argv
/// (task_struct.mm, mm_struct.arg_start/arg_end) and to the executed
/// file (linux_binprm.file); None without BTF or the argv fields (argv is
/// then left out of exec events), `file_valid` 0 without the file field.
pub fn trail_offsets() -> Option<killpath_common::trail::TrailOffsets> {
    let btf = vmlinux().ok()?;
    let bprm_file = offset(btf, "linux_binprm", "file").ok();
    Some(killpath_common::trail::TrailOffsets {
        task_mm: offset(btf, "task_struct", "mm").ok()?,
        mm_arg_start: offset(btf, "mm_struct", "arg_start").ok()?,
        mm_arg_end: offset(btf, "mm_struct", "arg_end").ok()?,
        valid: 1,
        bprm_file: bprm_file.unwrap_or(0),
        file_valid: u32::from(bprm_file.is_some()),
    })
}

pub fn resolve() -> Resolved {
    let btf = match vmlinux() {
        Ok(b) => b,
        Err(why) => {
            return Resolved {
                offsets: KernelOffsets::default(),
                fs_error: Some(why.clone()),
                signal_error: Some(why.clone()),
                members_error: Some(why.clone()),
                protect_error: Some(why),
            };
        }
    };
    let mut o = KernelOffsets::default();
    let fs = (|| -> Result<(), String> {
        o.file_f_mode = offset(btf, "file", "f_mode")?;
        o.file_f_path = offset(btf, "file", "f_path")?;
        o.path_dentry = offset(btf, "path", "dentry")?;
        o.dentry_d_parent = offset(btf, "dentry", "d_parent")?;
        o.dentry_d_inode = offset(btf, "dentry", "d_inode")?;
        o.inode_i_ino = offset(btf, "inode", "i_ino")?;
        o.inode_i_sb = offset(btf, "inode", "i_sb")?;
        o.inode_i_mode = offset(btf, "inode", "i_mode")?;
        o.sb_s_dev = offset(btf, "super_block", "s_dev")?;
        Ok(())
    })();
    let signal = (|| -> Result<(), String> {
        o.task_cgroups = offset(btf, "task_struct", "cgroups")?;
        o.css_set_dfl_cgrp = offset(btf, "css_set", "dfl_cgrp")?;
        o.cgroup_level = offset(btf, "cgroup", "level")?;
        o.cgroup_ancestors = offset(btf, "cgroup", "ancestors")?;
        o.cgroup_kn = offset(btf, "cgroup", "kn")?;
        o.kernfs_node_id = offset(btf, "kernfs_node", "id")?;
        Ok(())
    })();
    let names = (|| -> Result<(), String> {
        o.dentry_d_name = offset(btf, "dentry", "d_name")?;
        o.qstr_name = offset(btf, "qstr", "name")?;
        o.bprm_filename = offset(btf, "linux_binprm", "filename")?;
        Ok(())
    })();
    // Membership hooks follow the same cgroup pointers as signal, plus the
    // ids of the task they are handed.
    let members = signal.clone().and_then(|()| {
        o.task_pid = offset(btf, "task_struct", "pid")?;
        o.task_tgid = offset(btf, "task_struct", "tgid")?;
        o.task_signal = offset(btf, "task_struct", "signal")?;
        o.signal_live = offset(btf, "signal_struct", "live")?;
        o.task_flags = offset(btf, "task_struct", "flags")?;
        Ok(())
    });
    o.members_valid = u32::from(members.is_ok());
    // Self-protection: the fs and signal offsets, and these. Linux 6.15
    // renamed kernfs_node.parent to __parent (RCU-protected); same meaning.
    let protect = (|| -> Result<(), String> {
        fs.clone()?;
        signal.clone()?;
        o.inode_i_private = offset(btf, "inode", "i_private")?;
        o.kernfs_node_parent = offset(btf, "kernfs_node", "parent").or_else(|_| offset(btf, "kernfs_node", "__parent"))?;
        o.sb_s_magic = offset(btf, "super_block", "s_magic")?;
        o.task_tgid = offset(btf, "task_struct", "tgid")?;
        o.vfsmount_mnt_sb = offset(btf, "vfsmount", "mnt_sb")?;
        o.inode_i_rdev = offset(btf, "inode", "i_rdev")?;
        Ok(())
    })();
    // 32-bit syscalls at sys_exit (see killpath_common::compat): TS_COMPAT
    // in thread_info.status (thread_info is task_struct's first member
    // with THREAD_INFO_IN_TASK, x86_64 since 4.9; its offset is read anyway).
    if let (Ok(ti), Ok(status)) = (offset(btf, "task_struct", "thread_info"), offset(btf, "thread_info", "status")) {
        o.task_ti_status = ti + status;
        o.compat_valid = 1;
    }
    o.protect_valid = u32::from(protect.is_ok());
    o.names_valid = u32::from(names.is_ok());
    o.fs_valid = u32::from(fs.is_ok());
    o.signal_valid = u32::from(signal.is_ok());
    Resolved { offsets: o, fs_error: fs.err(), signal_error: signal.err(), members_error: members.err(), protect_error: protect.err() }
}

/// The kernel's dev_t (MKDEV: major << 20 | minor) of a user-space st_dev.
pub fn kernel_dev(st_dev: u64) -> u32 {
    let major = libc::major(st_dev);
    let minor = libc::minor(st_dev);
    (major << 20) | minor
}

/// The io_uring submission tracepoint to charge io_uring operations at,
/// and the offset of `opcode` in the `struct io_kiocb` it passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoUringSubmit {
    /// `io_uring_submit_req` (Linux 6.3+, `(struct io_kiocb *req)`) or
    /// `io_uring_submit_sqe` (Linux 5.19–6.2, `(struct io_kiocb *req, bool
    /// force_nonblock)`; 5.x before had the opcode as an argument, no
    /// request pointer, and is not used).
    pub tracepoint: &'static str,
    pub opcode_offset: u32,
}

/// Whether the raw tracepoint `name` exists and its first argument is a
/// `struct sname *`: every tracepoint built into the kernel has a
/// `btf_trace_<name>` typedef, a pointer to `void (void *__data, ARGS)`.
fn first_arg_is(btf: &Btf, name: &str, sname: &str) -> bool {
    let Ok(types) = btf.resolve_types_by_name(&format!("btf_trace_{name}")) else { return false };
    let Some(Type::Typedef(td)) = types.first() else { return false };
    let Ok(Type::Ptr(p)) = btf.resolve_chained_type(td) else { return false };
    let Ok(Type::FuncProto(fp)) = btf.resolve_chained_type(&p) else { return false };
    let Some(arg) = fp.parameters.get(1) else { return false };
    let Ok(Type::Ptr(ap)) = btf.resolve_chained_type(arg) else { return false };
    let Ok(Type::Struct(st)) = btf.resolve_chained_type(&ap) else { return false };
    btf.resolve_name(&st).is_ok_and(|n| n == sname)
}

/// Finds the io_uring submission tracepoint and the `io_kiocb.opcode`
/// offset from this kernel's BTF. Its own BTF read so that the throttle
/// does not share a failure with the LSM offsets; the error says why
/// io_uring is then counted per io_uring_enter only.
pub fn iouring_submit() -> Result<IoUringSubmit, String> {
    let btf = vmlinux()?;
    let tracepoint = ["io_uring_submit_req", "io_uring_submit_sqe"].into_iter().find(|n| first_arg_is(btf, n, "io_kiocb")).ok_or(
        "this kernel has no io_uring submission tracepoint taking the request (io_uring_submit_req, or io_uring_submit_sqe of Linux 5.19+; io_uring built in)",
    )?;
    match offset(btf, "io_kiocb", "opcode")? {
        0 => Err("struct io_kiocb has its opcode at offset 0, which this build does not expect".into()),
        opcode_offset => Ok(IoUringSubmit { tracepoint, opcode_offset }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kdev_encoding() {
        assert_eq!(kernel_dev(libc::makedev(8, 1)), (8 << 20) | 1);
        assert_eq!(kernel_dev(libc::makedev(0, 42)), 42);
    }

    #[test]
    fn resolves_on_this_kernel_when_btf_exists() {
        if std::path::Path::new(VMLINUX).exists() {
            let r = resolve();
            assert!(r.fs_error.is_none(), "{:?}", r.fs_error);
            assert!(r.protect_error.is_none(), "{:?}", r.protect_error);
            assert!(r.offsets.kernfs_node_parent > 0 && r.offsets.sb_s_magic > 0 && r.offsets.task_tgid > 0);
            assert!(r.offsets.file_f_path > 0 && r.offsets.dentry_d_parent > 0);
        }
    }
}
