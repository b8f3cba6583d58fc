//! `skelpi image` on synthetic Raspberry Pi OS images: an MBR with a FAT32
//! boot partition and a dummy root partition, built here in pure Rust
//! (mbrman, fatfs). Results are checked with the real tools: `fsck.fat -n`
//! (dosfstools), mtools, `cloud-init schema`, `bash -n`, and the install
//! script run into a scratch root with `systemctl --root`.

use super::support::{Scratch, skelpi};
use rand::RngCore;
use skelpi_wire::key::ClusterKey;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

const MIB: u64 = 1 << 20;
/// Boot partition: starts at 4 MiB, as Raspberry Pi OS's does.
const BOOT_START: u64 = 4 * MIB;
/// 300 MiB at 4 KiB clusters: enough clusters for FAT32. The file is
/// sparse, so it costs little disk.
const BOOT_LEN: u64 = 300 * MIB;
const ROOT_LEN: u64 = 2 * MIB;
const CMDLINE: &str = "console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 \
                       rootfstype=ext4 fsck.repair=yes rootwait resize\n";

/// Writes a base image; `trixie` adds pi-gen's cloud-init seed files.
/// Returns the root partition's random bytes (which must survive).
fn base_image(path: &Path, trixie: bool) -> Vec<u8> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap();
    let total = BOOT_START + BOOT_LEN + ROOT_LEN;
    f.set_len(total).unwrap();
    let mut mbr = mbrman::MBR::new_from(&mut f, 512, [0x4e, 0x63, 0x90, 0x91]).unwrap();
    let entry = |sys, start: u64, len: u64| mbrman::MBRPartitionEntry {
        boot: mbrman::BOOT_INACTIVE,
        first_chs: mbrman::CHS::empty(),
        sys,
        last_chs: mbrman::CHS::empty(),
        starting_lba: (start / 512) as u32,
        sectors: (len / 512) as u32,
    };
    mbr[1] = entry(0x0c, BOOT_START, BOOT_LEN);
    mbr[2] = entry(0x83, BOOT_START + BOOT_LEN, ROOT_LEN);
    mbr.write_into(&mut f).unwrap();
    {
        let mut slice =
            fscommon::StreamSlice::new(&mut f, BOOT_START, BOOT_START + BOOT_LEN).unwrap();
        fatfs::format_volume(
            &mut slice,
            fatfs::FormatVolumeOptions::new()
                .fat_type(fatfs::FatType::Fat32)
                .bytes_per_cluster(4096)
                .volume_label(*b"bootfs     "),
        )
        .unwrap();
        slice.seek(SeekFrom::Start(0)).unwrap();
        let fs = fatfs::FileSystem::new(slice, fatfs::FsOptions::new()).unwrap();
        let root = fs.root_dir();
        let mut files = vec![
            ("cmdline.txt", CMDLINE.to_owned()),
            ("config.txt", "[all]\narm_64bit=1\n".into()),
            (
                "issue.txt",
                "Raspberry Pi reference 2025-10-01\nGenerated using pi-gen\n".into(),
            ),
        ];
        if trixie {
            files.push((
                "meta-data",
                "dsmode: local\ninstance_id: rpios-image\n".into(),
            ));
            files.push(("user-data", "#cloud-config\nssh_pwauth: false\n".into()));
            files.push((
                "network-config",
                "network:\n  version: 2\n  ethernets:\n    eth0:\n      dhcp4: true\n      optional: true\n"
                    .into(),
            ));
        }
        for (name, text) in files {
            root.create_file(name)
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }
        drop(root);
        fs.unmount().unwrap();
    }
    let mut rootfs = vec![0u8; ROOT_LEN as usize];
    rand::rng().fill_bytes(&mut rootfs);
    f.seek(SeekFrom::Start(BOOT_START + BOOT_LEN)).unwrap();
    f.write_all(&rootfs).unwrap();
    rootfs
}

