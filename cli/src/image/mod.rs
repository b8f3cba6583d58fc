//! `skelpi image`: a copy of a Raspberry Pi OS image whose first boot
//! installs and starts the agent with the cluster key.
//!
//! Only the FAT boot partition is edited, in place in the image file, in
//! pure Rust (mbrman finds it, fatfs writes it): no root, no loop mount.
//! Files written to the boot partition's root (mounted at
//! `/boot/firmware` on the board):
//!
//! | file | what |
//! |---|---|
//! | `skelpi-agent` | the agent binary (aarch64 or armv7) |
//! | `skelpi-agent.service` | the systemd unit, byte for byte `systemd/skelpi-agent.service` |
//! | `skelpi-cluster.key` | the cluster key; moved to `/etc/skelpi/cluster.key` (0600) at first boot |
//! | `skelpi-deploy.pub` | with `--deploy-pubkey`: the deploy public key, installed as `/etc/skelpi/deploy.pub` (`skelpi deploy`) |
//! | `skelpi-install.sh` | installs the three, sets the host name, enables the unit |
//!
//! and the first-boot hook for the image's flavour ([`Flavor`]): cloud-init
//! `user-data`/`meta-data` (and `network-config` for wifi) on Trixie, or
//! `firstrun.sh` on Bookworm, with their parameters in `cmdline.txt`.
//!
//! The output is written under a temporary name and renamed when complete,
//! so a failure leaves no half-made image.

mod boot_fs;
mod error;
pub mod firstboot;
pub mod partition;
mod source;
mod wifi;

pub use boot_fs::BootFs;
pub use error::ImageError;
pub use firstboot::FirstBoot;
pub use wifi::Wifi;

use skelpi_wire::key::ClusterKey;
use std::path::{Path, PathBuf};

/// The systemd unit, the same bytes as `systemd/skelpi-agent.service`.
pub const UNIT: &str = include_str!("../../../systemd/skelpi-agent.service");

/// How an image runs its first-boot set-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Flavor {
    /// cloud-init's NoCloud seed on the boot partition (Raspberry Pi OS
    /// Trixie and later: the partition has `user-data`/`meta-data`).
    #[value(name = "cloud-init")]
    CloudInit,
    /// `firstrun.sh` run by `systemd.run=` (Raspberry Pi OS Bookworm).
    Firstrun,
}

impl std::fmt::Display for Flavor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Flavor::CloudInit => "cloud-init (Trixie)",
            Flavor::Firstrun => "firstrun.sh (Bookworm)",
        })
    }
}

/// What to build.
#[derive(Debug, Clone)]
pub struct ImageOptions {
    /// The Raspberry Pi OS image, raw or `.xz`.
    pub base: PathBuf,
    /// Where to write the result.
    pub out: PathBuf,
    /// Replace `out` if it exists.
    pub force: bool,
    /// The agent built for the boards.
    pub agent_binary: PathBuf,
    /// The cluster key file.
    pub key_file: PathBuf,
    /// The deploy public key file (`skelpi keygen --deploy`), if the
    /// boards are to accept `skelpi deploy`.
    pub deploy_pubkey: Option<PathBuf>,
    /// The first-boot hook; `None`: detect from the boot partition.
    pub flavor: Option<Flavor>,
    /// Host name, SSH and wifi set-up.
    pub first_boot: FirstBoot,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct ImageReport {
    /// The first-boot hook used.
    pub flavor: Flavor,
    /// Whether the flavour was detected (rather than given).
    pub detected: bool,
    /// Architecture of the agent binary.
    pub arch: &'static str,
    /// Files written on the boot partition, with their sizes.
    pub files: Vec<(String, usize)>,
    /// The new cmdline.txt.
    pub cmdline: String,
    /// Size of the output image.
    pub image_bytes: u64,
}

/// The file on a virtual board's boot partition naming its architecture
/// (Debian's name: `amd64`, `arm64`), written by `scripts/board-base.sh`.
/// Raspberry Pi OS images have none: they take ARM agents only.
pub const BOARD_FILE: &str = "skelpi-board";

/// The CPU an ELF binary is for, if it is a 64- or 32-bit ARM Linux one.
pub fn elf_arch(head: &[u8]) -> Result<&'static str, String> {
    elf_arch_for(head, None)
}

