package netboot

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Log lines an outsider can cause with one packet each (junk, floods, unknown
// MACs, refused TFTP requests) go through a limitedLog: at most
// limitedLogBurst lines per kind every limitedLogEvery, and the next line let
// through says how many of that kind were left out meanwhile. 125,000 junk
// packets used to write 61,000 lines (12 MB); now they write a few dozen,
// and the counters still tell the operator how many there were.
const (
	limitedLogEvery = 10 * time.Second
	limitedLogBurst = 20
)

// limitedLog rate-limits log lines per kind. The kinds are the constant
// messages of this package, so its map is bounded by the code, not by what
// arrives from the network.
type limitedLog struct {
	log *slog.Logger
	now func() time.Time

	mu    sync.Mutex
	kinds map[string]*limitedKind
}

type limitedKind struct {
	windowStart time.Time
	inWindow    int    // lines let through in the current window
	suppressed  uint64 // left out since the last line let through
	total       uint64 // every occurrence since start
}

func newLimitedLog(log *slog.Logger, now func() time.Time) *limitedLog {
	if now == nil {
		now = time.Now
	}
	return &limitedLog{log: log, now: now, kinds: map[string]*limitedKind{}}
}

// Log writes msg at level unless more than limitedLogBurst lines of msg were
// written in the current window; a line that follows suppressed ones carries
// "suppressed" (since the last line) and "total" (since start) counters.
func (l *limitedLog) Log(level slog.Level, msg string, args ...any) {
	if !l.log.Enabled(context.Background(), level) {
		return
	}
	now := l.now()
	l.mu.Lock()
	k := l.kinds[msg]
	if k == nil {
		k = &limitedKind{windowStart: now}
		l.kinds[msg] = k
	}
	k.total++
	if now.Sub(k.windowStart) >= limitedLogEvery {
		k.windowStart, k.inWindow = now, 0
	}
	if k.inWindow >= limitedLogBurst {
		k.suppressed++
		l.mu.Unlock()
		return
	}
	k.inWindow++
	suppressed, total := k.suppressed, k.total
	k.suppressed = 0
	l.mu.Unlock()
	if suppressed > 0 {
		args = append(args, "suppressed", suppressed, "total", total)
	}
	l.log.Log(context.Background(), level, msg, args...)
}

// Total is how often msg occurred (logged or not), for tests and status.
func (l *limitedLog) Total(msg string) uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	if k := l.kinds[msg]; k != nil {
		return k.total
	}
	return 0
}

// Flush writes one summary line per kind that has suppressed occurrences not
// yet reported, e.g. when a server stops after a flood.
func (l *limitedLog) Flush() {
	l.mu.Lock()
	type line struct {
		msg               string
		suppressed, total uint64
	}
	var lines []line
	for msg, k := range l.kinds {
		if k.suppressed > 0 {
			lines = append(lines, line{msg, k.suppressed, k.total})
			k.suppressed = 0
		}
	}
	l.mu.Unlock()
	for _, x := range lines {
		l.log.Info("repeated log lines left out", "msg", x.msg, "suppressed", x.suppressed, "total", x.total)
	}
}
