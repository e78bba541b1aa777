package nfsexport

import (
	"context"
	"fmt"
	"os"
	"time"
)

// budgetUnit is the granularity of the record memory budget.
const budgetUnit = 64 << 10

func budgetUnits(bytes int) int {
	if bytes <= 0 {
		return 0
	}
	return (bytes + budgetUnit - 1) / budgetUnit
}

// memBudget bounds the memory all connections together hold in records
// larger than recordChunk while those arrive: without it, every allowed
// connection could hold a nearly complete 1 MiB record.
type memBudget struct{ tokens chan struct{} }

func newMemBudget(bytes int) *memBudget {
	return &memBudget{tokens: make(chan struct{}, max(budgetUnits(bytes), 1))}
}

// acquire takes one unit, waiting until one is free, ctx ends or deadline
// passes (the record's own deadline: a record that cannot get memory in
// time is as late as one whose bytes do not come).
func (b *memBudget) acquire(ctx context.Context, deadline time.Time) error {
	select {
	case b.tokens <- struct{}{}:
		return nil
	default:
	}
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case b.tokens <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return fmt.Errorf("nfsexport: no record memory free within the record deadline: %w", os.ErrDeadlineExceeded)
	}
}

func (b *memBudget) release(n int) {
	for ; n > 0; n-- {
		<-b.tokens
	}
}
