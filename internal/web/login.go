package web

import (
	"crypto/subtle"
	"errors"
	"net/http"
	"strings"

	"golang.org/x/crypto/bcrypt"
)

// preCookie carries the double-submit CSRF token of the two forms shown
// before there is a session (first visit and login), so another site cannot
// log a browser into an attacker's session or race the first visit.
const preCookie = "pumi_pre"

func (s *Server) preToken(w http.ResponseWriter, r *http.Request) string {
	if c, err := r.Cookie(preCookie); err == nil && len(c.Value) >= 32 {
		return c.Value
	}
	tok, err := randomToken()
	if err != nil {
		return ""
	}
	http.SetCookie(w, &http.Cookie{Name: preCookie, Value: tok, Path: "/", HttpOnly: true,
		SameSite: http.SameSiteStrictMode, Secure: s.secure(r), MaxAge: 3600})
	return tok
}

func checkPre(r *http.Request) bool {
	c, err := r.Cookie(preCookie)
	got := r.PostFormValue("csrf")
	return err == nil && c.Value != "" && got != "" && subtle.ConstantTimeCompare([]byte(c.Value), []byte(got)) == 1
}

// safeNext keeps a post-login redirect on this site.
func safeNext(next string) string {
	if !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.Contains(next, "\\") {
		return "/"
	}
	return next
}

func (s *Server) passwordSet(r *http.Request) (bool, error) {
	h, err := s.auth.AdminHash(r.Context())
	return len(h) > 0, err
}

type loginData struct{ Next string }

func (s *Server) getFirstVisit(w http.ResponseWriter, r *http.Request) {
	set, err := s.passwordSet(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if set {
		http.Redirect(w, r, "/login", http.StatusSeeOther)
		return
	}
	s.render(w, r, http.StatusOK, "firstvisit", "", page{Title: "Welcome to pumi", CSRF: s.preToken(w, r)})
}

func (s *Server) postFirstVisit(w http.ResponseWriter, r *http.Request) {
	if !checkPre(r) {
		s.forbid(w, r, "the form was too old; reload the page and try again")
		return
	}
	if !s.limit.allow(clientIP(r)) {
		s.render(w, r, http.StatusTooManyRequests, "firstvisit", "", page{Title: "Welcome to pumi", CSRF: s.preToken(w, r),
			Err: s.T(r, "too many attempts; wait a minute and try again")})
		return
	}
	pw, again := r.PostFormValue("password"), r.PostFormValue("again")
	if err := checkNewPassword(pw, again); err != nil {
		s.render(w, r, http.StatusBadRequest, "firstvisit", "", page{Title: "Welcome to pumi", CSRF: s.preToken(w, r), Err: err.Error()})
		return
	}
	h, err := hashPassword(pw)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if err := s.auth.SetAdminHash(r.Context(), h, true); err != nil {
		if errors.Is(err, ErrAlreadySet) {
			s.forbid(w, r, err.Error())
			return
		}
		s.fail(w, r, err)
		return
	}
	s.log.Info("web: admin password set on first visit", "client", clientIP(r))
	if err := s.startSession(w, r); err != nil {
		s.fail(w, r, err)
		return
	}
	redirect(w, r, "/settings", "welcome")
}

func (s *Server) startSession(w http.ResponseWriter, r *http.Request) error {
	id, err := randomToken()
	if err != nil {
		return err
	}
	csrf, err := randomToken()
	if err != nil {
		return err
	}
	now := s.opts.Now()
	sess := Session{IDHash: hashToken(id), CSRF: csrf, Created: now, Expires: now.Add(s.opts.SessionTTL), IP: clientIP(r)}
	if err := s.auth.PutSession(r.Context(), sess); err != nil {
		return err
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: id, Path: "/", HttpOnly: true,
		SameSite: http.SameSiteStrictMode, Secure: s.secure(r), MaxAge: int(s.opts.SessionTTL.Seconds())})
	return nil
}

func (s *Server) getLogin(w http.ResponseWriter, r *http.Request) {
	set, err := s.passwordSet(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if !set {
		http.Redirect(w, r, "/first-visit", http.StatusSeeOther)
		return
	}
	s.render(w, r, http.StatusOK, "login", "", page{Title: "Log in", CSRF: s.preToken(w, r),
		Data: loginData{Next: safeNext(r.URL.Query().Get("next"))}})
}

func (s *Server) postLogin(w http.ResponseWriter, r *http.Request) {
	next := safeNext(r.PostFormValue("next"))
	again := func(code int, msg string) {
		s.render(w, r, code, "login", "", page{Title: "Log in", CSRF: s.preToken(w, r), Err: msg, Data: loginData{Next: next}})
	}
	if !checkPre(r) {
		again(http.StatusForbidden, "the form was too old; try again")
		return
	}
	if !s.limit.allow(clientIP(r)) {
		s.log.Warn("web: login rate limit", "client", clientIP(r))
		again(http.StatusTooManyRequests, "too many attempts; wait a minute and try again")
		return
	}
	h, err := s.auth.AdminHash(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if len(h) == 0 {
		http.Redirect(w, r, "/first-visit", http.StatusSeeOther)
		return
	}
	if bcrypt.CompareHashAndPassword(h, []byte(r.PostFormValue("password"))) != nil {
		s.log.Warn("web: wrong password", "client", clientIP(r))
		again(http.StatusUnauthorized, "wrong password")
		return
	}
	if err := s.startSession(w, r); err != nil {
		s.fail(w, r, err)
		return
	}
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (s *Server) postLogout(w http.ResponseWriter, r *http.Request) {
	if sess := whoFrom(r.Context()).session; sess != nil {
		if err := s.auth.DeleteSession(r.Context(), sess.IDHash); err != nil {
			s.fail(w, r, err)
			return
		}
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: "/", HttpOnly: true,
		SameSite: http.SameSiteStrictMode, Secure: s.secure(r), MaxAge: -1})
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}

// postPassword changes the admin password and ends every other session.
func (s *Server) postPassword(w http.ResponseWriter, r *http.Request) {
	h, err := s.auth.AdminHash(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	bad := func(msg string) { s.settingsPage(w, r, http.StatusBadRequest, msg) }
	if !s.limit.allow(clientIP(r)) {
		bad("too many attempts; wait a minute and try again")
		return
	}
	if bcrypt.CompareHashAndPassword(h, []byte(r.PostFormValue("current"))) != nil {
		bad("the current password is wrong")
		return
	}
	if err := checkNewPassword(r.PostFormValue("password"), r.PostFormValue("again")); err != nil {
		bad(err.Error())
		return
	}
	nh, err := hashPassword(r.PostFormValue("password"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if err := s.auth.SetAdminHash(r.Context(), nh, false); err != nil {
		s.fail(w, r, err)
		return
	}
	if err := s.auth.DeleteSessions(r.Context()); err != nil {
		s.fail(w, r, err)
		return
	}
	if err := s.startSession(w, r); err != nil {
		s.fail(w, r, err)
		return
	}
	redirect(w, r, "/settings", "password")
}