/// The CPU an ELF binary is for, if it runs on `board`: a virtual board's
/// architecture (its [`BOARD_FILE`]), or `None` for a Raspberry Pi, which
/// takes 64- or 32-bit ARM.
pub fn elf_arch_for(head: &[u8], board: Option<&str>) -> Result<&'static str, String> {
    if head.len() < 20 || head[..4] != *b"\x7fELF" {
        return Err("is not an ELF executable".into());
    }
    let little = head[5] == 1;
    let machine = if little {
        u16::from_le_bytes([head[18], head[19]])
    } else {
        u16::from_be_bytes([head[18], head[19]])
    };
    match (head[4], machine, board) {
        (2, 183, None | Some("arm64")) => Ok("aarch64"),
        (1, 40, None) => Ok("arm (32-bit)"),
        (2, 62, Some("amd64")) => Ok("x86-64"),
        (_, 62, None) => Err(
            "is an x86-64 program; the boards need an aarch64 or armv7 build \
             (cargo build --profile board --target aarch64-unknown-linux-musl -p skelpi-agent)"
                .into(),
        ),
        (_, m, Some(board)) => Err(format!(
            "is {}; this virtual board is {board}: give an agent built for it (arm64: cargo \
             build --target aarch64-unknown-linux-musl -p skelpi-agent; amd64: this machine's \
             build), or a base of the agent's architecture (scripts/board-base.sh --arch)",
            machine_name(m)
        )),
        (_, m, None) => Err(format!("is an ELF program for machine {m}, not ARM")),
    }
}

/// An ELF machine number as a person names it.
fn machine_name(machine: u16) -> String {
    match machine {
        62 => "an x86-64 program".into(),
        183 => "an aarch64 program".into(),
        40 => "a 32-bit ARM program".into(),
        m => format!("an ELF program for machine {m}"),
    }
}

/// Whether `base` may be a virtual board's image: only those (raw, never
/// `.xz`) can take an agent that is not ARM.
fn may_be_virtual_board(base: &Path) -> bool {
    !source::is_xz(base).unwrap_or(true)
}

