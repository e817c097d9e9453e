package decrypt

import "github.com/guest-puller/guest-puller/internal/mediatype"

// Which layer types are encrypted is internal/mediatype's to say, for the
// policy and the pipeline alike: a type merely ending in "+encrypted" is
// not one, so a layer we could not unpack after decryption never counts as
// encrypted for the policy's "encrypted" requirement.

func isEncrypted(mediaType string) bool { return mediatype.IsEncrypted(mediaType) }

func plainMediaType(mediaType string) string { return mediatype.Plain(mediaType) }
