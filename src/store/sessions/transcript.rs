//! Transcript files: append-only JSON Lines, one [`TranscriptMessage`] per line.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, FileExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use super::model::TranscriptMessage;

/// Mode of transcript files.
pub const FILE_MODE: u32 = 0o600;
/// Mode of directories the store creates.
pub const DIR_MODE: u32 = 0o700;
/// First window [`read_tail`] reads from the end of a transcript.
const TAIL_WINDOW: u64 = 64 * 1024;
/// The most of a transcript's end that one tail read loads: 1000 messages of 25 MiB each
/// must not become a 25 GB read on the owner core. Messages beyond it are not returned (the
/// caller reports `hasMore`); a single line longer than this is skipped.
pub const MAX_TAIL_BYTES: u64 = 32 << 20;

/// An open transcript, kept between appends until the next flush.
#[derive(Debug)]
pub struct Open {
    /// Read+append handle.
    pub file: File,
    /// Current length in bytes.
    pub len: u64,
    /// The file does not end in `\n` (torn tail from a crash): the next append starts with
    /// one so the torn fragment stays on its own (skipped) line.
    pub needs_newline: bool,
    /// Written since the last fsync.
    pub unsynced: bool,
}

/// Open `path` for appending, creating it (mode 0600) and its directory (0700) if needed.
/// Directories whose entries changed (new file, new directories) are pushed to
/// `dirs_changed` so the caller can fsync them per its policy.
pub fn open_append(path: &Path, dirs_changed: &mut Vec<PathBuf>) -> io::Result<Open> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "transcript without dir"))?;
    if !dir.is_dir() {
        // Record every directory level that gets created, plus the parent that gained it.
        let mut missing = Vec::new();
        let mut d = Some(dir);
        while let Some(p) = d {
            if p.is_dir() {
                missing.push(p.to_path_buf());
                break;
            }
            missing.push(p.to_path_buf());
            d = p.parent();
        }
        DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)?;
        dirs_changed.extend(missing);
    }
    let file = match OpenOptions::new()
        .read(true)
        .append(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
    {
        Ok(f) => {
            dirs_changed.push(dir.to_path_buf());
            f
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            OpenOptions::new().read(true).append(true).open(path)?
        }
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let mut needs_newline = false;
    if len > 0 {
        let mut last = [0u8; 1];
        file.read_exact_at(&mut last, len - 1)?;
        needs_newline = last[0] != b'\n';
    }
    Ok(Open {
        file,
        len,
        needs_newline,
        unsynced: false,
    })
}

/// Append `msg` as one line with a single `write(2)` (the whole line, plus a leading `\n`
/// when the file has a torn tail). Returns the bytes written. On error the caller must drop
/// the handle (the tail state is then unknown and is re-read on the next open).
pub fn append_line(open: &mut Open, msg: &TranscriptMessage) -> io::Result<u64> {
    let mut buf = Vec::with_capacity(128 + msg.text.len());
    if open.needs_newline {
        buf.push(b'\n');
    }
    serde_json::to_writer(&mut buf, msg).map_err(io::Error::other)?;
    buf.push(b'\n');
    // One write(2) for the whole line on regular files (write_all only loops on a short
    // write, e.g. ENOSPC part-way, which leaves a torn line that readers skip).
    open.file.write_all(&buf)?;
    let n = buf.len() as u64;
    open.len += n;
    open.needs_newline = false;
    open.unsynced = true;
    Ok(n)
}

pub use super::super::atomic::sync_dir;

/// Parse JSON Lines, skipping blank and undecodable lines (torn writes, NUL runs left by
/// power loss). Returns the messages and how many lines were skipped.
pub fn parse_lines(bytes: &[u8]) -> (Vec<TranscriptMessage>, usize) {
    let mut out = Vec::new();
    let mut skipped = 0;
    for line in bytes.split(|&b| b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<TranscriptMessage>(line) {
            Ok(m) => out.push(m),
            Err(_) => skipped += 1,
        }
    }
    (out, skipped)
}

/// The last `limit` messages of the transcript at `path`, oldest first; a missing file is
/// an empty transcript. Reads backwards in growing windows, so the cost follows `limit`,
/// not the transcript size.
pub fn read_tail(path: &Path, limit: usize) -> io::Result<Vec<TranscriptMessage>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let mut window = TAIL_WINDOW;
    loop {
        let start = len.saturating_sub(window);
        let size = usize::try_from(len - start)
            .map_err(|_| io::Error::other("transcript too large for this platform"))?;
        let mut buf = vec![0u8; size];
        file.read_exact_at(&mut buf, start)?;
        let mut body: &[u8] = &buf;
        if start > 0 {
            // The window may begin mid-line: drop up to the first newline.
            body = match body.iter().position(|&b| b == b'\n') {
                Some(i) => &body[i + 1..],
                None => &[],
            };
        }
        let (mut msgs, skipped) = parse_lines(body);
        if msgs.len() >= limit || start == 0 || window >= MAX_TAIL_BYTES {
            if skipped > 0 {
                tracing::debug!(path = %path.display(), skipped, "skipped undecodable transcript lines");
            }
            let cut = msgs.len().saturating_sub(limit);
            msgs.drain(..cut);
            return Ok(msgs);
        }
        window = window.saturating_mul(4).min(MAX_TAIL_BYTES);
    }
}

