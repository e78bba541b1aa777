package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// The appliance as a DHCP server, black-box: the real cmd/pumi-appliance
// binary in the server namespace, configured through its JSON API
// (docs/api.md) as an admin's script would, with every benchmark MAC in its
// inventory (a lab whose seats all PXE-boot at once). Its DHCP answers go
// through the appliance's own admission (the inventory, in its state file)
// and record every PXE client as "seen", and its leases are written to its
// state file.

// benchMAC is dhcp-load's i-th MAC.
func benchMAC(i int) string {
	return fmt.Sprintf("02:42:98:%02x:%02x:%02x", byte(i>>16), byte(i>>8), byte(i))
}

// buildAppliance builds ./cmd/pumi-appliance (the benchmark runs from the
// repository root) into dir.
func buildAppliance(ctx context.Context, dir string) (string, error) {
	bin := filepath.Join(dir, "pumi-appliance")
	out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/pumi-appliance").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("building ./cmd/pumi-appliance (run netbench from the repository root): %w\n%s", err, out)
	}
	return bin, nil
}

// startAppliance starts the appliance with a fresh state directory,
// configures full-mode netboot on the server interface and uploads an
// inventory of the n benchmark MACs (reserved addresses from 10.98.64.0 on,
// outside the dynamic range), and returns once it serves DHCP.
func (e *env) startAppliance(ctx context.Context, bin, stateDir string, n int) (*server, error) {
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, err
	}
	s, err := e.start(ctx, "pumi-appliance", 8080, bin, "-state", stateDir, "-listen", serverIP+":8080",
		"-nfs-listen", serverIP+":2049", "-ocs-listen", serverIP+":6461")
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*server, error) {
		s.stop()
		b, _ := os.ReadFile(s.log)
		return nil, fmt.Errorf("%w\nappliance log:\n%s", err, lastLines(string(b), 30))
	}
	tok, err := os.ReadFile(filepath.Join(stateDir, "api-token"))
	if err != nil {
		return fail(fmt.Errorf("appliance API token: %w", err))
	}
	api := func(method, path, ctype string, body []byte) error {
		cmd := exec.CommandContext(ctx, "ip", "netns", "exec", e.srv, "curl", "-sS", "--fail-with-body", "-X", method,
			"-H", "Authorization: Bearer "+strings.TrimSpace(string(tok)), "-H", "Content-Type: "+ctype,
			"--data-binary", "@-", "http://"+serverIP+":8080"+path)
		cmd.Stdin = bytes.NewReader(body)
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s %s: %w: %s", method, path, err, out)
		}
		return nil
	}
	cfg, _ := json.Marshal(map[string]any{
		"netboot": map[string]any{"mode": "full", "interface": serverIf, "server_ip": serverIP,
			"http_base": "http://" + serverIP + ":8080", "subnet": subnet,
			"range_start": rangeStart, "range_end": rangeEnd, "router": serverIP, "lease_time": "12h"},
	})
	var csv strings.Builder
	csv.WriteString("mac,ip,user,hostname,room\n")
	for i := range n {
		fmt.Fprintf(&csv, "%s,10.98.%d.%d,lab,seat%d,bench\n", benchMAC(i), 64+i/250, 1+i%250, i)
	}
	if err := api("POST", "/api/v1/seats/import?mode=replace", "text/csv", []byte(csv.String())); err != nil {
		return fail(err)
	}
	if err := api("PUT", "/api/v1/config", "application/json", cfg); err != nil {
		return fail(err)
	}
	for i := 0; ; i++ {
		out, _ := exec.Command("ip", "netns", "exec", e.srv, "ss", "-Hlnu").Output()
		if bytes.Contains(out, []byte(":67 ")) {
			return s, nil
		}
		if i == 300 {
			return fail(fmt.Errorf("the appliance did not bind DHCP within 15 s of its netboot config"))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(l[max(0, len(l)-n):], "\n")
}
