package web

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/pumi-lab/pumi/internal/inventory"
	"github.com/pumi-lab/pumi/internal/testbrowser"
)

// TestBrowserFlow drives Debian's Chromium (headless, through the DevTools
// protocol with chromedp) through the admin's first session against the
// handler on a real HTTP server on 127.0.0.1, backed by the real store,
// inventory and image scan: set the password, configure, import a CSV with
// a bad row (error next to the row, nothing imported), fix it, create a
// schedule with the live cron preview, run it and watch a seat's state
// change on the page without a reload. It writes a screenshot of every page
// to $PUMI_WEB_SCREENSHOTS (or the test's artifact directory).
//
// The same flow runs against a real pumi-appliance process in
// internal/appliance's TestBrowserFlow; this one stays because here the test
// moves the seat itself, so the run page's restoring (bytes, throughput) and
// verified rows are shown and checked, which a run without a lab of real
// seats never reaches.
func TestBrowserFlow(t *testing.T) {
	for _, lang := range []string{"en", "es"} {
		t.Run(lang, func(t *testing.T) { browserFlow(t, lang) })
	}
}

// browserFlow is the flow in one language: English keeps the screenshot
// names docs/ and the README use, Spanish adds "-es" to them.
func browserFlow(t *testing.T, lang string) {
	w := func(en, es string) string {
		if lang == "es" {
			return es
		}
		return en
	}
	suffix := w("", "-es")
	br := testbrowser.Start(t, testbrowser.Options{
		// The rejected CSV is answered 422 on purpose; the browser logs
		// every 4xx page load.
		ExpectedConsole: []string{"status of 422", "status of 400"},
	})
	ctx := br.Context()
	step, text, strs := br.Step, br.Text, br.Strings
	shot := func(name string) testbrowser.Action { return br.Shot(name + suffix) }
	clickAndLoad, waitText := testbrowser.ClickAndLoad, testbrowser.WaitText

	// Real server on loopback.
	b, st := newStoreBackend(t, t.TempDir())
	h, err := New(b, Options{Auth: NewStoreAuth(st)}, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	base := "http://" + ln.Addr().String()

	// The image repository: the clonezilla package's fixture (valid and
	// broken images), copied so nothing can touch the original.
	repo := filepath.Join(t.TempDir(), "images")
	if err := os.CopyFS(repo, os.DirFS("../clonezilla/testdata/repo")); err != nil {
		t.Fatal(err)
	}
	// A half-copied image: the second partition's data is missing.
	half := filepath.Join(repo, "room-c", "LAB-C-img")
	if err := os.CopyFS(half, os.DirFS(filepath.Join(repo, "LAB-A-img"))); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(half, "nvme0n1p2.ext4-ptcl-img.zst")); err != nil {
		t.Fatal(err)
	}

	// 1. First visit: any page leads to setting the password; the
	// language switch is on it already.
	step("first visit",
		chromedp.Navigate(base+"/lang/"+lang+"?next=/inventory"),
		chromedp.WaitVisible(chromedp.CSS("#set-password")),
		shot("01-first-visit"),
		chromedp.SendKeys(chromedp.CSS("#password"), testPassword),
		chromedp.SendKeys(chromedp.CSS("#again"), testPassword),
		clickAndLoad("#set-password"),
		chromedp.WaitVisible(chromedp.CSS("#save-settings")),
	)

	// 2. Configure: repository, lab netboot (proxy), time zone.
	step("configure",
		chromedp.SetValue(chromedp.CSS("#repository"), repo),
		chromedp.Click(chromedp.CSS(`input[name=nb_mode][value=proxy]`)),
		chromedp.WaitVisible(chromedp.CSS("#nb_interface")),
		chromedp.SetValue(chromedp.CSS("#nb_interface"), "eth1"),
		chromedp.SetValue(chromedp.CSS("#time_zone"), "Europe/Zurich"),
		clickAndLoad("#save-settings"),
		chromedp.WaitVisible(chromedp.CSS(".flash.ok")),
		shot("02-setup"),
	)
	if got := text(".flash.ok"); got != w("Saved.", "Guardado.") {
		t.Fatalf("after saving the setup the page says %q", got)
	}
	saved, err := b.Settings(ctx)
	if err != nil || saved.Repository != repo || saved.Netboot.Mode != "proxy" || saved.TimeZone != "Europe/Zurich" {
		t.Fatalf("settings not stored: %+v %v", saved, err)
	}
	// A wrong mail port: the error stands beside the field, which keeps
	// what was typed.
	step("setup error beside its field",
		chromedp.SetValue(chromedp.CSS("input[name=mail_host]"), "smtp.example.org"),
		chromedp.SetValue(chromedp.CSS("#mail_port"), "99999"),
		clickAndLoad("#save-settings"),
		chromedp.WaitVisible(chromedp.CSS("#mail_port + .field-err")),
		shot("02-setup-error"),
	)
	if got := br.Value("#mail_port"); got != "99999" {
		t.Fatalf("the mail port field was cleared: %q", got)
	}
	if got := text("#mail_port + .field-err"); got != w("a number from 1 to 65535", "un número del 1 al 65535") {
		t.Fatalf("mail port error beside the field: %q", got)
	}
	// Clonezilla live is imported by the admin from the official zip; the
	// zip is not part of this test, so the setting is made directly.
	saved.Live = "3.3.0-33"
	if err := b.SetSettings(ctx, saved); err != nil {
		t.Fatal(err)
	}

	// 3. Images found in the repository, with the problems of broken ones.
	step("images",
		chromedp.Navigate(base+"/images"),
		chromedp.WaitVisible(chromedp.CSS("#images")),
		shot("03-images"),
	)
	if imgs := text("#images"); !strings.Contains(imgs, "LAB-A-img") || !strings.Contains(imgs, w("restorable", "restaurable")) {
		t.Fatalf("images page:\n%s", imgs)
	}
	if broken := text(`#images tr[data-image="room-c/LAB-C-img"]`); !strings.Contains(broken, w("broken", "dañada")) || !strings.Contains(broken, "nvme0n1p2") {
		t.Fatalf("the half-copied image is not shown broken with its problem:\n%s", broken)
	}

	// 4. A PXE client pumi heard but does not know, then a CSV with one
	// bad row.
	if err := b.seen(ctx, "52:54:00:aa:bb:cc", netip.MustParseAddr("10.20.0.99")); err != nil {
		t.Fatal(err)
	}
	if _, err := b.AddRoom(ctx, inventory.Room{Name: "A101"}); err != nil {
		t.Fatal(err)
	}
	const badCSV = "mac,ip,hostname,room\n52:54:00:12:34:01,10.20.0.11,pc-a101-01,A101\n52:54:00:12:34:0g,10.20.0.12,pc-a101-02,A101\n52:54:00:12:34:03,10.20.0.13,pc-a101-03,A101\n"
	csvFile := filepath.Join(t.TempDir(), "seats.csv")
	if err := os.WriteFile(csvFile, []byte(badCSV), 0o644); err != nil {
		t.Fatal(err)
	}
	step("import bad CSV",
		chromedp.Navigate(base+"/inventory"),
		chromedp.WaitVisible(chromedp.CSS("#import")),
		chromedp.SetUploadFiles(chromedp.CSS("#csv-file"), []string{csvFile}),
		clickAndLoad("#import"),
		chromedp.WaitVisible(chromedp.CSS("#import-errors")),
		shot("04-inventory-bad-csv"),
	)
	if row := text(`#import-errors tr[data-line="3"] td.err`); !strings.Contains(row, "mac") {
		t.Fatalf("line 3's error is not next to it: %q", row)
	}
	if n := len(mustSeats(t, b)); n != 0 {
		t.Fatalf("%d seats imported from a file with a bad row", n)
	}
	errRows := strs(`[...document.querySelectorAll("#import-errors tr.has-error")].map(r => r.dataset.line)`)
	if len(errRows) != 1 || errRows[0] != "3" {
		t.Fatalf("marked lines %v, want only line 3", errRows)
	}

	// 5. Fix the row in the text box the page filled with the file.
	shown := br.Value("#csv-text")
	if shown != badCSV {
		t.Fatalf("the page did not keep the file to fix: %q", shown)
	}
	step("import fixed CSV",
		chromedp.SetValue(chromedp.CSS("#csv-text"), strings.Replace(badCSV, "34:0g", "34:02", 1)),
		clickAndLoad("#import"),
		chromedp.WaitVisible(chromedp.CSS("#import-result")),
		chromedp.WaitVisible(chromedp.CSS("#seats")),
		shot("05-inventory"),
	)
	if got := text("#import-result"); !strings.Contains(got, w("3 added", "3 añadidos")) {
		t.Fatalf("import result: %q", got)
	}
	if n := len(mustSeats(t, b)); n != 3 {
		t.Fatalf("%d seats after the fixed import, want 3", n)
	}

	// 6. A schedule: the cron preview answers as the spec is typed.
	step("new schedule",
		chromedp.Navigate(base+"/schedules/new"),
		chromedp.WaitVisible(chromedp.CSS("#spec")),
		chromedp.SendKeys(chromedp.CSS("#name"), "Room A101 weekly"),
		// SetValue fires no input event; the last typed key does, with
		// the whole value in the field, as when a person types.
		chromedp.SetValue(chromedp.CSS("#spec"), "61 2 * * SA"),
		chromedp.SendKeys(chromedp.CSS("#spec"), "T"),
		chromedp.WaitVisible(chromedp.CSS("#cron-preview .err")),
	)
	if got := text("#cron-preview"); !strings.Contains(got, "minute") || !strings.Contains(got, w("not understood", "No se entiende")) {
		t.Fatalf("a bad spec's preview: %q", got)
	}
	// Spanish day names work too and are stored as the standard ones.
	day := w("SA", "SÁ")
	step("fix spec",
		chromedp.SetValue(chromedp.CSS("#spec"), "30 2 * * "+day),
		chromedp.SendKeys(chromedp.CSS("#spec"), w("T", "B")),
		chromedp.WaitVisible(chromedp.CSS("#cron-preview ol.times")),
		chromedp.SetValue(chromedp.CSS("#image"), "LAB-A-img"),
		chromedp.Click(chromedp.CSS(`input[name=rooms][value=A101]`)),
		shot("06-schedule-edit"),
	)
	fires := strs(`[...document.querySelectorAll("#cron-preview li")].map(li => li.textContent)`)
	if len(fires) != 5 || !strings.HasPrefix(fires[0], w("Sat", "sáb")) || !strings.HasSuffix(fires[0], "02:30 CET") {
		t.Fatalf("next fire times %q", fires)
	}
	if got := text("#cron-preview p"); !strings.Contains(got, "Europe/Zurich") {
		t.Fatalf("preview zone: %q", got)
	}
	step("save schedule",
		clickAndLoad("#save-schedule"),
		chromedp.WaitVisible(chromedp.CSS("#schedules")),
		shot("07-schedules"),
	)
	if got := text(`#schedules tr[data-id="room-a101-weekly"] code`); got != "30 2 * * SAT" {
		t.Fatalf("stored spec %q", got)
	}

	// 7. Run it now, then watch a seat change state as the engine moves it.
	step("run now",
		clickAndLoad(`#schedules tr[data-id="room-a101-weekly"] .run-now`),
		chromedp.WaitVisible(chromedp.CSS("#run-seats")),
		shot("08-run-started"),
	)
	const mac = "52:54:00:12:34:02"
	seatSel := fmt.Sprintf(`#run-seats tr[data-mac=%q] .seat-state`, mac)
	if got := text(seatSel); got != w("pending", "pendiente") {
		t.Fatalf("seat state at start %q", got)
	}
	runs, err := b.Runs(ctx)
	if err != nil || len(runs) != 1 || len(runs[0].Seats) != 3 {
		t.Fatalf("runs: %+v %v", runs, err)
	}
	runID := runs[0].ID
	if err := b.advance(ctx, runID, mac, "restoring", "restoring nvme0n1p3 (partclone, zstd)", 3<<30, 10<<30); err != nil {
		t.Fatal(err)
	}
	// Another seat cannot be reached: it waits, amber, with what for and
	// since when, instead of a blue "powering" that looks like progress.
	const stuck = "52:54:00:12:34:03"
	if err := b.changeRun(ctx, runID, func(r *Run) error {
		for i := range r.Seats {
			if r.Seats[i].MAC == stuck {
				r.Seats[i].State, r.Seats[i].Reason = "powering", "ssh: handshake failed: unable to authenticate"
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := b.advance(ctx, runID, mac, "restoring", "restoring nvme0n1p3 (partclone, zstd)", 3<<30, 10<<30); err != nil {
		t.Fatal(err)
	}
	step("seat restoring", waitText(seatSel, w("restoring", "restaurando")),
		waitText(fmt.Sprintf(`#run-seats tr[data-mac=%q] .seat-state`, stuck), w("waiting", "en espera")), shot("09-run-restoring"))
	if got := text(fmt.Sprintf(`#run-seats tr[data-mac=%q] td:nth-child(2)`, stuck)); !strings.Contains(got, w("its network boot", "su arranque por red")) ||
		!strings.Contains(got, w("since", "desde")) || !strings.Contains(got, "unable to authenticate") {
		t.Fatalf("the waiting seat says %q", got)
	}
	if err := b.advance(ctx, runID, mac, "verified", "Signature matches LAB-A", 10<<30, 10<<30); err != nil {
		t.Fatal(err)
	}
	step("seat verified", waitText(seatSel, w("verified", "verificado")), shot("10-run-verified"))

	// 8. The overview, and the inventory on a phone-sized screen.
	step("overview", chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.CSS(".tiles")), shot("11-overview"))
	step("phone",
		chromedp.EmulateViewport(360, 780),
		chromedp.Navigate(base+"/runs/"+runID),
		chromedp.WaitVisible(chromedp.CSS("#run-seats")),
		shot("12-run-phone"),
		chromedp.Navigate(base+"/schedules"),
		chromedp.WaitVisible(chromedp.CSS("#schedules")),
		shot("13-schedules-phone"),
	)
	// At 360 px the schedule's buttons are on screen, not scrolled away.
	right := strs(`[...document.querySelectorAll("#schedules .actions button")].map(b => String(b.getBoundingClientRect().right))`)
	if len(right) != 3 {
		t.Fatalf("schedule buttons: %v", right)
	}
	for _, r := range right {
		if x, _ := strconv.ParseFloat(r, 64); x > 360 || x <= 0 {
			t.Fatalf("a schedule button ends at x=%s, off a 360 px screen", r)
		}
	}
	step("desktop again", chromedp.EmulateViewport(1280, 900))

	// 9. The inventory at scale: 10,000 seats, first render timed in the
	// browser (navigation start to the seats table shown).
	var csv strings.Builder
	csv.WriteString("mac,ip,hostname,room\n")
	for i := range 10000 {
		fmt.Fprintf(&csv, "52:54:01:%02x:%02x:%02x,10.%d.%d.%d,pc-%05d,R%02d\n", i>>16, (i>>8)&255, i&255, 30+i/62500, (i/250)%250, i%250+1, i, i%40)
	}
	if _, err := b.ImportSeats(ctx, strings.NewReader(csv.String()), inventory.Replace); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	step("inventory 10k", chromedp.Navigate(base+"/inventory"), chromedp.WaitVisible(chromedp.CSS("#seats")))
	took := time.Since(start)
	// The browser's own account (Navigation Timing): from the request to
	// the page drawn, without the DevTools round trips of the step.
	nav := strs(`(() => { const n = performance.getEntriesByType("navigation")[0];
		return [String(Math.round(n.responseStart - n.startTime)), String(Math.round(n.domContentLoadedEventEnd - n.startTime)),
			String(document.documentElement.outerHTML.length), String(document.querySelectorAll("#seats tbody tr").length)]; })()`)
	ttfb, _ := strconv.Atoi(nav[0])
	rendered, _ := strconv.Atoi(nav[1])
	t.Logf("FIGURE inventory page with 10,000 seats (%s): first render %d ms in Chromium (first byte %d ms; step with DevTools round trips %v), %s bytes of HTML, %s rows shown",
		lang, rendered, ttfb, took.Round(time.Millisecond), nav[2], nav[3])
	if rendered <= 0 || rendered > 1000 {
		t.Fatalf("10,000 seats took %d ms to render, want under 1 s", rendered)
	}
	step("inventory search",
		chromedp.SetValue(chromedp.CSS("#q"), "pc-0999"),
		chromedp.SetValue(chromedp.CSS("#room-filter"), "R39"),
		clickAndLoad("#seat-filter button"),
		chromedp.WaitVisible(chromedp.CSS("#seat-range")),
		shot("14-inventory-search"),
	)
	if rows := strs(`[...document.querySelectorAll("#seats tbody tr td:nth-child(3)")].map(td => td.textContent)`); len(rows) != 1 || rows[0] != "pc-09999" {
		t.Fatalf("search pc-0999 in room R39: %v", rows)
	}
}

func mustSeats(t *testing.T, b *storeBackend) []inventory.Seat {
	t.Helper()
	s, err := b.Seats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return s
}
