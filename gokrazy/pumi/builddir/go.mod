module gokrazy/build/pumi

go 1.26.0

// The appliance is built from this repository's working tree (relative path,
// so any clone works); pumi-image rewrites it to an absolute path in its
// temporary copy of this folder.
replace github.com/pumi-lab/pumi => ../../..

require github.com/pumi-lab/pumi v0.0.0-00010101000000-000000000000

// gokrazy system packages, pinned: an unpinned package makes gok run
// `go get <pkg>@latest`, which the module proxy refuses for some modules.
require (
	github.com/gokrazy/gokrazy v0.0.0-20260418085648-c38c3134b8a7
	github.com/gokrazy/kernel.amd64 v0.0.0-20260705070735-de680abf072b
	github.com/gokrazy/serial-busybox v0.0.0-20250119153030-ac58ba7574e7
)
