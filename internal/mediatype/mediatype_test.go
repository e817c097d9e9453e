package mediatype

import "testing"

func TestParseLayer(t *testing.T) {
	for _, tc := range []struct {
		mt   string
		want Layer
		bad  bool
	}{
		{"application/vnd.oci.image.layer.v1.tar", Layer{Uncompressed, false}, false},
		{"application/vnd.oci.image.layer.v1.tar+gzip", Layer{Gzip, false}, false},
		{"application/vnd.oci.image.layer.v1.tar+zstd", Layer{Zstd, false}, false},
		{"application/vnd.oci.image.layer.v1.tar+encrypted", Layer{Uncompressed, true}, false},
		{"application/vnd.oci.image.layer.v1.tar+gzip+encrypted", Layer{Gzip, true}, false},
		{"application/vnd.oci.image.layer.v1.tar+zstd+encrypted", Layer{Zstd, true}, false},
		{"application/vnd.oci.image.layer.nondistributable.v1.tar+gzip+encrypted", Layer{Gzip, true}, false},
		{"application/vnd.docker.image.rootfs.diff.tar", Layer{Uncompressed, false}, false},
		{"application/vnd.docker.image.rootfs.diff.tar.gzip", Layer{Gzip, false}, false},
		{"application/vnd.docker.image.rootfs.diff.tar.gzip+encrypted", Layer{Gzip, true}, false},
		{"application/vnd.docker.image.rootfs.diff.tar.zstd+encrypted", Layer{Zstd, true}, false},
		{"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", Layer{Gzip, false}, false},
		// What the three old tables disagreed on: a suffix is not a type.
		{"application/vnd.oci.image.layer.v1.tar+bzip2+encrypted", Layer{}, true},
		{"application/vnd.example+encrypted", Layer{}, true},
		{"application/x.tar", Layer{}, true},
		{"application/x.tar+encrypted", Layer{}, true},
		{"application/vnd.oci.image.layer.v1.tar+encrypted+encrypted", Layer{}, true},
		{"application/vnd.oci.image.layer.v1.tar+bzip2", Layer{}, true},
		{"application/vnd.dev.cosign.simplesigning.v1+json", Layer{}, true},
		{"APPLICATION/VND.OCI.IMAGE.LAYER.V1.TAR", Layer{}, true},
		{"", Layer{}, true},
	} {
		got, err := ParseLayer(tc.mt)
		if tc.bad != (err != nil) || got != tc.want {
			t.Errorf("ParseLayer(%q) = %+v, %v; want %+v, error %v", tc.mt, got, err, tc.want, tc.bad)
		}
		if enc := IsEncrypted(tc.mt); enc != (!tc.bad && tc.want.Encrypted) {
			t.Errorf("IsEncrypted(%q) = %v", tc.mt, enc)
		}
	}
	if got := Plain("application/vnd.oci.image.layer.v1.tar+zstd+encrypted"); got != "application/vnd.oci.image.layer.v1.tar+zstd" {
		t.Errorf("Plain = %q", got)
	}
	if got := Plain("application/vnd.example+encrypted"); got != "application/vnd.example+encrypted" {
		t.Errorf("Plain of a non-layer type changed it: %q", got)
	}
}
