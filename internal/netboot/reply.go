package netboot

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
)

// DHCP ports.
const (
	PortServer = 67
	PortClient = 68
	PortPXE    = 4011 // PXE boot server discovery (proxy mode)
)

// handler turns one request into at most one reply. It owns the lease pool.
// Requests are handled concurrently (one goroutine per packet): every
// decision reads and writes the pool under mu, which is held for
// microseconds; the lease store's write, an fsync, happens with mu released,
// so a burst's writes overlap and the store can group-commit them.
type handler struct {
	mode     Mode
	httpBase string
	adm      Admission
	leases   LeaseStore
	log      *slog.Logger
	noisy    *limitedLog // lines any outsider can cause per packet
	seenQ    *seenQueue  // nil: Seen is called directly (the handler's unit tests)
	now      func() time.Time

	mu       sync.Mutex
	serverIP netip.Addr // fixed before serving (Listen fills a zero one in)
	pool     *pool      // full mode only
	netmask  net.IPMask
	router   netip.Addr
	dns      []net.IP
	// writing: MACs whose lease change is being persisted. Their further
	// packets (retransmissions) are ignored until it is done, so the
	// changes of one MAC reach the pool and the store in the same order.
	writing map[string]bool
}

// pendingWrite is a lease change decided under handler.mu: persist runs
// without the lock, then finish runs under it with persist's error and
// gives the reply. No reply leaves before persist has returned nil.
type pendingWrite struct {
	persist func() error
	finish  func(err error) (*dhcpv4.DHCPv4, error)
}

func newHandler(cfg Config, adm Admission, leases LeaseStore, log *slog.Logger, now func() time.Time) (*handler, error) {
	h := &handler{
		mode:     cfg.Mode,
		httpBase: cfg.HTTPBase,
		adm:      adm,
		leases:   leases,
		log:      log,
		noisy:    newLimitedLog(log, now),
		now:      now,
		serverIP: cfg.ServerIP,
		writing:  map[string]bool{},
	}
	if cfg.Mode != ModeFull {
		return h, nil
	}
	h.pool = newPool(cfg)
	h.netmask = net.CIDRMask(cfg.Netmask.Bits(), 32)
	h.router = cfg.Router
	for _, d := range cfg.DNS {
		h.dns = append(h.dns, net.IP(d.AsSlice()))
	}
	saved, err := leases.Load()
	if err != nil {
		return nil, fmt.Errorf("netboot: loading leases: %w", err)
	}
	for _, l := range saved {
		if err := h.pool.restore(l); err != nil {
			// The configuration changed under the lease; forgetting it is
			// safe (the PC is NAKed on renewal and asks again).
			log.Warn("dropping stored lease that no longer fits the configuration", "err", err)
			if err := leases.Delete(l.MAC); err != nil {
				return nil, fmt.Errorf("netboot: dropping stale lease %s: %w", l.MAC, err)
			}
		}
	}
	log.Info("leases loaded", "count", len(h.pool.byMAC))
	return h, nil
}

// setServerIP fixes the address used as server identifier and next-server.
func (h *handler) setServerIP(ip netip.Addr) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.serverIP = ip
	if h.pool != nil {
		h.pool.serverIP = ip
	}
}

// reply answers req, which arrived on UDP port. A nil reply (and nil error)
// means "stay silent". An error means the request was acceptable but pumi
// could not do its part (the lease store failed): nothing is sent, so the
// client retries. reply may be called concurrently.
func (h *handler) reply(req *dhcpv4.DHCPv4, port int) (*dhcpv4.DHCPv4, error) {
	if req == nil || req.OpCode != dhcpv4.OpcodeBootRequest || req.HWType != iana.HWTypeEthernet || len(req.ClientHWAddr) != 6 {
		return nil, nil // not an Ethernet client request: not ours to answer
	}
	h.mu.Lock()
	resp, w, err := h.decide(req, port)
	h.mu.Unlock()
	if w == nil || err != nil {
		return resp, err
	}
	// Durable before answered: the ACK is built only after persist.
	perr := w.persist()
	h.mu.Lock()
	defer h.mu.Unlock()
	return w.finish(perr)
}

