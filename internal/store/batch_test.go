package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
)

// TestBatchConcurrentWritersAllDurable: many concurrent Batch calls each
// return only after their write is committed, share transactions (that is
// the point of Batch), and a failing call neither fails nor loses the others.
func TestBatchConcurrentWritersAllDurable(t *testing.T) {
	dir := t.TempDir()
	s := mustOpen(t, dir)
	ctx := context.Background()
	const n = 100
	var (
		mu    sync.Mutex
		txIDs = map[int]bool{}
		start = make(chan struct{})
		wg    sync.WaitGroup
		errs  = make([]error, n)
		boom  = errors.New("boom")
	)
	for i := range n {
		wg.Go(func() {
			<-start
			errs[i] = s.Batch(ctx, func(tx *Tx) error {
				mu.Lock()
				txIDs[tx.tx.ID()] = true
				mu.Unlock()
				if i == 7 {
					return boom
				}
				return recs.Put(tx, fmt.Sprintf("k%03d", i), rec{Count: i})
			})
		})
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if i == 7 {
			if !errors.Is(err, boom) {
				t.Errorf("failing call returned %v, want its own error", err)
			}
			continue
		}
		if err != nil {
			t.Errorf("call %d: %v", i, err)
		}
	}
	if len(txIDs) >= n {
		t.Errorf("%d calls ran in %d transactions: nothing was coalesced", n, len(txIDs))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = mustOpen(t, dir)
	defer s.Close()
	err := s.View(ctx, func(tx *Tx) error {
		for i := range n {
			v, ok, err := recs.Get(tx, fmt.Sprintf("k%03d", i))
			switch {
			case err != nil:
				return err
			case i == 7 && ok:
				t.Errorf("the failed call's write was committed")
			case i != 7 && (!ok || v.Count != i):
				t.Errorf("k%03d after reopen: %+v, %v", i, v, ok)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestBatchCancelledContextWritesNothing(t *testing.T) {
	s := mustOpen(t, t.TempDir())
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	called := false
	err := s.Batch(ctx, func(tx *Tx) error { called = true; return recs.Put(tx, "x", rec{}) })
	if !errors.Is(err, context.Canceled) || called {
		t.Fatalf("Batch with a cancelled context: err %v, fn called %v", err, called)
	}
}
