package nfsexport

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
)

// TestReadRecordGrowsWithArrivingBytes: a header claiming 1 MiB followed by
// few bytes allocates for those bytes, not for the claim, and asks the
// budget only for what has arrived.
func TestReadRecordGrowsWithArrivingBytes(t *testing.T) {
	for _, tc := range []struct {
		name          string
		sent          int
		wantMaxGrowTo int // largest capacity grow is asked for (0: never)
	}{
		{"100 bytes", 100, 0},
		{"64 KiB", 64 << 10, 128 << 10}, // full buffer: doubles before reading on
		{"300 KiB", 300 << 10, 512 << 10},
		{"all but 64 bytes", 1<<20 - 64, 1 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := binary.BigEndian.AppendUint32(nil, 1<<31|1<<20)
			in = append(in, make([]byte, tc.sent)...)
			maxGrow := 0
			_, err := readRecord(bytes.NewReader(in), func(n int) error {
				if n > 2*tc.sent {
					t.Errorf("grow to %d after %d bytes arrived", n, tc.sent)
				}
				maxGrow = max(maxGrow, n)
				return nil
			})
			if !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
				t.Fatalf("truncated record: err %v", err)
			}
			if maxGrow > tc.wantMaxGrowTo {
				t.Errorf("grew to %d, want at most %d", maxGrow, tc.wantMaxGrowTo)
			}
		})
	}
	// A refused growth ends the record.
	in := binary.BigEndian.AppendUint32(nil, 1<<31|200<<10)
	in = append(in, make([]byte, 200<<10)...)
	if _, err := readRecord(bytes.NewReader(in), refuseGrowth); !errors.Is(err, errRecordTooBig) {
		t.Errorf("200 KiB record with growth refused: err %v", err)
	}
	// A complete record of 1 MiB in fragments reassembles.
	var frag []byte
	body := bytes.Repeat([]byte{7}, 1<<20)
	frag = binary.BigEndian.AppendUint32(frag, 1<<19)
	frag = append(frag, body[:1<<19]...)
	frag = binary.BigEndian.AppendUint32(frag, 1<<31|1<<19)
	frag = append(frag, body[1<<19:]...)
	got, err := readRecord(bytes.NewReader(frag), func(int) error { return nil })
	if err != nil || !bytes.Equal(got, body) {
		t.Errorf("fragmented 1 MiB record: %d bytes, %v", len(got), err)
	}
}

// FuzzReadRecord: any byte stream gives a record, an error, never a panic
// or a record above maxRecord.
func FuzzReadRecord(f *testing.F) {
	for _, s := range malformedSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		rec, err := readRecord(bytes.NewReader(b), func(int) error { return nil })
		if err == nil && len(rec) > maxRecord {
			t.Fatalf("record of %d bytes", len(rec))
		}
	})
}
