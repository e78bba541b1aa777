// Package change broadcasts "something changed" to any number of waiters
// (the appliance's supervisors waiting for config changes).
package change

import "sync"

// Broadcast is a change signal: Wait returns a channel that the next Notify
// closes. Take it before reading what it guards, so a change in between is
// never missed. The zero value is ready to use.
type Broadcast struct {
	mu sync.Mutex
	ch chan struct{}
}

// Wait returns the channel the next Notify closes.
func (b *Broadcast) Wait() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ch == nil {
		b.ch = make(chan struct{})
	}
	return b.ch
}

// Notify wakes every waiter.
func (b *Broadcast) Notify() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ch != nil {
		close(b.ch)
	}
	b.ch = make(chan struct{})
}