/// Every decodable message of the transcript at `path` (missing file = empty) and the
/// file's length.
pub fn read_all(path: &Path) -> io::Result<(Vec<TranscriptMessage>, u64)> {
    match std::fs::read(path) {
        Ok(bytes) => Ok((parse_lines(&bytes).0, bytes.len() as u64)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok((Vec::new(), 0)),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::token::{random_bytes, to_hex};

    fn tmp(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!(
            "clawgate-transcript-{tag}-{}-{}",
            std::process::id(),
            to_hex(&random_bytes::<6>())
        ))
    }

    fn msg(i: usize, text: &str) -> TranscriptMessage {
        TranscriptMessage {
            id: format!("m{i}"),
            role: "user".into(),
            text: text.into(),
            ts: i as i64,
            run_id: None,
            stop_reason: None,
            error: None,
            usage: None,
        }
    }

    #[test]
    fn torn_tail_is_skipped_and_isolated() {
        let d = tmp("torn");
        let p = d.join("a/b/s.jsonl");
        let mut changed = Vec::new();
        let mut o = open_append(&p, &mut changed).unwrap();
        assert!(changed.contains(&d.join("a/b")));
        append_line(&mut o, &msg(1, "one")).unwrap();
        append_line(&mut o, &msg(2, "two\nlines")).unwrap();
        drop(o);
        // Simulate a crash mid-write: half a line, no newline.
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(br#"{"id":"m3","role":"user","te"#).unwrap();
        drop(f);
        let h = read_tail(&p, 10).unwrap();
        assert_eq!(
            h.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            ["m1", "m2"]
        );
        assert_eq!(h[1].text, "two\nlines");
        // The next append does not glue itself onto the fragment.
        let mut changed = Vec::new();
        let mut o = open_append(&p, &mut changed).unwrap();
        assert!(changed.is_empty());
        assert!(o.needs_newline);
        append_line(&mut o, &msg(4, "four")).unwrap();
        drop(o);
        // NUL padding (power loss on a delayed-allocation filesystem) is skipped too.
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(&[0u8; 32]).unwrap();
        drop(f);
        let ids: Vec<String> = read_tail(&p, 10)
            .unwrap()
            .into_iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(ids, ["m1", "m2", "m4"]);
        let (all, len) = read_all(&p).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(len, std::fs::metadata(&p).unwrap().len());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn tail_windows_grow_over_large_files() {
        let d = tmp("tail");
        let p = d.join("s.jsonl");
        let mut o = open_append(&p, &mut Vec::new()).unwrap();
        let big = "x".repeat(10_000);
        for i in 0..100 {
            append_line(&mut o, &msg(i, &big)).unwrap();
        }
        for limit in [1, 5, 6, 7, 30, 99, 100, 1000] {
            let got = read_tail(&p, limit).unwrap();
            let want: Vec<String> = (100usize.saturating_sub(limit)..100)
                .map(|i| format!("m{i}"))
                .collect();
            assert_eq!(got.into_iter().map(|m| m.id).collect::<Vec<_>>(), want);
        }
        assert!(read_tail(&p, 0).unwrap().is_empty());
        assert!(read_tail(&d.join("missing.jsonl"), 5).unwrap().is_empty());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
