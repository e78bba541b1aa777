#!/usr/bin/env bash
# make-vars-2023.sh OUT.fd — an OVMF variable store for a PC that trusts ONLY the "Microsoft UEFI CA 2023":
# Secure Boot in user mode with a throw-away PK and KEK, and db = that one certificate (taken from the second
# signature of pumi's embedded shim). Boot the signed chain with it:
#   PUMI_SB_VARS=OUT.fd go test -count=1 -v -run TestSecureBootQEMUVars ./internal/netboot/
# Needs root (none of it touches the host's firmware), efitools, openssl, python3, cpio, busybox-static, qemu-system-x86,
# ovmf, and the Debian kernel the tests cache (run the Secure Boot test once first). Writes the keys through
# efivarfs from a Linux booted by OVMF in setup mode (no signature is checked there), db and KEK first, PK last.
set -euo pipefail
out=$(realpath -m "${1:?usage: $0 OUT.fd}")
repo=$(cd "$(dirname "$0")/../.." && pwd)
cache=${PUMI_TEST_CACHE:-/var/cache/pumi-test}
vmlinuz=$(ls "$cache"/kernel/*/boot/vmlinuz-* | head -n1)
efivarfs=$(find "$(dirname "$(dirname "$vmlinuz")")/lib/modules" -name efivarfs.ko | head -n1)
w=$(mktemp -d); trap 'rm -rf "$w"' EXIT; cd "$w"

# The Microsoft UEFI CA 2023 certificate from the shim's PE signature table (two WIN_CERTIFICATEs: 2011, 2023).
python3 - "$repo/assets/secureboot/shimx64.efi" <<'PY'
import struct, sys
b = open(sys.argv[1], 'rb').read()
pe = struct.unpack_from('<I', b, 0x3c)[0]
off, size = struct.unpack_from('<II', b, pe + 24 + 112 + 4 * 8)
p, i = off, 0
while p < off + size:
    ln = struct.unpack_from('<I', b, p)[0]
    open(f'sig{i}.p7', 'wb').write(b[p + 8:p + ln]); i += 1; p += (ln + 7) & ~7
PY
for f in sig*.p7; do openssl pkcs7 -inform DER -in "$f" -print_certs; done |
	awk '/^subject=.*CN = Microsoft UEFI CA 2023$/{keep=1} keep{print} /END CERTIFICATE/{if(keep)exit}' | sed -n '/BEGIN/,/END/p' > ca2023.pem
openssl x509 -in ca2023.pem -noout -subject | grep -q 'CN = Microsoft UEFI CA 2023$'

owner=11111111-2222-3333-4444-555555555555
for k in PK KEK; do openssl req -new -x509 -newkey rsa:2048 -nodes -subj "/CN=pumi test $k/" -keyout $k.key -out $k.crt -days 3650 2>/dev/null; done
cert-to-efi-sig-list -g $owner PK.crt PK.esl
cert-to-efi-sig-list -g $owner KEK.crt KEK.esl
cert-to-efi-sig-list -g 77fa9abd-0359-4d32-bd60-28f4e78f784b ca2023.pem db.esl
sign-efi-sig-list -k PK.key -c PK.crt PK PK.esl PK.auth >/dev/null
sign-efi-sig-list -k PK.key -c PK.crt KEK KEK.esl KEK.auth >/dev/null
sign-efi-sig-list -k KEK.key -c KEK.crt db db.esl db.auth >/dev/null
mkdir -p ird/bin
for v in PK KEK db; do (printf '\047\000\000\000'; cat $v.auth) > ird/$v.var; done # attrs NV|BS|RT|time-based auth
cp /bin/busybox ird/bin/; cp "$efivarfs" ird/
cat > ird/init <<'INIT'
#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev; /bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
exec >/dev/console 2>&1
insmod /efivarfs.ko; mount -t efivarfs efivarfs /sys/firmware/efi/efivars
G=8be4df61-93ca-11d2-aa0d-00e098032b8c
dd if=/db.var of=/sys/firmware/efi/efivars/db-d719b2cb-3d3a-4596-a3bc-dad00e67656f bs=64k &&
dd if=/KEK.var of=/sys/firmware/efi/efivars/KEK-$G bs=64k &&
dd if=/PK.var of=/sys/firmware/efi/efivars/PK-$G bs=64k &&
echo "ENROLLED setupmode=$(od -An -tu1 /sys/firmware/efi/efivars/SetupMode-$G | awk '{print $5}')"
sync; poweroff -f
INIT
chmod 755 ird/init
(cd ird && find . | cpio -o -H newc --quiet | gzip) > enroll.img
cp /usr/share/OVMF/OVMF_VARS_4M.fd vars.fd
flock "$cache/vm.lock" timeout 600 qemu-system-x86_64 -accel tcg -machine q35,smm=on -global driver=cfi.pflash01,property=secure,value=on \
	-smp 1 -m 512 -drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.secboot.fd \
	-drive if=pflash,format=raw,unit=1,file=vars.fd -kernel "$vmlinuz" -initrd enroll.img \
	-append "console=ttyS0,115200 no_timer_check panic=1 quiet" -display none -vga none -monitor none -serial stdio \
	-no-reboot -nic none | tr -d '\r' | tee console.log | grep -a ENROLLED
grep -aq 'ENROLLED setupmode=0' console.log
cp vars.fd "$out"
echo "wrote $out: PK/KEK = throw-away test keys, db = Microsoft UEFI CA 2023 only, Secure Boot in user mode"
