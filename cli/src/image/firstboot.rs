//! The first-boot files `skelpi image` writes on the boot partition, as
//! text: the install script shared by both flavours, cloud-init's
//! user-data, meta-data and network-config (Trixie), firstrun.sh
//! (Bookworm), and the edits to cmdline.txt.
//!
//! Formats follow what Raspberry Pi Imager writes for the same OS
//! releases (pi-gen's NoCloud seed at `/boot/firmware`, imager's
//! `firstrun.sh` with `systemd.run=`), so the images boot like ones the
//! imager customised.

use super::{Flavor, Wifi};

/// Marks the files this tool wrote, so a second run replaces them rather
/// than taking them for the user's.
pub const MARKER: &str = "Written by `skelpi image`";

/// Where the boot partition is mounted on Raspberry Pi OS Bookworm and
/// Trixie.
pub const BOOT_MOUNT: &str = "/boot/firmware";

/// What the first boot sets up besides the agent.
#[derive(Debug, Clone, Default)]
pub struct FirstBoot {
    /// Host name prefix: boards become `PREFIX-xxxxxx` (the last six hex
    /// digits of the board's serial number). `None`: keep the image's.
    pub hostname_prefix: Option<String>,
    /// Login user for SSH keys (created by cloud-init, renamed from the
    /// first user by firstrun.sh).
    pub user: String,
    /// SSH public keys allowed to log in as `user`; none: SSH stays off.
    pub ssh_keys: Vec<String>,
    /// Wireless network to join.
    pub wifi: Option<Wifi>,
}

/// A string quoted for POSIX sh: inside single quotes, each `'` closed,
/// escaped and reopened.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A string quoted for YAML: a JSON string is a valid YAML double-quoted
/// scalar.
fn yaml_quote(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialise")
}

/// The install script (`skelpi-install.sh`): copies the agent, its unit
/// and the cluster key from the boot partition into place, removes the
/// key from the (world-readable) FAT partition, sets the host name and
/// enables the unit. With `--start` it also starts the agent (cloud-init
/// runs it late in a normal boot; firstrun.sh runs it early and reboots).
///
/// `SKELPI_ROOT` installs below a directory instead of `/` (tests run it
/// so, with `systemctl --root`); `SKELPI_BOOT` names the boot partition.
/// Running it again is harmless.
pub fn install_script(hostname_prefix: Option<&str>) -> String {
    let prefix = sh_quote(hostname_prefix.unwrap_or(""));
    format!(
        r#"#!/bin/sh
# {MARKER}: installs skelpi-agent from the boot partition.
# Run once as root at first boot, by cloud-init's runcmd (Raspberry Pi OS
# Trixie) or by firstrun.sh (Bookworm). Running it again is harmless.
# SKELPI_ROOT: install below this directory instead of / (for tests).
set -eu
ROOT="${{SKELPI_ROOT:-}}"
BOOT="${{SKELPI_BOOT:-$ROOT{BOOT_MOUNT}}}"
[ -d "$BOOT" ] || BOOT="$ROOT/boot"
HOSTNAME_PREFIX={prefix}
say() {{ echo "skelpi-install: $*"; }}

install -D -m 0755 "$BOOT/skelpi-agent" "$ROOT/usr/local/bin/skelpi-agent"
install -D -m 0644 "$BOOT/skelpi-agent.service" \
    "$ROOT/etc/systemd/system/skelpi-agent.service"
if [ -f "$BOOT/skelpi-cluster.key" ]; then
    install -d -m 0700 "$ROOT/etc/skelpi"
    install -m 0600 "$BOOT/skelpi-cluster.key" "$ROOT/etc/skelpi/cluster.key"
    # The FAT partition is readable by every user: no key left there.
    rm -f "$BOOT/skelpi-cluster.key"
elif [ ! -f "$ROOT/etc/skelpi/cluster.key" ]; then
    say "no cluster key: neither $BOOT/skelpi-cluster.key nor $ROOT/etc/skelpi/cluster.key"
    exit 1
fi
# The deploy public key (public: it may stay on the FAT partition).
if [ -f "$BOOT/skelpi-deploy.pub" ]; then
    install -D -m 0644 "$BOOT/skelpi-deploy.pub" "$ROOT/etc/skelpi/deploy.pub"
    say "deploys signed by $(cut -c1-16 "$ROOT/etc/skelpi/deploy.pub")... accepted"
fi

if [ -n "$HOSTNAME_PREFIX" ]; then
    serial=$(tr -d '\000' < "$ROOT/sys/firmware/devicetree/base/serial-number" 2>/dev/null || true)
    [ -n "$serial" ] || serial=$(sed -n 's/^Serial[[:space:]]*:[[:space:]]*//p' "$ROOT/proc/cpuinfo" 2>/dev/null || true)
    [ -n "$serial" ] || serial=$(cat "$ROOT/etc/machine-id" 2>/dev/null || true)
    suffix=$(printf '%s' "$serial" | tr -cd '0-9a-fA-F' | tr 'A-F' 'a-f' | tail -c 6)
    name="$HOSTNAME_PREFIX-${{suffix:-0}}"
    echo "$name" > "$ROOT/etc/hostname"
    if grep -q '^127\.0\.1\.1' "$ROOT/etc/hosts" 2>/dev/null; then
        sed -i "s/^127\.0\.1\.1.*/127.0.1.1\t$name/" "$ROOT/etc/hosts"
    else
        printf '127.0.1.1\t%s\n' "$name" >> "$ROOT/etc/hosts"
    fi
    if [ -z "$ROOT" ]; then
        hostnamectl set-hostname "$name" 2>/dev/null || hostname "$name" || true
        # Announce the new name on mDNS now, not after a reboot.
        systemctl try-restart avahi-daemon.service 2>/dev/null || true
    fi
    say "host name $name"
fi

if [ -n "$ROOT" ]; then
    systemctl --root="$ROOT" enable skelpi-agent.service
else
    systemctl enable skelpi-agent.service
    if [ "${{1:-}}" = --start ]; then
        systemctl daemon-reload
        systemctl start --no-block skelpi-agent.service
    fi
fi
say "skelpi-agent installed and enabled"
"#
    )
}

