package inventory

import (
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"sort"
	"strings"
	"unicode/utf8"

	"github.com/pumi-lab/pumi/internal/store"
)

// CSV format
//
// The seed's file is "MAC, IP, user", one seat per line. Accepted:
//   - separator ',' or ';' (chosen from the first data line, whichever
//     occurs more often outside quotes; spreadsheets in Spanish locales
//     write ';');
//   - without a header row: columns mac, ip, user, then optionally
//     hostname, room, credential, in that order (3 to 6 columns);
//   - with a header row (recognised because its first cell is a column name,
//     not a MAC): any order and any subset that includes mac; names are
//     case-insensitive and have Spanish aliases (usuario, aula, ...);
//   - any MAC spelling (52:54:00:AB:CD:EF, 52-54-00-ab-cd-ef, 5254.00ab.cdef,
//     525400abcdef); an empty ip cell means "address from another DHCP server";
//   - blank lines, rows of empty cells, lines starting with '#', a UTF-8
//     byte order mark, CRLF.
//
// Every problem in every row is collected as "line N, column C (name):
// reason"; if there is any, nothing is imported.

// allColumns are the column names, in the order used without a header and
// by Export (a fresh slice each time, so callers may keep it).
func allColumns() []string {
	return []string{"mac", "ip", "user", "hostname", "room", "credential"}
}

// columnName maps a header cell (any case, English or Spanish) to a column.
func columnName(cell string) (string, bool) {
	switch strings.ToLower(strings.TrimSpace(cell)) {
	case "mac", "mac address", "macaddress", "mac_address", "direccion mac", "dirección mac":
		return "mac", true
	case "ip", "ip address", "ipaddress", "ip_address", "address", "direccion ip", "dirección ip":
		return "ip", true
	case "user", "ssh_user", "ssh user", "username", "usuario":
		return "user", true
	case "hostname", "host", "name", "nombre":
		return "hostname", true
	case "room", "aula", "sala":
		return "room", true
	case "credential", "credencial":
		return "credential", true
	}
	return "", false
}

// maxCSV bounds the input: a lab has hundreds of seats, not millions.
const maxCSV = 8 << 20

// RowError is one problem in an imported file. Column is the 1-based
// column number (0 when the problem is the whole line).
type RowError struct {
	Line   int
	Column int
	Field  string
	Reason string
}

func (e RowError) Error() string {
	switch {
	case e.Line == 0:
		return e.Reason
	case e.Column == 0:
		return fmt.Sprintf("line %d: %s", e.Line, e.Reason)
	case e.Field == "":
		return fmt.Sprintf("line %d, column %d: %s", e.Line, e.Column, e.Reason)
	}
	return fmt.Sprintf("line %d, column %d (%s): %s", e.Line, e.Column, e.Field, e.Reason)
}

// ImportError lists every problem found; nothing was imported.
type ImportError struct {
	Rows []RowError
}

func (e *ImportError) Error() string {
	const show = 50
	var b strings.Builder
	fmt.Fprintf(&b, "inventory CSV has %d problem(s), nothing was imported:", len(e.Rows))
	for i, r := range e.Rows {
		if i == show {
			fmt.Fprintf(&b, "\n... and %d more", len(e.Rows)-show)
			break
		}
		b.WriteString("\n" + r.Error())
	}
	return b.String()
}

func (e *ImportError) Unwrap() error { return ErrInvalid }

// ParsedCSV is a checked file: seats in file order with their line numbers,
// and the columns the file has (a merge only overwrites those).
type ParsedCSV struct {
	Columns []string
	Seats   []Seat
	Lines   []int
}

func (p *ParsedCSV) has(col string) bool {
	for _, c := range p.Columns {
		if c == col {
			return true
		}
	}
	return false
}

func (p *ParsedCSV) column(col string) int {
	for i, c := range p.Columns {
		if c == col {
			return i + 1
		}
	}
	return 0
}

