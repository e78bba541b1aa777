package power

import "runtime"

// testnet.NS.Do runs its function on a locked thread that joins a namespace
// and is never unlocked, so the thread dies with the goroutine. If that
// thread is the process's main thread, Go cannot end it and parks it still
// inside the namespace; /proc/<pid>/ns/net then names the test's namespace,
// and deleting that namespace (which kills every pid `ip netns pids` lists)
// kills the test binary itself. Keeping the main goroutine locked to the
// main thread from init means no Do goroutine can ever land there.
func init() { runtime.LockOSThread() }
