//! Reading a directory tree without ever leaving it, whatever is renamed while it is read.
//!
//! A path-based walk resolves every name again on each access, so a directory swapped for a
//! symbolic link to `/etc` between listing it and reading a file in it leads outside the tree.
//! Here a name is only ever resolved against the descriptor of a directory that is already
//! inside (`openat`, `fstatat`), one component at a time and with `O_NOFOLLOW`: a link in any
//! position fails (`ELOOP` or `ENOTDIR`) instead of being followed. Files are opened with
//! `O_NONBLOCK` so that a FIFO put in a file's place cannot block the reader.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use crate::state::FileKey;

const DIR_FLAGS: libc::c_int =
    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
const FILE_FLAGS: libc::c_int =
    libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;

/// What `lstat` says of one name (links are not followed).
#[derive(Clone, Copy, Debug)]
pub struct Stat {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    mode: u32,
}

// The field types of `struct stat` differ between platforms: some casts are no-ops here.
#[allow(clippy::unnecessary_cast)]
impl Stat {
    fn from_raw(st: &libc::stat) -> Stat {
        Stat {
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            size: st.st_size as u64,
            mtime_ns: st.st_mtime as i64 * 1_000_000_000 + st.st_mtime_nsec as i64,
            ctime_ns: st.st_ctime as i64 * 1_000_000_000 + st.st_ctime_nsec as i64,
            mode: st.st_mode as u32,
        }
    }

    fn kind(&self) -> u32 {
        self.mode & libc::S_IFMT as u32
    }

    pub fn is_dir(&self) -> bool {
        self.kind() == libc::S_IFDIR as u32
    }

    pub fn is_file(&self) -> bool {
        self.kind() == libc::S_IFREG as u32
    }

    pub fn is_symlink(&self) -> bool {
        self.kind() == libc::S_IFLNK as u32
    }

    /// The hash state cache's key of the file.
    pub fn key(&self) -> FileKey {
        FileKey {
            dev: self.dev,
            ino: self.ino,
            size: self.size,
            mtime_ns: self.mtime_ns,
            ctime_ns: self.ctime_ns,
        }
    }
}

/// What a directory entry says it is (`d_type`); `Unknown` on file systems that do not say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    Other,
    Unknown,
}

/// An open directory.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
}

fn c_name(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor just returned by the kernel, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn openat(dir: BorrowedFd<'_>, name: &OsStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    let c = c_name(name)?;
    loop {
        // SAFETY: a valid descriptor and a NUL-terminated name.
        match owned(unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags) }) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// Resets `errno`, so that a NULL from `readdir` can tell the end from an error.
fn clear_errno() {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    // SAFETY: the calling thread's errno.
    unsafe {
        *libc::__errno_location() = 0;
    }
    #[cfg(any(target_os = "macos", target_os = "ios", target_os = "freebsd"))]
    // SAFETY: the calling thread's errno.
    unsafe {
        *libc::__error() = 0;
    }
}

impl Dir {
    /// Opens `path` as a directory; its last component must not be a symbolic link.
    pub fn open(path: &Path) -> io::Result<Dir> {
        let c = c_name(path.as_os_str())?;
        // SAFETY: a NUL-terminated path.
        let fd = owned(unsafe { libc::open(c.as_ptr(), DIR_FLAGS) })?;
        Ok(Dir { fd })
    }

    /// The subdirectory `name` (one component), not following a link.
    pub fn open_dir(&self, name: &OsStr) -> io::Result<Dir> {
        Ok(Dir {
            fd: openat(self.fd.as_fd(), name, DIR_FLAGS)?,
        })
    }

    /// The file `name` (one component) for reading, not following a link, never blocking.
    pub fn open_file(&self, name: &OsStr) -> io::Result<File> {
        Ok(File::from(openat(self.fd.as_fd(), name, FILE_FLAGS)?))
    }

    /// `lstat` of `name` in this directory.
    pub fn stat_at(&self, name: &OsStr) -> io::Result<Stat> {
        let c = c_name(name)?;
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: a valid descriptor, a NUL-terminated name and room for the answer.
        let r = unsafe {
            libc::fstatat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                st.as_mut_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fstatat succeeded, so it filled the struct.
        Ok(Stat::from_raw(unsafe { &st.assume_init() }))
    }

    /// The entries' names (without `.` and `..`) and what they say they are.
    pub fn entries(&self) -> io::Result<Vec<(OsString, Kind)>> {
        // fdopendir takes the descriptor over: give it a duplicate, and read from the start
        // (the duplicate shares the position of this one).
        // SAFETY: a valid descriptor.
        let dup = owned(unsafe { libc::fcntl(self.fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) })?;
        let raw = dup.as_raw_fd();
        // SAFETY: a valid descriptor; on success the stream owns it.
        let stream = unsafe { libc::fdopendir(raw) };
        if stream.is_null() {
            return Err(io::Error::last_os_error()); // `dup` is closed on return
        }
        std::mem::forget(dup);
        // SAFETY: `stream` is a valid directory stream until closedir below.
        unsafe { libc::rewinddir(stream) };
        let mut out = Vec::new();
        let result = loop {
            clear_errno();
            // SAFETY: a valid stream; only this thread uses it.
            let ent = unsafe { libc::readdir(stream) };
            if ent.is_null() {
                let e = io::Error::last_os_error();
                break match e.raw_os_error() {
                    Some(0) | None => Ok(()),
                    _ => Err(e),
                };
            }
            // SAFETY: readdir returned an entry whose name is NUL-terminated; it stays valid
            // until the next readdir on this stream.
            let (name, kind) = unsafe {
                let ent = &*ent;
                let kind = match ent.d_type {
                    libc::DT_DIR => Kind::Dir,
                    libc::DT_UNKNOWN => Kind::Unknown,
                    _ => Kind::Other,
                };
                (
                    CStr::from_ptr(ent.d_name.as_ptr()).to_bytes().to_vec(),
                    kind,
                )
            };
            if name == b"." || name == b".." {
                continue;
            }
            out.push((OsString::from_vec(name), kind));
        };
        // SAFETY: the stream opened above, closed once (it closes the duplicate).
        unsafe { libc::closedir(stream) };
        result.map(|()| out)
    }
}

fn check(rel: &str) -> io::Result<()> {
    if rel
        .split('/')
        .any(|p| p.is_empty() || p == "." || p == "..")
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a plain relative path: {rel:?}"),
        ));
    }
    Ok(())
}

