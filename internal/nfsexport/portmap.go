package nfsexport

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"
)

// A minimal portmapper (RPC program 100000 version 2: NULL, GETPORT, DUMP)
// so that clients which ask port 111 where NFS and MOUNT live — a plain
// `mount server:/images`, Clonezilla's ocs_repository="nfs://server/images",
// libnfs without nfsport= — find pumi's single port. It maps NFS v3 and
// MOUNT v3 over TCP only; everything else (UDP, NLM 100021, NFSv4 is on the
// fixed port anyway) is "not registered" (port 0), which is why clients
// still need `nolock` for locking calls. SET/UNSET/CALLIT are refused: no
// one registers with pumi.

const (
	pmapVers       = 2
	pmapProcNull   = 0
	pmapProcGet    = 3
	pmapProcDump   = 4
	ipProtoTCP     = 6
	ipProtoUDP     = 17
	pmapMaxRequest = 8 << 10
	pmapMaxConns   = 64
)

// pmapMappings lists what pumi serves on nfsPort.
func pmapMappings(nfsPort uint32) [][4]uint32 {
	return [][4]uint32{
		{progPortmap, pmapVers, ipProtoTCP, 111},
		{progPortmap, pmapVers, ipProtoUDP, 111},
		{progNFS, 3, ipProtoTCP, nfsPort},
		{progMount, 3, ipProtoTCP, nfsPort},
	}
}

// pmapAnswer builds the reply (with record marker placeholder) to one
// portmapper call record, or nil when the record is not a call.
func pmapAnswer(rec []byte, nfsPort uint32) *xdrWriter {
	call, err := parseCall(rec)
	if err != nil {
		return nil
	}
	if call.rpcvers != 2 {
		return deniedRPCMismatch(call.xid)
	}
	if call.prog != progPortmap {
		return replyHeader(call.xid, acceptProgUnavail)
	}
	if call.vers != pmapVers {
		w := replyHeader(call.xid, acceptProgMismatch)
		w.u32(pmapVers)
		w.u32(pmapVers)
		return w
	}
	switch call.proc {
	case pmapProcNull:
		return replyHeader(call.xid, acceptSuccess)
	case pmapProcGet:
		x := xdrReader{b: call.args}
		prog, vers, prot := x.u32(), x.u32(), x.u32()
		x.u32()
		if x.err != nil {
			return replyHeader(call.xid, acceptGarbageArgs)
		}
		w := replyHeader(call.xid, acceptSuccess)
		port := uint32(0)
		for _, m := range pmapMappings(nfsPort) {
			if m[0] == prog && m[1] == vers && m[2] == prot {
				port = m[3]
			}
		}
		w.u32(port)
		return w
	case pmapProcDump:
		w := replyHeader(call.xid, acceptSuccess)
		for _, m := range pmapMappings(nfsPort) {
			w.u32(1)
			for _, v := range m {
				w.u32(v)
			}
		}
		w.u32(0)
		return w
	default:
		return replyHeader(call.xid, acceptProcUnavail)
	}
}

// ServePortmap answers the portmapper on tcp and udp (either may be nil;
// normally both on port 111) for pumi's NFS server listening on nfsPort,
// until ctx ends (then it returns nil) or a listener fails.
func ServePortmap(ctx context.Context, tcp net.Listener, udp net.PacketConn, nfsPort int, log *slog.Logger) error {
	if tcp == nil && udp == nil {
		return errors.New("nfsexport: ServePortmap needs a TCP listener or a UDP socket")
	}
	if nfsPort <= 0 || nfsPort > 65535 {
		return fmt.Errorf("nfsexport: portmapper: NFS port %d out of range", nfsPort)
	}
	if log == nil {
		log = slog.Default()
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	port := uint32(nfsPort)
	var wg sync.WaitGroup
	errc := make(chan error, 2)
	go func() {
		<-ctx.Done()
		if tcp != nil {
			tcp.Close()
		}
		if udp != nil {
			udp.Close()
		}
	}()
	if udp != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, pmapMaxRequest)
			for {
				n, from, err := udp.ReadFrom(buf)
				if err != nil {
					if ctx.Err() == nil {
						errc <- fmt.Errorf("nfsexport: portmapper UDP: %w", err)
						cancel()
					}
					return
				}
				if w := pmapAnswer(buf[:n], port); w != nil {
					_, _ = udp.WriteTo(w.b[4:], from) // UDP has no record marker
				}
			}
		}()
	}
	if tcp != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var conns sync.WaitGroup
			defer conns.Wait()
			// Anyone may ask the portmapper, so its connections are
			// capped: beyond pmapMaxConns new ones are closed at once.
			slots := make(chan struct{}, pmapMaxConns)
			for {
				c, err := tcp.Accept()
				if err != nil {
					if ctx.Err() == nil {
						errc <- fmt.Errorf("nfsexport: portmapper TCP: %w", err)
						cancel()
					}
					return
				}
				select {
				case slots <- struct{}{}:
				default:
					c.Close()
					continue
				}
				conns.Add(1)
				go func() {
					defer conns.Done()
					defer func() { <-slots }()
					defer c.Close()
					stop := context.AfterFunc(ctx, func() { c.Close() })
					defer stop()
					br := bufio.NewReader(c)
					for {
						// An idle portmapper connection is closed after a
						// minute; clients reconnect for each query anyway.
						_ = c.SetDeadline(time.Now().Add(time.Minute))
						rec, err := readRecord(br, refuseGrowth)
						if err != nil || len(rec) > pmapMaxRequest {
							return
						}
						w := pmapAnswer(rec, port)
						if w == nil {
							return
						}
						if _, err := c.Write(w.frame()); err != nil {
							return
						}
					}
				}()
			}
		}()
	}
	log.Info("nfs: portmapper serving", "nfs_port", nfsPort)
	wg.Wait()
	select {
	case err := <-errc:
		return err
	default:
		return nil
	}
}
