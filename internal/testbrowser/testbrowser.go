// Package testbrowser drives Debian's Chromium, headless, through the DevTools
// protocol (chromedp) for the web pages' tests: one tab per test, every flag
// that keeps Chromium off the internet, console errors turned into test
// failures, a screenshot per step and a screenshot of the page a step failed
// on.
//
// It is used only by tests (like internal/testnet), but is an ordinary
// package so that the web package's tests and the appliance's
// real-process test share one set of helpers.
package testbrowser

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/pumi-lab/pumi/internal/testnet"
)

// ChromiumPath is Debian's chromium package.
const ChromiumPath = "/usr/bin/chromium"

// Action is a browser step that returns nothing.
type Action = chromedp.Action[chromedp.Void]

// Options tune Start.
type Options struct {
	// Timeout bounds the whole flow, so a broken page fails the test
	// instead of hanging CI (default 2 minutes). The steps themselves wait
	// for what they need.
	Timeout time.Duration
	// ExpectedConsole lists substrings of console messages a flow causes on
	// purpose (e.g. "status of 422" for a rejected form); every other error,
	// warning or exception on any page fails the test.
	ExpectedConsole []string
}

// Browser is one headless Chromium with one tab, owned by one test.
type Browser struct {
	t testing.TB
	// ctx is the flow's context (bounded by Options.Timeout); tab is the
	// tab's own, used to look at the page after ctx ran out.
	ctx, tab context.Context
	// Shots is where Shot writes: $PUMI_WEB_SCREENSHOTS, or the test's
	// artifact directory.
	Shots string
}

// Start launches Chromium with a fresh profile and registers its shutdown
// and the console check with t.Cleanup. It needs root and Chromium (see
// testnet.Require: skipped outside CI, failed in CI).
func Start(t testing.TB, o Options) *Browser {
	t.Helper()
	testnet.Require(t, ChromiumPath)
	if o.Timeout <= 0 {
		o.Timeout = 2 * time.Minute
	}
	shots := os.Getenv("PUMI_WEB_SCREENSHOTS")
	if shots == "" {
		shots = t.ArtifactDir()
	}
	if err := os.MkdirAll(shots, 0o755); err != nil {
		t.Fatal(err)
	}

	// The flags the issue names keep Chromium from reaching the internet
	// (updates, sync, field trials); a fresh --user-data-dir keeps one test
	// from seeing another's cookies.
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(ChromiumPath),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("hide-scrollbars", true),
		chromedp.WindowSize(1280, 900),
	}
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	tab, cancelB := chromedp.NewContext(actx, chromedp.WithErrorf(t.Logf))
	ctx, cancel := context.WithTimeout(tab, o.Timeout)
	b := &Browser{t: t, ctx: ctx, tab: tab, Shots: shots}
	// Start Chromium now, with the tab's context (the browser lives as long
	// as the tab): chromedp starts it on first use without a lock, so two
	// first uses at once (the console reader and the first step) would race.
	if err := chromedp.Do(tab); err != nil {
		cancel()
		cancelB()
		cancelA()
		t.Fatalf("starting %s: %v", ChromiumPath, err)
	}

	// Every page must load without a console error: a CSP violation, a
	// script error or a failed request shows up here.
	var mu sync.Mutex
	var errs []string
	done := make(chan struct{})
	messages := chromedp.Console(ctx)
	go func() {
		defer close(done)
		for m, err := range messages {
			if err != nil {
				return
			}
			if !m.IsException() && m.Type != chromedp.ConsoleError && m.Type != chromedp.ConsoleWarning {
				continue
			}
			if slices.ContainsFunc(o.ExpectedConsole, func(s string) bool { return strings.Contains(m.Text, s) }) {
				continue
			}
			mu.Lock()
			errs = append(errs, fmt.Sprintf("%s %s (%s:%d)", m.Type, m.Text, m.URL, m.Line))
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		cancel()
		cancelB() // closes the tab and Chromium
		cancelA()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, m := range errs {
			t.Errorf("browser console: %s", m)
		}
	})
	return b
}

// Context is the flow's context, for chromedp calls the helpers lack.
func (b *Browser) Context() context.Context { return b.ctx }

// Step runs actions in order; on failure it saves the page as failed.png in
// Shots and fails the test with the step's name and URL.
func (b *Browser) Step(name string, actions ...Action) {
	b.t.Helper()
	start := time.Now()
	if err := chromedp.Do(b.ctx, actions...); err != nil {
		// The flow's context may be what ran out; look with the tab's.
		lctx, cancel := context.WithTimeout(b.tab, 10*time.Second)
		defer cancel()
		url, _ := chromedp.Run(lctx, chromedp.Location())
		if png, err := chromedp.Run(lctx, chromedp.FullScreenshot(100)); err == nil {
			os.WriteFile(filepath.Join(b.Shots, "failed.png"), png, 0o644)
		}
		b.t.Fatalf("step %q (at %s): %v", name, url, err)
	}
	b.t.Logf("step %-28s %v", name, time.Since(start).Round(time.Millisecond))
}

