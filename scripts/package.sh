#!/usr/bin/env bash
# Build warren's release artifacts (README "Install from a package"):
#
#   bash scripts/package.sh           # both
#   bash scripts/package.sh deb       # target/warren_VERSION_ARCH.deb
#   bash scripts/package.sh static    # target/warren-VERSION-x86_64-linux-static
#
# The .deb holds /usr/bin/warren, the systemd units of systemd/ (paths moved from /usr/local to
# /usr), /etc/warren/warren.toml and /etc/warren/hooks/*.sh as conffiles, the docs and example
# configs in /usr/share/doc/warren; its postinst creates the `warren` system user and
# /var/lib/warren (packaging/deb/). The static binary links glibc statically: see the README
# for what that means for host names.
#
# Environment:
#   WARREN_PACKAGE_PROFILE=release|dev  cargo profile of the builds (default release; the tests
#                                       use dev, which is optimized too, to save CI minutes)
#   WARREN_PACKAGE_BINARY=PATH          put this binary in the .deb instead of building one
#   WARREN_PACKAGE_OUT=DIR              where the artifacts go (default target/)
#   WARREN_PACKAGE_TARGET_DIR=DIR       cargo's target dir for the static build (default target/;
#                                       scripts/test.sh gives it one of its own, so it can build
#                                       beside the test build instead of waiting for its lock)
#
# Built with dpkg-deb (in dpkg, on every Debian machine) and a control file kept by hand in
# packaging/deb/, not cargo-deb: `cargo install cargo-deb` would compile it on every fresh CI
# clone for a dozen lines of control file.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'package.sh: %s\n' "$*" >&2; exit 1; }

profile=${WARREN_PACKAGE_PROFILE:-release}
case $profile in
release) profile_dir=release ;;
dev) profile_dir=debug ;;
*) die "WARREN_PACKAGE_PROFILE must be release or dev, not '$profile'" ;;
esac
out=${WARREN_PACKAGE_OUT:-target}
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
[ -n "$version" ] || die "no version in Cargo.toml"
mkdir -p "$out"

build_deb() {
    local binary=${WARREN_PACKAGE_BINARY:-}
    if [ -z "$binary" ]; then
        log "cargo build --profile $profile --bin warren"
        cargo build --profile "$profile" --bin warren
        binary=target/$profile_dir/warren
    fi
    [ -x "$binary" ] || die "$binary is not an executable"
    local arch
    arch=$(dpkg --print-architecture)
    local deb=$out/warren_${version}_${arch}.deb
    local root
    root=$(mktemp -d "${TMPDIR:-/tmp}/warren-deb.XXXXXX")
    chmod 0755 "$root"
    # shellcheck disable=SC2064 # expand now: the variable is local
    trap "rm -rf '$root'" RETURN

    install -D -m 0755 "$binary" "$root/usr/bin/warren"
    strip --strip-unneeded "$root/usr/bin/warren"
    local unit
    install -d "$root/usr/lib/systemd/system"
    for unit in warren.service warren.socket warren-switch@.path warren-switch@.service; do
        sed -e 's#/usr/local/bin/warren#/usr/bin/warren#g' \
            -e 's#/usr/local/lib/warren/#/usr/lib/warren/#g' \
            "systemd/$unit" >"$root/usr/lib/systemd/system/$unit"
        chmod 0644 "$root/usr/lib/systemd/system/$unit"
    done
    install -D -m 0755 systemd/warren-switch "$root/usr/lib/warren/warren-switch"
    install -D -m 0644 config/warren.toml "$root/etc/warren/warren.toml"
    install -D -m 0755 config/hooks/failover.sh "$root/etc/warren/hooks/failover.sh"
    install -D -m 0755 config/hooks/page.sh "$root/etc/warren/hooks/page.sh"

    local doc=$root/usr/share/doc/warren
    install -D -m 0644 README.md "$doc/README.md"
    install -D -m 0644 systemd/README.md "$doc/README.systemd.md"
    install -d "$doc/examples"
    cp -r config/*.toml config/keepalived config/prometheus "$doc/examples/"
    chmod -R u=rwX,go=rX "$doc"
    {
        echo "warren"
        echo
        echo "License: Apache-2.0"
        echo "On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0."
    } >"$doc/copyright"

    install -d -m 0755 "$root/DEBIAN"
    install -m 0755 packaging/deb/postinst packaging/deb/prerm packaging/deb/postrm "$root/DEBIAN/"
    (cd "$root" && find etc -type f | sed 's|^|/|' | sort) >"$root/DEBIAN/conffiles"
    local size glibc
    size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
    # The newest glibc symbol version the binary needs (dpkg-shlibdeps would say the same, but
    # lives in dpkg-dev, which a machine that only builds this package may not have).
    glibc=$(objdump -T "$root/usr/bin/warren" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' |
        sort -uV | tail -n 1)
    sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" \
        -e "s/@DEPENDS@/libc6 (>= $glibc), libgcc-s1, adduser/" \
        packaging/deb/control >"$root/DEBIAN/control"

    dpkg-deb --root-owner-group --build "$root" "$deb" >/dev/null
    log "built $deb ($(du -h "$deb" | cut -f1))"
    echo "$deb"
}

build_static() {
    local triple=x86_64-unknown-linux-gnu
    [ "$(uname -m)" = x86_64 ] || die "the static build is for x86_64 only"
    # --target keeps RUSTFLAGS off build scripts and proc macros (they must stay dynamic) and
    # puts the static objects in TARGET_DIR/$triple/, apart from the normal build's cache.
    log "RUSTFLAGS='-C target-feature=+crt-static' cargo build --profile $profile --target $triple --bin warren"
    # The artifact is stripped, so the dev profile's debug info would only cost compile time
    # (about a quarter of a cold static build's CPU, measured).
    local target_dir=${WARREN_PACKAGE_TARGET_DIR:-target}
    RUSTFLAGS='-C target-feature=+crt-static' CARGO_PROFILE_DEV_DEBUG=false \
        CARGO_TARGET_DIR="$target_dir" \
        cargo build --profile "$profile" --target "$triple" --bin warren
    local artifact=$out/warren-${version}-x86_64-linux-static
    install -m 0755 "$target_dir/$triple/$profile_dir/warren" "$artifact"
    strip --strip-unneeded "$artifact"
    file "$artifact" | grep -Eq 'statically linked|static-pie linked' ||
        die "$artifact is not statically linked: $(file -b "$artifact")"
    log "built $artifact ($(du -h "$artifact" | cut -f1))"
    echo "$artifact"
}

case ${1:-all} in
deb) build_deb ;;
static) build_static ;;
all)
    build_deb
    build_static
    ;;
*) die "usage: package.sh [deb|static|all]" ;;
esac
