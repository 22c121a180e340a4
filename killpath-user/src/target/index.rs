//! The registry's index of targets by cgroup path and by cgroup id, so
//! that "which target is this cgroup in" (every command's confinement
//! check, a stop's nested targets, the escape check's enclosing targets)
//! costs a lookup per ancestor, not a comparison per target: at 1,000
//! targets the scans were ~13% of the stop thread's CPU (perf, 2026-12-03).
//!
//! Exact by construction: `insert` and `remove` keep it in step, and a
//! target handed out by `get_mut` (which may change its cgroup id: the
//! start-up reconciliation does) is "unindexed" until the next save
//! re-indexes it; until then every lookup also checks the unindexed
//! targets one by one, and every index hit is checked against the target
//! itself. A lookup is never wrong, only slower right after a change.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::{Path, PathBuf},
};

use super::Target;
use crate::kernel::cgroup::is_within;

/// Names by cgroup path and by cgroup id (several names per key are kept,
/// though the agent never registers two targets on one cgroup).
#[derive(Debug, Default)]
pub(super) struct Index {
    by_path: BTreeMap<PathBuf, BTreeSet<String>>,
    by_id: HashMap<u64, BTreeSet<String>>,
    /// What each indexed name is filed under.
    keys: HashMap<String, (PathBuf, u64)>,
    /// Names handed out by `get_mut` since they were last indexed.
    unindexed: BTreeSet<String>,
}

