package store

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

var crashIterations = flag.Int("crash-iterations", 0, "kill -9 cycles for TestCrashRecovery (default 300, or $PUMI_CRASH_ITERATIONS)")

const (
	crashAccounts = 10
	crashStart    = 1000
)

type transfer struct {
	Seq      uint64 `json:"seq"`
	From, To int
	Amount   int64
}

var (
	accounts  = NewBucket[int64]("crash-accounts")
	transfers = NewBucket[transfer]("crash-log")
)

func acctKey(i int) string { return fmt.Sprintf("acct-%02d", i) }

// TestCrashChild is the process that gets killed. It runs only when
// TestCrashRecovery re-executes the test binary with PUMI_CRASH_CHILD set.
// It moves money between accounts (the sum never changes) and appends each
// transfer to a log, printing "ack N" only after transaction N committed.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv("PUMI_CRASH_CHILD")
	if dir == "" {
		t.Skip("helper process for TestCrashRecovery")
	}
	ctx := context.Background()
	s, err := Open(ctx, dir, nil)
	if err != nil {
		fmt.Printf("open-error %v\n", err)
		os.Exit(3)
	}
	err = s.Update(ctx, func(tx *Tx) error {
		if n, err := accounts.Count(tx); err != nil || n > 0 {
			return err
		}
		for i := range crashAccounts {
			if err := accounts.Put(tx, acctKey(i), crashStart); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		fmt.Printf("init-error %v\n", err)
		os.Exit(3)
	}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(os.Getpid())))
	for i := 0; ; i++ {
		var seq uint64
		err := s.Update(ctx, func(tx *Tx) error {
			from, to := rng.IntN(crashAccounts), rng.IntN(crashAccounts)
			amount := rng.Int64N(100)
			a, _, err := accounts.Get(tx, acctKey(from))
			if err != nil {
				return err
			}
			if err := accounts.Put(tx, acctKey(from), a-amount); err != nil {
				return err
			}
			b, _, err := accounts.Get(tx, acctKey(to))
			if err != nil {
				return err
			}
			if err := accounts.Put(tx, acctKey(to), b+amount); err != nil {
				return err
			}
			if seq, err = transfers.NextSeq(tx); err != nil {
				return err
			}
			// Bulky payload so that transactions split pages and grow the file.
			for j := range rng.IntN(4) {
				if err := recs.Put(tx, fmt.Sprintf("pad-%d-%d", seq, j), rec{Name: strings.Repeat("p", rng.IntN(3000))}); err != nil {
					return err
				}
			}
			return transfers.Put(tx, SeqKey(seq), transfer{Seq: seq, From: from, To: to, Amount: amount})
		})
		if err != nil {
			fmt.Printf("update-error %v\n", err)
			os.Exit(3)
		}
		// One write(2) per line: the parent sees the ack only after commit.
		os.Stdout.WriteString("ack " + strconv.FormatUint(seq, 10) + "\n")
		if i%40 == 39 {
			if err := s.Backup(ctx); err != nil {
				fmt.Printf("backup-error %v\n", err)
				os.Exit(3)
			}
		}
	}
}

// TestCrashRecovery kills a writer with SIGKILL at random moments (during
// Open, mid-transaction, mid-backup), reopens the store each time and checks
// the invariants: the file opens and passes its check, the accounts still
// sum to the starting total, the log has no gaps and holds every transfer
// the child acknowledged, and replaying the log gives the stored balances.
func TestCrashRecovery(t *testing.T) {
	if os.Getenv("PUMI_CRASH_CHILD") != "" {
		t.Skip("inside the child")
	}
	n := *crashIterations
	if n == 0 {
		n, _ = strconv.Atoi(os.Getenv("PUMI_CRASH_ITERATIONS"))
	}
	if n <= 0 {
		n = 300 // "hundreds" of kill -9 cycles in every CI run (30-60 s)
		if testing.Short() {
			n = 20
		}
	}
	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, 7))
	t.Logf("seed %d, %d iterations", seed, n)
	dir := t.TempDir()
	var maxAck uint64
	var early, logged int
	start := time.Now()
	for i := range n {
		// One kill in four lands anywhere from process start (inside Open:
		// check, backup, migration); the others land mid-stream, after the
		// child has committed at least once.
		afterFirstCommit := rng.IntN(4) != 0
		acked := runAndKill(t, dir, afterFirstCommit, time.Duration(rng.IntN(60_000))*time.Microsecond)
		if acked == 0 {
			early++
		}
		maxAck = max(maxAck, acked)
		logged = checkCrashInvariants(t, dir, maxAck, i)
	}
	t.Logf("%d kills in %v: %d transfers committed and verified (highest acknowledged %d), %d kills before that run's first commit",
		n, time.Since(start).Round(time.Millisecond), logged, maxAck, early)
}

