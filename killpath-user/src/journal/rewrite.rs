//! A journal file changed under the agent that holds it: before every
//! append the file must still be the one it opened (same inode), as long as
//! it left it, ending with the line it last wrote. Root can rewrite the file
//! and recompute the whole chain, which then verifies on its own; the agent
//! remembers its head, so the rewrite is caught at its next append and a
//! `journal-rewritten` record naming both heads goes in first.
use std::io::Read;
use std::os::unix::fs::FileExt;

use serde_json::json;

use super::*;

/// How the file differs from what this journal left.
#[derive(Debug)]
pub(super) struct Tamper {
    /// Another file (or none) is at the path now.
    replaced: bool,
    what: String,
}

impl Journal {
    /// `Some` if the file at the path is not what the last append left.
    pub(super) fn check_tail(&self) -> Result<Option<Tamper>, JournalError> {
        let held = self.file.metadata().map_err(io_err(&self.path, "stat"))?;
        let replaced = match fs::metadata(&self.path) {
            Ok(now) => now.dev() != held.dev() || now.ino() != held.ino(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => true,
            Err(e) => return Err(io_err(&self.path, "stat")(e)),
        };
        if replaced {
            return Ok(Some(Tamper { replaced, what: "the file at the path is not the one the agent opened (replaced or removed)".into() }));
        }
        if held.len() != self.end {
            let what = format!("the file is {} bytes long where the agent left {} bytes", held.len(), self.end);
            return Ok(Some(Tamper { replaced, what }));
        }
        // The last line, and the first byte after it: a zero if the agent
        // keeps zeros ahead of the tail (a line added there is caught).
        let ahead = u64::from(self.end > self.len);
        let mut tail = vec![0; self.last_line.len() + ahead as usize];
        let at = self.len - self.last_line.len() as u64;
        self.file.read_exact_at(&mut tail, at).map_err(io_err(&self.path, "read"))?;
        if tail[..self.last_line.len()] != self.last_line[..] {
            return Ok(Some(Tamper { replaced, what: "the file no longer ends with the record the agent last wrote".into() }));
        }
        if tail[self.last_line.len()..].iter().any(|&b| b != 0) {
            return Ok(Some(Tamper { replaced, what: "data was written after the record the agent last wrote".into() }));
        }
        Ok(None)
    }

    /// Takes the file as it is now (a replaced file is first copied aside
    /// from the descriptor still held, so no acknowledged record is lost)
    /// and returns the record that says what happened, chained to it.
    pub(super) fn resync(&mut self, t: Tamper) -> Result<Entry, JournalError> {
        let expected = self.head();
        let mut saved = None;
        if t.replaced {
            let mut dest = self.path.as_os_str().to_owned();
            dest.push(format!(".agent-copy-{}", now_us()));
            let dest = PathBuf::from(dest);
            let mut content = Vec::new();
            let mut held = (*self.file).try_clone().map_err(io_err(&self.path, "duplicate descriptor"))?;
            std::io::Seek::rewind(&mut held).map_err(io_err(&self.path, "seek"))?;
            held.read_to_end(&mut content).map_err(io_err(&self.path, "read"))?;
            let mut out = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&dest).map_err(io_err(&dest, "create"))?;
            out.write_all(&content).and_then(|()| out.sync_all()).map_err(io_err(&dest, "write"))?;
            sync_parent(&dest)?;
            saved = Some(dest);
            self.file = lock_path(&self.path, true)?.ok_or_else(|| io_err(&self.path, "open")(io::ErrorKind::NotFound.into()))?;
        }
        let (mut found, mut at_expected) = (None, None);
        // The held descriptor's offset is where the last read left it: read from the start.
        std::io::Seek::rewind(&mut &*self.file).map_err(io_err(&self.path, "seek"))?;
        let scan = scan(&self.file, &self.path, |_, _, r| {
            if let Some(r) = r {
                if r.seq == expected.seq {
                    at_expected = Some(r.hash.clone());
                }
                found = Some(Head { seq: r.seq, hash: r.hash });
            }
        })?;
        if scan.torn_bytes > 0 {
            self.file.set_len(scan.good_len).map_err(io_err(&self.path, "truncate"))?;
        }
        let mut content = vec![0; usize::try_from(scan.good_len).unwrap_or(0)];
        self.file.read_exact_at(&mut content, 0).map_err(io_err(&self.path, "read"))?;
        let start = content.strip_suffix(b"\n").and_then(|c| c.iter().rposition(|&b| b == b'\n')).map_or(0, |i| i + 1);
        self.last_line = content[start..].to_vec();
        self.len = scan.good_len;
        self.end = self.file.metadata().map_err(io_err(&self.path, "stat"))?.len();
        let found = found.unwrap_or_else(|| Head { seq: 0, hash: ZERO_HASH.to_owned() });
        (self.next_seq, self.last_hash) = (found.seq + 1, found.hash.clone());
        let at = match &at_expected {
            Some(h) if *h == expected.hash => format!("still has seq {} with hash {h}", expected.seq),
            Some(h) => format!("now has hash {h} for seq {}", expected.seq),
            None => format!("no longer has seq {}", expected.seq),
        };
        let message = format!(
            "journal {} was changed under the running agent: {}; the agent last wrote seq {} with hash {}, the file {at} and ends at seq {} (hash {})",
            self.path.display(),
            t.what,
            expected.seq,
            expected.hash,
            found.seq,
            found.hash
        );
        warn!("{message}");
        let mut e = Entry::new(Actor::Source { source: "agent".into() }, Phase::Event, "journal-rewritten");
        e.params = json!({
            "expected_head": expected,
            "found_head": found,
            "hash_at_expected_seq": at_expected,
            "replaced": t.replaced,
            "agent_copy": saved,
            "problems": scan.problems.iter().take(10).collect::<Vec<_>>(),
            "what": t.what,
        });
        e.outcome = Some(message);
        e.high_priority = true;
        Ok(e)
    }
}