impl Index {
    pub(super) fn of<'a>(targets: impl Iterator<Item = &'a Target>) -> Self {
        let mut ix = Self::default();
        for t in targets {
            ix.add(t);
        }
        ix
    }

    /// Files `t` (after dropping whatever its name was filed under).
    pub(super) fn add(&mut self, t: &Target) {
        self.drop_name(&t.name);
        self.by_path.entry(t.cgroup.clone()).or_default().insert(t.name.clone());
        self.by_id.entry(t.cgroup_id).or_default().insert(t.name.clone());
        self.keys.insert(t.name.clone(), (t.cgroup.clone(), t.cgroup_id));
    }

    /// Forgets `name` (removed, or about to be filed again).
    pub(super) fn drop_name(&mut self, name: &str) {
        self.unindexed.remove(name);
        let Some((path, id)) = self.keys.remove(name) else { return };
        if let Some(set) = self.by_path.get_mut(&path) {
            set.remove(name);
            if set.is_empty() {
                self.by_path.remove(&path);
            }
        }
        if let Some(set) = self.by_id.get_mut(&id) {
            set.remove(name);
            if set.is_empty() {
                self.by_id.remove(&id);
            }
        }
    }

    /// `name` may change: checked one by one until re-indexed.
    pub(super) fn touch(&mut self, name: &str) {
        self.unindexed.insert(name.to_owned());
    }

    /// Names touched since they were last indexed.
    pub(super) fn touched(&self) -> Vec<String> {
        self.unindexed.iter().cloned().collect()
    }

    /// Every target whose cgroup is `path` or one of its ancestors
    /// (`Path::starts_with`, component by component), innermost first.
    pub(super) fn enclosing<'a>(&self, targets: &'a BTreeMap<String, Target>, path: &Path) -> Vec<&'a Target> {
        let mut out: Vec<&Target> = path
            .ancestors()
            .filter_map(|a| self.by_path.get(a).map(|names| (a, names)))
            .flat_map(|(a, names)| names.iter().filter_map(move |n| targets.get(n).filter(|t| t.cgroup == a)))
            .filter(|t| !self.unindexed.contains(&t.name))
            .collect();
        out.extend(self.unindexed_targets(targets).into_iter().filter(|t| is_within(path, &t.cgroup)));
        out
    }

    /// Every target whose cgroup is `path` or below it.
    pub(super) fn nested<'a>(&self, targets: &'a BTreeMap<String, Target>, path: &Path) -> Vec<&'a Target> {
        // In `Path`'s order (component by component) a path's descendants
        // follow it, before any other path greater than it.
        let mut out: Vec<&Target> = self
            .by_path
            .range::<Path, _>((std::ops::Bound::Included(path), std::ops::Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(path))
            .flat_map(|(k, names)| names.iter().filter_map(move |n| targets.get(n).filter(|t| &t.cgroup == k)))
            .filter(|t| !self.unindexed.contains(&t.name))
            .collect();
        out.extend(self.unindexed_targets(targets).into_iter().filter(|t| is_within(&t.cgroup, path)));
        out
    }

    /// A target whose cgroup id is one of `ids`, if any.
    pub(super) fn with_id<'a>(&self, targets: &'a BTreeMap<String, Target>, ids: &[u64]) -> Option<&'a Target> {
        let indexed = ids
            .iter()
            .filter_map(|id| self.by_id.get(id).map(|names| (*id, names)))
            .flat_map(|(id, names)| names.iter().filter_map(move |n| targets.get(n).filter(|t| t.cgroup_id == id)))
            .find(|t| !self.unindexed.contains(&t.name));
        indexed.or_else(|| self.unindexed_targets(targets).into_iter().find(|t| ids.contains(&t.cgroup_id)))
    }

    fn unindexed_targets<'a>(&self, targets: &'a BTreeMap<String, Target>) -> Vec<&'a Target> {
        self.unindexed.iter().filter_map(|n| targets.get(n)).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::Index;
    use crate::target::Target;

    fn t(name: &str, path: &str, id: u64) -> Target {
        Target::new(name, path.into(), id, path.matches('/').count() as u32, true, false, 0)
    }

    fn map(ts: &[Target]) -> std::collections::BTreeMap<String, Target> {
        ts.iter().map(|t| (t.name.clone(), t.clone())).collect()
    }

    fn names(v: Vec<&Target>) -> Vec<String> {
        let mut n: Vec<String> = v.into_iter().map(|t| t.name.clone()).collect();
        n.sort();
        n
    }

    /// Against the scans it replaces, over nested, sibling and
    /// prefix-sharing cgroups.
    #[test]
    fn index_agrees_with_the_scans() {
        let ts = vec![
            t("a", "/cg/a", 1),
            t("ab", "/cg/a/b", 2),
            t("abc", "/cg/a/b/c", 3),
            t("a0", "/cg/a0", 4),
            t("a-b", "/cg/a-b", 5),
            t("x", "/cg/x/y", 6),
        ];
        let m = map(&ts);
        let ix = Index::of(ts.iter());
        let probes = ["/cg", "/cg/a", "/cg/a/", "/cg/a/b/c/d", "/cg/a0/z", "/cg/a-b", "/cg/ab", "/cg/x", "/cg/x/y/z", "/", "/other"];
        for p in probes {
            let p = Path::new(p);
            let scan_in: Vec<&Target> = m.values().filter(|t| p.starts_with(&t.cgroup)).collect();
            let scan_nested: Vec<&Target> = m.values().filter(|t| t.cgroup.starts_with(p)).collect();
            assert_eq!(names(ix.enclosing(&m, p)), names(scan_in), "enclosing {}", p.display());
            assert_eq!(names(ix.nested(&m, p)), names(scan_nested), "nested {}", p.display());
        }
        assert_eq!(ix.with_id(&m, &[9, 3]).map(|t| t.name.as_str()), Some("abc"));
        assert!(ix.with_id(&m, &[9]).is_none());
        // Innermost first.
        assert_eq!(ix.enclosing(&m, Path::new("/cg/a/b/c/d"))[0].name, "abc");
    }

    /// A target changed through `get_mut` is found by its new id before
    /// it is indexed again, and never by its old one.
    #[test]
    fn a_touched_target_is_checked_as_it_is() {
        let ts = vec![t("a", "/cg/a", 1), t("b", "/cg/b", 2)];
        let mut m = map(&ts);
        let mut ix = Index::of(ts.iter());
        ix.touch("a");
        m.get_mut("a").unwrap().cgroup_id = 7;
        assert_eq!(ix.with_id(&m, &[7]).map(|t| t.name.as_str()), Some("a"));
        assert!(ix.with_id(&m, &[1]).is_none(), "the old id is stale");
        let a = m["a"].clone();
        ix.add(&a);
        assert!(ix.touched().is_empty());
        assert_eq!(ix.with_id(&m, &[7]).map(|t| t.name.as_str()), Some("a"));
        ix.drop_name("a");
        m.remove("a");
        assert!(ix.with_id(&m, &[7]).is_none());
        assert!(ix.enclosing(&m, Path::new("/cg/a/x")).is_empty());
    }
}
