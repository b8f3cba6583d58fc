#!/usr/bin/env bash
# Builds the agent for the boards and writes an SD-card image that boots
# into it: ./image/build.sh --base raspios.img.xz --out cluster.img [skelpi image options]
#
# SKELPI_BOARD_TARGET picks the build: aarch64-unknown-linux-musl (default;
# 64-bit Raspberry Pi OS) or armv7-unknown-linux-gnueabihf (32-bit).
# Everything else is `skelpi image` (see `skelpi image --help`); the cluster
# key defaults to ~/.config/skelpi/cluster.key (`skelpi keygen` makes one).
set -euo pipefail
if [[ ${1-} == -h || ${1-} == --help ]]; then
    sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 0
fi
cd "$(dirname "${BASH_SOURCE[0]}")/.."
target=${SKELPI_BOARD_TARGET:-aarch64-unknown-linux-musl}
cargo build --profile board --target "$target" -p skelpi-agent --bin skelpi-agent
cargo build --release -p skelpi-cli --bin skelpi
exec ./target/release/skelpi image --agent-binary "target/$target/board/skelpi-agent" "$@"
