//! Exec events: sched_process_exec fires in the task after a successful
//! exec, once the new image is mapped and before it runs a single
//! instruction, so the argv read here is the one the kernel copied onto
//! the new stack (mm->arg_start..arg_end): the program cannot have
//! rewritten it yet. Called from the tripwire's program on that
//! tracepoint (`tripwire/exec.rs`), one program per hook.
use aya_ebpf::{
    helpers::{bpf_get_current_task, generated},
    programs::RawTracePointContext,
    EbpfContext,
};
use killpath_common::{
    trail::{kind, TEXT_BYTES},
    GuardConfig,
};

use super::{emit, recording, OFFSETS};
use crate::{kcgroup::read, maps::OFFSETS as KERNEL_OFFSETS};

/// Bytes of `text` the filename may take; argv gets the rest.
const NAME_MAX: usize = 256;
/// Mask keeping a length below [`NAME_MAX`] for the verifier.
const NAME_MASK: usize = NAME_MAX - 1;
/// Mask keeping argv's length inside the rest of `text`.
const ARGV_MASK: usize = TEXT_BYTES - NAME_MAX - 1;

/// (s_dev, i_ino) of `bprm->file`: file -> f_path.dentry -> d_inode ->
/// i_ino and i_sb -> s_dev. None where an offset is missing.
#[inline(always)]
fn exe_identity(bprm: u64) -> Option<(u32, u64)> {
    let t = OFFSETS.get(0).filter(|o| o.file_valid != 0)?;
    let k = KERNEL_OFFSETS.get(0).filter(|o| o.fs_valid != 0)?;
    let file = read::<u64>(bprm, t.bprm_file)?;
    let dentry = read::<u64>(file, k.file_f_path + k.path_dentry)?;
    let inode = read::<u64>(dentry, k.dentry_d_inode)?;
    let ino = read::<u64>(inode, k.inode_i_ino)?;
    let sb = read::<u64>(inode, k.inode_i_sb)?;
    Some((read::<u32>(sb, k.sb_s_dev)?, ino))
}

/// sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm).
#[inline(always)]
pub fn on_exec(ctx: &RawTracePointContext, cfg: &GuardConfig) {
    let Some((id, level)) = recording(cfg) else { return };
    // SAFETY: raw tracepoint argument 2 is the linux_binprm pointer.
    let bprm: u64 = unsafe { *(ctx.as_ptr() as *const u64).add(2) };
    let filename: u64 = KERNEL_OFFSETS.get(0).filter(|o| o.names_valid != 0).and_then(|o| read::<u64>(bprm, o.bprm_filename)).unwrap_or(0);
    // The file the kernel executed (bprm->file: for a script, the script;
    // execveat(AT_EMPTY_PATH) and /dev/fd/N name it only by descriptor):
    // its device and inode identify it however the workload named it.
    let exe = exe_identity(bprm);
    let args = OFFSETS.get(0).filter(|o| o.valid != 0).and_then(|o| {
        // SAFETY: helper without arguments.
        let task = unsafe { bpf_get_current_task() };
        let mm = read::<u64>(task, o.task_mm)?;
        Some((read::<u64>(mm, o.mm_arg_start)?, read::<u64>(mm, o.mm_arg_end)?))
    });
    emit(id, level, kind::EXEC, |ev| {
        if let Some((dev, ino)) = exe {
            ev.value = ino;
            ev.peer = dev;
        }
        let text = ev.text.as_mut_ptr();
        let mut used = 0usize;
        if filename != 0 {
            // SAFETY: at most NAME_MAX bytes into `text` (TEXT_BYTES long).
            let n = unsafe { generated::bpf_probe_read_kernel_str(text.cast(), NAME_MAX as u32, filename as *const _) };
            if n > 0 {
                // n counts the NUL: the filename and its separator.
                used = (n as usize) & NAME_MASK;
            }
        }
        if let Some((start, end)) = args {
            let want = end.saturating_sub(start) as usize;
            let len = if want > ARGV_MASK { ARGV_MASK } else { want } & ARGV_MASK;
            if want > ARGV_MASK {
                ev.truncated = 1;
            }
            if len > 0 && used < NAME_MAX {
                // SAFETY: used < NAME_MAX and len <= ARGV_MASK keep the read
                // inside `text`; the source is the new image's stack.
                let r = unsafe { generated::bpf_probe_read_user(text.add(used).cast(), len as u32, start as *const _) };
                if r == 0 {
                    // argc is counted by the agent (the NULs in argv).
                    used += len;
                }
            }
        }
        ev.text_len = used as u32;
    });
}
