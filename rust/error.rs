//! Errors of the core. Every variant names the file or value it is about, so that the Python
//! layer can show a message a user can act on without a traceback from inside Rust.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Everything the core can fail with.
#[derive(Debug)]
pub enum Error {
    /// An operating-system error on a path (missing file, permission denied, I/O failure).
    Io { path: PathBuf, source: io::Error },
    /// A directory was given where a file was expected.
    IsADirectory(PathBuf),
    /// A file was given where a directory was expected.
    NotADirectory(PathBuf),
    /// A FIFO, socket or device: reading it could block forever or never end.
    NotARegularFile(PathBuf),
    /// An algorithm name the core does not know.
    UnknownAlgorithm(String),
    /// A part size or threshold outside what S3 allows; the message says which rule.
    InvalidPartSize(String),
    /// A value that is malformed (an ETag that is not an S3 ETag, for example).
    InvalidValue(String),
    /// The file changed (shrank, grew, was replaced or rewritten) while it was being hashed.
    Changed { path: PathBuf, what: String },
    /// The hash state database failed in a way that rebuilding it did not fix.
    State(String),
    /// The caller asked the work to stop (Ctrl-C in Python).
    Cancelled,
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn changed(path: impl Into<PathBuf>, what: impl Into<String>) -> Self {
        Error::Changed {
            path: path.into(),
            what: what.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, source } => write!(f, "{}: {}", path.display(), source),
            Error::IsADirectory(p) => write!(f, "{}: is a directory, not a file", p.display()),
            Error::NotADirectory(p) => write!(f, "{}: not a directory", p.display()),
            Error::NotARegularFile(p) => {
                write!(
                    f,
                    "{}: not a regular file (FIFO, socket or device)",
                    p.display()
                )
            }
            Error::UnknownAlgorithm(name) => write!(
                f,
                "unknown algorithm {name:?}; valid algorithms: {}",
                crate::hash::Algorithm::ALL
                    .iter()
                    .map(|a| a.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Error::InvalidPartSize(msg) | Error::InvalidValue(msg) => f.write_str(msg),
            Error::State(msg) => write!(f, "hash state cache: {msg}"),
            Error::Changed { path, what } => {
                write!(
                    f,
                    "{}: file changed while it was being hashed ({what})",
                    path.display()
                )
            }
            Error::Cancelled => f.write_str("cancelled"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// An OS error's message as Python prints it: without Rust's " (os error N)" suffix.
pub fn strerror(e: &io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}