/// Builds the image, reporting base bytes read to `progress` (see
/// [`base_len`] for the total).
pub fn build(opts: &ImageOptions, progress: impl FnMut(u64)) -> Result<ImageReport, ImageError> {
    // Everything that can be checked before the (long) copy is.
    let agent = std::fs::read(&opts.agent_binary).map_err(ImageError::io(&opts.agent_binary))?;
    let bad_agent = |what| ImageError::Agent {
        path: opts.agent_binary.clone(),
        what,
    };
    // A Pi's architectures at once; a virtual board's once its boot
    // partition says which it is.
    if let Err(what) = elf_arch(&agent)
        && !(may_be_virtual_board(&opts.base) && elf_arch_for(&agent, Some("amd64")).is_ok())
    {
        return Err(bad_agent(what));
    }
    let key = ClusterKey::load(&opts.key_file).map_err(|e| {
        ImageError::Option(format!(
            "cannot use cluster key {}: {e}",
            opts.key_file.display()
        ))
    })?;
    let key_text =
        std::fs::read_to_string(&opts.key_file).map_err(ImageError::io(&opts.key_file))?;
    drop(key);
    let deploy_pub = match &opts.deploy_pubkey {
        Some(path) => {
            let public = skelpi_wire::deploy_key::DeployPublicKey::load(path)
                .map_err(|e| ImageError::Option(e.to_string()))?;
            Some(format!("{public}\n"))
        }
        None => None,
    };
    if let Some(prefix) = &opts.first_boot.hostname_prefix {
        check_hostname_prefix(prefix)?;
    }
    check_user(&opts.first_boot.user)?;
    if same_file(&opts.base, &opts.out) {
        return Err(ImageError::Option(format!(
            "--out {} is the base image; write the copy elsewhere",
            opts.out.display()
        )));
    }
    if let Ok(meta) = std::fs::symlink_metadata(&opts.out) {
        if !meta.is_file() {
            return Err(ImageError::Option(format!(
                "--out {} is not a regular file; write the image to a file, then flash it \
                 (e.g. with dd)",
                opts.out.display()
            )));
        }
        if !opts.force {
            return Err(ImageError::OutputExists(opts.out.clone()));
        }
    }
    let tmp = temp_path(&opts.out);
    if same_file(&opts.base, &tmp) {
        return Err(ImageError::Option(format!(
            "the base {} is where the output is written first; rename it",
            opts.base.display()
        )));
    }
    // A leftover of an interrupted run.
    let _ = std::fs::remove_file(&tmp);
    let keys = Keys {
        cluster: &key_text,
        deploy_pub: deploy_pub.as_deref(),
    };
    let result = build_into(opts, &tmp, &agent, &keys, progress);
    match result {
        Ok(report) => {
            std::fs::rename(&tmp, &opts.out).map_err(ImageError::io(&opts.out))?;
            Ok(report)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Bytes [`build`] reads from the base, for a progress bar.
pub fn base_len(base: &Path) -> Result<u64, ImageError> {
    Ok(std::fs::metadata(base).map_err(ImageError::io(base))?.len())
}

/// The key files the image carries.
struct Keys<'a> {
    /// The cluster key file's text.
    cluster: &'a str,
    /// The deploy public key's, if any.
    deploy_pub: Option<&'a str>,
}

fn build_into(
    opts: &ImageOptions,
    tmp: &Path,
    agent: &[u8],
    keys: &Keys<'_>,
    progress: impl FnMut(u64),
) -> Result<ImageReport, ImageError> {
    let image_bytes = source::write_raw(&opts.base, tmp, progress)?;
    let bad_base = |what: String| ImageError::Base {
        path: opts.base.clone(),
        what,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(tmp)
        .map_err(ImageError::io(tmp))?;
    let range = partition::boot_partition(&mut file, image_bytes).map_err(bad_base)?;
    let fs = BootFs::open(file, range)
        .map_err(|e| bad_base(format!("its boot partition is not a FAT file system ({e})")))?;
    let io = ImageError::io(tmp);
    let Some(cmdline) = fs.read_text("cmdline.txt").map_err(ImageError::io(tmp))? else {
        return Err(bad_base(
            "its boot partition has no cmdline.txt; is it a Raspberry Pi OS image?".into(),
        ));
    };
    let board = fs.read_text(BOARD_FILE).map_err(ImageError::io(tmp))?;
    let arch =
        elf_arch_for(agent, board.as_deref().map(str::trim)).map_err(|what| ImageError::Agent {
            path: opts.agent_binary.clone(),
            what,
        })?;
    let detected = opts.flavor.is_none();
    let flavor = opts.flavor.unwrap_or_else(|| {
        if ["user-data", "meta-data", "network-config"]
            .iter()
            .any(|f| fs.exists(f))
        {
            Flavor::CloudInit
        } else {
            Flavor::Firstrun
        }
    });
    let fb = &opts.first_boot;
    let instance_id = format!("skelpi-{:016x}", rand::random::<u64>());
    let mut files: Vec<(String, Vec<u8>)> = vec![
        ("skelpi-agent".into(), agent.to_vec()),
        ("skelpi-agent.service".into(), UNIT.into()),
        ("skelpi-cluster.key".into(), keys.cluster.into()),
        (
            "skelpi-install.sh".into(),
            firstboot::install_script(fb.hostname_prefix.as_deref()).into(),
        ),
    ];
    if let Some(public) = keys.deploy_pub {
        files.push(("skelpi-deploy.pub".into(), public.into()));
    }
    match flavor {
        Flavor::CloudInit => {
            let old = fs.read_text("user-data").map_err(ImageError::io(tmp))?;
            if let Some(old) = old.filter(|o| !o.contains(firstboot::MARKER)) {
                files.push(("user-data.skelpi-orig".into(), old.into()));
            }
            files.push(("user-data".into(), firstboot::user_data(fb).into()));
            files.push((
                "meta-data".into(),
                firstboot::meta_data(&instance_id).into(),
            ));
            if let Some(w) = &fb.wifi {
                files.push(("network-config".into(), firstboot::network_config(w).into()));
            }
        }
        Flavor::Firstrun => {
            let old = fs.read_text("firstrun.sh").map_err(ImageError::io(tmp))?;
            if old.is_some_and(|o| !o.contains(firstboot::MARKER)) {
                return Err(bad_base(
                    "its boot partition already has a firstrun.sh (from Raspberry Pi Imager?); \
                     start from an unmodified image"
                        .into(),
                ));
            }
            files.push(("firstrun.sh".into(), firstboot::firstrun(fb).into()));
        }
    }
    let new_cmdline = firstboot::edit_cmdline(&cmdline, flavor, &instance_id);
    files.push(("cmdline.txt".into(), new_cmdline.clone().into()));
    let needed: u64 = files.iter().map(|(_, b)| b.len() as u64).sum();
    let free = fs.free_bytes().map_err(ImageError::io(tmp))?;
    if needed > free {
        return Err(bad_base(format!(
            "its boot partition has {free} bytes free; the files need {needed}"
        )));
    }
    for (name, bytes) in &files {
        fs.write(name, bytes).map_err(ImageError::io(tmp))?;
    }
    fs.close().map_err(io)?;
    Ok(ImageReport {
        flavor,
        detected,
        arch,
        files: files.iter().map(|(n, b)| (n.clone(), b.len())).collect(),
        cmdline: new_cmdline,
        image_bytes,
    })
}

/// Host names are `PREFIX-xxxxxx`: the prefix must be a DNS label of at
/// most 56 characters (63 with the suffix).
fn check_hostname_prefix(prefix: &str) -> Result<(), ImageError> {
    let ok = !prefix.is_empty()
        && prefix.len() <= 56
        && prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !prefix.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(ImageError::Option(format!(
            "host name prefix {prefix:?} must be 1 to 56 lower-case letters, digits or '-', \
             not starting with '-'"
        )))
    }
}

/// A login name Debian's `adduser` accepts: a lower-case letter or `_`,
/// then up to 31 lower-case letters, digits, `_` or `-`.
fn check_user(user: &str) -> Result<(), ImageError> {
    let mut bytes = user.bytes();
    let ok = user.len() <= 32
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ImageError::Option(format!(
            "user name {user:?} must start with a lower-case letter or '_' and hold at most \
             32 lower-case letters, digits, '_' or '-'"
        )))
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// `out` with `.partial` added, in the same directory (so the final
/// rename stays on one file system).
fn temp_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    out.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elf_arch_names_the_boards_and_refuses_the_laptop() {
        let mut head = vec![0u8; 64];
        head[..4].copy_from_slice(b"\x7fELF");
        head[5] = 1;
        head[4] = 2;
        head[18] = 183;
        assert_eq!(elf_arch(&head), Ok("aarch64"));
        head[4] = 1;
        head[18] = 40;
        assert_eq!(elf_arch(&head), Ok("arm (32-bit)"));
        head[4] = 2;
        head[18] = 62;
        assert!(
            elf_arch(&head)
                .unwrap_err()
                .contains("aarch64-unknown-linux-musl")
        );
        assert!(elf_arch(b"#!/bin/sh\n").is_err());
        let native = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(elf_arch(&native).is_err() || cfg!(target_arch = "aarch64"));
        // A virtual board takes its own architecture only.
        assert_eq!(elf_arch_for(&head, Some("amd64")), Ok("x86-64"));
        assert!(
            elf_arch_for(&head, Some("arm64"))
                .unwrap_err()
                .contains("arm64")
        );
        head[18] = 183;
        assert_eq!(elf_arch_for(&head, Some("arm64")), Ok("aarch64"));
        assert!(elf_arch_for(&head, Some("amd64")).is_err());
    }

    #[test]
    fn hostname_prefixes_are_dns_labels() {
        assert!(check_hostname_prefix("pi").is_ok());
        assert!(check_hostname_prefix("rack-2").is_ok());
        for bad in ["", "Pi", "-pi", "pi_1", &"p".repeat(57)] {
            assert!(check_hostname_prefix(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn user_names_are_login_names() {
        for good in ["pi", "alice", "_svc", "build-2"] {
            assert!(check_user(good).is_ok(), "{good}");
        }
        for bad in ["", "Pi", "2pi", "a b", "x'y", &"a".repeat(33)] {
            assert!(check_user(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_unit_is_the_repository_file() {
        let here = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../systemd/skelpi-agent.service"
        );
        assert_eq!(std::fs::read_to_string(here).unwrap(), UNIT);
    }
}
