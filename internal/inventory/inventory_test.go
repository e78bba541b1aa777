package inventory

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/pumi-lab/pumi/internal/store"
)

func newInv(t *testing.T) (*Inventory, *store.Store) {
	t.Helper()
	st, err := store.Open(context.Background(), t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return New(st), st
}

var ctx = context.Background()

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

func TestSeatCRUDAndLookups(t *testing.T) {
	inv, _ := newInv(t)
	s, err := inv.AddSeat(ctx, Seat{MAC: "5254.00AB.CD01", IP: ip("10.1.0.11"), Hostname: "PC-01", Room: "Aula Informática", SSHUser: "tareas", Credential: "aula-1"})
	if err != nil {
		t.Fatal(err)
	}
	if s.MAC != "52:54:00:ab:cd:01" || s.Hostname != "pc-01" {
		t.Errorf("not normalized: %+v", s)
	}
	if _, err := inv.AddSeat(ctx, Seat{MAC: "52-54-00-ab-cd-01", IP: ip("10.1.0.99")}); !errors.Is(err, ErrDuplicate) {
		t.Errorf("same MAC in another spelling: %v", err)
	}
	if _, err := inv.AddSeat(ctx, Seat{MAC: "52:54:00:ab:cd:02", IP: ip("10.1.0.11")}); !errors.Is(err, ErrDuplicate) || !strings.Contains(err.Error(), "52:54:00:ab:cd:01") {
		t.Errorf("same IP: %v", err)
	}
	got, err := inv.SeatByMAC(ctx, "525400abcd01")
	if err != nil || got != s {
		t.Errorf("SeatByMAC = %+v, %v", got, err)
	}
	got, err = inv.SeatByIP(ctx, ip("10.1.0.11"))
	if err != nil || got != s {
		t.Errorf("SeatByIP = %+v, %v", got, err)
	}
	if r, err := inv.Room(ctx, "Aula Informática"); err != nil || r.Name != "Aula Informática" {
		t.Errorf("room not created on demand: %+v, %v", r, err)
	}

	// Moving the seat to another IP frees the old one.
	s.IP = ip("10.1.0.12")
	if _, err := inv.UpdateSeat(ctx, s); err != nil {
		t.Fatal(err)
	}
	if _, err := inv.SeatByIP(ctx, ip("10.1.0.11")); !errors.Is(err, ErrNotFound) {
		t.Errorf("old IP still indexed: %v", err)
	}
	if _, err := inv.AddSeat(ctx, Seat{MAC: "52:54:00:ab:cd:02", IP: ip("10.1.0.11")}); err != nil {
		t.Errorf("reusing the freed IP: %v", err)
	}
	if _, err := inv.UpdateSeat(ctx, Seat{MAC: "52:54:00:ab:cd:99"}); !errors.Is(err, ErrNotFound) {
		t.Errorf("update of a missing seat: %v", err)
	}
	if err := inv.DeleteRoom(ctx, "Aula Informática"); !errors.Is(err, ErrInUse) {
		t.Errorf("deleting a room with seats: %v", err)
	}
	if err := inv.DeleteSeat(ctx, "52:54:00:AB:CD:01"); err != nil {
		t.Fatal(err)
	}
	if _, err := inv.SeatByIP(ctx, ip("10.1.0.12")); !errors.Is(err, ErrNotFound) {
		t.Errorf("deleted seat's IP still indexed: %v", err)
	}
	if err := inv.DeleteSeat(ctx, "52:54:00:AB:CD:01"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second delete: %v", err)
	}
	if err := inv.DeleteRoom(ctx, "Aula Informática"); err != nil {
		t.Errorf("deleting the emptied room: %v", err)
	}
	seats, _ := inv.Seats(ctx)
	if len(seats) != 1 || seats[0].MAC != "52:54:00:ab:cd:02" {
		t.Errorf("Seats = %+v", seats)
	}
}

func TestSeatValidation(t *testing.T) {
	inv, _ := newInv(t)
	bad := map[string]Seat{
		"mac":        {MAC: "52:54:00:ab:cd"},
		"multicast":  {MAC: "01:00:5e:00:00:01"},
		"zero mac":   {MAC: "00:00:00:00:00:00"},
		"ipv6":       {MAC: "52:54:00:00:00:01", IP: ip("fe80::1")},
		"broadcast":  {MAC: "52:54:00:00:00:01", IP: ip("255.255.255.255")},
		"loopback":   {MAC: "52:54:00:00:00:01", IP: ip("127.0.0.1")},
		"hostname":   {MAC: "52:54:00:00:00:01", Hostname: "pc_01"},
		"user":       {MAC: "52:54:00:00:00:01", SSHUser: "tareas; rm -rf /"},
		"credential": {MAC: "52:54:00:00:00:01", Credential: "p@ss word"},
		"room":       {MAC: "52:54:00:00:00:01", Room: "a,b"},
	}
	for name, s := range bad {
		if _, err := inv.AddSeat(ctx, s); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: AddSeat(%+v) = %v; want ErrInvalid", name, s, err)
		}
	}
	if seats, _ := inv.Seats(ctx); len(seats) != 0 {
		t.Errorf("invalid seats stored: %+v", seats)
	}
	if rooms, _ := inv.Rooms(ctx); len(rooms) != 0 {
		t.Errorf("rooms created by rejected seats: %+v", rooms)
	}
}

