//! The file part of the activity trail (issue 16, BPF LSM only): the
//! programs that record file events, and the struct offsets their path walk
//! needs beyond [`super::KernelOffsets`] (crossing mount points).

/// `Array<FileOffsets>` of one entry, filled by the agent from BTF.
pub const OFFSETS: &str = "KP_TRAIL_FILE_OFFSETS";

/// The trail's file programs and the BPF LSM hook each one attaches to.
/// `file_truncate` (ftruncate(2) since Linux 6.2; 6.1 calls path_truncate
/// for it) is attached only where the kernel has it.
pub const PROGRAMS: &[(&str, &str)] = &[
    ("kp_trail_file_open", "file_open"),
    ("kp_trail_file_permission", "file_permission"),
    ("kp_trail_path_truncate", "path_truncate"),
    ("kp_trail_path_unlink", "path_unlink"),
    ("kp_trail_path_rmdir", "path_rmdir"),
    ("kp_trail_path_mknod", "path_mknod"),
    ("kp_trail_path_mkdir", "path_mkdir"),
    ("kp_trail_path_symlink", "path_symlink"),
    ("kp_trail_path_link", "path_link"),
    ("kp_trail_path_rename", "path_rename"),
];

/// Optional programs: attached where the kernel has the hook.
pub const OPTIONAL: &[(&str, &str)] = &[("kp_trail_file_truncate", "file_truncate")];

/// Offsets the path walk follows to cross from a mounted filesystem's root
/// to its mount point, so paths are absolute (from the initial mount
/// namespace's root), not relative to the file's own filesystem.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileOffsets {
    /// 1 when every offset below is filled in (and KernelOffsets' fs and
    /// name offsets are valid).
    pub valid: u32,
    /// `path.mnt`.
    pub path_mnt: u32,
    /// `vfsmount.mnt_root`.
    pub vfsmount_mnt_root: u32,
    /// `mount.mnt` (the vfsmount embedded in struct mount).
    pub mount_mnt: u32,
    /// `mount.mnt_parent`.
    pub mount_parent: u32,
    /// `mount.mnt_mountpoint`.
    pub mount_mountpoint: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] u32s, no padding.
    unsafe impl aya::Pod for super::FileOffsets {}
}