// decide is reply's part under h.mu: a reply, or a lease change to persist.
func (h *handler) decide(req *dhcpv4.DHCPv4, port int) (*dhcpv4.DHCPv4, *pendingWrite, error) {
	if !h.serverIP.Is4() {
		return nil, nil, fmt.Errorf("netboot: no server IP set")
	}
	c := classify(req)
	if c.fw != fwNone {
		h.seen(req, c)
	}
	switch h.mode {
	case ModeProxy:
		resp, err := h.proxyReply(req, port, c)
		return resp, nil, err
	case ModeFull:
		if port != PortServer {
			return nil, nil, nil
		}
		return h.fullReply(req, c)
	}
	return nil, nil, nil
}

func (h *handler) seen(req *dhcpv4.DHCPv4, c client) {
	mac := req.ClientHWAddr
	info := ClientInfo{
		Arch:        c.arch,
		Firmware:    c.fw.String(),
		VendorClass: c.vendorClass,
		UserClass:   c.userClass,
		Message:     req.MessageType().String(),
	}
	if ip, ok := netip.AddrFromSlice(req.ClientIPAddr.To4()); ok && !ip.IsUnspecified() {
		info.IP = ip
	}
	if h.seenQ != nil {
		h.seenQ.push(mac, info)
		return
	}
	h.adm.Seen(mac, info)
}

// pxeTarget decides whether and what a PXE client boots; it logs why not.
func (h *handler) pxeTarget(req *dhcpv4.DHCPv4, c client) (bootTarget, bool) {
	mac := req.ClientHWAddr
	if c.fw == fwNone {
		return bootTarget{}, false
	}
	if !h.adm.Allow(mac) {
		h.noisy.Log(slog.LevelInfo, "seen PXE client that is not admitted; no boot answer", "mac", mac.String(), "firmware", c.fw.String(), "arch", c.arch)
		return bootTarget{}, false
	}
	if c.fw == fwUnsupported {
		h.noisy.Log(slog.LevelWarn, "unsupported arch: pumi has no boot program for this client", "mac", mac.String(), "arch", c.arch, "vendor_class", c.vendorClass)
		return bootTarget{}, false
	}
	if c.fw == fwBIOS {
		h.noisy.Log(slog.LevelInfo, "legacy BIOS PXE client: serving undionly.kpxe (UEFI is the tested path)", "mac", mac.String())
	}
	t, ok := target(c, h.httpBase, mac)
	return h.chainTarget(c, mac, t, ok) // the signed chain (chain.go)
}

func (h *handler) serverIPSlice() net.IP { return net.IP(h.serverIP.AsSlice()) }

// proxyReply: PXE options only, no address. DISCOVER on 67 gets an OFFER;
// REQUEST on 4011 (or on 67 when addressed to us) gets an ACK.
func (h *handler) proxyReply(req *dhcpv4.DHCPv4, port int, c client) (*dhcpv4.DHCPv4, error) {
	if c.fw == fwNone {
		return nil, nil
	}
	mt := req.MessageType()
	var out dhcpv4.MessageType
	switch {
	case port == PortServer && mt == dhcpv4.MessageTypeDiscover:
		out = dhcpv4.MessageTypeOffer
	case port == PortServer && mt == dhcpv4.MessageTypeRequest:
		// A REQUEST on 67 normally selects the school server's offer; only
		// one that names pumi as its server and asks for no address is for
		// us. (On a shared host the school server has pumi's IP, so the
		// server id alone cannot tell them apart.)
		if sid := req.ServerIdentifier(); sid == nil || !sid.Equal(h.serverIPSlice()) {
			return nil, nil
		}
		if req.Options.Has(dhcpv4.OptionRequestedIPAddress) {
			return nil, nil
		}
		out = dhcpv4.MessageTypeAck
	case port == PortPXE && (mt == dhcpv4.MessageTypeRequest || mt == dhcpv4.MessageTypeInform):
		out = dhcpv4.MessageTypeAck
	default:
		return nil, nil
	}
	t, ok := h.pxeTarget(req, c)
	if !ok {
		return nil, nil
	}
	resp, err := dhcpv4.NewReplyFromRequest(req, dhcpv4.WithMessageType(out))
	if err != nil {
		return nil, fmt.Errorf("netboot: building reply: %w", err)
	}
	resp.ClientIPAddr = req.ClientIPAddr
	addPXE(req, resp, t, h.serverIPSlice(), false, c)
	h.log.Info("proxy PXE answer", "mac", req.ClientHWAddr.String(), "type", out.String(), "port", port, "file", t.file)
	return resp, nil
}

