//! Finding the FAT boot partition in an MBR disk image.

use mbrman::MBR;
use std::io::{Read, Seek};

/// MBR partition types of FAT file systems.
const FAT_TYPES: [u8; 6] = [0x01, 0x04, 0x06, 0x0b, 0x0c, 0x0e];

/// A partition as a byte range of the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

/// The first FAT partition of the image's MBR (Raspberry Pi OS: partition
/// 1, type 0x0c, "bootfs"), as bytes of `image` (whose length is `len`).
pub fn boot_partition(image: &mut (impl Read + Seek), len: u64) -> Result<ByteRange, String> {
    const SECTOR: u32 = 512;
    let mbr = MBR::read_from(image, SECTOR)
        .map_err(|e| format!("not a disk image with an MBR partition table ({e})"))?;
    let used: Vec<_> = mbr.iter().filter(|(_, p)| p.is_used()).collect();
    if used.iter().any(|(_, p)| p.sys == 0xee) {
        return Err("has a GPT partition table; Raspberry Pi OS images use MBR".into());
    }
    let (i, p) = used
        .iter()
        .find(|(_, p)| FAT_TYPES.contains(&p.sys))
        .ok_or_else(|| {
            let types: Vec<String> = used
                .iter()
                .map(|(i, p)| format!("{i}: 0x{:02x}", p.sys))
                .collect();
            format!(
                "has no FAT boot partition (partitions {})",
                if types.is_empty() {
                    "none".into()
                } else {
                    types.join(", ")
                }
            )
        })?;
    // Every partition must fit: a partly downloaded image is refused.
    for (j, q) in &used {
        let end = (u64::from(q.starting_lba) + u64::from(q.sectors)) * u64::from(SECTOR);
        if end > len {
            return Err(format!(
                "partition {j} ends at byte {end} but the image has {len} bytes (truncated?)"
            ));
        }
    }
    if p.sectors == 0 {
        return Err(format!("partition {i} is empty"));
    }
    let start = u64::from(p.starting_lba) * u64::from(SECTOR);
    let end = start + u64::from(p.sectors) * u64::from(SECTOR);
    Ok(ByteRange { start, end })
}
