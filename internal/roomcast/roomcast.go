// Package roomcast restores a room at once: it runs the multicast sessions
// (internal/udpcast) of the seats whose jobs share a group (a run), one
// session per partition in Clonezilla's order, and moves every seat that
// misses the stream to unicast, so no seat is left behind:
//
//   - a seat that has not joined when the session starts (all expected seats
//     joined, or the wait passed), or that is dropped mid-stream (silent for
//     30 s: reset, power cut, stuck), is demoted (seatjob.Jobs.Demote): its
//     Clonezilla is refused or stopped by the sender, reports failure, and its
//     job starts over by unicast at its next boot;
//   - a seat that boots again is demoted by seatjob itself;
//   - if nothing joins at all (multicast blocked, IGMP snooping without a
//     querier), every seat restores by unicast and the reason says so.
//
// After the stream, a refuser answers late receivers of the group with "no"
// until none is left, so no Clonezilla waits forever for a sender that has
// gone. Sessions live in memory: after a restart of pumi the seats that were
// in a stream are demoted (their Clonezilla is stopped by the refuser or by
// the engine's restore timeout).
package roomcast

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/pumi-lab/pumi/internal/clonezilla"
	"github.com/pumi-lab/pumi/internal/seatjob"
	"github.com/pumi-lab/pumi/internal/udpcast"
)

// Settings are what sessions need from the appliance's settings.
type Settings struct {
	Interface  string     // the lab interface ("" = multicast unavailable)
	LocalAddr  netip.Addr // pumi's address on it (zero: the interface's first)
	Repository string
	PortBase   int
	MaxWait    time.Duration
	MaxBitrate int64 // bytes per second, 0 = no cap
}

// portsPerGroup bounds the partitions of one session (Clonezilla uses two
// ports per partition).
const portsPerGroup = 200

// DeadAfter is how long a silent receiver holds the others before it is
// dropped (and restores by unicast).
const DeadAfter = 30 * time.Second

// DefaultFirstWait bounds the wait for the room's first ready seat (its
// first udp-receiver) after the first "started" report; the settings' max
// wait counts from that first join.
const DefaultFirstWait = 15 * time.Minute

// Manager runs the groups' sessions.
type Manager struct {
	Jobs     *seatjob.Jobs
	Settings func(ctx context.Context) (Settings, error)
	Log      *slog.Logger
	// FirstWait overrides DefaultFirstWait (tests).
	FirstWait time.Duration

	mu     sync.Mutex
	groups map[string]*group
	past   []Status // the last sessions whose seats are all done, newest last
	poke   chan struct{}
}

// keepPast bounds the finished sessions kept for the page and API.
const keepPast = 20

type group struct {
	name    string
	port    int
	started bool
	serving bool // serve (sessions, refuser) still runs
	status  Status
}

// Status is a group's session as the run page and API show it.
type Status struct {
	Group      string    `json:"group"` // the run
	Image      string    `json:"image"`
	Port       int       `json:"port"`
	State      string    `json:"state"` // waiting, sending, done, failed
	Partition  int       `json:"partition"`
	Partitions int       `json:"partitions"`
	Joined     []string  `json:"joined,omitempty"` // addresses in the stream
	Dropped    []string  `json:"dropped,omitempty"`
	BytesSent  int64     `json:"bytes_sent"` // payload acknowledged, all partitions
	WireBytes  int64     `json:"wire_bytes"` // every packet the sender put on the wire
	Throughput float64   `json:"throughput"` // bytes/s of the last partition
	Reason     string    `json:"reason,omitempty"`
	Updated    time.Time `json:"updated"`
}

// Poke makes the manager look at the jobs now (seatjob's Changed).
func (m *Manager) Poke() {
	m.init()
	select {
	case m.poke <- struct{}{}:
	default:
	}
}

func (m *Manager) init() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.poke == nil {
		m.poke = make(chan struct{}, 1)
		m.groups = map[string]*group{}
	}
}

