package web

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/pumi-lab/pumi/internal/inventory"
	"github.com/pumi-lab/pumi/internal/schedule"
)

// TestPreflightRunNow: each problem a run would meet refuses "run now"
// with its message (no run is created), and mail off only warns.
func TestPreflightRunNow(t *testing.T) {
	for _, tc := range []struct {
		name    string
		setup   func(e *env, st *Settings, sc *schedule.Schedule)
		refused bool
		want    string // on the page (Spanish, to check the catalog is used)
	}{
		{"all set", func(*env, *Settings, *schedule.Schedule) {}, false, ""},
		{"netboot off", func(_ *env, st *Settings, _ *schedule.Schedule) { st.Netboot = Netboot{Mode: "off"} }, true,
			"El arranque en red del aula está apagado"},
		{"no Clonezilla live", func(_ *env, st *Settings, _ *schedule.Schedule) { st.Live = "" }, true,
			"Todavía no se ha importado ningún Clonezilla live"},
		{"image missing", func(_ *env, _ *Settings, sc *schedule.Schedule) { sc.Action.Image = "NOPE-img" }, true,
			"No hay ninguna imagen NOPE-img en el repositorio"},
		{"image broken", func(_ *env, _ *Settings, sc *schedule.Schedule) { sc.Action.Image = "LAB-C-img" }, true,
			"La imagen LAB-C-img está dañada y no se puede restaurar"},
		{"no seat in the target", func(_ *env, _ *Settings, sc *schedule.Schedule) { sc.Target.Rooms = []string{"EMPTY"} }, true,
			"no tienen ningún equipo en el inventario"},
		{"no seat reachable", func(_ *env, st *Settings, sc *schedule.Schedule) {
			st.Netboot.Interface, st.Netboot.Mode = "", "full"
			sc.Target = schedule.Target{Seats: []string{"pc-2"}}
		}, true, "A 1 equipo(s) no se puede acceder por SSH ni encender por Wake-on-LAN: pc-2"},
		{"verify needs SSH", func(_ *env, _ *Settings, sc *schedule.Schedule) {
			sc.Action, sc.Target = schedule.Action{Kind: schedule.Verify}, schedule.Target{Seats: []string{"pc-2"}}
		}, true, "A 1 equipo(s) no se puede acceder por SSH"},
		{"some seats unreachable only warns", func(_ *env, st *Settings, _ *schedule.Schedule) { st.Netboot.Interface, st.Netboot.Mode = "", "full" },
			false, "startedunreach"},
		{"mail off only warns", func(_ *env, st *Settings, _ *schedule.Schedule) { st.Mail = Mail{} }, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, Options{})
			c, csrf := e.login()
			ctx := context.Background()
			e.readyForRuns()
			// pc-1 can be logged in to; pc-2 has no IP: only WoL reaches it.
			if _, err := e.b.ImportSeats(ctx, strings.NewReader("mac,ip,hostname,room,ssh_user\n52:54:00:00:02:01,10.20.0.11,pc-1,B2,alumno\n52:54:00:00:02:02,,pc-2,B2,\n"), inventory.Merge); err != nil {
				t.Fatal(err)
			}
			st, _ := e.b.Settings(ctx)
			sc := schedule.Schedule{ID: "b2", Name: "B2", Spec: schedule.MustParse("0 3 * * *"), Window: 7200e9, Enabled: true,
				Action: schedule.Action{Kind: schedule.Restore, Image: "LAB-B-img"}, Target: schedule.Target{Rooms: []string{"B2"}}}
			tc.setup(e, &st, &sc)
			if err := e.b.SetSettings(ctx, st); err != nil {
				t.Fatal(err)
			}
			if err := e.b.PutSchedule(ctx, sc); err != nil {
				t.Fatal(err)
			}
			rq, _ := http.NewRequest("POST", e.ts.URL+"/schedules/b2/run", strings.NewReader(url.Values{"csrf": {csrf}}.Encode()))
			rq.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			rq.Header.Set("Accept-Language", "es")
			resp, err := c.Do(rq)
			if err != nil {
				t.Fatal(err)
			}
			body := readAll(resp)
			runs, _ := e.b.Runs(ctx)
			if tc.refused {
				if resp.StatusCode != http.StatusConflict || len(runs) != 0 {
					t.Fatalf("not refused: %d, %d run(s)", resp.StatusCode, len(runs))
				}
				if !strings.Contains(body, tc.want) || !strings.Contains(body, "La ejecución de B2 no se inició") {
					t.Fatalf("page lacks %q:\n%s", tc.want, body)
				}
				return
			}
			if resp.StatusCode != http.StatusSeeOther || len(runs) != 1 {
				t.Fatalf("not started: %d, %d run(s)\n%s", resp.StatusCode, len(runs), body)
			}
			wantMsg := "msg=started"
			if st.Mail.Host == "" {
				wantMsg = "msg=startednomail"
			}
			if tc.want != "" {
				wantMsg = "msg=" + tc.want
			}
			if !strings.HasSuffix(resp.Header.Get("Location"), wantMsg) {
				t.Fatalf("redirect %q, want %s", resp.Header.Get("Location"), wantMsg)
			}
			if wantMsg == "msg=startednomail" {
				if _, page := e.getLang(c, resp.Header.Get("Location"), "es"); !strings.Contains(page, "El correo está desactivado") {
					t.Fatal("the run page does not say mail is off")
				}
			}
		})
	}
}

