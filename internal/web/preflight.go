package web

import (
	"context"
	"strings"

	"github.com/pumi-lab/pumi/internal/inventory"
	"github.com/pumi-lab/pumi/internal/schedule"
)

// check is a preflight finding: Field names the form field it belongs to
// ("" for the whole schedule), Hard refuses the run, a soft one warns.
type check struct {
	Field string
	Hard  bool
	Msg   string
}

// preflight lists what a schedule's run needs and lacks, in the page's
// language: lab netboot on, Clonezilla live imported, the image present and
// restorable, seats in the target that pumi can reach (SSH) or wake (WoL),
// and mail for the report. It reads the same settings, images and
// inventory the run would use; a run with any hard finding would only
// leave its seats waiting, so it is not started.
func (s *Server) preflight(ctx context.Context, tr translator, sc schedule.Schedule) ([]check, error) {
	st, err := s.b.Settings(ctx)
	if err != nil {
		return nil, err
	}
	seats, err := s.b.Seats(ctx)
	if err != nil {
		return nil, err
	}
	var out []check
	hard := func(field, key string, args ...any) { out = append(out, check{field, true, tr.T(key, args...)}) }
	soft := func(field, key string, args ...any) { out = append(out, check{field, false, tr.T(key, args...)}) }

	kind := sc.Action.Kind
	boots := kind == schedule.Restore || kind == schedule.Capture
	if boots {
		if st.Netboot.Mode == "" || st.Netboot.Mode == "off" {
			hard("", "Lab netboot is off: the seats cannot start Clonezilla. Choose proxy or full DHCP on the setup page.")
		}
		if st.Live == "" {
			hard("", "No Clonezilla live is imported yet. Import the official zip on the setup page.")
		}
	}
	if kind == schedule.Restore {
		s.checkImage(ctx, tr, sc.Action.Image, hard)
	}

	target := targetSeats(seats, sc.Target)
	if len(target) == 0 {
		hard("target", "The chosen rooms and seats have no seat in the inventory.")
	}
	var unreachable []string
	for _, seat := range target {
		if !reachable(st, seat, sc.Action.Image, kind) {
			unreachable = append(unreachable, cmpOr(seat.Hostname, seat.MAC))
		}
	}
	// Some seats out of reach is worth knowing, the others are still
	// restored; none in reach is a run that can only wait.
	if n := len(unreachable); n > 0 {
		add := soft
		if n == len(target) {
			add = hard
		}
		add("target", "%d seat(s) can be neither logged in to over SSH nor woken by Wake-on-LAN: %s. Give them an IP address and an SSH user in the inventory (or an SSH login for their room), or set the lab interface for Wake-on-LAN.",
			n, listSome(unreachable, 5))
	}
	if st.Mail.Host == "" || len(st.Mail.To) == 0 {
		soft("", "Mail is off: the run's report will not be sent; read it on the run page.")
	}
	return out, nil
}

// checkImage checks that image exists and is restorable.
func (s *Server) checkImage(ctx context.Context, tr translator, image string, hard func(field, key string, args ...any)) {
	if image == "" {
		hard("image", "Choose the image to restore.")
		return
	}
	res, err := s.b.Images(ctx)
	if err != nil {
		hard("image", "The image repository cannot be read: %s", err.Error())
		return
	}
	for _, im := range res.Images {
		if im.Name != image {
			continue
		}
		if !im.Valid {
			hard("image", "The image %s is broken and cannot be restored: %s", image, strings.Join(im.Problems, "; "))
		}
		return
	}
	hard("image", "There is no image %s in the repository.", image)
}

// reachable: pumi can log in (IP and a user: the image's or room's login,
// or the seat's own user) or wake the seat (lab interface set, for
// actions that start by waking or booting).
func reachable(st Settings, seat inventory.Seat, image string, kind schedule.ActionKind) bool {
	user := seat.SSHUser
	for _, l := range st.SSH {
		if (l.Scope == "image" && l.Name == image && image != "") || (l.Scope == "room" && l.Name == seat.Room) {
			user = cmpOr(user, l.User)
		}
	}
	ssh := seat.IP.IsValid() && user != ""
	wol := st.Netboot.Interface != ""
	switch kind {
	case schedule.Verify, schedule.Shutdown:
		return ssh
	case schedule.Wake:
		return wol
	}
	return ssh || wol
}

func targetSeats(seats []inventory.Seat, t schedule.Target) []inventory.Seat {
	rooms, named := map[string]bool{}, map[string]bool{}
	for _, r := range t.Rooms {
		rooms[r] = true
	}
	for _, s := range t.Seats {
		named[strings.ToLower(s)] = true
	}
	var out []inventory.Seat
	for _, s := range seats {
		if rooms[s.Room] || named[strings.ToLower(s.MAC)] || named[strings.ToLower(s.Hostname)] {
			out = append(out, s)
		}
	}
	return out
}

func listSome(names []string, n int) string {
	if len(names) <= n {
		return strings.Join(names, ", ")
	}
	return strings.Join(names[:n], ", ") + ", …"
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// hardOnes and softOnes split findings into messages.
func hardOnes(cs []check) (out []string) {
	for _, c := range cs {
		if c.Hard {
			out = append(out, c.Msg)
		}
	}
	return out
}

func softOnes(cs []check) (out []string) {
	for _, c := range cs {
		if !c.Hard {
			out = append(out, c.Msg)
		}
	}
	return out
}
