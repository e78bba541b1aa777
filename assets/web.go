package assets

import (
	"embed"
	"io/fs"
)

// The web page is server-rendered: templates are parsed once at start and
// static files (CSS, htmx) are served as they are, so there is no build step.
// htmx is vendored from npm htmx.org@2.0.11 (0BSD, license beside it).
//
//go:embed web/templates/*.html web/static/*
var webFS embed.FS

// Web returns the web page's files: templates/*.html and static/*.
func Web() fs.FS {
	sub, err := fs.Sub(webFS, "web")
	if err != nil {
		panic(err) // cannot happen: the directory is embedded at build time
	}
	return sub
}
