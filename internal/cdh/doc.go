// Package cdh is guest-puller as the confidential-data-hub: it wires the
// pull pipeline, the KBS client, the sealed-secret unsealer and runtime
// measurement to the configuration cdhconfig reads, behind the services
// api serves.
//
// What CDH does at start, the Hub does at once and locally: it opens the
// layer cache and serves. What needs the KBS or a file the configuration
// names (the policy, registries.conf, the sigstore config, the registry
// credentials) is loaded at the first request that needs it; a failure
// there fails that request and is tried again at the next one. [[credentials]]
// are fetched at start in the background, retried until the KBS answers.
//
// One attestation serves everything: the pulls' policy, keys and layer
// KEKs, GetResource, sealed secrets and credentials go through one KBS
// client. Its evidence comes from the attestation-agent when its socket
// exists (so every TEE the agent supports works), else from guest-puller's
// own attesters (configfs-tsm, then a TPM).
//
// After each successful pull the Hub records it as CDH does: the event
// "github.com/confidential-containers PullImage {"image":…, "digest":…}"
// goes to the attestation-agent (ExtendRuntimeMeasurement) or, attesting
// with its own TPM, into its own event log and a PCR, and the log goes to
// the KBS with every quote. Init-data, when the guest has it, is sent in
// every attest request, and with its own TPM the Hub binds its digest into
// PCR 8 before the first quote, as the attestation-agent does.
package cdh
