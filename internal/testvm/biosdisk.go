package testvm

import (
	"os"
	"path/filepath"
	"testing"
)

// biosBootSector is a 512-byte MBR boot sector (16-bit real mode, loaded at
// 0x7c00 by the BIOS) that writes MarkerDisk to COM1 and halts:
//
//	cli; xor ax,ax; mov ds,ax; mov si,msg; mov dx,0x3f8
//	next: lodsb; test al,al; jz done; out dx,al; jmp next
//	done: hlt; jmp done
//	msg:  db MarkerDisk, " (BIOS boot sector)", 13, 10, 0
//
// QEMU's UART takes bytes written to its data register without any setup.
func biosBootSector() []byte {
	code := []byte{
		0xfa,       // cli
		0x31, 0xc0, // xor ax,ax
		0x8e, 0xd8, // mov ds,ax
		0xbe, 0x16, 0x7c, // mov si,0x7c16 (msg)
		0xba, 0xf8, 0x03, // mov dx,0x3f8
		0xac,       // next: lodsb
		0x84, 0xc0, // test al,al
		0x74, 0x03, // jz done
		0xee,       // out dx,al
		0xeb, 0xf8, // jmp next
		0xf4,       // done: hlt
		0xeb, 0xfd, // jmp done
	}
	b := make([]byte, 512)
	n := copy(b, code)
	copy(b[n:], MarkerDisk+" (BIOS boot sector)\r\n\x00")
	b[510], b[511] = 0x55, 0xaa
	return b
}

// LocalBIOSDisk returns a raw 1 MiB disk image whose MBR boot sector prints
// MarkerDisk on the serial port and halts: what a legacy BIOS PC boots when
// the network boot exits. The test stops the VM after the marker. Built in
// the test's temporary directory (it takes no time).
func LocalBIOSDisk(t testing.TB) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "bios-disk.img")
	b := make([]byte, 1<<20)
	copy(b, biosBootSector())
	if err := os.WriteFile(img, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return img
}