// ParseCSV reads and checks a seat list. Problems in rows are returned
// together as an *ImportError.
func ParseCSV(r io.Reader) (*ParsedCSV, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxCSV+1))
	if err != nil {
		return nil, fmt.Errorf("read inventory CSV: %w", err)
	}
	if len(data) > maxCSV {
		return nil, fmt.Errorf("inventory CSV is larger than %d MiB: split it: %w", maxCSV>>20, ErrInvalid)
	}
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))

	var (
		errs   []RowError
		p      = &ParsedCSV{}
		sep    rune
		cols   []string // column name per position; "" for an unknown one
		header bool
		macAt  = map[string]int{}
		ipAt   = map[netip.Addr]int{}
	)
	for i, raw := range strings.Split(string(data), "\n") {
		line := i + 1
		text := strings.TrimSuffix(raw, "\r")
		if t := strings.TrimSpace(text); t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		if !utf8.ValidString(text) {
			errs = append(errs, RowError{Line: line, Reason: "not UTF-8 text: save the file as \"CSV UTF-8\""})
			continue
		}
		if sep == 0 {
			sep = chooseSeparator(text)
		}
		fields, err := splitLine(text, sep)
		if err != nil {
			errs = append(errs, RowError{Line: line, Reason: err.Error()})
			continue
		}
		if strings.Join(fields, "") == "" {
			continue // ";;;;": an empty spreadsheet row
		}
		if cols == nil {
			if h, herrs, ok := parseHeader(fields, line); ok {
				// Unknown columns stay "" so that column numbers match the file.
				cols, header, p.Columns = h, true, h
				errs = append(errs, herrs...)
				continue
			}
			cols = allColumns() // positional
		}
		seat, rerrs := parseRow(fields, cols, line, sep, header)
		if len(rerrs) > 0 {
			errs = append(errs, rerrs...)
			continue
		}
		col := func(name string) int {
			for i, c := range cols {
				if c == name {
					return i + 1
				}
			}
			return 0
		}
		if prev, dup := macAt[seat.MAC]; dup {
			errs = append(errs, RowError{line, col("mac"), "mac", fmt.Sprintf("MAC %s is already on line %d", seat.MAC, prev)})
			continue
		}
		macAt[seat.MAC] = line
		if seat.IP.IsValid() {
			if prev, dup := ipAt[seat.IP]; dup {
				errs = append(errs, RowError{line, col("ip"), "ip", fmt.Sprintf("IP %s is already on line %d", seat.IP, prev)})
				continue
			}
			ipAt[seat.IP] = line
		}
		p.Seats = append(p.Seats, seat)
		p.Lines = append(p.Lines, line)
	}
	if !header {
		// Without a header the file has the positional columns its widest
		// row uses (at least mac, ip, user).
		width := 3
		for _, s := range p.Seats {
			for i, v := range []string{s.Hostname, s.Room, s.Credential} {
				if v != "" {
					width = max(width, 4+i)
				}
			}
		}
		p.Columns = allColumns()[:width]
	}
	if len(errs) == 0 && len(p.Seats) == 0 {
		errs = append(errs, RowError{Reason: "the file has no seat rows (an empty import would empty the inventory)"})
	}
	if len(errs) > 0 {
		return nil, &ImportError{Rows: errs}
	}
	return p, nil
}

// chooseSeparator picks ';' when it outnumbers ',' outside quotes.
func chooseSeparator(line string) rune {
	var commas, semis int
	quoted := false
	for _, r := range line {
		switch {
		case r == '"':
			quoted = !quoted
		case quoted:
		case r == ',':
			commas++
		case r == ';':
			semis++
		}
	}
	if semis > commas {
		return ';'
	}
	return ','
}

// splitLine parses one physical line as a CSV record. Lines are parsed one
// by one so that a quoting mistake is reported for its line and the rest of
// the file is still checked.
func splitLine(text string, sep rune) ([]string, error) {
	cr := csv.NewReader(strings.NewReader(text))
	cr.Comma = sep
	cr.FieldsPerRecord = -1
	cr.TrimLeadingSpace = true
	rec, err := cr.Read()
	if err != nil {
		var pe *csv.ParseError
		if errors.As(err, &pe) {
			return nil, fmt.Errorf("column %d: bad quoting: %v", pe.Column, pe.Err)
		}
		return nil, fmt.Errorf("bad quoting: %v", err)
	}
	if _, err := cr.Read(); err != io.EOF {
		return nil, errors.New("a quoted value runs past the end of the line")
	}
	for i := range rec {
		rec[i] = strings.TrimSpace(rec[i])
	}
	return rec, nil
}