/// The directory `rel` (`/`-separated, relative; empty: `root` itself) below `root`, every
/// component opened without following a link.
pub fn open_dir(root: &Dir, rel: &str) -> io::Result<Dir> {
    if rel.is_empty() {
        return root.open_dir(OsStr::new("."));
    }
    check(rel)?;
    let mut parts = rel.split('/').map(OsStr::new);
    let first = parts.next().expect("a non-empty path has a component");
    let mut dir = root.open_dir(first)?;
    for part in parts {
        dir = dir.open_dir(part)?;
    }
    Ok(dir)
}

/// The file `rel` below `root`, opened for reading: no component may be a link.
pub fn open_file(root: &Dir, rel: &str) -> io::Result<File> {
    check(rel)?;
    match rel.rsplit_once('/') {
        Some((parent, name)) => open_dir(root, parent)?.open_file(OsStr::new(name)),
        None => root.open_file(OsStr::new(rel)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tmpdir(name: &str) -> std::path::PathBuf {
        let d =
            std::env::temp_dir().join(format!("hashsync-beneath-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("in/sub")).unwrap();
        std::fs::create_dir_all(d.join("out")).unwrap();
        std::fs::write(d.join("in/sub/f"), b"inside").unwrap();
        std::fs::write(d.join("out/f"), b"outside").unwrap();
        d
    }

    #[test]
    fn links_anywhere_are_refused() {
        let d = tmpdir("links");
        let root = Dir::open(&d.join("in")).unwrap();
        let mut s = String::new();
        use std::io::Read;
        open_file(&root, "sub/f")
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "inside");
        symlink(d.join("out"), d.join("in/link")).unwrap();
        symlink(d.join("out/f"), d.join("in/flink")).unwrap();
        for rel in ["link/f", "flink"] {
            let e = open_file(&root, rel).unwrap_err();
            assert!(
                matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)),
                "{rel}: {e}"
            );
        }
        assert!(open_dir(&root, "link").is_err());
        for bad in [
            "../out/f",
            "sub/../../out/f",
            "",
            "/etc/passwd",
            "sub//f",
            "./sub/f",
        ] {
            assert!(open_file(&root, bad).is_err(), "{bad}");
        }
        assert!(Dir::open(&d.join("in/link")).is_err());
        let mut names: Vec<_> = root
            .entries()
            .unwrap()
            .into_iter()
            .map(|(n, k)| (n.into_string().unwrap(), k))
            .collect();
        names.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(names[0].0, "flink");
        assert_eq!(names[2], ("sub".to_string(), Kind::Dir));
        // Entries can be read twice (the stream starts from the beginning each time).
        assert_eq!(root.entries().unwrap().len(), 3);
        let st = root.stat_at(OsStr::new("link")).unwrap();
        assert!(st.is_symlink() && !st.is_dir());
        assert!(root.stat_at(OsStr::new("sub")).unwrap().is_dir());
        std::fs::remove_dir_all(d).unwrap();
    }
}