/// cloud-init `meta-data`: a fresh instance id makes cloud-init run the
/// per-instance modules (runcmd) once on this image's first boot.
pub fn meta_data(instance_id: &str) -> String {
    format!("# {MARKER}.\ninstance-id: {instance_id}\ndsmode: local\n")
}

/// cloud-init `user-data`: runs the install script once, and sets up the
/// SSH login and host name handling asked for.
pub fn user_data(fb: &FirstBoot) -> String {
    let mut s = format!(
        "#cloud-config\n# {MARKER}: the first boot installs skelpi-agent from\n\
         # {BOOT_MOUNT} and starts it (see skelpi-install.sh there).\n\
         ssh_pwauth: false\n"
    );
    if fb.hostname_prefix.is_some() {
        // The install script names the board; cloud-init must not undo it.
        s.push_str("preserve_hostname: true\n");
    }
    if !fb.ssh_keys.is_empty() {
        s.push_str("users:\n");
        s.push_str(&format!("  - name: {}\n", yaml_quote(&fb.user)));
        s.push_str(
            "    groups: users,adm,dialout,audio,netdev,video,plugdev,cdrom,games,input,gpio,spi,i2c,render,sudo\n\
             \x20   shell: /bin/bash\n\
             \x20   lock_passwd: true\n\
             \x20   sudo: \"ALL=(ALL) NOPASSWD:ALL\"\n\
             \x20   ssh_authorized_keys:\n",
        );
        for key in &fb.ssh_keys {
            s.push_str(&format!("      - {}\n", yaml_quote(key)));
        }
    }
    s.push_str("runcmd:\n");
    if !fb.ssh_keys.is_empty() {
        s.push_str("  - [systemctl, enable, --now, ssh]\n");
    }
    s.push_str(&format!(
        "  - [sh, {BOOT_MOUNT}/skelpi-install.sh, --start]\n"
    ));
    s
}

