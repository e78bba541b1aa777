package netboot

import (
	"strings"
	"testing"
	"time"
)

const sampleConfig = `{
  "server_ip": "10.99.0.1",
  "http_base": "http://10.99.0.1:8080",
  "range_start": "10.99.0.100",
  "range_end": "10.99.0.199",
  "netmask": "255.255.255.0",
  "router": "10.99.0.1",
  "dns": ["10.99.0.1", "10.99.0.2"],
  "lease_time": "2h",
  "reservations": [{"mac": "52-54-00-12-34-56", "ip": "10.99.0.20", "hostname": "seat-01"}],
  "known_macs": ["52:54:00:12:34:56", "5254.0012.3457"],
  "boot": {"52:54:00:12:34:56": "local"}
}`

func TestParseFileConfig(t *testing.T) {
	fc, err := ParseFileConfig([]byte(sampleConfig))
	if err != nil {
		t.Fatal(err)
	}
	c := fc.Config
	if c.ServerIP.String() != "10.99.0.1" || c.Netmask.String() != "10.99.0.0/24" || c.LeaseTime != 2*time.Hour ||
		len(c.DNS) != 2 || c.Router.String() != "10.99.0.1" || c.RangeEnd.String() != "10.99.0.199" {
		t.Errorf("parsed %+v", c)
	}
	if len(c.Reservations) != 1 || c.Reservations[0].MAC.String() != "52:54:00:12:34:56" || c.Reservations[0].Hostname != "seat-01" {
		t.Errorf("reservations %+v", c.Reservations)
	}
	if len(fc.Known) != 2 || fc.Known[1].String() != "52:54:00:12:34:57" {
		t.Errorf("known %v", fc.Known)
	}
	if !strings.Contains(string(fc.Boot), "local") {
		t.Errorf("boot %s", fc.Boot)
	}
	c.Interface, c.Mode = "br0", ModeFull
	if err := c.validate(); err != nil {
		t.Errorf("sample config does not validate: %v", err)
	}
}

func TestParseFileConfigErrors(t *testing.T) {
	cases := map[string]string{
		`{"rangestart": "10.0.0.1"}`:                            "unknown field",
		`{"server_ip": "10.0.0.300"}`:                           "server_ip",
		`{"server_ip": "fe80::1"}`:                              "server_ip",
		`{"netmask": "255.0.255.0", "range_start": "10.0.0.5"}`: "contiguous",
		`{"netmask": "255.255.255.0"}`:                          "write it as",
		`{"netmask": "10.0.0.0/33"}`:                            "netmask",
		`{"lease_time": "forever"}`:                             "lease_time",
		`{"lease_time": "-1h"}`:                                 "lease_time",
		`{"reservations": [{"mac": "nope", "ip": "10.0.0.5"}]}`: "reservations[0]",
		`{"reservations": [{"mac": "52:54:00:12:34:56"}]}`:      "want an IPv4",
		`{"known_macs": ["52:54:00"]}`:                          "known_macs[0]",
		`{"dns": ["x"]}`:                                        "dns",
		`[1,2]`:                                                 "JSON object",
		`{} {}`:                                                 "trailing",
	}
	for in, want := range cases {
		_, err := ParseFileConfig([]byte(in))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err %v, want %q", in, err, want)
		}
	}
}

// FuzzParseFileConfig: any bytes give a config or an error, never a panic,
// and an accepted config never panics validation.
func FuzzParseFileConfig(f *testing.F) {
	f.Add([]byte(sampleConfig))
	f.Fuzz(func(t *testing.T, b []byte) {
		fc, err := ParseFileConfig(b)
		if err != nil {
			return
		}
		for _, m := range []Mode{ModeFull, ModeProxy} {
			c := fc.Config
			c.Interface, c.Mode = "br0", m
			_ = c.validate()
		}
	})
}
