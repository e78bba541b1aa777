package inventory

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestParseCSVGood(t *testing.T) {
	cases := []struct {
		name, in string
		want     []Seat
		cols     string
	}{
		{
			name: "seed format, no header",
			in:   "52:54:00:00:00:01, 10.0.0.1, tareas\n52:54:00:00:00:02,10.0.0.2,tareas\n",
			want: []Seat{
				{MAC: "52:54:00:00:00:01", IP: ip("10.0.0.1"), SSHUser: "tareas"},
				{MAC: "52:54:00:00:00:02", IP: ip("10.0.0.2"), SSHUser: "tareas"},
			},
			cols: "mac,ip,user",
		},
		{
			name: "spreadsheet export: BOM, CRLF, semicolons, Spanish header, comments, any MAC spelling",
			in: "\xef\xbb\xbfMAC;IP;Usuario;Nombre;Aula\r\n" +
				"# aula 1\r\n" +
				"\r\n" +
				"52-54-00-AB-CD-01;10.0.1.11;tareas;PC-01;Aula 1\r\n" +
				"   # indented comment\r\n" +
				"5254.00ab.cd02;10.0.1.12;tareas;pc-02;Aula 1;\r\n" +
				"525400ABCD03;;alumno;;\r\n" +
				";;;;\r\n",
			want: []Seat{
				{MAC: "52:54:00:ab:cd:01", IP: ip("10.0.1.11"), SSHUser: "tareas", Hostname: "pc-01", Room: "Aula 1"},
				{MAC: "52:54:00:ab:cd:02", IP: ip("10.0.1.12"), SSHUser: "tareas", Hostname: "pc-02", Room: "Aula 1"},
				{MAC: "52:54:00:ab:cd:03", SSHUser: "alumno"},
			},
			cols: "mac,ip,user,hostname,room",
		},
		{
			name: "header decides the order, subset of columns",
			in:   "ip,mac\n10.0.0.9,52:54:00:00:00:09\n",
			want: []Seat{{MAC: "52:54:00:00:00:09", IP: ip("10.0.0.9")}},
			cols: "ip,mac",
		},
		{
			name: "all six positional columns, quoted cells",
			in:   `"52:54:00:00:00:05","10.0.0.5","tareas","pc-05","Lab 3","lab3-key"` + "\n",
			want: []Seat{{MAC: "52:54:00:00:00:05", IP: ip("10.0.0.5"), SSHUser: "tareas", Hostname: "pc-05", Room: "Lab 3", Credential: "lab3-key"}},
			cols: "mac,ip,user,hostname,room,credential",
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, err := ParseCSV(strings.NewReader(c.in))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(p.Seats, c.want) {
				t.Errorf("seats:\n got %+v\nwant %+v", p.Seats, c.want)
			}
			if got := strings.Join(p.Columns, ","); got != c.cols {
				t.Errorf("columns %s, want %s", got, c.cols)
			}
		})
	}
}