/// cloud-init `network-config` (netplan v2): wired DHCP as pi-gen's
/// default, plus the wireless network. The passphrase is stored as its
/// WPA PSK, as Raspberry Pi Imager does.
pub fn network_config(wifi: &Wifi) -> String {
    format!(
        "# {MARKER}.\nnetwork:\n  version: 2\n  ethernets:\n    eth0:\n      dhcp4: true\n      optional: true\n  \
         wifis:\n    wlan0:\n      dhcp4: true\n      optional: true\n      regulatory-domain: {}\n      \
         access-points:\n        {}:\n          password: {}\n",
        yaml_quote(&wifi.country),
        yaml_quote(&wifi.ssid),
        yaml_quote(&wifi.psk_hex()),
    )
}

/// `firstrun.sh` for Bookworm: run once by `systemd.run=` early in the
/// first boot, then it removes itself and its cmdline.txt parameters and
/// the system reboots (as the script Raspberry Pi Imager writes).
pub fn firstrun(fb: &FirstBoot) -> String {
    let mut s = format!(
        "#!/bin/bash\n# {MARKER}: Raspberry Pi OS Bookworm runs this once at first boot\n\
         # (systemd.run= in cmdline.txt), then reboots.\nset +e\n\n"
    );
    if !fb.ssh_keys.is_empty() {
        let keys = fb.ssh_keys.join("\n");
        let (user, keys_q) = (sh_quote(&fb.user), sh_quote(&keys));
        s.push_str(&format!(
            r#"FIRSTUSER=$(getent passwd 1000 | cut -d: -f1)
FIRSTUSERHOME=$(getent passwd 1000 | cut -d: -f6)
if [ -f /usr/lib/raspberrypi-sys-mods/imager_custom ]; then
   /usr/lib/raspberrypi-sys-mods/imager_custom enable_ssh -k {keys_q}
else
   install -o "$FIRSTUSER" -m 700 -d "$FIRSTUSERHOME/.ssh"
   printf '%s\n' {keys_q} > "$FIRSTUSERHOME/.ssh/authorized_keys"
   chown "$FIRSTUSER:" "$FIRSTUSERHOME/.ssh/authorized_keys"
   chmod 600 "$FIRSTUSERHOME/.ssh/authorized_keys"
   echo 'PasswordAuthentication no' >> /etc/ssh/sshd_config
   systemctl enable ssh
fi
if [ -f /usr/lib/userconf-pi/userconf ]; then
   /usr/lib/userconf-pi/userconf {user} '*'
elif [ "$FIRSTUSER" != {user} ]; then
   usermod -l {user} "$FIRSTUSER"
   usermod -m -d /home/{user} {user}
fi

"#
        ));
    }
    if let Some(w) = &fb.wifi {
        let (ssid, psk, cc) = (
            sh_quote(&w.ssid),
            sh_quote(&w.psk_hex()),
            sh_quote(&w.country),
        );
        s.push_str(&format!(
            r#"if [ -f /usr/lib/raspberrypi-sys-mods/imager_custom ]; then
   /usr/lib/raspberrypi-sys-mods/imager_custom set_wlan {ssid} {psk} {cc}
else
   umask 077
   cat > /etc/NetworkManager/system-connections/preconfigured.nmconnection <<'SKELPI_WLAN'
[connection]
id=preconfigured
type=wifi
[wifi]
mode=infrastructure
ssid={ssid_raw}
[wifi-security]
key-mgmt=wpa-psk
psk={psk_raw}
[ipv4]
method=auto
[ipv6]
method=auto
SKELPI_WLAN
   rfkill unblock wifi
   raspi-config nonint do_wifi_country {cc}
fi

"#,
            ssid_raw = w.ssid,
            psk_raw = w.psk_hex(),
        ));
    }
    s.push_str(&format!(
        "sh {BOOT_MOUNT}/skelpi-install.sh || rm -f {BOOT_MOUNT}/skelpi-cluster.key\n\
         rm -f {BOOT_MOUNT}/firstrun.sh\n\
         sed -i 's| systemd.run.*||g' {BOOT_MOUNT}/cmdline.txt\n\
         exit 0\n"
    ));
    s
}

