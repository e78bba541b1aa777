// Package testvm is the test kit for booting real machines in QEMU: a Debian
// kernel fetched (not installed) from the Debian archive, a busybox initrd
// with chosen kernel modules and a scriptable /init, a tiny GPT disk whose
// GRUB prints a marker, and a QEMU runner (always TCG) for UEFI network boot
// under OVMF or direct -kernel/-initrd boot, inside a testnet namespace.
//
// It is for tests only: functions take a testing.TB and fail the test on
// setup errors. Gate every test that uses it with
//
//	testnet.Require(t, testvm.Programs()...)
//
// (skips outside CI, fails in CI when something is missing) and skip it
// under -short: a boot costs 8-60 s of one CPU.
//
// # A guest that only needs a kernel (direct boot, no firmware, ~8 s)
//
//	k := testvm.DebianKernel(t)
//	initrd := testvm.BuildInitrd(t, testvm.InitrdOptions{Kernel: k,
//	        Modules: append(slices.Clone(testvm.NetModules), testvm.NFSModules...),
//	        Files: map[string]string{"/etc/pumi-test.sh": "cat /mnt/nfs/hello.txt\n"}})
//	ns := testnet.New(t); ns.Bridge("br0", "10.77.0.1/24"); tap := ns.Tap("br0")
//	vm := testvm.Start(t, t.Context(), testvm.Config{NS: ns, Tap: tap, Kernel: k.Vmlinuz, Initrd: initrd,
//	        Append: "pumi.ip=10.77.0.5/24 pumi.nfs=10.77.0.1:/export pumi.token=abc"})
//	line, err := vm.WaitFor(t.Context(), testvm.MarkerNFSOK)
//
// ProbeInit documents the pumi.* kernel parameters and markers.
//
// # A lab PC that network-boots through UEFI firmware (OVMF, ~24 s)
//
//	testvm.AdvertiseRouter(t, ns, "br0") // else iPXE waits ~15 s for IPv6
//	vm := testvm.Start(t, ctx, testvm.Config{NS: ns, Tap: tap, MAC: mac, Disk: testvm.LocalDisk(t)})
//	_, err := vm.WaitFor(ctx, testvm.MarkerDisk) // or MarkerCallbackOK for a kernel it was given
//
// The NIC is first in the boot order (QEMU's own iPXE ROM removed, so the
// firmware's PXE does the work, as on a real PC) and the disk second. OVMF
// tries PXEv4 then HTTPv4 (IPv6 boot is switched off through fw_cfg) before
// the disk: a MAC nobody answers waits out both (~3 minutes under TCG).
// See internal/netboot/e2e_test.go for the complete chain.
//
// # A lab PC with Secure Boot enforced
//
// Config.SecureBoot boots OVMF's Secure Boot build (SMM, q35 smm=on, flash
// in secure mode) with Microsoft's keys enrolled (a fresh copy of
// OVMF_VARS_4M.ms.fd per VM): unsigned programs such as iPXE are refused
// ("Access Denied"). SignedLocalDisk is a disk that boots like an installed
// Debian (shim + Debian-signed GRUB, printing MarkerSignedDisk), and
// SecureBootReport makes /init print what the kernel says about Secure Boot
// (MarkerSecureBoot). See internal/netboot/secureboot_e2e_test.go.
//
// # Machine-wide rules
//
// Only one VM runs at a time on the machine (an flock; Start waits for it),
// because the CI machine has two cores. Large fixtures (the kernel package,
// the disk) are cached under ${PUMI_TEST_CACHE:-/var/cache/pumi-test},
// keyed by version or content hash, and rebuilt when missing, so a fresh CI
// machine needs only the Debian packages below and the Debian archive.
// Set PUMI_TEST_SERIAL=1 to log every VM's console with timestamps.
//
// Debian packages: qemu-system-x86 ovmf busybox-static grub-efi-amd64-bin
// grub-common mtools dosfstools fdisk (plus apt and dpkg, and cpio for this
// package's own tests).
package testvm
