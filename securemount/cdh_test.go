package securemount

import (
	"context"
	"errors"
	"maps"
	"strings"
	"testing"

	"github.com/guest-puller/guest-puller/internal/errdefs"
)

// TestServeCDHRefuses checks that untrusted SecureMount options are
// refused before anything is formatted or mounted. (The VM test in
// tests/vm serves a good request on a real disk.)
func TestServeCDHRefuses(t *testing.T) {
	good := map[string]string{"devicePath": "/dev/null", "sourceType": "empty", "targetType": "fileSystem",
		"encryptionType": "luks2", "dataIntegrity": "true", "filesystemType": "ext4"}
	with := func(k, v string) map[string]string {
		o := maps.Clone(good)
		if v == "" {
			delete(o, k)
		} else {
			o[k] = v
		}
		return o
	}
	noKey := func(context.Context, string) ([]byte, error) {
		t.Error("a refused request fetched its key")
		return nil, errors.New("no")
	}
	for _, tc := range []struct {
		name string
		req  CDHRequest
		want string
	}{
		{"volume type", CDHRequest{VolumeType: "aliyun-oss", Options: good, MountPoint: "/run/kata-containers/x"}, "volume_type"},
		{"flags", CDHRequest{VolumeType: "block-device", Options: good, Flags: []string{"ro"}, MountPoint: "/run/kata-containers/x"}, "flags"},
		{"unknown option", CDHRequest{VolumeType: "block-device", Options: with("mkfsOpts", "-E root_owner=0:0"), MountPoint: "/run/kata-containers/x"}, `option "mkfsOpts"`},
		{"encryption", CDHRequest{VolumeType: "block-device", Options: with("encryptionType", "zfs"), MountPoint: "/run/kata-containers/x"}, "encryptionType"},
		{"integrity value", CDHRequest{VolumeType: "block-device", Options: with("dataIntegrity", "yes"), MountPoint: "/run/kata-containers/x"}, "dataIntegrity"},
		{"source type", CDHRequest{VolumeType: "block-device", Options: with("sourceType", "plain"), MountPoint: "/run/kata-containers/x"}, "sourceType"},
		{"filesystem", CDHRequest{VolumeType: "block-device", Options: with("filesystemType", "xfs"), MountPoint: "/run/kata-containers/x"}, "filesystemType"},
		{"mount point outside", CDHRequest{VolumeType: "block-device", Options: good, MountPoint: "/etc"}, "mount_point"},
		{"mount point climbing", CDHRequest{VolumeType: "block-device", Options: good, MountPoint: "/run/kata-containers/../../etc"}, "mount_point"},
		{"mount point relative", CDHRequest{VolumeType: "block-device", Options: good, MountPoint: "run/kata-containers/x"}, "mount_point"},
		{"mount point the root itself", CDHRequest{VolumeType: "block-device", Options: good, MountPoint: "/run/kata-containers"}, "mount_point"},
		{"no device", CDHRequest{VolumeType: "block-device", Options: with("devicePath", ""), MountPoint: "/run/kata-containers/x"}, "neither deviceId nor devicePath"},
		{"device outside /dev", CDHRequest{VolumeType: "block-device", Options: with("devicePath", "/tmp/disk.img"), MountPoint: "/run/kata-containers/x"}, "not below /dev"},
		{"not a block device", CDHRequest{VolumeType: "block-device", Options: good, MountPoint: "/run/kata-containers/x"}, "not a block device"},
		{"device id", CDHRequest{VolumeType: "block-device", Options: with("deviceId", "7:0:1"), MountPoint: "/run/kata-containers/x"}, "deviceId"},
		{"mapper name", CDHRequest{VolumeType: "block-device", Options: with("mapperName", "../control"), MountPoint: "/run/kata-containers/x"}, "mapperName"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ServeCDH(context.Background(), tc.req, noKey)
			if !errors.Is(err, errdefs.ErrInvalidConfig) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("ServeCDH: %v, want a configuration error about %s", err, tc.want)
			}
		})
	}
}