/// Kernel parameters `skelpi image` adds for `flavor`.
fn cmdline_params(flavor: Flavor, instance_id: &str) -> Vec<String> {
    match flavor {
        // Tells cloud-init the instance id without reading the seed, so it
        // does not take every boot for a new instance.
        Flavor::CloudInit => vec![format!("ds=nocloud;i={instance_id}")],
        Flavor::Firstrun => [
            format!("systemd.run={BOOT_MOUNT}/firstrun.sh"),
            "systemd.run_success_action=reboot".into(),
            "systemd.unit=kernel-command-line.target".into(),
        ]
        .into(),
    }
}

/// Whether a kernel parameter is one this tool (or Raspberry Pi Imager)
/// adds for first boot, to be replaced rather than repeated.
fn is_first_boot_param(p: &str) -> bool {
    p.starts_with("systemd.run=")
        || p.starts_with("systemd.run_success_action=")
        || p == "systemd.unit=kernel-command-line.target"
        || p.starts_with("ds=nocloud")
}

/// cmdline.txt with this flavour's first-boot parameters at the end (where
/// firstrun.sh's `sed` expects them), replacing earlier ones. It stays one
/// line; a final newline is kept if there was one.
pub fn edit_cmdline(cmdline: &str, flavor: Flavor, instance_id: &str) -> String {
    let line = cmdline.lines().next().unwrap_or("");
    let mut params: Vec<String> = line
        .split_whitespace()
        .filter(|p| !is_first_boot_param(p))
        .map(str::to_owned)
        .collect();
    params.extend(cmdline_params(flavor, instance_id));
    let mut out = params.join(" ");
    if cmdline.ends_with('\n') {
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PI_CMDLINE: &str = "console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 \
                              rootfstype=ext4 fsck.repair=yes rootwait resize\n";

    #[test]
    fn cmdline_gets_the_parameters_once_at_the_end() {
        let once = edit_cmdline(PI_CMDLINE, Flavor::Firstrun, "x");
        assert!(once.ends_with(
            "resize systemd.run=/boot/firmware/firstrun.sh \
             systemd.run_success_action=reboot systemd.unit=kernel-command-line.target\n"
        ));
        assert_eq!(edit_cmdline(&once, Flavor::Firstrun, "x"), once);
        let cloud = edit_cmdline(&once, Flavor::CloudInit, "skelpi-1");
        assert!(cloud.ends_with("resize ds=nocloud;i=skelpi-1\n"), "{cloud}");
        assert_eq!(cloud.lines().count(), 1);
        assert_eq!(
            edit_cmdline("a b", Flavor::CloudInit, "i"),
            "a b ds=nocloud;i=i"
        );
    }

    #[test]
    fn quoting_survives_quotes() {
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(yaml_quote("a \"b\": c"), r#""a \"b\": c""#);
    }

    #[test]
    fn user_data_runs_the_installer_and_adds_keys_only_when_given() {
        let plain = user_data(&FirstBoot::default());
        assert!(plain.starts_with("#cloud-config\n"));
        assert!(plain.contains("[sh, /boot/firmware/skelpi-install.sh, --start]"));
        assert!(!plain.contains("users:") && !plain.contains("preserve_hostname"));
        let fb = FirstBoot {
            hostname_prefix: Some("pi".into()),
            user: "alice".into(),
            ssh_keys: vec!["ssh-ed25519 AAAA alice@laptop".into()],
            wifi: None,
        };
        let full = user_data(&fb);
        assert!(full.contains("preserve_hostname: true"));
        assert!(full.contains("- name: \"alice\""));
        assert!(full.contains("- \"ssh-ed25519 AAAA alice@laptop\""));
        assert!(full.contains("[systemctl, enable, --now, ssh]"));
    }
}
