package netboot

import (
	"context"
	"log/slog"
	"net"
)

// seenQueueLen bounds the Seen notifications waiting for the admission: a
// room of PCs booting together sends a few per PC; a flood of made-up MACs
// is cut off here (and counted) instead of growing memory.
const seenQueueLen = 4096

// seenQueue delivers Admission.Seen calls on one goroutine of its own, in
// the order the packets came, so the DHCP answer never waits for them. The
// appliance records every PXE client in its state file (a durable write per
// call); made under the handler's lock, as it was, that write serialised
// every DHCP answer behind one fsync each: the appliance's DISCOVER→OFFER
// p50 in a burst of 1,000 PXE clients was 1.5 s and most clients needed a
// retransmission (bench/RESULTS.md).
type seenQueue struct {
	adm   Admission
	noisy *limitedLog
	ch    chan seenEvent
}

type seenEvent struct {
	mac  net.HardwareAddr
	info ClientInfo
}

func newSeenQueue(adm Admission, noisy *limitedLog) *seenQueue {
	return &seenQueue{adm: adm, noisy: noisy, ch: make(chan seenEvent, seenQueueLen)}
}

// push queues one notification, or drops it when the queue is full.
func (q *seenQueue) push(mac net.HardwareAddr, info ClientInfo) {
	select {
	case q.ch <- seenEvent{append(net.HardwareAddr(nil), mac...), info}:
	default:
		q.noisy.Log(slog.LevelWarn, "seen queue full: a PXE client was not recorded", "mac", mac.String(), "queued", seenQueueLen)
	}
}

// run delivers queued notifications until ctx ends; what is still queued
// then is delivered before it returns, so a test (or a shutdown) sees
// every client that was answered.
func (q *seenQueue) run(ctx context.Context) {
	for {
		select {
		case ev := <-q.ch:
			q.adm.Seen(ev.mac, ev.info)
		case <-ctx.Done():
			for {
				select {
				case ev := <-q.ch:
					q.adm.Seen(ev.mac, ev.info)
				default:
					return
				}
			}
		}
	}
}