func (h *handler) fullReply(req *dhcpv4.DHCPv4, c client) (*dhcpv4.DHCPv4, *pendingWrite, error) {
	now := h.now()
	mac := req.ClientHWAddr.String()
	if h.writing[mac] {
		// A retransmission that overtook the write of this client's
		// previous message; that one's answer is on its way.
		h.noisy.Log(slog.LevelDebug, "ignoring a request while this client's lease is being written", "mac", mac, "type", req.MessageType().String())
		return nil, nil, nil
	}
	switch req.MessageType() {
	case dhcpv4.MessageTypeDiscover:
		requested, _ := netip.AddrFromSlice(req.RequestedIPAddress().To4())
		ip, ok := h.pool.choose(mac, requested, now)
		if !ok {
			h.noisy.Log(slog.LevelWarn, "DHCP range exhausted: no address to offer; widen the range or shorten the lease time", "mac", mac)
			return nil, nil, nil
		}
		h.pool.offer(mac, ip, now)
		resp, err := h.leaseReply(req, c, dhcpv4.MessageTypeOffer, ip)
		return resp, nil, err
	case dhcpv4.MessageTypeRequest:
		return h.fullRequest(req, c, now)
	case dhcpv4.MessageTypeDecline:
		return nil, h.decline(req, now), nil
	case dhcpv4.MessageTypeRelease:
		return nil, h.release(req, now), nil
	case dhcpv4.MessageTypeInform:
		resp, err := h.inform(req, c)
		return resp, nil, err
	}
	return nil, nil, nil
}

// fullRequest answers a REQUEST. An acceptable one yields a pendingWrite: the
// address is held for the client (no one else can be offered or ACKed it)
// while the lease is persisted, then committed and ACKed.
func (h *handler) fullRequest(req *dhcpv4.DHCPv4, c client, now time.Time) (*dhcpv4.DHCPv4, *pendingWrite, error) {
	mac := req.ClientHWAddr.String()
	sid := req.ServerIdentifier()
	requested, _ := netip.AddrFromSlice(req.RequestedIPAddress().To4())
	ciaddr, _ := netip.AddrFromSlice(req.ClientIPAddr.To4())
	var want netip.Addr
	switch {
	case sid != nil && !sid.Equal(h.serverIPSlice()):
		// SELECTING another server's offer (RFC 2131 4.3.2): not a NAK, or
		// pumi would break that lease; just let go of what we offered.
		if e, ok := h.pool.byMAC[mac]; ok && !e.bound {
			h.pool.drop(mac)
		}
		h.noisy.Log(slog.LevelInfo, "client chose another DHCP server", "mac", mac, "server", sid.String())
		return nil, nil, nil
	case requested.IsValid() && !requested.IsUnspecified():
		want = requested // SELECTING (our server id) or INIT-REBOOT
	case ciaddr.IsValid() && !ciaddr.IsUnspecified():
		want = ciaddr // RENEWING or REBINDING
	default:
		resp, err := h.nak(req, "request names no address")
		return resp, nil, err
	}
	var why string
	switch r, reserved := h.pool.reservedByMAC[mac]; {
	case !h.pool.subnet.Contains(want):
		why = fmt.Sprintf("%s is not on this network", want)
	case reserved && r.IP != want:
		why = fmt.Sprintf("this MAC is reserved %s", r.IP)
	case !h.pool.requestable(want, mac, now):
		why = fmt.Sprintf("%s is not available", want)
	}
	if why != "" {
		resp, err := h.nak(req, why)
		return resp, nil, err
	}
	lease := Lease{MAC: req.ClientHWAddr, IP: want, Expiry: now.Add(h.pool.leaseTime), Hostname: h.pool.reservedByMAC[mac].Hostname}
	undo := h.pool.hold(mac, want, now)
	h.writing[mac] = true
	return nil, &pendingWrite{
		// Persist first: an ACK the store does not know about would be
		// handed to another PC after a restart.
		persist: func() error { return h.leases.Put(lease) },
		finish: func(err error) (*dhcpv4.DHCPv4, error) {
			delete(h.writing, mac)
			if err != nil {
				undo()
				return nil, fmt.Errorf("netboot: saving lease %s -> %s: %w", mac, want, err)
			}
			h.pool.commit(req.ClientHWAddr, want, now)
			h.log.Info("lease", "mac", mac, "ip", want.String(), "until", lease.Expiry.Format(time.RFC3339))
			return h.leaseReply(req, c, dhcpv4.MessageTypeAck, want)
		},
	}, nil
}