// Port implements seatjob.Config.Multicast: the group's port base (allocated
// on first use) and wait; ok false with the reason when multicast cannot run.
func (m *Manager) Port(name string) (int, time.Duration, string, bool) {
	m.init()
	st, err := m.Settings(context.Background())
	if err != nil {
		return 0, 0, "settings unreadable: " + err.Error(), false
	}
	if st.Interface == "" {
		return 0, 0, "multicast needs the lab interface (netboot.interface)", false
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if g, ok := m.groups[name]; ok {
		return g.port, st.MaxWait, "", true
	}
	used := map[int]bool{}
	for _, g := range m.groups {
		used[g.port] = true
	}
	for slot := 0; slot < 100; slot++ {
		p := st.PortBase + slot*portsPerGroup
		if p+portsPerGroup > 65535 {
			break
		}
		if !used[p] {
			m.groups[name] = &group{name: name, port: p, status: Status{Group: name, Port: p, State: "waiting", Updated: time.Now()}}
			return p, st.MaxWait, "", true
		}
	}
	return 0, 0, "too many multicast sessions at once", false
}

// Sessions lists the groups' sessions, newest first.
func (m *Manager) Sessions() []Status {
	m.init()
	m.mu.Lock()
	defer m.mu.Unlock()
	out := slices.Clone(m.past)
	for _, g := range m.groups {
		out = append(out, g.status)
	}
	slices.SortFunc(out, func(a, b Status) int { return b.Updated.Compare(a.Updated) })
	return out
}

func (m *Manager) set(name string, fn func(*Status)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if g, ok := m.groups[name]; ok {
		fn(&g.status)
		g.status.Updated = time.Now()
	}
}

// Run watches the jobs until ctx ends: a group starts its session when its
// first seat reports that Clonezilla started; a group whose session this
// process never ran (pumi restarted) is demoted to unicast.
func (m *Manager) Run(ctx context.Context) {
	m.init()
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		if err := m.scan(ctx); err != nil && ctx.Err() == nil {
			m.Log.Error("multicast: reading jobs", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-m.poke:
		case <-tick.C:
		}
	}
}

func (m *Manager) scan(ctx context.Context) error {
	jobs, err := m.Jobs.List(ctx)
	if err != nil {
		return err
	}
	byGroup := map[string][]seatjob.Job{}
	active := map[string]bool{}
	for _, j := range jobs {
		if j.Group != "" && j.State.Active() {
			active[j.Group] = true
		}
		if j.Group != "" && j.Demoted == "" && j.McastBoot && j.State.Active() {
			byGroup[j.Group] = append(byGroup[j.Group], j)
		}
	}
	// A group none of whose seats is active any more frees its ports; its
	// status is kept among the last sessions.
	m.mu.Lock()
	for name, g := range m.groups {
		if !active[name] && (g.started || time.Since(g.status.Updated) > time.Hour) && !g.serving {
			m.past = append(m.past, g.status)
			if len(m.past) > keepPast {
				m.past = m.past[len(m.past)-keepPast:]
			}
			delete(m.groups, name)
		}
	}
	m.mu.Unlock()
	for name, js := range byGroup {
		m.mu.Lock()
		g, known := m.groups[name]
		start := known && !g.started && slices.ContainsFunc(js, func(j seatjob.Job) bool { return j.State == seatjob.Running })
		if start {
			g.started, g.serving = true, true
		}
		m.mu.Unlock()
		switch {
		case !known:
			// Told a port by an earlier pumi process: that stream is gone.
			for _, j := range js {
				m.Jobs.Demote(ctx, j.MAC, j.Key, "pumi restarted during the multicast session")
			}
		case start:
			go m.serve(ctx, name, js[0].Image)
		}
	}
	return nil
}

// members are the group's seats still in the stream, by address.
func (m *Manager) members(ctx context.Context, name string) (map[netip.Addr]seatjob.Job, error) {
	jobs, err := m.Jobs.List(ctx)
	if err != nil {
		return nil, err
	}
	out := map[netip.Addr]seatjob.Job{}
	for _, j := range jobs {
		if j.Group != name || j.Demoted != "" || !j.McastBoot || !j.State.Active() {
			continue
		}
		if a, err := m.Jobs.Addr(ctx, j.MAC); err == nil && a.Is4() {
			out[a] = j
		}
	}
	return out, nil
}

// serve runs the group's sessions, one per partition, then refuses late
// receivers until none is left.
func (m *Manager) serve(ctx context.Context, name, image string) {
	defer func() {
		m.mu.Lock()
		if g, ok := m.groups[name]; ok {
			g.serving = false
		}
		m.mu.Unlock()
		m.Poke()
	}()
	log := m.Log.With("multicast", name)
	failed := false
	fail := func(why string) {
		log.Warn("multicast session ends; seats restore by unicast", "why", why)
		m.set(name, func(s *Status) { s.State, s.Reason = "failed", why })
		failed = true
		if mem, err := m.members(ctx, name); err == nil {
			for _, j := range mem {
				m.Jobs.Demote(ctx, j.MAC, j.Key, "multicast: "+why)
			}
		}
	}
	m.mu.Lock()
	port := m.groups[name].port
	m.mu.Unlock()
	parts := 1 // until the image is read: seats wait on partition 1's port
	defer func() {
		if failed {
			m.refuseLate(ctx, name, port, parts, st0(m, ctx))
		}
	}()
	st, err := m.Settings(ctx)
	if err != nil {
		fail("settings unreadable: " + err.Error())
		return
	}
	img, err := clonezilla.Inspect(ctx, st.Repository, image)
	switch {
	case err != nil:
		fail(fmt.Sprintf("image %s: %v", image, err))
		return
	case !img.Valid:
		fail(fmt.Sprintf("image %s cannot be restored", image))
		return
	}
	if _, err := os.Stat(filepath.Join(st.Repository, filepath.FromSlash(image), "lvm_vg_dev.list")); err == nil {
		// Clonezilla's client orders LVM volumes its own way; not worth a
		// wrong partition on a disk.
		fail("images with LVM are restored by unicast")
		return
	}
	parts = len(img.Partitions)
	m.set(name, func(s *Status) { s.Image, s.Partitions, s.State = image, len(img.Partitions), "waiting" })
	var sent, wire int64
	for k, p := range img.Partitions {
		mem, err := m.members(ctx, name)
		if err != nil {
			fail(err.Error())
			return
		}
		if len(mem) == 0 {
			log.Info("multicast: no seat left in the stream")
			break
		}
		expect := make([]netip.Addr, 0, len(mem))
		for a := range mem {
			expect = append(expect, a)
		}
		first := time.Duration(0)
		if k == 0 {
			// Clonezilla writes the partition table and checks the disk
			// between its "started" report and its first udp-receiver: the
			// room's wait starts with the first seat that is ready.
			first = cmp.Or(m.FirstWait, DefaultFirstWait)
		}
		sess, err := udpcast.NewSession(udpcast.Config{Interface: st.Interface, LocalAddr: st.LocalAddr, PortBase: port + 2*k,
			Expect: expect, FirstWait: first, MaxWait: st.MaxWait, DeadAfter: DeadAfter, MaxBitrate: st.MaxBitrate}, log)
		if err != nil {
			fail(err.Error())
			return
		}
		src, err := openParts(st.Repository, image, p.Files)
		if err != nil {
			fail(err.Error())
			return
		}
		m.set(name, func(s *Status) { s.Partition, s.State = k+1, "sending" })
		res, err := sess.Run(ctx, src)
		src.Close()
		sent += res.PayloadBytes
		wire += res.WireBytes
		done := map[netip.Addr]bool{}
		var joined, dropped []string
		for _, r := range res.Receivers {
			if r.State == udpcast.Done {
				done[r.Addr] = true
				joined = append(joined, r.Addr.String())
			} else {
				dropped = append(dropped, r.Addr.String()+": "+r.Reason)
			}
		}
		m.set(name, func(s *Status) {
			s.Joined, s.Dropped, s.BytesSent, s.WireBytes, s.Throughput = joined, append(s.Dropped, dropped...), sent, wire, res.Throughput()
		})
		if errors.Is(err, udpcast.ErrNoReceivers) && k == 0 {
			fail(fmt.Sprintf("no seat joined within %v of Clonezilla's start (is multicast blocked on the switch, or IGMP snooping on without a querier?)", cmp.Or(m.FirstWait, DefaultFirstWait)))
			break
		}
		for a, j := range mem {
			if done[a] {
				continue
			}
			why := fmt.Sprintf("not in the stream of partition %d/%d", k+1, len(img.Partitions))
			for _, r := range res.Receivers {
				if r.Addr == a && r.Reason != "" {
					why = fmt.Sprintf("dropped from partition %d/%d: %s", k+1, len(img.Partitions), r.Reason)
				}
			}
			m.Jobs.Demote(ctx, j.MAC, j.Key, why)
		}
		if err != nil && ctx.Err() != nil {
			return
		}
	}
	if failed {
		return // the deferred refuser answers the late receivers
	}
	m.set(name, func(s *Status) { s.State = "done" })
	m.refuseLate(ctx, name, port, len(img.Partitions), st)
}

// st0 is the settings for the refuser after a failure (zero if unreadable:
// the refuser then cannot bind and only logs).
func st0(m *Manager, ctx context.Context) Settings {
	st, _ := m.Settings(ctx)
	return st
}

// refuseLate answers the connect requests of the group's seats that missed
// the stream ("no", so their Clonezilla fails now and restarts by unicast
// instead of waiting forever) until no such seat is left, at most 2 hours.
func (m *Manager) refuseLate(ctx context.Context, name string, port, parts int, st Settings) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Hour)
	defer cancel()
	var wg sync.WaitGroup
	never := func(netip.Addr) bool { return false }
	for k := 0; k < parts; k++ {
		sess, err := udpcast.NewSession(udpcast.Config{Interface: st.Interface, LocalAddr: st.LocalAddr, PortBase: port + 2*k,
			Admit: never, MaxWait: 2 * time.Hour}, m.Log.With("multicast", name, "refuser", k+1))
		if err != nil {
			m.Log.Warn("multicast: late receivers cannot be refused", "err", err)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sess.Run(ctx, eofReader{})
		}()
	}
	defer wg.Wait()
	defer cancel()
	t := time.NewTicker(10 * time.Second)
	defer t.Stop()
	for {
		jobs, err := m.Jobs.List(ctx)
		if err == nil && !slices.ContainsFunc(jobs, func(j seatjob.Job) bool {
			return j.Group == name && j.McastBoot && j.State.Active()
		}) {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }

// openParts is one partition's image files in order, as one stream.
func openParts(repo, image string, files []string) (io.ReadCloser, error) {
	var rs []io.Reader
	var cs []io.Closer
	for _, f := range files {
		fh, err := os.Open(filepath.Join(repo, filepath.FromSlash(image), f))
		if err != nil {
			for _, c := range cs {
				c.Close()
			}
			return nil, err
		}
		rs, cs = append(rs, fh), append(cs, fh)
	}
	return multiCloser{io.MultiReader(rs...), cs}, nil
}

type multiCloser struct {
	io.Reader
	cs []io.Closer
}

func (m multiCloser) Close() error {
	for _, c := range m.cs {
		c.Close()
	}
	return nil
}
