//! `skelpi image`: arguments, progress and the summary.

use crate::image::{self, FirstBoot, Flavor, ImageOptions, Wifi};
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;

/// The arguments of `skelpi image` (its help text is on the command).
#[derive(Debug, Args)]
pub struct ImageArgs {
    /// Raspberry Pi OS image (.img, or .img.xz as downloaded).
    #[arg(long, value_name = "PATH")]
    base: PathBuf,
    /// Where to write the new image (raw, ready to flash).
    #[arg(long, value_name = "PATH")]
    out: PathBuf,
    /// Replace --out if it exists.
    #[arg(long)]
    force: bool,
    /// The agent built for the boards, e.g.
    /// target/aarch64-unknown-linux-musl/board/skelpi-agent.
    #[arg(long, value_name = "PATH")]
    agent_binary: PathBuf,
    /// Cluster key [default: $SKELPI_KEY_FILE or ~/.config/skelpi/cluster.key].
    #[arg(long, value_name = "PATH")]
    key_file: Option<PathBuf>,
    /// Let the boards accept new agent binaries (`skelpi deploy`) signed
    /// by the key whose public half is in FILE (the `.pub` file `skelpi
    /// keygen --deploy` wrote); without it, they refuse every deploy.
    #[arg(long, value_name = "FILE")]
    deploy_pubkey: Option<PathBuf>,
    /// Name boards PREFIX-xxxxxx (the last 6 hex digits of each board's
    /// serial number), so one image serves every board.
    #[arg(long, value_name = "PREFIX")]
    hostname_prefix: Option<String>,
    /// Allow SSH logins with the public keys in this file (one per line),
    /// as --user.
    #[arg(long, value_name = "PATH")]
    ssh_key: Option<PathBuf>,
    /// Login user for --ssh-key.
    #[arg(long, default_value = "pi", value_name = "NAME")]
    user: String,
    /// Join this wireless network (needs --wifi-country and a passphrase).
    #[arg(long, value_name = "SSID", requires = "wifi_country")]
    wifi: Option<String>,
    /// Wireless passphrase (stored in the image as its WPA key).
    #[arg(
        long,
        env = "SKELPI_WIFI_PASSPHRASE",
        value_name = "TEXT",
        hide_env_values = true
    )]
    wifi_passphrase: Option<String>,
    /// Two-letter country code for the wireless regulatory domain (GB, DE, US).
    #[arg(long, value_name = "CC")]
    wifi_country: Option<String>,
    /// First-boot mechanism [default: detected from the boot partition].
    #[arg(long, value_enum)]
    flavor: Option<Flavor>,
}

/// Runs `skelpi image`.
pub fn run(args: &ImageArgs) -> anyhow::Result<()> {
    let ssh_keys = match &args.ssh_key {
        None => Vec::new(),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read SSH keys from {}", path.display()))?;
            let keys: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned)
                .collect();
            if keys.is_empty()
                || keys.iter().any(|k| {
                    !k.starts_with("ssh-") && !k.starts_with("ecdsa-") && !k.starts_with("sk-")
                })
            {
                anyhow::bail!(
                    "{} must hold SSH public keys (lines like \"ssh-ed25519 AAAA... you@laptop\")",
                    path.display()
                );
            }
            keys
        }
    };
    let wifi = match &args.wifi {
        None => None,
        Some(ssid) => {
            let pass = args.wifi_passphrase.as_deref().context(
                "--wifi needs a passphrase: --wifi-passphrase or $SKELPI_WIFI_PASSPHRASE",
            )?;
            let country = args.wifi_country.as_deref().unwrap_or_default();
            Some(Wifi::new(ssid, pass, country)?)
        }
    };
    let opts = ImageOptions {
        base: args.base.clone(),
        out: args.out.clone(),
        force: args.force,
        agent_binary: args.agent_binary.clone(),
        key_file: args
            .key_file
            .clone()
            .unwrap_or_else(skelpi_wire::key::default_key_path),
        deploy_pubkey: args.deploy_pubkey.clone(),
        flavor: args.flavor,
        first_boot: FirstBoot {
            hostname_prefix: args.hostname_prefix.clone(),
            user: args.user.clone(),
            ssh_keys,
            wifi,
        },
    };
    let total = image::base_len(&opts.base)?;
    let bar = super::progress::bytes(total);
    bar.set_message(format!("reading {}", opts.base.display()));
    let report = image::build(&opts, |n| bar.inc(n));
    bar.finish_and_clear();
    let report = report?;
    println!(
        "wrote {} ({:.1} MiB)",
        opts.out.display(),
        report.image_bytes as f64 / (1u64 << 20) as f64
    );
    println!(
        "first boot: {}{}; agent: {}",
        report.flavor,
        if report.detected { ", detected" } else { "" },
        report.arch
    );
    println!("boot partition files:");
    for (name, len) in &report.files {
        println!("  {name:<24} {len:>10} bytes");
    }
    println!("cmdline.txt: {}", report.cmdline.trim_end());
    println!("flash it to each board, boot, then run `skelpi discover`");
    Ok(())
}