func (h *handler) nak(req *dhcpv4.DHCPv4, why string) (*dhcpv4.DHCPv4, error) {
	h.noisy.Log(slog.LevelInfo, "NAK", "mac", req.ClientHWAddr.String(), "reason", why)
	resp, err := dhcpv4.NewReplyFromRequest(req,
		dhcpv4.WithMessageType(dhcpv4.MessageTypeNak),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(h.serverIPSlice())),
		dhcpv4.WithOption(dhcpv4.OptMessage(why)),
	)
	if err != nil {
		return nil, fmt.Errorf("netboot: building NAK: %w", err)
	}
	if !req.GatewayIPAddr.IsUnspecified() && req.GatewayIPAddr != nil {
		resp.SetBroadcast() // the relay must broadcast a NAK (RFC 2131 4.3.2)
	}
	return resp, nil
}

// leaseReply is an OFFER or ACK carrying ip and the network options, plus
// the PXE options for an admitted PXE client.
func (h *handler) leaseReply(req *dhcpv4.DHCPv4, c client, mt dhcpv4.MessageType, ip netip.Addr) (*dhcpv4.DHCPv4, error) {
	resp, err := dhcpv4.NewReplyFromRequest(req,
		dhcpv4.WithMessageType(mt),
		dhcpv4.WithYourIP(net.IP(ip.AsSlice())),
		dhcpv4.WithOption(dhcpv4.OptIPAddressLeaseTime(h.pool.leaseTime)),
		dhcpv4.WithOption(dhcpv4.OptRenewTimeValue(h.pool.leaseTime/2)),
		dhcpv4.WithOption(dhcpv4.OptRebindingTimeValue(h.pool.leaseTime*7/8)),
	)
	if err != nil {
		return nil, fmt.Errorf("netboot: building reply: %w", err)
	}
	resp.ClientIPAddr = req.ClientIPAddr
	h.networkOptions(resp)
	if host := h.pool.reservedByMAC[req.ClientHWAddr.String()].Hostname; host != "" {
		resp.UpdateOption(dhcpv4.OptHostName(host))
	}
	if t, ok := h.pxeTarget(req, c); ok {
		addPXE(req, resp, t, h.serverIPSlice(), true, c)
	}
	return resp, nil
}

func (h *handler) networkOptions(resp *dhcpv4.DHCPv4) {
	resp.UpdateOption(dhcpv4.OptServerIdentifier(h.serverIPSlice()))
	resp.UpdateOption(dhcpv4.OptSubnetMask(h.netmask))
	if h.router.IsValid() {
		resp.UpdateOption(dhcpv4.OptRouter(net.IP(h.router.AsSlice())))
	}
	if len(h.dns) > 0 {
		resp.UpdateOption(dhcpv4.OptDNS(h.dns...))
	}
}

// inform answers DHCPINFORM: configuration options, no address, no lease
// time (RFC 2131 3.4).
func (h *handler) inform(req *dhcpv4.DHCPv4, c client) (*dhcpv4.DHCPv4, error) {
	resp, err := dhcpv4.NewReplyFromRequest(req, dhcpv4.WithMessageType(dhcpv4.MessageTypeAck))
	if err != nil {
		return nil, fmt.Errorf("netboot: building reply: %w", err)
	}
	resp.ClientIPAddr = req.ClientIPAddr
	h.networkOptions(resp)
	if t, ok := h.pxeTarget(req, c); ok {
		addPXE(req, resp, t, h.serverIPSlice(), true, c)
	}
	return resp, nil
}

