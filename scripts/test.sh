#!/usr/bin/env bash
# The project's test command: ./scripts/test.sh [NEXTEST-ARGS...]
#
# On a fresh Debian machine, as root, it installs what the tests need, then
# builds the workspace once, runs every test (with cargo-nextest when it can),
# the doctests and the embedding example (master/examples/embed.rs). Extra
# arguments go to nextest, e.g. a filter:
#   ./scripts/test.sh key::
# `./scripts/test.sh --setup-only` does the set-up and stops (.ci/run uses it
# before clippy).
#
# Exit status: 0 all passed; 2 set-up impossible; otherwise that of the
# step that failed (cargo: 101, nextest: 100).
set -euo pipefail

# Debian packages the tests use. Add new ones here, one per line.
APT_PACKAGES=(
    iproute2    # ip netns, tc: the cluster lab and its test
    procps      # kill, ps: the lab stops its agents; tests look for leftovers
    systemd     # systemd-analyze: the unit is verified and its exposure scored
    clang       # C parts of ring for the aarch64 agent
    llvm        # llvm-ar for the same
    qemu-user-static # runs the aarch64 and armv7 agents in the cross-architecture tests
    gcc-arm-linux-gnueabihf # links the armv7 agent and compiles ring's C for it
    libc6-dev-armhf-cross   # its sysroot; qemu-arm-static -L runs the agent with it
    avahi-utils # avahi-browse: reads our mDNS records as standard DNS-SD
    avahi-daemon # the daemon avahi-browse asks, in the lab (skelpi lab up --avahi)
    dbus-daemon # its bus, one per lab
    dosfstools  # fsck.fat -n: checks the boot partitions `skelpi image` writes
    mtools      # mdir, mcopy: read those partitions without mounting them
    cloud-init  # cloud-init schema: validates the user-data those images carry
    python3-yaml # parses their network-config
    python3-venv # a venv for kubernetes-validate (PyPI), which checks k8s/
    python3     # runs the example port program (examples/ports/scale.py)
    mmdebstrap  # builds the virtual boards' base (scripts/board-base.sh)
    e2fsprogs   # mkfs.ext4 -d for that base; debugfs reads a board's disk back
    fdisk       # sfdisk lays the base out as Raspberry Pi OS
    qemu-system-x86 # boots the virtual boards (software emulation)
    qemu-system-arm # boots the arm64 virtual board (qemu-system-aarch64 -M virt)
    arch-test   # mmdebstrap checks it can run arm64 programs (for the arm64 base)
    dnsmasq-base # the DHCP server on the lab bridge the boards join
    openssh-client # the board test logs in to stop and kill the agent
    tmux        # skelpi top is tested in a real terminal (capture-pane)
)

cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }
die() {
    local status=$1
    shift
    printf 'test.sh: %s\n' "$*" >&2
    exit "$status"
}

setup_only=false
if [[ ${1-} == --setup-only ]]; then
    setup_only=true
    shift
fi

# --- set-up -----------------------------------------------------------------

step "system packages: ${APT_PACKAGES[*]}"
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
    [[ $status == installed ]] || missing+=("$pkg")