/// The boot partition of `image`, copied to `out` (sparse) for the tools
/// that cannot take an offset.
fn extract_boot(image: &Path, out: &Path) {
    let mut src = std::fs::File::open(image).unwrap();
    src.seek(SeekFrom::Start(BOOT_START)).unwrap();
    let mut dst = std::fs::File::create(out).unwrap();
    dst.set_len(BOOT_LEN).unwrap();
    let mut buf = vec![0u8; MIB as usize];
    for _ in 0..BOOT_LEN / MIB {
        src.read_exact(&mut buf).unwrap();
        if buf.iter().any(|&b| b != 0) {
            dst.write_all(&buf).unwrap();
        } else {
            dst.seek(SeekFrom::Current(MIB as i64)).unwrap();
        }
    }
}

/// Runs `skelpi image` from `base` to `out` with this agent and key, and
/// `extra` options; returns (exit code, stdout, stderr).
fn skelpi_image(
    base: &Path,
    out: &Path,
    agent: &Path,
    key: &Path,
    extra: &[&str],
) -> (Option<i32>, String, String) {
    let mut args = vec![
        "image",
        "--base",
        base.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--agent-binary",
        agent.to_str().unwrap(),
        "--key-file",
        key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    skelpi(&args)
}

/// Runs a tool; returns (success, stdout + stderr).
fn tool(program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (scripts/test.sh installs it)"));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// `fsck.fat -n` finds nothing to fix.
fn assert_fsck_clean(part: &Path) {
    let (ok, text) = tool("fsck.fat", &["-n", part.to_str().unwrap()]);
    assert!(ok, "fsck.fat -n failed:\n{text}");
    eprintln!("fsck.fat -n: {text}");
    let lower = text.to_lowercase();
    for bad in ["error", "corrupt", "bad ", "invalid", "repair", "expected"] {
        assert!(!lower.contains(bad), "fsck.fat -n reports {bad:?}:\n{text}");
    }
}

/// A file of the boot partition, read by mtools.
fn mread(part: &Path, name: &str, dir: &Path) -> Vec<u8> {
    let dest = dir.join(format!("m-{name}"));
    let (ok, text) = tool(
        "mcopy",
        &[
            "-n",
            "-i",
            part.to_str().unwrap(),
            &format!("::{name}"),
            dest.to_str().unwrap(),
        ],
    );
    assert!(ok, "mcopy ::{name}: {text}");
    std::fs::read(dest).unwrap()
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap()
}

fn key_file(dir: &Path) -> PathBuf {
    let path = dir.join("cluster.key");
    ClusterKey::generate().unwrap().write(&path, false).unwrap();
    path
}

/// Bytes of `image` outside the boot partition.
fn outside_boot(image: &Path) -> Vec<u8> {
    let all = std::fs::read(image).unwrap();
    let mut out = all[..BOOT_START as usize].to_vec();
    out.extend_from_slice(&all[(BOOT_START + BOOT_LEN) as usize..]);
    out
}

#[test]
fn a_trixie_image_gets_the_agent_and_a_cloud_init_seed() {
    let dir = Scratch::new("image-trixie");
    let base = dir.0.join("raspios.img");
    base_image(&base, true);
    // As downloaded: compressed.
    let base_xz = dir.0.join("raspios.img.xz");
    {
        let raw = std::fs::File::open(&base).unwrap();
        let mut enc = liblzma::read::XzEncoder::new(raw, 1);
        let mut out = std::fs::File::create(&base_xz).unwrap();
        std::io::copy(&mut enc, &mut out).unwrap();
    }
    let key = key_file(&dir.0);
    let ssh = dir.0.join("keys.pub");
    std::fs::write(
        &ssh,
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample you@laptop\n",
    )
    .unwrap();
    let agent = super::cross::arm_agent();
    let out = dir.0.join("cluster.img");
    let deploy = skelpi_wire::deploy_key::DeployKey::generate().unwrap();
    let deploy_pub = dir.0.join("deploy.pub");
    deploy.public().write(&deploy_pub).unwrap();
    let (code, stdout, stderr) = skelpi_image(
        &base_xz,
        &out,
        &agent,
        &key,
        &[
            "--deploy-pubkey",
            deploy_pub.to_str().unwrap(),
            "--hostname-prefix",
            "pi",
            "--ssh-key",
            ssh.to_str().unwrap(),
            "--wifi",
            "lab net",
            "--wifi-passphrase",
            "correct horse",
            "--wifi-country",
            "gb",
        ],
    );
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("cloud-init (Trixie), detected"), "{stdout}");
    assert!(stdout.contains("agent: aarch64"), "{stdout}");
    assert!(!dir.0.join("cluster.img.partial").exists());
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the image holds keys: owner only");
    }
    // Nothing outside the boot partition changed: MBR, gap, root partition.
    assert!(
        outside_boot(&out) == outside_boot(&base),
        "bytes outside the boot partition changed"
    );

    let part = dir.0.join("boot.part");
    extract_boot(&out, &part);
    assert_fsck_clean(&part);
    let (ok, listing) = tool("mdir", &["-i", part.to_str().unwrap(), "::"]);
    assert!(ok, "{listing}");
    for name in [
        "skelpi-agent",
        "skelpi-install.sh",
        "user-data",
        "meta-data",
    ] {
        assert!(listing.contains(name), "{name} missing:\n{listing}");
    }
    assert_eq!(
        mread(&part, "skelpi-agent", &dir.0),
        std::fs::read(&agent).unwrap()
    );
    let unit = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../systemd/skelpi-agent.service"
    );
    assert_eq!(
        mread(&part, "skelpi-agent.service", &dir.0),
        std::fs::read(unit).unwrap(),
        "the unit must be byte-identical to systemd/skelpi-agent.service"
    );
    assert_eq!(
        mread(&part, "skelpi-cluster.key", &dir.0),
        std::fs::read(&key).unwrap()
    );
    assert_eq!(
        text(mread(&part, "user-data.skelpi-orig", &dir.0)),
        "#cloud-config\nssh_pwauth: false\n"
    );

    // cloud-init: the seed validates and its instance id is on the cmdline.
    let meta = text(mread(&part, "meta-data", &dir.0));
    let id = meta
        .lines()
        .find_map(|l| l.strip_prefix("instance-id: "))
        .expect("instance-id");
    let cmdline = text(mread(&part, "cmdline.txt", &dir.0));
    assert_eq!(
        cmdline,
        format!("{} ds=nocloud;i={id}\n", CMDLINE.trim_end()),
        "one line, the seed's id appended"
    );
    let user_data = dir.0.join("user-data");
    std::fs::write(&user_data, mread(&part, "user-data", &dir.0)).unwrap();
    let (ok, said) = tool(
        "cloud-init",
        &["schema", "--config-file", user_data.to_str().unwrap()],
    );
    assert!(ok && said.contains("Valid"), "cloud-init schema:\n{said}");
    eprintln!("cloud-init schema: {said}");
    let network = text(mread(&part, "network-config", &dir.0));
    let (ok, parsed) = tool(
        "python3",
        &[
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(sys.argv[1])))",
            &network,
        ],
    );
    assert!(ok, "{parsed}");
    let net: serde_json::Value = serde_json::from_str(&parsed).unwrap();
    let ap = &net["network"]["wifis"]["wlan0"]["access-points"]["lab net"];
    assert_eq!(ap["password"].as_str().unwrap().len(), 64, "{net}");
    assert_eq!(net["network"]["wifis"]["wlan0"]["regulatory-domain"], "GB");

    // The install script, run into a scratch root as the first boot would.
    let root = dir.0.join("root");
    let boot = root.join("boot/firmware");
    std::fs::create_dir_all(&boot).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(root.join("sys/firmware/devicetree/base")).unwrap();
    std::fs::write(
        root.join("sys/firmware/devicetree/base/serial-number"),
        "10000000c0ffee42\0",
    )
    .unwrap();
    std::fs::write(
        root.join("etc/hosts"),
        "127.0.0.1\tlocalhost\n127.0.1.1\traspberrypi\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/hostname"), "raspberrypi\n").unwrap();
    for name in [
        "skelpi-agent",
        "skelpi-agent.service",
        "skelpi-cluster.key",
        "skelpi-deploy.pub",
        "skelpi-install.sh",
    ] {
        std::fs::write(boot.join(name), mread(&part, name, &dir.0)).unwrap();
    }
    let run = Command::new("sh")
        .arg(boot.join("skelpi-install.sh"))
        .env("SKELPI_ROOT", &root)
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&run.stdout).into_owned() + &String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{said}");
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &str| {
        std::fs::metadata(root.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("usr/local/bin/skelpi-agent"), 0o755);
    assert_eq!(mode("etc/skelpi/cluster.key"), 0o600);
    assert_eq!(mode("etc/skelpi"), 0o700);
    assert_eq!(
        std::fs::read(root.join("etc/skelpi/cluster.key")).unwrap(),
        std::fs::read(&key).unwrap()
    );
    // The deploy public key, where agents look for it.
    assert_eq!(mode("etc/skelpi/deploy.pub"), 0o644);
    assert_eq!(
        skelpi_wire::deploy_key::DeployPublicKey::load(&root.join("etc/skelpi/deploy.pub"))
            .unwrap(),
        deploy.public()
    );
    assert!(
        !boot.join("skelpi-cluster.key").exists(),
        "the key must leave the FAT partition"
    );
    // The last six hex digits of the serial number name the board.
    assert_eq!(
        std::fs::read_to_string(root.join("etc/hostname")).unwrap(),
        "pi-ffee42\n"
    );
    assert!(
        std::fs::read_to_string(root.join("etc/hosts"))
            .unwrap()
            .contains("127.0.1.1\tpi-ffee42\n")
    );
    let wants = root.join("etc/systemd/system/multi-user.target.wants/skelpi-agent.service");
    assert!(
        wants.symlink_metadata().is_ok(),
        "systemctl enable made no link: {said}"
    );
    // Again: harmless, the key now comes from /etc/skelpi.
    let again = Command::new("sh")
        .arg(boot.join("skelpi-install.sh"))
        .env("SKELPI_ROOT", &root)
        .status()
        .unwrap();
    assert!(again.success());
}

