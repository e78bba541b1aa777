package seatjob

import "net/netip"

// AllowClient implements nfsexport.Allow: /images (read-only) for the address
// on record of a seat with an active restore, /capture for one with an active
// capture. Asked on every MOUNT and NFS call, so it reads the in-memory index
// that every job change rebuilds, never the state file.
func (j *Jobs) AllowClient(ip netip.Addr, export string, write bool) bool {
	job, ok := j.byAddr(ip)
	if !ok || !job.wantsNFS(j.cfg.Now()) {
		return false
	}
	switch {
	case export == ExportImages && job.Action == Restore && !write:
		return true
	case export == ExportCapture && job.Action == Capture:
		return true
	}
	return false
}

// AllowConnect reports whether ip may open a connection at all (NFS, 6461):
// only the address of a seat with an active job may.
func (j *Jobs) AllowConnect(ip netip.Addr) bool {
	job, ok := j.byAddr(ip)
	return ok && job.wantsNFS(j.cfg.Now())
}
