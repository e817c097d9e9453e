// Package unpack owns everything on the guest's disk: applying a layer's tar
// stream safely (umoci's oci/layer in OverlayfsRootfs format, confined to
// the layer's own directory), the layer cache keyed by diff_id with its
// staging area and locks, image records, runtime bundles (config.json from
// the image config; rootfs as an overlay of cached layers, or a flattened
// copy where overlay is unavailable) and garbage collection.
//
// It fetches nothing: pull/ hands it verified-as-it-goes tar streams and
// commits a layer only after every check on its bytes has passed.
package unpack
