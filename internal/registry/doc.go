// Package registry is guest-puller's access to registries, on top of
// go-containerregistry: credentials (--creds, auth
// files, credential helpers), containers-registries.conf v2 (mirrors,
// blocked and insecure registries), retries, and blob reads that resume with
// a Range request when a connection breaks mid-way.
//
// The transport stack of a repository, top to bottom:
//
//	go-containerregistry's authentication (token handshake, shared per
//	repository: Client.transportFor) → the one retry layer (Retry: 408,
//	429 with Retry-After, 5xx, failed connections; GETs and HEADs only)
//	→ user agent → idle timeout (idleread: a server that sends nothing for
//	Options.IdleTimeout fails the request, which the retry layer repeats
//	or blobReader resumes) → TLS-by-default (schemeGuard) → connections
//	(shared by every Client made from one New).
//
// Nothing above the retry layer repeats a request: go-containerregistry
// does not wrap a transport it is given ready-made, and blobReader only
// resumes a body that broke, each resume one request through the layer.
package registry
