// Package e2e is the lab in a box: pumi's whole product, end to end, against
// real peers only. Its test (lab_test.go) builds a Clonezilla-live-like
// network boot system from Debian packages (clonezilla, drbl, partclone,
// live-boot, with drbl's own live hook), lab PC disks that OVMF boots by
// themselves, and a real Clonezilla image of one of them (ocs-sr savedisk);
// then it runs the pumi-appliance program in a network namespace with three
// QEMU PCs and lets a schedule re-image them: SSH reboot, Wake-on-LAN, UEFI
// PXE → iPXE → Clonezilla restoring over pumi's NFS, reboot into the
// restored OS, SSH verification of the Signature, a mail report, and the
// faults the issue names (power cut mid-restore, pumi killed mid-run, an
// unknown PC netbooting).
//
// Run it (as root, on Debian 12 with the packages .ci/run installs):
//
//	go test -v -timeout 80m -run 'TestLab$' ./e2e/
//
// PUMI_LAB selects scenarios: "folded" (the default: all three faults
// in one run), or a comma list of plain, power-cut, pumi-kill, unknown-pc,
// folded, or "all" for the whole matrix (about 20 minutes per scenario on a
// 2-core machine under TCG).
package e2e