// Shot writes a full-page screenshot to Shots/name.png.
func (b *Browser) Shot(name string) Action {
	return chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		png, err := chromedp.FullScreenshot(100)(ctx, tg)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(b.Shots, name+".png"), png, 0o644)
	})
}

// Get reads a value from the page; what names it in the failure.
func (b *Browser) Get(what string, a chromedp.Action[string]) string {
	b.t.Helper()
	v, err := chromedp.Run(b.ctx, a)
	if err != nil {
		b.t.Fatalf("reading %s: %v", what, err)
	}
	return v
}

// Text is the text of the first element matching the CSS selector, once
// there is one.
func (b *Browser) Text(sel string) string {
	b.t.Helper()
	v, err := chromedp.Run(b.ctx, waitTextOf(sel))
	if err != nil {
		b.t.Fatalf("reading %s: %v", sel, err)
	}
	return v
}

// textOf reads the text (as rendered, innerText) of the first element
// matching sel in one evaluation: a page that swaps parts of itself (htmx)
// can replace the element between chromedp's "find the node" and "read
// it", which fails chromedp.Text. nil: no such element now.
func textOf(sel string) chromedp.Action[*string] {
	q, _ := json.Marshal(sel)
	return chromedp.Evaluate[*string](fmt.Sprintf(`(e => e ? e.innerText : null)(document.querySelector(%s))`, q))
}

// waitTextOf is textOf once the element exists.
func waitTextOf(sel string) chromedp.Action[string] {
	return func(ctx context.Context, tg *chromedp.Target) (string, error) {
		for {
			v, err := textOf(sel)(ctx, tg)
			if err != nil {
				return "", err
			}
			if v != nil {
				return *v, nil
			}
			select {
			case <-ctx.Done():
				return "", fmt.Errorf("no element %s on the page: %w", sel, ctx.Err())
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
}

// Value is the value of the first form field matching the CSS selector.
func (b *Browser) Value(sel string) string {
	b.t.Helper()
	return b.Get(sel, chromedp.Value(chromedp.CSS(sel)))
}

// Strings evaluates a JavaScript expression that yields strings.
func (b *Browser) Strings(expr string) []string {
	b.t.Helper()
	v, err := chromedp.Run(b.ctx, chromedp.Evaluate[[]string](expr))
	if err != nil {
		b.t.Fatalf("evaluating %s: %v", expr, err)
	}
	return v
}

// ClickAndLoad clicks an element that submits a form or follows a link and
// waits until the next page has replaced this one, so later queries cannot
// run against the old document while the browser is still navigating.
func ClickAndLoad(sel string) Action {
	return chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		if _, err := chromedp.Evaluate[bool](`window.__pumiOld = true`)(ctx, tg); err != nil {
			return err
		}
		if _, err := chromedp.Click(chromedp.CSS(sel))(ctx, tg); err != nil {
			return err
		}
		for {
			// Errors are expected while the old page goes away.
			done, err := chromedp.Evaluate[bool](`!window.__pumiOld && document.readyState === "complete"`)(ctx, tg)
			if err == nil && done {
				return nil
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("clicked %s, the next page did not load: %w", sel, ctx.Err())
			case <-time.After(50 * time.Millisecond):
			}
		}
	})
}

// WaitText waits until the element's trimmed text is want. The page must
// change on its own (htmx polling, server-sent updates): nothing here
// reloads it.
func WaitText(sel, want string) Action {
	return WaitTextFunc(sel, "= "+want, func(s string) bool { return s == want }, nil)
}

// WaitTextFunc waits until ok accepts the element's trimmed text; wanted
// describes ok in the failure. Each distinct text seen on the way is passed
// to seen (if not nil), so a test can show or check the sequence the page
// went through, without ever reloading it.
func WaitTextFunc(sel, wanted string, ok func(string) bool, seen func(string)) Action {
	return chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		last := "\x00"
		for {
			v, err := textOf(sel)(ctx, tg)
			if err != nil {
				return err
			}
			got := "(no such element)"
			if v != nil {
				got = strings.TrimSpace(*v)
			}
			if got != last && seen != nil {
				seen(got)
			}
			last = got
			if ok(got) {
				return nil
			}
			select {
			case <-ctx.Done():
				return errors.Join(ctx.Err(), fmt.Errorf("%s still says %q, want %s", sel, got, wanted))
			case <-time.After(100 * time.Millisecond):
			}
		}
	})
}