// ours: a DECLINE or RELEASE either names pumi as its server or names none.
func (h *handler) ours(req *dhcpv4.DHCPv4) bool {
	sid := req.ServerIdentifier()
	return sid == nil || sid.Equal(h.serverIPSlice())
}

// forget is the pendingWrite that deletes mac's stored lease; done runs
// under h.mu once that is durable.
func (h *handler) forget(req *dhcpv4.DHCPv4, what string, done func()) *pendingWrite {
	mac := req.ClientHWAddr.String()
	h.writing[mac] = true
	return &pendingWrite{
		persist: func() error { return h.leases.Delete(req.ClientHWAddr) },
		finish: func(err error) (*dhcpv4.DHCPv4, error) {
			delete(h.writing, mac)
			if err != nil {
				return nil, fmt.Errorf("netboot: forgetting %s lease %s: %w", what, mac, err)
			}
			done()
			return nil, nil
		},
	}
}

// decline: the client found ip in use by someone else (ARP). The address is
// kept out of the pool for a while and the client's lease is forgotten.
func (h *handler) decline(req *dhcpv4.DHCPv4, now time.Time) *pendingWrite {
	if !h.ours(req) {
		return nil
	}
	mac := req.ClientHWAddr.String()
	ip, _ := netip.AddrFromSlice(req.RequestedIPAddress().To4())
	e, ok := h.pool.byMAC[mac]
	if !ok || e.ip != ip {
		return nil // not an address pumi gave this client
	}
	h.pool.decline(ip, now)
	h.pool.drop(mac)
	if _, reserved := h.pool.reservedByIP[ip]; reserved {
		h.log.Warn("reserved address declined: another machine uses it; find and fix it", "mac", mac, "ip", ip.String())
	} else {
		h.log.Warn("address declined: another machine uses it; kept out of the pool", "mac", mac, "ip", ip.String(), "for", declineHold.String())
	}
	// The pool already forgot the lease: a store that fails to forget it
	// too only means the address comes back after a restart, held by the
	// PC that declined it, which renews or declines again.
	return h.forget(req, "declined", func() {})
}

// release: the client gives its address back. pumi remembers who had it, so
// the same PC gets it again if nobody else took it meanwhile.
func (h *handler) release(req *dhcpv4.DHCPv4, now time.Time) *pendingWrite {
	if !h.ours(req) {
		return nil
	}
	mac := req.ClientHWAddr.String()
	ciaddr, _ := netip.AddrFromSlice(req.ClientIPAddr.To4())
	e, ok := h.pool.byMAC[mac]
	if !ok || e.ip != ciaddr || !e.bound {
		return nil
	}
	return h.forget(req, "released", func() {
		// The entry is still e: the client's own packets were ignored
		// meanwhile, and a bound unexpired address is no one else's.
		e.bound = false
		e.expiry = now
		h.log.Info("released", "mac", mac, "ip", ciaddr.String())
	})
}

// destination is where a reply goes (RFC 2131 4.1): to the relay if there
// is one; NAKs broadcast; to ciaddr if the client has an address (in proxy
// mode on 4011, back to the sender); otherwise broadcast, which every PXE ROM
// accepts (pumi does not forge link-layer unicasts to a client without an
// address).
func destination(req, resp *dhcpv4.DHCPv4, peer *net.UDPAddr, port int) *net.UDPAddr {
	if gi := req.GatewayIPAddr.To4(); gi != nil && !gi.IsUnspecified() {
		return &net.UDPAddr{IP: gi, Port: PortServer}
	}
	if resp.MessageType() == dhcpv4.MessageTypeNak {
		return &net.UDPAddr{IP: net.IPv4bcast, Port: PortClient}
	}
	if port == PortPXE && peer != nil && peer.IP.To4() != nil && !peer.IP.IsUnspecified() && peer.Port != 0 {
		return &net.UDPAddr{IP: peer.IP.To4(), Port: peer.Port}
	}
	if ci := req.ClientIPAddr.To4(); ci != nil && !ci.IsUnspecified() {
		return &net.UDPAddr{IP: ci, Port: PortClient}
	}
	return &net.UDPAddr{IP: net.IPv4bcast, Port: PortClient}
}

func netipFrom(ip net.IP) (netip.Addr, bool) { return netip.AddrFromSlice(ip.To4()) }
