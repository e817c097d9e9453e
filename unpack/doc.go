// Package unpack owns everything on the guest's disk: applying a layer's tar
// stream safely (umoci's oci/layer in OverlayfsRootfs format, confined to
// the layer's own directory), the layer cache keyed by diff_id with its
// staging area and locks, image records, runtime bundles (config.json from
// the image config; rootfs as an overlay of cached layers, or a flattened
// copy where overlay is unavailable) and garbage collection.
//
// It fetches nothing: pull/ hands it verified-as-it-goes tar streams and
// commits a layer only after every check on its bytes has passed.
//
// # Cache layout
//
// The layout under the root (default /run/guest-puller) is stable; files
// marked atomic are written to a temporary file, fsynced and renamed.
//
//	<root>/                         mode 0700; nothing below is readable by others
//	  layout.json                   {"version":1,"overlayXattrs":"trusted"|"user"} (atomic)
//	  locks/cache.lock              flock: shared to add, exclusive to remove (GC, RemoveImage, Open)
//	  locks/layer-<hex>.lock        LockLayer
//	  locks/pin-<hex>.lock          shared while a lease (a pull) holds the layer
//	  locks/staging-<name>.lock     held by the process applying staging/<name>
//	  locks/bundle-<id>.lock        held while bundle <id> is made or replaced
//	  locks/dir-<hex>.lock          held while a bundle is made in a directory (<hex>: of its real path)
//	  staging/<name>/diff/          a layer being applied
//	  layers/<hex>/diff/            a committed layer in overlayfs format (<hex>: the diff_id's encoded part)
//	  layers/<hex>/layer.json       {"diffID","size","committed","provenance":[{"blob","decrypted","key"}]}
//	  images/<sha256(ref)>.json     an ImageRecord (atomic)
//	  bundles/<id>/                 the default bundle directory: config.json, rootfs/
//	  containers/<id>/bundle.json   the bundle's record (atomic), written before anything else of it
//	  containers/<id>/upper, work/  the overlay's per-container upper and work directories
//	  trash/                        renamed-away layers and bundles being deleted
//
// Decrypted content lives in staging/, layers/ and containers/<id>/upper
// (files a container copies up), all inside the root; a bundle directory
// elsewhere holds only config.json and the rootfs mount point, or, for
// the copy fallback, the flattened rootfs the caller asked for there.
//
// A layer becomes visible in one rename of its staging directory, after a
// syncfs, so a crash never leaves a partial layer under layers/. Open
// removes staging directories whose lock is free (their process is gone),
// bundles whose record is not "ready" (half made), and trash.
//
// # Layer content safety
//
// Nothing a layer contains may create, change or link to anything outside
// its own directory. Each case is either confined (applied inside the
// layer root, which is how a container would see it anyway) or refused as
// unsafe content, an error wrapping errdefs.ErrIntegrity:
//
//   - absolute paths ("/etc/passwd") are taken relative to the layer root:
//     confined. "/../x" is "/x", as the kernel resolves it.
//   - relative paths climbing above the root ("../x", "a/../../x"): refused.
//   - a path whose parent is a symlink (even to an absolute host path) is
//     resolved inside the layer root, as SecureJoin does: confined. The file
//     lands where the container will look for it.
//   - symlink targets are never followed here; they are data for the
//     container's own root.
//   - hardlinks: a target above the root is refused; an absolute target is
//     taken relative to the root; the target, with its parents resolved
//     inside the root, must be a non-directory this layer already made, so
//     a hardlink through a symlink pointing elsewhere is refused.
//   - whiteouts follow the path rules; a whiteout naming ".", ".." or
//     nothing is refused.
//   - a non-directory entry for the root itself, and entry types other than
//     files, directories, links, devices and fifos, are refused.
//   - sparse files (GNU tar's old and PAX formats) keep their holes, in the
//     layer and in a copied rootfs: holes are never written out as zeros.
//     Reading a hole still costs time (archive/tar reads it as zeros), so
//     the sparse files of one layer may declare at most 64 GiB in all; a
//     layer declaring more is refused.
//   - device nodes are kept only when this process can create them (probed
//     once: euid 0 without a user namespace); otherwise each is skipped,
//     logged and listed in Staging.Stats.
//
// Security xattrs that are host-specific (security.selinux) are dropped by
// umoci; an image's own overlay xattrs are stored escaped so they never act
// on our overlay mount.
//
// Apply keeps memory bounded: one tar header at a time, file data streamed
// to disk; what grows with a layer is umoci's set of paths the layer
// touched (needed for whiteout semantics), proportional to its entry count.
//
// Layers are applied each into its own directory; a symlinked directory in
// a lower layer does not redirect an upper layer's paths (as it would when
// extracting into one tree). That is overlayfs semantics, shared by every
// overlay-based snapshotter that applies layers separately.
//
// # Bundles
//
// config.json is what `umoci unpack` writes (convert.ToRuntimeSpec), with
// User names resolved through the image's /etc/passwd and /etc/group read
// with symlinks resolved inside the rootfs. The rootfs is an overlay of the
// cached layers with upper and work under containers/<id>, mounted through
// fsconfig one layer at a time (no limit on the number of layers), or
// through mount(2) on kernels without it. When the mount fails because
// this process may not mount (EPERM, EACCES) or the kernel has no overlay
// (ENODEV), the layers are flattened into the rootfs instead ("copy").
//
// A container id names one bundle, and a directory holds one. The same id,
// directory and manifest again is the same bundle (remounted over its own
// upper directory if its rootfs was unmounted); an id whose bundle is live
// elsewhere or runs another image, and a directory that exists and is not
// empty, are refused with errdefs.ErrAlreadyExists. Nothing is deleted to
// make room: only a bundle that is gone (directory or config.json deleted,
// image removed, half made) gives up its id or directory, and is then
// reclaimed. In a bundle directory CreateBundle owns config.json and
// rootfs/ only: its teardown removes those two (and the directory, if it
// made it and it is then empty).
//
// # Garbage collection
//
// RemoveImage drops the image record and marks its bundles removed. GC
// unmounts (lazily if busy) and deletes bundles that are removed, half
// made, or whose directory or config.json is gone, then layers named by no
// image record and no live bundle, except those another process holds
// pinned or locked. A pull holds a Lease: every layer it finds or commits
// is pinned under the lease until the pull ends, whatever the outcome, and
// only layers that are there are ever pinned. Leases of one process share
// one open pin file per layer; a process that dies drops its pins. A
// bundle GC cannot take down is reported and kept, with its layers, and
// the rest is collected all the same. Under the exclusive cache lock GC
// only renames what goes into trash/; it deletes after releasing it, so a
// large layer's deletion does not hold up pulls. `guest-puller serve`
// runs GC periodically (--gc-interval), so a pod's cache gives back what
// each container left as soon as kata-agent has cleaned it up.
//
// # Layer provenance
//
// A diff_id is a claim made by an image config the registry writes, so a
// committed layer records where its content was verified to come from: the
// blobs that were fetched and checked to yield it, each marked plain or
// decrypted, a decrypted one with a fingerprint of the key that decrypted
// it (layer.json's provenance). Reusable applies DESIGN.md's rules: an
// encrypted blob reuses the layer only if that exact blob was decrypted
// into it with the same key (which the pull unwrapped itself: anyone can
// wrap another key for the same blob); a plain blob only if some
// plain blob was verified to yield it. Any other blob is fetched and
// verified against the diff_id first, then added as a source. Layers
// written before provenance ("confidential" and "sources") are read
// conservatively: a confidential layer's sources as decrypted ones.
package unpack