// TestScheduleWithMissingOrBrokenImageIsRefused: the schedule is not
// saved, the error stands beside the image select, and what was typed is
// kept; netboot off is only a warning when saving (it may be set up before
// the schedule fires).
func TestScheduleWithMissingOrBrokenImageIsRefused(t *testing.T) {
	e := newEnv(t, Options{})
	c, csrf := e.login()
	ctx := context.Background()
	e.readyForRuns()
	if _, err := e.b.ImportSeats(ctx, strings.NewReader("mac,ip,hostname,room,ssh_user\n52:54:00:00:02:01,10.20.0.11,pc-1,B2,alumno\n"), inventory.Merge); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ image, want string }{
		{"NOPE-img", "There is no image NOPE-img in the repository."},
		{"LAB-C-img", "The image LAB-C-img is broken and cannot be restored"},
	} {
		t.Run(tc.image, func(t *testing.T) {
			form := url.Values{"csrf": {csrf}, "new": {"1"}, "name": {"Room B " + tc.image}, "spec": {"0 3 * * SAB"}, "kind": {"restore"},
				"image": {tc.image}, "window": {"2h"}, "rooms": {"B2"}, "enabled": {"on"}}
			resp, body := e.post(c, "/schedules", form)
			if resp.StatusCode != http.StatusBadRequest {
				t.Fatalf("saved: %d", resp.StatusCode)
			}
			if !strings.Contains(body, `<span class="field-err" id="err-image">`+tc.want) {
				t.Fatalf("no error beside the image:\n%s", body)
			}
			if !strings.Contains(body, `<option value="`+tc.image+`" selected>`) || !strings.Contains(body, `value="Room B `+tc.image+`"`) {
				t.Fatal("the typed values were not kept")
			}
			if list, _ := e.b.Schedules(ctx); len(list) != 0 {
				t.Fatalf("stored: %+v", list)
			}
		})
	}
	// The image is chosen from the restorable ones only.
	_, form := e.get(c, "/schedules/new")
	if !strings.Contains(form, `<select name="image" id="image">`) || !strings.Contains(form, `<option value="LAB-A-img"`) ||
		strings.Contains(form, `<option value="LAB-C-img"`) {
		t.Fatalf("image select:\n%s", form)
	}
	// Netboot off: saved, with a warning.
	st, _ := e.b.Settings(ctx)
	st.Netboot = Netboot{Mode: "off"}
	e.b.SetSettings(ctx, st)
	resp, body := e.post(c, "/schedules", url.Values{"csrf": {csrf}, "new": {"1"}, "name": {"Room B"}, "spec": {"0 3 * * SAB"},
		"kind": {"restore"}, "image": {"LAB-A-img"}, "window": {"2h"}, "rooms": {"B2"}, "enabled": {"on"}})
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, `id="preflight-warnings"`) || !strings.Contains(body, "Lab netboot is off") {
		t.Fatalf("netboot off when saving: %d\n%s", resp.StatusCode, body)
	}
	if list, _ := e.b.Schedules(ctx); len(list) != 1 || list[0].Spec.String() != "0 3 * * SAT" {
		t.Fatalf("stored: %+v", list)
	}
}

func readAll(resp *http.Response) string {
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			return b.String()
		}
	}
}
