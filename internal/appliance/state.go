package appliance

import (
	"context"
	"net"
	"net/netip"
	"time"

	"github.com/pumi-lab/pumi/internal/macaddr"
	"github.com/pumi-lab/pumi/internal/netboot"
	"github.com/pumi-lab/pumi/internal/store"
)

// Buckets owned by the appliance.
var (
	configBucket = store.NewBucket[Config]("appliance-config")
	leaseBucket  = store.NewBucket[storedLease]("leases")
)

const configKey = "config"

type storedLease struct {
	MAC      string     `json:"mac"`
	IP       netip.Addr `json:"ip"`
	Expiry   time.Time  `json:"expiry"`
	Hostname string     `json:"hostname,omitempty"`
}

// leaseStore keeps DHCP leases in the state file: Put and Delete commit
// (fsync) before they return, as netboot.LeaseStore requires; concurrent
// calls are coalesced into one commit by Store.Batch. A lease is one of
// pumi's address records (seatjob's trust), so changed is called after each.
type leaseStore struct {
	st      *store.Store
	changed func()
}

func (l leaseStore) Load() ([]netboot.Lease, error) {
	var out []netboot.Lease
	err := l.st.View(context.Background(), func(tx *store.Tx) error {
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

func (l leaseStore) Put(le netboot.Lease) error {
	err := l.st.Batch(context.Background(), func(tx *store.Tx) error {
		return leaseBucket.Put(tx, le.MAC.String(), storedLease{MAC: le.MAC.String(), IP: le.IP, Expiry: le.Expiry, Hostname: le.Hostname})
	})
	if err == nil {
		l.changed()
	}
	return err
}

func (l leaseStore) Delete(mac net.HardwareAddr) error {
	err := l.st.Batch(context.Background(), func(tx *store.Tx) error { return leaseBucket.Delete(tx, mac.String()) })
	if err == nil {
		l.changed()
	}
	return err
}
