//! Process trees from /proc, for `adopt --pid`: move a process and every
//! descendant into the target's cgroup.
use std::{collections::HashMap, fs};

use crate::{
    error::{Error, Result},
    kernel::cgroup::Cgroup,
};

/// pid -> parent pid for every process, from /proc/*/stat.
fn parents() -> HashMap<i32, i32> {
    let mut map = HashMap::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return map;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Some(ppid) = fs::read_to_string(format!("/proc/{pid}/stat")).ok().as_deref().and_then(parse_ppid) {
            map.insert(pid, ppid);
        }
    }
    map
}

/// ppid from a /proc/PID/stat line; comm may contain spaces and `)`.
fn parse_ppid(stat: &str) -> Option<i32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// `pid` and all its descendants, parents first.
pub fn descendants(pid: i32) -> Vec<i32> {
    let parents = parents();
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        let mut kids: Vec<i32> = parents.iter().filter(|(_, pp)| **pp == p).map(|(c, _)| *c).collect();
        kids.sort_unstable();
        out.extend(kids);
        i += 1;
    }
    out
}

/// Refuses pids whose move would take the host or the agent with it.
pub fn check_adoptable(pid: i32) -> Result<()> {
    if pid <= 1 {
        return Err(Error::InvalidRequest(format!("refusing to adopt pid {pid}")));
    }
    if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
        return Err(Error::NoSuchProcess(pid));
    }
    let me = std::process::id() as i32;
    let parents = parents();
    let mut cur = me;
    while cur > 1 {
        if cur == pid {
            return Err(Error::InvalidRequest(format!("refusing to adopt pid {pid}: it is the agent or one of its ancestors")));
        }
        cur = parents.get(&cur).copied().unwrap_or(0);
    }
    Ok(())
}

/// Moves `pid` and its whole tree into `cg`, repeating until a pass finds
/// no descendant outside it: a child forked by a not-yet-moved process
/// during the walk is caught by the next pass, and children of moved
/// processes are born inside already. Returns the pids moved.
pub fn move_tree(pid: i32, cg: &Cgroup) -> Result<Vec<i32>> {
    cg.move_pid(pid)?;
    let mut moved = vec![pid];
    for _ in 0..100 {
        let inside: std::collections::HashSet<i32> = cg.procs_recursive().into_iter().collect();
        let outside: Vec<i32> = descendants(pid).into_iter().filter(|p| !inside.contains(p)).collect();
        if outside.is_empty() {
            return Ok(moved);
        }
        for p in outside {
            match cg.move_pid(p) {
                Ok(()) => moved.push(p),
                Err(Error::NoSuchProcess(_)) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Err(Error::Kernel(format!("process tree of {pid} kept growing outside the target after 100 passes")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ppid_with_odd_comm() {
        assert_eq!(parse_ppid("123 (a) b)) S 45 1 1"), Some(45));
        assert_eq!(parse_ppid("1 (init) S 0 1 1"), Some(0));
    }

    #[test]
    fn own_tree_contains_self() {
        let me = std::process::id() as i32;
        assert_eq!(descendants(me)[0], me);
    }
}
