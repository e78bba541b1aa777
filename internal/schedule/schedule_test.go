package schedule

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestValidate(t *testing.T) {
	ok := daily("room-a.nightly")
	tests := []struct {
		name    string
		mod     func(*Schedule)
		wantErr []string // empty: valid
	}{
		{"valid restore", func(*Schedule) {}, nil},
		{"valid capture", func(s *Schedule) {
			s.Target = Target{}
			s.Action = Action{Kind: Capture, Image: "LAB-2027-img", SourceSeat: "A-01"}
		}, nil},
		{"valid verify without image", func(s *Schedule) { s.Action = Action{Kind: Verify} }, nil},
		{"valid wake seats", func(s *Schedule) { s.Target = Target{Seats: []string{"A-01", "B-02"}}; s.Action = Action{Kind: Wake} }, nil},
		{"valid only-unverified restore", func(s *Schedule) { s.OnlyUnverified = true }, nil},
		{"disabled is still validated", func(s *Schedule) { s.Enabled = false; s.Window = 0 }, []string{"too short"}},
		{"bad id", func(s *Schedule) { s.ID = "a/b" }, []string{"id:", "only letters"}},
		{"empty id", func(s *Schedule) { s.ID = "" }, []string{"id: must be 1-64"}},
		{"no name", func(s *Schedule) { s.Name = " " }, []string{"name: empty"}},
		{"control char in name", func(s *Schedule) { s.Name = "a\nb" }, []string{"control character"}},
		{"no spec", func(s *Schedule) { s.Spec = Spec{} }, []string{"spec: missing"}},
		{"window too long", func(s *Schedule) { s.Window = 8 * 24 * time.Hour }, []string{"too long"}},
		{"restore without image", func(s *Schedule) { s.Action.Image = "" }, []string{"choose the image"}},
		{"unknown action", func(s *Schedule) { s.Action.Kind = "format" }, []string{`action "format" unknown`}},
		{"missing action", func(s *Schedule) { s.Action = Action{} }, []string{"action: missing"}},
		{"capture without source, with target", func(s *Schedule) { s.Action = Action{Kind: Capture, Image: "x"} },
			[]string{"choose the seat to capture", "leave rooms and seats empty"}},
		{"source seat on restore", func(s *Schedule) { s.Action.SourceSeat = "A-01" }, []string{"only for capture"}},
		{"wake with image", func(s *Schedule) { s.Action.Kind = Wake }, []string{"takes no image"}},
		{"only-unverified on verify", func(s *Schedule) { s.Action = Action{Kind: Verify}; s.OnlyUnverified = true }, []string{"restore only"}},
		{"no target", func(s *Schedule) { s.Target = Target{} }, []string{"at least one room or seat"}},
		{"duplicate room", func(s *Schedule) { s.Target.Rooms = []string{"A", "A"} }, []string{`room "A" listed twice`}},
		{"empty seat", func(s *Schedule) { s.Target.Seats = []string{""} }, []string{`seat "": empty`}},
		{"several problems at once", func(s *Schedule) { s.ID = ""; s.Window = 0; s.Target = Target{} },
			[]string{"id:", "too short", "at least one room"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := ok
			s.Target = Target{Rooms: append([]string(nil), ok.Target.Rooms...)}
			tc.mod(&s)
			err := s.Validate()
			if len(tc.wantErr) == 0 {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted, want errors %q", tc.wantErr)
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestScheduleJSONRoundTrip(t *testing.T) {
	in := daily("a")
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var out Schedule
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	if out.Spec != in.Spec || out.Window != in.Window || out.Action != in.Action || out.Target.Rooms[0] != "A" || !out.Enabled {
		t.Fatalf("round trip: %s -> %+v", b, out)
	}
	if err := out.Validate(); err != nil {
		t.Fatal(err)
	}
}