// runAndKill starts the child, kills it d after its start (or after its
// first acknowledged commit) and returns the highest sequence number it
// acknowledged.
func runAndKill(t *testing.T, dir string, afterFirstCommit bool, d time.Duration) uint64 {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$")
	cmd.Env = append(os.Environ(), "PUMI_CRASH_CHILD="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	acks := make(chan uint64, 1)
	ended := make(chan struct{})
	failure := make(chan string, 1)
	first := make(chan struct{})
	go func() {
		var last uint64
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			line := sc.Text()
			if n, ok := strings.CutPrefix(line, "ack "); ok {
				if last == 0 {
					close(first)
				}
				last, _ = strconv.ParseUint(n, 10, 64)
			} else if strings.Contains(line, "-error") {
				failure <- line
			}
		}
		acks <- last
		close(ended)
	}()
	if afterFirstCommit {
		select {
		case <-first:
		case <-ended: // the child died on its own; reported below
		}
	}
	time.Sleep(d)
	cmd.Process.Signal(syscall.SIGKILL)
	last := <-acks
	cmd.Wait()
	select {
	case f := <-failure:
		t.Fatalf("child failed before being killed: %s", f)
	default:
	}
	// A child that panicked or exited on its own did not die by our hand.
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("child ended by itself (%v) instead of being killed; its stderr is above", cmd.ProcessState)
	}
	return last
}

func checkCrashInvariants(t *testing.T, dir string, acked uint64, iter int) int {
	t.Helper()
	ctx := context.Background()
	s, err := Open(ctx, dir, nil)
	if err != nil {
		t.Fatalf("iteration %d: reopen after kill: %v", iter, err)
	}
	defer s.Close()
	var logged int
	err = s.View(ctx, func(tx *Tx) error {
		bal := map[string]int64{}
		var sum int64
		if err := accounts.ForEach(tx, func(k string, v int64) error { bal[k] = v; sum += v; return nil }); err != nil {
			return err
		}
		replay := map[string]int64{}
		if len(bal) > 0 {
			if len(bal) != crashAccounts || sum != crashAccounts*crashStart {
				return fmt.Errorf("%d accounts sum to %d, want %d accounts summing to %d", len(bal), sum, crashAccounts, crashAccounts*crashStart)
			}
			for i := range crashAccounts {
				replay[acctKey(i)] = crashStart
			}
		}
		var want uint64 = 1
		err := transfers.ForEach(tx, func(k string, v transfer) error {
			n, err := ParseSeqKey(k)
			if err != nil {
				return err
			}
			if n != want || v.Seq != n {
				return fmt.Errorf("log gap: found %d (record says %d), want %d", n, v.Seq, want)
			}
			want++
			replay[acctKey(v.From)] -= v.Amount
			replay[acctKey(v.To)] += v.Amount
			return nil
		})
		if err != nil {
			return err
		}
		logged = int(want - 1)
		if uint64(logged) < acked {
			return fmt.Errorf("acknowledged transfer %d lost: log ends at %d", acked, logged)
		}
		for k, v := range replay {
			if bal[k] != v {
				return fmt.Errorf("%s = %d but replaying the log gives %d", k, bal[k], v)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("iteration %d: %v", iter, err)
	}
	return logged
}