done
if ((${#missing[@]} == 0)); then
    echo "all installed"
elif [[ $(id -u) -ne 0 ]]; then
    die 2 "missing Debian packages: ${missing[*]}; run as root, or install them:" \
        "apt-get install --no-install-recommends ${missing[*]}"
else
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

step "rust components: rustfmt clippy"
command -v cargo >/dev/null || die 2 "cargo not found: install a Rust toolchain (rustup) first"
components=()
cargo fmt --version >/dev/null 2>&1 || components+=(rustfmt)
cargo clippy --version >/dev/null 2>&1 || components+=(clippy)
if ((${#components[@]} == 0)); then
    echo "all installed"
elif command -v rustup >/dev/null; then
    rustup component add "${components[@]}"
else
    die 2 "missing rust components: ${components[*]}, and no rustup to add them"
fi

# The oldest Rust the workspace says it builds with (Cargo.toml's
# rust-version): installed here, checked below.
MSRV=$(sed -n 's/^rust-version = "\(.*\)"$/\1/p' Cargo.toml)
[[ -n $MSRV ]] || die 2 "Cargo.toml states no rust-version"
step "rust $MSRV (the stated minimum)"
if rustup toolchain list 2>/dev/null | grep -q "^$MSRV[.-]"; then
    echo "installed"
elif command -v rustup >/dev/null; then
    rustup toolchain install "$MSRV" --profile minimal
else
    die 2 "rust $MSRV (Cargo.toml's rust-version) is missing, and no rustup to add it"
fi

# The boards' agent: 64-bit (static musl) and 32-bit Raspberry Pi OS.
BOARD_TARGETS=(aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf)
# WebAssembly guests: examples/wasm-guest, pushed to agents by the tests.
GUEST_TARGET=wasm32-unknown-unknown
for target in "${BOARD_TARGETS[@]}" "$GUEST_TARGET"; do
    step "rust target $target"
    if rustup target list --installed 2>/dev/null | grep -qx "$target"; then
        echo "installed"
    elif command -v rustup >/dev/null; then
        rustup target add "$target"
    else
        die 2 "the $target target is missing, and no rustup to add it"
    fi
done

step "cargo-nextest"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest --version | head -n1
else
    echo "not found: cargo install --locked cargo-nextest"
    cargo install --locked cargo-nextest ||
        echo "test.sh: could not install cargo-nextest; falling back to cargo test" >&2
fi

if $setup_only; then
    exit 0
fi

# --- build and test ---------------------------------------------------------

# A clean build with its board targets and the MSRV check needs about
# 8 GiB; a full disk shows up as a linker killed by SIGBUS, so say it first.
step "disk space for target/"
mkdir -p target
free_kib=$(df -Pk target | awk 'NR == 2 { print $4 }')
echo "$((free_kib / 1024 / 1024)) GiB free"
if ((free_kib < 8 * 1024 * 1024)); then
    echo "test.sh: warning: less than 8 GiB free under target/: a clean build may" \
        "run out of disk (free space, or set CARGO_TARGET_DIR elsewhere)" >&2
fi

step "cargo build --workspace --all-targets"
cargo build --workspace --all-targets

for target in "${BOARD_TARGETS[@]}"; do
    step "cargo build --target $target -p skelpi-agent"
    cargo build --target "$target" -p skelpi-agent --bin skelpi-agent
done

step "the example WebAssembly guest (examples/wasm-guest, $GUEST_TARGET)"
cargo build --release --target "$GUEST_TARGET" --manifest-path examples/wasm-guest/Cargo.toml

# The virtual boards' base: Debian packages, built once per machine (cached
# by scripts/board-base.sh); the board tests need root, as this does.
if [ "$(id -u)" -eq 0 ]; then
    step "virtual board base (scripts/board-base.sh; cached after the first build)"
    ./scripts/board-base.sh
    # The arm64 base runs arm64 programs while it is built: qemu-user,
    # registered with the kernel's binfmt_misc (mounted if it is not).
    step "arm64 virtual board base (qemu-user through binfmt_misc; cached too)"
    binfmt=/proc/sys/fs/binfmt_misc
    mountpoint -q "$binfmt" || mount -t binfmt_misc binfmt_misc "$binfmt"
    if [ ! -e "$binfmt/qemu-aarch64" ]; then
        conf=/usr/lib/binfmt.d/qemu-aarch64.conf
        [ -f "$conf" ] || die 2 "$conf is missing: apt-get install qemu-user-static"
        grep -v '^#' "$conf" >"$binfmt/register"
    fi
    echo 1 >"$binfmt/qemu-aarch64" # enabled, also if it was registered disabled
    ./scripts/board-base.sh --arch arm64
fi

step "cargo +$MSRV check --workspace --all-targets (the stated minimum Rust)"
CARGO_TARGET_DIR=target/msrv cargo "+$MSRV" check --workspace --all-targets --locked

step "architecture invariants"
./scripts/check-invariants.sh

# No Kubernetes cluster runs here: the manifests are checked against the
# API's schemas (bundled in the kubernetes-validate package from PyPI),
# strictly (an unknown field fails), for the oldest version k3s still
# ships on Raspberry Pi OS and the newest the package knows.
step "kubernetes-validate --strict k8s/skelpi.yaml"
K8S_VENV=target/k8s-venv
if ! "$K8S_VENV/bin/python" -c 'import kubernetes_validate' 2>/dev/null; then
    python3 -m venv "$K8S_VENV" ||
        die 2 "cannot make a Python venv in $K8S_VENV (Debian package python3-venv)"
    "$K8S_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        kubernetes-validate==1.37.0 ||
        die 2 "cannot install kubernetes-validate 1.37.0 from PyPI"
fi
"$K8S_VENV/bin/python" -m kubernetes_validate --strict --quiet -k 1.31.0 k8s/skelpi.yaml
"$K8S_VENV/bin/python" -m kubernetes_validate --strict --quiet k8s/skelpi.yaml

# Tests that need root are #[ignore]d, so a plain `cargo test` as a user
# passes without pretending to have run them; as root (CI) this script runs
# them with the rest, so its pass means they ran. Ignored tests are only
# ever those (scripts/check-invariants.sh checks every reason says so).
run_ignored=()
if [ "$(id -u)" -eq 0 ]; then
    run_ignored=(--run-ignored all)
else
    echo "test.sh: not root: the tests that need root stay ignored" >&2
fi
if cargo nextest --version >/dev/null 2>&1; then
    step "cargo nextest run --workspace --no-fail-fast ${run_ignored[*]} $*"
    cargo nextest run --workspace --no-fail-fast "${run_ignored[@]}" "$@"
else
    step "cargo test --workspace --no-fail-fast $* (nextest unavailable)"
    if [ "${#run_ignored[@]}" -gt 0 ]; then
        cargo test --workspace --no-fail-fast "$@" -- --include-ignored
    else
        cargo test --workspace --no-fail-fast "$@"
    fi
fi

step "cargo test --workspace --doc"
cargo test --workspace --doc

# The library embedded in a program of its own (built above).
step "cargo run -p skelpi --example embed"
cargo run -q -p skelpi --example embed
