//! Why an image could not be written.

use std::path::PathBuf;
use thiserror::Error;

/// Why `skelpi image` failed. No output file is left behind when it does.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ImageError {
    /// An option's value is unusable.
    #[error("{0}")]
    Option(String),
    /// A file could not be read or written.
    #[error("cannot use {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The base image is not a disk image this tool can edit.
    #[error("{}: {what}", path.display())]
    Base {
        /// The base image (after decompression: the output being made).
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// The agent binary cannot run on the boards.
    #[error("{}: {what}", path.display())]
    Agent {
        /// The binary.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// The output exists and `--force` was not given.
    #[error("{} exists; pass --force to replace it", .0.display())]
    OutputExists(PathBuf),
}

impl ImageError {
    /// An I/O error on `path`.
    pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
        move |source| ImageError::Io {
            path: path.to_owned(),
            source,
        }
    }
}
