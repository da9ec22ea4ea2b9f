#!/usr/bin/env bash
# rootfs.sh DIR: a minimal Debian-shaped image rootfs with the host's glibc
# (what an image brings: the loader, libc, libm, libdl, libpthread, librt in
# /usr/lib/<multiarch>, its own ld.so.cache listing them), a static busybox,
# and /usr/bin/cuda-probe built from cuda-probe.c. No driver file is in it:
# whatever CUDA or NVML it finds, gpushare put there.
# Needs gcc, libc6-dev and busybox-static (Debian).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=${1:?usage: rootfs.sh DIR}
arch=$(gcc -print-multiarch)
lib=/usr/lib/$arch
mkdir -p "$dir"/{bin,dev,proc,sys,tmp,etc,usr/bin,usr/lib64,"$lib"}
ln -sfn usr/lib "$dir/lib"
ln -sfn usr/lib64 "$dir/lib64"
gcc -O2 -Wall -o "$dir/usr/bin/cuda-probe" "$here/cuda-probe.c" -ldl
for so in libc.so.6 libm.so.6 libdl.so.2 libpthread.so.0 librt.so.1; do
  cp -L "$(gcc -print-file-name="$so")" "$dir$lib/$so"
done
interp=$(readelf -l "$dir/usr/bin/cuda-probe" | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')
cp -L "$interp" "$dir$lib/$(basename "$interp")"
ln -sfn "../lib/$arch/$(basename "$interp")" "$dir/usr/lib64/$(basename "$interp")"
cp /bin/busybox "$dir/bin/busybox"
for applet in sh cat ls grep test echo stat sleep; do ln -sfn busybox "$dir/bin/$applet"; done
: >"$dir/etc/ld.so.conf"
ldconfig -r "$dir"
