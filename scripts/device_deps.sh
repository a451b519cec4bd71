#!/usr/bin/env bash
# Stages the Debian packages dsrl needs beyond ../shared/device-kit for a GPU machine without network (PCRE2 and
# utf8proc headers for tokenizer.json): run here, then carry `.device-deps` and begin the device command with
#   source .device-kit/env.sh && source .device-deps/env.sh && ...
# env.sh unpacks the packages into /opt/dsrl-deps once and points pkg-config, the compiler and the loader there.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/.device-deps"
rm -rf "$out" && mkdir -p "$out/debs"
(cd "$out/debs" && apt-get download -qq libpcre2-dev libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 libpcre2-posix3 \
    libutf8proc-dev libutf8proc2)
cat > "$out/env.sh" <<'ENV'
_deps_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ ! -f /opt/dsrl-deps/.unpacked ]; then
  mkdir -p /opt/dsrl-deps
  for deb in "$_deps_dir"/debs/*.deb; do dpkg -x "$deb" /opt/dsrl-deps; done
  sed -i 's|^prefix=/usr|prefix=/opt/dsrl-deps/usr|' /opt/dsrl-deps/usr/lib/x86_64-linux-gnu/pkgconfig/*.pc
  touch /opt/dsrl-deps/.unpacked
fi
export PKG_CONFIG_PATH="/opt/dsrl-deps/usr/lib/x86_64-linux-gnu/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
export LD_LIBRARY_PATH="/opt/dsrl-deps/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
unset _deps_dir
ENV
grep -qx '/.device-deps/' "$root/.git/info/exclude" 2>/dev/null || echo '/.device-deps/' >> "$root/.git/info/exclude"
echo "staged $out ($(ls "$out/debs" | wc -l) packages); carry it as .device-deps"
