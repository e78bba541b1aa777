package appliance

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strings"

	"github.com/pumi-lab/pumi/internal/clonezilla"
	"github.com/pumi-lab/pumi/internal/history"
	"github.com/pumi-lab/pumi/internal/inventory"
	"github.com/pumi-lab/pumi/internal/macaddr"
	"github.com/pumi-lab/pumi/internal/schedule"
	"github.com/pumi-lab/pumi/internal/seatjob"
	"github.com/pumi-lab/pumi/internal/settings"
	"github.com/pumi-lab/pumi/internal/web"
)

// maxBody bounds JSON and CSV request bodies.
const maxBody = 4 << 20

// apiRoutes registers the JSON API. Every route needs the admin API token
// (Authorization: Bearer <token>: the token in <state>/api-token or one created
// on the web page), except
// the Clonezilla report, which has its own per-seat token.
func (a *App) apiRoutes(mux *http.ServeMux) {
	h := func(pattern string, fn func(http.ResponseWriter, *http.Request) error) {
		mux.Handle(pattern, a.requireAdmin(func(w http.ResponseWriter, r *http.Request) {
			if err := fn(w, r); err != nil {
				a.apiError(w, r, err)
			}
		}))
	}
	h("GET /api/v1/status", a.apiStatus)
	h("GET /api/v1/config", a.apiGetConfig)
	h("PUT /api/v1/config", a.apiPutConfig)
	h("GET /api/v1/seats", a.apiSeats)
	h("GET /api/v1/seats.csv", a.apiSeatsCSV)
	h("POST /api/v1/seats/import", a.apiImportSeats)
	h("GET /api/v1/images", a.apiImages)
	h("POST /api/v1/live/import", a.apiImportLive)
	h("GET /api/v1/jobs", a.apiJobs)
	h("POST /api/v1/jobs", a.apiStartJobs)
	h("DELETE /api/v1/jobs/{mac}", a.apiCancelJob)
	h("GET /api/v1/seen", a.apiSeen)
	h("GET /api/v1/multicast", func(w http.ResponseWriter, r *http.Request) error {
		writeJSON(w, http.StatusOK, a.rooms.Sessions())
		return nil
	})
	h("GET /api/v1/events", a.apiEvents)
	h("PUT /api/v1/secrets/mail", a.apiPutMailSecret)
	h("PUT /api/v1/secrets/ssh/{scope}/{name}", a.apiPutSSHSecret)
}

func (a *App) requireAdmin(next http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if ok && subtle.ConstantTimeCompare([]byte(got), []byte(a.apiToken)) != 1 {
			// Tokens created on the web page (Settings → API tokens) work
			// too; the token file is for the first contact and scripts on
			// the same machine.
			ok, _ = web.CheckAPIToken(r.Context(), a.webAuth, got)
		}
		if !ok {
			w.Header().Set("WWW-Authenticate", `Bearer realm="pumi"`)
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "missing or wrong API token (see <state dir>/api-token)"})
			return
		}
		next(w, r)
	})
}

// httpError carries a status code through a handler's error return.
type httpError struct {
	code int
	err  error
	body any
}

func (e *httpError) Error() string { return e.err.Error() }
func (e *httpError) Unwrap() error { return e.err }

func badRequest(format string, args ...any) error {
	return &httpError{code: http.StatusBadRequest, err: fmt.Errorf(format, args...)}
}

