package seatjob

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"time"

	"github.com/pumi-lab/pumi/internal/inventory"
	"github.com/pumi-lab/pumi/internal/macaddr"
	"github.com/pumi-lab/pumi/internal/netboot"
	"github.com/pumi-lab/pumi/internal/settings"
	"github.com/pumi-lab/pumi/internal/store"
)

// SeatAddr is pumi's trust rule (Config.Addr in the appliance): a seat is at
// its inventory IP, else in full mode at the address pumi's own DHCP leased
// to it. In proxy mode pumi hands out no addresses, so only the inventory
// counts (the school's DHCP reservation). Nothing a client sends is a record.
func SeatAddr(tx *store.Tx, mac string) (netip.Addr, error) {
	seat, err := inventory.SeatByMACTx(tx, mac)
	if errors.Is(err, inventory.ErrNotFound) {
		return netip.Addr{}, ErrUnknownSeat
	}
	if err != nil {
		return netip.Addr{}, err
	}
	if seat.IP.IsValid() {
		return seat.IP.Unmap(), nil
	}
	cfg, err := settings.Load(tx)
	if err != nil {
		return netip.Addr{}, err
	}
	if cfg.Netboot.Mode == string(netboot.ModeFull) {
		if l, ok, err := leaseBucket.Get(tx, mac); err == nil && ok && l.IP.IsValid() {
			return l.IP.Unmap(), nil
		}
	}
	return netip.Addr{}, ErrNoAddress
}

var leaseBucket = store.NewBucket[storedLease]("leases")

type storedLease struct {
	MAC      string     `json:"mac"`
	IP       netip.Addr `json:"ip"`
	Expiry   time.Time  `json:"expiry"`
	Hostname string     `json:"hostname,omitempty"`
}

// Leases keeps pumi's DHCP leases in the state file (netboot.LeaseStore):
// Put and Delete commit (fsync) before they return, as netboot requires;
// concurrent calls are coalesced into one commit by Store.Batch. A lease is
// one of pumi's address records (SeatAddr), so the jobs' address index is
// rebuilt after each change.
type Leases struct {
	Store *store.Store
	Jobs  *Jobs
}

// Load implements netboot.LeaseStore.
func (l Leases) Load() ([]netboot.Lease, error) {
	var out []netboot.Lease
	err := l.Store.View(context.Background(), func(tx *store.Tx) error {
		return leaseBucket.ForEach(tx, func(_ string, v storedLease) error {
			m, err := macaddr.Parse(v.MAC)
			if err != nil {
				return nil // written by us; a bad entry is skipped rather than blocking DHCP
			}
			out = append(out, netboot.Lease{MAC: m, IP: v.IP, Expiry: v.Expiry, Hostname: v.Hostname})
			return nil
		})
	})
	return out, err
}

// Put implements netboot.LeaseStore.
func (l Leases) Put(le netboot.Lease) error {
	err := l.Store.Batch(context.Background(), func(tx *store.Tx) error {
		return leaseBucket.Put(tx, le.MAC.String(), storedLease{MAC: le.MAC.String(), IP: le.IP, Expiry: le.Expiry, Hostname: le.Hostname})
	})
	if err == nil {
		l.Jobs.Refresh(context.Background())
	}
	return err
}

// Delete implements netboot.LeaseStore.
func (l Leases) Delete(mac net.HardwareAddr) error {
	err := l.Store.Batch(context.Background(), func(tx *store.Tx) error { return leaseBucket.Delete(tx, mac.String()) })
	if err == nil {
		l.Jobs.Refresh(context.Background())
	}
	return err
}