func TestParseCSVBadCollectsEveryRow(t *testing.T) {
	cases := []struct {
		name, in string
		want     []string // every reported problem, in order
	}{
		{
			name: "several bad rows",
			in: "52:54:00:00:00:01,10.0.0.1,tareas\n" +
				"52:54:00:00:00:0g,10.0.0.2,tareas\n" +
				"52:54:00:00:00:03,10.0.0.300,tareas\n" +
				"52:54:00:00:00:04,10.0.0.4,tar eas\n" +
				"52:54:00:00:00:05,10.0.0.5\n" +
				"01:00:5e:00:00:06,fe80::6,x,PC_6\n",
			want: []string{
				"line 2, column 1 (mac): MAC \"52:54:00:00:00:0g\": not hexadecimal",
				"line 3, column 2 (ip): \"10.0.0.300\" is not an IPv4 address",
				"line 4, column 3 (user): user \"tar eas\": only letters",
				"line 5: 2 column(s), want 3 to 6",
				"line 6, column 1 (mac): 01:00:5e:00:00:06 is a multicast",
				"line 6, column 2 (ip): fe80::6 is not an IPv4 address",
				"line 6, column 4 (hostname): \"pc_6\": only letters",
			},
		},
		{
			name: "duplicates inside the file, in other spellings",
			in: "mac;ip;user\n" +
				"52:54:00:00:00:01;10.0.0.1;a\n" +
				"52-54-00-00-00-01;10.0.0.2;a\n" +
				"52:54:00:00:00:03;10.0.0.1;a\n",
			want: []string{
				"line 3, column 1 (mac): MAC 52:54:00:00:00:01 is already on line 2",
				"line 4, column 2 (ip): IP 10.0.0.1 is already on line 2",
			},
		},
		{
			name: "bad header, rows still checked",
			in:   "mac,ip,user,shoe size,ip\n52:54:00:00:00:01,10.0.0.1,a,44\n",
			want: []string{
				"line 1, column 4: unknown column \"shoe size\"",
				"line 1, column 5 (ip): column ip also appears as column 2",
				"line 2: 4 columns but the header has 5",
			},
		},
		{
			name: "header without mac",
			in:   "ip,user\n10.0.0.1,a\n",
			want: []string{"line 1: the header has no mac column"},
		},
		{
			name: "bad quoting does not stop the check",
			in:   "52:54:00:00:00:01,\"10.0.0.1,a\n52:54:00:00:00:02,10.0.0.2,a b\n",
			want: []string{"line 1: ", "line 2, column 3 (user)"},
		},
		{
			name: "separator chosen from the first row",
			in:   "52:54:00:00:00:01;10.0.0.1;a\n52:54:00:00:00:02,10.0.0.2,a\n",
			want: []string{"line 2: 1 column(s), want 3 to 6: mac, ip, user, hostname, room, credential (separator ';')"},
		},
		{
			name: "not UTF-8",
			in:   "52:54:00:00:00:01,10.0.0.1,a,pc,Inform\xe1tica\n",
			want: []string{"line 1: not UTF-8 text: save the file as \"CSV UTF-8\""},
		},
		{
			name: "no rows",
			in:   "# nothing here\n\nmac,ip,user\n",
			want: []string{"the file has no seat rows"},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, err := ParseCSV(strings.NewReader(c.in))
			var ie *ImportError
			if !errors.As(err, &ie) || p != nil {
				t.Fatalf("ParseCSV = %v, %v; want an *ImportError", p, err)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Error("ImportError does not unwrap to ErrInvalid")
			}
			if len(ie.Rows) != len(c.want) {
				t.Fatalf("%d problems, want %d:\n%v", len(ie.Rows), len(c.want), err)
			}
			for i, w := range c.want {
				if got := ie.Rows[i].Error(); !strings.HasPrefix(got, w) {
					t.Errorf("problem %d:\n got %s\nwant %s...", i, got, w)
				}
			}
		})
	}
}