// parseHeader recognises a header row: its first cell is not a MAC but a
// column name.
func parseHeader(fields []string, line int) ([]string, []RowError, bool) {
	if _, ok := columnName(fields[0]); !ok {
		return nil, nil, false
	}
	// Spreadsheets often end the header with a separator.
	for len(fields) > 1 && fields[len(fields)-1] == "" {
		fields = fields[:len(fields)-1]
	}
	var errs []RowError
	cols := make([]string, len(fields))
	seen := map[string]int{}
	for i, f := range fields {
		name, ok := columnName(f)
		switch {
		case !ok:
			errs = append(errs, RowError{line, i + 1, "", fmt.Sprintf("unknown column %q: want %s", f, strings.Join(allColumns(), ", "))})
		case seen[name] > 0:
			errs = append(errs, RowError{line, i + 1, name, fmt.Sprintf("column %s also appears as column %d", name, seen[name])})
		default:
			cols[i] = name
			seen[name] = i + 1
		}
	}
	if seen["mac"] == 0 {
		errs = append(errs, RowError{Line: line, Reason: "the header has no mac column"})
	}
	return cols, errs, true
}

func parseRow(fields, cols []string, line int, sep rune, header bool) (Seat, []RowError) {
	// Spreadsheets pad rows with empty trailing cells; those are harmless.
	for len(fields) > len(cols) && fields[len(fields)-1] == "" {
		fields = fields[:len(fields)-1]
	}
	switch {
	case header && len(fields) != len(cols):
		return Seat{}, []RowError{{Line: line, Reason: fmt.Sprintf("%d columns but the header has %d (separator %q)", len(fields), len(cols), sep)}}
	case !header && (len(fields) < 3 || len(fields) > len(cols)):
		return Seat{}, []RowError{{Line: line, Reason: fmt.Sprintf("%d column(s), want 3 to 6: %s (separator %q)", len(fields), strings.Join(cols, ", "), sep)}}
	}
	var s Seat
	var errs []RowError
	at := map[string]int{}
	for i, f := range fields {
		name := cols[i]
		at[name] = i + 1
		switch name {
		case "mac":
			s.MAC = f
		case "ip":
			if f == "" {
				continue
			}
			ip, err := netip.ParseAddr(f)
			if err != nil {
				errs = append(errs, RowError{line, i + 1, name, fmt.Sprintf("%q is not an IPv4 address", f)})
				continue
			}
			s.IP = ip
		case "user":
			s.SSHUser = f
		case "hostname":
			s.Hostname = f
		case "room":
			s.Room = f
		case "credential":
			s.Credential = f
		}
	}
	s, ferrs := normalize(s)
	for _, fe := range ferrs {
		if fe.field == "mac" && at["mac"] == 0 {
			continue // the header's missing mac column is already reported
		}
		errs = append(errs, RowError{line, at[fe.field], fe.field, fe.reason})
	}
	return s, errs
}

// ImportMode says what happens to seats the file does not mention.
type ImportMode int

const (
	// Merge adds the file's seats and updates those whose MAC exists,
	// overwriting only the columns the file has (a three-column file keeps
	// the seats' rooms and hostnames); seats not in the file stay.
	Merge ImportMode = iota
	// Replace makes the inventory's seats exactly the file's; seats not in
	// the file are deleted. Rooms are kept (empty ones can be deleted).
	Replace
)

func (m ImportMode) String() string {
	if m == Replace {
		return "replace"
	}
	return "merge"
}

// ImportResult counts what an import changed.
type ImportResult struct {
	Added, Updated, Unchanged, Removed int
	RoomsCreated                       []string
}