#[test]
fn a_bookworm_image_gets_firstrun_and_a_second_run_replaces_it() {
    let dir = Scratch::new("image-bookworm");
    let base = dir.0.join("raspios.img");
    base_image(&base, false);
    let key = key_file(&dir.0);
    let agent = dir.0.join("skelpi-agent");
    std::fs::write(&agent, fake_arm_elf()).unwrap();
    let out = dir.0.join("cluster.img");
    let args = |base: &Path, out: &Path| {
        skelpi_image(
            base,
            out,
            &agent,
            &key,
            &[
                "--wifi",
                "lab",
                "--wifi-passphrase",
                "it's a secret",
                "--wifi-country",
                "DE",
            ],
        )
    };
    let (code, stdout, stderr) = args(&base, &out);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("firstrun.sh (Bookworm), detected"),
        "{stdout}"
    );
    assert!(stdout.contains("agent: arm (32-bit)"), "{stdout}");
    // The output of one run is a fine base for another: nothing doubles.
    let out2 = dir.0.join("cluster2.img");
    let (code, stdout, stderr) = args(&out, &out2);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let part = dir.0.join("boot.part");
    extract_boot(&out2, &part);
    assert_fsck_clean(&part);
    let cmdline = text(mread(&part, "cmdline.txt", &dir.0));
    assert_eq!(
        cmdline,
        format!(
            "{} systemd.run=/boot/firmware/firstrun.sh systemd.run_success_action=reboot \
             systemd.unit=kernel-command-line.target\n",
            CMDLINE.trim_end()
        )
    );
    let firstrun = dir.0.join("firstrun.sh");
    std::fs::write(&firstrun, mread(&part, "firstrun.sh", &dir.0)).unwrap();
    let (ok, said) = tool("bash", &["-n", firstrun.to_str().unwrap()]);
    assert!(ok, "firstrun.sh does not parse: {said}");
    let script = std::fs::read_to_string(&firstrun).unwrap();
    assert!(script.contains(
        "sh /boot/firmware/skelpi-install.sh || rm -f /boot/firmware/skelpi-cluster.key\n"
    ));
    assert!(
        !script.contains("secret"),
        "the passphrase is stored only as its PSK"
    );
    assert!(script.contains("psk="), "{script}");
    assert!(script.ends_with("exit 0\n"));
    let install = dir.0.join("install.sh");
    std::fs::write(&install, mread(&part, "skelpi-install.sh", &dir.0)).unwrap();
    let (ok, said) = tool("sh", &["-n", install.to_str().unwrap()]);
    assert!(ok, "{said}");
}