func (a *App) apiError(w http.ResponseWriter, r *http.Request, err error) {
	code := http.StatusInternalServerError
	var he *httpError
	var body any = map[string]string{"error": err.Error()}
	switch {
	case errors.As(err, &he):
		code = he.code
		if he.body != nil {
			body = he.body
		}
	case errors.Is(err, settings.ErrInvalid), errors.Is(err, schedule.ErrInvalid), errors.Is(err, seatjob.ErrInvalid), errors.Is(err, inventory.ErrInvalid), errors.Is(err, clonezilla.ErrUnsafe),
		errors.Is(err, clonezilla.ErrBadLiveZip):
		code = http.StatusBadRequest
	case errors.Is(err, inventory.ErrNotFound), errors.Is(err, schedule.ErrNotFound):
		code = http.StatusNotFound
	case errors.Is(err, inventory.ErrDuplicate):
		code = http.StatusConflict
	}
	if code >= 500 {
		a.log.Error("api", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	writeJSON(w, code, body)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func decodeJSON(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return badRequest("request body: %v", err)
	}
	return nil
}

func (a *App) apiStatus(w http.ResponseWriter, r *http.Request) error {
	writeJSON(w, http.StatusOK, a.Status())
	return nil
}

func (a *App) apiGetConfig(w http.ResponseWriter, r *http.Request) error {
	cfg, err := a.Config(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, cfg)
	return nil
}

func (a *App) apiPutConfig(w http.ResponseWriter, r *http.Request) error {
	var cfg settings.Config
	if err := decodeJSON(r, &cfg); err != nil {
		return err
	}
	if err := a.SetConfig(r.Context(), cfg); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, cfg)
	return nil
}

// secretBody is the body of the write-only secret routes. An empty password
// clears the secret. Nothing ever reads a secret back: the answer is 204.
type secretBody struct {
	Password string `json:"password"`
}

// maxSecret bounds a password: SMTP app passwords and SSH passwords are short.
const maxSecret = 1024

func (a *App) putSecret(w http.ResponseWriter, r *http.Request, name string) error {
	var b secretBody
	if err := decodeJSON(r, &b); err != nil {
		return err
	}
	if len(b.Password) > maxSecret || strings.ContainsAny(b.Password, "\x00\r\n") {
		return badRequest("the password must be at most %d characters on one line", maxSecret)
	}
	if err := settings.SetSecret(r.Context(), a.st, name, b.Password); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (a *App) apiPutMailSecret(w http.ResponseWriter, r *http.Request) error {
	return a.putSecret(w, r, settings.SecretMail)
}

// apiPutSSHSecret sets the password of an SSH login the config names, so a
// typo in the room or image name is an error instead of a dead secret.
func (a *App) apiPutSSHSecret(w http.ResponseWriter, r *http.Request) error {
	scope, name := r.PathValue("scope"), r.PathValue("name")
	cfg, err := a.Config(r.Context())
	if err != nil {
		return err
	}
	if !slices.ContainsFunc(cfg.SSH, func(l settings.SSHLogin) bool { return l.Scope == scope && l.Name == name }) {
		return badRequest("no SSH login for %s %q in the config: add it to \"ssh\" first (scope \"room\" or \"image\")", scope, name)
	}
	return a.putSecret(w, r, settings.SSHSecretName(scope, name))
}

func (a *App) apiSeats(w http.ResponseWriter, r *http.Request) error {
	seats, err := a.inv.Seats(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, seats)
	return nil
}

func (a *App) apiSeatsCSV(w http.ResponseWriter, r *http.Request) error {
	w.Header().Set("Content-Type", "text/csv; charset=utf-8")
	w.Header().Set("Content-Disposition", `attachment; filename="pumi-seats.csv"`)
	return a.inv.Export(r.Context(), w)
}

func (a *App) apiImportSeats(w http.ResponseWriter, r *http.Request) error {
	mode := inventory.Merge
	switch r.URL.Query().Get("mode") {
	case "", "merge":
	case "replace":
		mode = inventory.Replace
	default:
		return badRequest("mode must be merge or replace")
	}
	res, err := a.inv.Import(r.Context(), io.LimitReader(r.Body, maxBody), mode)
	var ie *inventory.ImportError
	if errors.As(err, &ie) {
		return &httpError{code: http.StatusUnprocessableEntity, err: err,
			body: map[string]any{"error": "nothing was imported: fix these rows", "rows": ie.Rows}}
	}
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, res)
	return nil
}

func (a *App) apiImages(w http.ResponseWriter, r *http.Request) error {
	cfg, err := a.Config(r.Context())
	if err != nil {
		return err
	}
	if cfg.Repository == "" {
		return badRequest("no image repository configured")
	}
	res, err := clonezilla.Scan(r.Context(), cfg.Repository, clonezilla.ScanOptions{})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, res)
	return nil
}

func (a *App) apiImportLive(w http.ResponseWriter, r *http.Request) error {
	var req struct {
		Zip string `json:"zip"` // path relative to the repository root
	}
	if err := decodeJSON(r, &req); err != nil {
		return err
	}
	lf, err := a.ImportLive(r.Context(), req.Zip)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, lf)
	return nil
}

// apiJobs lists seats' jobs (seatjob.Jobs.List: tokens removed).
func (a *App) apiJobs(w http.ResponseWriter, r *http.Request) error {
	out, err := a.jobs.List(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (a *App) apiStartJobs(w http.ResponseWriter, r *http.Request) error {
	var req JobRequest
	if err := decodeJSON(r, &req); err != nil {
		return err
	}
	got, err := a.StartJobs(r.Context(), req)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, got)
	return nil
}

func (a *App) apiCancelJob(w http.ResponseWriter, r *http.Request) error {
	m, err := macaddr.Parse(r.PathValue("mac"))
	if err != nil {
		return badRequest("%v", err)
	}
	if _, err := a.jobs.Cancel(r.Context(), m.String(), "", "cancelled by the admin"); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (a *App) apiSeen(w http.ResponseWriter, r *http.Request) error {
	out, err := a.seen.List(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// apiEvents returns the newest 1000 events, oldest first.
func (a *App) apiEvents(w http.ResponseWriter, r *http.Request) error {
	out, err := history.List(r.Context(), a.st, 1000)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// relRepo checks a path given relative to the repository root.
func relRepo(root, rel string) (string, error) {
	if root == "" {
		return "", badRequest("no image repository configured")
	}
	clean := filepath.Clean("/" + rel)
	if rel == "" || clean == "/" || strings.Contains(rel, "..") {
		return "", badRequest("path %q must name a file inside the repository", rel)
	}
	return filepath.Join(root, clean), nil
}
