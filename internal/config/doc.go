// Package config is the wiring between guest-puller's settings and the
// pipeline: it reads the settings (the command line's flags and the JSON
// config file name them alike) and composes a pull.Puller from them, the
// way go-containerregistry's crane composes options over remote. It builds
// the registry client, opens the layer cache (mounting the sealed store
// first when one is configured), loads the policy with its keys, the
// registry credentials and the decryption keys, and, only when a kbs:///
// resource is first needed, the attester and the KBS client that fetch it.
//
// pull consumes what this package builds and knows none of it: files,
// flags, attestation and the sealed store stay here. The command line and
// the demo open a Puller here; the confidential-data-hub (internal/cdh),
// whose configuration is CDH's TOML, builds its own and shares LoadPolicy.
package config