// Import parses r and applies it in one transaction: either every row is
// imported or, when any row is wrong or clashes with a seat the file does
// not change, nothing is (the error is an *ImportError listing them all).
func (inv *Inventory) Import(ctx context.Context, r io.Reader, mode ImportMode) (ImportResult, error) {
	p, err := ParseCSV(r)
	if err != nil {
		return ImportResult{}, err
	}
	var res ImportResult
	err = inv.update(ctx, func(tx *store.Tx) error {
		res = ImportResult{}
		existing := map[string]Seat{}
		if err := seatsBucket.ForEach(tx, func(k string, s Seat) error { existing[k] = s; return nil }); err != nil {
			return err
		}
		final := map[string]Seat{}
		if mode == Merge {
			for k, s := range existing {
				final[k] = s
			}
		}
		fromFile := map[string]int{} // MAC -> index in p.Seats
		for i, s := range p.Seats {
			if old, ok := existing[s.MAC]; ok && mode == Merge {
				s = mergeSeat(old, s, p)
			}
			final[s.MAC] = s
			fromFile[s.MAC] = i
		}
		if errs := ipClashes(final, fromFile, p); len(errs) > 0 {
			return &ImportError{Rows: errs}
		}

		for mac, old := range existing {
			s, ok := final[mac]
			switch {
			case !ok:
				res.Removed++
			case s == old:
				res.Unchanged++
			default:
				res.Updated++
			}
		}
		res.Added = len(final) - res.Updated - res.Unchanged
		// Rewriting both buckets from the final set keeps the IP index right
		// even when the file swaps addresses between seats.
		if err := seatsBucket.Clear(tx); err != nil {
			return err
		}
		if err := ipIndex.Clear(tx); err != nil {
			return err
		}
		for _, s := range final {
			if s.Room != "" {
				if ok, err := roomsBucket.Has(tx, s.Room); err != nil {
					return err
				} else if !ok {
					res.RoomsCreated = append(res.RoomsCreated, s.Room)
				}
			}
			if err := putSeat(tx, s, nil); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return ImportResult{}, err
	}
	sort.Strings(res.RoomsCreated)
	return res, nil
}

// mergeSeat overwrites old's fields with the columns present in the file.
func mergeSeat(old, row Seat, p *ParsedCSV) Seat {
	s := old
	if p.has("ip") {
		s.IP = row.IP
	}
	if p.has("user") {
		s.SSHUser = row.SSHUser
	}
	if p.has("hostname") {
		s.Hostname = row.Hostname
	}
	if p.has("room") {
		s.Room = row.Room
	}
	if p.has("credential") {
		s.Credential = row.Credential
	}
	return s
}

// ipClashes finds IPs used by two seats of the final inventory and blames
// the file's rows (clashes inside the file were caught while parsing).
func ipClashes(final map[string]Seat, fromFile map[string]int, p *ParsedCSV) []RowError {
	owners := map[netip.Addr][]string{}
	for mac, s := range final {
		if s.IP.IsValid() {
			owners[s.IP] = append(owners[s.IP], mac)
		}
	}
	var errs []RowError
	for i, s := range p.Seats {
		fs := final[s.MAC]
		if !fs.IP.IsValid() || len(owners[fs.IP]) < 2 {
			continue
		}
		for _, other := range owners[fs.IP] {
			if other == s.MAC {
				continue
			}
			if _, inFile := fromFile[other]; inFile {
				continue // reported on the other row or while parsing
			}
			o := final[other]
			errs = append(errs, RowError{p.Lines[i], p.column("ip"), "ip", fmt.Sprintf(
				"IP %s already belongs to seat %s (%s), which this file does not change: give one of them another IP, or import in replace mode",
				fs.IP, other, orNone(o.Hostname))})
		}
	}
	return errs
}

func orNone(s string) string {
	if s == "" {
		return "no hostname"
	}
	return s
}

// Export writes every seat in the import format, with a header.
func (inv *Inventory) Export(ctx context.Context, w io.Writer) error {
	seats, err := inv.Seats(ctx)
	if err != nil {
		return err
	}
	return WriteCSV(w, seats)
}

// WriteCSV writes seats with the full header (mac, ip, user, hostname,
// room, credential), which ParseCSV reads back unchanged.
func WriteCSV(w io.Writer, seats []Seat) error {
	cw := csv.NewWriter(w)
	if err := cw.Write(allColumns()); err != nil {
		return err
	}
	for _, s := range seats {
		ip := ""
		if s.IP.IsValid() {
			ip = s.IP.String()
		}
		if err := cw.Write([]string{s.MAC, ip, s.SSHUser, s.Hostname, s.Room, s.Credential}); err != nil {
			return err
		}
	}
	cw.Flush()
	if err := cw.Error(); err != nil {
		return fmt.Errorf("write inventory CSV: %w", err)
	}
	return nil
}
