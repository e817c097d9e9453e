// Package compat_test runs a corpus of containers-policy.json,
// containers-registries.conf and containers-registries.d files, written for
// this project, through guest-puller and through go.podman.io/image/v5 (the
// library behind skopeo, podman and CRI-O) in the same test binary, and
// asserts that both reach the same verdict, except for the differences
// listed here and in docs/policy.md ("Differences from containers/image"), each
// with its reason. A listed difference that stops occurring fails the test
// too, so that the list stays true.
//
// Policies and registries.d are compared end to end: real images in a real
// registry (Debian's docker-registry), signed with cosign (attachments) and
// gpg (simple signing in a lookaside store), evaluated by guest-puller's
// `policy check` path (pull.Puller.Check) and by containers/image's
// PolicyContext.IsRunningImageAllowed over its docker transport.
// registries.conf is compared on what it decides: how a name resolves
// (aliases, unqualified-search-registries, short-name-mode) and where each
// candidate is pulled from (prefixes, locations, mirrors, blocked, insecure).
//
// This directory is a Go module of its own, so that go.podman.io/image/v5's
// requirements raise no version in guest-puller's own go.mod: `make test`
// (and `make compat`) run it. go.podman.io/image/v5 uses gpgme through cgo
// unless built with the tag containers_image_openpgp: make passes the tag,
// and scripts/setup installs libgpgme-dev so that a plain `go test ./...`
// in this directory builds too.
package compat_test
