package boot

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"slices"

	"github.com/pumi-lab/pumi/internal/macaddr"
)

// StaticDecider answers from a fixed table, loaded from JSON, for
// pumi-netboot (the appliance decides from its state instead). The file maps
// MACs, in any spelling, to "local" or to a Linux boot:
//
//	{
//	  "52:54:00:12:34:56": "local",
//	  "52-54-00-12-34-57": {"kernel": "http://10.0.0.1:8080/files/vmlinuz",
//	                        "initrds": ["http://10.0.0.1:8080/files/initrd.gz"],
//	                        "cmdline": "console=ttyS0,115200 quiet"}
//	}
//
// Unknown MACs get Exit with reason "unknown MAC".
type StaticDecider struct {
	table map[string]Decision // by macaddr canonical form
}

type staticLinux struct {
	Kernel  string   `json:"kernel"`
	Initrds []string `json:"initrds"`
	Cmdline string   `json:"cmdline"`
	Reason  string   `json:"reason"`
}

// LoadStatic reads a StaticDecider from a JSON file.
func LoadStatic(path string) (*StaticDecider, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("boot config: %w", err)
	}
	d, err := ParseStatic(b)
	if err != nil {
		return nil, fmt.Errorf("boot config %s: %w", path, err)
	}
	return d, nil
}

// ParseStatic parses the JSON table. Every entry is checked up front (MAC,
// URLs, command line rendered with Script), so a bad file is refused at
// start-up instead of at some seat's next boot.
func ParseStatic(b []byte) (*StaticDecider, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("want a JSON object of MAC -> \"local\" or {kernel, initrds, cmdline}: %w", err)
	}
	table := make(map[string]Decision, len(raw))
	keys := make([]string, 0, len(raw))
	for k := range raw {
		keys = append(keys, k)
	}
	slices.Sort(keys) // deterministic error messages
	for _, k := range keys {
		v := raw[k]
		mac, err := macaddr.Parse(k)
		if err != nil {
			return nil, fmt.Errorf("entry %q: %w", k, err)
		}
		if _, dup := table[mac.String()]; dup {
			return nil, fmt.Errorf("entry %q: MAC %s is listed twice (in different spellings); keep one", k, mac)
		}
		var d Decision
		var s string
		if err := json.Unmarshal(v, &s); err == nil {
			if s != "local" {
				return nil, fmt.Errorf("entry %q: %q: want \"local\" or an object {kernel, initrds, cmdline}", k, s)
			}
			d = Decision{Action: Exit, Reason: "static config: local"}
		} else {
			var l staticLinux
			dec := json.NewDecoder(bytes.NewReader(v))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&l); err != nil {
				return nil, fmt.Errorf("entry %q: want \"local\" or an object {kernel, initrds, cmdline}: %w", k, err)
			}
			reason := l.Reason
			if reason == "" {
				reason = "static config"
			}
			d = Decision{Action: Linux, Kernel: l.Kernel, Initrds: l.Initrds, Cmdline: l.Cmdline, Reason: reason}
		}
		if _, err := Script(d); err != nil {
			return nil, fmt.Errorf("entry %q: %w", k, err)
		}
		table[mac.String()] = d
	}
	return &StaticDecider{table: table}, nil
}

// Decide implements Decider.
func (s *StaticDecider) Decide(_ context.Context, m Machine) (Decision, error) {
	d, ok := s.table[m.MAC.String()]
	if !ok {
		return Decision{Action: Exit, Reason: "unknown MAC"}, nil
	}
	d.Initrds = slices.Clone(d.Initrds) // callers must not edit the table
	return d, nil
}

// MACs lists the MACs the table knows, sorted, e.g. for a DHCP admission
// policy that only answers known seats.
func (s *StaticDecider) MACs() []net.HardwareAddr {
	keys := make([]string, 0, len(s.table))
	for k := range s.table {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	out := make([]net.HardwareAddr, 0, len(keys))
	for _, k := range keys {
		m, _ := net.ParseMAC(k)
		out = append(out, m)
	}
	return out
}
