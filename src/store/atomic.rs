//! Crash-safe file replacement: owns writing state files so that a crash or power loss leaves
//! the old or the new content, and creating their directories durably.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use crate::auth::token::{random_bytes, to_hex};

/// Replace `path` with `bytes` atomically: write a temp file in the same directory with
/// `mode`, fsync it, rename over `path`, fsync the directory. A kill -9 at any point leaves
/// the old or the new file, never a torn one.
///
/// Missing parent directories are created one level at a time (with the process umask), and
/// each directory that gained an entry is fsynced, so a new directory cannot vanish after a
/// power loss while the file inside it survived. The temp file is
/// `<name>.tmp.<pid>.<random>` next to `path` and is removed on any error before the
/// rename. `mode` is applied exactly (not filtered by the umask). Blocking: call it from
/// the core that owns the file, off latency-critical paths.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "write_atomic: path has no file name",
        )
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    create_dirs_durably(&dir, &mut |d: &Path| sync_dir(d))?;

    let mut tmp_name = name.to_os_string();
    tmp_name.push(format!(
        ".tmp.{}.{}",
        std::process::id(),
        to_hex(&random_bytes::<8>())
    ));
    let tmp = dir.join(tmp_name);

    if let Err(e) = write_temp(&tmp, bytes, mode).and_then(|()| fs::rename(&tmp, path)) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    // The rename is only durable once the directory entry is.
    sync_dir(&dir)
}

/// fsync a directory so entries created, renamed or removed in it survive power loss.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Create `dir` and its missing ancestors top-down, calling `sync` on the parent of each
/// directory created. `create_dir_all` alone leaves the new entries in unsynced parents: the
/// file written inside could be durable while the path leading to it is not.
fn create_dirs_durably(
    dir: &Path,
    sync: &mut dyn FnMut(&Path) -> io::Result<()>,
) -> io::Result<()> {
    // Walk up to the first ancestor that exists; everything below it must be created.
    let mut missing = Vec::new();
    let mut cur = dir;
    loop {
        match fs::metadata(cur) {
            // Exists. Should it not be a directory, creating the temp file in it fails with
            // the real error.
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                missing.push(cur);
                match cur.parent() {
                    Some(p) if !p.as_os_str().is_empty() => cur = p,
                    _ => break,
                }
            }
            Err(e) => return Err(e),
        }
    }
    for d in missing.into_iter().rev() {
        match fs::create_dir(d) {
            Ok(()) => {}
            // Another writer created it concurrently; its parent may not be synced yet, so
            // sync it here as well.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && d.is_dir() => {}
            Err(e) => return Err(e),
        }
        let parent = match d.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        sync(parent)?;
    }
    Ok(())
}

fn write_temp(tmp: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(tmp)?;
    // `mode` at creation is masked by the umask; set it explicitly.
    f.set_permissions(Permissions::from_mode(mode))?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "clawgate-atomic-{tag}-{}-{}",
            std::process::id(),
            to_hex(&random_bytes::<6>())
        ));
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn entries(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn creates_and_replaces_with_mode() {
        let d = test_dir("replace");
        let p = d.join("nested/deeper/file.json");
        write_atomic(&p, b"first", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"first");
        write_atomic(&p, b"second, longer content", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"second, longer content");
        write_atomic(&p, b"", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"");
        let m = fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(m & 0o777, 0o600);
        assert_eq!(entries(p.parent().unwrap()), ["file.json"]);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn mode_is_exact_and_replaced() {
        let d = test_dir("mode");
        let p = d.join("f");
        write_atomic(&p, b"a", 0o644).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o644
        );
        write_atomic(&p, b"b", 0o600).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(entries(&d), ["f"]);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn failure_leaves_old_file_and_no_temp() {
        let d = test_dir("fail");
        // Renaming a file over a non-empty directory fails after the temp was written.
        let p = d.join("target");
        fs::create_dir_all(p.join("child")).unwrap();
        assert!(write_atomic(&p, b"x", 0o600).is_err());
        assert_eq!(entries(&d), ["target"]);
        assert!(p.join("child").is_dir());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn creates_missing_dirs_syncing_each_parent() {
        let d = test_dir("dirs");
        let deep = d.join("a/b/c");
        let mut synced = Vec::new();
        create_dirs_durably(&deep, &mut |p: &Path| {
            synced.push(p.to_path_buf());
            sync_dir(p)
        })
        .unwrap();
        assert!(deep.is_dir());
        // Top-down, one parent per created level; the existing root gains `a`.
        assert_eq!(synced, [d.clone(), d.join("a"), d.join("a/b")]);
        synced.clear();
        create_dirs_durably(&deep, &mut |p: &Path| {
            synced.push(p.to_path_buf());
            Ok(())
        })
        .unwrap();
        assert!(synced.is_empty(), "nothing created, nothing to sync");
        // A failing sync is reported, not swallowed.
        let err = create_dirs_durably(&d.join("x/y"), &mut |_: &Path| {
            Err(io::Error::other("sync failed"))
        });
        assert!(err.is_err());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn write_creates_nested_dirs_and_file() {
        let d = test_dir("nested");
        let p = d.join("devices/sub/paired.json");
        write_atomic(&p, b"{}", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"{}");
        assert_eq!(entries(&d), ["devices"]);
        assert_eq!(entries(&d.join("devices")), ["sub"]);
        assert_eq!(entries(&d.join("devices/sub")), ["paired.json"]);
        // A regular file where a directory is needed fails instead of being replaced.
        assert!(write_atomic(&p.join("under-a-file"), b"x", 0o600).is_err());
        assert_eq!(fs::read(&p).unwrap(), b"{}");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn rejects_path_without_name() {
        assert!(write_atomic(Path::new("/"), b"x", 0o600).is_err());
    }
}
