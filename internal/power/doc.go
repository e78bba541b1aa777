// Package power owns how pumi reaches a lab seat's power and OS: Wake-on-LAN
// magic packets on the lab interface, and SSH to a running seat to reboot it,
// shut it down, or verify which image it runs (the seed's Desktop/Signature
// convention).
//
// SSH failures are typed (see Error and the Err* sentinels) so that a run
// report can say in a few words why a seat failed: unreachable, ssh auth,
// host key mismatch, wrong image, no signature or command failed.
//
// Host keys are pinned per (image, seat) rather than per address: every seat
// restored from one image shares that image's host keys, and the same seat
// legitimately presents a different key after being restored with another
// image. A key is recorded only after the operation it was first seen in
// succeeded, so a seat still running the wrong image never pins its key under
// the image it was supposed to run.
package power