func exportString(t *testing.T, inv *Inventory) string {
	t.Helper()
	var b bytes.Buffer
	if err := inv.Export(ctx, &b); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func TestImportMergeAndReplace(t *testing.T) {
	inv, _ := newInv(t)
	full := "mac,ip,user,hostname,room\n" +
		"52:54:00:00:00:01,10.0.0.1,tareas,pc-01,Lab 1\n" +
		"52:54:00:00:00:02,10.0.0.2,tareas,pc-02,Lab 1\n" +
		"52:54:00:00:00:03,10.0.0.3,tareas,pc-03,Lab 2\n"
	res, err := inv.Import(ctx, strings.NewReader(full), Merge)
	if err != nil {
		t.Fatal(err)
	}
	if res.Added != 3 || strings.Join(res.RoomsCreated, "|") != "Lab 1|Lab 2" {
		t.Errorf("first import: %+v", res)
	}

	// The seed's three columns: user changes, rooms and hostnames stay,
	// the IPs of 01 and 02 are swapped, and 04 is new.
	seed := "52:54:00:00:00:01,10.0.0.2,alumno\n52:54:00:00:00:02,10.0.0.1,tareas\n52:54:00:00:00:04,10.0.0.4,alumno\n"
	res, err = inv.Import(ctx, strings.NewReader(seed), Merge)
	if err != nil {
		t.Fatal(err)
	}
	if res.Added != 1 || res.Updated != 2 || res.Unchanged != 1 || res.Removed != 0 {
		t.Errorf("merge counts: %+v", res)
	}
	s, err := inv.SeatByIP(ctx, ip("10.0.0.2"))
	if err != nil || s.MAC != "52:54:00:00:00:01" || s.SSHUser != "alumno" || s.Room != "Lab 1" || s.Hostname != "pc-01" {
		t.Errorf("merged seat: %+v, %v", s, err)
	}

	// A clash with a seat the file does not mention changes nothing.
	before := exportString(t, inv)
	_, err = inv.Import(ctx, strings.NewReader("52:54:00:00:00:09,10.0.0.3,x\n52:54:00:00:00:0a,10.0.0.10,x,bad_host\n"), Merge)
	var ie *ImportError
	if !errors.As(err, &ie) {
		t.Fatalf("clash: %v", err)
	}
	if len(ie.Rows) != 1 || !strings.Contains(ie.Rows[0].Error(), "line 2, column 4 (hostname)") {
		t.Errorf("parse errors come first and alone: %v", err)
	}
	_, err = inv.Import(ctx, strings.NewReader("52:54:00:00:00:09,10.0.0.3,x\n"), Merge)
	if !errors.As(err, &ie) || !strings.Contains(err.Error(), "line 1, column 2 (ip): IP 10.0.0.3 already belongs to seat 52:54:00:00:00:03 (pc-03)") {
		t.Fatalf("clash with an existing seat: %v", err)
	}
	if after := exportString(t, inv); after != before {
		t.Errorf("a refused import changed the inventory:\n%s\n->\n%s", before, after)
	}

	// Replace: the same file is fine, because 03 goes away.
	res, err = inv.Import(ctx, strings.NewReader("52:54:00:00:00:09,10.0.0.3,x\n"), Replace)
	if err != nil {
		t.Fatal(err)
	}
	if res.Added != 1 || res.Removed != 4 {
		t.Errorf("replace counts: %+v", res)
	}
	seats, _ := inv.Seats(ctx)
	if len(seats) != 1 || seats[0].MAC != "52:54:00:00:00:09" {
		t.Errorf("after replace: %+v", seats)
	}
	for _, gone := range []string{"10.0.0.1", "10.0.0.2", "10.0.0.4"} {
		if _, err := inv.SeatByIP(ctx, ip(gone)); !errors.Is(err, ErrNotFound) {
			t.Errorf("IP %s still indexed after replace: %v", gone, err)
		}
	}
	if rooms, _ := inv.Rooms(ctx); len(rooms) != 2 {
		t.Errorf("replace must keep rooms: %+v", rooms)
	}
}

func TestExportImportRoundTrip(t *testing.T) {
	a, _ := newInv(t)
	in := "# lab\nMAC;IP;Usuario;Nombre;Aula;Credencial\n" +
		"52-54-00-00-00-0B;10.0.2.11;tareas;pc-11;Aula Informática;aula-key\n" +
		"52:54:00:00:00:0a;10.0.2.10;tareas;pc-10;Aula Informática;aula-key\n" +
		"5254.0000.000c;;alumno;;Lab 2;\n" +
		"52:54:00:00:00:0d;10.0.3.5;;pc-13;;\n"
	if _, err := a.Import(ctx, strings.NewReader(in), Replace); err != nil {
		t.Fatal(err)
	}
	out := exportString(t, a)
	b, _ := newInv(t)
	if _, err := b.Import(ctx, strings.NewReader(out), Replace); err != nil {
		t.Fatalf("re-importing the export: %v\n%s", err, out)
	}
	sa, _ := a.Seats(ctx)
	sb, _ := b.Seats(ctx)
	if !reflect.DeepEqual(sa, sb) || len(sa) != 4 {
		t.Errorf("round trip changed the seats:\n%+v\n%+v", sa, sb)
	}
	if out2 := exportString(t, b); out2 != out {
		t.Errorf("export is not stable:\n%s\n%s", out, out2)
	}
	if !strings.HasPrefix(out, "mac,ip,user,hostname,room,credential\n") {
		t.Errorf("export header: %q", out)
	}
}
