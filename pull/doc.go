// Package pull is the pipeline of one image pull: resolve the reference
// (mirrors, auth, index and platform) to a digest-pinned manifest, evaluate
// the policy over it and its signatures, unwrap the keys of encrypted layers,
// then fetch every layer not already cached, in parallel, in one streaming
// pass (blob digest, decryption, decompression, diff_id, apply into staging)
// and commit it only when all checks passed; finally make the bundle.
//
// It owns concurrency and single-flight per layer; it does not parse policy
// files or touch tar entries.
package pull
