//! The FAT boot partition of an image file, opened in place with fatfs:
//! no root, no loop mount. Files go in the root directory only: fatfs
//! 0.3.6's `create_dir` writes `.`/`..` entries that fsck.fat has to
//! repair (DESIGN §9).

use super::partition::ByteRange;
use fatfs::{FileSystem, FsOptions};
use fscommon::StreamSlice;
use std::fs::File;
use std::io::{self, Read, Write};

/// An open boot partition.
///
/// Unbuffered on purpose: fscommon's `BufStream` flushes on drop and only
/// logs a failure there, and a failed write must fail the image.
pub struct BootFs {
    fs: FileSystem<StreamSlice<File>>,
    image: File,
}

impl std::fmt::Debug for BootFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootFs")
            .field("fat", &self.fs.fat_type())
            .finish()
    }
}

impl BootFs {
    /// Opens the FAT file system in `range` of `image`.
    pub fn open(image: File, range: ByteRange) -> io::Result<BootFs> {
        let handle = image.try_clone()?;
        let slice = StreamSlice::new(image, range.start, range.end)?;
        let fs = FileSystem::new(slice, FsOptions::new())?;
        Ok(BootFs { fs, image: handle })
    }

    /// Whether the root holds a file called `name` (case-insensitive, as
    /// FAT is).
    pub fn exists(&self, name: &str) -> bool {
        self.fs.root_dir().open_file(name).is_ok()
    }

    /// The text of root file `name`, or `None` if there is none.
    pub fn read_text(&self, name: &str) -> io::Result<Option<String>> {
        match self.fs.root_dir().open_file(name) {
            Ok(mut f) => {
                let mut s = String::new();
                f.read_to_string(&mut s)?;
                Ok(Some(s))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes root file `name`, replacing what it held.
    pub fn write(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let mut f = self.fs.root_dir().create_file(name)?;
        f.truncate()?;
        f.write_all(bytes)?;
        f.flush()
    }

    /// Free bytes on the file system.
    pub fn free_bytes(&self) -> io::Result<u64> {
        let stats = self.fs.stats()?;
        Ok(u64::from(stats.free_clusters()) * u64::from(stats.cluster_size()))
    }

    /// Writes everything back, closes the file system and syncs the image
    /// to disk.
    pub fn close(self) -> io::Result<()> {
        self.fs.unmount()?;
        self.image.sync_all()
    }
}
