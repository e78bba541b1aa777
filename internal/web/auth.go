package web

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/pumi-lab/pumi/internal/store"
)

// AuthStore keeps the web page's own state: the admin password hash,
// sessions and API tokens. Sessions and tokens are looked up by the SHA-256
// of their secret, so a copy of the state file does not let anyone log in.
type AuthStore interface {
	// AdminHash returns the bcrypt hash, or nil before the first visit.
	AdminHash(ctx context.Context) ([]byte, error)
	// SetAdminHash stores hash; with firstOnly it fails with ErrAlreadySet
	// when a password exists (two browsers racing through the first visit).
	SetAdminHash(ctx context.Context, hash []byte, firstOnly bool) error

	PutSession(ctx context.Context, s Session) error
	Session(ctx context.Context, idHash string) (Session, bool, error)
	DeleteSession(ctx context.Context, idHash string) error
	// DeleteSessions ends every session (after a password change).
	DeleteSessions(ctx context.Context) error

	PutToken(ctx context.Context, t APIToken) error
	TokenByHash(ctx context.Context, hash string) (APIToken, bool, error)
	Tokens(ctx context.Context) ([]APIToken, error)
	DeleteToken(ctx context.Context, id string) error
}

// ErrAlreadySet refuses a second "first visit".
var ErrAlreadySet = errors.New("the admin password is already set; log in instead")

// Session is a logged-in browser.
type Session struct {
	IDHash  string    `json:"id_hash"`
	CSRF    string    `json:"csrf"` // synchronizer token for this session's forms
	Created time.Time `json:"created"`
	Expires time.Time `json:"expires"`
	IP      string    `json:"ip"`
}

// APIToken lets a script use the API without a browser session.
type APIToken struct {
	ID       string    `json:"id"`
	Name     string    `json:"name"`
	Hash     string    `json:"hash"`
	Created  time.Time `json:"created"`
	LastUsed time.Time `json:"last_used,omitzero"`
}

// MinPasswordLen is the shortest admin password accepted: the page is on a
// lab network that students share.
const MinPasswordLen = 10

