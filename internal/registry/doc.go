// Package registry is guest-puller's access to registries, on top of
// go-containerregistry: credentials (--creds, auth
// files, credential helpers), containers-registries.conf v2 (mirrors,
// blocked and insecure registries), retries, and blob reads that resume with
// a Range request when a connection breaks mid-way.
package registry
