package netboot

import (
	"net"
	"os"
	"testing"
)

// TestSetRcvBufHonoured: the DHCP socket's receive buffer is really the size
// asked for (as root, past net.core.rmem_max), read back from the kernel.
// Loopback only.
func TestSetRcvBufHonoured(t *testing.T) {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got, err := setRcvBuf(c, dhcpRcvBuf)
	if err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() != 0 {
		t.Logf("not root: receive buffer %d bytes (capped by net.core.rmem_max)", got)
		return
	}
	if got < dhcpRcvBuf {
		t.Fatalf("receive buffer %d bytes, asked %d", got, dhcpRcvBuf)
	}
}