// randomToken returns 32 random bytes, URL-safe.
func randomToken() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("reading random bytes: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

func hashToken(tok string) string {
	sum := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(sum[:])
}

// checkNewPassword says in plain words why a password is refused.
func checkNewPassword(pw, again string) error {
	switch {
	case len(pw) < MinPasswordLen:
		return fmt.Errorf("the password needs at least %d characters", MinPasswordLen)
	case len(pw) > 72:
		// bcrypt ignores everything after 72 bytes; refusing is clearer
		// than silently accepting a password that is partly ignored.
		return errors.New("the password may have at most 72 characters")
	case pw != again:
		return errors.New("the two passwords differ; type the same password twice")
	}
	return nil
}

// storeAuth implements AuthStore on the appliance's bbolt state file.
type storeAuth struct {
	st *store.Store
}

var (
	adminBucket    = store.NewBucket[[]byte]("web-admin")     // "password" -> bcrypt hash
	sessionsBucket = store.NewBucket[Session]("web-sessions") // id hash -> Session
	tokensBucket   = store.NewBucket[APIToken]("web-tokens")  // token hash -> APIToken
)

// NewStoreAuth keeps auth state in st, in buckets named web-*.
func NewStoreAuth(st *store.Store) AuthStore { return storeAuth{st: st} }

func (a storeAuth) AdminHash(ctx context.Context) ([]byte, error) {
	var h []byte
	err := a.st.View(ctx, func(tx *store.Tx) error {
		v, _, err := adminBucket.Get(tx, "password")
		h = v
		return err
	})
	return h, err
}

func (a storeAuth) SetAdminHash(ctx context.Context, hash []byte, firstOnly bool) error {
	return a.st.Update(ctx, func(tx *store.Tx) error {
		if firstOnly {
			if ok, err := adminBucket.Has(tx, "password"); err != nil || ok {
				if err == nil {
					err = ErrAlreadySet
				}
				return err
			}
		}
		return adminBucket.Put(tx, "password", hash)
	})
}

func (a storeAuth) PutSession(ctx context.Context, s Session) error {
	return a.st.Update(ctx, func(tx *store.Tx) error { return sessionsBucket.Put(tx, s.IDHash, s) })
}

func (a storeAuth) Session(ctx context.Context, idHash string) (s Session, ok bool, err error) {
	err = a.st.View(ctx, func(tx *store.Tx) error {
		s, ok, err = sessionsBucket.Get(tx, idHash)
		return err
	})
	return s, ok, err
}

func (a storeAuth) DeleteSession(ctx context.Context, idHash string) error {
	return a.st.Update(ctx, func(tx *store.Tx) error { return sessionsBucket.Delete(tx, idHash) })
}

func (a storeAuth) DeleteSessions(ctx context.Context) error {
	return a.st.Update(ctx, func(tx *store.Tx) error { return sessionsBucket.Clear(tx) })
}

func (a storeAuth) PutToken(ctx context.Context, t APIToken) error {
	return a.st.Update(ctx, func(tx *store.Tx) error { return tokensBucket.Put(tx, t.Hash, t) })
}

func (a storeAuth) TokenByHash(ctx context.Context, hash string) (t APIToken, ok bool, err error) {
	err = a.st.View(ctx, func(tx *store.Tx) error {
		t, ok, err = tokensBucket.Get(tx, hash)
		return err
	})
	return t, ok, err
}

func (a storeAuth) Tokens(ctx context.Context) ([]APIToken, error) {
	var out []APIToken
	err := a.st.View(ctx, func(tx *store.Tx) error {
		var err error
		out, err = tokensBucket.List(tx)
		return err
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out, err
}

func (a storeAuth) DeleteToken(ctx context.Context, id string) error {
	return a.st.Update(ctx, func(tx *store.Tx) error {
		var key string
		err := tokensBucket.ForEach(tx, func(k string, t APIToken) error {
			if t.ID == id {
				key = k
			}
			return nil
		})
		if err != nil || key == "" {
			return err
		}
		return tokensBucket.Delete(tx, key)
	})
}

// hashPassword uses bcrypt at its default cost: about 50 ms here, slow for
// a guesser, fine for one admin logging in.
func hashPassword(pw string) ([]byte, error) {
	h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.DefaultCost)
	if err != nil {
		return nil, fmt.Errorf("hashing the password: %w", err)
	}
	return h, nil
}

// limiter is a token bucket per client IP plus one for everyone, so neither
// one guesser nor many (a botnet in the lab) can try passwords quickly.
type limiter struct {
	mu     sync.Mutex
	now    func() time.Time
	perIP  map[string]*bucket
	global bucket
	// burst and refill for one IP; the global bucket has 10 times both.
	burst  float64
	refill time.Duration
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newLimiter(now func() time.Time, burst int, refill time.Duration) *limiter {
	return &limiter{now: now, perIP: map[string]*bucket{}, burst: float64(burst), refill: refill,
		global: bucket{tokens: 10 * float64(burst), last: now()}}
}

func (b *bucket) take(now time.Time, burst float64, refill time.Duration) bool {
	if b.last.IsZero() {
		b.tokens, b.last = burst, now
	}
	b.tokens += float64(now.Sub(b.last)) / float64(refill)
	if b.tokens > burst {
		b.tokens = burst
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// allow takes one attempt for ip; false means "wait".
func (l *limiter) allow(ip string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if len(l.perIP) > 10000 {
		// Forget full buckets so a spray of addresses cannot grow the map
		// without bound.
		for k, b := range l.perIP {
			if float64(now.Sub(b.last))/float64(l.refill) >= l.burst {
				delete(l.perIP, k)
			}
		}
	}
	b := l.perIP[ip]
	if b == nil {
		b = &bucket{}
		l.perIP[ip] = b
	}
	if !b.take(now, l.burst, l.refill) {
		return false
	}
	return l.global.take(now, 10*l.burst, l.refill/10)
}

// CheckAPIToken reports whether tok is one of the API tokens created on the
// web page, so the appliance's own /api/v1 accepts them too (on gokrazy the
// admin cannot read the token file in the state directory).
func CheckAPIToken(ctx context.Context, auth AuthStore, tok string) (bool, error) {
	if tok == "" {
		return false, nil
	}
	_, ok, err := auth.TokenByHash(ctx, hashToken(tok))
	return ok, err
}
