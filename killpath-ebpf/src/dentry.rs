//! Walking a dentry's parents, shared by `fs.write`'s allow-list
//! (degrade/fswrite.rs) and the pin/state-dir protection (protect/files.rs):
//! both match a directory by (device, inode), which `..`, symlinks and bind
//! mounts cannot fake, because the walk follows the real d_parent chain.
use killpath_common::KernelOffsets;

use crate::kcgroup::read;

/// Deepest directory nesting walked; deeper matches are not found.
const MAX_WALK: u32 = 32;

/// Whether `dentry` or one of its parents is a directory for which
/// `matches(dev, ino)` holds. `dev` is the kernel's dev_t of the inode's
/// super block, `ino` its inode number. Bounded for the verifier.
#[inline(always)]
pub fn at_or_below(o: &KernelOffsets, dentry: u64, matches: impl Fn(u32, u64) -> bool) -> bool {
    let mut d = dentry;
    let mut i = 0;
    while i < MAX_WALK {
        if d == 0 {
            return false;
        }
        if let Some(inode) = read::<u64>(d, o.dentry_d_inode).filter(|p| *p != 0) {
            let ino = read::<u64>(inode, o.inode_i_ino).unwrap_or(0);
            let dev = read::<u64>(inode, o.inode_i_sb).and_then(|sb| read::<u32>(sb, o.sb_s_dev)).unwrap_or(0);
            if matches(dev, ino) {
                return true;
            }
        }
        let parent = read::<u64>(d, o.dentry_d_parent).unwrap_or(0);
        if parent == d {
            return false;
        }
        d = parent;
        i += 1;
    }
    false
}