/// An ELF header for 32-bit ARM, followed by random bytes.
fn fake_arm_elf() -> Vec<u8> {
    let mut b = vec![0u8; 256 * 1024];
    rand::rng().fill_bytes(&mut b);
    b[..4].copy_from_slice(b"\x7fELF");
    b[4] = 1; // 32-bit
    b[5] = 1; // little endian
    b[18..20].copy_from_slice(&40u16.to_le_bytes()); // EM_ARM
    b
}

#[test]
fn bad_inputs_are_refused_by_name_and_leave_no_file() {
    let dir = Scratch::new("image-bad");
    let base = dir.0.join("raspios.img");
    base_image(&base, false);
    let key = key_file(&dir.0);
    let arm = dir.0.join("arm-agent");
    std::fs::write(&arm, fake_arm_elf()).unwrap();
    let out = dir.0.join("out.img");
    let run = |base: &Path, agent: &Path, key: &Path, extra: &[&str]| {
        let (code, _, stderr) = skelpi_image(base, &out, agent, key, extra);
        assert_eq!(code, Some(2), "{stderr}");
        assert!(
            !out.exists() && !dir.0.join("out.img.partial").exists(),
            "{stderr}"
        );
        stderr
    };
    // The laptop's own build.
    let e = run(&base, Path::new(env!("CARGO_BIN_EXE_skelpi")), &key, &[]);
    assert!(
        e.contains("x86-64") && e.contains("aarch64-unknown-linux-musl"),
        "{e}"
    );
    // A key others can read.
    let loose = dir.0.join("loose.key");
    std::fs::copy(&key, &loose).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = run(&base, &arm, &loose, &[]);
    assert!(e.contains("loose.key"), "{e}");
    // Not a disk image.
    let junk = dir.0.join("junk.img");
    std::fs::write(&junk, vec![7u8; 4096]).unwrap();
    let e = run(&junk, &arm, &key, &[]);
    assert!(e.contains("junk.img") && e.contains("partition"), "{e}");
    // A truncated download.
    let xz = xz_of(&base);
    let cut = dir.0.join("cut.img.xz");
    std::fs::write(&cut, &xz[..xz.len() / 2]).unwrap();
    let e = run(&cut, &arm, &key, &[]);
    assert!(e.contains("cut.img.xz"), "{e}");
    // A bad host name prefix, and a wifi passphrase too short.
    let e = run(&base, &arm, &key, &["--hostname-prefix", "Pi_1"]);
    assert!(e.contains("Pi_1"), "{e}");
    let e = run(
        &base,
        &arm,
        &key,
        &[
            "--wifi",
            "x",
            "--wifi-passphrase",
            "short",
            "--wifi-country",
            "GB",
        ],
    );
    assert!(e.contains("8 to 63"), "{e}");
    // A device (or anything but a file) is not an output.
    let (code, _, stderr) = skelpi_image(&base, Path::new("/dev/null"), &arm, &key, &["--force"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("not a regular file"), "{stderr}");
    assert!(!Path::new("/dev/null.partial").exists());
    // An existing output is kept unless --force.
    std::fs::write(&out, b"keep me").unwrap();
    let (code, _, stderr) = skelpi_image(&base, &out, &arm, &key, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--force"), "{stderr}");
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
}

/// The image at `path`, compressed as Raspberry Pi OS images come (`.xz`).
fn xz_of(path: &Path) -> Vec<u8> {
    let raw = std::fs::read(path).unwrap();
    let mut xz = Vec::new();
    liblzma::read::XzEncoder::new(&raw[..], 0)
        .read_to_end(&mut xz)
        .unwrap();
    xz
}

/// Marks the base at `path` as a virtual board of `arch` (what
/// `scripts/board-base.sh` writes on its boot partition).
fn mark_virtual_board(path: &Path, arch: &str) {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let slice = fscommon::StreamSlice::new(&mut f, BOOT_START, BOOT_START + BOOT_LEN).unwrap();
    let fs = fatfs::FileSystem::new(slice, fatfs::FsOptions::new()).unwrap();
    let mut file = fs.root_dir().create_file("skelpi-board").unwrap();
    file.write_all(format!("{arch}\n").as_bytes()).unwrap();
    drop(file);
    fs.unmount().unwrap();
}

#[test]
fn a_virtual_board_takes_an_agent_of_its_own_architecture_and_a_pi_only_arm() {
    let dir = Scratch::new("image-virtual");
    let key = key_file(&dir.0);
    let laptop = Path::new(env!("CARGO_BIN_EXE_skelpi"));
    let arm = dir.0.join("arm-agent");
    std::fs::write(&arm, fake_arm_elf()).unwrap();
    let out = dir.0.join("out.img");

    // An amd64 virtual board takes the laptop's build (the tests' boards).
    let amd64 = dir.0.join("amd64.img");
    base_image(&amd64, true);
    mark_virtual_board(&amd64, "amd64");
    let (code, stdout, stderr) = skelpi_image(&amd64, &out, laptop, &key, &[]);
    if cfg!(target_arch = "x86_64") {
        assert_eq!(code, Some(0), "{stderr}");
        assert!(stdout.contains("x86-64"), "{stdout}");
        std::fs::remove_file(&out).unwrap();
    }
    // ... and refuses a 32-bit ARM one.
    let (code, _, stderr) = skelpi_image(&amd64, &out, &arm, &key, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("is a 32-bit ARM program; this virtual board is amd64"),
        "{stderr}"
    );
    assert!(!out.exists());

    // An arm64 board, and a Pi image compressed as they come, refuse it:
    // the check is the board's, never weakened for a user's Pi image.
    let arm64 = dir.0.join("arm64.img");
    base_image(&arm64, true);
    mark_virtual_board(&arm64, "arm64");
    let pi = dir.0.join("raspios.img");
    base_image(&pi, true);
    let pi_xz = dir.0.join("raspios.img.xz");
    std::fs::write(&pi_xz, xz_of(&pi)).unwrap();
    for base in [&arm64, &pi, &pi_xz] {
        let (code, _, stderr) = skelpi_image(base, &out, laptop, &key, &[]);
        assert_eq!(code, Some(2), "{stderr}");
        assert!(
            stderr.contains("x86-64") || stderr.contains("machine 62"),
            "{stderr}"
        );
        assert!(!out.exists(), "{stderr}");
    }
}