func TestRooms(t *testing.T) {
	inv, _ := newInv(t)
	if _, err := inv.AddRoom(ctx, Room{Name: " Lab 2 ", Description: "planta baja"}); err != nil {
		t.Fatal(err)
	}
	if _, err := inv.AddRoom(ctx, Room{Name: "Lab 2"}); !errors.Is(err, ErrDuplicate) {
		t.Errorf("duplicate room: %v", err)
	}
	if _, err := inv.AddRoom(ctx, Room{Name: ""}); !errors.Is(err, ErrInvalid) {
		t.Errorf("empty room name: %v", err)
	}
	if _, err := inv.UpdateRoom(ctx, Room{Name: "Lab 2", Description: "primer piso"}); err != nil {
		t.Fatal(err)
	}
	if _, err := inv.UpdateRoom(ctx, Room{Name: "Lab 9"}); !errors.Is(err, ErrNotFound) {
		t.Errorf("update of a missing room: %v", err)
	}
	r, err := inv.Room(ctx, "Lab 2")
	if err != nil || r.Description != "primer piso" {
		t.Errorf("Room = %+v, %v", r, err)
	}
	if err := inv.DeleteRoom(ctx, "Lab 2"); err != nil {
		t.Fatal(err)
	}
	if _, err := inv.Room(ctx, "Lab 2"); !errors.Is(err, ErrNotFound) {
		t.Errorf("deleted room: %v", err)
	}
}

// TestKnownFollowsWrites: the DHCP admission set answers from memory, and
// every inventory write (add, import, delete) is seen at once.
func TestKnownFollowsWrites(t *testing.T) {
	inv, _ := newInv(t)
	ctx := t.Context()
	const mac = "52:54:00:00:00:77"
	if k, err := inv.Known(ctx, mac); err != nil || k {
		t.Fatalf("empty inventory: %v %v", k, err)
	}
	if _, err := inv.AddSeat(ctx, Seat{MAC: mac, Hostname: "pc77"}); err != nil {
		t.Fatal(err)
	}
	if k, _ := inv.Known(ctx, mac); !k {
		t.Fatal("an added seat is not known")
	}
	if err := inv.DeleteSeat(ctx, mac); err != nil {
		t.Fatal(err)
	}
	if k, _ := inv.Known(ctx, mac); k {
		t.Fatal("a deleted seat is still known")
	}
	if _, err := inv.Import(ctx, strings.NewReader(mac+",10.0.0.77,alumno\n"), Merge); err != nil {
		t.Fatal(err)
	}
	if k, _ := inv.Known(ctx, mac); !k {
		t.Fatal("an imported seat is not known")
	}
}
