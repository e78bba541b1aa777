#!/bin/bash
# How testdata/repo was made (run once by hand as root on Debian 12; the result is committed).
# Real ocs-sr savedisk runs against loop devices, then Clonezilla's own cnvt-ocs-dev to give the
# images the device names lab PCs have (loop0 -> nvme0n1 / sda), exactly as ocs-sr would have
# written them on such a PC. Nothing in the image folders was written by hand.
#   apt-get install -y --no-install-recommends clonezilla partclone drbl zstd pigz parted gdisk dosfstools
# Versions used: clonezilla 5.3.17-2, drbl 5.2.7-1, partclone 0.3.23 (see Info-packages.txt).
# Broken variants are NOT committed: scan_test.go makes them from these folders at test time.
set -euo pipefail
W=${W:-/tmp/pumi-cz-fixtures}; OUT=${OUT:-$(cd "$(dirname "$0")" && pwd)/repo}
rm -rf "$W"; mkdir -p "$W/images"; cd "$W"

# LAB-A-img: 40 MiB GPT disk, ESP (vfat) + ext4 root with a Signature file + swap; zstd (-z9p).
truncate -s 40M a.img
printf 'label: gpt\nsize=8MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="EFI"\nsize=16MiB, type=0FC63DAF-8483-4772-8E7D-3D69D8477DE4, name="root"\ntype=0657FD6D-A4AB-438F-A8A3-73BE1DA2B8E9, name="swap"\n' | sfdisk -q a.img
L=$(losetup -P --show -f a.img); partx -a "$L" 2>/dev/null || true
mkfs.vfat -n EFI "${L}p1"
mkdir -p ra/home/user/Desktop ra/etc; echo LAB-A > ra/home/user/Desktop/Signature; echo pumi-fixture > ra/etc/hostname
head -c 200000 /dev/urandom > ra/filler
mkfs.ext4 -q -L root -d ra "${L}p2"; mkswap -L swap "${L}p3"
LC_ALL=C TERM=dumb ocs-sr --ocsroot "$W/images" -batch -nogui -q2 -j2 -z9p -i 0 -sfsck -scs -senc -p true savedisk LAB-A-img "${L#/dev/}" </dev/null
LC_ALL=C cnvt-ocs-dev -b -d "$W/images" LAB-A-img "${L#/dev/}" nvme0n1 </dev/null
partx -d "$L" || true; losetup -d "$L"

# LAB-B-img: 24 MiB msdos disk, ext4 + swap; gzip (-z1), no -j2.
truncate -s 24M b.img
printf 'label: dos\nsize=16MiB, type=83\ntype=82\n' | sfdisk -q b.img
L=$(losetup -P --show -f b.img); partx -a "$L" 2>/dev/null || true
mkdir -p rb/home/user/Desktop; echo LAB-B > rb/home/user/Desktop/Signature; head -c 100000 /dev/urandom > rb/filler
mkfs.ext4 -q -L labb -d rb "${L}p1"; mkswap "${L}p2"
LC_ALL=C TERM=dumb ocs-sr --ocsroot "$W/images" -batch -nogui -q2 -z1 -i 0 -sfsck -scs -senc -p true savedisk LAB-B-img "${L#/dev/}" </dev/null
LC_ALL=C cnvt-ocs-dev -b -d "$W/images" LAB-B-img "${L#/dev/}" sda </dev/null
partx -d "$L" || true; losetup -d "$L"

rm -rf "$OUT"; mkdir -p "$OUT/room-b" "$OUT/notes"
cp -a "$W/images/LAB-A-img" "$OUT/"; cp -a "$W/images/LAB-B-img" "$OUT/room-b/"
chmod 644 "$OUT"/*/*-ptcl-img.* "$OUT"/room-b/*/*-ptcl-img.*   # ocs-sr writes them 0600; git keeps 0644 anyway
echo "not an image: the scanner must skip this folder" > "$OUT/notes/README.txt"
